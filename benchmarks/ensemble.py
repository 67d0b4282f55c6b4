"""What averaging several independently trained models is worth: every combination of k of the given
checkpoints, scored as `test.py --ckpt A B ...` scores an ensemble (the mean of the members' decision logits),
on the split their training scored; mean ± sd over the combinations of each size k.

    python benchmarks/ensemble.py runs/ens/default_seed{0,1,2}/checkpoints/best.pth [...]

A measurement, not a way to choose: every combination of a size is scored and none is picked. An ensemble
of k costs k training runs and k times the inference.
"""
import argparse
import itertools
import sys
from pathlib import Path

import torch
from recipes import mean_sd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import engine  # noqa: E402
from dataset import load_split  # noqa: E402
from errors import UserError, exit_code  # noqa: E402
from inference import EnsembleClassifier, ensemble_logits, load_classifier  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="+", help="checkpoints written by train.py, trained for the same classes")
    p.add_argument("--sizes", type=int, nargs="+", help="ensemble sizes (default: 1 up to all of them)")
    return exit_code("ensemble.py", run, p.parse_args(argv))


def run(args):
    ensemble = load_classifier(args.ckpt)  # checks that the members share classes and input
    members = ensemble.members if isinstance(ensemble, EnsembleClassifier) else [ensemble]
    first = members[0].record
    root, split = first["split"]["root"], first["args"].get("test_split", "test")
    for member in members:
        if member.record["split"]["root"] != root:
            raise UserError(f"{member.source} was trained on {member.record['split']['root']}, "
                            f"{members[0].source} on {root}")
    cfg = ensemble.input
    data = load_split(root, split, ensemble.classes, cfg["size"], cfg["channels"])
    device = torch.device("cpu")
    # Each member decides once; every combination is then the ensemble mean of its members' logits.
    logits = [member.decision_logits(data.images) for member in members]

    print(f"{len(members)} checkpoints on {root} [{split}], {len(data)} images")
    print(f"{'members':>8}{'combinations':>14}{'accuracy':>18}{'Macro-F1':>18}")
    for k in args.sizes or range(1, len(members) + 1):
        scores = []
        for combo in itertools.combinations(range(len(members)), k):
            mean_logits = ensemble_logits([logits[i] for i in combo])
            _, report = engine.classification_scores(mean_logits, data.labels, data.classes, device)
            scores.append((100 * report["accuracy"], 100 * report["macro_f1"]))
        acc, f1 = zip(*scores)
        print(f"{k:>8}{len(scores):>14}{mean_sd(acc).strip():>18}{mean_sd(f1).strip():>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
