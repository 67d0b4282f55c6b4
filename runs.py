"""The files a training run leaves in its output and log folders: which they are, where an earlier run's go when a
new run starts in the same folders (predict.py's earlier outputs too), and where reports on a run's checkpoint go.

A run writes OUTPUT_DIR/best.pth and last.pth (export.py writes its exports beside them: best.onnx, ...) and
LOG_DIR/training_log.txt, training_log.jsonl, leakage.csv, test_report.json with its PNGs (and test.py's reports,
plot_curves.py's training_log.png). A new run (not --resume) that finds an earlier run's files there moves them into
a sub-folder run-N of each folder first, N the first number free in both, so that one run's checkpoints and logs
share a name: runs are kept apart as Lightning's version_N and Ultralytics' exp, exp2 keep them, while
checkpoints/best.pth stays the latest run's, which test.py, predict.py and export.py find by default.
"""
import re
from pathlib import Path

# What train.py, export.py, test.py and plot_curves.py write into a run's folders, by name.
RUN_FILES = re.compile(r"(best|last)\..+|training_log\..+|leakage\.csv|test_.+\.(json|png)")
EARLIER_RUN = re.compile(r"run-(\d+)")


def run_files(folder, names=RUN_FILES):
    """The files of a run (named as names matches: RUN_FILES by default) in folder, sorted; none when it does not
    exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if names.fullmatch(p.name) and (p.is_file() or p.is_symlink()))


def set_aside_earlier_run(folders, overwrite=False, names=RUN_FILES,
                          hint="a new run keeps earlier ones; --resume continues one, --overwrite replaces it"):
    """Make room for a new run in folders (its output and log folders; one folder given twice is one): an earlier
    run's files (names: RUN_FILES, a training run's, or predict.py's photos.OUTPUT_NAMES) are moved into a new
    sub-folder run-N of each folder that holds some, N the first number no folder has yet, or deleted under
    overwrite -> one line saying where they went (ending in hint), or None when the folders held none. OSError if a
    file cannot be moved (nothing is deleted then)."""
    folders = list({Path(f).resolve(): Path(f) for f in folders}.values())
    found = {f: run_files(f, names) for f in folders}
    count = sum(map(len, found.values()))
    if not count:
        return None
    where = " and ".join(f"{f}" for f, files in found.items() if files)
    if overwrite:
        for files in found.values():
            for p in files:
                p.unlink()
        return f"--overwrite: deleted the earlier run's {count} file(s) in {where}"
    taken = [int(m.group(1)) for f in folders if f.is_dir() for p in f.iterdir()
             if (m := EARLIER_RUN.fullmatch(p.name))]
    name = f"run-{max(taken, default=0) + 1}"
    moved = []
    for folder, files in found.items():
        if files:
            (folder / name).mkdir()
            for p in files:
                p.rename(folder / name / p.name)  # within one folder: a rename, never a copy
            moved.append(str(folder / name))
    return f"{where} held an earlier run's {count} file(s): moved to {' and '.join(moved)} ({hint})"


SHIPPED_MODELS = Path(__file__).resolve().parent / "models"


def report_folder(checkpoint, record):
    """Where reports on a checkpoint go unless a flag says otherwise: its run's log folder when the checkpoint is
    where its run wrote it (the OUTPUT_DIR its record's "args" name), else the checkpoint's own folder (a run set
    aside in run-N, an export); logs/ for the shipped models -> Path."""
    args = (record or {}).get("args") or {}
    here = Path(checkpoint).parent
    if here.resolve() == SHIPPED_MODELS:  # the toolkit's own folder of tracked files is no place for reports
        return Path("logs")
    if args.get("output_dir") and args.get("log_dir") and Path(args["output_dir"]).resolve() == here.resolve():
        return Path(args["log_dir"])
    return here
