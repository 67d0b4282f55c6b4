"""How well checkpoints' confidences hold on a split: ECE (15 bins) before and after each one's temperature, the
ECE a perfectly calibrated model would measure on that many faces, and the NLL; mean ± sd over the checkpoints.

    python benchmarks/calibration.py runs/fer5_s{0,1,2}/checkpoints/best.pth
    python benchmarks/calibration.py runs/fer5_s{0,1,2}/checkpoints/best.pth --data /path/to/fer2013 --split val \
        --class-map angry=Angry,happy=Happy,neutral=Neutral,sad=Sad,surprise=Surprise --balance

Without --data, each checkpoint's own test split (the one training scored). --unseen leaves out the faces that are
copies of the checkpoint's training faces (leakage.unseen, the leakage check; FER2013's splits share some).
--balance then keeps as many faces of every class as the rarest class has (the first by file name, so every
checkpoint sees the same faces): models decided with logit adjustment (tau 1) are made for a class-balanced world,
and their confidences are judged in one. The temperature is each checkpoint's own (fitted on validation by
train.py or `test.py --calibrate`); this script fits nothing. In a row, "by chance" is the ECE a perfectly
calibrated model with the same confidences would measure there, ± its draw-to-draw spread.
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch
from recipes import mean_sd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import engine  # noqa: E402
from cli import class_map  # noqa: E402
from dataset import load_split  # noqa: E402
from errors import exit_code  # noqa: E402
from inference import ModelClassifier  # noqa: E402
from leakage import unseen  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="+", help="checkpoints written by train.py")
    p.add_argument("--data", help="dataset folder or FER2013 .csv (default: each checkpoint's own)")
    p.add_argument("--split", choices=["test", "val"],
                   help="split to score (default: the one each checkpoint's training scored)")
    p.add_argument("--class-map", type=class_map, metavar="DATA=MODEL,...", help="data class names -> model's")
    p.add_argument("--unseen", action="store_true", help="leave out copies of the checkpoint's training faces")
    p.add_argument("--balance", action="store_true", help="as many faces of every class as the rarest class has")
    return exit_code("calibration.py", run, p.parse_args(argv))


def balanced(split):
    """split with the first n faces (by source name) of every class, n the smallest class count."""
    n = min(c for c in split.class_counts() if c)
    labels, taken, keep = split.labels.tolist(), [0] * len(split.classes), []
    for i in sorted(range(len(split)), key=lambda i: split.sources[i]):
        if taken[labels[i]] < n:
            taken[labels[i]] += 1
            keep.append(i)
    return split.subset(sorted(keep))


def scored_faces(classifier, root, split, args):
    """The faces of root's split a checkpoint is scored on, after --unseen and --balance -> FERSplit."""
    record, size, channels = classifier.record, classifier.input["size"], classifier.input["channels"]
    data = load_split(root, split, classifier.classes, size, channels, allow_missing=True, class_map=args.class_map)
    if args.unseen:
        train = load_split(record["split"]["root"], "train", classifier.classes, size, channels, allow_missing=True)
        new = unseen(data, train)
        print(f"{classifier.source}: {len(data) - len(new)} of {len(data)} faces are copies of its training faces; "
              "left out", file=sys.stderr)
        data = new
    if args.balance:
        data = balanced(data)
        print(f"{classifier.source}: balanced to {min(data.class_counts())} faces of each class", file=sys.stderr)
    return data


def run(args):
    device = torch.device("cpu")
    cache, rows = {}, []
    for path in args.ckpt:
        classifier = ModelClassifier.from_checkpoint(path)
        record = classifier.record
        root = args.data or record["split"]["root"]
        split = args.split or record["args"].get("test_split", "test")
        # Seeds of one recipe score the same faces: read, de-duplicated and balanced once for all of them.
        key = (root, split, record["split"]["root"] if args.unseen else None, tuple(classifier.classes),
               classifier.input["size"], classifier.input["channels"])
        if key not in cache:
            cache[key] = scored_faces(classifier, root, split, args)
        data = cache[key]
        if not rows:
            print(f"{'checkpoint':<48}{'faces':>7}{'T':>7}{'ECE before':>12}{'ECE after':>11}{'by chance':>15}"
                  f"{'NLL before':>12}{'NLL after':>11}{'Brier before':>14}{'Brier after':>13}")
        _, report = engine.evaluate(classifier.decision_logits, data, device, classifier.temperature)
        c = report["calibration"]
        before, after = c["before"], c["after"]
        row = {"t": c["temperature"], "ece_before": 100 * before["ece"], "ece_after": 100 * after["ece"],
               "chance": 100 * after["ece_chance"], "chance_sd": 100 * after["ece_chance_sd"],
               "nll_before": before["nll"], "nll_after": after["nll"],
               "brier_before": before["brier"], "brier_after": after["brier"]}
        rows.append(row)
        chance = f"{row['chance']:.2f} ± {row['chance_sd']:.2f}"
        print(f"{str(path)[-48:]:<48}{len(data):>7}{row['t']:>7.3f}{row['ece_before']:>11.2f}%"
              f"{row['ece_after']:>10.2f}%{chance:>14}%{row['nll_before']:>12.4f}{row['nll_after']:>11.4f}"
              f"{row['brier_before']:>14.4f}{row['brier_after']:>13.4f}")
    if len(rows) > 1:
        col = {name: [r[name] for r in rows] for name in rows[0]}
        print(f"mean ± sd over the {len(rows)} checkpoints: T {mean_sd(col['t'], 3).strip()}, ECE "
              f"{mean_sd(col['ece_before']).strip()}% -> {mean_sd(col['ece_after']).strip()}%, NLL "
              f"{mean_sd(col['nll_before'], 4).strip()} -> {mean_sd(col['nll_after'], 4).strip()}, Brier "
              f"{mean_sd(col['brier_before'], 4).strip()} -> {mean_sd(col['brier_after'], 4).strip()}; a calibrated "
              f"model would measure {statistics.mean(col['chance']):.2f} ± {statistics.mean(col['chance_sd']):.2f}% "
              "by chance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
