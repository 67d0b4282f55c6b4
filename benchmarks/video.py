"""Videos: frames per second of the video path, and a clip to look at (its timeline picture).

    python benchmarks/video.py --faces /path/to/fer2013/val                    # the frame-rate table
    python benchmarks/video.py --faces /path/to/fer2013/val --clip clip.avi    # also write a 12-second clip

Clips are built from held-out face crops (a split folder of <class>/ images): each face, upscaled to 140-220
pixels (less where four share a frame), drifts across a plain canvas and changes expression every few seconds (a
new crop of another class), so that the tracks and their smoothed probabilities have something to follow. Frames
per second are those of Recognizer.video_photos with its defaults (tracks, smoothing), searching the whole frame
every N-th frame (--every) and following the faces in between, timed over the frames after the first ten, with
nothing else running; and how many of the faces found searching every frame are found with the same label.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli import positive_int  # noqa: E402
from faces import box_ious  # noqa: E402
from images import data_files, read_image  # noqa: E402
from recognizer import Recognizer  # noqa: E402
from tracks import FaceTracker  # noqa: E402

CLASSES = ("happy", "neutral", "surprise", "sad", "angry")


def make_clip(folder, size, faces, frames, fps, seed, scene_s=3.0):
    """-> a list of BGR frames: `faces` faces drifting on a size canvas, each changing class every scene_s seconds."""
    rng = np.random.default_rng(seed)
    by_name = {p.name.lower(): p for p in Path(folder).iterdir() if p.is_dir()}
    pools = {c: data_files(by_name[c]) for c in CLASSES}
    w, h = size
    sides = np.minimum(rng.integers(140, 221, faces), int(0.9 * w / faces))  # each face in its own column
    out, crops = [], {}
    for k in range(frames):
        canvas = Image.new("RGB", size, (96, 104, 110))
        scene = int(k / fps / scene_s)
        for i, side in enumerate(sides):
            key = (i, scene)
            if key not in crops:
                label = CLASSES[(i + scene) % len(CLASSES)]
                files = pools[label]
                crops[key] = read_image(files[rng.integers(len(files))]).convert("RGB").resize((side, side),
                                                                                               Image.BICUBIC)
            column = w // faces
            x = column * i + (column - side) / 2
            x += 0.2 * (column - side) * np.sin(k / fps + i)
            y = (h - side) / 2 + 0.3 * (h - side) * np.cos(0.7 * k / fps + 2 * i)
            canvas.paste(crops[key], (int(max(0, x)), int(max(0, y))))
        out.append(np.asarray(canvas)[:, :, ::-1].copy())
    return out


def run(recognizer, frames, fps, detect_every):
    """-> (frames per second after the first ten, each frame's faces as [(box, label)])."""
    steps = recognizer.video_photos(frames, fps, FaceTracker(), detect_every=detect_every)
    seen = [next(steps)[2] for _ in range(10)]
    start = time.perf_counter()
    seen += [photo for _, _, photo in steps]
    rate = (len(seen) - 10) / (time.perf_counter() - start)
    classes = recognizer.classes
    return rate, [[(f.box, classes[int(f.probabilities.argmax())]) for f in photo.faces] for photo in seen]


def agreement(labels, reference):
    """The share (%) of reference's faces (every frame searched) found with the same label: matched by IoU > 0.5."""
    same = total = 0
    for faces, ref in zip(labels, reference):
        for box, label in ref:
            total += 1
            overlaps = box_ious([box], [b for b, _ in faces])[0]
            same += any(iou > 0.5 and label == lab for iou, (_, lab) in zip(overlaps, faces))
    return 100 * same / max(total, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faces", required=True, help="a split folder of <class>/ images (e.g. fer2013/val)")
    p.add_argument("--frames", type=positive_int, default=60, help="frames timed per clip (after 10 of warm-up)")
    p.add_argument("--every", type=positive_int, nargs="+", default=[1, 2, 3, 5], help="--detect-every values to time")
    p.add_argument("--clip", help="also write a 12-second 640x480 clip of two faces here (MJPG .avi)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    recognizer = Recognizer()
    print("| frame size | faces | " + " | ".join(f"fps, every {n}" for n in args.every)
          + " | " + " | ".join(f"labels as every frame, every {n}" for n in args.every[1:]) + " |")
    print("| --- " * (2 + 2 * len(args.every) - 1) + "|")
    # Once untimed: the first clip would otherwise also pay the process's first calls (kernels chosen for each
    # batch size, torchvision's import).
    warm_up = make_clip(args.faces, (640, 480), 2, 20, 25.0, args.seed)
    for n in args.every:
        run(recognizer, warm_up, 25.0, n)
    for size, faces in (((640, 480), 1), ((640, 480), 4), ((1280, 720), 1), ((1280, 720), 4)):
        frames = make_clip(args.faces, size, faces, args.frames + 10, 25.0, args.seed)
        runs = [run(recognizer, frames, 25.0, n) for n in args.every]
        rates = " | ".join(f"{rate:.1f}" for rate, _ in runs)
        agree = " | ".join(f"{agreement(labels, runs[0][1]):.1f}%" for _, labels in runs[1:])
        print(f"| {size[0]}x{size[1]} | {faces} | {rates} | {agree} |", flush=True)
    if args.clip:
        import cv2

        writer = cv2.VideoWriter(args.clip, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
        for frame in make_clip(args.faces, (640, 480), 2, 120, 10.0, args.seed):
            writer.write(frame)
        writer.release()
        print(f"wrote {args.clip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
