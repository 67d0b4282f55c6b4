"""Find the faces in photos (or a video) and classify each one's expression.

    python predict.py group.jpg                          # the shipped model (models/), faces found by YuNet
    python predict.py photos/ --ckpt checkpoints/best.pth --out-dir predictions
    python predict.py crops/ --no-detect                 # each image is already one face crop
    python predict.py photos/ --boxes boxes.csv          # boxes you already have: file,x,y,w,h
    python predict.py --video clip.mp4                   # annotated video and a per-frame CSV
    python predict.py group.jpg --explain                # Grad-CAM heat-map of every face
    python predict.py group.jpg --detector haar --no-align   # OpenCV's Haar cascade and plain box crops
    python predict.py group.jpg --ckpt model.onnx        # an exported ONNX model, run by ONNX Runtime
    python predict.py group.jpg --ckpt a.pth b.pth       # an ensemble: the mean of the models' logits

Prints one line per face (file, box, label, confidence) and writes to --out-dir an annotated copy of each
picture and predictions.csv / predictions.json: a row per face with its box, detector score, landmarks and
every class's probability, and a row for every input that gave no face, saying why.
"""
import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cli import angle_list, fraction_or_zero, positive_int
from dataset import canonical_image, data_files, read_image
from errors import UserError, exit_code
from faces import LANDMARKS, YUNET_MODEL, Detection, analyze_image, annotate, clip_box, heatmap_overlay, make_detector
from inference import load_classifier

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "fer2013_5class_vgg.pth"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def get_args_parser():
    p = argparse.ArgumentParser(description="Classify the expression of every face in photos or a video.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="*", help="photos and/or folders of photos")
    p.add_argument("--ckpt", nargs="+", default=[str(DEFAULT_MODEL)],
                   help="a checkpoint (.pth) or a model export.py wrote (.onnx, .pt2); several make an ensemble, "
                   "deciding on the mean of their logits as test.py scores it")
    p.add_argument("--video", help="a video file: writes an annotated video and a per-frame CSV")
    p.add_argument("--explain", action="store_true",
                   help="Grad-CAM of every face: a heat-map PNG per face, and drawn where the face is")
    p.add_argument("--out-dir", default="predictions")
    g = p.add_argument_group("faces")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--no-detect", action="store_true", help="treat each image as one face crop")
    mode.add_argument("--boxes", help="CSV with columns file,x,y,w,h giving the faces (no detection, box crops)")
    g.add_argument("--detector", choices=["yunet", "haar"], default="yunet",
                   help="YuNet (a CNN, with landmarks) or OpenCV's Haar cascade (boxes only)")
    g.add_argument("--detector-model", default=str(YUNET_MODEL), help="the YuNet ONNX file")
    g.add_argument("--score-threshold", type=fraction_or_zero, default=0.6,
                   help="YuNet: the lowest detector score kept")
    g.add_argument("--min-face", type=positive_int, default=24, help="smallest face kept, in pixels of the photo")
    g.add_argument("--max-side", type=positive_int, default=960,
                   help="photos are detected at a size whose longer side is at most this (boxes mapped back)")
    g.add_argument("--turns", type=angle_list, default=(-30.0, 30.0), metavar="DEG,DEG",
                   help="YuNet: also search copies of the photo turned by these angles, for tilted heads (each "
                   "costs one more detection pass); none: upright only, the fastest")
    g.add_argument("--no-align", action="store_true",
                   help="cut faces as their box plus --margin instead of aligning them by their landmarks")
    g.add_argument("--margin", type=fraction_or_zero, default=0.15,
                   help="box crops: share of the box added on each side")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="cpu")
    return p


def find_images(inputs):
    """The image files of the inputs (files as given, folders searched, hidden files left out), in order."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += [p for p in data_files(item) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"input {item} does not exist")
    if not files:
        raise UserError(f"no images found in {', '.join(inputs)}")
    return list(dict.fromkeys(files))


def output_names(files):
    """A distinct name for each input's outputs: its stem, or where stems clash (a/face.png, b/face.png,
    a/face.jpg) its path below the inputs' common folder with its suffix, '/' written as '_'."""
    stems = [f.stem for f in files]
    clashing = {s for s in stems if stems.count(s) > 1}
    if not clashing:
        return stems
    resolved = [f.resolve() for f in files]
    common = Path(*[parts[0] for parts in zip(*(p.parent.parts for p in resolved)) if len(set(parts)) == 1]) \
        if len(resolved) > 1 else resolved[0].parent
    names = []
    for f, r, stem in zip(files, resolved, stems):
        names.append("_".join(r.relative_to(common).parts) if stem in clashing else stem)
    return names


def read_boxes(path):
    """--boxes CSV -> {file: [(x, y, w, h, csv line)]}; UserError naming the file or line for bad input."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--boxes file {path} does not exist")
    boxes = defaultdict(list)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        names = {(n or "").strip().lower(): n for n in reader.fieldnames or []}
        if not {"file", "x", "y", "w", "h"} <= set(names):
            raise UserError(f"--boxes file {path} needs the columns file,x,y,w,h")
        for line, row in enumerate(reader, start=2):
            try:
                box = tuple(float(row[names[k]]) for k in ("x", "y", "w", "h"))
            except (TypeError, ValueError):
                raise UserError(f"{path}:{line}: x,y,w,h must be numbers") from None
            boxes[row[names["file"]].strip()].append((*box, line))
    return boxes


class Results:
    """Collects a row per face (and per input without one) and writes predictions.csv and predictions.json."""

    def __init__(self, classes):
        self.classes, self.rows = classes, []

    def add(self, source, index, face, **extra):
        k = int(face.probabilities.argmax())
        x, y, w, h = (int(round(v)) for v in face.box)
        row = {"file": str(source), **extra, "face": index, "status": "ok", "x": x, "y": y, "w": w, "h": h,
               "label": self.classes[k], "confidence": round(float(face.probabilities[k]), 6),
               "detector_score": "" if face.score is None else round(face.score, 4), "aligned": face.aligned}
        for name, point in zip(LANDMARKS, [] if face.landmarks is None else face.landmarks):
            row[f"{name}_x"], row[f"{name}_y"] = round(float(point[0]), 1), round(float(point[1]), 1)
        row.update({f"p_{c}": round(float(p), 6) for c, p in zip(self.classes, face.probabilities)})
        self.rows.append(row)
        return row

    def add_failure(self, source, why, **extra):
        """A row for an input that gave no face: why (no face found, unreadable, too large...)."""
        self.rows.append({"file": str(source), **extra, "face": "", "status": why})

    def write(self, out_dir, stem="predictions"):
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = out_dir / f"{stem}.csv"
        fields = list(dict.fromkeys(k for row in self.rows for k in row)) or ["file", "face", "status"]
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        (out_dir / f"{stem}.json").write_text(json.dumps({"classes": self.classes, "faces": self.rows}, indent=1))
        return csv_path


def main(argv=None):
    """The command line: -> exit code (2, with a one-line message, for bad input)."""
    return exit_code("predict.py", run, get_args_parser().parse_args(argv))


def run(args):
    if not args.inputs and not args.video:
        raise UserError("give photos or folders to classify, or --video FILE")
    if args.ckpt == [str(DEFAULT_MODEL)] and not DEFAULT_MODEL.exists():
        raise UserError(f"the shipped model {DEFAULT_MODEL} is missing; pass --ckpt checkpoints/best.pth")
    classifier = load_classifier(args.ckpt, args.device)
    detector = None if (args.no_detect or args.boxes) else make_detector(
        args.detector, args.detector_model, args.score_threshold, args.min_face, args.max_side, args.turns)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.video:
        return predict_video(args, classifier, detector, out_dir)

    files = find_images(args.inputs)
    known_boxes = read_boxes(args.boxes) if args.boxes else None
    results, written = Results(classifier.classes), defaultdict(int)
    for path, name in tqdm(list(zip(files, output_names(files))), desc="images", unit="image",
                           disable=len(files) < 32):
        try:
            image = read_image(path)
        except Image.DecompressionBombError as e:
            failed(results, path, f"too large: {str(e).split('.')[0]}")
            continue
        except (OSError, ValueError, SyntaxError) as e:
            failed(results, path, f"unreadable: {type(e).__name__}: {str(e)[:80]}")
            continue
        if args.no_detect:
            detections = [Detection((0, 0, image.width, image.height))]
        elif known_boxes is not None:
            detections = given_boxes(known_boxes, path, image, args.boxes)
        else:
            detections = detector(image)
        faces = analyze_image(image, classifier, detections, align=not args.no_align,
                              margin=0 if args.no_detect else args.margin, explain=args.explain)
        if not faces:
            failed(results, path, "no face found")
        for i, face in enumerate(faces):
            row = results.add(path, i, face)
            print(f"{path}  face {i}  box {row['x']},{row['y']},{row['w']},{row['h']}  {row['label']}  "
                  f"{row['confidence']:.2f}")
            if args.explain:
                overlay = heatmap_overlay(face.crop, face.heatmap).resize((192, 192), Image.BILINEAR)
                overlay.save(out_dir / f"{name}_face{i}_gradcam.png")
                written["Grad-CAM maps"] += 1
        if not args.no_detect and faces:
            annotate(image, faces, classifier.classes).save(out_dir / f"{name}_annotated.jpg", quality=92)
            written["annotated images"] += 1
    csv_path = results.write(out_dir)
    faces_found = sum(1 for r in results.rows if r["status"] == "ok")
    also = "".join(f", {n} {what}" for what, n in written.items())
    print(f"{faces_found} face(s) in {len(files)} image(s); wrote {csv_path}, {csv_path.with_suffix('.json').name}"
          f"{also} to {out_dir}")
    return 0


def failed(results, source, why, **extra):
    print(f"warning: {source}: {why}", file=sys.stderr)
    results.add_failure(source, why, **extra)


def given_boxes(known_boxes, path, image, boxes_file):
    """The --boxes rows of one image (by its path as given, or its name), clipped to it; a box with nothing
    inside the image is skipped with a warning naming its row."""
    detections = []
    for *box, line in known_boxes.get(str(path), known_boxes.get(path.name, [])):
        clipped = clip_box(box, image.width, image.height)
        if clipped is None:
            print(f"warning: {boxes_file}:{line}: box {','.join(f'{v:g}' for v in box)} has nothing inside "
                  f"{path} ({image.width}x{image.height}); skipped", file=sys.stderr)
            continue
        detections.append(Detection(clipped))
    return detections


def predict_video(args, classifier, detector, out_dir):
    import cv2

    capture = cv2.VideoCapture(args.video)
    if not capture.isOpened():
        raise UserError(f"--video {args.video} cannot be opened as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    video_path = out_dir / f"{Path(args.video).stem}_annotated.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    results = Results(classifier.classes)
    frame_index, faceless = 0, 0
    with tqdm(total=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None, desc="frames") as bar:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            # Frames go through the decoding photos go through (canonical_image), as RGB.
            image = canonical_image(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            detections = [Detection((0, 0, image.width, image.height))] if detector is None else detector(image)
            faces = analyze_image(image, classifier, detections, align=not args.no_align, margin=args.margin)
            stamp = {"frame": frame_index, "time_s": round(frame_index / fps, 3)}
            if not faces:
                faceless += 1
                results.add_failure(args.video, "no face found", **stamp)
            for i, face in enumerate(faces):
                results.add(args.video, i, face, **stamp)
            writer.write(cv2.cvtColor(np.asarray(annotate(image, faces, classifier.classes)), cv2.COLOR_RGB2BGR))
            frame_index += 1
            bar.update(1)
    capture.release()
    writer.release()
    if faceless:
        print(f"warning: {args.video}: no face found in {faceless} of {frame_index} frames", file=sys.stderr)
    csv_path = results.write(out_dir, f"{Path(args.video).stem}_frames")
    found = sum(1 for r in results.rows if r["status"] == "ok")
    print(f"{frame_index} frames, {found} face detections; wrote {video_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
