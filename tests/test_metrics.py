import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from metrics import classification_report, confusion_matrix, format_report

CLASSES = ["Angry", "Happy", "Neutral", "Sad", "Surprise"]


@pytest.mark.parametrize("seed", range(5))
def test_report_matches_scikit_learn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, size=300)
    # Skewed predictions so some classes are rarely or never predicted.
    y_pred = rng.choice(5, size=300, p=[0.05, 0.5, 0.25, 0.2, 0.0] if seed % 2 else [0.2] * 5)
    report = classification_report(y_true, y_pred, CLASSES)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    for k, name in enumerate(CLASSES):
        m = report["per_class"][name]
        assert m["precision"] == pytest.approx(p[k])
        assert m["recall"] == pytest.approx(r[k])
        assert m["f1"] == pytest.approx(f[k])
        assert m["support"] == s[k]
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(5), average="macro", zero_division=0)
    assert report["macro_f1"] == pytest.approx(mf)
    assert report["macro_precision"] == pytest.approx(mp)
    assert report["macro_recall"] == pytest.approx(mr)
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["confusion_matrix"] == sk_confusion_matrix(y_true, y_pred, labels=range(5)).tolist()


def test_class_never_predicted_has_zero_precision_not_a_crash():
    report = classification_report([0, 1, 2, 2], [1, 1, 1, 2], ["a", "b", "c"])
    assert report["per_class"]["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["b"]["precision"] == pytest.approx(1 / 3)


def test_precision_is_not_the_seeds_correct_over_all_images():
    # The seed divided each class's hits by every test image; precision divides by that class's predictions.
    y_true, y_pred = [0] * 10 + [1] * 10, [0] * 10 + [1] * 10
    report = classification_report(y_true, y_pred, ["x", "y"])
    assert report["per_class"]["x"]["precision"] == 1.0


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix([0, 0, 1], [1, 1, 1], 2)
    assert cm.tolist() == [[0, 2], [0, 1]]


def test_format_report_lists_every_class_and_the_headline_figures():
    text = format_report(classification_report([0, 1, 1, 2], [0, 1, 2, 2], ["Angry", "Happy", "Sad"]))
    for name in ("Angry", "Happy", "Sad", "macro avg", "Accuracy: 75.00%", "Macro-F1: 77.78"):
        assert name in text
