"""Calibration: the temperature fit, the figures before and after it, decisions left alone, and the
temperature travelling with checkpoints and exports."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSES, fixed_checkpoint, load_script

from calibration import fit_temperature
from checkpoint import load_checkpoint
from dataset import load_split
from inference import load_classifier
from metrics import calibration_from_sums, calibration_sums


def sampled(scale, n=4000, classes=5, seed=0):
    """Labels drawn from softmax(z), and the logits scale * z of a model that is over-confident (scale > 1) or
    under-confident (scale < 1) by exactly that factor."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 2
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).flatten()
    return scale * z, labels


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_the_fitted_temperature_undoes_over_and_under_confidence(scale):
    logits, labels = sampled(scale)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(scale, rel=0.1)  # > 1 for the over-confident model, < 1 for the other
    assert F.cross_entropy(logits / temperature, labels) < F.cross_entropy(logits, labels)
    before = calibration_from_sums(calibration_sums(torch.softmax(logits, 1).numpy(), labels.numpy()))
    after = calibration_from_sums(calibration_sums(torch.softmax(logits / temperature, 1).numpy(), labels.numpy()))
    assert after["ece"] < before["ece"] and after["ece"] < 0.03 and after["brier"] < before["brier"]


def test_expected_calibration_error_is_the_binned_gap_between_confidence_and_accuracy():
    # Two bins used: 0.95 confident and right half the time (gap 0.45), 0.55 confident and always right (0.45).
    probabilities = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 4)
    labels = np.array([0, 1, 0, 1, 0, 0, 0, 0])
    figures = calibration_from_sums(calibration_sums(probabilities, labels))
    assert figures["ece"] == pytest.approx(0.45)
    assert figures["nll"] == pytest.approx(-(2 * np.log(0.95) + 2 * np.log(0.05) + 4 * np.log(0.55)) / 8)
    assert figures["brier"] == pytest.approx((2 * 2 * 0.05 ** 2 + 2 * 2 * 0.95 ** 2 + 4 * 2 * 0.45 ** 2) / 8)
    assert [b["count"] for b in figures["bins"] if b["count"]] == [4, 4]


def test_the_ece_a_calibrated_model_shows_by_chance_is_exact_and_matches_sampling():
    # Four faces at 0.75: right X ~ Binomial(4, 0.75) times; E|X - 3| = (1*3 + 12*2 + 54*1 + 81*1) / 256.
    figures = calibration_from_sums(calibration_sums(np.array([[0.75, 0.25]] * 4), np.array([0, 0, 0, 1])))
    assert figures["ece_chance"] == pytest.approx(162 / 256 / 4)
    assert figures["ece_chance_sd"] == pytest.approx((4 * 0.75 * 0.25 - (162 / 256) ** 2) ** 0.5 / 4)
    # A model whose labels are drawn from its own probabilities is calibrated: its measured ECE is noise alone.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 5)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    measured = [calibration_from_sums(calibration_sums(probabilities, (probabilities.cumsum(1) > rng.random((300, 1)))
                                                       .argmax(1)))["ece"] for _ in range(400)]
    chance = calibration_from_sums(calibration_sums(probabilities, np.zeros(300, dtype=int)))
    assert chance["ece_chance"] == pytest.approx(np.mean(measured), rel=0.05)
    assert chance["ece_chance_sd"] == pytest.approx(np.std(measured), rel=0.15)
    # and it shrinks as 1 / sqrt(faces): four times the faces, half the noise
    four = calibration_from_sums(calibration_sums(np.tile(probabilities, (4, 1)), np.zeros(1200, dtype=int)))
    assert four["ece_chance"] == pytest.approx(chance["ece_chance"] / 2, rel=0.1)


@pytest.fixture()
def overconfident(tiny_data, tmp_path):
    """A fixed-weight checkpoint, sharpened 30 times, that records tiny_data's held-out validation split."""
    path = fixed_checkpoint(tmp_path / "sharp.pth", tiny_data, head_scale=30)
    state = load_checkpoint(path)
    state["split"] = {"source": "stratified 0.5 of train, seed 0", "root": str(tiny_data)}
    from checkpoint import save_checkpoint
    save_checkpoint(state, path)
    return path


def test_calibrate_stores_a_temperature_that_changes_confidences_not_decisions(overconfident, tmp_path, scripts):
    reports = {}
    for name, flags in (("before", []), ("after", ["--calibrate"])):
        out = tmp_path / name
        assert scripts["test"].main(["--ckpt", str(overconfident), "--out-dir", str(out), *flags]) == 0
        reports[name] = json.loads(next(out.glob("*.json")).read_text())
        assert next(out.glob("*_reliability.png")).stat().st_size > 1000
    temperature = load_checkpoint(overconfident)["scoring"]["temperature"]
    assert temperature > 1.5 and reports["after"]["temperature"] == temperature
    for key in ("accuracy", "macro_f1", "confusion_matrix"):
        assert reports["after"][key] == reports["before"][key]
    calibration = reports["after"]["calibration"]
    assert calibration["after"]["nll"] < calibration["before"]["nll"]
    assert reports["before"]["calibration"]["after"] == reports["before"]["calibration"]["before"]  # T was 1


def test_calibrate_with_other_views_stores_them_with_the_temperature_fitted_for_them(overconfident, tmp_path,
                                                                                      scripts):
    # The fixture records its own views (fixed_checkpoint's); --calibrate with others makes them the checkpoint's.
    own = load_checkpoint(overconfident)["scoring"]
    flip = not own["tta_flip"]
    flags = ["--tta" if flip else "--no-tta", "--tta-scales", "0.8,1.2"]
    assert scripts["test"].main(["--ckpt", str(overconfident), "--calibrate", *flags, "--out-dir",
                                 str(tmp_path / "a")]) == 0
    stored = load_checkpoint(overconfident)["scoring"]
    assert stored["tta_flip"] == flip and stored["tta_scales"] == [0.8, 1.2]
    report = json.loads(next((tmp_path / "a").glob("*.json")).read_text())
    assert report["temperature"] == stored["temperature"] != own["temperature"]
    # Scored again without flags, the checkpoint now decides with those views and that temperature.
    assert scripts["test"].main(["--ckpt", str(overconfident), "--out-dir", str(tmp_path / "b")]) == 0
    again = json.loads(next((tmp_path / "b").glob("*.json")).read_text())
    for key in ("accuracy", "confusion_matrix", "temperature"):
        assert again[key] == report[key]


def test_calibrate_leaves_the_checkpoint_as_it_was_when_the_data_or_split_is_wrong(overconfident, tmp_path, scripts):
    before = overconfident.read_bytes()
    for flags in (["--data", str(tmp_path / "no_such_folder")], ["--split", "val", "--data", str(tmp_path)]):
        assert scripts["test"].main(["--ckpt", str(overconfident), "--calibrate", "--no-tta", *flags,
                                     "--out-dir", str(tmp_path / "out")]) == 2
        assert overconfident.read_bytes() == before


def test_the_temperature_travels_with_exports_and_into_probabilities(overconfident, tiny_data, tmp_path, scripts):
    crops = load_split(tiny_data, "test", CLASSES).images.numpy()
    raw = load_classifier(overconfident).probabilities(crops)
    assert scripts["test"].main(["--ckpt", str(overconfident), "--calibrate", "--out-dir", str(tmp_path)]) == 0
    calibrated = load_classifier(overconfident)
    temperature = calibrated.temperature
    probabilities = calibrated.probabilities(crops)
    logits = calibrated.decision_logits(crops)
    assert probabilities == pytest.approx(torch.softmax(logits / temperature, 1).numpy(), abs=1e-6)
    assert (probabilities.argmax(1) == raw.argmax(1)).all() and probabilities.max() < raw.max()
    export = load_script("export")
    for fmt in ("onnx", "pt2"):
        out = tmp_path / f"m.{fmt}"
        assert export.main(["--ckpt", str(overconfident), "--format", fmt, "--out", str(out)]) == 0
        exported = load_classifier(out)
        assert exported.temperature == temperature
        assert np.abs(exported.probabilities(crops) - probabilities).max() < 1e-4


def test_a_temperature_at_its_bound_is_said_with_what_it_means():
    from calibration import TEMPERATURE_BOUNDS, bound_note, summary

    # Logits that say nothing about the labels (a model after one epoch deciding every face alike): the fit runs to
    # the upper bound, which was printed as "temperature 20.000" and nothing more.
    logits, _ = sampled(1.0)
    labels = torch.arange(len(logits)) % logits.shape[1]
    t = fit_temperature(logits, labels)
    assert t == TEMPERATURE_BOUNDS[1]
    figures = {"temperature": t, "images": 10, "before": {"nll": 2, "ece": 0.1},
               "after": {"nll": 1.6, "ece": 0.01, "ece_chance": 0.02}}
    assert "upper bound, 20: on validation the model's logits say next to nothing" in bound_note(figures)
    assert "(a bound: see the warning)" in summary(figures)
    assert bound_note({**figures, "temperature": 1.3}) is None
    assert "lower bound, 0.05" in bound_note({**figures, "temperature": TEMPERATURE_BOUNDS[0]})
