"""Time-to-accuracy of training recipes, measured against the machine's arithmetic: one table per run of it.

    python benchmarks/speedrun.py --data /path/to/fer5 --seeds 0 1 2 --recipes default fer5-w24
    python benchmarks/speedrun.py --data /path/to/fer5 --seeds 0 --runs "e10=--epochs 10" "s40=--input-size 40"

Each run is `python train.py --data DATA --recipe R --seed S [flags]` in its own process (benchmarks/recipes.py's
run_one), back to back, never two at once. Per recipe and seed it prints: the wall time from process start to
exit (start-up, decoding, the leakage check, training, calibration and the test views included), the training
images per second (over the training epochs), the FLOPs one training image costs (forward and backward of the
recipe's network at each epoch's input size, counted by torch.utils.flop_counter on the model the run saved,
not estimated by hand), the TFLOP/s the training epochs achieved, and validation and test accuracy and Macro-F1;
then mean ± sd per recipe. Choices rest on validation; the test columns are for reporting only.
"""
import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch
from recipes import configurations, finished_runs, mean_sd, run_one, this_machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import load_checkpoint, model_from_checkpoint, scoring_of  # noqa: E402


def step_flops(model, channels, side, batch=8):
    """FLOPs of one training step per image (forward + backward, counted as torch.utils.flop_counter counts them:
    2 per multiply-add) of model on channels x side x side inputs."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, channels, side, side)
    with FlopCounterMode(display=False) as counter:
        model.train()(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def training_flops(checkpoint, sizes):
    """step_flops of the network a checkpoint holds at each of sizes (pixels; None: its input size) ->
    {size: FLOPs}."""
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state, checkpoint)
    shape = scoring_of(state, checkpoint).input
    return {size: step_flops(model, shape["channels"], size or shape["size"]) for size in sizes}


def speed(work):
    """A finished run's training epochs, from its training_log.jsonl -> (images per second, seconds, FLOPs per
    training image): the FLOPs of each epoch's image size (train.py --progressive-resize), averaged over images."""
    epochs = [json.loads(line) for line in (work / "logs" / "training_log.jsonl").read_text().splitlines()]
    seconds = sum(e["train_time"] for e in epochs)
    images = [e["train_time"] * e["train_img_per_s"] for e in epochs]
    flops = training_flops(work / "checkpoints" / "best.pth", {e.get("train_size") for e in epochs})
    per_image = sum(n * flops[e.get("train_size")] for n, e in zip(images, epochs)) / sum(images)
    return sum(images) / seconds, seconds, per_image


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="*", default=["default"], help="named recipes of train.py (train.py --recipe)")
    p.add_argument("--runs", nargs="*", default=[], metavar="NAME=FLAGS",
                   help="more configurations: a name and train.py flags (on top of the default recipe)")
    p.add_argument("--extra", default="", help="train.py flags added to every run, e.g. '--test-split val'")
    p.add_argument("--out", default="runs/speedrun", help="where each run's checkpoints and logs go")
    p.add_argument("--results", help="JSONL of finished runs: runs already in it are not repeated")
    args = p.parse_args(argv)

    machine = this_machine()
    print(f"machine: {machine}")
    done = finished_runs(args.results, machine)
    configs = configurations(args.recipes, args.runs)
    head = (f"{'recipe':<16}{'seed':>5}{'epochs':>7}{'wall s':>8}{'train s':>9}{'img/s':>7}{'GFLOP/img':>10}"
            f"{'TFLOP/s':>8}{'val acc':>8}{'val F1':>8}{'test acc':>9}{'test F1':>8}")
    print(head)
    rows = []
    for name, flags in configs:
        for seed in args.seeds:
            row = done.get((name, seed))
            if row is None:
                row = run_one(args.data, name, flags, seed, Path(args.out), shlex.split(args.extra), machine)
                work = Path(args.out) / f"{name}_seed{seed}"
                row["img_s"], row["epoch_s"], flops = speed(work)
                row["gflop_img"] = flops / 1e9
                row["tflop_s"] = row["gflop_img"] * row["img_s"] / 1e3
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"{name:<16}{seed:>5}{row['epochs']:>7}{row['wall_s']:>8.1f}{row['epoch_s']:>9.1f}"
                  f"{row['img_s']:>7.0f}{row['gflop_img']:>10.3f}{row['tflop_s']:>8.3f}{row['val_acc']:>8.2f}"
                  f"{row['val_macro_f1']:>8.2f}{row['acc']:>9.2f}{row['macro_f1']:>8.2f}", flush=True)

    print(f"\n{'recipe':<16}{'runs':>5}{'wall s':>16}{'img/s':>7}{'TFLOP/s':>8}{'val acc':>16}{'test acc':>16}"
          f"{'test Macro-F1':>16}")
    for name, _ in configs:
        mine = [r for r in rows if r["name"] == name]
        print(f"{name:<16}{len(mine):>5}{mean_sd([r['wall_s'] for r in mine], 1):>16}"
              f"{statistics.mean(r['img_s'] for r in mine):>7.0f}{statistics.mean(r['tflop_s'] for r in mine):>8.3f}"
              f"{mean_sd([r['val_acc'] for r in mine]):>16}{mean_sd([r['acc'] for r in mine]):>16}"
              f"{mean_sd([r['macro_f1'] for r in mine]):>16}")
    print()
    for name, _ in configs:
        print(f"{name}: python {next(r['cmd'] for r in rows if r['name'] == name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
