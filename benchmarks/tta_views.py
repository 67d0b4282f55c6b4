"""Test-time views of trained checkpoints, judged where a choice may be made: on the validation faces that
training held out (the indices its checkpoint records), never on the test split.

    python benchmarks/tta_views.py runs/fer2013_v3/fer2013_w32_e45_v10_seed0/checkpoints/best.pth [...]

Prints accuracy and Macro-F1 for the image alone, its mirror (--tta), zoomed copies (--tta-scales) and both,
on the checkpoint's own data and split, with the checkpoint's logit adjustment; with --bf16 also each set in bf16, as
predict.py runs it where the CPU does bf16 natively, and how many decisions that changes.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import engine  # noqa: E402
from cli import scale_list  # noqa: E402
from errors import UserError, exit_code  # noqa: E402
from inference import ModelClassifier  # noqa: E402
from splits import held_out_of_train, recorded_validation  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="+", help="checkpoints written by train.py")
    p.add_argument("--scales", type=scale_list, default=(0.9, 1.1), help="zoom factors to try")
    p.add_argument("--bf16", action="store_true",
                   help="also score each set of views in bf16 (as predict.py's --amp runs them) and count the "
                   "decisions that differ from fp32's")
    return exit_code("tta_views.py", run, p.parse_args(argv))


def run(args):
    device = torch.device("cpu")
    print(f"{'checkpoint':<60} {'faces':>6} {'views':<24} {'val acc':>8} {'val F1':>8}"
          + (f" {'bf16 acc':>8} {'changed':>7}" if args.bf16 else ""))
    for path in args.ckpt:
        classifier = ModelClassifier.from_checkpoint(path, device)
        split = classifier.record.get("split", {})
        if held_out_of_train(split) is None:
            raise UserError(f"{path} records no held-out validation indices (its data had a val folder)")
        cfg = classifier.input
        val = recorded_validation(split["root"], classifier.classes, cfg, split,
                                  classifier.record["args"].get("label_mode") or "majority")
        for name, views in (("image", dict(tta_flip=False, tta_scales=())),
                            ("+ mirror", dict(tta_flip=True, tta_scales=())),
                            ("+ zoom", dict(tta_flip=False, tta_scales=args.scales)),
                            ("+ mirror + zoom", dict(tta_flip=True, tta_scales=args.scales))):
            scored = classifier.rescored(**views)
            logits = scored.decision_logits(val.images)
            report = engine.classification_scores(logits, val.labels, val.classes, device)[1]
            line = (f"{path:<60} {len(val):>6} {name:<24} {100 * report['accuracy']:>8.2f} "
                    f"{100 * report['macro_f1']:>8.2f}")
            if args.bf16:
                scored.amp = True
                low = scored.decision_logits(val.images)
                accuracy = 100 * (low.argmax(1) == val.labels).double().mean().item()
                line += f" {accuracy:>8.2f} {int((low.argmax(1) != logits.argmax(1)).sum()):>7}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
