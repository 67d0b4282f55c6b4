"""Find the faces in photos (or a video) and classify each one's expression.

    python predict.py group.jpg                          # the shipped model (models/), faces detected
    python predict.py photos/ --ckpt checkpoints/best.pth --out-dir predictions
    python predict.py crops/ --no-detect                 # each image is already one face crop
    python predict.py photos/ --boxes boxes.csv          # boxes you already have: file,x,y,w,h
    python predict.py --video clip.mp4                   # annotated video and a per-frame CSV
    python predict.py group.jpg --explain                # Grad-CAM heat-map of every face
    python predict.py group.jpg --ckpt model.onnx        # an exported ONNX model, run by ONNX Runtime
    python predict.py group.jpg --ckpt model.pt2         # an exported torch.export program
    python predict.py group.jpg --ckpt a.pth b.pth       # an ensemble: the mean of the models' logits

Prints one line per face (file, box, label, confidence) and writes to --out-dir an annotated copy of each
picture and predictions.csv / predictions.json with every class's probability.
"""
import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from errors import UserError, exit_code
from faces import FaceDetector, annotate, classify_image, heatmap_overlay
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
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-detect", action="store_true", help="treat each image as one face crop")
    mode.add_argument("--boxes", help="CSV with columns file,x,y,w,h giving the faces (no detection)")
    p.add_argument("--video", help="a video file: writes an annotated video and a per-frame CSV")
    p.add_argument("--explain", action="store_true", help="write a Grad-CAM heat-map for every face")
    p.add_argument("--out-dir", default="predictions")
    p.add_argument("--margin", type=float, default=0.15, help="share of the box added on each side before cropping")
    p.add_argument("--min-face", type=int, default=24, help="smallest face the detector reports, in pixels")
    p.add_argument("--batch-size", type=int, default=32, help="images classified together")
    p.add_argument("--device", default="cpu")
    return p


def find_images(inputs):
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"input {item} does not exist")
    if not files:
        raise UserError(f"no images found in {', '.join(inputs)}")
    return files


def read_boxes(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--boxes file {path} does not exist")
    boxes = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"file", "x", "y", "w", "h"} <= set(reader.fieldnames or []):
            raise UserError(f"--boxes file {path} needs the columns file,x,y,w,h")
        for line, row in enumerate(reader, start=2):
            try:
                box = tuple(int(float(row[k])) for k in ("x", "y", "w", "h"))
            except ValueError:
                raise UserError(f"{path}:{line}: x,y,w,h must be numbers") from None
            boxes[row["file"]].append(box)
    return boxes


class Results:
    """Collects one row per face and writes predictions.csv and predictions.json."""

    def __init__(self, classes):
        self.classes, self.rows = classes, []

    def add(self, source, index, face, **extra):
        k = int(face.probabilities.argmax())
        row = {"file": str(source), **extra, "face": index, "x": face.box[0], "y": face.box[1], "w": face.box[2],
               "h": face.box[3], "label": self.classes[k], "confidence": round(float(face.probabilities[k]), 6)}
        row.update({f"p_{c}": round(float(p), 6) for c, p in zip(self.classes, face.probabilities)})
        self.rows.append(row)
        return row

    def write(self, out_dir, stem="predictions"):
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = out_dir / f"{stem}.csv"
        with open(csv_path, "w", newline="") as f:
            fields = list(self.rows[0]) if self.rows else ["file", "face", "x", "y", "w", "h", "label", "confidence"]
            writer = csv.DictWriter(f, fieldnames=fields)
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
    detector = None if (args.no_detect or args.boxes) else FaceDetector(args.min_face)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.video:
        return predict_video(args, classifier, detector, out_dir)

    files = find_images(args.inputs)
    known_boxes = read_boxes(args.boxes) if args.boxes else None
    results = Results(classifier.classes)
    for start in tqdm(range(0, len(files), args.batch_size), desc="images", unit="batch",
                      disable=len(files) <= args.batch_size):
        for path in files[start:start + args.batch_size]:
            try:
                with Image.open(path) as im:
                    im.load()
                    image = im.convert("RGB")
            except (UnidentifiedImageError, OSError) as e:
                print(f"warning: skipped {path}: {e}", file=sys.stderr)
                continue
            if args.no_detect:
                boxes = [(0, 0, image.width, image.height)]
            elif known_boxes is not None:
                boxes = known_boxes.get(str(path), known_boxes.get(path.name, []))
            else:
                boxes = detector(image)
            faces = classify_image(image, classifier, boxes, margin=0 if args.no_detect else args.margin,
                                   explain=args.explain)
            if not faces:
                print(f"{path}: no face found")
            for i, face in enumerate(faces):
                row = results.add(path, i, face)
                print(f"{path}  face {i}  box {face.box[0]},{face.box[1]},{face.box[2]},{face.box[3]}  "
                      f"{row['label']}  {row['confidence']:.2f}")
                if args.explain:
                    overlay = heatmap_overlay(face.crop, face.heatmap).resize((192, 192), Image.BILINEAR)
                    overlay.save(out_dir / f"{path.stem}_face{i}_gradcam.png")
            if not args.no_detect:
                annotate(image, faces, classifier.classes).save(out_dir / f"{path.stem}_annotated.jpg", quality=92)
    csv_path = results.write(out_dir)
    print(f"{len(results.rows)} face(s) in {len(files)} image(s); wrote {csv_path} and annotated images to {out_dir}")
    return 0


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
    frame_index = 0
    with tqdm(total=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None, desc="frames") as bar:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            boxes = [(0, 0, image.width, image.height)] if detector is None else detector(image)
            faces = classify_image(image, classifier, boxes, margin=args.margin)
            for i, face in enumerate(faces):
                results.add(args.video, i, face, frame=frame_index, time_s=round(frame_index / fps, 3))
            writer.write(cv2.cvtColor(np.asarray(annotate(image, faces, classifier.classes)), cv2.COLOR_RGB2BGR))
            frame_index += 1
            bar.update(1)
    capture.release()
    writer.release()
    csv_path = results.write(out_dir, f"{Path(args.video).stem}_frames")
    print(f"{frame_index} frames, {len(results.rows)} face detections; wrote {video_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
