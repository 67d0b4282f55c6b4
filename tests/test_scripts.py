"""The scripts end to end on tiny generated data, called through their main(argv) as a user would."""
import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_COUNTS, fast_train_args, fixed_checkpoint, reference_logits
from PIL import Image

import engine
from augment import zoom
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from dataset import load_split
from inference import ModelClassifier
from metrics import confusion_matrix


def per_class(indices):
    """Images per class among these indices of tiny_data's train split (its files sort class by class)."""
    labels = [k for k, c in enumerate(TINY_COUNTS) for _ in range(TINY_COUNTS[c])]
    return [sum(labels[i] == k for i in indices) for k in range(len(TINY_COUNTS))]


def test_training_writes_checkpoints_logs_and_a_test_report(trained, tiny_data):
    best = load_checkpoint(trained / "checkpoints" / "best.pth")
    last = load_checkpoint(trained / "checkpoints" / "last.pth")
    assert last["epoch"] == 2 and best["epoch"] in (1, 2)
    assert best["scoring"]["classes"] == ["Angry", "Happy", "Neutral", "Sad", "Surprise"]
    assert best["scoring"]["input"] == {"size": 48, "channels": 1, "mean": 0.5, "std": 0.5}
    split = best["split"]
    assert len(split["train_indices"]) + len(split["val_indices"]) == 64
    assert not set(split["train_indices"]) & set(split["val_indices"])
    log = (trained / "logs" / "training_log.txt").read_text()
    for line in ("Epoch [1/2]", "Epoch [2/2]", "Train Loss: ", "Train Accuracy: ", "Validation Loss: ",
                 "Validation Accuracy: ", "Test Accuracy: "):
        assert line in log
    # The log opens with what the run saw before its first epoch: the splits and the model.
    head = log.split("Epoch [1/2]")[0].splitlines()
    assert any(h.startswith("train: ") for h in head) and any(h.startswith("val: ") for h in head)
    assert any(h.startswith("model ") and " parameters" in h for h in head)
    # Calibrated on validation: the images that are not copies of training ones, or all 12 if most look alike.
    fitted_on = int(log.split("Calibration: temperature ")[1].split(" fitted on ")[1].split()[0])
    assert 6 <= fitted_on <= 12
    rows = [json.loads(r) for r in (trained / "logs" / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"lr", "train_time", "train_img_per_s", "val_macro_f1"} <= set(rows[0])
    report = json.loads((trained / "logs" / "test_report.json").read_text())
    assert report["num_samples"] == 30
    assert (trained / "logs" / "test_report_confusion.png").stat().st_size > 1000


def test_test_script_scores_the_checkpoint_like_training_did(trained, scripts, capsys):
    out = trained / "eval"
    assert scripts["test"].main(["--ckpt", str(trained / "checkpoints" / "best.pth"), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "Macro-F1" in printed and "Confusion matrix" in printed
    (report_path,) = out.glob("*.json")
    report = json.loads(report_path.read_text())
    at_train_end = json.loads((trained / "logs" / "test_report.json").read_text())
    assert report["accuracy"] == at_train_end["accuracy"]
    assert report["confusion_matrix"] == at_train_end["confusion_matrix"]
    assert report_path.with_name(report_path.stem + "_confusion.png").exists()


def test_test_script_scores_the_held_out_validation_split(trained, scripts, capsys):
    """tiny_data has no val folder, so --split val is the part of train that training held out."""
    out = trained / "eval_val"
    ckpt = trained / "checkpoints" / "best.pth"
    assert scripts["test"].main(["--ckpt", str(ckpt), "--split", "val", "--out-dir", str(out)]) == 0
    assert "[val]" in capsys.readouterr().out
    report = json.loads(next(out.glob("*.json")).read_text())
    val_indices = load_checkpoint(ckpt)["split"]["val_indices"]
    assert report["split"] == "val" and report["num_samples"] == len(val_indices)
    assert [sum(row) for row in report["confusion_matrix"]] == per_class(val_indices)


def test_several_checkpoints_are_scored_as_an_ensemble_of_their_logits(tiny_data, scripts, capsys, tmp_path):
    # Two members with fixed weights whose logits differ clearly: the second's classifier biases shifted, and
    # each with its own views and training class frequencies.
    prior = [0.1, 0.3, 0.2, 0.3, 0.1]
    ckpts = [fixed_checkpoint(tmp_path / "a.pth", tiny_data, head_scale=3, tta_flip=True, class_prior=prior),
             fixed_checkpoint(tmp_path / "shifted.pth", tiny_data, head_scale=3, head_shift=[2.0, 0, -1.0, 0, -2.0],
                              tta_scales=(0.9, 1.1), class_prior=prior[::-1])]
    out = tmp_path / "eval_ensemble"
    assert scripts["test"].main(["--ckpt", *map(str, ckpts), "--logit-adjust", "0.5", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(str(c) in printed for c in ckpts)
    report = json.loads(next(out.glob("*.json")).read_text())
    # The same decision made by hand: each member's own scoring (its TTA views, its logit adjustment), averaged.
    states = [load_checkpoint(c) for c in ckpts]
    test = load_split(tiny_data, "test", states[0]["scoring"]["classes"], 48, 1)

    def member_logits(s):
        return reference_logits(s, test.images, tau=0.5)
    logits = torch.stack([member_logits(s) for s in states]).mean(0)
    expected = confusion_matrix(test.labels.numpy(), logits.argmax(1).numpy(), 5)
    assert report["confusion_matrix"] == expected.tolist()
    # Its loss is that of the mean logits, which neither member's own logits give.
    cross_entropy = torch.nn.functional.cross_entropy
    assert report["loss"] == pytest.approx(cross_entropy(logits, test.labels).item(), rel=1e-5)
    for s in states:
        assert cross_entropy(member_logits(s), test.labels).item() != pytest.approx(report["loss"], rel=1e-2)
    assert report["checkpoint"] == [str(c) for c in ckpts]
    for member, s in zip(report["members"], states):
        assert member["logit_bias"] == pytest.approx([-0.5 * math.log(p) for p in s["scoring"]["class_prior"]])


def test_an_ensemble_of_mismatched_checkpoints_is_refused(trained, scripts, tmp_path, capsys):
    best = trained / "checkpoints" / "best.pth"
    state = load_checkpoint(best)
    reordered = {**state, "scoring": {**state["scoring"], "classes": state["scoring"]["classes"][::-1]}}
    save_checkpoint(reordered, tmp_path / "reordered.pth")
    assert scripts["test"].main(["--ckpt", str(best), str(tmp_path / "reordered.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "reordered.pth" in err and "same classes and input" in err and "\n" not in err
    # On the held-out validation split the members must have held out the same images.
    other_split = {**state, "split": {**state["split"], "val_indices": state["split"]["val_indices"][1:]}}
    save_checkpoint(other_split, tmp_path / "other_split.pth")
    assert scripts["test"].main(["--ckpt", str(best), str(tmp_path / "other_split.pth"), "--split", "val"]) == 2
    assert "other training images for validation" in capsys.readouterr().err


def test_plot_curves_draws_the_training_log(trained, scripts):
    out = trained / "curves.png"
    assert scripts["plot_curves"].main([str(trained / "logs" / "training_log.txt"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_from_last_epoch(trained, tiny_data, scripts, tmp_path):
    work = tmp_path
    shutil.copytree(trained / "checkpoints", work / "checkpoints")
    args = fast_train_args(tiny_data, work, "--seed", "1")
    args[args.index("--epochs") + 1] = "3"
    assert scripts["train"].main(args + ["--resume"]) == 0
    last = load_checkpoint(work / "checkpoints" / "last.pth")
    assert last["epoch"] == 3
    log = (work / "logs" / "training_log.txt").read_text()
    assert "Epoch [3/3]" in log and "Epoch [1/3]" not in log
    # The resumed run's head (what it said before its first epoch) is marked as such and precedes its epochs.
    head = log.split("Epoch [3/3]")[0]
    assert head.startswith("Resumed after epoch 2:\n") and "resuming from " in head


def test_resume_with_nothing_to_resume_is_an_error(tiny_data, scripts, tmp_path, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_test_split_without_some_classes_is_scored_on_those_it_has(trained, tiny_data, scripts, tmp_path,
                                                                     capsys):
    # Another dataset with four of the model's five classes (CK+ has no Neutral), its folders named otherwise.
    other = tmp_path / "other"
    for folder, renamed in (("Angry", "anger"), ("Happy", "happiness"), ("Sad", "Sad"), ("Surprise", "Surprise")):
        shutil.copytree(tiny_data / "test" / folder, other / "test" / renamed)
    ckpt = str(trained / "checkpoints" / "best.pth")
    args = ["--ckpt", ckpt, "--data", str(other), "--out-dir", str(tmp_path / "eval")]
    assert scripts["test"].main([*args, "--class-map", "anger=Angry,happiness=Happy"]) == 0
    assert "no images of class(es) Neutral" in capsys.readouterr().err
    report = json.loads(next((tmp_path / "eval").glob("*.json")).read_text())
    assert report["absent_classes"] == ["Neutral"] and report["num_samples"] == 24
    assert [sum(row) for row in report["confusion_matrix"]] == [6, 6, 0, 6, 6]  # the model's full output kept
    f1 = [report["per_class"][c]["f1"] for c in ("Angry", "Happy", "Sad", "Surprise")]
    assert report["macro_f1"] == pytest.approx(sum(f1) / 4)  # over the classes the data has
    # Without the map, anger/ and happiness/ are read as Angry and Happy all the same (names of the same emotions),
    # with a note; other names are the map's to give.
    assert scripts["test"].main(args) == 0
    err = capsys.readouterr().err
    assert "no images of class(es) Neutral" in err and "folders anger as Angry, happiness as Happy" in err
    assert scripts["test"].main([*args, "--class-map", "anger=Fury"]) == 2
    assert "--class-map sends anger to Fury, which is not a class of the model" in capsys.readouterr().err
    # A name mapped twice was settled by the last pair in silence; a name no folder has was ignored in silence.
    with pytest.raises(SystemExit):
        scripts["test"].main([*args, "--class-map", "anger=Angry,Anger=Sad"])
    assert "--class-map: maps Anger, anger more than once" in capsys.readouterr().err
    assert scripts["test"].main([*args, "--class-map", "anger=Angry,happiness=Happy,fury=Angry"]) == 0
    assert f"--class-map names fury, which {other / 'test'} has no folder of" in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_is_an_error(scripts, tmp_path, capsys):
    bad = tmp_path / "best.pth"
    bad.write_text("oops")
    assert scripts["test"].main(["--ckpt", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "best.pth" in err and "Traceback" not in err


def test_a_folder_given_as_a_model_says_so(scripts, tmp_path, capsys):
    assert scripts["test"].main(["--ckpt", str(tmp_path)]) == 2
    assert f"model file {tmp_path} is a folder, not a checkpoint or export" in capsys.readouterr().err


def test_missing_data_folder_is_a_one_line_error(scripts, tmp_path, capsys):
    assert scripts["train"].main(fast_train_args(tmp_path / "missing", tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err


@pytest.mark.parametrize("flags,message", [
    (["--epochs", "-1"], "must be a positive integer"),
    (["--batch-size", "0"], "must be a positive integer"),
    (["--arch", "resnet"], "invalid choice"),
    (["--aug", "flip,warp"], "unknown augmentation warp"),
    (["--val-fraction", "1.5"], "between 0 and 1"),
    (["--lr", "nan"], "finite number"),
    (["--logit-adjust", "-1"], "must be in [0, 10]"),
    (["--affine", "10,0.1"], "must be DEG,SCALE,SHIFT"),
    (["--affine", "10,1.5,0.1"], "SCALE and SHIFT below 1"),
])
def test_nonsense_flags_are_rejected_with_allowed_values(scripts, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        scripts["train"].main(["--data", str(tmp_path)] + flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_class_in_classes_flag(scripts, tiny_data, tmp_path, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--classes", "Happy,Contempt")) == 2
    assert "unknown class(es) Contempt" in capsys.readouterr().err


def test_training_warns_before_the_first_epoch_that_its_test_split_lacks_a_class(scripts, tiny_data, tmp_path,
                                                                                 monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shutil.rmtree(data / "test" / "Neutral")
    epochs = []
    real_train_one_epoch = scripts["train"].train_one_epoch

    def count_epochs(*args, **kwargs):
        epochs.append(capsys.readouterr().err)  # what was said before this epoch began
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(scripts["train"], "train_one_epoch", count_epochs)
    assert scripts["train"].main(fast_train_args(data, tmp_path, "--classes", "Happy,Sad,Neutral")) == 0
    assert "no images of class(es) Neutral" in epochs[0]  # said before the first epoch, not after the last
    report = json.loads((tmp_path / "logs" / "test_report.json").read_text())
    assert report["absent_classes"] == ["Neutral"] and report["num_samples"] == 12  # 6 Happy + 6 Sad scored


def test_a_validation_split_that_would_be_empty_is_refused_before_training(scripts, tmp_path, capsys):
    root = tmp_path / "one_each"
    for k, name in enumerate(["Angry", "Happy"]):  # one image per class: a held-out share leaves nothing
        path = root / "train" / name / "0.png"
        path.parent.mkdir(parents=True)
        Image.new("L", (48, 48), 60 + 80 * k).save(path)
    out = tmp_path / "run"
    args = ["--data", str(root), "--epochs", "3", "--output-dir", str(out / "ckpt"), "--log-dir", str(out / "logs"),
            "--no-progress"]
    assert scripts["train"].main(args) == 2
    err = capsys.readouterr().err
    assert "validation holds no images" in err and "Angry, Happy" in err and "Traceback" not in err
    assert not (out / "ckpt" / "best.pth").exists() and not (out / "ckpt" / "last.pth").exists()


def test_assignment_recipe_trains_the_assignments_network_in_rgb(scripts, tiny_data, tmp_path):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--recipe", "assignment", "--epochs", "1")) == 0
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    assert state["arch"] == "assignment" and state["scoring"]["input"]["channels"] == 3
    assert state["args"]["lr"] == 0.001 and state["args"]["aug"] == ()
    scoring = state["scoring"]
    assert (scoring["tta_flip"], scoring["tta_scales"], scoring["logit_bias"]) == (False, [], None)


@pytest.mark.parametrize("flags", [["--recipe", "seed"], ["--arch", "seed"]])
def test_the_assignments_old_name_seed_is_accepted_with_a_warning_the_log_keeps(scripts, flags, tiny_data, tmp_path,
                                                                                   capsys):
    args, _, warnings = scripts["train"].parse_args(["--data", "x", *flags])
    warning = f"warning: {flags[0]} seed is now {flags[0]} assignment"
    assert args.arch == "assignment" and [f"warning: {w}" for w in warnings] == [warning]
    assert capsys.readouterr().err == ""  # said once, by the training run, not while parsing
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, *flags, "--epochs", "1")) == 0
    assert capsys.readouterr().err.count(warning) == 1
    assert (tmp_path / "logs" / "training_log.txt").read_text().count(warning) == 1


def test_command_line_entry_points_run(tiny_data, tmp_path):
    """The real CLI path, in a fresh interpreter, as README tells users to run it."""
    run = subprocess.run([sys.executable, "train.py", *fast_train_args(tiny_data, tmp_path, "--epochs", "1")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Test Accuracy" in run.stdout
    run = subprocess.run([sys.executable, "test.py", "--ckpt", str(tmp_path / "checkpoints" / "best.pth"),
                          "--out-dir", str(tmp_path / "eval")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Macro-F1" in run.stdout
    for script, words in (("predict.py", "faces"), ("export.py", "--format"), ("plot_curves.py", "log"),
                          ("app.py", "--port")):
        run = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0 and words in run.stdout, (script, run.stderr)


def test_architecture_flags_are_stored_and_rebuilt(scripts, tiny_data, tmp_path):
    args = fast_train_args(tiny_data, tmp_path, "--epochs", "1", "--widths", "8,16,32,64", "--convs-per-stage", "1",
                           "--dropout", "0.5")
    assert scripts["train"].main(args) == 0
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    assert state["arch_args"] == {"widths": (8, 16, 32, 64), "convs_per_stage": 1, "dropout": 0.5}
    assert scripts["test"].main(["--ckpt", str(tmp_path / "checkpoints" / "best.pth"),
                                 "--out-dir", str(tmp_path / "eval")]) == 0


def test_conv_counts_per_stage_are_stored_and_checked(scripts, tiny_data, tmp_path, capsys):
    args = fast_train_args(tiny_data, tmp_path, "--epochs", "1", "--widths", "8,16,32", "--convs-per-stage", "1,2,3")
    assert scripts["train"].main(args) == 0
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    assert state["arch_args"]["convs_per_stage"] == (1, 2, 3)
    convs = [m for m in model_from_checkpoint(state).modules() if type(m).__name__ == "Conv2d"]
    assert len(convs) == 6
    bad = fast_train_args(tiny_data, tmp_path / "bad", "--widths", "8,16,32", "--convs-per-stage", "1,2")
    assert scripts["train"].main(bad) == 2
    assert "one positive count per stage" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_vgg_flags_with_the_seed_network_are_refused(scripts, tiny_data, tmp_path, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--arch", "assignment", "--widths", "8,16")) == 2
    assert "--widths applies to --arch vgg only" in capsys.readouterr().err


def test_flip_tta_is_used_by_training_and_by_test_script_alike(scripts, tiny_data, tmp_path):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "1", "--tta")) == 0
    ckpt = tmp_path / "checkpoints" / "best.pth"
    at_train_end = json.loads((tmp_path / "logs" / "test_report.json").read_text())
    assert scripts["test"].main(["--ckpt", str(ckpt), "--out-dir", str(tmp_path / "eval")]) == 0
    report = json.loads(next((tmp_path / "eval").glob("*.json")).read_text())
    assert report["tta_flip"] is True and report["confusion_matrix"] == at_train_end["confusion_matrix"]

    classifier = ModelClassifier.from_checkpoint(ckpt).rescored(tta_scales=(), logit_adjust=0.0)
    images = torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8)
    plain = classifier.rescored(tta_flip=False)
    tta = classifier.decision_logits(images)
    assert torch.allclose(tta, (plain.decision_logits(images) + plain.decision_logits(images.flip(-1))) / 2,
                          atol=1e-5)


def test_zoomed_views_are_scored_by_training_and_test_script_alike(scripts, tiny_data, tmp_path):
    # Zoom TTA at 0.9 and 1.1 is the default recipe's, so no flag asks for it.
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--epochs", "1")) == 0
    ckpt = tmp_path / "checkpoints" / "best.pth"
    at_train_end = json.loads((tmp_path / "logs" / "test_report.json").read_text())
    for override, scales in (([], [0.9, 1.1]), (["--tta-scales", "none"], [])):
        out = tmp_path / f"eval{len(scales)}"
        assert scripts["test"].main(["--ckpt", str(ckpt), "--out-dir", str(out), *override]) == 0
        report = json.loads(next(out.glob("*.json")).read_text())
        assert report["tta_scales"] == scales and report["tta_flip"] is True
        if scales:
            assert report["confusion_matrix"] == at_train_end["confusion_matrix"]

    state = load_checkpoint(ckpt)
    model = model_from_checkpoint(state).eval()
    images = torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8)
    x = engine.to_input(images, state["scoring"]["input"], torch.device("cpu"))
    with torch.no_grad():
        views = [model(v) for s in (x, zoom(x, 0.9), zoom(x, 1.1)) for v in (s, s.flip(-1))]
    got = ModelClassifier.from_checkpoint(ckpt).rescored(logit_adjust=0.0).decision_logits(images)
    assert torch.allclose(got, torch.stack(views).mean(0), atol=1e-5)


@pytest.mark.parametrize("script, flag, text", [("train", "--label-smoothing", "1.5"), ("train", "--seed", "-1"),
                                                 ("train", "--seed", "99999999999999999999"),
                                                 ("train", "--logit-adjust", "1e308"),
                                                 ("test", "--logit-adjust", "11")])
def test_values_that_would_fail_later_are_refused_by_their_flag(scripts, capsys, script, flag, text):
    # Each was accepted and then ended in a traceback: in the first step, at seeding, or after scoring.
    first = ["--data", "x"] if script == "train" else ["--ckpt", "x"]
    with pytest.raises(SystemExit) as exit_info:
        scripts[script].get_args_parser().parse_args([*first, flag, text])
    assert exit_info.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0", "-1,1", "a", "1.1,", "inf", "1", "0.9,1", "0.9,0.9"])
def test_bad_tta_scales_are_refused(scripts, text):
    with pytest.raises(SystemExit) as exit_info:
        scripts["train"].parse_args(["--data", "x", "--tta-scales", text])
    assert exit_info.value.code == 2


def test_ema_averages_beside_an_unchanged_training_run(scripts, tiny_data, tmp_path):
    plain, averaged = tmp_path / "plain", tmp_path / "ema"
    assert scripts["train"].main(fast_train_args(tiny_data, plain, "--seed", "3")) == 0
    assert scripts["train"].main(fast_train_args(tiny_data, averaged, "--seed", "3", "--ema", "0.9")) == 0
    reference = load_checkpoint(plain / "checkpoints" / "last.pth")["model"]
    state = load_checkpoint(averaged / "checkpoints" / "last.pth")
    # The optimizer's weights are those of the run without averaging; the kept weights are not.
    assert all(torch.equal(state["online_model"][k], v) for k, v in reference.items())
    assert not torch.equal(state["model"]["head.1.weight"], state["online_model"]["head.1.weight"])
    labels = torch.zeros(len(state["split"]["train_indices"]), dtype=torch.long)
    batch_args = scripts["train"].get_args_parser().parse_args(["--data", "-", "--batch-size", "16"])
    steps_per_epoch = len(scripts["train"].epoch_batches(labels, batch_args, 1, 0, 1))
    assert steps_per_epoch > 1 and state["ema_steps"] == 2 * steps_per_epoch  # updated after every step
    # What training tested is the average: test.py, scoring "model", prints the same figures.
    assert scripts["test"].main(["--ckpt", str(averaged / "checkpoints" / "best.pth"),
                                 "--out-dir", str(averaged / "eval")]) == 0
    report = json.loads(next((averaged / "eval").glob("*.json")).read_text())
    assert report["confusion_matrix"] == json.loads((averaged / "logs" / "test_report.json").read_text())[
        "confusion_matrix"]


@pytest.mark.parametrize("flag, value, off", [("mix", "mixup", "none"), ("mix", "cutmix", "none"),
                                               ("sam", 0.05, 0.0)])
def test_mixed_batches_and_sam_change_training_and_are_recorded(scripts, tiny_data, tmp_path, flag, value, off):
    plain, changed = tmp_path / "plain", tmp_path / "changed"
    assert scripts["train"].main(fast_train_args(tiny_data, plain, "--seed", "3")) == 0
    assert scripts["train"].main(fast_train_args(tiny_data, changed, "--seed", "3", f"--{flag}", str(value))) == 0
    reference = load_checkpoint(plain / "checkpoints" / "last.pth")
    state = load_checkpoint(changed / "checkpoints" / "last.pth")
    assert state["args"][flag] == value and reference["args"][flag] == off
    assert not torch.equal(state["model"]["head.1.weight"], reference["model"]["head.1.weight"])


def test_sam_ascent_moves_the_weights_rho_up_the_gradient_and_back(scripts):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[1].weight.requires_grad_(False)  # a frozen weight has no gradient and must not move
    model(torch.randn(5, 3)).square().sum().backward()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    norm = torch.cat([g.flatten() for g in grads.values()]).norm()
    moves = scripts["train"].sam_ascent(model, 0.1)
    assert torch.cat([m.flatten() for _, m in moves]).norm().item() == pytest.approx(0.1, rel=1e-5)
    for name, p in model.named_parameters():
        expected = before[name] + 0.1 * grads[name] / norm if name in grads else before[name]
        assert torch.allclose(p, expected, atol=1e-7)


@pytest.mark.parametrize("flags, tau", [((), 1.0), (("--class-weights", "balanced"), 0.0),
                                        (("--sampler", "balanced"), 0.0), (("--recipe", "seed"), 0.0),
                                        (("--class-weights", "balanced", "--logit-adjust", "0.5"), 0.5)])
def test_logit_adjustment_is_on_unless_training_balanced_the_classes_already(scripts, flags, tau):
    assert scripts["train"].parse_args(["--data", "x", *flags])[0].logit_adjust == tau


def test_logit_adjustment_shifts_test_decisions_by_the_training_class_frequencies(trained, tiny_data, scripts,
                                                                                   tmp_path):
    state = load_checkpoint(trained / "checkpoints" / "best.pth")
    # The 80% of train that trained: TINY_COUNTS less the stratified fifth held out for validation.
    labels = load_split(tiny_data, "train", state["scoring"]["classes"]).labels
    kept = torch.bincount(labels[torch.as_tensor(state["split"]["train_indices"])], minlength=len(TINY_COUNTS))
    assert state["scoring"]["class_prior"] == pytest.approx((kept / kept.sum()).tolist())
    assert "Validation balanced accuracy: " in (trained / "logs" / "training_log.txt").read_text()
    at_train_end = json.loads((trained / "logs" / "test_report.json").read_text())
    assert scripts["test"].main(["--ckpt", str(trained / "checkpoints" / "best.pth"), "--out-dir",
                                 str(tmp_path / "trained")]) == 0
    report = json.loads(next((tmp_path / "trained").glob("*.json")).read_text())
    assert report["confusion_matrix"] == at_train_end["confusion_matrix"]  # training's default, tau 1

    # What the shift does, on a model with fixed weights and an uneven prior.
    state["scoring"]["class_prior"] = [0.05, 0.4, 0.2, 0.3, 0.05]
    ckpt = fixed_checkpoint(tmp_path / "fixed.pth", tiny_data, class_prior=state["scoring"]["class_prior"],
                            logit_adjust=1.0)
    state = load_checkpoint(ckpt)
    reports = {}
    for tau in ("1", "0"):
        out = tmp_path / tau
        assert scripts["test"].main(["--ckpt", str(ckpt), "--logit-adjust", tau, "--out-dir", str(out)]) == 0
        reports[tau] = json.loads(next(out.glob("*.json")).read_text())
    assert reports["0"]["logit_bias"] is None
    assert reports["0"]["confusion_matrix"] != reports["1"]["confusion_matrix"]  # the shift changes decisions

    test = load_split(tiny_data, "test", state["scoring"]["classes"])
    logits = reference_logits(state, test.images, tau=0)
    for tau, report in reports.items():
        shifted = logits - float(tau) * torch.tensor(state["scoring"]["class_prior"]).log()
        predicted = torch.bincount(shifted.argmax(1), minlength=len(TINY_COUNTS)).tolist()
        assert [sum(column) for column in zip(*report["confusion_matrix"])] == predicted


def test_test_script_rejects_a_negative_logit_adjustment(trained, scripts, capsys):
    with pytest.raises(SystemExit) as exit_info:
        scripts["test"].main(["--ckpt", str(trained / "checkpoints" / "best.pth"), "--logit-adjust", "-1"])
    assert exit_info.value.code == 2
    assert "--logit-adjust" in capsys.readouterr().err


def test_train_fraction_trains_on_a_stratified_share_with_the_same_validation(trained, tiny_data, scripts,
                                                                              tmp_path):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--seed", "1", "--train-fraction", "0.5")) == 0
    full = load_checkpoint(trained / "checkpoints" / "last.pth")
    half = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert half["split"]["val_indices"] == full["split"]["val_indices"]
    assert set(half["split"]["train_indices"]) < set(full["split"]["train_indices"])
    kept = [n - round(n * 0.5) for n in per_class(full["split"]["train_indices"])]
    assert per_class(half["split"]["train_indices"]) == kept
    assert half["scoring"]["class_prior"] == pytest.approx([n / sum(kept) for n in kept])


def test_train_fraction_with_a_val_folder_keeps_its_share_when_resumed(tiny_data, scripts, tmp_path):
    data = tmp_path / "data"
    for src, dst in (("train", "train"), ("test", "val"), ("test", "test")):
        shutil.copytree(tiny_data / src, data / dst)
    args = fast_train_args(data, tmp_path, "--train-fraction", "0.25")
    assert scripts["train"].main([*args, "--epochs", "1"]) == 0
    split = load_checkpoint(tmp_path / "checkpoints" / "last.pth")["split"]
    assert per_class(split["train_indices"]) == [n - round(n * 0.75) for n in TINY_COUNTS.values()]
    assert scripts["train"].main([*args, "--resume"]) == 0
    resumed = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert resumed["epoch"] == 2 and resumed["split"]["train_indices"] == split["train_indices"]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_train_fraction_outside_zero_to_one_is_refused(scripts, tiny_data, tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--train-fraction", value))
    assert "--train-fraction" in capsys.readouterr().err


@pytest.mark.parametrize("flags, smallest", [(["--arch", "assignment", "--input-size", "8"], 16),
                                             (["--recipe", "assignment", "--input-size", "15"], 16),
                                             (["--input-size", "7"], 8),
                                             (["--widths", "8,16,32,64,128", "--input-size", "8"], 16),
                                             (["--head", "fc", "--input-size", "8"], 16)])
def test_an_input_too_small_for_the_arch_is_refused_by_its_flag(scripts, capsys, flags, smallest):
    # --input-size 8 --arch assignment ended in a RuntimeError at the first step, with no checkpoint.
    with pytest.raises(SystemExit) as exit_info:
        scripts["train"].parse_args(["--data", "x", *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --input-size: input size" in err
    assert f"it takes {smallest} pixels or more" in err
    assert scripts["train"].parse_args(["--data", "x", *flags[:-1], str(smallest)])[0].input_size == smallest


def test_no_tta_means_one_view_and_the_optimisation_flags_say_what_they_do(trained, scripts, capsys, tmp_path):
    parse = scripts["train"].parse_args
    assert parse(["--data", "x"])[0].tta_scales == (0.9, 1.1)
    assert parse(["--data", "x", "--no-tta"])[0].tta_scales == ()  # it kept the zoomed views
    assert parse(["--data", "x", "--no-tta", "--tta-scales", "1.2"])[0].tta_scales == (1.2,)
    assert scripts["test"].main(["--ckpt", str(trained / "checkpoints" / "best.pth"), "--no-tta", "--out-dir",
                                 str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert (report["tta_flip"], report["tta_scales"]) == (False, [])
    help_text = " ".join(scripts["train"].get_args_parser().format_help().split())
    for flag, default in (("--epochs", "28"), ("--batch-size", "64"), ("--lr", "0.05"), ("--momentum", "0.9"),
                          ("--weight-decay", "0.0005")):
        metavar = flag.strip("-").upper().replace("-", "_")
        shown = re.search(rf"{flag} {metavar} (.+?) \(default: ([^)]+)\)", help_text)
        assert len(shown.group(1)) > 20 and shown.group(2) == default, (flag, shown.group(0))
    assert "--no-tta scores the image alone" in help_text


def test_data_mostly_named_otherwise_is_said_loudly_naming_the_class_map(tiny_data, scripts, tmp_path, capsys):
    # A model scored on data that names its classes otherwise scored a fraction of it, exit 0, nothing loud.
    other = tmp_path / "other"
    for folder, renamed in (("Sad", "sadness"), ("Happy", "Joy"), ("Angry", "Rage")):
        shutil.copytree(tiny_data / "test" / folder, other / "test" / renamed)
    model = fixed_checkpoint(tmp_path / "m.pth")
    assert scripts["test"].main(["--ckpt", str(model), "--data", str(other), "--out-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "WARNING: ONLY 6 OF 18 test images are scored: the data's class(es) Joy (6), Rage (6) are none of the " \
           "model's (Angry, Happy, Neutral, Sad, Surprise); read them as the model's classes with --class-map" in err
    assert "folders sadness as Sad: names of the same emotions" in err


def test_plot_curves_draws_one_epoch_on_a_whole_epoch_axis(scripts, tmp_path, capsys, monkeypatch):
    import reports

    log = tmp_path / "training_log.txt"
    log.write_text("Epoch [1/1]\nTrain Loss: 1.6, Train Accuracy: 30.0%\nValidation Loss: 1.5, Validation Accuracy: "
                   "25.0%\n")
    drawn = []
    real_save = reports._save
    monkeypatch.setattr(reports, "_save", lambda fig, *a, **k: (drawn.append(fig), real_save(fig, *a, **k)))
    assert scripts["plot_curves"].main([str(log)]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'training_log.png'} (1 epoch)\n"  # it said "(1 epochs)"
    for ax in drawn[0].axes:
        shown = [t for t in ax.get_xticks() if 0.5 <= t <= 1.5]
        assert ax.get_xlim() == (0.5, 1.5) and shown == [1.0]  # it ran from 0.96 to 1.04, ticked by 0.01


def test_reports_on_a_shipped_model_go_to_logs_not_into_the_models_folder():
    from pathlib import Path as P

    from runs import SHIPPED_MODELS, report_folder
    assert report_folder(SHIPPED_MODELS / "ferplus_vgg.pth", {"args": {}}) == P("logs")
    assert report_folder(P("elsewhere/best.pth"), {"args": {}}) == P("elsewhere")


def test_plot_curves_names_a_folder_and_points_a_jsonl_log_to_its_text_twin(scripts, tmp_path, capsys):
    assert scripts["plot_curves"].main([str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder, not a log file" in capsys.readouterr().err
    (tmp_path / "training_log.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    assert scripts["plot_curves"].main([str(tmp_path / "training_log.jsonl")]) == 2
    assert f"plot {tmp_path / 'training_log.txt'}, its text twin" in capsys.readouterr().err


def test_progressive_resizing_trains_small_images_first_and_scores_at_full_size(scripts, tiny_data, tmp_path, capsys):
    train = scripts["train"]
    args = train.parse_args(["--data", "x", "--epochs", "9", "--progressive-resize", "32"])[0]
    sizes = [train.epoch_input_size(args, epoch) for epoch in range(1, 10)]
    # From 32 in epoch 1, growing in steps of 4, to 48 at two thirds of the epochs (epoch 6 of 9), then 48.
    assert sizes[0] == 32 and sizes[5:] == [48] * 4 and sizes == sorted(sizes) and all(s % 4 == 0 for s in sizes)
    assert train.epoch_input_size(train.parse_args(["--data", "x"])[0], 1) == 48  # off by default
    fast = train.parse_args(["--data", "x", "--recipe", "fast"])[0]
    assert (fast.epochs, fast.progressive_resize) == (28, 32)
    work = tmp_path / "progressive"
    assert train.main(fast_train_args(tiny_data, work, "--epochs", "3", "--progressive-resize", "24")) == 0
    epochs = [json.loads(line) for line in (work / "logs" / "training_log.jsonl").read_text().splitlines()]
    assert [e["train_size"] for e in epochs] == [24, 48, 48]
    # The network is scored at --input-size: the checkpoint says so and test.py reproduces training's figures.
    state = load_checkpoint(work / "checkpoints" / "best.pth")
    assert state["scoring"]["input"]["size"] == 48
    for flags, text in ((["--progressive-resize", "64"], "larger than --input-size 48"),
                        (["--progressive-resize", "4"], "argument --progressive-resize: input size 4")):
        with pytest.raises(SystemExit):
            train.parse_args(["--data", "x", *flags])
        assert text in capsys.readouterr().err


def test_a_train_crop_trains_on_the_centre_of_augmented_images_and_scores_whole_ones(scripts, tiny_data, tmp_path,
                                                                                     capsys, monkeypatch):
    train = scripts["train"]
    args = train.parse_args(["--data", "x", "--epochs", "9", "--train-crop", "40", "--progressive-resize", "32"])[0]
    # Progressive resizing grows to the crop, not to --input-size.
    sizes = [train.epoch_input_size(args, epoch) for epoch in range(1, 10)]
    assert sizes[0] == 32 and sizes[5:] == [40] * 4
    seen = []
    real_build_model = train.build_model

    def recording_model(*a, **k):
        model = real_build_model(*a, **k)
        model.register_forward_pre_hook(lambda module, inputs: seen.append((module.training, inputs[0].shape[-1])))
        return model

    monkeypatch.setattr(train, "build_model", recording_model)
    work = tmp_path / "crop"
    assert train.main(fast_train_args(tiny_data, work, "--epochs", "2", "--train-crop", "40")) == 0
    assert {size for training, size in seen if training} == {40}
    assert {size for training, size in seen if not training} == {48}  # validation sees the whole image
    epochs = [json.loads(line) for line in (work / "logs" / "training_log.jsonl").read_text().splitlines()]
    assert [e["train_size"] for e in epochs] == [40, 40]
    assert load_checkpoint(work / "checkpoints" / "best.pth")["scoring"]["input"]["size"] == 48
    for flags, text in ((["--train-crop", "64"], "argument --train-crop: 64 is larger than --input-size 48"),
                        (["--train-crop", "40", "--progressive-resize", "44"], "larger than --train-crop 40"),
                        (["--train-crop", "4"], "argument --train-crop: input size 4"),
                        (["--train-crop", "40", "--arch", "assignment"],
                         "argument --train-crop: the assignment's network has a dense head sized for --input-size 48"),
                        (["--progressive-resize", "32", "--head", "fc"],
                         "argument --progressive-resize: --head fc has a dense head sized for --input-size 48"),
                        (["--recipe", "fast", "--input-size", "24"],
                         "32 is larger than --input-size 24; it is the size the first epochs start from (--recipe fast "
                         "sets --progressive-resize 32)")):
        with pytest.raises(SystemExit):
            train.parse_args(["--data", "x", *flags])
        assert text in capsys.readouterr().err
    # Set by a recipe rather than given, it is left out with a warning, as a recipe's vgg flags are.
    args, _, warnings = train.parse_args(["--data", "x", "--recipe", "fast", "--arch", "assignment"])
    assert args.progressive_resize is None
    assert warnings == ["recipe fast sets --progressive-resize 32, which is left out: the assignment's network has a "
                        "dense head sized for --input-size 48; it trains at that size only"]


def seven_class_folders(tiny_data, root):
    """tiny_data with FER2013's two other classes added (noise images), in FER2013's seven-class layout."""
    shutil.copytree(tiny_data, root)
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("test", 4)):
        for label in ("Disgust", "Fear"):
            (root / split / label).mkdir()
            for i in range(count):
                pixels = torch.randint(0, 256, (48, 48), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


def test_the_default_recipe_is_picked_by_the_data_and_flags_given_still_win(scripts, tiny_data, tmp_path, capsys):
    train = scripts["train"]
    from dataset import FER2013_CLASSES
    seven = seven_class_folders(tiny_data, tmp_path / "fer2013")
    assert train.data_recipe(seven, FER2013_CLASSES) == "fer2013"
    assert train.data_recipe(tiny_data, ["Angry", "Happy", "Neutral", "Sad", "Surprise"]) == "fer5"
    # Five of FER2013's classes are another task than FER2013's: the toolkit's own defaults.
    assert train.data_recipe(seven, ["Angry", "Happy", "Neutral", "Sad", "Surprise"]) == "fer5"
    work = tmp_path / "run"
    assert train.main(fast_train_args(seven, work, "--epochs", "1", "--no-tta")) == 0
    assert "recipe: fer2013, the default for FER2013's seven classes" in capsys.readouterr().out
    recorded = load_checkpoint(work / "checkpoints" / "best.pth")["args"]
    fer2013 = train.RECIPES["fer2013"]
    assert tuple(recorded["widths"]) == fer2013["widths"] == (32, 64, 128, 256)
    assert (recorded["val_fraction"], recorded["monitor"], recorded["logit_adjust"], recorded["patience"]) == \
        (0.05, "val_acc", 0.0, 15)
    assert recorded["epochs"] == 1 and not recorded["tta"] and tuple(recorded["tta_scales"]) == ()  # given: kept
    assert recorded["recipe"] == "fer2013"  # the pick is the run's recipe, as if named
    # Resumed with the command it was started with, or naming the recipe the default picked.
    for recipe in ([], ["--recipe", "default"], ["--recipe", "fer2013"]):
        assert train.main(fast_train_args(seven, work, "--epochs", "1", "--no-tta", "--resume", *recipe)) == 0
    # A resumed run that trains says whose recipe it goes on with.
    capsys.readouterr()
    assert train.main(fast_train_args(seven, work, "--epochs", "2", "--no-tta", "--resume")) == 0
    out = capsys.readouterr().out
    assert f"recipe: fer2013; resuming from {work / 'checkpoints' / 'last.pth'} after epoch 1\n" in out
    assert out.count("resuming from") == 1 and "resumed from" not in out  # said once
    # Another network takes the recipe's other flags; vgg's widths are left to vgg.
    work = tmp_path / "assignment"
    assert train.main(fast_train_args(seven, work, "--epochs", "1", "--arch", "assignment")) == 0
    state = load_checkpoint(work / "checkpoints" / "best.pth")
    assert state["arch_args"] == {} and state["args"]["widths"] is None  # the recorded args agree
    assert "warning: recipe fer2013 sets --widths 32,64,128,256, which --arch assignment does not use" in \
        capsys.readouterr().err
    # A recipe that is only vgg's settings says so, rather than train the default in silence.
    assert train.main(fast_train_args(seven, work, "--epochs", "1", "--arch", "assignment", "--recipe", "fer5-w24",
                                      "--overwrite")) == 0
    assert "warning: recipe fer5-w24 sets --widths 24,48,96,192, which --arch assignment" in capsys.readouterr().err
    assert train.main(fast_train_args(seven, work, "--epochs", "1", "--arch", "assignment", "--widths",
                                      "8,16,32,64")) == 2
    assert "--widths applies to --arch vgg only" in capsys.readouterr().err
    # The recipe by name on any data; fer5 is the toolkit's own defaults, FER2013's recipe before this one.
    work = tmp_path / "named"
    assert train.main(fast_train_args(seven, work, "--epochs", "1", "--recipe", "fer5")) == 0
    recorded = load_checkpoint(work / "checkpoints" / "best.pth")["args"]
    assert "recipe: fer5\n" in capsys.readouterr().out and recorded["recipe"] == "fer5"
    assert recorded["widths"] is None and recorded["val_fraction"] == 0.2 and tuple(recorded["tta_scales"]) == \
        (0.9, 1.1)
    args = train.parse_args(["--data", "x", "--recipe", "fer2013"])[0]
    assert (args.epochs, args.tta_scales, args.val_fraction) == (50, (0.9, 0.95, 1.05, 1.1), 0.05)


def test_negative_turns_can_follow_the_flag_with_a_space(scripts):
    # argparse alone takes "-20,20" for a flag of its own and refuses "--turns -20,20".
    from cli import attach_negative_values

    argv = attach_negative_values(["x.jpg", "--turns", "-20,20", "--min-face", "30"], ("--turns",))
    args = scripts["predict"].get_args_parser().parse_args(argv)
    assert args.turns == (-20.0, 20.0) and args.min_face == 30 and args.inputs == ["x.jpg"]
    assert attach_negative_values(["--turns", "20,-20", "-h"], ("--turns",)) == ["--turns", "20,-20", "-h"]


def test_help_shows_each_default_once_and_as_typed(scripts, capsys):
    for name in ("train", "test", "predict"):
        with pytest.raises(SystemExit):
            scripts[name].main(["--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "(default: None)" not in text and "(default: (" not in text and "(default: [" not in text, name
    with pytest.raises(SystemExit):
        scripts["train"].main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: flip,affine,jitter,erase)" in text and "vgg: channels per stage (default: 16,48,96,192)" in text
    assert text.count("10,0.1,0.1") == 1  # --affine's, once
    assert "about 13% less time" in text  # a percent sign in a help text is shown as one

