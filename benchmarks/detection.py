"""Faces in scenes: how many each detector finds, how many it invents, how fast, and what detection and
alignment cost in expression accuracy against scoring the original crops.

    python benchmarks/detection.py --faces /path/to/fer2013/val --ckpt models/fer2013_5class_vgg.pth
    python benchmarks/detection.py --holdout /path/to/fer2013 --choose   # settings, on held-out validation

Scenes are built from face crops with known labels (a split folder of <Class>/ images, or --synthetic faces):
each crop is upscaled to 32..300 pixels, turned by 0, 15, 30 or 45 degrees (either way) and pasted at a known
place on a 640x480 or 1280x720 canvas (flat, gradient or textured background), one to eight faces a scene.
A face is found when a detection's box overlaps the face's box (FACE_BOX: where YuNet boxes an upright crop,
turned with the face) with IoU >= 0.5; a detection that overlaps no face by 0.3 is a false one. Expression
accuracy is the checkpoint's on the faces found, cut out as predict.py cuts them (aligned by landmarks, or the
box plus 15%), against its accuracy on the same faces' original crops. Each face is also pasted alone, upright,
on a plain gray canvas of its scene's size: how findable the crop itself is, apart from its turn and neighbours
(FER2013's tight crops lack hair, ears and neck, and many small ones are not found even so).

--choose scores the YuNet settings and alignment framings worth considering, on faces a choice may look at (the
checkpoint's held-out validation faces, --holdout; not its training faces, which a model scores from memory on
their original crops): the defaults in faces.py and predict.py come from it, not from the test faces.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import faces as face_lib  # noqa: E402
from cli import positive_int  # noqa: E402
from dataset import ASSIGNMENT_CLASSES  # noqa: E402
from faces import analyze_image, box_ious, make_detector  # noqa: E402
from images import data_files, read_image  # noqa: E402
from inference import load_classifier  # noqa: E402
from splits import recorded_validation  # noqa: E402
from synthetic import draw_face  # noqa: E402

ROTATIONS = (0, 15, 30, 45)
CANVASES = ((640, 480), (1280, 720))
MIN_SIDE = 48  # the table's faces: this many pixels and more (the smaller ones are summed up apart)


def load_faces(folder, classes, per_class, seed):
    """-> [(uint8 48x48 gray crop, class index)] drawn from folder/<class>/ for each model class."""
    rng = np.random.default_rng(seed)
    by_name = {p.name.lower(): p for p in Path(folder).iterdir() if p.is_dir()}
    out = []
    for k, name in enumerate(classes):
        files = data_files(by_name[name.lower()])
        for i in rng.permutation(len(files))[:per_class]:
            out.append((np.asarray(read_image(files[i]).convert("L").resize((48, 48), Image.BILINEAR)), k))
    return [out[i] for i in rng.permutation(len(out))]


def holdout_faces(classifier, root, count, seed):
    """The faces the checkpoint held out of root's train split for validation (splits.recorded_validation),
    which a choice may look at: -> [(uint8 48x48 crop, class index)]."""
    val = recorded_validation(root, classifier.classes, classifier.input, (classifier.record or {}).get("split", {}))
    picked = np.random.default_rng(seed).permutation(len(val))[:count]
    return [(val.images[i][0].numpy(), int(val.labels[i])) for i in picked]


def synthetic_faces(classes, count, seed):
    rng = np.random.default_rng(seed)
    kinds = {c.lower(): c for c in ASSIGNMENT_CLASSES}
    return [(np.asarray(draw_face(kinds[classes[i % len(classes)].lower()], rng, 48)), i % len(classes))
            for i in range(count)]


def background(size, rng):
    w, h = size
    kind = rng.integers(3)
    if kind == 0:
        return Image.new("RGB", size, tuple(int(v) for v in rng.integers(30, 230, 3)))
    if kind == 1:
        ramp = np.linspace(rng.uniform(20, 120), rng.uniform(140, 240), w)[None, :, None]
        tint = rng.uniform(0.7, 1.0, 3)[None, None, :]
        return Image.fromarray(np.broadcast_to(ramp * tint, (h, w, 3)).astype(np.uint8))
    # A texture: smoothed noise of moderate contrast around a random colour.
    base = rng.integers(60, 200, 3)[None, None, :]
    noise = rng.normal(0, 40, (h // 16, w // 16, 1)) + rng.normal(0, 15, (h // 16, w // 16, 3))
    small = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    return small.resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))


def make_scene(pool, size, rotation, rng, min_side=32, max_side=300):
    """Paste one to eight faces of the pool; -> (RGB image, [(centre, side, angle, label, crop)])."""
    canvas = background(size, rng)
    placed = []
    for _ in range(int(rng.integers(1, 9))):
        for _attempt in range(30):
            side = int(np.exp(rng.uniform(np.log(min_side), np.log(min(max_side, min(size) * 0.6)))))
            reach = side * (abs(math.cos(math.radians(rotation))) + abs(math.sin(math.radians(rotation))))
            cx, cy = rng.uniform(reach / 2, size[0] - reach / 2), rng.uniform(reach / 2, size[1] - reach / 2)
            if all(math.hypot(cx - p[0][0], cy - p[0][1]) > (reach + p[4]) / 2 + 4 for p in placed):
                crop, label = pool[int(rng.integers(len(pool)))]
                angle = rotation * (1 if rng.random() < 0.5 else -1)
                face = Image.fromarray(crop).convert("RGB").resize((side, side), Image.BICUBIC)
                mask = Image.new("L", (side, side), 255)
                face, mask = (im.rotate(angle, Image.BICUBIC, expand=True) for im in (face, mask))
                canvas.paste(face, (int(round(cx - face.width / 2)), int(round(cy - face.height / 2))), mask)
                placed.append(((cx, cy), side, angle, label, reach, crop))
                break
    return canvas, [(c, s, a, label, crop) for c, s, a, label, _, crop in placed]


# Where YuNet puts the box of an upright FER2013 crop of side s (median over 400 Training crops on a gray canvas):
# a 0.83 s x 1.02 s box whose centre is 0.014 s left of and 0.027 s below the crop's.
FACE_BOX = (0.83, 1.02, -0.014, 0.027)


def face_box(center, side, angle):
    """The box a detector should report for a pasted crop: FACE_BOX turned with the face, as the bounding box
    of the ellipse inscribed in it (a turned face's outline, not its corners)."""
    w, h, dx, dy = FACE_BOX
    t = math.radians(-angle)  # PIL turns counter-clockwise; image y points down
    cx = center[0] + side * (dx * math.cos(t) - dy * math.sin(t))
    cy = center[1] + side * (dx * math.sin(t) + dy * math.cos(t))
    a, b = w * side / 2, h * side / 2
    half_w = math.sqrt((a * math.cos(t)) ** 2 + (b * math.sin(t)) ** 2)
    half_h = math.sqrt((a * math.sin(t)) ** 2 + (b * math.cos(t)) ** 2)
    return cx - half_w, cy - half_h, 2 * half_w, 2 * half_h


def match(detections, truth):
    """-> (index of the detection matched to each true face or None, number of false detections)."""
    boxes = [face_box(c, s, a) for c, s, a, *_ in truth]
    ious = box_ious(boxes, [d.box for d in detections])
    taken, matched = set(), []
    for i in range(len(boxes)):
        best = max(((ious[i, j], j) for j in range(len(detections)) if j not in taken), default=(0, None))
        matched.append(best[1] if best[0] >= 0.5 else None)
        if best[1] is not None and best[0] >= 0.5:
            taken.add(best[1])
    false = sum(1 for j in range(len(detections)) if j not in taken and ious[:, j].max(initial=0) < 0.3)
    return matched, false


def found_alone(detector, crop, side, size):
    """The detection of this face pasted alone, upright, in the middle of a plain gray canvas of the given size
    (the scene's), or None: how findable the crop itself is at that size, apart from its turn and its neighbours.
    Not a bound: a scene's background can help a face that the gray canvas hides."""
    canvas = Image.new("RGB", size, (128, 128, 128))
    x, y = (size[0] - side) // 2, (size[1] - side) // 2
    canvas.paste(Image.fromarray(crop).convert("RGB").resize((side, side), Image.BICUBIC), (x, y))
    detections = detector(canvas)
    j = match(detections, [((x + side / 2, y + side / 2), side, 0)])[0][0]
    return None if j is None else detections[j]


def eye_line_error(found, alone, angle):
    """How far (degrees, 0..180) a face's eye line in the scene is from where it should be: the eye line of the
    same crop found alone and upright (faces.eye_line; FER2013's crops are not all level) turned by the angle it was
    pasted at (PIL's, counter-clockwise); None without landmarks on both."""
    if found is None or alone is None or found.landmarks is None or alone.landmarks is None:
        return None
    off = face_lib.eye_line(found.landmarks) - (face_lib.eye_line(alone.landmarks) - angle)
    return abs((off + 180) % 360 - 180)


def evaluate(scenes, classifier, detectors, setups):
    """scenes: [(image, truth, rotation)]. setups: name -> (detector name, align). -> per setup the rows of
    every true face (rotation, side, found, correct after detection or None, correct on its original crop, found
    alone (found_alone; None under MIN_SIDE)) and the false detections per scene."""
    results = {name: {"faces": [], "false": []} for name in setups}
    cache, alone = {}, {}
    # The same faces scored on their original crops, as test.py scores a split.
    originals = np.stack([crop[None] for _, truth, _ in scenes for *_, crop in truth])
    labels = [label for _, truth, _ in scenes for *_, label, _ in truth]
    right_on_original = (classifier.probabilities(originals).argmax(1) == np.array(labels)).tolist()
    k = 0
    for s, (image, truth, rotation) in enumerate(scenes):
        for name, (detector_name, align) in setups.items():
            if (detector_name, s) not in cache:
                cache[(detector_name, s)] = detectors[detector_name](image)
            detections = cache[(detector_name, s)]
            matched, false = match(detections, truth)
            found = [detections[j] for j in matched if j is not None]
            decided = analyze_image(image, classifier, found, align=align) if found else []
            decisions = iter(int(f.probabilities.argmax()) for f in decided)
            for i, ((_, side, angle, label, crop), j) in enumerate(zip(truth, matched)):
                correct = None if j is None else next(decisions) == label
                if (detector_name, k + i) not in alone:  # only the table's faces: each is a whole detector pass
                    alone[(detector_name, k + i)] = (found_alone(detectors[detector_name], crop, side, image.size)
                                                     if side >= MIN_SIDE else None)
                seen_alone = alone[(detector_name, k + i)]
                results[name]["faces"].append((rotation, side, j is not None, correct, right_on_original[k + i],
                                               seen_alone is not None,
                                               eye_line_error(None if j is None else detections[j], seen_alone,
                                                              angle)))
            results[name]["false"].append(false)
        k += len(truth)
    return results


def summary_rows(results, min_side=MIN_SIDE):
    rows = []
    for name, r in results.items():
        faces = [f for f in r["faces"] if f[1] >= min_side]
        for rotation in ROTATIONS:
            mine = [f for f in faces if f[0] == rotation]
            found = [f for f in mine if f[2]]
            alone = [f for f in mine if f[5]]
            recall = 100 * len(found) / len(mine) if mine else float("nan")
            found_alone = 100 * len(alone) / len(mine) if mine else float("nan")
            recall_of_alone = 100 * sum(f[2] for f in alone) / len(alone) if alone else float("nan")
            after = 100 * np.mean([f[3] for f in found]) if found else float("nan")
            original = 100 * np.mean([f[4] for f in found]) if found else float("nan")
            end_to_end = 100 * np.mean([bool(f[3]) for f in mine]) if mine else float("nan")
            # The gap is paired (the same faces both ways): its standard error is that of the per-face difference.
            diff = [int(f[3]) - int(f[4]) for f in found]
            se = 100 * np.std(diff, ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            eyes = [f[6] for f in found if f[6] is not None]
            eye_median = np.median(eyes) if eyes else float("nan")
            eye_off = 100 * np.mean(np.array(eyes) > 5) if eyes else float("nan")
            rows.append((name, rotation, len(mine), found_alone, recall, recall_of_alone, after, original,
                         after - original, se, end_to_end, eye_median, eye_off))
    return rows


def print_table(results, min_side):
    print(f"\nfaces of {min_side} px and more; alone: found pasted alone and upright on a plain gray canvas "
          "of the scene's size; recall | alone: recall of those in the scenes; accuracy on the faces found, after "
          "detection and cutting, against their original crops; end to end counts a missed face as wrong; eye line: "
          "degrees from the pasted angle (median, share more than 5 off), on faces with landmarks found also alone")
    print(f"{'setup':<20}{'rot':>4}{'faces':>6}{'alone %':>9}{'recall %':>10}{'| alone':>8}{'acc after':>11}"
          f"{'acc orig':>10}{'gap ± SE':>16}{'end-to-end':>12}{'eye med':>9}{'eye >5 %':>10}")
    for (name, rotation, n, alone, recall, of_alone, after, original, gap, se, e2e, eye_median,
         eye_off) in summary_rows(results, min_side):
        print(f"{name:<20}{rotation:>4}{n:>6}{alone:>9.2f}{recall:>10.2f}{of_alone:>8.2f}{after:>11.2f}"
              f"{original:>10.2f}{gap:>+8.2f} ± {se:5.2f}{e2e:>12.2f}{eye_median:>9.2f}{eye_off:>10.2f}")
    print(f"\n{'setup':<20}{'false detections per scene':>28}{f'recall, faces under {min_side} px':>28}")
    for name, r in results.items():
        small = [f for f in r["faces"] if f[1] < min_side]
        print(f"{name:<20}{np.mean(r['false']):>28.3f}{100 * np.mean([f[2] for f in small]) if small else 0:>27.2f}%")


class OpenCVYuNet:
    """The same YuNet upright through OpenCV's DNN module (cv2.FaceDetectorYN), at the same detection size: the
    runtime faces.YuNetDetector left for ONNX Runtime, timed beside it."""

    def __init__(self, max_side=960):
        import cv2
        self.cv2, self.max_side = cv2, max_side
        self.net = cv2.FaceDetectorYN.create(str(face_lib.YUNET_MODEL), "", (320, 320), 0.6, 0.3, 5000)

    def __call__(self, image):
        rgb, _ = face_lib.shrink(face_lib.pixels(image, "RGB"), self.max_side)
        self.net.setInputSize((rgb.shape[1], rgb.shape[0]))
        return self.net.detect(self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2BGR))[1]


def time_detectors(detectors, pool, rng, repeats):
    """Median and fastest ms per detection of each detector on 5 scenes per canvas size, repeats passes. The
    detectors take turns scene by scene, so that a slow spell of a shared machine falls on all of them alike; the
    fastest pass is what the code costs when no other work slows the machine (as timeit reads its minimum)."""
    print(f"\n{'detector':<16}" + "".join(f"{f'ms per {w}x{h}, median / fastest':>36}" for w, h in CANVASES))
    cells = {name: [] for name in detectors}
    for size in CANVASES:
        scenes = [make_scene(pool, size, 0, rng)[0] for _ in range(5)]
        times = {name: [] for name in detectors}
        for detector in detectors.values():
            detector(scenes[0])
        for _ in range(repeats):
            for scene in scenes:
                for name, detector in detectors.items():
                    start = time.perf_counter()
                    detector(scene)
                    times[name].append(time.perf_counter() - start)
        for name in detectors:
            cells[name].append(f"{1000 * np.median(times[name]):.1f} / {1000 * np.min(times[name]):.1f}")
    for name, row in cells.items():
        print(f"{name:<16}" + "".join(f"{c:>36}" for c in row))


CHOICES = {"max side 640": dict(max_side=640, turns=()), "max side 960": dict(max_side=960, turns=()),
           "max side 1280": dict(max_side=1280, turns=()), "640, turns -30,30": dict(max_side=640, turns=(-30, 30)),
           "960, turns -30,30": dict(max_side=960, turns=(-30, 30)),
           "1280, turns -30,30": dict(max_side=1280, turns=(-30, 30)),
           "1280, turns 15..45": dict(max_side=1280, turns=(-45, -30, -15, 15, 30, 45))}


def choose(pool, classifier, rng, scenes_per_rotation):
    """Detector settings, score thresholds and alignment framings, on faces a choice may look at."""
    scenes = [(*make_scene(pool, CANVASES[s % 2], r, rng), r) for r in ROTATIONS for s in range(scenes_per_rotation)]
    print(f"{len(scenes)} scenes, {sum(len(t) for _, t, _ in scenes)} faces")
    print(f"\nYuNet settings: recall % of faces >= {MIN_SIDE} px per rotation, false detections per scene, by score "
          "threshold; median ms per 1280x720 scene, found at the lowest threshold")
    thresholds = (0.3, 0.5, 0.6, 0.7, 0.8)
    for name, settings in CHOICES.items():
        detector, found, ms = make_detector("yunet", score_threshold=min(thresholds), **settings), [], []
        for image, _, _ in scenes:
            start = time.perf_counter()
            found.append(detector(image))
            if image.size == CANVASES[1]:
                ms.append(1000 * (time.perf_counter() - start))
        print(f"  {name:<26} {np.median(ms):.1f} ms")
        for threshold in thresholds:
            recall, false = {r: [0, 0] for r in ROTATIONS}, []
            for detections, (_, truth, rotation) in zip(found, scenes):
                matched, f = match([d for d in detections if d.score >= threshold], truth)
                false.append(f)
                for (_, side, *_), j in zip(truth, matched):
                    if side >= MIN_SIDE:
                        recall[rotation][0] += j is not None
                        recall[rotation][1] += 1
            cells = ", ".join(f"{r}: {100 * a / max(1, b):.1f}" for r, (a, b) in recall.items())
            print(f"  {name:<26} {threshold:.1f}  {cells}; false {np.mean(false):.3f}")
    print("\nalignment framings (side SCALE eye-to-mouth distances, centre CENTER of the way from the eyes to the "
          f"mouth) on the faces >= {MIN_SIDE} px the default detector finds: accuracy after cutting minus on the "
          "original crops, over all and per rotation, and the difference from the default framing on the same "
          "faces ± SE")
    detector, found = make_detector("yunet"), []  # (image, detections, labels, rotation, original crops)
    for image, truth, rotation in scenes:
        detections = detector(image)
        kept = [(detections[j], label, crop) for (_, side, _, label, crop), j in zip(truth, match(detections, truth)[0])
                if j is not None and side >= MIN_SIDE]
        if kept:
            found.append((image, [k[0] for k in kept], [k[1] for k in kept], rotation, [k[2] for k in kept]))
    labels = np.array([label for _, _, ls, _, _ in found for label in ls])
    rotations = np.array([r for _, _, ls, r, _ in found for _ in ls])
    original = classifier.probabilities(np.stack([c[None] for *_, crops in found for c in crops])).argmax(1) == labels
    print(f"  {len(labels)} faces; accuracy on their original crops {100 * original.mean():.2f}%")

    def correct(align):
        return np.concatenate([[int(f.probabilities.argmax()) for f in analyze_image(image, classifier, ds, align)]
                               for image, ds, *_ in found]) == labels

    base = (face_lib.ALIGN_SCALE, face_lib.ALIGN_CENTER)
    default = correct(True)
    cuts = {}
    for scale in (2.4, 2.67, 3.0, 3.3):
        for center in (0.15, 0.28, 0.4, 0.5):
            face_lib.ALIGN_SCALE, face_lib.ALIGN_CENTER = scale, center
            cuts[f"scale {scale:.2f} centre {center:.2f}"] = correct(True)
    face_lib.ALIGN_SCALE, face_lib.ALIGN_CENTER = base
    cuts["box + 15% (no alignment)"] = correct(False)
    for name, right in cuts.items():
        gap, versus = right.astype(float) - original, right.astype(float) - default
        per_rotation = ", ".join(f"{100 * gap[rotations == r].mean():+.1f}" for r in ROTATIONS)
        print(f"  {name:<26} gap {100 * gap.mean():+.2f} (per rotation {per_rotation}); against the default "
              f"{100 * versus.mean():+.2f} ± {100 * versus.std(ddof=1) / np.sqrt(len(versus)):.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", help="a split folder of <Class>/ face crops (FER2013's val/)")
    p.add_argument("--holdout", metavar="ROOT", help="the faces --ckpt held out of ROOT's train split for "
                   "validation (for --choose: what a choice may look at)")
    p.add_argument("--synthetic", action="store_true", help="the toolkit's drawn faces instead (or as well)")
    p.add_argument("--ckpt", default="models/fer2013_5class_vgg.pth", help="the model that scores expressions")
    p.add_argument("--per-class", type=positive_int, default=200, help="faces drawn from each class folder")
    p.add_argument("--scenes", type=positive_int, default=25, help="scenes per rotation and canvas size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--choose", action="store_true", help="score framings and thresholds (use a training split)")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed passes over 5 scenes per canvas size")
    p.add_argument("--level-context", type=float, default=face_lib.LEVEL_CONTEXT, metavar="SIDES",
                   help="the second look's square, in sides of the face's box (faces.LEVEL_CONTEXT), 1 to 4, to "
                   f"compare (default {face_lib.LEVEL_CONTEXT:g})")
    args = p.parse_args(argv)
    if not 1 <= args.level_context <= 4:
        p.error(f"--level-context must be 1 to 4 sides of the face, got {args.level_context:g}")
    face_lib.LEVEL_CONTEXT = args.level_context
    classifier = load_classifier(args.ckpt)
    rng = np.random.default_rng(args.seed)
    pool = []
    if args.faces:
        pool += load_faces(args.faces, classifier.classes, args.per_class, args.seed)
    if args.holdout:
        pool += holdout_faces(classifier, args.holdout, args.per_class * len(classifier.classes), args.seed)
    if args.synthetic or not pool:
        pool += synthetic_faces(classifier.classes, 200, args.seed)
    print(f"{len(pool)} faces, classes {', '.join(classifier.classes)}; model {args.ckpt}")
    if args.choose:
        choose(pool, classifier, rng, args.scenes)
        return 0
    scenes = [(*make_scene(pool, size, r, rng), r) for r in ROTATIONS for size in CANVASES for _ in range(args.scenes)]
    detectors = {"haar": make_detector("haar"), "yunet": make_detector("yunet"),
                 "yunet upright": make_detector("yunet", turns=())}
    setups = {"haar, box": ("haar", False), "yunet, box": ("yunet", False), "yunet, aligned": ("yunet", True),
              "yunet upright, al.": ("yunet upright", True)}
    results = evaluate(scenes, classifier, detectors, setups)
    print(f"{len(scenes)} scenes, {sum(len(t) for _, t, _ in scenes)} faces")
    print_table(results, MIN_SIDE)
    if not args.no_timing:
        time_detectors({**detectors, "upright, OpenCV": OpenCVYuNet()}, pool, rng, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
