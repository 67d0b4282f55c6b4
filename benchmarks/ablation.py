"""The exploration table of the write-up: each row one change to the default recipe, mean ± sd over seeds.

    python benchmarks/ablation.py --data /path/to/fer5 [--seeds 0 1 2] [--only default no_aug ...]

Results are appended to runs/ablation.jsonl and runs already there are skipped, so the table (about
15 minutes per row of 3 seeds on a 2-core CPU) can be filled over several sessions; every call prints the
whole table.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import sys
import tempfile
from pathlib import Path

import recipes

OUT = "runs/ablation"

# The default before this table moved it (32..256 wide, class-weighted loss): the rows that spell it out
# were measured on it, the others on the current default.
EARLIER = "--widths 32,64,128,256 --class-weights balanced"
# Rows of the plain loss measured before logit adjustment became the default were test-scored on the plain
# argmax (their training and validation do not depend on it); the class-weighted and balanced-sampler rows
# still are, since the adjustment is off for them.
PLAIN_ARGMAX = "--logit-adjust 0"
# Every row but the default was test-scored before zoom TTA became the default, with the mirror alone; the
# flag reproduces that scoring and changes neither training nor the validation figure.
MIRROR_ONLY = "--tta-scales none"

# name -> train.py flags on top of the default recipe, for the rows test-scored with the mirror alone
MEASURED_WITH_MIRROR_ONLY = {
    "w32": f"--widths 32,64,128,256 {PLAIN_ARGMAX}",
    "w32_weighted": EARLIER,
    "assignment_model": "--arch assignment --class-weights balanced",
    "fc_head": f"--head fc {EARLIER}",
    "dropout_0.5": f"--dropout 0.5 {EARLIER}",
    "no_aug": f"--aug none {EARLIER}",
    "balanced_sampler": "--widths 32,64,128,256 --sampler balanced",
    "ema": f"--ema 0.995 {EARLIER}",
    "narrow": "--widths 16,32,64,128",
    "narrow_56_epochs": "--widths 16,32,64,128 --epochs 56",
    "wide": "--widths 48,96,192,384",
    "one_conv": f"--convs-per-stage 1 {PLAIN_ARGMAX}",
    "dropout_0": "--dropout 0",
    "aug_flip_affine": "--aug flip,affine",
    "aug_flip": f"--aug flip {PLAIN_ARGMAX}",
    "weighted_loss": "--class-weights balanced",
    "no_smoothing": f"--label-smoothing 0 {PLAIN_ARGMAX}",
    "adamw": f"--opt adamw --lr 0.002 --weight-decay 0.05 {PLAIN_ARGMAX}",
    "constant_lr": f"--sched none --lr 0.01 {PLAIN_ARGMAX}",
    "epochs_50": "--epochs 50",
    # A learning curve: the default on a quarter and a half of the 4,000 training images (same validation).
    "train_25pct": "--train-fraction 0.25",
    "train_50pct": "--train-fraction 0.5",
}
ABLATIONS = {"default": "", "assignment_recipe": "--recipe assignment",
             **{name: f"{flags} {MIRROR_ONLY}" for name, flags in MEASURED_WITH_MIRROR_ONLY.items()},
             # Rows measured on today's default, zoom TTA included.
             "mixup": "--mix mixup --mix-alpha 0.2", "cutmix": "--mix cutmix",
             "weight_decay_2e-3": "--weight-decay 2e-3", "lr_0.1": "--lr 0.1",
             "affine_strong": "--affine 15,0.2,0.15"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", choices=ABLATIONS, help="run just these rows")
    p.add_argument("--results", default="runs/ablation.jsonl")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = p.parse_args(argv)
    names = args.only or list(ABLATIONS)
    runs = [f"{name}={ABLATIONS[name]}" for name in names]
    status = recipes.main(["--data", args.data, "--seeds", *map(str, args.seeds), "--recipes", "--runs", *runs,
                           "--results", args.results, "--out", OUT, *(["--markdown"] if args.markdown else [])])
    if status == 0 and "default" in names:
        rescored_rows(args.seeds, args.markdown)
    return status


# How the very same default models decide, varied after training: flip and zoom TTA and logit adjustment act
# only on scoring, and validation picks epochs without them, so test.py re-scores each best.pth without
# retraining.
RESCORINGS = {"default": [], "--tta-scales none": ["--tta-scales", "none"],
              "--no-tta --tta-scales none": ["--no-tta", "--tta-scales", "none"],
              "--logit-adjust 0.5": ["--logit-adjust", "0.5"], "--logit-adjust 0": ["--logit-adjust", "0"]}
COLUMNS = (("val", "macro_f1", "val macro-F1"), ("val", "macro_recall", "val bal. acc"),
           ("test", "accuracy", "test acc"), ("test", "macro_f1", "test macro-F1"))


def rescored_rows(seeds, markdown=False):
    sys.path.insert(0, str(recipes.ROOT))
    spec = importlib.util.spec_from_file_location("fer_test_script", recipes.ROOT / "test.py")
    test_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_script)
    scores = {}
    for seed in seeds:
        ckpt = Path(OUT) / f"default_seed{seed}" / "checkpoints" / "best.pth"
        for name, flags in RESCORINGS.items():
            for split in ("val", "test"):
                with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
                    test_script.main(["--ckpt", str(ckpt), "--split", split, *flags, "--out-dir", out])
                    report = json.loads(next(Path(out).glob("*.json")).read_text())
                scores.setdefault((name, split), []).append(report)
    print(f"\nscoring of the same default models ({len(seeds)} seeds; python test.py --ckpt "
          f"{OUT}/default_seedS/checkpoints/best.pth --split val|test [flags]); val bal. acc is the mean recall, "
          "the accuracy of a class-balanced set:")
    table = [(name, *(recipes.mean_sd([100 * r[key] for r in scores[(name, split)]]).strip()
                      for split, key, _ in COLUMNS)) for name in RESCORINGS]
    print(f"{'test.py flags':<28}" + "".join(f"{title:>18}" for *_, title in COLUMNS))
    for row in table:
        print("".join([f"{row[0]:<28}", *(f"{v:>18}" for v in row[1:])]))
    if markdown:
        print("\n| test.py | " + " | ".join(title for *_, title in COLUMNS) + " |\n|" + " --- |" * (len(COLUMNS) + 1))
        for row in table:
            print(f"| {row[0] if row[0] == 'default' else f'`{row[0]}`'} | {' | '.join(row[1:])} |")


if __name__ == "__main__":
    sys.exit(main())
