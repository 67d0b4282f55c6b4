"""Faults during training: kill -9, Ctrl-C, a non-finite loss, leaked test images, resuming. Nothing written is
lost."""
import csv
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, fast_train_args

from checkpoint import load_checkpoint, save_checkpoint


def start_training(args):
    # SIGINT back to its default in the child: a shell that runs the tests in the background ignores it, the
    # child would inherit that, and Python would then install no KeyboardInterrupt handler.
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("extra", [[], ["--ema", "0.9"]], ids=["plain", "ema"])
def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tiny_data, tmp_path, scripts, extra):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["--epochs", "4", "--patience", "10", "--seed", "5", *extra]
    assert scripts["train"].main(fast_train_args(tiny_data, full, *args)) == 0

    proc = start_training(fast_train_args(tiny_data, killed, *args))
    wait_for(killed / "checkpoints" / "last.pth", proc)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
    proc.wait()
    survived = load_checkpoint(killed / "checkpoints" / "last.pth")["epoch"]
    lines_before = (killed / "logs" / "training_log.txt").read_text()

    assert scripts["train"].main(fast_train_args(tiny_data, killed, *args, "--resume")) == 0
    resumed = load_checkpoint(killed / "checkpoints" / "last.pth")
    reference = load_checkpoint(full / "checkpoints" / "last.pth")
    assert resumed["epoch"] == reference["epoch"] == 4
    for weights in ("model", "online_model") if extra else ("model",):
        for name, tensor in reference[weights].items():
            assert torch.equal(resumed[weights][name], tensor), \
                f"{weights} {name} differs after resuming from epoch {survived}"
    assert (killed / "logs" / "training_log.txt").read_text().startswith(lines_before)


def test_ctrl_c_leaves_a_resumable_checkpoint_and_exits_cleanly(tiny_data, tmp_path, scripts):
    # Many epochs: a poller starved of CPU by other work must not find the run already finished.
    proc = start_training(fast_train_args(tiny_data, tmp_path, "--epochs", "500", "--patience", "500"))
    wait_for(tmp_path / "checkpoints" / "last.pth", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    epoch = load_checkpoint(tmp_path / "checkpoints" / "last.pth")["epoch"]
    assert 1 <= epoch < 500
    assert "Interrupted" in (tmp_path / "logs" / "training_log.txt").read_text()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, scripts, monkeypatch,
                                                                   capsys):
    calls = {"n": 0}
    real_cross_entropy = F.cross_entropy

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real_cross_entropy(*a, **k)
        return loss * float("nan") if calls["n"] > 8 else loss  # epoch 1 (4 batches + val) is clean

    monkeypatch.setattr(torch.nn.modules.loss.F, "cross_entropy", poisoned)
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "5")) == 1
    assert "non-finite training loss" in capsys.readouterr().err
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_images_shared_by_train_and_test_are_reported(tiny_data, tmp_path, scripts, capsys):
    data = tmp_path / "leaky"
    shutil.copytree(tiny_data, data)
    for k, src in enumerate(sorted((data / "train" / "Happy").glob("*.jpg"))[:3]):
        shutil.copy(src, data / "test" / "Happy" / f"copy{k}.jpg")
    assert scripts["train"].main(fast_train_args(data, tmp_path, "--epochs", "1")) == 0
    out = capsys.readouterr().out
    # Said before the first epoch, the pairs written to a file, the counts kept in the test report.
    assert out.index("(3 pixel-identical") < out.index("Epoch [1/1]")
    with open(tmp_path / "logs" / "leakage.csv", newline="") as f:
        identical = [row for row in csv.DictReader(f) if row["identical"] == "True"]
    assert sorted(row["test"].rsplit("/", 1)[-1] for row in identical) == ["copy0.jpg", "copy1.jpg", "copy2.jpg"]
    assert all("/train/Happy/" in row["train"] for row in identical)
    leakage = json.loads((tmp_path / "logs" / "test_report.json").read_text())["leakage"]
    assert leakage["pixel_identical"] == 3 and leakage["test_images"] == 33


def test_resume_with_another_architecture_is_refused(tiny_data, tmp_path, scripts, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "1")) == 0
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--arch", "assignment", "--resume")) == 2
    err = capsys.readouterr().err
    assert "--arch assignment differs from the run in" in err and "(vgg)" in err and "Traceback" not in err


def test_resume_with_another_class_list_is_refused(tiny_data, tmp_path, scripts, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "1")) == 0
    args = fast_train_args(tiny_data, tmp_path, "--classes", "Happy,Sad", "--resume")
    assert scripts["train"].main(args) == 2
    assert "--classes Happy,Sad differs from the run in" in capsys.readouterr().err


def logged(workdir, key):
    rows = [json.loads(line) for line in (workdir / "logs" / "training_log.jsonl").read_text().splitlines()]
    return [row[key] for row in rows]


def test_resuming_with_more_epochs_follows_the_schedule_of_the_longer_run(tiny_data, tmp_path, scripts):
    # With no warm-up the cosine of a 2-epoch run ends at 0; extended to 4 epochs, epochs 3 and 4 must not
    # train at that stale 0 but at the 4-epoch schedule's rates, as an uninterrupted 4-epoch run does.
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    assert scripts["train"].main(fast_train_args(tiny_data, straight, "--epochs", "4", "--warmup-epochs", "0")) == 0
    assert scripts["train"].main(fast_train_args(tiny_data, extended, "--epochs", "2", "--warmup-epochs", "0")) == 0
    assert scripts["train"].main(fast_train_args(tiny_data, extended, "--epochs", "4", "--resume")) == 0
    lrs, reference = logged(extended, "lr"), logged(straight, "lr")
    assert lrs[2:] == pytest.approx(reference[2:]) and min(lrs[2:]) > 0.001
    assert lrs[1] != pytest.approx(reference[1])  # epoch 2 ran on the 2-epoch schedule: it is the past


def test_resume_takes_the_runs_own_flags_and_refuses_other_values(tiny_data, tmp_path, scripts, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "1", "--lr", "0.01",
                                                 "--aug", "flip")) == 0
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--lr", "0.02", "--resume")) == 2
    assert "--lr 0.02 differs from the run in" in capsys.readouterr().err
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--resume")) == 0
    args = load_checkpoint(tmp_path / "checkpoints" / "last.pth")["args"]
    assert (args["lr"], args["aug"], args["epochs"]) == (0.01, ("flip",), 2)


def test_resume_into_another_output_dir_carries_the_runs_best_checkpoint(tiny_data, tmp_path, scripts):
    first, second = tmp_path / "first", tmp_path / "second"
    assert scripts["train"].main(fast_train_args(tiny_data, first)) == 0
    # Make the run's best unbeatable, so the resumed epoch cannot write a best.pth of its own.
    last = load_checkpoint(first / "checkpoints" / "last.pth")
    best_epoch = load_checkpoint(first / "checkpoints" / "best.pth")["epoch"]
    last["progress"]["best"] = {"monitor": "val_macro_f1", "value": 101.0, "epoch": best_epoch}
    save_checkpoint(last, first / "checkpoints" / "last.pth")
    args = fast_train_args(tiny_data, second, "--epochs", "3", "--resume", str(first / "checkpoints" / "last.pth"))
    assert scripts["train"].main(args) == 0
    assert load_checkpoint(second / "checkpoints" / "best.pth")["epoch"] == best_epoch
    assert (second / "logs" / "test_report.json").exists()


def test_resuming_a_finished_run_trains_and_tests_nothing(tiny_data, tmp_path, scripts, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path)) == 0
    log = (tmp_path / "logs" / "training_log.txt").read_text()
    capsys.readouterr()
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--resume")) == 0
    assert "is a finished run" in capsys.readouterr().out
    assert (tmp_path / "logs" / "training_log.txt").read_text() == log  # no second test block


def test_augmentation_names_are_parsed_once_into_what_training_uses(tiny_data, tmp_path, scripts, monkeypatch):
    args = scripts["train"].parse_args(["--data", "x", "--aug", " flip, Affine "])[0]
    assert args.aug == ("flip", "affine")
    used = []
    real = scripts["train"].augment_batch
    monkeypatch.setattr(scripts["train"], "augment_batch",
                        lambda x, kinds, *a: used.append(kinds) or real(x, kinds, *a))
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "1", "--aug", "flip, affine")) == 0
    assert used and all(kinds == ("flip", "affine") for kinds in used)


def test_resuming_into_another_output_dir_without_a_log_dir_is_refused(tiny_data, tmp_path, scripts, capsys):
    # The run's logs (and its test report) would be overwritten by the resumed run's.
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path / "x", "--epochs", "1")) == 0
    args = ["--data", str(tiny_data), "--no-progress", "--epochs", "2", "--resume",
            str(tmp_path / "x" / "checkpoints" / "last.pth"), "--output-dir", str(tmp_path / "y")]
    assert scripts["train"].main(args) == 2
    assert "give its --log-dir too" in capsys.readouterr().err
    assert scripts["train"].main([*args, "--log-dir", str(tmp_path / "y" / "logs")]) == 0
    assert (tmp_path / "y" / "logs" / "test_report.json").exists()


@pytest.mark.parametrize("script, flag, first", [("train", "--output-dir", ["--data", "x"]),
                                                 ("train", "--log-dir", ["--data", "x"]),
                                                 ("test", "--out-dir", ["--ckpt", "x"]),
                                                 ("predict", "--out-dir", ["x.jpg"])])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(scripts, tmp_path, capsys, script, flag,
                                                                         first):
    # A file where the folder should go ended a whole training in a traceback at its first checkpoint.
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for path, why in ((tmp_path / "taken", "is a file, not a folder"),
                      (tmp_path / "taken" / "sub", f"cannot be made: {tmp_path / 'taken'} is a file"),
                      (tmp_path / "dangling" / "sub", f"cannot be made: {tmp_path / 'dangling'} is a broken link "
                                                      f"(to {tmp_path / 'nowhere'})")):
        with pytest.raises(SystemExit) as exit_info:
            scripts[script].main([*first, flag, str(path)])
        assert exit_info.value.code == 2
        assert f"argument {flag}: {path} {why}" in capsys.readouterr().err
    assert scripts[script].get_args_parser().parse_args([*first, flag, str(tmp_path / "new" / "deeper")])


def test_a_second_run_sets_the_first_aside_and_test_finds_the_latest(tiny_data, tmp_path, scripts, capsys):
    # Run twice into the same folders, the second run replaced the first's checkpoints and logs without a word.
    def run(*extra):
        return scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "1", *extra))

    assert run("--seed", "1") == 0
    first = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"checkpoints/best.pth", "checkpoints/last.pth", "logs/training_log.txt", "logs/training_log.jsonl",
            "logs/test_report.json"} <= {str(p) for p in first}
    capsys.readouterr()
    assert run("--seed", "5") == 0
    out = capsys.readouterr().out
    assert (f"note: {tmp_path / 'checkpoints'} and {tmp_path / 'logs'} held an earlier run's {len(first)} file(s): "
            f"moved to {tmp_path / 'checkpoints' / 'run-1'} and {tmp_path / 'logs' / 'run-1'}") in out
    for path, data in first.items():
        assert (tmp_path / path.parent / "run-1" / path.name).read_bytes() == data, path  # all of it, unchanged
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pth")["args"]["seed"] == 5
    assert load_checkpoint(tmp_path / "checkpoints" / "run-1" / "best.pth")["args"]["seed"] == 1
    assert "note: " in (tmp_path / "logs" / "training_log.txt").read_text().split("Epoch [1/1]")[0]

    # test.py finds the run just trained, and writes its report beside that run's logs under a clean name; a run set
    # aside is reported on beside its checkpoint.
    other = tmp_path / "my data"
    shutil.copytree(tiny_data / "test", other / "test")
    assert scripts["test"].main(["--ckpt", str(tmp_path / "checkpoints" / "best.pth"), "--data", str(other)]) == 0
    assert (tmp_path / "logs" / "test_my_data_test.json").is_file()
    assert scripts["test"].main(["--ckpt", str(tmp_path / "checkpoints" / "run-1" / "best.pth"), "--data",
                                 str(other)]) == 0
    assert (tmp_path / "checkpoints" / "run-1" / "test_my_data_test.json").is_file()

    # A third run sets the second aside as run-2 (its test.py report with it); --overwrite replaces instead.
    assert run("--seed", "6") == 0
    assert (tmp_path / "logs" / "run-2" / "test_my_data_test.json").is_file()
    assert run("--seed", "7", "--overwrite") == 0
    assert "--overwrite: deleted the earlier run's" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pth", "last.pth", "run-1", "run-2"]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pth")["args"]["seed"] == 7
    with pytest.raises(SystemExit):
        scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--resume", "--overwrite"))
    assert "--resume continues a run" in capsys.readouterr().err


def test_a_class_too_small_for_validation_is_warned_about_before_the_first_epoch(tmp_path, scripts, capsys):
    from synthetic import make_demo_dataset

    data = make_demo_dataset(tmp_path / "d", train_counts={"Angry": 6, "Happy": 6, "Sad": 1}, test_count=0, size=48)
    shutil.rmtree(data / "test")
    assert scripts["train"].main(fast_train_args(data, tmp_path, "--epochs", "1")) == 0
    printed = capsys.readouterr()
    assert "warning: validation holds no image of Sad (1 training image(s)): a class needs 2 or more" in printed.err
    log = (tmp_path / "logs" / "training_log.txt").read_text()
    assert log.index("validation holds no image of Sad") < log.index("Epoch [1/1]")
