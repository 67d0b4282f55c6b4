"""Make a multi-face test photo from face crops: several faces pasted on a large canvas at different sizes.

    python benchmarks/group_photo.py --data /path/to/fer2013/val --out group.jpg [--faces 6] [--seed 0]

Writes the photo and, beside it, group.truth.csv with each pasted face's box and class folder, to compare
with what predict.py finds. The photo holds dataset pixels: keep it out of the repository.
"""
import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from images import data_files  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a split folder with <Class>/ subfolders of face crops")
    p.add_argument("--out", required=True)
    p.add_argument("--faces", type=int, default=6)
    p.add_argument("--size", type=int, nargs=2, default=[1280, 720], metavar=("W", "H"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", help="comma list of class folders to draw from (case-insensitive); default all")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    wanted = {c.lower() for c in args.classes.split(",")} if args.classes else None
    folders = sorted(d for d in Path(args.data).iterdir() if d.is_dir() and (not wanted or d.name.lower() in wanted))
    width, height = args.size
    canvas = Image.new("RGB", (width, height), (200, 200, 205))
    placed, rows, tries = [], [], 0
    while len(placed) < args.faces and tries < 1000:
        tries += 1
        side = int(rng.integers(100, 260))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if any(x < px + ps and px < x + side and y < py + ps and py < y + side for px, py, ps in placed):
            continue
        folder = folders[int(rng.integers(len(folders)))]
        files = data_files(folder)
        face = Image.open(files[int(rng.integers(len(files)))]).convert("RGB").resize((side, side), Image.BICUBIC)
        canvas.paste(face, (x, y))
        placed.append((x, y, side))
        rows.append({"x": x, "y": y, "w": side, "h": side, "class": folder.name})
    canvas.save(args.out, quality=95)
    truth = Path(args.out).with_suffix(".truth.csv")
    with open(truth, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["x", "y", "w", "h", "class"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out} with {len(rows)} faces and {truth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
