import math

import pytest
import torch

import checkpoint
from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from model import VGG_WIDTHS, build_model


def make_state(arch="vgg", classes=("a", "b", "c")):
    model = build_model(arch, len(classes))
    return {"arch": arch, "arch_args": {"widths": VGG_WIDTHS} if arch == "vgg" else {}, "classes": list(classes),
            "input": {"size": 48, "channels": 1 if arch == "vgg" else 3, "mean": 0.5, "std": 0.5},
            "model": model.state_dict(), "epoch": 4}, model


def test_round_trip_rebuilds_the_same_model(tmp_path):
    state, model = make_state()
    save_checkpoint(state, tmp_path / "best.pth")
    loaded = load_checkpoint(tmp_path / "best.pth")
    rebuilt = model_from_checkpoint(loaded).eval()
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert loaded["epoch"] == 4 and loaded["classes"] == ["a", "b", "c"]


def test_a_vgg_checkpoint_without_recorded_widths_is_rebuilt_at_the_old_default_widths(tmp_path):
    old = build_model("vgg", 3, widths=(32, 64, 128, 256))
    state, _ = make_state()
    state.update(arch_args={}, model=old.state_dict())
    save_checkpoint(state, tmp_path / "old.pth")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "old.pth")).eval()
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(rebuilt(x), old.eval()(x))


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


def test_weights_of_another_architecture_are_rejected(tmp_path):
    state, _ = make_state()
    state.update(arch="seed", arch_args={})
    save_checkpoint(state, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="do not fit arch 'seed'"):
        model_from_checkpoint(load_checkpoint(tmp_path / "c.pth"))


def test_logit_bias_subtracts_tau_times_the_log_class_frequency():
    state, _ = make_state()
    state.update(class_prior=[0.5, 0.3, 0.2], args={"logit_adjust": 1.0})
    assert checkpoint.logit_bias(state) == pytest.approx([-math.log(0.5), -math.log(0.3), -math.log(0.2)])
    assert checkpoint.logit_bias(state, tau=0.5) == pytest.approx([-0.5 * math.log(p) for p in (0.5, 0.3, 0.2)])
    assert checkpoint.logit_bias(state, tau=0) is None


def test_logit_bias_of_checkpoints_without_the_flag_or_the_frequencies():
    state, _ = make_state()
    assert checkpoint.logit_bias(state) is None  # made before --logit-adjust: plain argmax, as it was scored
    with pytest.raises(CheckpointError, match="old.pth does not record its training class frequencies"):
        checkpoint.logit_bias(state, tau=1.0, path="old.pth")
