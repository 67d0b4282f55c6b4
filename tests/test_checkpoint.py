import logging
import math
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch
from conftest import load_script

import checkpoint
from checkpoint import CheckpointError, Scoring, load_checkpoint, model_from_checkpoint, save_checkpoint
from errors import UserError
from inference import ModelClassifier, load_classifier
from model import VGG_WIDTHS, build_model

MODELS = Path(__file__).resolve().parent.parent / "models"


def make_state(arch="vgg", classes=("a", "b", "c"), **scoring):
    model = build_model(arch, len(classes))
    input_cfg = {"size": 48, "channels": 1 if arch == "vgg" else 3, "mean": 0.5, "std": 0.5}
    return {"arch": arch, "arch_args": {"widths": VGG_WIDTHS} if arch == "vgg" else {},
            "scoring": Scoring(tuple(classes), input_cfg, **scoring).to_dict(),
            "model": model.state_dict(), "epoch": 4}, model


def test_round_trip_rebuilds_the_same_model(tmp_path):
    state, model = make_state()
    save_checkpoint(state, tmp_path / "best.pth")
    loaded = load_checkpoint(tmp_path / "best.pth")
    rebuilt = model_from_checkpoint(loaded).eval()
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert loaded["epoch"] == 4 and loaded["scoring"]["classes"] == ["a", "b", "c"]
    assert loaded["version"] == 2


def version_1(model, classes, args, class_prior=None, arch="vgg", arch_args=None):
    """A checkpoint as train.py wrote it before the scoring block: classes, input and class frequencies at the
    top, the scoring policy in the training flags."""
    state = {"format": checkpoint.FORMAT, "version": 1, "arch": arch, "arch_args": arch_args or {},
             "classes": list(classes), "input": {"size": 48, "channels": 1, "mean": 0.5, "std": 0.5},
             "model": model.state_dict(), "epoch": 7, "args": args, "best": {"epoch": 7}, "bad_epochs": 0}
    if class_prior is not None:
        state["class_prior"] = class_prior
    return state


def test_a_version_1_checkpoint_is_read_into_the_scoring_block(tmp_path):
    model = build_model("vgg", 3)
    args = {"tta": True, "tta_scales": (0.9, 1.1), "logit_adjust": 1.0}
    torch.save(version_1(model, "abc", args, [0.5, 0.3, 0.2], arch_args={"widths": VGG_WIDTHS}), tmp_path / "v1.pth")
    state = load_checkpoint(tmp_path / "v1.pth")
    scoring = Scoring.from_dict(state["scoring"])
    assert scoring.classes == ("a", "b", "c") and scoring.input["channels"] == 1
    assert (scoring.tta_flip, scoring.tta_scales) == (True, (0.9, 1.1))
    assert scoring.logit_bias == pytest.approx([-math.log(0.5), -math.log(0.3), -math.log(0.2)])
    assert state["progress"] == {"best": {"epoch": 7}, "bad_epochs": 0}
    assert "classes" not in state and "class_prior" not in state
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(model_from_checkpoint(state).eval()(x), model.eval()(x))


def test_a_version_1_checkpoint_from_before_the_scoring_flags_scores_the_image_alone(tmp_path):
    # Before --tta, --tta-scales and --logit-adjust existed (args without them, or None) and before widths
    # were recorded (the old default 32..256): the plain argmax of the image alone, as it was tested then.
    old = build_model("vgg", 3, widths=(32, 64, 128, 256))
    torch.save(version_1(old, "abc", {"tta": None, "tta_scales": None, "logit_adjust": None}), tmp_path / "v1.pth")
    state = load_checkpoint(tmp_path / "v1.pth")
    assert Scoring.from_dict(state["scoring"]) == Scoring(("a", "b", "c"), state["scoring"]["input"])
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(model_from_checkpoint(state).eval()(x), old.eval()(x))


@pytest.mark.parametrize("name, views, tau, temperature", [
    ("fer2013_5class_vgg.pth", (False, ()), 0.0, 0.853),
    ("fer2013_7class_vgg.pth", (True, (0.9, 0.95, 1.05, 1.1)), 0.0, 0.890),
    ("ferplus_vgg.pth", (True, ()), 0.0, 0.562)])
def test_the_shipped_models_keep_the_scoring_they_were_tested_with_and_a_fitted_temperature(name, views, tau,
                                                                                            temperature):
    # The FER2013 models were made as version-1 files; `test.py --calibrate` rewrote them as version 2 with their
    # temperature. FER+'s was rescored with the mirror alone (chosen on its held-out validation) by `test.py
    # --calibrate --tta-scales none`, which fitted its temperature for those views; the model cards give all three.
    scoring = Scoring.from_dict(load_checkpoint(MODELS / name)["scoring"])
    assert (scoring.tta_flip, scoring.tta_scales, scoring.logit_adjust) == (*views, tau)
    assert scoring.temperature == pytest.approx(temperature, abs=5e-4)


def test_scoring_survives_its_dict_and_derives_the_logit_bias():
    scoring = Scoring(("a", "b", "c"), {"size": 48, "channels": 1, "mean": 0.5, "std": 0.5}, True, (0.9,), 1.0,
                      (0.5, 0.3, 0.2))
    assert Scoring.from_dict(scoring.to_dict()) == scoring
    assert scoring.to_dict()["logit_bias"] == pytest.approx([-math.log(p) for p in (0.5, 0.3, 0.2)])
    assert scoring.replace(logit_adjust=0.5).logit_bias == pytest.approx([-0.5 * math.log(p) for p in (0.5, 0.3, 0.2)])
    assert scoring.replace(logit_adjust=0.0).logit_bias is None
    assert scoring.replace(tta_flip=None) == scoring  # None keeps a field


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    state, _ = make_state()
    path = tmp_path / "last.pth"
    save_checkpoint(state, path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint({**state, "epoch": 5}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left behind


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", None])
def test_files_that_are_not_checkpoints_are_named(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save({"just": "a dict"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_reported(tmp_path):
    state, _ = make_state()
    save_checkpoint(state, tmp_path / "c.pth")
    data = (tmp_path / "c.pth").read_bytes()
    (tmp_path / "c.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "c.pth")


def test_weights_of_another_architecture_are_rejected_naming_the_keys(tmp_path):
    state, _ = make_state()
    state.update(arch="assignment", arch_args={})
    save_checkpoint(state, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="do not fit arch 'assignment': missing conv1.0.weight") as info:
        model_from_checkpoint(load_checkpoint(tmp_path / "c.pth"))
    assert "unexpected features.0.weight" in str(info.value) and "\n" not in str(info.value)


def test_weights_of_another_shape_are_rejected_naming_the_shapes(tmp_path):
    state, _ = make_state()
    state["model"]["head.1.weight"] = torch.zeros(7, 192)
    with pytest.raises(CheckpointError, match=r"wrong shape head.1.weight \(7, 192\) \(expected \(3, 192\)\)"):
        model_from_checkpoint(state, "c.pth")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_weights_saved_from_a_wrapped_model_load_into_the_bare_one(prefix):
    # DataParallel/DDP prefix "module.", torch.compile "_orig_mod.": the same weights under another name.
    state, model = make_state()
    state["model"] = {prefix + k: v for k, v in state["model"].items()}
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(model_from_checkpoint(state).eval()(x), model.eval()(x))


def test_the_assignments_network_loads_under_its_old_name(tmp_path):
    state, model = make_state(arch="seed")
    save_checkpoint(state, tmp_path / "c.pth")
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert loaded["arch"] == "assignment"
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(model_from_checkpoint(loaded).eval()(x), model.eval()(x))


def test_a_class_seen_a_handful_of_times_cannot_take_every_decision():
    # One Disgust image among 4,000: its share counts as a tenth of an equal share, not 1/4,000.
    prior = (1 / 4000, 0.3, 0.3, 0.4 - 1 / 4000)
    scoring = Scoring(("disgust", "a", "b", "c"), {"size": 48, "channels": 1, "mean": 0.5, "std": 0.5},
                      logit_adjust=1.0, class_prior=prior)
    bias = scoring.logit_bias
    assert bias[0] == pytest.approx(-math.log(0.1 / 4)) and bias[1:] == pytest.approx([-math.log(p) for p in prior[1:]])
    logits = torch.tensor([[0.0, 3.0, 0.5, 0.2], [0.0, 0.1, 2.5, 0.3], [0.0, 0.2, 0.1, 2.8]])  # a trained model's
    assert (logits + torch.tensor(bias)).argmax(1).tolist() == [1, 2, 3]
    unbounded = torch.tensor([-math.log(p) for p in prior])
    assert (logits + unbounded).argmax(1).tolist() == [0, 0, 0]  # what the old adjustment did


def test_logit_adjustment_without_the_class_frequencies_is_refused_naming_the_file():
    state, _ = make_state()
    assert Scoring.from_dict(state["scoring"]).logit_bias is None
    with pytest.raises(CheckpointError, match="old.pth records no training class frequencies"):
        ModelClassifier.from_checkpoint("old.pth", state=state).rescored(logit_adjust=1.0)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_a_saved_checkpoint_has_the_mode_a_new_file_gets(tmp_path, umask):
    # It is written to a temporary file and renamed: mkstemp made that file, and so every checkpoint, 0600.
    state, _ = make_state()
    old = os.umask(umask)
    try:
        save_checkpoint(state, tmp_path / "best.pth")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "best.pth").stat().st_mode) == 0o666 & ~umask


def with_field(state, keys, value):
    """state with the field at keys ("scoring", "input", "size") set to value."""
    *outer, last = keys
    block = state
    for key in outer:
        block = block[key]
    block[last] = value
    return state


@pytest.mark.parametrize("keys, value, message", [
    (("arch",), "resnet", r"c.pth has arch 'resnet', which this toolkit does not build; it builds vgg"),
    (("arch",), ["vgg"], r"c.pth has arch \['vgg'\]"),
    (("scoring",), None, r"c.pth: its scoring block is incomplete or malformed \(TypeError: it is NoneType"),
    (("scoring", "classes"), [], r"c.pth has no classes in its scoring block"),
    (("scoring", "input"), {"channels": 1, "std": 0.5}, r"c.pth has no size, mean in its scoring input")])
def test_a_checkpoint_with_a_bad_field_is_refused_when_read_naming_the_file_and_field(tmp_path, keys, value,
                                                                                        message):
    save_checkpoint(with_field(make_state()[0], keys, value), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(tmp_path / "c.pth")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keys, value, message", [
    (("scoring", "input", "size"), 0, "input size 0 is too small for vgg"),
    (("arch_args", "depth"), 50, "unexpected keyword argument 'depth'"),
    (("arch",), "resnet", "unknown arch 'resnet'")])
def test_a_model_that_cannot_be_built_from_its_checkpoint_is_refused_naming_the_file(keys, value, message):
    state = with_field(make_state()[0], keys, value)
    with pytest.raises(CheckpointError, match=f"c.pth: arch '.*' cannot be built from its arch_args .*{message}"):
        model_from_checkpoint(state, "c.pth")


def test_a_checkpoint_whose_input_is_too_small_for_its_arch_is_refused_by_the_scripts_loader(tmp_path):
    save_checkpoint(with_field(make_state()[0], ("scoring", "input", "size"), 0), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="c.pth: arch 'vgg' cannot be built .* too small"):
        load_classifier(tmp_path / "c.pth")


def test_a_torchscript_export_is_named_as_such_without_torchs_warnings(tmp_path):
    path = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=r"model.torchscript.pt is a TorchScript export, which is for "
                                                  r"LibTorch \(C\+\+\).*the .pth checkpoint.*\.onnx or \.pt2"):
            load_checkpoint(path)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("content", [b"junk\n", b"PK\x03\x04 truncated"])
def test_an_unreadable_pt2_file_is_one_line_without_torchs_logged_traceback(tmp_path, content):
    path = tmp_path / "x.pt2"
    path.write_bytes(content)
    logger = logging.getLogger("torch.export")
    level = logger.level
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with pytest.raises(UserError, match="x.pt2 is not a readable torch.export program"):
            load_classifier(path)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert logger.level == level  # torch's logging is as it was


@pytest.mark.parametrize("flags, message", [
    (["--opset", "99"], "argument --opset: torch.onnx exports at opsets 18 to "),
    (["--opset", "7"], "argument --opset: torch.onnx exports at opsets 18 to "),
    (["--out", "{tmp}"], "argument --out: {tmp} is a folder"),
    (["--out", "{tmp}/file/x.onnx"], "argument --out: {tmp}/file is a file, not a folder")])
def test_export_refuses_an_opset_it_cannot_write_and_an_out_that_is_no_file_when_parsed(tmp_path, capsys, flags,
                                                                                         message):
    pytest.importorskip("onnx")
    (tmp_path / "file").write_text("x")
    flags = [f.format(tmp=tmp_path) for f in flags]
    with pytest.raises(SystemExit) as info:
        load_script("export").get_args_parser().parse_args(["--ckpt", str(MODELS / "fer2013_5class_vgg.pth")] + flags)
    assert info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize("fmt, out", [("onnx", "model"), ("onnx", "model.pt2"), ("pt2", "model.onnx"),
                                      ("release", "model.onnx")])
def test_export_refuses_an_out_that_would_be_read_as_another_kind(tmp_path, capsys, fmt, out):
    # An ONNX file named model.pt2 was written and reported; predict.py then read it as a torch.export program.
    export = load_script("export")
    args = ["--ckpt", str(MODELS / "fer2013_5class_vgg.pth"), "--format", fmt, "--out", str(tmp_path / out)]
    assert export.main(args) == 2
    assert "is known by its suffix; name it *." in capsys.readouterr().err and not (tmp_path / out).exists()


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_an_onnx_file_the_exporter_left_at_another_opset_is_refused_and_removed(tmp_path, monkeypatch):
    # torch.onnx only logs a failed conversion to the opset asked for, and writes the model at its own opset.
    pytest.importorskip("onnx")
    export = load_script("export")
    real_export = torch.onnx.export

    def exporter_keeping_its_own_opset(*args, opset_version, **kwargs):
        return real_export(*args, opset_version=export.ONNX_BASE_OPSET, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", exporter_keeping_its_own_opset)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="--opset 19: torch.onnx could not convert the model to opset 19 "
                                        r"\(it stays at 18\); nothing was written"):
        export.export_onnx(TinyNet().eval(), torch.zeros(2, 1, 2, 2), {}, out, 19)
    assert list(tmp_path.iterdir()) == []


def test_no_release_is_made_of_a_checkpoint_whose_model_cannot_be_built(tmp_path, capsys):
    save_checkpoint(with_field(make_state()[0], ("scoring", "input", "size"), 0), tmp_path / "c.pth")
    out = tmp_path / "r.pth"
    assert load_script("export").main(["--ckpt", str(tmp_path / "c.pth"), "--format", "release", "--out", str(out)]) \
        == 2
    assert "c.pth: arch 'vgg' cannot be built" in capsys.readouterr().err
    assert not out.exists()


def test_bf16_scores_a_model_in_training_at_its_current_weights_and_a_loaded_one_from_a_bf16_copy(tmp_path):
    # train.py validates the model it is training through a ModelClassifier with bf16 on: every epoch's weights,
    # never a copy made at the first epoch.
    torch.manual_seed(0)
    model = build_model("vgg", 3, widths=(8, 16, 16, 16)).eval()
    scoring = Scoring(("a", "b", "c"), {"size": 48, "channels": 1, "mean": 0.5, "std": 0.5})
    images = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    training = ModelClassifier(model, scoring, amp=True)
    before = training.decision_logits(images)
    with torch.no_grad():
        model.head[-1].bias += torch.tensor([5.0, 0.0, -5.0])
    after = training.decision_logits(images)
    assert (after - before)[:, [0, 2]].mean(0).tolist() == pytest.approx([5, -5], abs=0.1)  # the new bias counts
    # A loaded checkpoint keeps one bf16 copy, whose decisions are fp32's within bf16's precision.
    path = tmp_path / "m.pth"
    save_checkpoint({"model": model.state_dict(), "arch": "vgg", "arch_args": {"widths": [8, 16, 16, 16]},
                     "scoring": scoring.to_dict()}, path)
    fp32, bf16 = (ModelClassifier.from_checkpoint(path, amp=amp) for amp in (False, True))
    assert bf16.frozen and next(bf16.bf16_model().parameters()).dtype == torch.bfloat16
    assert torch.allclose(bf16.decision_logits(images), fp32.decision_logits(images), atol=0.1)


def test_a_model_put_back_into_training_is_scored_in_eval_mode_at_every_call():
    # train.py's epochs put the network back into training mode (dropout on) between validations; the classifier
    # switches it to eval mode only when it finds it training, so each validation must still see eval mode.
    torch.manual_seed(0)
    model = build_model("vgg", 3, widths=(8, 16, 16, 16), dropout=0.9)
    scoring = Scoring(("a", "b", "c"), {"size": 48, "channels": 1, "mean": 0.5, "std": 0.5})
    images = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    classifier = ModelClassifier(model, scoring)
    first = classifier.decision_logits(images)
    assert not model.training
    model.train()
    assert torch.equal(classifier.decision_logits(images), first)  # dropout at 0.9 would change every logit
    assert not model.training
