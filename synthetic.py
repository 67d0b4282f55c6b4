"""A synthetic five-class face-expression set, drawn procedurally, for demos and tests.

These are cartoon faces, not photographs: each class differs in mouth, brows and eyes, and every image
gets a random pose, scale, lighting and noise, so a CNN has something real to learn but no dataset has to
be downloaded. Numbers measured on it say nothing about real faces.
"""
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dataset import ASSIGNMENT_CLASSES

# The assignment's class sizes divided by five (train) and a balanced test set, like the assignment's.
DEMO_TRAIN_COUNTS = {"Angry": 100, "Happy": 300, "Neutral": 200, "Sad": 300, "Surprise": 100}
DEMO_TEST_COUNT = 40
DEMO_ROOT = Path("data/demo")  # relative: beside where train.py --data demo runs


def draw_face(expression, rng, size=64):
    """One grayscale face (PIL 'L' image, size x size) showing `expression`, one of ASSIGNMENT_CLASSES."""
    canvas = 2 * size
    c = canvas / 2
    bg = int(rng.integers(20, 120))
    im = Image.new("L", (canvas, canvas), bg)
    d = ImageDraw.Draw(im)
    s = canvas * rng.uniform(0.30, 0.38)            # face half-height
    skin = int(rng.integers(150, 230))
    ink = int(rng.integers(10, 60))
    d.ellipse([c - 0.8 * s, c - s, c + 0.8 * s, c + s], fill=skin)

    eye_y, eye_dx = c - 0.25 * s, 0.35 * s
    eye_r = 0.10 * s * (1.35 if expression == "Surprise" else 1.0) * rng.uniform(0.85, 1.15)
    # Shaded eye sockets, a nose and nostrils: what makes a face detector (and a face) see a face.
    shade = max(0, skin - int(rng.integers(35, 60)))
    for sx in (-1, 1):
        ex = c + sx * eye_dx
        d.ellipse([ex - 0.24 * s, eye_y - 0.17 * s, ex + 0.24 * s, eye_y + 0.15 * s], fill=shade)
        d.ellipse([ex - eye_r * 1.9, eye_y - eye_r * 1.2, ex + eye_r * 1.9, eye_y + eye_r * 1.2],
                  fill=min(255, skin + 25))
        pupil = 0.10 * s  # wide-open eyes show more white, not a bigger pupil
        d.ellipse([ex - pupil * 1.1, eye_y - pupil, ex + pupil * 1.1, eye_y + pupil], fill=ink)
    nose_y = c + 0.18 * s
    d.polygon([(c - 0.04 * s, eye_y + 0.05 * s), (c + 0.04 * s, eye_y + 0.05 * s), (c + 0.13 * s, nose_y),
               (c - 0.13 * s, nose_y)], fill=max(0, skin - 25))
    for sx in (-1, 1):
        nx = c + sx * 0.07 * s
        d.ellipse([nx - 0.04 * s, nose_y - 0.025 * s, nx + 0.04 * s, nose_y + 0.025 * s], fill=shade // 2)

    # Brows: the inner end's height relative to the outer end tells angry (down) from sad (up).
    brow_y = eye_y - 0.28 * s - (0.12 * s if expression == "Surprise" else 0)
    slant = {"Angry": 0.14, "Sad": -0.14}.get(expression, 0.0) * s + rng.normal(0, 0.02) * s
    for sx in (-1, 1):
        outer, inner = c + sx * 0.55 * s, c + sx * 0.15 * s
        d.line([(outer, brow_y), (inner, brow_y + slant)], fill=ink, width=max(2, int(0.06 * s)))

    mouth_y, mouth_w = c + 0.45 * s, 0.35 * s * rng.uniform(0.85, 1.15)
    width = max(2, int(0.06 * s))
    if expression == "Happy":
        d.arc([c - mouth_w, mouth_y - 0.25 * s, c + mouth_w, mouth_y + 0.15 * s], 20, 160, fill=ink, width=width)
    elif expression == "Sad":
        d.arc([c - mouth_w, mouth_y, c + mouth_w, mouth_y + 0.35 * s], 200, 340, fill=ink, width=width)
    elif expression == "Surprise":
        r = 0.11 * s * rng.uniform(0.9, 1.2)
        d.ellipse([c - 0.9 * r, mouth_y - r, c + 0.9 * r, mouth_y + r], fill=ink)
    elif expression == "Angry":
        d.line([(c - mouth_w * 0.8, mouth_y + 0.05 * s), (c + mouth_w * 0.8, mouth_y + 0.05 * s)],
               fill=ink, width=width + 1)
    else:  # Neutral
        d.line([(c - mouth_w, mouth_y), (c + mouth_w, mouth_y)], fill=ink, width=width)

    # Pose: rotate and shift, then crop the centre so the face fills the frame like a FER crop.
    im = im.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, fillcolor=bg)
    shift = rng.uniform(-0.06, 0.06, size=2) * canvas
    half = canvas * rng.uniform(0.36, 0.44)
    box = (c - half + shift[0], c - half + shift[1], c + half + shift[0], c + half + shift[1])
    im = im.resize((size, size), Image.BILINEAR, box=box)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))

    # Lighting: a linear gradient in a random direction, global contrast, and sensor noise.
    arr = np.asarray(im, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    arr = arr * rng.uniform(0.7, 1.2) + rng.uniform(-40, 40) * (xx * math.cos(angle) + yy * math.sin(angle))
    arr += rng.normal(0, rng.uniform(2, 10), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def make_demo_dataset(root, train_counts=None, test_count=DEMO_TEST_COUNT, size=64, seed=0):
    """Write root/{train,test}/<Class>/*.jpg in the assignment's layout; returns root."""
    root = Path(root)
    train_counts = train_counts or DEMO_TRAIN_COUNTS
    rng = np.random.default_rng(seed)
    for split, counts in (("train", train_counts), ("test", {c: test_count for c in train_counts})):
        for label in ASSIGNMENT_CLASSES:
            if label not in counts:
                continue
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(counts[label]):
                draw_face(label, rng, size).save(folder / f"{label.lower()}_{i:04d}.jpg", quality=92)
    return root


def demo_dataset(root=DEMO_ROOT):
    """The demo set at root (train.py --data demo), drawn there by make_demo_dataset on first use -> root."""
    root = Path(root)
    if not (root / "train").is_dir():
        print(f"making the synthetic demo dataset in {root} (procedurally drawn faces, not real data)")
        root.parent.mkdir(parents=True, exist_ok=True)
        # Drawn aside and renamed into place, so a second process (torchrun) never reads a half-made set.
        staging = Path(tempfile.mkdtemp(dir=root.parent))
        try:
            make_demo_dataset(staging / "demo").rename(root)
        except OSError:  # another process got there first
            pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root
