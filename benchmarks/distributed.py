"""Epoch time and images/s of train.py under torchrun with 1, 2, ... processes.

    python benchmarks/distributed.py --data /path/to/fer5 --procs 1 2 [--epochs 2] [-- extra train.py flags]

Each row is `torchrun --standalone --nproc_per_node=N train.py --data DATA --epochs E ...`; the figures are
read from the run's logs/training_log.jsonl (the last epoch, so start-up costs are left out). On CPUs each
process gets cores / N threads, so the processes share the machine rather than fight over it.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="runs/distributed")
    p.add_argument("extra", nargs="*", help="flags passed on to train.py (after --)")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    print(f"{'procs':>5}{'epoch s':>10}{'img/s':>10}{'val acc':>10}{'wall s':>10}")
    for n in args.procs:
        work = Path(args.out) / f"procs{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               str(ROOT / "train.py"), "--data", args.data, "--epochs", str(args.epochs), "--no-progress",
               "--output-dir", str(work / "checkpoints"), "--log-dir", str(work / "logs"), *args.extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n))}
        start = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            raise SystemExit(f"{n} processes failed:\n{run.stderr[-2000:]}")
        last = json.loads((work / "logs" / "training_log.jsonl").read_text().splitlines()[-1])
        print(f"{n:>5}{last['train_time']:>10.1f}{last['train_img_per_s']:>10.0f}{last['val_acc']:>10.2f}{wall:>10.1f}")
    print(f"\ncommand: torchrun --standalone --nproc_per_node=N train.py --data {args.data} --epochs {args.epochs} "
          + " ".join(args.extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
