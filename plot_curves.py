"""Plot training curves from a training log.

    python plot_curves.py logs/training_log.txt [--out logs/curves.png]

Reads the assignment's text format (`Train Loss: x, Train Accuracy: y%` / `Validation Loss: ...` lines), so logs
written by the original assignment code plot too, and writes one PNG with loss and accuracy panels.
"""
import argparse
import sys
from pathlib import Path

from errors import not_a_file
from reports import parse_log, plot_curves


def get_args_parser():
    parser = argparse.ArgumentParser(description="Plot loss and accuracy curves from a training log.")
    parser.add_argument("log", help="training log (logs/training_log.txt)")
    parser.add_argument("--out", help="output PNG (default: the log's name with .png)")
    return parser


def main(argv=None):
    """The command line: -> exit code (2, with a one-line message, for a missing or unreadable log)."""
    args = get_args_parser().parse_args(argv)
    log = Path(args.log)
    why = not_a_file(log, "a log file (logs/training_log.txt)")
    if why:
        print(f"plot_curves.py: error: {log} {why}", file=sys.stderr)
        return 2
    curves = parse_log(log)
    if not curves["train_loss"]:
        hint = f"; plot {log.with_suffix('.txt')}, its text twin" if log.suffix == ".jsonl" else ""
        print(f"plot_curves.py: error: {log} has no 'Train Loss: ..., Train Accuracy: ...%' lines{hint}",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else log.with_suffix(".png")
    plot_curves(curves, out, title=log.name)
    epochs = len(curves["train_loss"])
    print(f"wrote {out} ({epochs} epoch{'' if epochs == 1 else 's'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
