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

# name -> train.py flags on top of the default recipe
ABLATIONS = {
    "default": "",
    "seed_recipe": "--recipe seed",
    "w32": "--widths 32,64,128,256",
    "w32_weighted": EARLIER,
    "seed_model": "--arch seed --class-weights balanced",
    "fc_head": f"--head fc {EARLIER}",
    "dropout_0.5": f"--dropout 0.5 {EARLIER}",
    "no_aug": f"--aug none {EARLIER}",
    "balanced_sampler": "--widths 32,64,128,256 --sampler balanced",
    "ema": f"--ema 0.995 {EARLIER}",
    "narrow": "--widths 16,32,64,128",
    "wide": "--widths 48,96,192,384",
    "one_conv": "--convs-per-stage 1",
    "dropout_0": "--dropout 0",
    "aug_flip_affine": "--aug flip,affine",
    "aug_flip": "--aug flip",
    "weighted_loss": "--class-weights balanced",
    "no_smoothing": "--label-smoothing 0",
    "adamw": "--opt adamw --lr 0.002 --weight-decay 0.05",
    "constant_lr": "--sched none --lr 0.01",
    "epochs_50": "--epochs 50",
}


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
        flip_tta_rows(args.seeds, args.markdown)
    return status


def flip_tta_rows(seeds, markdown=False):
    """Flip TTA on vs off for the very same default models. Validation picks epochs without TTA, so turning
    it off needs no retraining: test.py scores each best.pth both ways, on validation and on test."""
    sys.path.insert(0, str(recipes.ROOT))
    spec = importlib.util.spec_from_file_location("fer_test_script", recipes.ROOT / "test.py")
    test_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_script)
    scores = {}
    for seed in seeds:
        ckpt = Path(OUT) / f"default_seed{seed}" / "checkpoints" / "best.pth"
        for tta in ("--tta", "--no-tta"):
            for split in ("val", "test"):
                with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
                    test_script.main(["--ckpt", str(ckpt), "--split", split, tta, "--out-dir", out])
                    report = json.loads(next(Path(out).glob("*.json")).read_text())
                scores.setdefault((tta, split), []).append(report)
    print(f"\nflip TTA, same default models ({len(seeds)} seeds; "
          f"python test.py --ckpt {OUT}/default_seedS/checkpoints/best.pth --split val|test --tta|--no-tta):")
    table = [(tta, *(recipes.mean_sd([100 * r[key] for r in scores[(tta, split)]]).strip()
                     for split, key in (("val", "macro_f1"), ("test", "accuracy"), ("test", "macro_f1"))))
             for tta in ("--tta", "--no-tta")]
    print(f"{'':<18}{'val macro-F1':>18}{'test acc':>18}{'test macro-F1':>18}")
    for row in table:
        print("".join([f"{row[0]:<18}", *(f"{v:>18}" for v in row[1:])]))
    if markdown:
        print("\n| test.py | val Macro-F1 | test accuracy | test Macro-F1 |\n| --- | --- | --- | --- |")
        for row in table:
            print(f"| `{row[0]}` | {' | '.join(row[1:])} |")


if __name__ == "__main__":
    sys.exit(main())
