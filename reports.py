"""Reports and figures: a scored split as JSON, its confusion matrix and reliability diagram as PNG, the training
log (TrainingLog writes it, parse_log reads it back) and its curves, and a video's timeline.

Matplotlib draws to files only (the Agg backend), so nothing here needs a display.
"""
import json
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tqdm import tqdm  # noqa: E402

from fonts import text_properties  # noqa: E402

LINE = re.compile(r"^(Train|Validation) Loss:\s*([-\d.eE+naif]+),\s*\1 Accuracy:\s*([\d.]+)%")


def parse_log(path):
    """The loss and accuracy curves of a training log in the assignment's text format (train.py writes it)
    -> {'train_loss': [...], 'train_acc': [...], 'val_loss': [...], 'val_acc': [...]} in epoch order."""
    curves = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = LINE.match(line.strip())
        if m:
            prefix = "train" if m.group(1) == "Train" else "val"
            curves[f"{prefix}_loss"].append(float(m.group(2)))
            curves[f"{prefix}_acc"].append(float(m.group(3)))
    return curves


def plot_curves(curves, out_path, title=""):
    """Loss and accuracy per epoch (parse_log's dict) as one PNG with two panels."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train", "train"), ("val", "validation")):
        epochs = range(1, len(curves[f"{key}_loss"]) + 1)
        ax_loss.plot(epochs, curves[f"{key}_loss"], marker=".", label=label)
        ax_acc.plot(range(1, len(curves[f"{key}_acc"]) + 1), curves[f"{key}_acc"], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    epochs = max(len(v) for v in curves.values())
    for ax in (ax_loss, ax_acc):
        # Whole epochs only, half an epoch of margin: one epoch drew an axis from 0.96 to 1.04.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, max(epochs, 1) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, out_path, title)


# A timeline draws at most this many tracks, the longest: a crowd's hundred one-second tracks would be unreadable.
TIMELINE_TRACKS = 12
TIMELINE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def plot_timeline(rows, classes, out_path, title=""):
    """Each track's class probabilities over time, one panel per track (the TIMELINE_TRACKS seen in most frames,
    in order of first sight), sharing one time axis in seconds. rows: predict.py's per-frame rows (track, time_s,
    p_<class>), others ignored. -> the number of tracks drawn."""
    by_track = {}
    for row in rows:
        if row.get("track") not in (None, ""):
            by_track.setdefault(int(row["track"]), []).append(row)
    shown = sorted(sorted(by_track, key=lambda t: -len(by_track[t]))[:TIMELINE_TRACKS])
    if not shown:
        return 0
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 1.2 + 1.5 * len(shown)), sharex=True, squeeze=False)
    for ax, track in zip(axes[:, 0], shown):
        times = [float(r["time_s"]) for r in by_track[track]]
        for k, c in enumerate(classes):
            ax.plot(times, [float(r[f"p_{c}"]) for r in by_track[track]], lw=1.2,
                    color=TIMELINE_COLOURS[k % len(TIMELINE_COLOURS)], label=c)
        ax.set_ylim(-0.03, 1.03)  # a probability of 1 drawn on the frame's edge was invisible
        ax.set_ylabel(f"track {track}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(ncol=min(len(classes), 8), fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.02),
                      prop=text_properties(" ".join(classes)).get("fontproperties"))
    axes[-1, 0].set_xlabel("time (s)")
    _save(fig, out_path, title)
    return len(shown)


def _save(fig, out_path, title=""):
    if title:
        fig.suptitle(title, **text_properties(title))
    with warnings.catch_warnings():
        # A glyph no installed font has: fonts.font_for has said so once, where matplotlib would say it per glyph.
        warnings.filterwarnings("ignore", "Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(out_path, dpi=120)
    plt.close(fig)


def plot_confusion_matrix(cm, classes, out_path, title=""):
    """cm (rows: true class, columns: predicted; lists of ints) as a PNG heat-map with the counts written in."""
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    peak = max(max(row) for row in cm) if cm else 0
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    # Class names (and a title naming the data) may be in any script: drawn in a font that has their glyphs.
    font = text_properties(*classes)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", **font)
    ax.set_yticks(range(len(classes)), classes, **font)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title or "Confusion matrix", **text_properties(title))
    _save(fig, out_path)


def plot_reliability(calibration, out_path, title=""):
    """A reliability diagram (DeGroot and Fienberg, 1983; as in Guo et al., ICML 2017): per confidence bin, the
    accuracy of the decisions against their mean confidence, before and after temperature scaling
    (calibration: the report's "calibration" block). A calibrated model's bars follow the diagonal."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, name in zip(axes, ("before", "after")):
        part = calibration[name]
        bins = part["bins"]
        width = 1 / len(bins)
        lefts = [i * width for i in range(len(bins))]
        accuracy = [b["accuracy"] or 0 for b in bins]
        confidence = [b["confidence"] or 0 for b in bins]
        ax.bar(lefts, accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
        ax.bar(lefts, [c - a if b["count"] else 0 for c, a, b in zip(confidence, accuracy, bins)], width=width,
               bottom=accuracy, align="edge", color="tab:red", alpha=0.3, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        t = "" if name == "before" else f", temperature {calibration['temperature']:.2f}"
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence",
               title=f"{name}{t}: ECE {100 * part['ece']:.1f}%\n(calibrated, by chance: {100 * part['ece_chance']:.1f}"
                     f" ± {100 * part['ece_chance_sd']:.1f}%)")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    _save(fig, out_path, title)


def clean_name(text):
    """text made fit to be part of a file name: each run of spaces and characters other than letters, digits, '.',
    '-' and '_' becomes one '_' ("my data" -> "my_data"), without a leading or trailing '.' or '_'."""
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "data"


def save_report(report, out_dir, stem, title=""):
    """Write a classification report (metrics.report_from_confusion, plus whatever the caller added) as
    out_dir/stem.json, its confusion matrix as out_dir/stem_confusion.png and, when it has calibration figures,
    a reliability diagram as out_dir/stem_reliability.png -> the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}_confusion.png"
    json_path.write_text(json.dumps(report, indent=2))
    plot_confusion_matrix(report["confusion_matrix"], report["classes"], png_path, title=title)
    written = [json_path, png_path]
    if "calibration" in report:
        written.append(out_dir / f"{stem}_reliability.png")
        plot_reliability(report["calibration"], written[-1], title=title)
    return written


class TrainingLog:
    """logs/training_log.txt in the assignment's words (so its logs and ours plot alike) and a JSONL record
    per epoch with every figure. Each line is flushed as written, so a crash loses nothing written."""

    def __init__(self, log_dir, append, enabled=True):
        self.enabled = enabled
        if not enabled:  # processes other than rank 0 under torchrun
            return
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        mode = "a" if append else "w"
        self.text = open(log_dir / "training_log.txt", mode)  # noqa: SIM115 - open for the whole run
        self.jsonl = open(log_dir / "training_log.jsonl", mode)  # noqa: SIM115

    def line(self, text, echo=True):
        if not self.enabled:
            return
        if echo:
            tqdm.write(text)
        self.text.write(text + "\n")
        self.text.flush()

    def record(self, row):
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()

    def close(self):
        if not self.enabled:
            return
        self.text.close()
        self.jsonl.close()
