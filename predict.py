"""Find the faces in photos (or a video) and classify each one's expression.

    python predict.py group.jpg                          # the shipped model (models/), faces found by YuNet
    python predict.py photos/ --ckpt checkpoints/best.pth --out-dir predictions
    python predict.py crops/ --no-detect                 # each image is already one face crop
    python predict.py photos/ --boxes boxes.csv          # boxes you already have: file,x,y,w,h
    python predict.py --video clip.mp4                   # annotated video, frames CSV, tracks CSV, timeline
    python predict.py group.jpg --explain                # Grad-CAM heat-map of every face
    python predict.py group.jpg --detector haar --no-align   # OpenCV's Haar cascade and plain box crops
    python predict.py group.jpg --ckpt model.onnx        # an exported ONNX model, run by ONNX Runtime
    python predict.py group.jpg --ckpt a.pth b.pth       # an ensemble: the mean of the models' logits

Prints one line per face (file, box, label, confidence) and writes to --out-dir an annotated copy of each
picture and predictions.csv / predictions.json: a row per face with its box, detector score, landmarks and
every class's probability, and a row for every input that gave no face, saying why.
"""
import argparse
import sys
import warnings
from collections import defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cli import (
    HelpFormatter,
    angle_list,
    attach_negative_values,
    fraction_or_zero,
    non_negative_float,
    output_folder,
    positive_int,
    share,
    thread_count,
)
from errors import UserError, exit_code
from faces import YUNET_MODEL, annotate, heatmap_overlay
from images import is_image
from photos import (
    DEFAULT_MODEL,
    OUTPUT_NAMES,
    Results,
    annotated_name,
    assign_boxes,
    find_images,
    gradcam_name,
    output_names,
    read_boxes,
)
from recognizer import DEFAULT_DETECT_EVERY, DEFAULT_SMOOTH, DEFAULT_THREADS, Recognizer
from runs import set_aside_earlier_run
from videos import VideoFrames, process_video

PHOTOS_PER_BATCH = 8  # photos whose faces go through the network together


def get_args_parser():
    p = argparse.ArgumentParser(description="Classify the expression of every face in photos or a video.",
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", help="photos and/or folders of photos")
    p.add_argument("--ckpt", nargs="+", default=[str(DEFAULT_MODEL)],
                   help="a checkpoint (.pth) or a model export.py wrote (.onnx, .pt2); several make an ensemble, "
                   "deciding on the mean of their logits as test.py scores it")
    p.add_argument("--video", help="a video file: writes an annotated video, a per-frame CSV with each face's track "
                   "and a tracks CSV (per track: first and last time, frames, dominant expression, share of each)")
    p.add_argument("--smooth", type=non_negative_float, default=DEFAULT_SMOOTH, metavar="SECONDS",
                   help="--video: each track's probabilities are smoothed over this many seconds (0: each frame's own)")
    p.add_argument("--detect-every", type=positive_int, default=DEFAULT_DETECT_EVERY, metavar="N",
                   help="--video: search the whole frame every N-th frame and follow the faces found in between "
                   "(YuNet; 1 searches every frame, slower; a face that enters is found at the next search)")
    p.add_argument("--explain", action="store_true",
                   help="Grad-CAM of every face: a heat-map PNG per face, and drawn where the face is")
    p.add_argument("--out-dir", type=output_folder, default="predictions",
                   help="where the annotated images, Grad-CAM maps and predictions.csv/.json go")
    g = p.add_argument_group("faces")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--no-detect", action="store_true", help="treat each image as one face crop")
    mode.add_argument("--boxes", help="CSV with columns file,x,y,w,h giving the faces (no detection, box crops)")
    g.add_argument("--detector", choices=["yunet", "haar"], default="yunet",
                   help="YuNet (a CNN, with landmarks) or OpenCV's Haar cascade (boxes only)")
    g.add_argument("--detector-model", default=str(YUNET_MODEL), help="the YuNet ONNX file")
    g.add_argument("--score-threshold", type=share, default=0.6,
                   help="YuNet: the lowest detector score kept, in (0, 1]")
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
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (PyTorch checkpoints)")
    g.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 inference of PyTorch checkpoints; auto uses it where the device runs bf16 natively "
                   "(decisions as fp32's but for about 1 in 1,000 faces)")
    g.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS,
                   help="threads to work on: N runs YuNet's passes over a photo N at once and classifies on N "
                   "threads; 0: each library's own choice (default: the passes two at once, PyTorch on one thread "
                   "and a checkpoint's ONNX export beside it on two, which suits per-photo work and stays fast "
                   "while other programs keep the cores busy)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    return p


def main(argv=None):
    """The command line: -> exit code (2, with a one-line message, for bad input)."""
    return exit_code("predict.py", run, get_args_parser().parse_args(attach_negative_values(argv, ("--turns",))))


def run(args):
    if not args.inputs and not args.video:
        # --ckpt takes several paths (an ensemble), so photos given after it are read as checkpoints.
        photos = [c for c in args.ckpt if Path(c).is_dir() or is_image(c)]
        if photos:
            raise UserError(f"give photos or folders to classify: {', '.join(photos)} came after --ckpt, which takes "
                            "several checkpoints (an ensemble); put the photos before --ckpt")
        raise UserError("give photos or folders to classify, or --video FILE")
    if args.video and args.boxes:
        raise UserError("--boxes names faces in photos; a --video's faces are detected (or, with --no-detect, "
                        "each frame is one face)")
    if args.video and args.inputs:
        raise UserError(f"--video takes no photos (got {', '.join(args.inputs)}); classify them in a run of their own")
    for flags, why in unused_flags(args):
        verb, them = ("apply", "them") if len(flags) > 1 else ("applies", "it")
        print(f"warning: {', '.join(flags)} {verb} {why.format(them=them)}", file=sys.stderr)
    with warnings.catch_warnings(record=True) as said:  # the API's warnings (bf16 unused or slow), as lines
        warnings.simplefilter("always", UserWarning)
        recognizer = Recognizer(args.ckpt, args.device, args.detector, args.turns, not args.no_align, args.threads,
                                args.score_threshold, args.min_face, args.max_side, args.detector_model, args.margin,
                                args.amp)
    for warning in said:
        print(f"warning: {warning.message}", file=sys.stderr)
    boxes, box_warnings = read_boxes(args.boxes) if args.boxes else (None, [])
    for warning in box_warnings:
        print(f"warning: {warning}", file=sys.stderr)
    # Opened before the output folder is made: a file that is no video leaves no empty folder behind.
    frames = VideoFrames(args.video, "--video") if args.video else None
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.video:  # found before an earlier run's outputs move: those are never inputs, wherever they are
        files, skipped, outputs = find_images(args.inputs, out_dir)
    # An earlier run's outputs are kept apart, not overwritten in part (its annotated copies of other photos left
    # beside this run's predictions.csv).
    moved = set_aside_earlier_run([out_dir], names=OUTPUT_NAMES, hint="each run's predictions stay together")
    if moved:
        print(f"note: {moved}", file=sys.stderr)
    if args.video:
        return predict_video(args, recognizer, frames, out_dir)

    warn_of(skipped, f"skipped {len(skipped)} file(s) of the folders that are not images")
    warn_of(outputs, f"left out {len(outputs)} file(s) that predict.py wrote, which are never inputs")
    if boxes is not None:
        boxes, box_warnings = assign_boxes(boxes, files)
        for warning in box_warnings:
            print(f"warning: {warning}", file=sys.stderr)
    classes = recognizer.classes
    results, written = Results(classes), defaultdict(int)
    named = list(zip(files, output_names(files)))
    with tqdm(total=len(named), desc="images", unit="image", disable=args.no_progress or len(named) < 32) as bar:
        for start in range(0, len(named), PHOTOS_PER_BATCH):
            chunk = named[start:start + PHOTOS_PER_BATCH]
            photos = recognizer.photos([path for path, _ in chunk], faces=not args.no_detect, boxes=boxes,
                                       explain=args.explain)
            for (path, name), photo in zip(chunk, photos):
                report_photo(args, path, name, photo, classes, results, written, out_dir)
            bar.update(len(chunk))
    csv_path, json_path = results.write(out_dir)
    faces_found = sum(1 for r in results.rows if r["status"] == "ok")
    also = "".join(f", {n} {what}{'s' if n > 1 else ''}" for what, n in written.items())
    print(f"{faces_found} face(s) in {len(files)} image(s); wrote {csv_path}, {json_path.name}"
          f"{also} to {out_dir}")
    return 0


def report_photo(args, path, name, photo, classes, results, written, out_dir):
    """One photo's warnings, its rows and printed lines, its Grad-CAM maps and annotated copy."""
    for warning in photo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if photo.status != "ok":
        print(f"warning: {path}: {photo.status}", file=sys.stderr)
        results.add_failure(path, photo.status)
    for i, face in enumerate(photo.faces):
        row = results.add(path, i, face)
        print(f"{path}  face {i}  box {row['x']},{row['y']},{row['w']},{row['h']}  {row['label']}  "
              f"{row['confidence']:.2f}")
        if args.explain:
            overlay = heatmap_overlay(face.crop, face.heatmap).resize((192, 192), Image.BILINEAR)
            overlay.save(out_dir / gradcam_name(name, i))
            written["Grad-CAM map"] += 1
    if not args.no_detect and photo.faces:
        annotate(photo.image, photo.faces, classes).save(out_dir / annotated_name(name), quality=92)
        written["annotated image"] += 1


def warn_of(names, what):
    """One warning line naming the first five of names (paths or strings) after what; nothing when names is empty."""
    if names:
        print(f"warning: {what}: {', '.join(map(str, names[:5]))}{' and more' if len(names) > 5 else ''}",
              file=sys.stderr)


def unused_flags(args):
    """Flags given other values than their defaults that this run leaves unused -> [(flags, why: a sentence's end
    with {them} for "it" or "them")], said as warnings rather than dropped in silence."""
    defaults = get_args_parser()

    def given(*dests):
        return [f"--{d.replace('_', '-')}" for d in dests if getattr(args, d) != defaults.get_default(d)]

    unused = []
    if args.no_detect or args.boxes:
        instead = "--no-detect" if args.no_detect else "--boxes"
        unused.append((given("detector", "detector_model", "score_threshold", "turns", "min_face", "max_side"),
                       f"to face detection only; {instead} leaves {{them}} unused"))
        # A face crop is taken whole; a given box has no landmarks to align by.
        unused.append((given("margin", "no_align") if args.no_detect else given("no_align"),
                       f"to faces cut out of photos by a detector; {instead} leaves {{them}} unused"))
    elif args.detector == "haar":
        unused.append((given("detector_model", "score_threshold", "turns"),
                       "to YuNet only; --detector haar leaves {them} unused"))
    if not args.video:
        unused.append((given("smooth", "detect_every"), "to --video only; photos leave {them} unused"))
    return [(flags, why) for flags, why in unused if flags]


def predict_video(args, recognizer, frames, out_dir):
    video = process_video(recognizer, frames, out_dir, args.smooth, args.detect_every,
                          not args.no_detect, args.explain, progress=not args.no_progress)
    for warning in video.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in video.notes:
        print(f"note: {note}", file=sys.stderr)
    written = [str(p) for p in (video.annotated, video.frames_csv, video.frames_json, video.tracks_csv, video.timeline)
               if p]
    print(f"{video.frames} frames, {video.detections} face detections in {video.tracks} track(s); wrote "
          f"{', '.join(written[:-1])} and {written[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
