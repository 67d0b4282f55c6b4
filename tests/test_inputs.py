"""Users' files on every path: image modes and EXIF orientation decoded alike everywhere, boxes outside the image,
unreadable files, and predict.py's outputs (one set per input, a row for every input)."""
import csv
import json

import numpy as np
import pytest
from conftest import CLASSES, fixed_checkpoint, load_script
from PIL import Image

from images import decode_file, read_image
from synthetic import draw_face


@pytest.fixture(scope="module")
def predict():
    return load_script("predict")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fixed_checkpoint(tmp_path_factory.mktemp("model") / "fixed.pth", head_scale=3)


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_as(gray, path, kind):
    """The gray image `gray` (PIL 'L') stored the way users' files come: 16-bit, with alpha, as a palette, or
    with its pixels stored sideways and an EXIF Orientation tag (6: turn 90 degrees clockwise to view)."""
    if kind == "I;16":
        Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(path)
    elif kind == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        gray.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    elif kind == "P":
        gray.convert("RGB").quantize(256).save(path)
    else:
        gray.convert(kind).save(path)
    return path


KINDS = ["L", "RGB", "RGBA", "LA", "P", "I;16", "exif-rotated"]


def test_every_mode_and_orientation_decodes_to_the_same_picture(tmp_path):
    face = draw_face("Happy", np.random.default_rng(0), 96)
    reference = decode_file(save_as(face, tmp_path / "L.png", "L"), 48, 1)[0]
    for kind in KINDS:
        path = save_as(face, tmp_path / f"{kind.replace(';', '')}.png", kind)
        assert read_image(path).size == (96, 96)  # upright, whatever the storage
        crop = decode_file(path, 48, 1)[0]
        assert np.abs(crop.astype(int) - reference.astype(int)).max() <= (3 if kind == "P" else 1), kind


def test_every_mode_gives_the_same_crop_and_decision_on_every_path(predict, model, tmp_path):
    """Training's decoding, predict.py on crops (--no-detect) and predict.py finding the face in a photo."""
    face = draw_face("Happy", np.random.default_rng(0), 96)
    photo = Image.new("L", (320, 240), 90)
    photo.paste(draw_face("Sad", np.random.default_rng(1), 128), (100, 60))
    crops, photos = tmp_path / "crops", tmp_path / "photos"
    crops.mkdir()
    photos.mkdir()
    for kind in KINDS:
        save_as(face, crops / f"{kind.replace(';', '')}.png", kind)
        save_as(photo, photos / f"{kind.replace(';', '')}.png", kind)
    assert predict.main([str(crops), "--no-detect", "--ckpt", str(model), "--out-dir", str(tmp_path / "a")]) == 0
    assert predict.main([str(photos), "--ckpt", str(model), "--out-dir", str(tmp_path / "b")]) == 0
    for rows in (rows_of(tmp_path / "a" / "predictions.csv"), rows_of(tmp_path / "b" / "predictions.csv")):
        assert len(rows) == len(KINDS) and all(r["status"] == "ok" for r in rows)
        reference = next(r for r in rows if r["file"].endswith("/L.png"))
        for r in rows:
            assert [round(float(r[k])) for k in "xywh"] == [round(float(reference[k])) for k in "xywh"]
            probabilities = [float(r[f"p_{c}"]) for c in CLASSES]
            assert probabilities == pytest.approx([float(reference[f"p_{c}"]) for c in CLASSES], abs=0.02), r["file"]
    # The sideways photo is annotated upright.
    assert Image.open(tmp_path / "b" / "exif-rotated_annotated.jpg").size == (320, 240)


def test_boxes_outside_the_image_are_clipped_or_skipped_and_the_rest_goes_on(predict, model, tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.new("L", (256, 256), 120).save(photo)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\np.png,300,300,50,50\np.png,100,100,-50,-50\np.png,200,180,100,100\n"
                     "p.png,10,10,60,60\n")
    assert predict.main([str(photo), "--boxes", str(boxes), "--ckpt", str(model), "--out-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"{boxes}:2: box 300,300,50,50 has nothing inside" in err and f"{boxes}:3:" in err
    rows = rows_of(tmp_path / "predictions.csv")
    assert [(r["x"], r["y"], r["w"], r["h"]) for r in rows] == [("200", "180", "56", "76"), ("10", "10", "60", "60")]


def test_bad_boxes_rows_are_left_out_by_their_line_and_a_photo_no_row_names_says_so(predict, model, tmp_path, capsys):
    # One malformed row stopped the whole batch, and blank lines shifted the line named.
    for name in ("p.png", "q.png"):
        Image.new("L", (256, 256), 120).save(tmp_path / name)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\n\n\np.png,ten,10,60,60\np.png,10,10,60,60\np.png,5\n,,,,\ngone.png,1,1,9,9\n"
                     ",1,1,9,9\np.png,1,1,inf,5\n")
    assert predict.main([str(tmp_path / "p.png"), str(tmp_path / "q.png"), "--boxes", str(boxes), "--ckpt", str(model),
                         "--out-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    for line in (4, 6, 7, 9, 10):
        assert f"{boxes}:{line}: needs a file name and finite numbers x,y,w,h; row left out" in err
    assert "--boxes rows name file(s) not among the inputs: gone.png" in err
    rows = rows_of(tmp_path / "out" / "predictions.csv")
    status = {r["file"].rsplit("/", 1)[-1]: (r["status"], r["x"]) for r in rows}
    assert status == {"p.png": ("ok", "10"), "q.png": ("no --boxes row names it", "")}


def test_a_csv_that_is_not_utf8_is_one_line_naming_it(predict, model, tmp_path, capsys):
    Image.new("L", (64, 64), 120).save(tmp_path / "p.png")
    latin = tmp_path / "boxes.csv"
    latin.write_bytes("file,x,y,w,h\np.png,1,1,9,9\nété.png,1,1,5,5\n".encode("latin-1"))
    assert predict.main([str(tmp_path / "p.png"), "--boxes", str(latin), "--ckpt", str(model)]) == 2
    assert f"{latin} is not UTF-8 text (byte 0xe9 on line 3); save it as UTF-8" in capsys.readouterr().err


def test_each_file_is_classified_once_and_clashing_output_names_get_numbers(predict, model, tmp_path, capsys):
    photo = Image.new("L", (96, 96), 90)
    for name in ("in/a/b/face.jpg", "in/a_b/face.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(tmp_path / name)
    (tmp_path / "in" / "a" / "notes.txt").write_text("not a photo")
    given = [str(tmp_path / "in"), str(tmp_path / "in" / "a" / "b" / "face.jpg"), "in/a_b/face.jpg"]
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as m:
        m.chdir(tmp_path)
        assert predict.main([*given, "--no-detect", "--explain", "--ckpt", str(model), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr()
    assert "2 face(s) in 2 image(s)" in printed.out
    assert "skipped 1 file(s) of the folders that are not images: " in printed.err
    assert printed.err.rstrip().endswith("notes.txt")
    assert sorted(p.name for p in out.glob("*_gradcam.png")) == ["a_b_face.jpg_2_face0_gradcam.png",
                                                                 "a_b_face.jpg_face0_gradcam.png"]
    assert [r["status"] for r in rows_of(out / "predictions.csv")] == ["ok", "ok"]


def test_large_photos_decode_without_pils_stray_warning(tmp_path, monkeypatch, recwarn):
    # PIL warns (naming no file) of photos between MAX_IMAGE_PIXELS and twice that; read_image decodes them quietly.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (40, 40), 99).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png").size == (40, 40)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    Image.new("L", (50, 50), 99).save(tmp_path / "bigger.png")
    with pytest.raises(Image.DecompressionBombError):
        read_image(tmp_path / "bigger.png")


def test_photos_given_with_a_video_are_refused(predict, model, tmp_path, capsys):
    assert predict.main(["p.jpg", "--video", "v.mp4", "--ckpt", str(model)]) == 2
    assert "--video takes no photos (got p.jpg)" in capsys.readouterr().err


def test_a_bad_file_in_a_folder_is_a_row_and_a_warning_and_the_run_goes_on(predict, model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    draw_face("Happy", np.random.default_rng(0), 64).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    Image.new("L", (64, 64), 30).save(folder / "c.png")
    assert predict.main([str(folder), "--ckpt", str(model), "--out-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "b.jpg: unreadable" in err and "c.png: no face found" in err
    status = {r["file"].rsplit("/", 1)[-1]: r["status"] for r in rows_of(tmp_path / "out" / "predictions.csv")}
    assert status["c.png"] == "no face found" and status["b.jpg"].startswith("unreadable")


def test_every_input_gets_its_own_outputs_and_the_summary_says_what_was_written(predict, model, tmp_path, capsys):
    photo = Image.new("L", (320, 240), 90)
    photo.paste(draw_face("Sad", np.random.default_rng(1), 128), (100, 60))
    for name in ("a/face.png", "b/face.png", "a/face.jpg"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(tmp_path / "in" / name)
    out = tmp_path / "out"
    assert predict.main([str(tmp_path / "in"), "--ckpt", str(model), "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*_annotated.jpg")) == ["a_face.jpg_annotated.jpg",
                                                                   "a_face.png_annotated.jpg",
                                                                   "b_face.png_annotated.jpg"]
    assert "3 annotated images" in capsys.readouterr().out
    assert predict.main([str(tmp_path / "in"), "--no-detect", "--ckpt", str(model), "--out-dir",
                         str(tmp_path / "crops")]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert "annotated" not in summary and "predictions.csv" in summary
    assert not list((tmp_path / "crops").glob("*_annotated.jpg"))


def face_photo(path, seed=1):
    photo = Image.new("L", (320, 240), 90)
    photo.paste(draw_face("Sad", np.random.default_rng(seed), 128), (100, 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    photo.save(path)
    return path


def test_what_predict_wrote_is_never_read_as_an_input(predict, model, tmp_path, capsys):
    # predict.py d --out-dir d, run twice, classified d/p_annotated.jpg the second time.
    folder = tmp_path / "d"
    face_photo(folder / "p.png")
    for _ in range(2):
        assert predict.main([str(folder), "--explain", "--ckpt", str(model), "--out-dir", str(folder)]) == 0
        assert {r["file"] for r in rows_of(folder / "predictions.csv")} == {str(folder / "p.png")}
    assert (folder / "p_annotated.jpg").is_file() and (folder / "p_face0_gradcam.png").is_file()
    err = capsys.readouterr().err
    assert "left out 4 file(s) that predict.py wrote, which are never inputs" in err
    assert "not images" not in err  # predictions.csv and .json are outputs, not stray files
    # An earlier run's outputs in a folder of the inputs (beside its predictions.csv) are left out too.
    assert predict.main([str(tmp_path), "--ckpt", str(model), "--out-dir", str(tmp_path / "other")]) == 0
    assert {r["file"] for r in rows_of(tmp_path / "other" / "predictions.csv")} == {str(folder / "p.png")}
    assert predict.main([str(folder / "p_annotated.jpg"), "--ckpt", str(model)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_a_boxes_row_naming_several_inputs_by_name_is_left_out_and_a_repeated_row_used_once(predict, model, tmp_path,
                                                                                            capsys):
    for name in ("a/face.png", "b/face.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (256, 256), 120).save(tmp_path / name)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\nface.png,163,177,45,57\nb/face.png,20,20,60,60\nb/face.png,20,20,60,60\n"
                     "b/face.png,100,100,3,3\nb/face.png,200,200,145,197\n")
    inputs = [str(tmp_path / "a" / "face.png"), str(tmp_path / "b" / "face.png")]
    assert predict.main([*inputs, "--boxes", str(boxes), "--ckpt", str(model), "--out-dir", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"{boxes}:2: face.png names 2 inputs ({inputs[0]}, {inputs[1]}); its 1 row(s) left out" in err
    assert f"{boxes}:4: repeats the box of {boxes}:3 for {inputs[1]}; used once" in err
    assert f"{boxes}:5: box 100,100,3,3 of {inputs[1]} cannot be a face (3x3 pixels, under 8 on a side" in err
    # A box mostly beyond the photo is classified as cut to it, and said: what is left is mostly background.
    assert f"{boxes}:6: box 200,200,145,197 lies 89% outside {inputs[1]} (256x256); classified as cut to " \
        "200,200,56,56" in err
    rows = rows_of(tmp_path / "o" / "predictions.csv")
    assert [(r["file"], r["face"], r["status"], r["x"]) for r in rows] == [
        (inputs[0], "", "no --boxes row names it", ""), (inputs[1], "0", "ok", "20"), (inputs[1], "1", "ok", "200")]
    # The JSON says null where the CSV leaves a cell empty: no face index, box or label for the input without a
    # face, no detector score for a box given by hand; every row has the same keys.
    faces = json.loads((tmp_path / "o" / "predictions.json").read_text())["faces"]
    assert [(f["face"], f["detector_score"], f["x"], f["label"]) for f in faces] == [
        (None, None, None, None), (0, None, 20, faces[1]["label"]), (1, None, 200, faces[2]["label"])]
    assert faces[1]["label"] is not None and len({tuple(f) for f in faces}) == 1


def test_pictures_that_cannot_be_faces_are_not_classified_as_face_crops(predict, model, tmp_path, capsys):
    folder = tmp_path / "crops"
    folder.mkdir()
    Image.new("L", (1, 1), 90).save(folder / "dot.png")
    Image.new("L", (10000, 3), 90).save(folder / "line.png")
    draw_face("Happy", np.random.default_rng(0), 48).save(folder / "face.png")
    assert predict.main([str(folder), "--no-detect", "--ckpt", str(model), "--out-dir", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    status = {r["file"].rsplit("/", 1)[-1]: r["status"] for r in rows_of(tmp_path / "o" / "predictions.csv")}
    assert status == {"dot.png": "not a face: 1x1 pixels, under 8 on a side",
                      "line.png": "not a face: 10000x3 pixels, under 8 on a side", "face.png": "ok"}
    assert f"{folder / 'dot.png'}: not a face: 1x1 pixels" in err


def test_a_photo_of_several_frames_says_only_its_first_is_read(predict, model, tmp_path, capsys):
    # A GIF whose face is in frame 2 said "no face found", nothing more.
    blank = Image.new("RGB", (320, 240), (90, 90, 90))
    gif = tmp_path / "moving.gif"
    blank.save(gif, save_all=True, append_images=[Image.open(face_photo(tmp_path / "f.png")).convert("RGB")])
    assert predict.main([str(gif), "--ckpt", str(model), "--out-dir", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"{gif}: 2 frames, only the first is read" in err
    assert rows_of(tmp_path / "o" / "predictions.csv")[0]["status"] == "no face found in the first of 2 frames"


def test_predict_reads_a_folders_images_by_trainings_rule_and_through_links(predict, model, tmp_path, capsys):
    folder = tmp_path / "in"
    face_photo(folder / "photo.png", seed=2).rename(folder / "photo.heic")  # a PNG under another suffix
    Image.open(folder / "photo.heic").save(folder / "also.heic", format="JPEG")
    (folder / "real.heic").write_bytes(b"\0\0\0\x18ftypheic")
    face_photo(tmp_path / "elsewhere" / "linked.png", seed=3)
    (folder / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert predict.main([str(folder), "--ckpt", str(model), "--out-dir", str(tmp_path / "o")]) == 0
    files = sorted(r["file"].rsplit("/", 1)[-1] for r in rows_of(tmp_path / "o" / "predictions.csv"))
    assert files == ["also.heic", "linked.png", "photo.heic"]
    assert capsys.readouterr().err.rstrip().endswith(
        "skipped 1 file(s) of the folders that are not images: " + str(folder / "real.heic"))
