"""Plot training curves from a training log, and confusion matrices.

    python plot_curves.py logs/training_log.txt [--out logs/curves.png]

Reads the seed's text format (`Train Loss: x, Train Accuracy: y%` / `Validation Loss: ...` lines), so logs
written by the original assignment code plot too, and writes one PNG with loss and accuracy panels.
"""
import argparse
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402

LINE = re.compile(r"^(Train|Validation) Loss:\s*([-\d.eE+naif]+),\s*\1 Accuracy:\s*([\d.]+)%")


def parse_log(path):
    """-> {'train_loss': [...], 'train_acc': [...], 'val_loss': [...], 'val_acc': [...]} in epoch order."""
    curves = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = LINE.match(line.strip())
        if m:
            prefix = "train" if m.group(1) == "Train" else "val"
            curves[f"{prefix}_loss"].append(float(m.group(2)))
            curves[f"{prefix}_acc"].append(float(m.group(3)))
    return curves


def plot_curves(curves, out_path, title=""):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train", "train"), ("val", "validation")):
        epochs = range(1, len(curves[f"{key}_loss"]) + 1)
        ax_loss.plot(epochs, curves[f"{key}_loss"], marker=".", label=label)
        ax_acc.plot(range(1, len(curves[f"{key}_acc"]) + 1), curves[f"{key}_acc"], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def plot_confusion_matrix(cm, classes, out_path, title=""):
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    peak = max(max(row) for row in cm) if cm else 0
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def get_args_parser():
    parser = argparse.ArgumentParser(description="Plot loss and accuracy curves from a training log.")
    parser.add_argument("log", help="training log (logs/training_log.txt)")
    parser.add_argument("--out", help="output PNG (default: the log's name with .png)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    log = Path(args.log)
    if not log.is_file():
        print(f"plot_curves.py: error: log file {log} does not exist", file=sys.stderr)
        return 2
    curves = parse_log(log)
    if not curves["train_loss"]:
        print(f"plot_curves.py: error: {log} has no 'Train Loss: ..., Train Accuracy: ...%' lines",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else log.with_suffix(".png")
    plot_curves(curves, out, title=log.name)
    print(f"wrote {out} ({len(curves['train_loss'])} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
