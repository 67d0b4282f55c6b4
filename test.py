"""Score a checkpoint on a dataset's test split: accuracy, per-class precision/recall/F1/support,
Macro-F1 and the confusion matrix, printed and written as JSON and PNG.

    python test.py --ckpt checkpoints/best.pth                   # the data it was trained on
    python test.py --ckpt checkpoints/best.pth --data DIR        # another dataset, same classes
    python test.py --ckpt checkpoints/best.pth --data fer2013 --split val
    python test.py --ckpt run1/best.pth run2/best.pth run3/best.pth   # an ensemble: mean of their logits
"""
import argparse
import sys
from pathlib import Path

import torch

import engine
from checkpoint import check_same_task, held_out_validation, load_checkpoint, scored_logits
from dataset import DataError, available_splits, load_split
from errors import exit_code
from metrics import format_report
from train import non_negative_float, scale_list


def get_args_parser():
    p = argparse.ArgumentParser(description="Evaluate a trained checkpoint on a test split.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=["checkpoints/best.pth"],
                   help="checkpoint written by train.py; several make an ensemble, scored on the mean of their "
                   "decision logits (each model with its own TTA views and logit adjustment)")
    p.add_argument("--data", help="dataset folder or FER2013 .csv (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=["test", "val"],
                   help="split to score (default: test for --data, else the split training scored); val on data "
                   "without a val folder is the part of train that training held out")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="off",
                   help="bf16 autocast for inference; off by default so scores are exact fp32")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help="average the logits of each image and its mirror (default: as training scored)")
    p.add_argument("--tta-scales", type=scale_list, metavar="S1,S2",
                   help="also average the logits of each image zoomed by these factors, or none "
                   "(default: as training scored)")
    p.add_argument("--logit-adjust", type=non_negative_float, metavar="TAU",
                   help="subtract TAU x log(training class frequency) from the logits; 0 is the plain argmax "
                   "(default: as training scored)")
    p.add_argument("--out-dir", default="logs", help="where the JSON report and confusion-matrix PNG go")
    return p


def main(argv=None):
    return exit_code("test.py", run, get_args_parser().parse_args(argv))


def run(args):
    states = [load_checkpoint(path) for path in args.ckpt]
    state, first = states[0], args.ckpt[0]
    check_same_task([(path, s["classes"], s["input"]) for path, s in zip(args.ckpt, states)])
    trained = state.get("args", {})
    root = args.data or state.get("split", {}).get("root") or trained.get("data")
    if not root:
        raise DataError(f"{first} does not record its data; pass --data DIR")
    # Another dataset (--data) is scored on its test split when it has one; the training data on the split
    # that training scored (FER2013's folders have only val/, their PublicTest).
    trained_split = trained.get("test_split", "test")
    candidates = [args.split] if args.split else (["test", trained_split] if args.data else [trained_split])
    available = available_splits(root)
    # Data without a val folder: "val" is the part of train that training held out, by the checkpoint's indices.
    held_out = state.get("split", {}) if "val" not in available and "train" in available else {}
    if "val_indices" in held_out:
        available.append("val")
    split = next((s for s in candidates if s in available), None)
    if split is None:
        raise DataError(f"{root} has no {' or '.join(dict.fromkeys(candidates))} split "
                        f"(it has: {', '.join(available) or 'none'})")

    cfg = state["input"]
    if split == "val" and "val_indices" in held_out:
        for other, path in zip(states[1:], args.ckpt[1:]):
            if other.get("split", {}).get("val_indices") != held_out["val_indices"]:
                raise DataError(f"{path} held out other training images for validation than {first}; their "
                                "ensemble has no common validation split (train them with the same --seed)")
        data = held_out_validation(state, root, first)
    else:
        data = load_split(root, split, state["classes"], cfg["size"], cfg["channels"])
    for warning in data.warnings():
        print(f"warning: {warning}", file=sys.stderr)

    device = engine.select_device(args.device)
    amp = engine.use_amp(args.amp, device)
    members, member_logits = [], []
    for member, path in zip(states, args.ckpt):
        logits, how = scored_logits(member, data.images, device, path, args.batch_size, amp, args.tta,
                                    args.tta_scales, args.logit_adjust)
        member_logits.append(logits)
        members.append(how)
        print(f"{path} (arch {member['arch']}, epoch {member.get('epoch', '?')}) on {root} [{split}]: "
              f"{len(data)} images")
    loss, report = engine.score_logits(torch.stack(member_logits).mean(0), data.labels, data.classes, device)
    report.update(data=str(root), split=split, loss=loss)
    report.update(members[0] if len(members) == 1 else dict(checkpoint=[m["checkpoint"] for m in members],
                                                            members=members))
    print(f"Test Loss: {loss:.4f}")
    print(format_report(report))
    names = ", ".join(Path(path).name for path in args.ckpt)
    json_path, png_path = engine.save_report(report, args.out_dir, f"test_{Path(str(root)).name}_{split}",
                                             title=f"{names} on {Path(str(root)).name}/{split}")
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
