"""torchrun with two Gloo processes on the CPU: sharded training, reduced metrics, rank-0 checkpoints."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, fast_train_args, reference_logits

from checkpoint import load_checkpoint
from dataset import load_split
from metrics import classification_report


@pytest.fixture(scope="module")
def ddp_run(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *fast_train_args(tiny_data, work, "--epochs", "3", "--amp", "off", "--device", "cpu")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return work, run


def test_only_rank_0_writes_and_logs_once(ddp_run):
    work, run = ddp_run
    assert run.stdout.count("Epoch [1/3]") == 1
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["best.pth", "last.pth"]
    rows = [json.loads(r) for r in (work / "logs" / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0]["processes"] == 2


def test_reduced_metrics_equal_a_single_process_evaluation(ddp_run, tiny_data, scripts):
    work, _ = ddp_run
    # Validation figures logged under torchrun vs. one process scoring the same weights on the same split.
    last = load_checkpoint(work / "checkpoints" / "last.pth")
    scoring = last["scoring"]
    full = load_split(tiny_data, "train", scoring["classes"])
    val = full.subset(last["split"]["val_indices"])
    # Validation scores the image alone, without logit adjustment.
    logits = reference_logits({**last, "scoring": {**scoring, "tta_flip": False, "tta_scales": []}}, val.images, 0)
    loss = torch.nn.functional.cross_entropy(logits, val.labels).item()
    report = classification_report(val.labels.numpy(), logits.argmax(1).numpy(), scoring["classes"])
    logged = json.loads((work / "logs" / "training_log.jsonl").read_text().splitlines()[-1])
    assert logged["val_acc"] == pytest.approx(100 * report["accuracy"], abs=1e-9)
    assert logged["val_macro_f1"] == pytest.approx(100 * report["macro_f1"], abs=1e-9)
    assert logged["val_loss"] == pytest.approx(loss, rel=1e-4)

    # The test report written under torchrun vs. test.py in one process on the same checkpoint.
    assert scripts["test"].main(["--ckpt", str(work / "checkpoints" / "best.pth"), "--out-dir",
                                 str(work / "single")]) == 0
    (single_path,) = (work / "single").glob("*.json")
    single = json.loads(single_path.read_text())
    distributed = json.loads((work / "logs" / "test_report.json").read_text())
    assert distributed["confusion_matrix"] == single["confusion_matrix"]
    assert distributed["macro_f1"] == single["macro_f1"]


def test_a_checkpoint_from_two_processes_resumes_in_one(ddp_run, tiny_data, scripts, tmp_path):
    work, _ = ddp_run
    shutil.copytree(work / "checkpoints", tmp_path / "checkpoints")
    args = fast_train_args(tiny_data, tmp_path, "--epochs", "4", "--amp", "off", "--resume")
    assert scripts["train"].main(args) == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["epoch"] == 4


@pytest.mark.parametrize("world", [1, 2])
def test_epoch_batches_shuffle_each_image_once_and_balanced_draws_classes_evenly(scripts, world):
    train = scripts["train"]
    labels = torch.tensor([0] * 900 + [1] * 100)
    shuffled = train.get_args_parser().parse_args(["--data", "-", "--batch-size", "64"])
    balanced = train.get_args_parser().parse_args(["--data", "-", "--batch-size", "64", "--sampler", "balanced"])
    shards = [torch.cat(train.epoch_batches(labels, shuffled, 1, rank, world)) for rank in range(world)]
    assert sorted(torch.cat(shards).tolist()) == list(range(1000))  # disjoint shards covering every image
    drawn = torch.cat([torch.cat(train.epoch_batches(labels, balanced, 1, r, world)) for r in range(world)])
    assert len(drawn) == 1000 and 0.4 < labels[drawn].float().mean() < 0.6  # the minority is 10% of images
    assert not torch.equal(drawn, torch.cat(train.epoch_batches(labels, balanced, 2, 0, 1)))  # redrawn each epoch
