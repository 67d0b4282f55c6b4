"""Temperature scaling: one scalar that makes a classifier's confidences mean what they say.

Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017: divide the logits by a
temperature T, fitted on held-out data to minimise the negative log-likelihood; T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one. Dividing by T > 0 keeps every argmax, so decisions, accuracy and
Macro-F1 are untouched. The fitted T lives in the checkpoint's scoring block (checkpoint.Scoring.temperature).

It is fitted on the validation faces that are not copies of training faces (dataset.unseen): FER2013 holds
hundreds of re-encoded and re-cropped copies, which a model scores from memory, so a fit that kept them would
sharpen the model for faces it has seen (measured: the seven-class model's temperature 0.86 with them, 0.89
without, and PublicTest's ECE 3.65% against 2.49%).
"""
import torch
import torch.nn.functional as F

from checkpoint import load_checkpoint, save_checkpoint
from dataset import unseen
from metrics import calibration_from_sums, calibration_sums


def fit_temperature(logits, labels, steps=100):
    """The temperature minimising the mean NLL of softmax(logits / T) for labels (float N x classes, int N),
    found by L-BFGS on log T (so T stays positive) -> float. 1.0 when there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().double(), labels.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibrate(classifier, val, train, checkpoint=None):
    """Fit a classifier's temperature on the validation images that are not copies of training images
    (val, train: FERSplits; dataset.unseen), and store it in the scoring block of the checkpoint file when one is
    given. Data where most validation images look like copies (drawn faces, frames of one video) is fitted on all
    of its validation. -> (the classifier with it, {"temperature", "images", "before", "after"}: ECE, NLL and
    Brier score on those images at temperature 1 and at the fitted one, metrics.calibration_from_sums)."""
    new = unseen(val, train)
    val = new if len(new) >= len(val) / 2 else val
    logits = classifier.decision_logits(val.images)
    temperature = fit_temperature(logits, val.labels)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        state["scoring"] = {**state["scoring"], "temperature": temperature}
        save_checkpoint(state, checkpoint)
    figures = {"temperature": temperature, "images": len(val)}
    for name, t in (("before", 1.0), ("after", temperature)):
        figures[name] = calibration_from_sums(calibration_sums(torch.softmax(logits.double() / t, 1).numpy(),
                                                               val.labels.numpy()))
    return classifier.rescored(temperature=temperature), figures


def summary(figures):
    """One line saying what a calibration (calibrate's figures) did."""
    before, after = figures["before"], figures["after"]
    return (f"temperature {figures['temperature']:.3f} fitted on {figures['images']} validation images: NLL "
            f"{before['nll']:.4f} -> {after['nll']:.4f}, ECE {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}% "
            f"(a calibrated model: {100 * after['ece_chance']:.2f}% by chance)")
