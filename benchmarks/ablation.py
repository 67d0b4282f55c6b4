"""The exploration table of the write-up: each row one change to the default recipe, mean ± sd over seeds.

    python benchmarks/ablation.py --data /path/to/fer5 [--seeds 0 1 2] [--only default no_aug ...]

Results are appended to runs/ablation.jsonl and runs already there are skipped, so the table (about
15 minutes per row of 3 seeds on a 2-core CPU) can be filled over several sessions; every call prints the
whole table.
"""
import argparse
import sys

import recipes

# name -> train.py flags on top of the default recipe
ABLATIONS = {
    "default": "",
    "seed_model": "--arch seed",
    "seed_recipe": "--recipe seed",
    "narrow": "--widths 16,32,64,128",
    "wide": "--widths 48,96,192,384",
    "one_conv": "--convs-per-stage 1",
    "dropout_0": "--dropout 0",
    "dropout_0.5": "--dropout 0.5",
    "fc_head": "--head fc",
    "no_aug": "--aug none",
    "aug_flip_affine": "--aug flip,affine",
    "aug_flip": "--aug flip",
    "plain_loss": "--class-weights none",
    "balanced_sampler": "--class-weights none --sampler balanced",
    "no_smoothing": "--label-smoothing 0",
    "adamw": "--opt adamw --lr 0.002 --weight-decay 0.05",
    "constant_lr": "--sched none --lr 0.01",
    "epochs_50": "--epochs 50",
    "no_tta": "--no-tta",
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", choices=ABLATIONS, help="run just these rows")
    p.add_argument("--results", default="runs/ablation.jsonl")
    args = p.parse_args(argv)
    names = args.only or list(ABLATIONS)
    runs = [f"{name}={ABLATIONS[name]}" for name in names]
    return recipes.main(["--data", args.data, "--seeds", *map(str, args.seeds), "--recipes", "--runs", *runs,
                         "--results", args.results, "--out", "runs/ablation"])


if __name__ == "__main__":
    sys.exit(main())
