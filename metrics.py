"""Classification metrics, computed from the confusion matrix so every figure agrees with it.

Precision of class k is correct-k / predicted-k (the assignment's code divided by all test images instead), recall is
correct-k / actual-k; a class never predicted (or absent) gets 0, never a division by zero.
"""
import numpy as np


def confusion_matrix(y_true, y_pred, num_classes):
    """cm[i, j] = number of samples of true class i predicted as class j."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _safe_divide(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def classification_report(y_true, y_pred, classes):
    """-> dict with accuracy, macro and weighted averages, and per-class precision/recall/f1/support."""
    return report_from_confusion(confusion_matrix(y_true, y_pred, len(classes)), classes)


def report_from_confusion(cm, classes):
    """classification_report from a confusion matrix, e.g. one summed over the shards of several processes."""
    cm = np.asarray(cm, dtype=np.int64)
    correct = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = _safe_divide(correct, predicted)
    recall = _safe_divide(correct, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = cm.sum()
    # Macro averages run over the classes the data has: a class absent from it (scoring a model on a dataset
    # with fewer classes) has no recall to average, though the model may still predict it.
    present = support > 0 if support.any() else np.ones_like(support, dtype=bool)
    report = {
        "accuracy": float(correct.sum() / total) if total else 0.0,
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float(_safe_divide((f1 * support).sum(), total)),
        "num_samples": int(total),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }
    if not present.all():
        report["absent_classes"] = [c for c, p in zip(classes, present) if not p]
    return report


CALIBRATION_BINS = 15


def calibration_sums(probabilities, labels, bins=CALIBRATION_BINS):
    """Sums that calibration figures are made of, additive over shards of a split: float64 array of
    bins x 3 (faces, summed confidence, correct decisions per equal-width confidence bin), then the summed
    negative log-likelihood of the true class and the summed Brier score. probabilities: float N x classes;
    labels: int N."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence, decision = probabilities.max(1), probabilities.argmax(1)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    table = np.zeros((bins, 3))
    np.add.at(table, which, np.stack([np.ones_like(confidence), confidence, decision == labels], 1))
    truth = np.zeros_like(probabilities)
    truth[np.arange(len(labels)), labels] = 1
    nll = -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)).sum()
    brier = ((probabilities - truth) ** 2).sum()
    return np.concatenate([table.flatten(), [nll, brier]])


def calibration_from_sums(sums, bins=CALIBRATION_BINS):
    """-> {ece, nll, brier, bins: [{count, confidence, accuracy}]} from calibration_sums (added up).

    ECE, the expected calibration error (Naeini et al., AAAI 2015; as Guo et al., ICML 2017 use it): the
    face-weighted mean over 15 equal-width confidence bins of |accuracy - mean confidence|. NLL: mean negative
    log-likelihood of the true class (nats). Brier: mean squared distance of the probabilities from the one-hot
    truth, summed over classes (Brier, 1950).

    ece_chance, ece_chance_sd: the mean and standard deviation of the ECE that a perfectly calibrated model with
    the same confidences would measure on this many faces. Binned ECE is biased upwards by sampling noise
    (Kumar, Liang and Ma, "Verified Uncertainty Calibration", NeurIPS 2019; Roelofs et al., "Mitigating Bias in
    Calibration Error Estimation", AISTATS 2022): on 500 faces a calibrated model measures about 5%, so an ECE
    near ece_chance is as small as that split can show. Computed exactly, with each bin's correct decisions
    binomial at its mean confidence (faces in one bin differ in confidence by at most a fifteenth)."""
    table = np.asarray(sums[:3 * bins]).reshape(bins, 3)
    n = max(1.0, table[:, 0].sum())
    gaps = np.abs(table[:, 2] - table[:, 1])
    chance_mean, chance_sd = _ece_of_a_calibrated_model(table)
    return {"ece": float(gaps.sum() / n), "ece_chance": chance_mean / n, "ece_chance_sd": chance_sd / n,
            "nll": float(sums[3 * bins] / n), "brier": float(sums[3 * bins + 1] / n),
            "bins": [{"count": int(c), "confidence": float(s / c) if c else None,
                      "accuracy": float(a / c) if c else None} for c, s, a in table]}


def _ece_of_a_calibrated_model(table):
    """-> (mean, sd) of sum over bins of |correct - summed confidence| when each bin's correct decisions are
    Binomial(faces, mean confidence), for calibration_from_sums. table: bins x (faces, summed confidence,
    correct). Bins are independent, so means and variances add; E|X - np|^2 is the binomial variance np(1-p)."""
    # log(k!) for k up to the fullest bin, as cumulative sums of logs, shared by every bin's binomial pmf.
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, int(round(table[:, 0].max())) + 1)))])
    mean = variance = 0.0
    for faces, confidence, _ in table:
        faces = int(round(faces))
        if faces == 0:
            continue
        p = min(max(confidence / faces, 0.0), 1.0)
        k = np.arange(faces + 1)
        if 0.0 < p < 1.0:
            log_pmf = (log_factorial[faces] - log_factorial[k] - log_factorial[faces - k]
                       + k * np.log(p) + (faces - k) * np.log1p(-p))
            absolute = float((np.exp(log_pmf) * np.abs(k - faces * p)).sum())
        else:
            absolute = 0.0
        mean += absolute
        variance += max(0.0, faces * p * (1 - p) - absolute ** 2)
    return mean, variance ** 0.5


def format_report(report):
    """A plain-text table of a classification_report dict, figures in percent."""
    classes = report["classes"]
    width = max(12, *(len(c) + 2 for c in classes))
    lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name in classes:
        m = report["per_class"][name]
        lines.append(f"{name:<{width}}{100 * m['precision']:>10.2f}{100 * m['recall']:>10.2f}"
                     f"{100 * m['f1']:>10.2f}{m['support']:>10d}")
    if report.get("absent_classes"):
        lines.append(f"(no {', '.join(report['absent_classes'])} in the data: macro averages over the other "
                     f"classes)")
    lines.append(f"{'macro avg':<{width}}{100 * report['macro_precision']:>10.2f}"
                 f"{100 * report['macro_recall']:>10.2f}{100 * report['macro_f1']:>10.2f}"
                 f"{report['num_samples']:>10d}")
    lines.append("")
    lines.append(f"Accuracy: {100 * report['accuracy']:.2f}%   Macro-F1: {100 * report['macro_f1']:.2f}")
    if "vote_kl" in report:
        lines.append(f"Against the annotators' vote distributions: cross-entropy {report['vote_cross_entropy']:.4f}, "
                     f"KL divergence {report['vote_kl']:.4f} (nats per face)")
    if "calibration" in report:
        c = report["calibration"]
        before, after = c["before"], c["after"]
        lines.append(f"Calibration ({CALIBRATION_BINS} bins), before -> after temperature {c['temperature']:.3f}: "
                     f"ECE {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}%, NLL {before['nll']:.4f} -> "
                     f"{after['nll']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}")
        lines.append(f"  a perfectly calibrated model would measure ECE {100 * after['ece_chance']:.2f} ± "
                     f"{100 * after['ece_chance_sd']:.2f}% on these {report['num_samples']:,} faces (binning noise)")
        if "vote_kl" in after:
            lines.append(f"  KL divergence from the annotators' votes {before['vote_kl']:.4f} -> "
                         f"{after['vote_kl']:.4f}")
    lines.append("")
    lines.append("Confusion matrix (rows: true, columns: predicted)")
    short = [c[:7] for c in classes]
    lines.append(" " * width + "".join(f"{s:>8}" for s in short))
    for name, row in zip(classes, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)
