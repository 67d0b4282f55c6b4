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
    return {name: load_script(name) for name in ("train", "test", "predict", "plot_curves")}


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

    from augment import zoom
    from checkpoint import model_from_checkpoint

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


CLASSES = list(TINY_COUNTS)


def fixed_checkpoint(path, data=None, seed=0, head_scale=1.0, head_shift=None, **scoring):
    """A checkpoint of the default network with fixed weights, built without training: tests that need a model
    with known behaviour use it, since a short training run lands elsewhere on every CPU (bf16 kernels differ).
    Weights: PyTorch's seeded initialisation (the same on every machine), fp32, BatchNorm statistics taken on a
    fixed batch of smoothed noise (so outputs vary with the input, as a trained model's do), the classifier's
    weights scaled by head_scale and its biases shifted by head_shift. scoring: fields of the scoring block (the
    image alone and a uniform prior unless given). data: recorded as the data it was 'trained' on, so test.py
    finds it."""
    import torch

    from checkpoint import Scoring, save_checkpoint
    from model import VGG_WIDTHS, build_model

    torch.manual_seed(seed)
    model = build_model("vgg", len(CLASSES))
    noise = torch.rand(64, 1, 48, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    noise = 3 * torch.nn.functional.avg_pool2d(torch.nn.functional.pad(noise, (3, 3, 3, 3), mode="reflect"), 7, 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # the batch's own statistics, not a running blend
    with torch.no_grad():
        model.train()(noise)
    weights = model.eval().state_dict()
    weights["head.1.weight"] = weights["head.1.weight"] * head_scale
    if head_shift is not None:
        weights["head.1.bias"] = weights["head.1.bias"] + torch.tensor(head_shift)
    scoring = {"class_prior": tuple([1 / len(CLASSES)] * len(CLASSES)), **scoring}
    state = {"arch": "vgg", "arch_args": {"widths": VGG_WIDTHS}, "model": weights, "epoch": 1,
             "scoring": Scoring(tuple(CLASSES), {"size": 48, "channels": 1, "mean": 0.5, "std": 0.5},
                                **scoring).to_dict(),
             "args": {"test_split": "test"}, "split": {"source": "val split", "root": str(data)} if data else {}}
    save_checkpoint(state, path)
    return path
