"""Score a checkpoint on a dataset's test split: accuracy, per-class precision/recall/F1/support,
Macro-F1 and the confusion matrix, printed and written as JSON and PNG.

    python test.py --ckpt checkpoints/best.pth                   # the data it was trained on
    python test.py --ckpt checkpoints/best.pth --data DIR        # another dataset, same classes
    python test.py --ckpt checkpoints/best.pth --data fer2013 --split val
"""
import argparse
import sys
from pathlib import Path

import engine
from checkpoint import held_out_validation, load_checkpoint, logit_bias, model_from_checkpoint, scoring_views
from dataset import DataError, available_splits, load_split
from errors import exit_code
from metrics import format_report
from train import non_negative_float, scale_list


def get_args_parser():
    p = argparse.ArgumentParser(description="Evaluate a trained checkpoint on a test split.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default="checkpoints/best.pth", help="checkpoint written by train.py")
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
    state = load_checkpoint(args.ckpt)
    trained = state.get("args", {})
    root = args.data or state.get("split", {}).get("root") or trained.get("data")
    if not root:
        raise DataError(f"{args.ckpt} does not record its data; pass --data DIR")
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

    views = scoring_views(state)
    if args.tta is not None:
        views["tta_flip"] = args.tta
    if args.tta_scales is not None:
        views["tta_scales"] = args.tta_scales
    bias = logit_bias(state, args.logit_adjust, args.ckpt)
    device = engine.select_device(args.device)
    model = engine.prepare_model(model_from_checkpoint(state, args.ckpt), device)
    cfg = state["input"]
    if split == "val" and "val_indices" in held_out:
        data = held_out_validation(state, root, args.ckpt)
    else:
        data = load_split(root, split, state["classes"], cfg["size"], cfg["channels"])
    for warning in data.warnings():
        print(f"warning: {warning}", file=sys.stderr)

    loss, report = engine.evaluate(model, data, cfg, device, args.batch_size, engine.use_amp(args.amp, device),
                                   **views, logit_bias=bias)
    report.update(checkpoint=str(args.ckpt), data=str(root), split=split, loss=loss, **views, logit_bias=bias)
    print(f"{args.ckpt} (arch {state['arch']}, epoch {state.get('epoch', '?')}) on {root} [{split}]: "
          f"{len(data)} images")
    print(f"Test Loss: {loss:.4f}")
    print(format_report(report))
    json_path, png_path = engine.save_report(report, args.out_dir, f"test_{Path(str(root)).name}_{split}",
                                             title=f"{Path(args.ckpt).name} on {Path(str(root)).name}/{split}")
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
