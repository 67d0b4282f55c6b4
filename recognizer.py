"""The Python API: expressions out of photos in a few lines.

    from recognizer import Recognizer

    recognizer = Recognizer()                        # the shipped FER+ model, YuNet with its default settings
    for face in recognizer.analyze("group.jpg"):     # a path, a PIL image or a numpy array (bgr=True for OpenCV's)
        print(face["box"], face["label"], face["confidence"])

Each face is a dict of plain Python values (json.dumps takes it as it is): box [x, y, w, h] in pixels of the photo,
the detector's score, five landmarks {name: [x, y]}, label, confidence and probabilities {class: p}. It runs the
path predict.py and the page run (photos.analyze_photos), so the three give the same faces and numbers.
"""
import contextlib
import math
import numbers
import warnings
from argparse import ArgumentTypeError
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

import engine
from cli import angle_list, fraction_or_zero, positive_int, share, thread_count, usable_cores
from errors import UserError
from faces import YUNET_MODEL
from inference import Classifier, amp_warnings, load_classifier, onnx_twin
from photos import DEFAULT_MODEL, FaceSettings, analyze_photos, face_record
from tracks import FaceTracker
from videos import VideoFrames

# How a Recognizer spreads a photo's work when the caller does not say (threads=None): torch on one thread, since
# one face's views are a batch of two 48x48 images, too little work to share between threads, and torch's threads
# that wait for each other are what made a photo take many times longer while other work held the cores; YuNet's
# passes over the photo (upright, turned, second looks) side by side on up to DEFAULT_PASSES_AT_ONCE threads (no
# more than the cores), one thread a pass, which shares out whole passes rather than splitting each; and a
# checkpoint's ONNX twin (inference.onnx_twin) on as many threads, which wait without spinning.
# benchmarks/photo_speed.py times the plans, quiet and loaded (docs/report.md, 14.3).
DEFAULT_THREADS = None
DEFAULT_PASSES_AT_ONCE = 2
# Seconds over which a video's face probabilities are smoothed along its track (predict.py --smooth).
DEFAULT_SMOOTH = 0.5
# A video's whole frame is searched every this many frames, its faces followed in between (predict.py
# --detect-every): the search's two turned passes over the frame are most of its cost. On benchmarks/video.py's clips
# the faces followed got the label of searching every frame for 99.6-100% of faces, at 36 frames a second for four
# faces at 1280x720 where searching every frame gave 22-30; a face that enters is found within two frames.
DEFAULT_DETECT_EVERY = 3


def checked(name, value, parse):
    """A Recognizer setting checked by the parser of predict.py's flag of that name (cli.py) -> its value;
    UserError naming the setting otherwise."""
    try:
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):  # numpy's scalars are Real
            raise ValueError(f"must be a number, got {value!r}")
        return parse(str(value))
    except (ArgumentTypeError, ValueError) as e:
        why = str(e) if str(e).startswith("must") else f"must be a number, got {value!r}"
        raise UserError(f"{name} {why}") from None


def checked_turns(turns):
    """turns: angles in degrees (a list or tuple, or predict.py's "-30,30" text; None or () for none) -> a tuple of
    floats; UserError otherwise."""
    if turns is None or (isinstance(turns, (list, tuple)) and not turns):
        return ()
    if isinstance(turns, (int, float)):
        raise UserError(f"turns must be a list of angles, e.g. (-30, 30), got {turns!r}")
    text = turns if isinstance(turns, str) else ",".join(str(t) for t in turns)
    return checked("turns", text, angle_list)


def check_video_settings(fps, detect_every, smooth=0.0):
    """UserError unless fps is a finite number above 0, detect_every a whole number of 1 or more and smooth a
    finite number of 0 or more (seconds)."""
    def number(v):
        return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
    if not (number(fps) and fps > 0):
        raise UserError(f"fps must be a number above 0 (frames a second), got {fps!r}")
    if not (number(detect_every) and detect_every >= 1 and detect_every == int(detect_every)):
        raise UserError(f"detect_every must be a whole number of 1 or more, got {detect_every!r}")
    if not (number(smooth) and smooth >= 0):
        raise UserError(f"smooth must be a number of 0 or more (seconds), got {smooth!r}")


class ThreadPlan(NamedTuple):
    """How many threads each library gets (thread_plan)."""
    torch: int  # torch's threads (0: as they are)
    onnx_classifier: int  # ONNX Runtime's for an .onnx model's network or a checkpoint's twin (0: its own)
    yunet_pass: int  # ONNX Runtime's for one YuNet pass (0: its own)
    passes_at_once: int  # YuNet's passes over a photo run side by side


def thread_plan(threads):
    """A Recognizer's threads (None, or thread_count's 0 .. cores) -> ThreadPlan. None: per-photo work, as
    DEFAULT_THREADS' comment says; 0: each library's own choice, one pass at a time; n: n threads for the
    classifier and YuNet's passes n at once, one thread each."""
    if threads is None:
        two = max(1, min(DEFAULT_PASSES_AT_ONCE, usable_cores()))
        return ThreadPlan(torch=1, onnx_classifier=two, yunet_pass=1, passes_at_once=two)
    if threads == 0:
        return ThreadPlan(0, 0, 0, 1)
    return ThreadPlan(torch=threads, onnx_classifier=threads, yunet_pass=1, passes_at_once=threads)


def photo_classifier(model, device="cpu", amp="auto", onnx_threads=None):
    """The classifier of model (load_classifier's paths) for photos and video. A checkpoint whose own .onnx export
    sits beside it runs its network in ONNX Runtime (inference.onnx_twin), unless amp is "bf16" or bf16 would run on
    one thread (onnx_threads 1), where PyTorch's bf16 is as fast; otherwise in bf16
    where amp ("auto", "bf16", "off"; engine.use_amp) says so. On this project's CPU bf16 takes a face's two views
    from 2.7 to 2.0 ms (32 faces: 2.7 to 1.2 ms a face; benchmarks/inference_latency.py) and, on the shipped FER+
    model's held-out validation faces, changed 2 of 2,494 decisions and no accuracy (89.25% both;
    benchmarks/tta_views.py --bf16); the twin runs in fp32, as test.py scores. onnx_threads: ONNX Runtime's threads
    for an .onnx model or twin (0: its own choice; None: the default thread plan's). UserError for an amp it does
    not know."""
    if amp not in ("auto", "bf16", "off"):
        raise UserError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")
    onnx_threads = thread_plan(None).onnx_classifier if onnx_threads is None else onnx_threads
    selected = engine.select_device(device)
    classifier = load_classifier(model, device, engine.use_amp(amp, selected), onnx_threads=onnx_threads)
    members = getattr(classifier, "members", [classifier])
    for warning in amp_warnings(amp, selected, classifier):
        warnings.warn(warning, stacklevel=3)  # at the line that made the Recognizer
    for member in members:
        # The twin runs in fp32, faster than PyTorch's fp32 at any thread count and than its bf16 on two threads;
        # on one the two are alike (a face's two views 2.1-2.6 ms against 1.7-2.4; docs/report.md, 14.3), and
        # PyTorch's bf16 stays.
        if amp != "bf16" and not (getattr(member, "amp", False) and onnx_threads == 1):
            onnx_twin(member, onnx_threads)
    return classifier


@contextlib.contextmanager
def torch_threads(count):
    """Within the block torch uses count threads (0: as it was); its own count is restored after (switching costs
    about 0.1 ms)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(before)


class Recognizer:
    """Finds the faces in photos and classifies their expressions.

    model: a checkpoint (.pth) or export (.onnx, .pt2) path, a list of them (an ensemble), or a loaded
    inference.Classifier; None: the shipped models/ferplus_vgg.pth (FER+'s eight classes). device: "cpu",
    "cuda"... (PyTorch models only). detector: "yunet" (with landmarks) or "haar" (boxes only). turns: angles
    (degrees) of turned copies of each photo also searched for tilted heads (YuNet; () for upright only, the
    fastest). align: cut faces out aligned by their landmarks (else the box plus margin). threads: how many threads
    this Recognizer works on (thread_plan): n runs YuNet's passes over a photo n at once, one thread each, and the
    classifier on n threads (torch's count set for each call and restored after, so the rest of the process keeps
    its own); None (DEFAULT_THREADS) suits a photo at a time: the passes two at once, torch on one thread and a
    checkpoint's ONNX twin on two (photo_classifier); 0: each library's own choice.
    score_threshold, min_face (pixels), max_side (pixels), detector_model and margin: as predict.py's flags of
    those names. amp: "auto" runs a PyTorch model in bf16 where the device does so natively (CPUs with AVX-512
    BF16 or AMX, most GPUs), "bf16" always, "off" in fp32 (photo_classifier).

    Raises UserError (errors.py) for a model or detector file that is missing or unreadable and for settings out of
    range.
    """

    def __init__(self, model=None, device="cpu", detector="yunet", turns=(-30, 30), align=True, threads=None,
                 score_threshold=0.6, min_face=24, max_side=960, detector_model=None, margin=0.15, amp="auto"):
        if detector not in ("yunet", "haar"):
            raise UserError(f"detector must be 'yunet' or 'haar', got {detector!r}")
        self.threads = None if threads is None else checked("threads", threads, thread_count)
        self.plan = thread_plan(self.threads)
        if isinstance(model, Classifier):
            self.classifier = model
        else:
            if model is None and not DEFAULT_MODEL.exists():
                raise UserError(f"the shipped model {DEFAULT_MODEL} is missing; pass model=PATH to a checkpoint")
            self.classifier = photo_classifier(model or DEFAULT_MODEL, device, amp, self.plan.onnx_classifier)
        self.settings = FaceSettings(detector, str(detector_model or YUNET_MODEL),
                                     checked("score_threshold", score_threshold, share),
                                     checked("min_face", min_face, positive_int),
                                     checked("max_side", max_side, positive_int), checked_turns(turns),
                                     align=bool(align), margin=checked("margin", margin, fraction_or_zero),
                                     threads=self.plan.yunet_pass, passes_at_once=self.plan.passes_at_once)
        self.detector = self.settings.detector_for()

    @property
    def classes(self):
        """The model's class names, in the order of its outputs."""
        return self.classifier.classes

    def photos(self, images, faces=True, boxes=None, explain=False, bgr=False, detector=None):
        """The rich results predict.py and the page render: images (paths, PIL images or numpy arrays) ->
        [photos.PhotoResult], one per image, each with its faces (faces.Face: box, landmarks, crop, probabilities,
        heatmap with explain) or the reason it has none (status: "unreadable: ...", "too large: ...", "no face
        found"). faces=False: each image is one face crop; boxes: read_boxes' rows by file name instead of
        detection; detector: a callable from a PIL image to [faces.Detection] used instead of this Recognizer's
        own. Every face of every image goes through the network in one batch."""
        settings = self.settings
        if not faces or boxes is not None:
            settings = replace(settings, no_detect=not faces, boxes=boxes)
        with torch_threads(self.plan.torch):
            return analyze_photos(images, self.classifier, settings,
                                  (detector or self.detector) if faces and boxes is None else None, explain, bgr)

    def analyze(self, image, faces=True, bgr=False):
        """One photo (a file path, a PIL image, or a numpy array H x W, H x W x 3 or H x W x 4, RGB or, with
        bgr=True, OpenCV's BGR) -> a list with one dict per face, largest first: box [x, y, w, h] (int pixels),
        score (the detector's, None without one), landmarks {right_eye, left_eye, nose, mouth_right, mouth_left:
        [x, y]} (None for Haar and faces=False), label, confidence, probabilities {class: p} and aligned.
        faces=False: the image is already a face crop (no detection; one dict). [] when no face is found.
        Raises UserError naming the image when it cannot be read or, with faces=False, cannot be a face (under 8
        pixels a side, or narrower than training takes: images.why_not_a_face)."""
        if isinstance(image, (list, tuple)):
            raise UserError("analyze takes one image; for a list of them, use analyze_many")
        return self.analyze_many([image], faces, bgr)[0]

    def analyze_many(self, images, faces=True, bgr=False, errors="raise"):
        """Many photos (a list or other iterable of what analyze takes) -> a list of analyze's lists, one per image,
        in order; the faces of all of them go through the network in one batch. An image that cannot be read (or,
        with faces=False, cannot be a face) raises UserError naming it (errors="raise"), or (errors="skip")
        gives None in its place, with a warning naming it, and the others their faces."""
        if isinstance(images, (str, Path, np.ndarray, Image.Image)):
            raise UserError("analyze_many takes a list of images; for one image, use analyze")
        if errors not in ("raise", "skip"):
            raise UserError(f"errors must be 'raise' or 'skip', got {errors!r}")
        images = list(images)
        results = self.photos(images, faces=faces, bgr=bgr)
        out = []
        for index, (image, result) in enumerate(zip(images, results)):
            # A photo without a face is an answer ([]); a crop (faces=False) that cannot be a face is not one.
            if not result.readable or (not faces and result.status != "ok"):
                name = result.source if isinstance(image, (str, Path)) else \
                    "the image" if len(images) == 1 else f"image {index}"
                if errors == "raise":
                    raise UserError(f"{name}: {result.status}")
                warnings.warn(f"{name}: {result.status}; left out", stacklevel=2)
                out.append(None)
                continue
            out.append([face_record(face, self.classes) for face in result.faces])
        return out

    def video_photos(self, frames, fps, tracker, faces=True, explain=False, detect_every=DEFAULT_DETECT_EVERY):
        """A video's frames (numpy arrays in OpenCV's BGR, as VideoFrames gives them, or PIL images) at fps frames a
        second -> yields (index, time in seconds, photos.PhotoResult) frame by frame, each face with its track id
        (face.track) and its track's smoothed probabilities from tracker (tracks.FaceTracker). detect_every: faces
        are searched for in the whole frame on every detect_every-th frame and, in between, followed from where
        they were (faces.YuNetDetector.follow; YuNet only, Haar searches every frame)."""
        check_video_settings(fps, detect_every)
        follow = getattr(self.detector, "follow", None) if faces and detect_every > 1 else None
        last = []
        for index, frame in enumerate(frames):
            time_s = index / fps
            detector = None
            if follow is not None and index % detect_every and last:
                detector = partial(follow, previous=last)
            photo = self.photos([frame], faces=faces, explain=explain, bgr=isinstance(frame, np.ndarray),
                                detector=detector)[0]
            self.track(photo, tracker, time_s)
            last = photo.faces
            yield index, time_s, photo

    @staticmethod
    def track(photo, tracker, time_s):
        """Give a frame's faces (photos.PhotoResult, seen at time_s seconds) their track ids (face.track) and their
        tracks' smoothed probabilities, from tracker (tracks.FaceTracker)."""
        size = photo.image.size if photo.readable else (1, 1)
        for face, track in zip(photo.faces, tracker.update(photo.faces, time_s, size)):
            face.track = track

    def analyze_video(self, video, fps=None, faces=True, smooth=DEFAULT_SMOOTH,
                      detect_every=DEFAULT_DETECT_EVERY):
        """A video file's path, or an iterable of frames (numpy arrays in OpenCV's BGR, or PIL images; fps then
        says how many a second, 25 when None) -> a VideoAnalysis: iterating it yields, frame by frame, {"frame":
        index, "time_s": seconds, "faces": analyze's dicts, each with its "track" id}; its tracks() gives one
        summary dict a track seen so far (tracks.FaceTracker.summary). Probabilities are smoothed along each track
        over smooth seconds (0: each frame's own); detect_every: as video_photos. Raises UserError for a path that
        cannot be read as a video."""
        if isinstance(video, (np.ndarray, Image.Image)):
            raise UserError("analyze_video takes a video file's path or a list (or other iterable) of frames; for "
                            "one image, use analyze")
        if isinstance(video, (str, Path)):
            frames = VideoFrames(video)
            if fps is not None and fps != frames.fps:
                warnings.warn(f"fps={fps} is left unused: {video} says its own ({frames.fps:g} a second); fps "
                              "applies to a list of frames", stacklevel=2)
            fps = frames.fps
        else:
            frames, fps = video, 25.0 if fps is None else fps
        check_video_settings(fps, detect_every, smooth)
        return VideoAnalysis(self, frames, fps, FaceTracker(smooth), faces, detect_every)


class VideoAnalysis:
    """Recognizer.analyze_video's result: iterate it for the frames; tracks() for the summary of what was read."""

    def __init__(self, recognizer, frames, fps, tracker, faces, detect_every):
        self.recognizer, self.frames, self.fps, self.tracker = recognizer, frames, fps, tracker
        self.faces, self.detect_every, self.started = faces, detect_every, False

    def __iter__(self):
        if self.started:
            raise UserError("a video's analysis is read once: call analyze_video again to read it again")
        self.started = True
        classes = self.recognizer.classes
        steps = self.recognizer.video_photos(self.frames, self.fps, self.tracker, self.faces,
                                             detect_every=self.detect_every)
        for index, time_s, photo in steps:
            if not photo.readable:  # as analyze_many(errors="skip") says of an image it cannot read
                warnings.warn(f"frame {index}: {photo.status}; it gives no faces", stacklevel=2)
            yield {"frame": index, "time_s": round(time_s, 3),
                   "faces": [face_record(face, classes) for face in photo.faces]}
        shortfall = getattr(self.frames, "shortfall", None)  # a file's VideoFrames; a list of frames has none
        why = shortfall() if shortfall is not None else None
        if why:  # as predict.py --video says it
            warnings.warn(why, stacklevel=2)

    def tracks(self):
        """-> one dict a track seen so far (track, first_s, last_s, frames, dominant, share_<class>); UserError
        before the frames have been read."""
        if not self.started:
            raise UserError("iterate over the analysis first: tracks are known once its frames have been read")
        return self.tracker.summary(self.recognizer.classes)
