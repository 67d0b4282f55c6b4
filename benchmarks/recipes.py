"""Train recipes over several seeds and print test accuracy, Macro-F1 and wall time as a table.

    python benchmarks/recipes.py --data /path/to/fer5 --seeds 0 1 2 --recipes assignment default
    python benchmarks/recipes.py --data /path/to/fer5 --runs "bs128=--batch-size 128" "noaug=--aug none"

Each run is `python train.py --data DATA --recipe R --seed S [flags]` in its own process, timed from start
to exit (data loading, training and the final test included). Models and epochs are chosen on the
validation split only; the test split is scored once per run, after training.
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import engine  # noqa: E402


def this_machine():
    """What the runs are timed on (engine.describe_device of the device train.py picks by default), recorded in
    every row, so a results file never mixes machines without saying so."""
    return engine.describe_device(engine.select_device("auto"))


def run_one(data, name, flags, seed, out_root, extra, machine):
    """One training run in its own process -> its row; machine: this_machine(), recorded in the row."""
    work = out_root / f"{name}_seed{seed}"
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", data, "--seed", str(seed), "--no-progress",
           "--output-dir", str(work / "checkpoints"), "--log-dir", str(work / "logs"), *flags, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work).mkdir(parents=True, exist_ok=True)
    (work / "stdout.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"run {name} seed {seed} failed ({proc.returncode}); see {work / 'stdout.txt'}")
    report = json.loads((work / "logs" / "test_report.json").read_text())
    epochs = [json.loads(line) for line in (work / "logs" / "training_log.jsonl").read_text().splitlines()]
    best = max((e for e in epochs if e["best"]), key=lambda e: e["epoch"])
    return {"name": name, "seed": seed, "wall_s": wall, "epochs": len(epochs), "best_epoch": best["epoch"],
            "val_macro_f1": best["val_macro_f1"], "val_acc": best["val_acc"],
            "train_s": sum(e["train_time"] for e in epochs), "acc": 100 * report["accuracy"],
            "macro_f1": 100 * report["macro_f1"], **({"vote_kl": report["vote_kl"]} if "vote_kl" in report else {}),
            "cmd": " ".join(shlex.quote(c) for c in cmd[1:]), "machine": machine}


def finished_runs(results, machine):
    """The runs a --results JSONL already holds that were timed on machine (this_machine()) -> {(name, seed): row};
    none without the file. A row from another machine, or from before rows named theirs, is left out (and so run
    again), with a note on stderr: its wall time is another machine's."""
    done, elsewhere = {}, 0
    if results and Path(results).exists():
        for line in Path(results).read_text().splitlines():
            row = json.loads(line)
            if row.get("machine") != machine:
                elsewhere += 1
                continue
            done[(row["name"], row["seed"])] = row
    if elsewhere:
        print(f"note: {elsewhere} run{'s' * (elsewhere != 1)} in {results} {'were' if elsewhere != 1 else 'was'} "
              f"timed on another machine (or one not recorded), not {machine}: run again here", file=sys.stderr)
    return done


def configurations(recipes, runs):
    """--recipes names and --runs "NAME=FLAGS" -> [(name, train.py flags)]."""
    configs = [(r, ["--recipe", r]) for r in recipes]
    return configs + [(spec.split("=", 1)[0], shlex.split(spec.split("=", 1)[1])) for spec in runs]


def mean_sd(values, digits=2):
    return f"{statistics.mean(values):6.{digits}f} ± {statistics.stdev(values):4.{digits}f}" if len(values) > 1 \
        else f"{values[0]:6.{digits}f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="*", default=["assignment", "default"],
                   help="named recipes of train.py, run as baselines beside --runs (default: assignment default; "
                   "--recipes with no names runs none)")
    p.add_argument("--runs", nargs="*", default=[], metavar="NAME=FLAGS",
                   help="extra configurations: a name and train.py flags on top of the default recipe")
    p.add_argument("--extra", default="", help="flags added to every run, e.g. '--epochs 30'")
    p.add_argument("--out", default="runs/benchmark", help="where each run's checkpoints and logs go")
    p.add_argument("--markdown", action="store_true", help="also print the summary as a Markdown table")
    p.add_argument("--results", help="JSONL of finished runs: runs already in it are not repeated, new ones "
                   "are appended, so a long table can be built over several sessions")
    args = p.parse_args(argv)
    machine = this_machine()
    print(f"machine: {machine}")
    done = finished_runs(args.results, machine)
    configs = configurations(args.recipes, args.runs)
    rows = []
    print(f"{'config':<18}{'seed':>5}{'epochs':>8}{'best':>6}{'train s':>9}{'wall s':>9}"
          f"{'test acc':>10}{'macro-F1':>10}")
    for name, flags in configs:
        for seed in args.seeds:
            row = done.get((name, seed))
            if row is None:
                row = run_one(args.data, name, flags, seed, Path(args.out), shlex.split(args.extra), machine)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"{name:<18}{seed:>5}{row['epochs']:>8}{row['best_epoch']:>6}{row['train_s']:>9.1f}"
                  f"{row['wall_s']:>9.1f}{row['acc']:>10.2f}{row['macro_f1']:>10.2f}", flush=True)
    print()
    # Validation Macro-F1 (of the epoch kept) is what a choice between rows may rest on; test is for reporting.
    summary = summarize(configs, rows)
    print(f"{'config':<18}{'runs':>5}{'wall s (mean ± sd)':>22}{'val acc':>18}{'val macro-F1':>18}{'test acc':>18}"
          f"{'test macro-F1':>18}")
    for r in summary:
        print(f"{r['name']:<18}{r['runs']:>5}{r['wall']:>22}{r['val_acc']:>18}{r['val']:>18}{r['acc']:>18}"
              f"{r['macro_f1']:>18}")
    print()
    for name, _ in configs:
        print(f"{name}: python {next(r['cmd'] for r in rows if r['name'] == name)}")
    if args.markdown:  # the summary again, as the Markdown table the write-up quotes
        votes = any(r["vote_kl"] != "-" for r in summary)  # vote data (FER+): the KL to the votes as well
        print("\n| row | train.py flags | runs | kept epochs | wall s | val accuracy | val Macro-F1 | test accuracy "
              "| test Macro-F1 |" + (" test KL to the votes |" if votes else ""))
        print("| --- " * (10 if votes else 9) + "|")
        for r in summary:
            print(f"| {r['name']} | `{shlex.join(r['flags'])}` | {r['runs']} | {r['kept']} | {r['wall']} | "
                  f"{r['val_acc']} | {r['val']} | {r['acc']} | {r['macro_f1']} |" + (f" {r['vote_kl']} |" * votes))
    return 0


def summarize(configs, rows):
    """Per configuration: its runs, kept epochs, and mean ± sd of wall time, validation and test figures."""
    summary = []
    for name, flags in configs:
        mine = [r for r in rows if r["name"] == name]
        val = [r["val_macro_f1"] for r in mine if "val_macro_f1" in r]
        val_acc = [r["val_acc"] for r in mine if "val_acc" in r]
        kl = [r["vote_kl"] for r in mine if "vote_kl" in r]
        summary.append({"name": name, "flags": flags, "runs": len(mine),
                        "kept": ", ".join(str(r["best_epoch"]) for r in mine),
                        "wall": mean_sd([r["wall_s"] for r in mine]).strip(),
                        "val": mean_sd(val).strip() if val else "-",
                        "val_acc": mean_sd(val_acc).strip() if val_acc else "-",
                        "acc": mean_sd([r["acc"] for r in mine]).strip(),
                        "macro_f1": mean_sd([r["macro_f1"] for r in mine]).strip(),
                        "vote_kl": mean_sd(kl, digits=3).strip() if kl else "-"})
    return summary


if __name__ == "__main__":
    sys.exit(main())
