import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from augment import augment_batch, mix_batch, zoom
from dataset import FERSplit, available_splits, load_split, resolve_classes
from errors import DataError
from images import decode_file, image_to_array
from leakage import near_duplicates
from splits import stratified_split


def write_image(path, mode="L", size=(48, 48), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def make_tree(root, spec):
    """spec: {split: {class: count}} -> PNG files with a different gray value per class."""
    for split, classes in spec.items():
        for k, (name, count) in enumerate(classes.items()):
            for i in range(count):
                write_image(root / split / name / f"{i}.png", value=40 * k + i)
    return root


def test_folders_with_different_case_are_the_same_class(tmp_path):
    root = make_tree(tmp_path, {"train": {"Angry": 3, "Happy": 2}, "Test": {"angry": 2, "HAPPY": 1}})
    classes, notes = resolve_classes(root)
    assert classes == ["Angry", "Happy"] and notes == []
    assert available_splits(root) == ["train", "test"]
    test = load_split(root, "test", classes)
    assert test.class_counts() == [2, 1]
    assert test.images.shape == (3, 1, 48, 48) and test.images.dtype == torch.uint8


def test_class_folders_differing_only_in_case_within_train_are_one_class(tmp_path):
    # train/Angry and train/angry were two classes, and test/Angry's images were scored once under each.
    root = make_tree(tmp_path, {"train": {"Angry": 3, "Happy": 2}, "test": {"Angry": 2, "Happy": 1}})
    for i in range(2):
        write_image(root / "train" / "angry" / f"more{i}.png", value=10 + i)
    classes, notes = resolve_classes(root)
    assert classes == ["Angry", "Happy"]
    assert notes == [f"class folders 'Angry' and 'angry' in {root / 'train'} differ only in case, spaces or "
                     "Unicode form: one class, Angry"]
    assert load_split(root, "train", classes).class_counts() == [5, 2]
    assert load_split(root, "test", classes).class_counts() == [2, 1]
    assert resolve_classes(root, ["Happy", "angry"])[1] == notes
    # A folder name with a trailing space ('Happy ', as some unzippers leave it) is the class Happy, and test/Happy
    # is its test folder.
    (root / "train" / "Happy").rename(root / "train" / "Happy ")
    classes, _ = resolve_classes(root)
    assert classes == ["Angry", "Happy"] and load_split(root, "test", classes).class_counts() == [2, 1]


def test_a_broken_link_among_the_images_is_skipped_by_name(tmp_path):
    root = make_tree(tmp_path, {"train": {"Angry": 2, "Happy": 2}})
    (root / "train" / "Happy" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    split = load_split(root, "train", resolve_classes(root)[0])
    assert split.class_counts() == [2, 2] and [Path(src).name for src, _ in split.skipped] == ["gone.png"]
    assert any("gone.png" in w for w in split.warnings())


def test_classes_flag_chooses_and_orders_classes(tmp_path):
    root = make_tree(tmp_path, {"train": {"angry": 2, "disgust": 2, "happy": 3}})
    classes, _ = resolve_classes(root, ["Happy", "Angry"])
    split = load_split(root, "train", classes)
    assert split.classes == ["Happy", "Angry"]
    assert split.class_counts() == [3, 2]
    assert split.ignored == ["disgust"]
    assert any("disgust" in w for w in split.warnings())
    with pytest.raises(DataError, match="unknown class.*Fear"):
        resolve_classes(root, ["Happy", "Fear"])


@pytest.mark.parametrize("mode,value", [("L", 200), ("LA", (200, 255)), ("RGB", (200, 200, 200)),
                                        ("RGBA", (200, 200, 200, 255)), ("CMYK", (0, 0, 0, 55)),
                                        ("I;16", 200 * 257), ("I", 200 * 257), ("F", 200.0)])
def test_every_mode_becomes_the_same_uint8_gray(mode, value):
    im = Image.new(mode, (30, 20), value)
    arr = image_to_array(im, 48, 1)
    assert arr.shape == (1, 48, 48) and arr.dtype == np.uint8
    assert abs(int(arr.mean()) - 200) <= 1


@pytest.mark.parametrize("mode, scale, offset", [("I", 1 << 20, 0), ("I", 1000, -5000), ("F", 2 / 255, -1.0),
                                                 ("F", 1 / 255, 0.0), ("F", 10.0, 3.5)])
def test_wide_and_signed_samples_are_scaled_from_their_range_not_clipped(mode, scale, offset):
    # 32-bit samples above 65535 came out 98% white and floats in -1..1 had their negative half black.
    ramp = np.tile(np.linspace(0, 255, 48), (48, 1))
    wide = Image.fromarray((ramp * scale + offset).astype(np.int32 if mode == "I" else np.float32), mode)
    assert np.abs(image_to_array(wide, 48, 1)[0].astype(int) - np.rint(ramp)).max() <= 1


def test_palette_and_three_channel_output():
    im = Image.new("RGB", (8, 8), (255, 0, 0)).convert("P")
    arr = image_to_array(im, 16, 3)
    assert arr.shape == (3, 16, 16)
    assert arr[0].min() > 200 and arr[1].max() < 50


def test_transparent_pixels_become_white():
    arr = image_to_array(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), 4, 1)
    assert arr.min() == 255


@pytest.mark.parametrize("size", [(1, 1), (640, 480), (4000, 3000)])
def test_odd_sizes_are_resized(size):
    assert image_to_array(Image.new("L", size, 77), 48, 1).shape == (1, 48, 48)


def test_unreadable_files_are_skipped_counted_and_named(tmp_path):
    root = make_tree(tmp_path, {"train": {"Angry": 2, "Happy": 2}})
    (root / "train" / "Angry" / "notes.txt").write_text("not an image")
    good = root / "train" / "Happy" / "0.png"
    jpeg = root / "train" / "Happy" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(jpeg)
    (root / "train" / "Happy" / "truncated.jpg").write_bytes(jpeg.read_bytes()[:300])
    split = load_split(root, "train", ["Angry", "Happy"])
    assert len(split) == 5 and str(good) in split.sources
    assert [p.split("/")[-1] for p, _ in split.skipped] == ["truncated.jpg"]
    assert "skipped 1 unreadable" in split.warnings()[0]
    # A file that is not an image (by its suffix and its content) is named as such, not as a damaged image.
    assert any("left out 1 file(s) that are not images: " in w and w.endswith("notes.txt") for w in split.warnings())


def test_missing_and_empty_data_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_classes(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        resolve_classes(tmp_path / "empty")
    root = make_tree(tmp_path / "d", {"train": {"Angry": 2, "Happy": 0}})
    (root / "train" / "Happy").mkdir(exist_ok=True)
    with pytest.raises(DataError, match="training images for 1 class"):
        resolve_classes(root)


def test_a_class_without_training_images_is_left_out_with_a_note_or_refused_when_asked_for(tmp_path):
    root = make_tree(tmp_path, {"train": {"Angry": 2, "Fear": 0, "Happy": 2}})
    (root / "train" / "Fear").mkdir(exist_ok=True)
    (root / "train" / "Fear" / ".DS_Store").write_bytes(b"junk")
    classes, notes = resolve_classes(root)
    assert classes == ["Angry", "Happy"] and "Fear have no training images and are left out" in notes[0]
    with pytest.raises(DataError, match="--classes names Fear, which have no training images"):
        resolve_classes(root, ["Angry", "Fear"])


def test_hidden_files_and_folders_at_any_depth_are_never_data(tmp_path):
    root = make_tree(tmp_path, {"train": {"Angry": 2, "Happy": 3}})
    # What a Mac zip, Jupyter, Windows and editors leave behind, next to the classes and deeper down.
    for junk in ["train/__MACOSX/Happy/._0.png", "train/Happy/._0.png", "train/Happy/sub/.ipynb_checkpoints/x.png",
                 "train/Angry/deeper/.hidden/y.png", "train/.cache/Angry/z.png", "__MACOSX/train/Angry/._1.png"]:
        write_image(tmp_path / junk, value=255)
    (root / "train" / "Happy" / "sub" / "Thumbs.db").write_bytes(b"junk")
    (root / "train" / "Angry" / "deeper" / "desktop.ini").write_bytes(b"junk")
    classes, notes = resolve_classes(root)
    assert classes == ["Angry", "Happy"] and notes == []
    split = load_split(root, "train", classes)
    assert split.class_counts() == [2, 3] and split.warnings() == []
    assert not (split.images == 255).all(dim=(1, 2, 3)).any()  # no junk image was read as a face


def test_split_missing_a_class_is_an_error_unless_allowed(tmp_path):
    root = make_tree(tmp_path, {"train": {"Angry": 2, "Happy": 2}, "test": {"Angry": 2}})
    with pytest.raises(DataError, match="test split has no readable images for class.*Happy"):
        load_split(root, "test", ["Angry", "Happy"])
    test = load_split(root, "test", ["Angry", "Happy"], allow_missing=True)
    assert test.class_counts() == [2, 0] and "no images of class(es) Happy" in test.warnings()[0]


def write_fer_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)
    return path


def test_fer2013_csv_splits_classes_and_bad_rows(tmp_path):
    px = " ".join(["100"] * 2304)
    rows = [[3, px, "Training"], [0, px, "Training"], [6, px, "Training"], [1, px, "Training"],
            [3, px, "PublicTest"], [0, px, "PrivateTest"],
            [3, "1 2 3", "Training"], [9, px, "Training"], ["x", px, "Training"],
            [3, px.replace("100", "300", 1), "Training"]]
    path = write_fer_csv(tmp_path / "fer2013.csv", rows)
    assert available_splits(path) == ["train", "val", "test"]
    # Fear, Sad and Surprise have no Training rows: left out, not kept as empty classes.
    classes, notes = resolve_classes(path)
    assert classes == ["Angry", "Disgust", "Happy", "Neutral"] and "Fear, Sad, Surprise" in notes[0]
    classes, _ = resolve_classes(path, ["happy", "angry", "neutral"])
    train = load_split(path, "train", classes)
    assert train.labels.tolist() == [0, 1, 2]  # disgust (1) is not asked for
    assert len(train.skipped) == 4
    assert train.images.shape == (3, 1, 48, 48) and int(train.images[0].float().mean()) == 100
    assert len(load_split(path, "test", classes, allow_missing=True)) == 1


def test_a_fer2013_csv_with_no_usable_training_row_says_why(tmp_path):
    px = " ".join(["100"] * 2304)
    # A misspelt Usage left "training images for 0 class(es)" unexplained.
    typo = write_fer_csv(tmp_path / "typo.csv", [[3, px, "Train"], [4, px, "Train"]])
    with pytest.raises(DataError, match=r"has no training rows: .*'Train' \(2 rows, first on line 2\)"):
        resolve_classes(typo)
    # Rows of the wrong size: the reason of the first, not only "no usable images".
    short = write_fer_csv(tmp_path / "short.csv", [[3, "1 2 3", "Training"], [4, "1 2 3", "Training"]])
    classes, _ = resolve_classes(short)
    with pytest.raises(DataError, match=r"2 were skipped, the first \(.*short.csv:2\) because 3 pixel values"):
        load_split(short, "train", classes)
    # A comma inside the pixels shifts them into Usage: the value is shown cut short, with its line.
    shifted = tmp_path / "shifted.csv"
    shifted.write_text(f"emotion,pixels,Usage\n3,{px},Training\n4,{px},Training\n"
                       f"3,{px.replace(' ', ',', 1)},Training\n")
    note = load_split(shifted, "train", resolve_classes(shifted)[0]).notes[0]
    assert "'100 100 100 100 100 ...' (1 row, first on line 4)" in note and len(note) < 200


def test_a_fer2013_csv_that_is_not_utf8_is_named(tmp_path):
    latin = tmp_path / "fer.csv"
    latin.write_bytes("emotion,pixels,Usage\n3,\xe9\xe9,Training\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"fer.csv is not UTF-8 text \(byte 0xe9 on line 2\)"):
        resolve_classes(latin)


def test_stratified_split_is_seeded_and_keeps_class_shares():
    labels = torch.tensor([0] * 500 + [1] * 1500 + [2] * 1000)
    train_idx, val_idx = stratified_split(labels, 0.2, seed=3)
    assert sorted(train_idx + val_idx) == list(range(3000))
    assert torch.bincount(labels[val_idx]).tolist() == [100, 300, 200]
    assert stratified_split(labels, 0.2, seed=3) == (train_idx, val_idx)
    assert stratified_split(labels, 0.2, seed=4)[1] != val_idx


def test_copies_of_training_faces_are_found_even_re_encoded_or_re_toned(tmp_path):
    # Textured images (smoothed noise) stand in for photographs: no two of them correlate by chance.
    rng = np.random.default_rng(0)
    faces = [Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
             for _ in range(20)]
    for i, face in enumerate(faces[:12]):
        face.save(tmp_path / f"train{i}.png")
    faces[0].save(tmp_path / "copy.png")                                          # pixel-identical
    faces[1].save(tmp_path / "jpeg70.jpg", quality=70)                            # re-encoded
    Image.eval(faces[2], lambda v: min(255, int(v * 0.8) + 30)).save(tmp_path / "toned.png")  # re-toned
    for i, face in enumerate(faces[12:]):
        face.save(tmp_path / f"other{i}.png")                                     # faces training never saw

    def split(names):
        images = torch.stack([torch.tensor(decode_file(tmp_path / n, 48, 1)[0]) for n in names])
        return FERSplit("s", images, torch.zeros(len(names), dtype=torch.long), ["x"], names)
    train = split([f"train{i}.png" for i in range(12)])
    test = split(["copy.png", "jpeg70.jpg", "toned.png", *(f"other{i}.png" for i in range(8))])
    pairs = {p["test"]: p for p in near_duplicates(train, test)}
    assert set(pairs) == {"copy.png", "jpeg70.jpg", "toned.png"}
    assert [pairs[n]["train"] for n in ("copy.png", "jpeg70.jpg", "toned.png")] == ["train0.png", "train1.png",
                                                                                 "train2.png"]
    assert pairs["copy.png"]["identical"] and not pairs["jpeg70.jpg"]["identical"]
    assert pairs["jpeg70.jpg"]["similarity"] > 0.97

def test_augment_batch_keeps_shape_and_is_seeded():
    x = torch.randn(8, 1, 48, 48)
    kinds = ["flip", "affine", "jitter", "erase"]
    a = augment_batch(x, kinds, torch.Generator().manual_seed(0))
    b = augment_batch(x, kinds, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)


def test_affine_ranges_set_how_far_the_warp_moves_images():
    x = torch.randn(64, 1, 48, 48)

    def moved(ranges):  # mean absolute change away from the reflected border
        out = augment_batch(x, ["affine"], torch.Generator().manual_seed(0), ranges)
        return (out - x)[..., 12:36, 12:36].abs().mean().item()

    assert moved((0.0, 0.0, 0.0)) < 1e-5  # no rotation, scaling or shift: the identity warp
    assert 0.1 < moved((5.0, 0.05, 0.05)) < moved((10.0, 0.1, 0.1)) < moved((20.0, 0.2, 0.2))
    # Rotation alone turns images about their centre, so it leaves a ring pattern centred there unchanged.
    coords = torch.arange(48.0) - 23.5
    rings = torch.cos(coords.view(48, 1).hypot(coords.view(1, 48)) / 3).expand(64, 1, 48, 48)
    rotated = augment_batch(rings, ["affine"], torch.Generator().manual_seed(0), (30.0, 0.0, 0.0))
    assert torch.allclose(rotated[..., 8:40, 8:40], rings[..., 8:40, 8:40], atol=0.05)


def test_mixup_blends_each_image_with_its_partner_by_lam():
    x = torch.randn(16, 1, 8, 8)
    mixed, partner, lam = mix_batch(x, "mixup", 0.4, torch.Generator().manual_seed(0))
    assert 0 < lam < 1 and sorted(partner.tolist()) == list(range(16))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner], atol=1e-6)
    again = mix_batch(x, "mixup", 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], mixed) and again[2] == lam


def test_cutmix_pastes_one_box_whose_area_sets_lam():
    # Distinct constant images, so each output pixel shows whether it came from the image or its partner.
    x = torch.arange(32.0).view(32, 1, 1, 1).expand(32, 1, 12, 12).contiguous()
    for seed in range(20):
        mixed, partner, lam = mix_batch(x, "cutmix", 1.0, torch.Generator().manual_seed(seed))
        from_partner = mixed != x
        moved = partner != torch.arange(32)
        assert torch.all((mixed == x) | (mixed == x[partner]))
        # Every image whose partner is another image loses the same box, and lam is the share it keeps.
        shares = 1 - from_partner[moved].flatten(1).float().mean(1)
        assert torch.allclose(shares, torch.full_like(shares, lam))
        assert not from_partner[~moved].any()
    with pytest.raises(ValueError, match="unknown mix"):
        mix_batch(x, "mosaic", 1.0, torch.Generator().manual_seed(0))


def test_zoom_magnifies_about_the_centre():
    # A horizontal ramp: zooming in by 2 halves its slope and keeps its middle value where it was.
    ramp = torch.arange(48.0).view(1, 1, 1, 48).expand(2, 3, 48, 48)
    zoomed = zoom(ramp, 2.0)
    assert zoomed.shape == ramp.shape
    middle = zoomed[..., 8:40]  # away from the reflected border
    assert torch.allclose(middle.diff(dim=-1), torch.full_like(middle.diff(dim=-1), 0.5), atol=1e-4)
    assert torch.allclose(zoomed[..., 23:25].mean(-1), ramp[..., 23:25].mean(-1), atol=1e-4)
    assert torch.allclose(zoom(ramp, 1.0), ramp, atol=1e-4)
    # Zooming out by 2 doubles the slope near the centre.
    assert torch.allclose(zoom(ramp, 0.5)[..., 20:28].diff(dim=-1), torch.full((2, 3, 48, 7), 2.0), atol=1e-4)


def test_flip_alone_mirrors_exactly():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = augment_batch(x, ["flip"], torch.Generator().manual_seed(0))
    mirrored = torch.flip(x, dims=[3])
    flipped = [torch.allclose(o, m, atol=1e-5) for o, m in zip(out, mirrored)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_folders_reached_by_links_are_read_once_each_and_loops_end(tmp_path):
    # A linked sub-folder inside a class folder gave nothing, while a linked class folder was read.
    root = make_tree(tmp_path / "d", {"train": {"Angry": 2, "Happy": 2}})
    elsewhere = make_tree(tmp_path / "elsewhere", {"x": {"happy_faces": 3}}) / "x" / "happy_faces"
    happy = root / "train" / "Happy"
    (happy / "more").symlink_to(elsewhere, target_is_directory=True)
    (happy / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice
    (happy / "loop").symlink_to(happy, target_is_directory=True)  # a link to its own folder
    (happy / "up").symlink_to(root / "train", target_is_directory=True)  # to the split: Angry's files as Happy's
    (happy / "copy.png").symlink_to(happy / "0.png")  # a file by a second path
    split = load_split(root, "train", ["Angry", "Happy"])
    assert split.class_counts() == [2, 5] and split.warnings() == []
    assert sorted(Path(s).name for s in split.sources if "Happy" in s) == ["0.png", "0.png", "1.png", "1.png", "2.png"]


def test_class_names_in_either_unicode_form_are_one_class(tmp_path):
    import unicodedata

    nfd, nfc = (unicodedata.normalize(form, "Ünïcode") for form in ("NFD", "NFC"))
    assert nfd != nfc
    root = make_tree(tmp_path, {"train": {nfd: 2, "Happy": 2}, "test": {nfc: 3, "Happy": 1}})
    classes, notes = resolve_classes(root)
    assert classes == ["Happy", nfc] and notes == []
    test = load_split(root, "test", classes)
    assert test.class_counts() == [1, 3] and test.warnings() == []
    assert resolve_classes(root, [nfd, "happy"])[0] == [nfc, "happy"]


def test_images_that_cannot_be_faces_are_skipped_counted_and_named(tmp_path):
    from images import why_not_a_face

    assert why_not_a_face(8, 8) is None and why_not_a_face(32, 8) is None
    assert why_not_a_face(7, 40) == "7x40 pixels, under 8 on a side"
    assert why_not_a_face(33, 8) == "33x8 pixels, 4.1:1, beyond 4:1"
    root = make_tree(tmp_path, {"train": {"Angry": 2, "Happy": 2}})
    write_image(root / "train" / "Happy" / "dot.png", size=(1, 1))
    write_image(root / "train" / "Happy" / "line.png", size=(10000, 3))
    write_image(root / "train" / "Happy" / "strip.png", size=(400, 20))
    split = load_split(root, "train", ["Angry", "Happy"])
    assert split.class_counts() == [2, 2]
    (warning,) = split.warnings()
    assert "skipped 3 image(s) that cannot be faces" in warning
    assert "dot.png (1x1 pixels, under 8 on a side)" in warning and "line.png (10000x3 pixels, under 8" in warning
    assert "strip.png (400x20 pixels, 20:1, beyond 4:1)" in warning


def test_a_file_of_several_frames_is_read_by_its_first_and_named(tmp_path):
    from images import frames_note, read_image

    root = make_tree(tmp_path, {"train": {"Angry": 2, "Happy": 2}})
    frames = [Image.new("L", (48, 48), v) for v in (10, 200, 90)]
    gif = root / "train" / "Happy" / "moving.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert read_image(gif).info["frames"] == 3 and frames_note(read_image(gif)) == "3 frames, only the first is read"
    assert frames_note(read_image(root / "train" / "Happy" / "0.png")) is None
    split = load_split(root, "train", ["Angry", "Happy"])
    assert split.class_counts() == [2, 3]
    assert split.warnings() == [f"train: 1 file(s) hold several frames (animations, multi-page TIFFs); only the first "
                                f"frame of each is read: {gif} (3 frames)"]


def test_a_file_is_an_image_by_its_suffix_or_its_content(tmp_path):
    from images import is_image

    root = make_tree(tmp_path, {"train": {"Angry": 2, "Happy": 2}})
    Image.new("L", (48, 48), 7).save(root / "train" / "Happy" / "photo.heic", format="JPEG")  # a JPEG misnamed
    Image.new("L", (48, 48), 9).save(root / "train" / "Happy" / "nosuffix", format="PNG")
    (root / "train" / "Happy" / "real.heic").write_bytes(b"\0\0\0\x18ftypheic")  # HEIC, which PIL does not read
    assert is_image(root / "train" / "Happy" / "photo.heic") and is_image(root / "train" / "Happy" / "nosuffix")
    assert not is_image(root / "train" / "Happy" / "real.heic")
    split = load_split(root, "train", ["Angry", "Happy"])
    assert split.class_counts() == [2, 4] and split.skipped == []
    assert split.warnings() == [f"train: left out 1 file(s) that are not images: {root / 'train/Happy/real.heic'}"]


def test_known_names_of_the_same_emotions_are_read_as_the_models_classes(tmp_path):
    root = make_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"Angry": 2, "Happy": 3, "Fear": 1, "Joy": 1}})
    classes = ["anger", "happiness", "fear", "contempt"]
    test = load_split(root, "test", classes, allow_missing=True)
    assert test.class_counts() == [2, 3, 1, 0] and test.ignored == ["Joy"] and test.coverage_warning() is None
    assert f"test: read {root / 'test'}'s folders Angry as anger, Happy as happiness: names of the same emotions " \
           "(--class-map DATA=MODEL,... reads others)" in test.warnings()
    # A folder that is a class by its own name is not taken by its synonym too; --class-map wins over synonyms.
    (root / "test" / "anger").mkdir()
    write_image(root / "test" / "anger" / "x.png")
    assert load_split(root, "test", classes, allow_missing=True).class_counts() == [1, 3, 1, 0]
    mapped = load_split(root, "test", classes, allow_missing=True, class_map={"Joy": "happiness"})
    assert mapped.class_counts() == [1, 1, 1, 0]
    # Most of the data read as no class is said loudly, naming --class-map.
    few = load_split(root, "test", ["fear", "neutral"], allow_missing=True)
    assert "ONLY 1 OF 8 test images are scored" in few.coverage_warning() and "--class-map" in few.coverage_warning()


def test_a_fer2013_csv_is_read_under_fer_plus_names(tmp_path):
    px = " ".join(["100"] * 2304)
    path = write_fer_csv(tmp_path / "fer2013.csv", [[0, px, "PrivateTest"], [3, px, "PrivateTest"],
                                                    [1, px, "PrivateTest"]])
    # FER+'s model on FER2013's CSV: a KeyError traceback for 'happiness'; contempt has no FER2013 row.
    test = load_split(path, "test", ["neutral", "happiness", "anger", "contempt"], allow_missing=True)
    assert test.class_counts() == [0, 1, 1, 0] and test.unscored == {"Disgust": 1}
    assert any("Angry as anger, Happy as happiness" in w for w in test.warnings())
