import importlib.util
from pathlib import Path

import pytest

from synthetic import make_demo_dataset

ROOT = Path(__file__).resolve().parent.parent
TINY_COUNTS = {"Angry": 10, "Happy": 16, "Neutral": 12, "Sad": 16, "Surprise": 10}


def load_script(name):
    """Import a top-level script by path: `test.py` would otherwise collide with the stdlib `test` package."""
    spec = importlib.util.spec_from_file_location(f"fer_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def scripts():
    return {name: load_script(name) for name in ("train", "test", "plot_curves")}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small synthetic dataset in the seed's layout: train/<Class>/*.jpg and test/<Class>/*.jpg."""
    return make_demo_dataset(tmp_path_factory.mktemp("tiny") / "faces", train_counts=TINY_COUNTS, test_count=6,
                             size=48, seed=1)


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory, scripts):
    """One 2-epoch training run on tiny_data: its folder holds checkpoints/ and logs/."""
    work = tmp_path_factory.mktemp("run")
    assert scripts["train"].main(fast_train_args(tiny_data, work, "--seed", "1")) == 0
    return work


def fast_train_args(data, workdir, *extra):
    return ["--data", str(data), "--epochs", "2", "--batch-size", "16", "--no-progress",
            "--output-dir", str(workdir / "checkpoints"), "--log-dir", str(workdir / "logs"), *extra]


def reference_logits(state, images, tau=None):
    """A checkpoint's decision logits for uint8 images, worked out by hand from its scoring block (not through
    the toolkit's Classifier): the mean of the model's logits over the image, its zoomed copies and their
    mirrors, plus -tau x log(class prior) (tau: the checkpoint's logit_adjust unless given)."""
    import torch

    from checkpoint import model_from_checkpoint
    from dataset import zoom

    scoring = state["scoring"]
    model = model_from_checkpoint(state).eval()
    x = (images.float() / 255 - scoring["input"]["mean"]) / scoring["input"]["std"]
    views = []
    for scaled in [x] + [zoom(x, s) for s in scoring["tta_scales"]]:
        views += [scaled, scaled.flip(-1)] if scoring["tta_flip"] else [scaled]
    with torch.no_grad():
        logits = torch.stack([model(v) for v in views]).mean(0)
    tau = scoring["logit_adjust"] if tau is None else tau
    if tau:
        logits = logits - tau * torch.tensor(scoring["class_prior"]).log()
    return logits
