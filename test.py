"""Score a checkpoint on a dataset's test split: accuracy, per-class precision/recall/F1/support,
Macro-F1 and the confusion matrix, printed and written as JSON and PNG.

    python test.py --ckpt checkpoints/best.pth                   # the data it was trained on
    python test.py --ckpt checkpoints/best.pth --data DIR        # another dataset, same classes
    python test.py --ckpt checkpoints/best.pth --data fer2013 --split val
    python test.py --ckpt run1/best.pth run2/best.pth run3/best.pth   # an ensemble: mean of their logits
    python test.py --ckpt model.onnx --data DIR                  # an export scores like its checkpoint
    python test.py --ckpt best.pth --data ckplus --class-map anger=Angry,happy=Happy   # other class names
"""
import argparse
import sys
from pathlib import Path

import engine
from calibration import bound_note, calibrate, summary
from cli import (
    TTA_HELP,
    TTA_SCALES_HELP,
    HelpFormatter,
    add_runtime_args,
    class_map,
    logit_adjust_tau,
    output_folder,
    positive_int,
    scale_list,
    single_view,
)
from dataset import available_splits, load_split
from errors import DataError, UserError, exit_code
from inference import ModelClassifier, amp_warnings, load_classifier
from metrics import format_report
from reports import clean_name, save_report
from runs import report_folder
from splits import held_out_of_train, recorded_splits, recorded_validation


def get_args_parser():
    p = argparse.ArgumentParser(description="Evaluate a trained checkpoint on a test split.",
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=["checkpoints/best.pth"],
                   help="checkpoint written by train.py (or an .onnx/.pt2 export of one); several make an "
                   "ensemble, scored on the mean of their decision logits (each model with its own TTA views "
                   "and logit adjustment)")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset folder or FER2013 .csv (default: the one the checkpoint was trained on)")
    g.add_argument("--class-map", type=class_map, metavar="DATA=MODEL,...",
                   help="read the data's class folders under the model's class names, e.g. "
                   "anger=Angry,happiness=Happy (data that names its classes otherwise)")
    g.add_argument("--split", choices=["test", "val"],
                   help="split to score (default: test for --data, else the split training scored); val on data "
                   "without a val folder is the part of train that training held out")
    g = p.add_argument_group("evaluation", "how logits become decisions (default: as training scored)")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, help=TTA_HELP)
    g.add_argument("--tta-scales", type=scale_list, metavar="S1,S2", help=TTA_SCALES_HELP)
    g.add_argument("--logit-adjust", type=logit_adjust_tau, metavar="TAU",
                   help="subtract TAU x log(training class frequency) from the logits; 0 is the plain argmax")
    g.add_argument("--calibrate", action="store_true",
                   help="fit the checkpoint's temperature afresh on the validation split its training used and store "
                   "it in the checkpoint (so that its confidences mean what they say; decisions do not change), "
                   "with the views and logit adjustment given by the flags above if any (so that they become the "
                   "checkpoint's own: choose them on validation, e.g. benchmarks/tta_views.py), then score")
    g = p.add_argument_group("runtime")
    add_runtime_args(g, amp="off")
    g.add_argument("--batch-size", type=positive_int, default=256, help="images scored at a time, their views together")
    g.add_argument("--out-dir", type=output_folder,
                   help="where the JSON report and confusion-matrix PNG go (default: the log folder of the "
                   "checkpoint's run, or the checkpoint's own folder when it is not where its run wrote it)")
    return p


def main(argv=None):
    """The command line: -> exit code (2, with a one-line message, for bad input)."""
    args = get_args_parser().parse_args(argv)
    single_view(args, args.tta_scales is not None)
    return exit_code("test.py", run, args)


def run(args):
    device = engine.select_device(args.device)
    classifier = load_classifier(args.ckpt, device, engine.use_amp(args.amp, device), args.batch_size,
                                 tta_flip=args.tta, tta_scales=args.tta_scales, logit_adjust=args.logit_adjust)
    for warning in amp_warnings(args.amp, device, classifier):
        print(f"warning: {warning}", file=sys.stderr)
    members = getattr(classifier, "members", [classifier])
    first, record = members[0].source, members[0].record or {}
    out_dir = Path(args.out_dir) if args.out_dir else report_folder(first, record)
    try:  # before any work, so that no report is lost after it
        output_folder(str(out_dir))
    except argparse.ArgumentTypeError as e:
        raise UserError(f"the report on {first} would go to {out_dir}, but {e}; pass --out-dir") from None
    trained = record.get("args", {})
    root = args.data or record.get("split", {}).get("root") or trained.get("data")
    if not root:
        raise DataError(f"{first} does not record its data; pass --data DIR")
    # Another dataset (--data) is scored on its test split when it has one; the training data on the split
    # that training scored (FER2013's folders have only val/, their PublicTest).
    trained_split = trained.get("test_split", "test")
    candidates = [args.split] if args.split else (["test", trained_split] if args.data else [trained_split])
    available = available_splits(root)
    # Data without a val folder: "val" is the part of train that training held out, by the checkpoint's indices.
    held_out = record.get("split", {}) if "val" not in available and "train" in available else {}
    if held_out_of_train(held_out) is not None:
        available.append("val")
    split = next((s for s in candidates if s in available), None)
    if split is None:
        raise DataError(f"{root} has no {' or '.join(dict.fromkeys(candidates))} split "
                        f"(it has: {', '.join(available) or 'none'})")

    cfg = classifier.input
    if split == "val" and held_out_of_train(held_out) is not None:
        for member in members[1:]:
            if held_out_of_train((member.record or {}).get("split", {})) != held_out_of_train(held_out):
                raise DataError(f"{member.source} held out other training images for validation than {first}; "
                                "their ensemble has no common validation split (train them with the same --seed)")
        data = recorded_validation(root, classifier.classes, cfg, held_out, trained.get("label_mode") or "majority")
    else:
        # Another dataset may lack some of the model's classes (CK+ has no Neutral): scored on those it has,
        # with the model's full output, the absent ones named.
        data = load_split(root, split, classifier.classes, cfg["size"], cfg["channels"], allow_missing=True,
                          class_map=args.class_map)
    for warning in data.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    loud = data.coverage_warning()
    if loud:
        print(f"WARNING: {loud}", file=sys.stderr)
    if args.calibrate:  # once the split to score is found: a bad --data or --split leaves the file as it was
        classifier = calibrate_checkpoint(classifier, args)

    for member in members:
        about = member.record or {}
        print(f"{member.source} (arch {about.get('arch', 'exported')}, epoch {about.get('epoch', '?')}) on "
              f"{root} [{split}]: {len(data)} images")
    loss, report = engine.evaluate(classifier.decision_logits, data, device, classifier.temperature)
    report.update(data=str(root), split=split, loss=loss, **classifier.describe())
    print(f"Test Loss: {loss:.4f}")
    print(format_report(report))
    names = ", ".join(Path(m.source).name for m in members)
    data_name = Path(str(root)).resolve().stem if Path(str(root)).is_file() else Path(str(root)).resolve().name
    written = save_report(report, out_dir, f"test_{clean_name(data_name)}_{split}",
                          title=f"{names} on {data_name}/{split}")
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def calibrate_checkpoint(classifier, args):
    """--calibrate: fit the temperature on the validation split the checkpoint's training used (its recorded
    split, on the data it was trained on) for the scoring given (the checkpoint's own, with --tta, --tta-scales
    and --logit-adjust where given), store that scoring in the checkpoint -> the classifier with it."""
    if not isinstance(classifier, ModelClassifier):
        raise UserError("--calibrate takes one checkpoint (.pth): it stores the temperature it fits in the file")
    record = classifier.record
    split, trained = record.get("split", {}), record.get("args", {})
    root = split.get("root") or trained.get("data")
    if not root:
        raise DataError(f"{classifier.source} does not record the data it was trained on, whose validation split "
                        "--calibrate fits on")
    train, val = recorded_splits(root, classifier.classes, classifier.input, split,
                                 trained.get("label_mode") or "majority")
    classifier, figures = calibrate(classifier, val, train, classifier.source)
    s = classifier.scoring
    views = f"the image{' and its mirror' if s.tta_flip else ''}" + \
        (f", zoomed by {', '.join(f'{v:g}' for v in s.tta_scales)}" if s.tta_scales else "")
    print(f"{classifier.source}: {summary(figures)} of {root}; stored in the checkpoint with the views it was fitted "
          f"for ({views}; logit adjustment {s.logit_adjust:g})")
    bound = bound_note(figures)
    if bound:
        print(f"warning: {bound}", file=sys.stderr)
    return classifier


if __name__ == "__main__":
    sys.exit(main())
