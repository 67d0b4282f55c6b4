"""From a photo to faces: detection, alignment, cropping like the training data, per-face results, drawing.

`cut_faces` and `classify_faces` take a decoded photo's detections to per-face results (photos.analyze_photos
runs them for the Python API, predict.py and app.py; `analyze_image` does both for one photo). A face is brought
to the model the way training images were: its region is cut from the photo (aligned by its landmarks, or its box
plus a margin) and passed through `images.image_to_array`, the very function that decoded the training set; the
classifier (inference.py) then normalises it as its scoring records.

Detectors: YuNet (Wu, Peng, Yu, "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence Research
2023; models/yunet_s_640_640.onnx, run by ONNX Runtime and decoded as OpenCV's FaceDetectorYN decodes it), which
returns five landmarks per face, and OpenCV's Haar cascade (Viola and Jones, CVPR 2001), boxes only.
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from errors import UserError, not_a_file
from fonts import pil_font
from images import image_to_array

YUNET_MODEL = Path(__file__).resolve().parent / "models" / "yunet_s_640_640.onnx"
LANDMARKS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")  # YuNet's order (the person's right)
# The framing of an aligned face, measured on FER2013: YuNet's landmarks on 1,948 of 2,000 Training crops
# (upscaled, on a gray canvas) put the crop's side at a median 2.67 eye-to-mouth distances and its centre
# 0.28 of the way from the eyes' midpoint to the mouth's, 0.03 to the side. benchmarks/detection.py checks
# the choice by what it costs in expression accuracy.
ALIGN_SCALE = 2.67
ALIGN_CENTER = 0.28


@dataclass
class Detection:
    """A face found in a photo: box (x, y, width, height, pixels), the detector's score (None for Haar and for
    boxes a user gave) and landmarks (float 5 x 2, LANDMARKS order; None without them)."""
    box: tuple
    score: float = None
    landmarks: np.ndarray = None


@dataclass
class Face(Detection):
    """A Detection with what the model made of it: crop (what the model saw, uint8 C x size x size), whether it
    was aligned, to_photo (2 x 3 affine from crop pixels to photo pixels), probabilities and Grad-CAM heatmap
    (crop-sized, 0..1), and in a video its track id."""
    crop: np.ndarray = field(default=None, repr=False)
    aligned: bool = False
    to_photo: np.ndarray = field(default=None, repr=False)
    probabilities: np.ndarray = None
    heatmap: np.ndarray = field(default=None, repr=False)
    track: int = None  # in a video, the id of the face's track (tracks.FaceTracker)


# ---------------------------------------------------------------------------------------------------------
# Detectors


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UserError("face detection needs OpenCV: pip install opencv-python-headless "
                        "(or pass --no-detect or --boxes FILE)") from None
    return cv2


class YuNetDetector:
    """YuNet, run by ONNX Runtime. score_threshold: the lowest detector score kept, in (0, 1]; min_face: the
    smallest face kept (pixels of the photo); max_side: photos are detected at a size whose longer side is at most
    this, boxes and landmarks mapped back (bounds the time on large photos); turns: angles (degrees) of turned
    copies of the photo also searched, for tilted heads, their faces turned back and merged; nms_threshold: within
    one pass, a face overlapping a better-scored one by more IoU than this is dropped (FaceDetectorYN's 0.3);
    threads: ONNX Runtime's threads for one pass (0: its own choice); passes_at_once: how many passes over a photo
    run side by side, each on its own thread (the caller's and passes_at_once - 1 of a pool), with the same
    results as one after another. Raises UserError for a missing or non-YuNet model file or a score threshold
    outside (0, 1].

    The network runs in ONNX Runtime, which takes under half the time of OpenCV's DNN module on this project's
    CPU (benchmarks/detection.py), and its outputs are decoded as OpenCV's FaceDetectorYN decodes them
    (decode_yunet); a test checks that the two find the same faces.
    """

    def __init__(self, model=YUNET_MODEL, score_threshold=0.6, min_face=24, max_side=960, turns=(-30, 30),
                 nms_threshold=0.3, threads=0, passes_at_once=1):
        cv2 = _cv2()
        model = Path(model)
        if not 0 < score_threshold <= 1:
            raise UserError(f"the detector's score threshold must be in (0, 1], got {score_threshold}")
        why = not_a_file(model, "an ONNX file")
        if why:
            raise UserError(f"detector model {model} {why}")
        self.model, self.session = model, yunet_session(model, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.cv2, self.min_face, self.max_side, self.turns = cv2, min_face, max_side, tuple(turns)
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        # ONNX Runtime's passes and OpenCV's warps let go of Python's lock, so passes on threads of their own run at
        # once: a 256x256 portrait's detection took 3.5 ms instead of 4.8 on two cores (docs/report.md, 14.3).
        self.pool = ThreadPoolExecutor(passes_at_once - 1, "yunet") if passes_at_once > 1 else None

    def __call__(self, image):
        """PIL image ('L' or 'RGB') -> [Detection], largest first."""
        rgb, scale = shrink(pixels(image, "RGB"), self.max_side)
        # With a pool the turned passes start on it now, beside the upright pass; without, map runs them below.
        turned = (self.pool.map if self.pool else map)(partial(self._detect_turned, rgb), self.turns)
        upright = [(*d, eye_line(d[2])) for d in self._detect(rgb)]
        # While the turned passes run, each face the upright pass saw off level gets the look the loop below would
        # give it should the upright pass's detection win the merge, as it does for all but steeply tilted heads
        # (a turned pass sees an upright face 30 degrees off); a look taken for a face that another pass wins is
        # left unused, so the results are those of one pass after another.
        early = {id(face): self._look(rgb, face[0], face[3]) for face in upright
                 if self.pool and abs(face[3]) > LEVEL_TOLERANCE}
        found = upright + [face for faces in turned for face in faces]
        faces = []
        for face in merge_passes(found):
            box, score, landmarks, tilt = face
            for look in range(LEVEL_LOOKS):  # a face seen off level is looked at again, turned level
                if abs(tilt) <= LEVEL_TOLERANCE:
                    break
                seen = early[id(face)] if look == 0 and id(face) in early else \
                    self._look(rgb, box, eye_line(landmarks))
                if seen is None:
                    break
                _, _, landmarks, tilt = seen
            faces.append((box, score, landmarks))
        return self._in_photo(faces, scale)

    def _in_photo(self, faces, scale):
        """Faces (box, score, landmarks) in pixels of the photo shrunk by scale -> [Detection] in the photo's
        pixels, those under min_face left out, largest first."""
        detections = []
        for box, score, landmarks in faces:
            box, landmarks = tuple(v / scale for v in box), landmarks / scale
            if min(box[2:]) >= self.min_face:
                detections.append(Detection(box, score, landmarks))
        return sorted(detections, key=lambda d: -d.box[2] * d.box[3])

    def _detect(self, rgb):
        """uint8 H x W x 3 RGB -> [(box (x, y, w, h), score, float landmarks 5 x 2)] in its pixels, after
        FaceDetectorYN's non-maximum suppression."""
        h, w = rgb.shape[:2]
        # As FaceDetectorYN feeds it: BGR pixel values 0..255, zero-padded at the right and bottom to multiples of
        # the coarsest stride.
        step = max(YUNET_STRIDES)
        blob = np.zeros((1, 3, -(-h // step) * step, -(-w // step) * step), np.float32)
        # Plane by plane from OpenCV's split: numpy's copy of the reversed, transposed pixels reads them with
        # strides, twice the time (0.47 against 0.25 ms a 960x540 frame, for every pass).
        for channel, plane in enumerate(reversed(self.cv2.split(rgb))):
            blob[0, channel, :h, :w] = plane
        try:
            outputs = dict(zip(YUNET_OUTPUTS, self.session.run(list(YUNET_OUTPUTS), {self.input_name: blob})))
        except Exception as e:  # onnxruntime's own error types, for a graph that passed the checks at load
            raise UserError(f"detector model {self.model} failed on a {w}x{h} photo: {_last_line(e)}") from None
        for name, (stride, k) in YUNET_OUTPUTS.items():  # a file can declare YuNet's shapes and give others
            cells = (blob.shape[2] // stride) * (blob.shape[3] // stride)
            if outputs[name].shape != (1, cells, k):
                shape = " x ".join(map(str, outputs[name].shape))
                raise UserError(f"detector model {self.model} is not YuNet: its output {name} is {shape} for a "
                                f"{w}x{h} photo, not 1 x {cells} x {k}")
        rows = decode_yunet(outputs, blob.shape[3], self.score_threshold)
        # FaceDetectorYN's suppression (OpenCV's NMSBoxes on the boxes truncated to whole pixels), by torchvision.
        keep = non_maximum_suppression(np.trunc(rows[:, :4]), rows[:, 14], self.nms_threshold)
        return [(tuple(map(float, rows[i, :4])), float(rows[i, 14]), rows[i, 4:14].reshape(5, 2)) for i in keep]

    def _look(self, rgb, box, degrees):
        """Look at one face again, turned so that an eye line at degrees (eye_line's angle) comes out level: the
        square around its box (LEVEL_CONTEXT times its side, at most LEVEL_SIDE pixels) turned about the box's
        centre and searched once more -> (box, score, landmarks of the face found there, in pixels of rgb as
        _detect_turned maps them back; its eye line's angle in that square, degrees), or None when no face there
        overlaps the box by IoU 0.3."""
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        side = LEVEL_CONTEXT * max(box[2], box[3])
        zoom = min(1.0, LEVEL_SIDE / side)
        n = max(32, int(round(side * zoom)))
        turn = self.cv2.getRotationMatrix2D((cx, cy), degrees, zoom)
        turn[:, 2] += (n / 2 - cx, n / 2 - cy)  # the face's centre to the square's
        square = self.cv2.warpAffine(rgb, turn, (n, n), flags=self.cv2.INTER_LINEAR,
                                     borderMode=self.cv2.BORDER_CONSTANT, borderValue=0)
        expected = (n / 2 - box[2] * zoom / 2, n / 2 - box[3] * zoom / 2, box[2] * zoom, box[3] * zoom)
        found = self._detect(square)
        overlaps = box_ious([f[0] for f in found], [expected])[:, 0]
        if not found or overlaps.max() < 0.3:
            return None
        seen, score, points = found[int(overlaps.argmax())]
        back_box, back_points = turned_back(seen, points, self.cv2.invertAffineTransform(turn), degrees, zoom)
        return back_box, score, back_points, eye_line(points)

    def follow(self, image, previous):
        """The faces of previous (Detections with landmarks, from the frame before) found again in image, each
        looked for in the square around where it was (_look), not in the whole photo: one small pass a face where a
        full search takes three over the photo. -> [Detection], largest first. Where a face is not found again
        (it moved too far, turned away or left), the whole photo is searched instead, as for the first frame."""
        rgb, scale = shrink(pixels(image, "RGB"), self.max_side)

        def look(d):
            tilt = 0.0 if d.landmarks is None else eye_line(d.landmarks)
            return self._look(rgb, tuple(v * scale for v in d.box), tilt)
        if self.pool:  # the faces after the first are looked at on it while this thread looks at the first
            later = [self.pool.submit(look, d) for d in previous[1:]]
            looks = [look(d) for d in previous[:1]] + [task.result() for task in later]
        else:
            looks = [look(d) for d in previous]
        if any(seen is None for seen in looks):
            return self(image)
        return self._in_photo([seen[:3] for seen in looks], scale)

    def _detect_turned(self, rgb, degrees):
        """Faces of the photo turned by degrees about its centre (same size), turned back -> [(box, score,
        landmarks, tilt)]: landmarks exactly, the box as the bounding box of the ellipse inside the turned box,
        tilt the eye line's angle in the turned photo (degrees; how upright this pass saw the face)."""
        h, w = rgb.shape[:2]
        turn = self.cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        back = self.cv2.invertAffineTransform(turn)
        # The corners the turn uncovers are black, as YuNet's own padding is: a third of the time of repeating
        # the edge pixels, and the same recall on held-out faces (78.8% and 79.2% of 655).
        turned = self.cv2.warpAffine(rgb, turn, (w, h), flags=self.cv2.INTER_LINEAR,
                                     borderMode=self.cv2.BORDER_CONSTANT, borderValue=0)
        out = []
        for box, score, landmarks in self._detect(turned):
            back_box, points = turned_back(box, landmarks, back, degrees)
            out.append((back_box, score, points, eye_line(landmarks)))
        return out


def turned_back(box, landmarks, back, degrees, zoom=1.0):
    """A face found in a copy of the photo turned by degrees (and scaled by zoom), mapped back by the affine back
    (2 x 3, copy -> photo pixels) -> (box (x, y, w, h), landmarks float 5 x 2): landmarks exactly, the box as the
    bounding box of the ellipse inside the turned box."""
    x, y, bw, bh = box
    cx, cy = back @ np.array([x + bw / 2, y + bh / 2, 1.0])
    t = np.radians(degrees)
    a, b = bw / 2 / zoom, bh / 2 / zoom
    half_w, half_h = np.hypot(a * np.cos(t), b * np.sin(t)), np.hypot(a * np.sin(t), b * np.cos(t))
    return (cx - half_w, cy - half_h, 2 * half_w, 2 * half_h), np.c_[landmarks, np.ones(5)] @ back.T


# YuNet's anchor grids (pixels per cell) and its outputs, each 1 x anchors x k: name -> (stride, k), k for the
# class and object scores, the box, and five landmarks' x and y.
YUNET_STRIDES = (8, 16, 32)
YUNET_OUTPUTS = {f"{kind}_{stride}": (stride, k) for kind, k in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
                 for stride in YUNET_STRIDES}


def yunet_session(model, threads=0):
    """An ONNX Runtime session of a YuNet ONNX file, with the input's height and width left free: the file
    declares 640x640, but the network is fully convolutional and its outputs are reshaped with -1, so any
    multiple of 32 runs. threads: ONNX Runtime's threads for one pass (0: its own choice, one a core). Raises
    UserError for a file that cannot be read or is not YuNet (its outputs are not YUNET_OUTPUTS' names and shapes,
    or its input is not one 3-channel image, N x 3 x H x W)."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("YuNet runs in ONNX Runtime: pip install onnx onnxruntime (or pass --detector haar)") from None
    try:
        proto = onnx.load(str(model))
    except Exception as e:  # onnx raises protobuf's DecodeError, or OSError, for a file it cannot parse
        raise UserError(f"detector model {model} is not a readable ONNX file: {_last_line(e)}") from None
    graph = proto.graph
    missing = [name for name in YUNET_OUTPUTS if name not in {o.name for o in graph.output}]
    if missing:
        raise UserError(f"detector model {model} is not YuNet: it has no output {', '.join(missing[:3])}"
                        f"{' and more' if len(missing) > 3 else ''}")
    for output in (o for o in graph.output if o.name in YUNET_OUTPUTS):
        dims, k = output.type.tensor_type.shape.dim, YUNET_OUTPUTS[output.name][1]
        if len(dims) != 3 or dims[2].dim_value != k:
            raise UserError(f"detector model {model} is not YuNet: its output {output.name} is not 1 x anchors x {k}")
        dims[1].dim_param = "anchors"
    # Older exports also list the weights among the inputs; the image is the input that is not a weight.
    weights = {w.name for w in graph.initializer}
    images = [i for i in graph.input if i.name not in weights]
    dims = images[0].type.tensor_type.shape.dim if len(images) == 1 else []
    if len(dims) != 4 or dims[1].dim_value != 3 or dims[0].dim_value not in (0, 1):  # 0: a free batch size
        raise UserError(f"detector model {model} is not YuNet: its input is not one 3-channel image (N x 3 x H x W)")
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del graph.value_info[:]  # the 640x640 shapes recorded inside would be checked, and warned about
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # Its own choice, a spinning thread a core, took a 256x256 photo's passes from 6-7 to 13-17 ms while other work
    # held the cores, where one thread kept 6-7 (quiet, the two were alike).
    options.intra_op_num_threads = int(threads)
    try:
        return onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types, for a graph it cannot build
        raise UserError(f"detector model {model} is not a readable YuNet ONNX file: {_last_line(e)}") from None


def _last_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:100]


def decode_yunet(outputs, padded_width, score_threshold):
    """YuNet's outputs for one image (name -> float32 1 x anchors x k, YUNET_OUTPUTS) -> float32 N x 15 rows (x, y,
    w, h, five landmarks' x and y, score) in the pixels of the padded input (padded_width: its width, a multiple
    of 32), one per anchor scoring at least score_threshold, before any suppression; boxes may reach into the
    padding or past the image. Decoded as OpenCV's FaceDetectorYN decodes them (YuNet: Wu, Peng, Yu, Machine
    Intelligence Research 2023): one anchor per cell of each stride's grid (8, 16, 32 pixels), score
    sqrt(cls x obj) with both clipped to [0, 1], box centre at (cell + offset) x stride, width and height
    exp(output) x stride, landmarks at (cell + offset) x stride."""
    rows = [np.zeros((0, 15), np.float32)]
    for stride in YUNET_STRIDES:
        cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1)
        obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1)
        score = np.sqrt(cls * obj)
        keep = np.flatnonzero(score >= score_threshold)
        if not keep.size:  # most grids of most passes: nothing to decode
            continue
        cell = np.stack([keep % (padded_width // stride), keep // (padded_width // stride)], 1).astype(np.float32)
        box = outputs[f"bbox_{stride}"][0, keep]
        size = np.exp(box[:, 2:4]) * stride
        corner = (cell + box[:, :2]) * stride - size / 2
        landmarks = (outputs[f"kps_{stride}"][0, keep].reshape(-1, 5, 2) + cell[:, None, :]) * stride
        rows.append(np.concatenate([corner, size, landmarks.reshape(-1, 10), score[keep, None]], 1))
    return np.concatenate(rows).astype(np.float32)


def pixels(image, mode):
    """A PIL image's pixels in mode ('RGB' or 'L') as a uint8 array, without a converted copy when it is in that
    mode already (a 1280x720 photo's copy costs 7 ms on this CPU, YuNet's upright pass 8)."""
    return np.asarray(image if image.mode == mode else image.convert(mode))


def shrink(array, max_side):
    """A photo's pixels (uint8 H x W or H x W x 3) scaled down so that the longer side is at most max_side (None:
    as they are) -> (pixels, scale). Down to half size bilinear interpolation still reads every source pixel, and
    takes 0.5 ms for a 1280x720 photo where area averaging takes 4 (PIL's antialiased bilinear 7); below half it
    would skip pixels and alias, so area averaging does it."""
    cv2 = _cv2()
    height, width = array.shape[:2]
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    if scale == 1.0:
        return array, scale
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_LINEAR if scale >= 0.5 else cv2.INTER_AREA), scale


# YuNet's landmarks are drawn towards the level of the pass that looks: a pass turned 30 degrees from an upright face
# puts its eye line 8-37 degrees off, and a face 15 degrees off level gets an eye line about 10 degrees off. So of
# the passes that found a face, the one that saw it most upright gives its landmarks, a degree of tilt weighing
# SCORE_PER_DEGREE of detector score (merge_passes); and a face still seen more than LEVEL_TOLERANCE degrees off
# level is looked at again turned level (YuNetDetector._look; at most LEVEL_LOOKS looks, in a square LEVEL_CONTEXT
# times the face's side, of at most LEVEL_SIDE pixels). Chosen on FER2013 Training faces (not test faces) pasted at
# 0-45 degrees: the score rule moved 1.0% of upright faces' eye lines more than 15 degrees off the upright pass's,
# where the best score alone moved 1.6%; the looks cut the eye lines more than 5 degrees off from 42% to 15% at 15
# degrees and from 40% to 13% at 45 (30 degrees: 0.3% to 1.1%). The square was twice the face's side at first;
# 1.5 times is a 256-pixel pass instead of 320 for a portrait's face of 160 (a look 1.5 ms instead of 1.9), with
# the same eye lines and accuracy after alignment in benchmarks/detection.py's scenes of Training faces
# (--level-context; docs/report.md, 14.2).
SCORE_PER_DEGREE = 0.005
LEVEL_TOLERANCE = 3.0
LEVEL_LOOKS = 2
LEVEL_SIDE = 320
LEVEL_CONTEXT = 1.5


def eye_line(landmarks):
    """The angle of the line from the right eye to the left (LANDMARKS' first two points; float 5 x 2, image
    coordinates, y down) in degrees, clockwise from level: 0 for level eyes."""
    (rx, ry), (lx, ly) = landmarks[0], landmarks[1]
    return float(np.degrees(np.arctan2(ly - ry, lx - rx)))


def merge_passes(found, overlap=0.3):
    """The faces found by several passes over one photo (box, score, landmarks, tilt: the eye line's angle in the
    pass's own frame, degrees) -> [(box, score, landmarks, tilt)], one per face. Detections overlapping a
    better-scored one by IoU > overlap are the same face (the suppression FaceDetectorYN applies within a pass); of
    those, the one that saw it most upright is kept, a degree of tilt weighing SCORE_PER_DEGREE of score."""
    if not found:
        return []
    boxes, scores = [f[0] for f in found], [f[1] for f in found]
    leaders = non_maximum_suppression(boxes, scores, overlap)  # best first
    # Each detection joins the best-scored leader it overlaps (a leader overlaps itself), as the suppression did.
    # One leader (a portrait) means every detection overlapped it: the IoUs, 0.3 ms a photo, are not needed.
    joins = box_ious(boxes, [boxes[i] for i in leaders]) > overlap if len(leaders) > 1 else np.ones((len(found), 1))
    groups = [[] for _ in leaders]
    for i in sorted(range(len(found)), key=lambda i: -scores[i]):
        groups[int(np.argmax(joins[i]))].append(found[i])
    return [min(g, key=lambda f: abs(f[3]) * SCORE_PER_DEGREE + g[0][1] - f[1]) for g in groups]


def _ops():
    # Imported when first needed: torchvision's import loads torch._dynamo (about 1.4 s), which the page and a
    # photo given --boxes or --no-detect need not wait for.
    try:
        import torchvision.ops
    except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
        raise UserError(f"torchvision cannot run with torch {torch.__version__} ({_last_line(e)}): install the "
                        "torchvision built for it (the pair this toolkit is tested with: pip install torch==2.14.1 "
                        "torchvision==0.29.1)") from None
    return torchvision.ops


def _corners(boxes):
    """(x, y, w, h) boxes -> float64 tensor N x 4 of (x1, y1, x2, y2), as torchvision.ops takes them."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return _ops().box_convert(boxes, "xywh", "xyxy")


def box_ious(boxes, others):
    """Intersection over union of each (x, y, w, h) box of boxes with each of others (torchvision.ops.box_iou) ->
    float64 numpy array len(boxes) x len(others); 0 where a union is empty."""
    if len(boxes) == 0 or len(others) == 0:
        return np.zeros((len(boxes), len(others)))
    return np.nan_to_num(_ops().box_iou(_corners(boxes), _corners(others)).numpy())


def non_maximum_suppression(boxes, scores, overlap):
    """Greedy non-maximum suppression of (x, y, w, h) boxes with scores (above 0): a box overlapping a better-scored
    kept one by IoU > overlap is dropped -> indices of the kept boxes (list of int), best first. By OpenCV's
    NMSBoxes, the suppression FaceDetectorYN itself applies: for the handful of boxes a pass yields it takes 3 us
    where torchvision's nms, with its tensors, took 35, four times a photo."""
    if len(boxes) == 0:
        return []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return _cv2().dnn.NMSBoxes(boxes, np.asarray(scores, dtype=np.float64), 0.0, overlap).tolist()


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, which ships inside the opencv-python-headless wheel: boxes only."""

    def __init__(self, min_face=24, max_side=None):
        cv2 = _cv2()
        self.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        self.min_face, self.max_side = min_face, max_side

    def __call__(self, image):
        """PIL image -> [Detection], largest first."""
        # No histogram equalisation: on photos with large flat areas it stretches the background and
        # hides faces (it found 2 of 6 FER faces pasted on a gray canvas, against 6 of 6 without).
        gray, scale = shrink(pixels(image, "L"), self.max_side)
        size = max(1, round(self.min_face * scale))
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(size, size))
        detections = [Detection(tuple(float(v) / scale for v in b)) for b in boxes]
        return sorted(detections, key=lambda d: -d.box[2] * d.box[3])


def make_detector(name="yunet", model=None, score_threshold=0.6, min_face=24, max_side=960, turns=(-30, 30),
                  threads=0, passes_at_once=1):
    """A detector by name (DETECTORS); model, score_threshold, turns, threads (ONNX Runtime's a pass; 0: its own
    choice) and passes_at_once (YuNetDetector's) apply to YuNet only."""
    if name == "haar":
        return HaarDetector(min_face, max_side)
    return YuNetDetector(model or YUNET_MODEL, score_threshold, min_face, max_side, turns, threads=threads,
                         passes_at_once=passes_at_once)


# ---------------------------------------------------------------------------------------------------------
# From a face to what the model sees


def clip_box(box, width, height):
    """A box (x, y, w, h) clipped to a width x height image -> (x, y, w, h) ints, or None if nothing is left."""
    x, y, w, h = box
    x0, y0 = max(0, min(width, x)), max(0, min(height, y))
    x1, y1 = max(0, min(width, x + w)), max(0, min(height, y + h))
    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def alignment(landmarks, scale=None, center=None):
    """The square a face is cut out as, from its landmarks: -> (centre (x, y), side, angle in radians) in photo
    pixels, the square turned by angle so that the eyes come out level, framed like a FER2013 crop (side: scale
    eye-to-mouth distances, ALIGN_SCALE by default; centre: center of the way from the eyes to the mouth,
    ALIGN_CENTER by default)."""
    scale = ALIGN_SCALE if scale is None else scale
    center = ALIGN_CENTER if center is None else center
    eyes, mouth = landmarks[:2].mean(0), landmarks[3:5].mean(0)
    right_eye, left_eye = landmarks[0], landmarks[1]
    angle = float(np.arctan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0]))
    down = np.array([-np.sin(angle), np.cos(angle)])  # the face's "down" once its eyes are level
    eye_to_mouth = float((mouth - eyes) @ down)
    side = scale * max(eye_to_mouth, 1.0)
    return eyes + center * eye_to_mouth * down, side, angle


def cut(image, center, side, angle=0.0):
    """The square of the photo (a PIL image, or its pixels: uint8 H x W or H x W x 3) with this centre, side and
    turn, resampled at its own resolution (so that image_to_array then shrinks it as it shrank the training
    images); parts beyond the photo repeat its edge pixels. -> (PIL image, 2 x 3 affine from its pixels to the
    photo's)."""
    cv2 = _cv2()
    n = max(1, int(round(side)))
    step = side / n
    cos, sin = np.cos(angle) * step, np.sin(angle) * step
    # Crop pixel (u, v) -> photo (x, y): from the square's corner, u steps along the eye line and v down.
    corner = np.asarray(center) - (n - 1) / 2 * np.array([cos - sin, sin + cos])
    to_photo = np.array([[cos, -sin, corner[0]], [sin, cos, corner[1]]])
    patch = cv2.warpAffine(np.asarray(image), to_photo, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(patch, "RGB" if patch.ndim == 3 else "L"), to_photo


def face_crop(image, detection, input_cfg, align=True, margin=0.15, array=None):
    """What the model sees of one detection -> (uint8 C x size x size, aligned?, 2 x 3 affine crop -> photo).

    With landmarks and align: the aligned square (alignment). Otherwise the box grown by margin of its size on
    every side, clipped to the photo. array: the image's pixels, where the caller has them for all of a photo's
    faces (numpy's copy of a 1280x720 photo takes 0.45 ms).
    """
    size, channels = input_cfg["size"], input_cfg["channels"]
    if align and detection.landmarks is not None:
        patch, to_photo = cut(image if array is None else array, *alignment(detection.landmarks))
        crop = image_to_array(patch, size, channels)
        return crop, True, to_photo @ np.diag([patch.width / size, patch.height / size, 1.0])
    x, y, w, h = detection.box
    region = clip_box((x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)), *image.size)
    rx, ry, rw, rh = region
    crop = image_to_array(image.crop((rx, ry, rx + rw, ry + rh)), size, channels)
    return crop, False, np.array([[rw / size, 0.0, rx], [0.0, rh / size, ry]])


def cut_faces(image, detections, input_cfg, align=True, margin=0.15):
    """Each detection of one decoded photo (images.read_image) cut out as the model sees it (face_crop) ->
    [Face] without probabilities yet, in the order of detections."""
    faces, array = [], np.asarray(image) if detections else None
    for d in detections:
        crop, aligned, to_photo = face_crop(image, d, input_cfg, align, margin, array)
        faces.append(Face(d.box, d.score, d.landmarks, crop=crop, aligned=aligned, to_photo=to_photo))
    return faces


def classify_faces(faces, classifier, explain=False):
    """Fill in the probabilities (and, with explain, the Grad-CAM maps) of faces (cut_faces'), of one photo or
    of many, classified in one batch. -> faces."""
    if not faces:
        return faces
    crops = np.stack([f.crop for f in faces])
    probabilities = classifier.probabilities(crops)
    heatmaps = classifier.grad_cam(crops, probabilities.argmax(1)) if explain else [None] * len(faces)
    for face, p, heatmap in zip(faces, probabilities, heatmaps):
        face.probabilities, face.heatmap = p, heatmap
    return faces


def analyze_image(image, classifier, detections, align=True, margin=0.15, explain=False):
    """The faces of one decoded photo with their class probabilities (and Grad-CAM maps): cut_faces, then
    classify_faces. -> [Face], in the order of detections."""
    return classify_faces(cut_faces(image, detections, classifier.input, align, margin), classifier, explain)


# ---------------------------------------------------------------------------------------------------------
# Drawing


def heatmap_colors(heatmap):
    """A 0..1 map -> float RGB (H x W x 3, 0..255) in red to yellow."""
    return np.stack([np.clip(2 * heatmap, 0, 1), np.clip(2 * heatmap - 1, 0, 1), np.zeros_like(heatmap)], 2) * 255


def heatmap_overlay(crop_uint8, heatmap, alpha=0.45):
    """A face crop (C x H x W uint8) with its heat-map blended in red-yellow, as an RGB PIL image."""
    gray = crop_uint8.mean(0) if crop_uint8.ndim == 3 else crop_uint8
    base = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    return Image.fromarray(((1 - alpha) * base + alpha * heatmap_colors(heatmap)).clip(0, 255).astype(np.uint8),
                           "RGB")


def _draw_heatmap_back(out, face, alpha=0.6):
    """Blend a face's Grad-CAM map into the photo where the face is, through the crop's own transform; where the
    map is 0 the photo shows through unchanged."""
    heat = Image.fromarray(heatmap_colors(face.heatmap).astype(np.uint8), "RGB")
    mask = Image.fromarray((alpha * 255 * np.clip(face.heatmap, 0, 1)).astype(np.uint8), "L")
    to_crop = np.linalg.inv(np.vstack([face.to_photo, [0, 0, 1]]))[:2]  # photo pixels -> crop pixels
    warped = heat.transform(out.size, Image.AFFINE, tuple(to_crop.flatten()), resample=Image.BILINEAR)
    warped_mask = mask.transform(out.size, Image.AFFINE, tuple(to_crop.flatten()), resample=Image.BILINEAR)
    out.paste(Image.composite(warped, out, warped_mask))


def annotate(image, faces, classes):
    """A copy of the photo with each face's box, landmarks (dots), Grad-CAM map (where computed) and its label
    and confidence drawn on it."""
    # Drawn with PIL, not torchvision.utils.draw_bounding_boxes/draw_keypoints: those draw through PIL as well, after a
    # round trip through a tensor that took a 1280x720 video frame with four faces from 4.4 ms to 10 ms.
    out = image.convert("RGB").copy()
    for face in faces:
        if face.heatmap is not None:
            _draw_heatmap_back(out, face)
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 200))
    # Class names may be in any script: drawn in a font that has all their glyphs (Chinese ones were empty boxes).
    font = pil_font(" ".join(classes) + " 0123456789%", max(12, min(out.size) // 36))
    for face in faces:
        x, y, w, h = face.box
        k = int(face.probabilities.argmax())
        draw.rectangle([x, y, x + w, y + h], outline=(255, 64, 64), width=width)
        for px, py in [] if face.landmarks is None else face.landmarks:
            r = max(2, width)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=(64, 255, 64))
        text = f"{'' if face.track is None else f'#{face.track} '}{classes[k]} {100 * face.probabilities[k]:.0f}%"
        box = draw.textbbox((0, 0), text, font=font)
        tx, ty = x, max(0, y - (box[3] - box[1]) - 2 * width)
        box = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(255, 64, 64))
        draw.text((tx, ty), text, fill=(255, 255, 255), font=font)
    return out
