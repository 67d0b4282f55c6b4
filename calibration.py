"""Temperature scaling: one scalar that makes a classifier's confidences mean what they say.

Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017: divide the logits by a
temperature T, fitted on held-out data to minimise the negative log-likelihood; T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one. Dividing by T > 0 keeps every argmax, so decisions, accuracy and
Macro-F1 are untouched. The fitted T lives in the checkpoint's scoring block (checkpoint.Scoring.temperature).

It is fitted on the validation faces that are not copies of training faces (leakage.unseen): FER2013 holds
hundreds of re-encoded and re-cropped copies, which a model scores from memory, so a fit that kept them would
sharpen the model for faces it has seen (measured: the seven-class model's temperature 0.86 with them, 0.89
without, and PublicTest's ECE 3.65% against 2.49%).
"""
import torch
import torch.nn.functional as F

from checkpoint import load_checkpoint, save_checkpoint
from leakage import unseen
from metrics import calibration_from_sums, calibration_sums

# The temperatures a fit may reach. Trained models land between about 0.5 and 3 (FER2013's seven-class model 0.89);
# at 20 the softmax of any logits a network gives is close to uniform, and at 0.05 close to one-hot, so a fit that
# reaches either bound says that the model's logits, not their scale, are what is wrong.
TEMPERATURE_BOUNDS = (0.05, 20.0)


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
    return float(log_t.detach().exp().clamp(*TEMPERATURE_BOUNDS))


def calibrate(classifier, val, train, checkpoint=None, val_logits=None):
    """Fit a classifier's temperature on the validation images that are not copies of training images
    (val, train: FERSplits; leakage.unseen), and store it, with the views and logit adjustment it was fitted for
    (the classifier's scoring), as the scoring block of the checkpoint file when one is given. Data where most
    validation images look like copies (drawn faces, frames of one video) is fitted on all of its validation.
    val_logits: the classifier's decision logits of all of val (float N x classes), where the
    caller has them, saving a pass over validation. -> (the classifier with it, {"temperature", "images",
    "before", "after"}: ECE, NLL and Brier score on those images at temperature 1 and at the fitted one,
    metrics.calibration_from_sums)."""
    new = unseen(val, train)
    fitted = new if len(new) >= len(val) / 2 else val
    if val_logits is None:
        logits = classifier.decision_logits(fitted.images)
    else:
        where = {source: i for i, source in enumerate(val.sources)}
        logits = val_logits[[where[source] for source in fitted.sources]]
    val = fitted
    temperature = fit_temperature(logits, val.labels)
    classifier = classifier.rescored(temperature=temperature)
    if checkpoint is not None:
        # The whole scoring: a temperature holds only for the views and logit bias it was fitted with.
        state = load_checkpoint(checkpoint)
        state["scoring"] = classifier.scoring.to_dict()
        save_checkpoint(state, checkpoint)
    figures = {"temperature": temperature, "images": len(val)}
    for name, t in (("before", 1.0), ("after", temperature)):
        figures[name] = calibration_from_sums(calibration_sums(torch.softmax(logits.double() / t, 1).numpy(),
                                                               val.labels.numpy()))
    return classifier, figures


def bound_note(figures):
    """What a temperature at one of TEMPERATURE_BOUNDS (calibrate's figures) means, in a line, or None."""
    low, high = TEMPERATURE_BOUNDS
    if figures["temperature"] >= high:
        return (f"the temperature reached its upper bound, {high:g}: on validation the model's logits say next to "
                "nothing about the class (a model that has barely learnt, often deciding every face alike, as after "
                "one epoch), so its probabilities are flattened to nearly uniform; train longer or check the data")
    if figures["temperature"] <= low:
        return (f"the temperature reached its lower bound, {low:g}: the model is right far more often than its "
                "confidences say, and they are sharpened only as far as the bound allows")
    return None


def summary(figures):
    """One line saying what a calibration (calibrate's figures) did."""
    before, after = figures["before"], figures["after"]
    bound = " (a bound: see the warning)" if bound_note(figures) else ""
    return (f"temperature {figures['temperature']:.3f}{bound} fitted on {figures['images']} validation images: NLL "
            f"{before['nll']:.4f} -> {after['nll']:.4f}, ECE {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}% "
            f"(a calibrated model: {100 * after['ece_chance']:.2f}% by chance)")
