"""FER+: the ten annotators' votes, both input routes, the four label modes, the scoring protocol, and a FER+
model through test.py, predict.py and export.py."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, fast_train_args, fixed_checkpoint, load_script
from PIL import Image

import ferplus
from dataset import available_splits, layout, load_split, resolve_classes
from errors import DataError
from ferplus import EMOTIONS, MultiTargetLoss, label_mode
from synthetic import draw_face

# Ten vote counts: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.
ROWS = {
    "clear": [6, 3, 1, 0, 0, 0, 0, 0, 0, 0],       # the single surprise vote is an outlier
    "split": [4, 4, 2, 0, 0, 0, 0, 0, 0, 0],       # no majority, a clear distribution
    "singles": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],     # nothing survives outlier removal
    "unknown": [2, 0, 0, 0, 0, 0, 0, 0, 6, 2],
    "not_a_face": [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],
    "outlier": [9, 1, 0, 0, 0, 0, 0, 0, 0, 0],
}
VOTES = torch.tensor(list(ROWS.values()), dtype=torch.float32)
NAMES = list(ROWS)


def kept(mode, classes=EMOTIONS):
    keep, labels, targets, left_out = label_mode(VOTES, list(classes), mode)
    return [n for n, k in zip(NAMES, keep.tolist()) if k], labels, targets, left_out


def test_majority_keeps_faces_whose_top_emotion_holds_more_than_half_of_the_votes_left():
    names, labels, targets, left_out = kept("majority")
    assert names == ["clear", "outlier"] and targets is None
    assert labels[NAMES.index("clear")] == 0
    assert left_out == {"not a face": 1, "unknown": 1, "no majority emotion": 2}


def test_crossentropy_and_probability_train_on_the_vote_distribution_without_single_votes():
    for mode in ("crossentropy", "probability"):
        names, _, targets, left_out = kept(mode)
        assert names == ["clear", "split", "outlier"]
        assert targets[NAMES.index("clear")].tolist() == pytest.approx([6 / 9, 3 / 9, 0, 0, 0, 0, 0, 0])
        assert targets[NAMES.index("split")].tolist() == pytest.approx([0.4, 0.4, 0.2, 0, 0, 0, 0, 0])
        assert targets[NAMES.index("outlier")].tolist() == pytest.approx([1, 0, 0, 0, 0, 0, 0, 0])
        assert left_out == {"not a face": 1, "unknown": 1, "no clear emotion": 1}


def test_multi_target_counts_every_emotion_with_thirty_percent_of_the_votes():
    names, _, targets, _ = kept("multi_target")
    assert names == ["clear", "split", "outlier"]
    assert targets[NAMES.index("clear")].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]   # 6/9 and 3/9 >= 0.3
    assert targets[NAMES.index("split")].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]   # 0.2 < 0.3
    logits = torch.tensor([[2.0, 0.0, 1.0, 0, 0, 0, 0, 0]])
    p = torch.softmax(logits, 1)[0]
    assert MultiTargetLoss()(logits, targets[:1]).item() == pytest.approx(-math.log(max(p[0], p[1])))


def test_votes_for_emotions_outside_the_class_list_count_against_a_face():
    # With neutral left out of --classes, "clear" (6 of 9 votes neutral) has no emotion of the list on top.
    names, labels, _, _ = kept("majority", ["happiness", "surprise", "sadness"])
    assert names == []
    names, _, targets, _ = kept("crossentropy", ["neutral", "happiness"])
    assert names == ["clear", "split", "outlier"] and targets[1].tolist() == pytest.approx([0.5, 0.5])


def test_an_unknown_mode_or_emotion_is_refused():
    with pytest.raises(ValueError, match="unknown label mode"):
        label_mode(VOTES, list(EMOTIONS), "soft")
    with pytest.raises(ValueError, match="FER\\+ has no emotion happy"):
        ferplus.columns_of(["happy"])


# ---------------------------------------------------------------------------------------------------------
# A tiny FER+ set in both layouts: synthetic faces of five emotions, votes leaning to the face's emotion.

SYNTHETIC = {"neutral": "Neutral", "happiness": "Happy", "surprise": "Surprise", "sadness": "Sad", "anger": "Angry"}
CLASSES = list(SYNTHETIC)


def synthetic_votes(rng, emotion):
    votes = np.zeros(10, dtype=int)
    votes[EMOTIONS.index(emotion)] = rng.integers(5, 9)
    for _ in range(10 - votes.sum()):
        votes[rng.integers(0, 10)] += 1
    return votes


@pytest.fixture(scope="module")
def ferplus_data(tmp_path_factory):
    """-> (folders root, fer2013new.csv path): the same faces and votes in Microsoft's two layouts."""
    root = tmp_path_factory.mktemp("ferplus")
    rng = np.random.default_rng(0)
    rows = []  # (usage, name, pixels, votes)
    for usage, count in (("Training", 60), ("PublicTest", 20)):
        for i in range(count):
            emotion = CLASSES[i % len(CLASSES)]
            face = np.asarray(draw_face(SYNTHETIC[emotion], rng, 48))
            votes = synthetic_votes(rng, emotion)
            if i == 7:
                votes = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 9])  # not a face
            rows.append((usage, f"fer{len(rows):07d}.png", face, votes))
    folders = root / "folders"
    for usage, folder in (("Training", "FER2013Train"), ("PublicTest", "FER2013Valid")):
        (folders / folder).mkdir(parents=True)
        with open(folders / folder / "label.csv", "w", newline="") as f:
            writer = csv.writer(f)
            for u, name, face, votes in rows:
                if u == usage:
                    Image.fromarray(face).save(folders / folder / name)
                    writer.writerow([name, "(0, 0, 48, 48)", *votes])
    csvs = root / "csv"
    csvs.mkdir()
    with open(csvs / "fer2013.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for usage, _, face, _ in rows:
            writer.writerow([0, " ".join(map(str, face.flatten())), usage])
        writer.writerow([0, " ".join(["9"] * 2304), "Training"])  # a FER2013 row FER+ left out
    with open(csvs / "fer2013new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", *ferplus.VOTE_COLUMNS])
        for usage, name, _, votes in rows:
            writer.writerow([usage, name, *votes])
        writer.writerow(["Training", "", *([0] * 10)])
    return folders, csvs / "fer2013new.csv"


def test_both_layouts_are_recognised_and_read_alike(ferplus_data):
    folders, new_csv = ferplus_data
    assert (layout(folders), layout(new_csv)) == ("ferplus", "ferplus_csv")
    assert available_splits(folders) == available_splits(new_csv) == ["train", "val"]
    # The synthetic votes hold five emotions: the three no training face has as its majority are left out.
    for data in (folders, new_csv):
        classes, notes = resolve_classes(data)
        assert classes == CLASSES and "disgust, fear, contempt have no training images and are left out" in notes[0]
    for mode in ferplus.LABEL_MODES:
        a = load_split(folders, "train", CLASSES, label_mode=mode)
        b = load_split(new_csv, "train", CLASSES, label_mode=mode)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.votes, b.votes)
        assert (a.targets is None) == (mode == "majority")
        assert any("1 not a face" in w for w in a.warnings())
    assert any("1 train row(s) have no FER+ image name" in w for w in load_split(new_csv, "train", CLASSES).warnings())


def test_missing_and_unlisted_images_of_the_folders_are_counted(ferplus_data, tmp_path):
    import shutil
    folders, _ = ferplus_data
    copy = tmp_path / "copy"
    shutil.copytree(folders, copy)
    (copy / "FER2013Train" / "fer0000003.png").unlink()
    Image.new("L", (48, 48)).save(copy / "FER2013Train" / "stray.png")
    warnings = load_split(copy, "train", CLASSES).warnings()
    assert any("1 image(s) listed in" in w and "fer0000003.png" in w for w in warnings)
    assert any("1 file(s) in" in w and "stray.png" in w for w in warnings)


def test_bad_rows_of_a_label_csv_are_named_and_its_header_and_listing_understood(ferplus_data, tmp_path):
    import shutil
    folders, _ = ferplus_data
    copy = tmp_path / "copy"
    shutil.copytree(folders, copy)
    label_csv = copy / "FER2013Train" / "label.csv"
    rows = list(csv.reader(label_csv.read_text().splitlines()))
    rows[3][-1] = "x"                     # a vote that is not a number
    rows[5] = rows[5][:4]                 # too few columns
    rows[6][2:] = ["0"] * 10              # no votes at all
    header = ["Image name", "Face box", *ferplus.VOTE_COLUMNS]
    with open(label_csv, "w", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([header, *rows])  # a header line and Windows line ends
    split = load_split(copy, "train", CLASSES)
    skipped = dict(split.skipped)
    assert sorted(skipped) == [f"{label_csv}:{n}" for n in (5, 7, 8)]  # the header is line 1, not a bad row
    assert "could not convert" in skipped[f"{label_csv}:5"] and "no votes" in skipped[f"{label_csv}:8"]
    assert not any("not listed" in w for w in split.warnings())  # a bad row's image is listed, not a stray
    label_csv.write_text("")
    with pytest.raises(DataError, match=r"label.csv is empty"):
        load_split(copy, "train", CLASSES)


def test_the_csv_route_refuses_vote_and_pixel_files_that_do_not_line_up(ferplus_data, tmp_path):
    _, new_csv = ferplus_data
    votes = new_csv.read_text().splitlines()
    pixels = new_csv.with_name("fer2013.csv").read_text().splitlines()
    for name, (vote_lines, pixel_lines), message in [
            ("short", (votes, pixels[:-25]), "fer2013new.csv has more"),
            ("shifted", (votes, pixels[:1] + pixels[2:] + pixels[1:2]), "line 61 is 'Training' in one and line 61 "
                                                                          "'PublicTest' in the other")]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "fer2013new.csv").write_text("\n".join(vote_lines) + "\n")
        (folder / "fer2013.csv").write_text("\n".join(pixel_lines) + "\n")
        with pytest.raises(DataError, match="must hold the same rows in the same order") as error:
            load_split(folder / "fer2013new.csv", "train", CLASSES)
        assert message in str(error.value)
    short = tmp_path / "short_row"
    short.mkdir()
    (short / "fer2013new.csv").write_text("\n".join([votes[0], ",".join(votes[1].split(",")[:5]), *votes[2:]]) + "\n")
    (short / "fer2013.csv").write_text("\n".join(pixels) + "\n")
    split = load_split(short / "fer2013new.csv", "train", CLASSES)
    assert dict(split.skipped)[f"{short / 'fer2013new.csv'}:2"] == "expected 10 vote counts, the row has 3"


def test_validation_and_test_are_scored_on_the_majority_protocol(ferplus_data):
    folders, _ = ferplus_data
    val = load_split(folders, "val", CLASSES)
    votes = ferplus.clean(val.votes)[:, :5]
    assert bool((votes.max(1).values > 0.5 * ferplus.clean(val.votes).sum(1)).all())
    assert val.labels.tolist() == votes.argmax(1).tolist()


@pytest.fixture(scope="module")
def ferplus_model(ferplus_data, tmp_path_factory, scripts):
    folders, _ = ferplus_data
    work = tmp_path_factory.mktemp("ferplus_run")
    assert scripts["train"].main(fast_train_args(folders, work, "--classes", ",".join(CLASSES), "--test-split",
                                                 "val", "--seed", "2")) == 0
    return work


def test_a_ferplus_run_records_its_mode_and_reports_against_the_votes(ferplus_model):
    from checkpoint import load_checkpoint
    state = load_checkpoint(ferplus_model / "checkpoints" / "best.pth")
    args = state["args"]
    assert (args["label_mode"], args["logit_adjust"], args["monitor"]) == ("crossentropy", 0.0, "val_acc")
    assert state["scoring"]["classes"] == CLASSES and state["scoring"]["logit_bias"] is None
    report = json.loads((ferplus_model / "logs" / "test_report.json").read_text())
    assert report["vote_kl"] > 0 and report["vote_cross_entropy"] > report["vote_kl"]
    # The faces each split left out (unknown, not a face, no majority) are counted in the log, not only on screen.
    head = (ferplus_model / "logs" / "training_log.txt").read_text().split("Epoch [1/")[0]
    assert "usable with --label-mode crossentropy; left out: " in head
    assert "scored (majority protocol); left out: " in head
    # With --test-split val the validation faces held out of train and the data's val split are told apart.
    assert "warning: test (val split): " in head and any(h.startswith("val: ") for h in head.splitlines())
    assert report["num_samples"] == 19  # PublicTest's faces with a majority emotion: the not-a-face row is out


@pytest.mark.parametrize("mode", ["majority", "probability", "multi_target"])
def test_every_label_mode_trains(ferplus_data, scripts, tmp_path, mode):
    folders, _ = ferplus_data
    args = fast_train_args(folders, tmp_path, "--classes", ",".join(CLASSES), "--label-mode", mode, "--epochs", "1")
    assert scripts["train"].main(args) == 0
    rows = [json.loads(r) for r in (tmp_path / "logs" / "training_log.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[0]["train_loss"])


def test_probability_mode_draws_labels_afresh_each_epoch_from_the_votes(scripts):
    train = scripts["train"]
    targets = torch.tensor([[0.7, 0.3, 0.0]] * 2000)
    split = type("Split", (), {"targets": targets, "labels": torch.zeros(2000, dtype=torch.long)})()
    args = train.get_args_parser().parse_args(["--data", "-", "--label-mode", "probability"])
    epoch1 = train.epoch_targets(split, args, 1, torch.device("cpu"))
    assert epoch1.dtype == torch.long and set(epoch1.tolist()) == {0, 1}
    assert epoch1.float().mean().item() == pytest.approx(0.3, abs=0.04)
    assert torch.equal(epoch1, train.epoch_targets(split, args, 1, torch.device("cpu")))  # a resume draws alike
    assert not torch.equal(epoch1, train.epoch_targets(split, args, 2, torch.device("cpu")))


def test_label_modes_other_than_majority_need_votes(tiny_data, scripts, tmp_path, capsys):
    assert scripts["train"].main(fast_train_args(tiny_data, tmp_path, "--label-mode", "crossentropy")) == 2
    assert "--label-mode crossentropy needs vote data" in capsys.readouterr().err


def test_a_ferplus_model_goes_through_test_predict_and_export(ferplus_model, ferplus_data, tmp_path, scripts):
    folders, new_csv = ferplus_data
    best = ferplus_model / "checkpoints" / "best.pth"
    # test.py on the other layout of the same data scores the same faces the same way.
    assert scripts["test"].main(["--ckpt", str(best), "--data", str(new_csv), "--split", "val",
                                 "--out-dir", str(tmp_path / "eval")]) == 0
    report = json.loads(next((tmp_path / "eval").glob("*.json")).read_text())
    at_train_end = json.loads((ferplus_model / "logs" / "test_report.json").read_text())
    assert report["confusion_matrix"] == at_train_end["confusion_matrix"]
    assert report["vote_kl"] == pytest.approx(at_train_end["vote_kl"], rel=1e-6)
    export = load_script("export")
    assert export.main(["--ckpt", str(best), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    predict = load_script("predict")
    crops = folders / "FER2013Valid"
    outputs = {}
    for name, model in (("pth", best), ("onnx", tmp_path / "m.onnx")):
        assert predict.main([str(crops), "--no-detect", "--ckpt", str(model), "--out-dir", str(tmp_path / name)]) == 0
        with open(tmp_path / name / "predictions.csv", newline="") as f:
            outputs[name] = list(csv.DictReader(f))
    assert {r["label"] for r in outputs["pth"]} <= set(CLASSES)
    assert [r["label"] for r in outputs["pth"]] == [r["label"] for r in outputs["onnx"]]


def test_class_shares_of_vote_data_are_the_sums_of_each_faces_vote_shares(scripts):
    train = scripts["train"]
    targets = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.5, 0.5]])
    split = type("Split", (), {"targets": targets, "labels": targets.argmax(1), "classes": ["a", "b", "c"]})()
    assert train.class_counts(split).tolist() == pytest.approx([1.6, 1.4, 2.0])
    assert train.class_prior(split) == pytest.approx((0.32, 0.28, 0.4))  # not the labels' (0.4, 0.4, 0.2)
    args = train.get_args_parser().parse_args(["--data", "-", "--class-weights", "balanced"])
    assert train.class_weights(split, args, "cpu").tolist() == pytest.approx([5 / (3 * n) for n in (1.6, 1.4, 2.0)])


@pytest.mark.parametrize("flags", [["--class-weights", "balanced"], ["--sampler", "balanced"], ["--mix", "mixup"],
                                   ["--mix", "cutmix"], ["--logit-adjust", "1"]])
def test_vote_distributions_flow_through_weights_sampling_mixing_and_adjustment(ferplus_data, scripts, tmp_path,
                                                                                 flags):
    folders, _ = ferplus_data
    args = fast_train_args(folders, tmp_path, "--classes", ",".join(CLASSES), "--epochs", "1", *flags)
    assert scripts["train"].main(args) == 0
    rows = [json.loads(r) for r in (tmp_path / "logs" / "training_log.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[0]["train_loss"])
    from checkpoint import load_checkpoint
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    assert state["args"]["label_mode"] == "crossentropy"
    if flags[0] == "--logit-adjust":  # the prior comes from the votes of the faces trained on
        train = load_split(folders, "train", CLASSES, label_mode="crossentropy")  # FER2013Valid validates
        shares = train.targets.sum(0)
        assert state["scoring"]["class_prior"] == pytest.approx((shares / shares.sum()).tolist(), rel=1e-5)


def test_a_ferplus_run_resumes_with_its_label_mode(ferplus_data, scripts, tmp_path):
    folders, _ = ferplus_data
    args = fast_train_args(folders, tmp_path, "--classes", ",".join(CLASSES), "--label-mode", "probability",
                           "--epochs", "1")
    assert scripts["train"].main(args) == 0
    assert scripts["train"].main([*args[:-2], "--epochs", "2", "--resume"]) == 0
    from checkpoint import load_checkpoint
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert (state["epoch"], state["args"]["label_mode"]) == (2, "probability")


def test_vote_targets_train_under_torchrun_and_report_as_one_process_would(ferplus_data, scripts, tmp_path):
    folders, _ = ferplus_data
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *fast_train_args(folders, tmp_path, "--classes", ",".join(CLASSES), "--epochs", "1", "--amp", "off",
                            "--device", "cpu", "--test-split", "val", "--val-fraction", "0.2")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    distributed = json.loads((tmp_path / "logs" / "test_report.json").read_text())
    assert scripts["test"].main(["--ckpt", str(tmp_path / "checkpoints" / "best.pth"), "--out-dir",
                                 str(tmp_path / "single")]) == 0
    single = json.loads(next((tmp_path / "single").glob("*.json")).read_text())
    assert distributed["confusion_matrix"] == single["confusion_matrix"]
    assert distributed["vote_kl"] == pytest.approx(single["vote_kl"], rel=1e-5)


def test_models_score_data_that_names_their_classes_otherwise_through_the_class_map(ferplus_data, ferplus_model,
                                                                                    tiny_data, scripts, tmp_path,
                                                                                    capsys):
    folders, _ = ferplus_data
    # A model of the assignment's five classes on FER+ data, whose emotions are named otherwise: FER2013's and FER+'s
    # names of the same emotions are read as each other, with a note (the model was refused, or scored a fraction).
    five = fixed_checkpoint(tmp_path / "five.pth")
    args = ["--ckpt", str(five), "--data", str(folders), "--split", "val", "--out-dir", str(tmp_path / "a")]
    assert scripts["test"].main(args) == 0
    err = capsys.readouterr().err
    assert "classes happiness as Happy, sadness as Sad, anger as Angry: names of the same emotions" in err
    report = json.loads(next((tmp_path / "a").glob("*.json")).read_text())
    expected = load_split(folders, "val", ["anger", "happiness", "neutral", "sadness", "surprise"])
    assert report["classes"] == ["Angry", "Happy", "Neutral", "Sad", "Surprise"]
    assert [sum(row) for row in report["confusion_matrix"]] == expected.class_counts()
    assert report["vote_kl"] > 0  # the votes found under the data's names
    # The map names the data's names; one the data lacks is said.
    assert scripts["test"].main([*args, "--class-map", "fury=Angry"]) == 0
    assert f"--class-map names fury, which {folders} has no class of" in capsys.readouterr().err
    # FER+'s model on class folders named the FER2013 way.
    best = str(ferplus_model / "checkpoints" / "best.pth")
    args = ["--ckpt", best, "--data", str(tiny_data), "--split", "test", "--out-dir", str(tmp_path / "b")]
    assert scripts["test"].main(args) == 0
    assert "folders Angry as anger, Happy as happiness, Sad as sadness" in capsys.readouterr().err
    report = json.loads(max((tmp_path / "b").glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert report["num_samples"] == 30 and "absent_classes" not in report  # tiny_data's test: 6 faces a class
    three = tmp_path / "three"
    for name in ("Calm", "Joy", "Rage"):
        shutil.copytree(tiny_data / "test" / "Happy", three / "test" / name)
    assert scripts["test"].main(["--ckpt", best, "--data", str(three), "--out-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "its class folders are Calm, Joy, Rage" in err and "--class-map" in err and "Traceback" not in err
