"""Face-expression data: folder trees, the FER2013 CSV and FER+'s votes, decoded once into uint8 tensors.

Layouts read:
- folders: ROOT/<split>/<Class>/<image>, split one of train, val, test (also Training, PublicTest,
  PrivateTest, validation); class names are matched case-insensitively (`angry` == `Angry`). Hidden files and
  folders (a leading dot, macOS's __MACOSX/ and ._name files, Thumbs.db) are never data, at any depth.
- the Kaggle FER2013 CSV (`emotion,pixels,Usage`): Training -> train, PublicTest -> val, PrivateTest -> test.
- FER+ (ferplus.py): Microsoft's folders ROOT/FER2013Train|FER2013Valid|FER2013Test/ with a label.csv each
  (image name, face box, ten vote counts), or FER+'s fer2013new.csv (Usage, Image name, ten vote counts) with
  the fer2013.csv whose pixels it labels beside it, same row order.

Every image goes through images.py (the one decoding every path uses: training, test, predict, video) and is
brought to `channels` x `size` x `size` uint8 once, at load time; training then augments whole batches on the
device (augment.py), so no epoch decodes a file again and no DataLoader worker is needed. Held-out splits are
splits.py's, copies across splits leakage.py's.
"""

import csv
import itertools
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ferplus
from errors import DataError, some, text_lines
from images import MAX_FACE_ASPECT, MIN_FACE_SIDE, data_files, decode_many, image_to_array, is_hidden, is_image

FER2013_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
ASSIGNMENT_CLASSES = ["Angry", "Happy", "Neutral", "Sad", "Surprise"]
SPLIT_ALIASES = {
    "train": ("train", "training", "fer2013train"),
    "val": ("val", "valid", "validation", "publictest", "fer2013valid"),
    "test": ("test", "testing", "privatetest", "fer2013test"),
}
CSV_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}  # Usage, lower-cased -> split
FERPLUS_CSV_HEADER = ("usage", "image name", *(c.lower() for c in ferplus.VOTE_COLUMNS))
# Names of the same emotions in FER2013 (Angry, Happy...), FER+ (anger, happiness...) and other sets (KDEF's
# afraid, surprised; RAF-DB's and CK+'s nouns): a model's class is read from a data folder or column named by
# another of its group (match_classes), with a note.
CLASS_SYNONYMS = (("angry", "anger"), ("happy", "happiness"), ("sad", "sadness"), ("surprise", "surprised"),
                  ("fear", "fearful", "afraid"), ("disgust", "disgusted"), ("neutral", "neutrality"),
                  ("contempt", "contemptuous"))


@dataclass
class FERSplit:
    """One split held in memory: images[i] (uint8, C x H x W) has label labels[i] into classes.

    Vote data (FER+) also has votes (float N x 10, ferplus.VOTE_COLUMNS order: the raw counts) and, for a training
    split, targets (float N x classes: what ferplus.label_mode made of the votes).
    """
    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list
    sources: list
    skipped: list = field(default_factory=list)   # (source, reason) of files or rows that did not decode
    ignored: list = field(default_factory=list)   # class folders present but not asked for
    votes: torch.Tensor = None
    targets: torch.Tensor = None
    notes: list = field(default_factory=list)     # other things a user should know about how it was read
    vote_names: list = None  # the votes' name of each class, where it differs from classes (test.py --class-map)
    unscored: dict = field(default_factory=dict)  # images of the data's classes read as none: {data's name: count}

    def __len__(self):
        return len(self.labels)

    def subset(self, indices, name=None):
        indices = torch.as_tensor(indices, dtype=torch.long)
        return FERSplit(name or self.name, self.images[indices], self.labels[indices], self.classes,
                        [self.sources[i] for i in indices.tolist()],
                        votes=None if self.votes is None else self.votes[indices],
                        targets=None if self.targets is None else self.targets[indices], vote_names=self.vote_names)

    def class_counts(self):
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def warnings(self, class_map=True):
        """One line per thing a user should know about how this split was read; class_map: the reader has
        --class-map (test.py), which the line on ignored class folders names."""
        lines = []
        if self.skipped:
            shown = "; ".join(f"{src} ({why})" for src, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            lines.append(f"{self.name}: skipped {len(self.skipped)} unreadable file(s) or row(s): {shown}{more}")
        if self.ignored:
            hint = " (--class-map FOLDER=CLASS reads a folder as a class)" if class_map else ""
            lines.append(f"{self.name}: ignored class folder(s) not in the class list: {', '.join(self.ignored)}"
                         + hint)
        return lines + [f"{self.name}: {note}" for note in self.notes]

    def coverage_warning(self):
        """A loud line when most of the data's images belong to classes read as none of the class list (a model
        scored on data that names its classes otherwise), or None."""
        left_out = sum(self.unscored.values())
        if left_out <= len(self):
            return None
        shown = ", ".join(f"{name} ({n})" for name, n in self.unscored.items())
        return (f"ONLY {len(self)} OF {len(self) + left_out} {self.name} images are scored: the data's class(es) "
                f"{shown} are none of the model's ({', '.join(self.classes)}); read them as the model's classes with "
                "--class-map DATA=MODEL,...")


# ---------------------------------------------------------------------------------------------------------
# Decoding any image: one function for every path


def _sorted_decoded(sources, decoded):
    """Decoded files (sources[i] gave decoded[i]) -> (indices of those with an array, skipped [(source, why)] of the
    unreadable ones, notes on those that cannot be faces and those read by their first frame)."""
    keep = [i for i, d in enumerate(decoded) if d.array is not None]
    skipped = [(str(s), d.why) for s, d in zip(sources, decoded) if d.array is None and not d.not_a_face]
    unfit = [f"{s} ({d.why})" for s, d in zip(sources, decoded) if d.not_a_face]
    frames = [f"{s} ({d.note.split(',')[0]})" for s, d in zip(sources, decoded) if d.note]
    notes = [f"skipped {len(unfit)} image(s) that cannot be faces (under {MIN_FACE_SIDE} pixels on a side or beyond "
             f"{MAX_FACE_ASPECT:g}:1): {some(unfit)}"] if unfit else []
    notes += [f"{len(frames)} file(s) hold several frames (animations, multi-page TIFFs); only the first frame of "
              f"each is read: {some(frames)}"] if frames else []
    return keep, skipped, notes


# ---------------------------------------------------------------------------------------------------------
# Finding the layout, splits and classes


def _subdirs(folder):
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not is_hidden(p, folder))


def _check_root(root):
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if root.is_dir() and not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty")
    return root


def _csv_header(path):
    return tuple(name.strip().lower() for name in next(csv.reader(text_lines(path)), []))


def layout(root):
    """What the data at root is: "folders", "ferplus" (Microsoft's FER+ folders), "fer2013_csv" or
    "ferplus_csv" (fer2013new.csv). DataError for a path that is none of them."""
    root = _check_root(root)
    if root.is_dir():
        train = split_dir(root, "train")
        return "ferplus" if train is not None and (train / "label.csv").is_file() else "folders"
    if root.suffix.lower() == ".csv":
        header = _csv_header(root)
        if header[:len(FERPLUS_CSV_HEADER)] == FERPLUS_CSV_HEADER:
            return "ferplus_csv"
        if {"emotion", "pixels", "usage"} <= set(header):
            return "fer2013_csv"
        raise DataError(f"{root} is not a FER2013 CSV (columns emotion,pixels,Usage) nor FER+'s fer2013new.csv "
                        f"(columns Usage,Image name,{','.join(ferplus.VOTE_COLUMNS)}); its header is "
                        f"{','.join(header) or 'empty'}")
    raise DataError(f"data path {root} is neither a folder nor a FER2013 or FER+ .csv file")


def split_dir(root, split):
    """The folder of `split` under root (case-insensitive, with aliases), or None."""
    by_name = {p.name.lower(): p for p in _subdirs(root)}
    for alias in SPLIT_ALIASES[split]:
        if alias in by_name:
            return by_name[alias]
    return None


def _csv_rows(path, required):
    """(line number, {column: value}) of a CSV whose header names (stripped, case-insensitive) include
    `required`; DataError naming the file otherwise."""
    reader = csv.reader(text_lines(path))
    header = [name.strip().lower() for name in next(reader, [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path} is not a FER2013 CSV: it lacks the column(s) {', '.join(missing)}")
    for line, values in enumerate(reader, start=2):
        if values:
            yield line, dict(zip(header, values))


def _usage_split(row, unknown=None, line=None):
    """A CSV row's Usage -> train, val or test (case and surrounding spaces ignored), or None; a value that names
    no split is counted in unknown ({value: [rows, first line]}) when given."""
    value = (row.get("usage") or "").strip()
    split = CSV_USAGE.get(value.lower())
    if split is None and unknown is not None:
        unknown.setdefault(value, [0, line])[0] += 1
    return split


def _csv_usages(path):
    """-> (the splits present, {unknown Usage value: [rows, first line]})."""
    found, unknown = set(), {}
    for line, row in _csv_rows(path, ("usage",)):
        found.add(_usage_split(row, unknown, line))
    return found - {None}, unknown


def available_splits(root):
    """The splits (train, val, test) the data at root has."""
    kind = layout(root)
    root = Path(root)
    if kind in ("fer2013_csv", "ferplus_csv"):
        found, _ = _csv_usages(root)
        return [s for s in SPLIT_ALIASES if s in found]
    if kind == "ferplus":
        folders = {s: split_dir(root, s) for s in SPLIT_ALIASES}
        return [s for s, d in folders.items() if d is not None and (d / "label.csv").is_file()]
    return [s for s in SPLIT_ALIASES if split_dir(root, s) is not None]


def resolve_classes(root, classes=None):
    """The ordered class list -> (classes, notes): `classes` as given (checked against the data), else the data's
    own: the sorted class folders of train, FER2013's seven for its CSV, FER+'s eight emotions for its votes.

    A class of the data's own list with no training image is dropped, and a note says so; one named in
    `classes` is refused. Class folders whose names differ only in case or surrounding spaces are one class (a note
    says so). DataError names the path and the classes.
    """
    kind = layout(root)
    root = Path(root)
    notes = []
    if kind == "fer2013_csv":
        found = FER2013_CLASSES
        counts, unknown = {}, {}
        for line, row in _csv_rows(root, ("emotion", "usage")):
            if _usage_split(row, unknown, line) == "train":
                counts[row["emotion"].strip()] = counts.get(row["emotion"].strip(), 0) + 1
        if unknown and not counts:  # what the error below would leave unsaid
            raise DataError(f"{root} has no training rows: {_unknown_usage_note(unknown)}")
        empty = [c for i, c in enumerate(found) if not counts.get(str(i))]
    elif kind in ("ferplus", "ferplus_csv"):
        found = list(ferplus.EMOTIONS)
        # An emotion no training face has as its majority (the scoring protocol) cannot be learnt or scored.
        votes = torch.tensor(_train_votes(root, kind), dtype=torch.float32).reshape(-1, len(ferplus.VOTE_COLUMNS))
        keep, labels, _, _ = ferplus.label_mode(votes, found, "majority")
        present = set(labels[keep].tolist())
        empty = [c for i, c in enumerate(found) if i not in present]
    else:
        train = split_dir(root, "train")
        if train is None:
            raise DataError(f"{root} has no train/ folder (expected {root}/train/<Class>/*.jpg)")
        # Folders whose names differ only in case (or surrounding spaces) are one class, as every split's loader
        # reads them.
        folders = {}
        for p in _subdirs(train):
            folders.setdefault(class_key(p.name), []).append(p)
        found = [class_name(same[0].name) for same in folders.values()]
        if not found:
            raise DataError(f"{train} has no class folders (expected {train}/<Class>/*.jpg)")
        empty = [class_name(same[0].name) for same in folders.values()
                 if not any(map(is_image, data_files(*same)))]
        notes = [f"class folders {' and '.join(repr(p.name) for p in same)} in {train} differ only in case, "
                 f"spaces or Unicode form: one class, {class_name(same[0].name)}"
                 for same in folders.values() if len(same) > 1]
    if classes is None:
        kept = [c for c in found if c not in empty]
        if len(kept) < 2:
            raise DataError(f"{root} has training images for {len(kept)} class(es) ({', '.join(kept) or 'none'}); "
                            "a classifier needs two or more")
        notes += [f"class(es) {', '.join(empty)} have no training images and are left out; "
                  f"the classes are {', '.join(kept)}"] if empty else []
        return kept, notes
    classes = [class_name(c) for c in classes]
    lower = {class_key(c): c for c in found}
    unknown = [c for c in classes if class_key(c) not in lower]
    if unknown:
        raise DataError(f"unknown class(es) {', '.join(unknown)} in --classes; {root} has: {', '.join(found)}")
    if len(set(map(class_key, classes))) != len(classes):
        raise DataError(f"--classes names a class twice: {', '.join(classes)}")
    empty_asked = [c for c in classes if lower[class_key(c)] in empty]
    if empty_asked:
        raise DataError(f"--classes names {', '.join(empty_asked)}, which have no training images in {root}; "
                        f"leave them out of --classes")
    return classes, notes


def class_name(text):
    """A class name as read from a folder, a flag or a checkpoint: without surrounding spaces, in Unicode's
    composed form (NFC: 'Ü' one character, as Windows and Linux write it, not 'U' and a combining diaeresis, as
    macOS wrote folder names)."""
    return unicodedata.normalize("NFC", text).strip()


def class_key(text):
    """What two class names are compared by: class_name, in lower case (`angry` == `Angry`)."""
    return unicodedata.normalize("NFC", class_name(text).lower())


def match_classes(classes, data_names, class_map=None, data="the data", kind="class"):
    """How a dataset whose classes are named data_names is read as `classes` -> ({class_key of a data name:
    class_key of the class it is read as}, notes). A data name is read as the class class_map ({data name: class})
    sends it to; else as the class of its own name; else as the one class of its CLASS_SYNONYMS group (happiness as
    Happy, Angry as anger) that no data name reaches already, with a note. Data names that are read as no class
    are absent. data, kind: what holds the data names and what they name (a folder, a class), as notes say it.
    DataError for a class_map that sends a name to no class."""
    class_map = class_map or {}
    wanted = {class_key(c): c for c in classes}
    unknown = {k: v for k, v in class_map.items() if class_key(v) not in wanted}
    if unknown:
        raise DataError(f"--class-map sends {', '.join(unknown)} to {', '.join(unknown.values())}, which is not a "
                        f"class of the model ({', '.join(classes)})")
    sent = {class_key(k): class_key(v) for k, v in class_map.items()}
    names = {class_key(d): class_name(d) for d in data_names}
    read_as = {d: sent.get(d, d) for d in names if d in sent or d in wanted}
    synonyms = {}
    for d in names:
        if d in read_as:
            continue
        group = next((set(g) for g in CLASS_SYNONYMS if d in g), set())
        free = [c for c in wanted if c in group and c not in read_as.values()]
        if len(free) == 1:
            synonyms[d] = free[0]
    read_as.update(synonyms)
    kinds = kind + ("es" if kind.endswith("s") else "s")
    notes = [f"read {data}'s {kinds} {', '.join(f'{names[d]} as {wanted[c]}' for d, c in synonyms.items())}: names "
             "of the same emotions (--class-map DATA=MODEL,... reads others)"] if synonyms else []
    unmatched = [k for k in class_map if class_key(k) not in names]
    notes += [f"--class-map names {', '.join(unmatched)}, which {data} has no {kind} of"] if unmatched else []
    return read_as, notes


def _data_names(classes, data_names, class_map, data):
    """The data's name for each of classes under match_classes (the class's own name where the data has none for
    it) -> (names, match_classes' notes)."""
    read_as, notes = match_classes(classes, data_names, class_map, data)
    name_of = {class_key(d): d for d in data_names}
    named = {c: name_of[d] for d, c in read_as.items()}
    return [named.get(class_key(c), c) for c in classes], notes


def load_split(root, split, classes, size=48, channels=1, label_mode="majority", allow_missing=False,
               class_map=None):
    """Decode one split (train, val or test) of the data at root into a FERSplit over `classes`.

    Vote data keeps the faces label_mode trains on (ferplus.label_mode; "majority", the default, is also the
    scoring protocol) with their targets. allow_missing: a class with no images in this split is a note, not a
    DataError (scoring a model on data with fewer classes). class_map: {data's class name: model's class name}
    for data that names classes otherwise (folders only).
    """
    kind = layout(root)
    root = Path(root)
    if kind == "folders":
        result = _load_folder_split(root, split, classes, size, channels, class_map)
    else:
        # The CSVs name their own classes: each of the model's classes is read as the data's name for it.
        data_names = FER2013_CLASSES if kind == "fer2013_csv" else ferplus.EMOTIONS
        named, notes = _data_names(classes, data_names, class_map, root)
        if kind == "fer2013_csv":
            result = _load_csv_split(root, split, named, size, channels)
        else:
            unknown = [c for c in named if c.lower() not in ferplus.EMOTIONS]
            if unknown:
                raise DataError(f"{root}: FER+ has no emotion {', '.join(unknown)}; it has "
                                f"{', '.join(ferplus.EMOTIONS)} (test.py --class-map anger=Angry,... reads them as "
                                "the model's names)")
            loader = _load_ferplus_folder if kind == "ferplus" else _load_ferplus_csv
            result = _select_votes(loader(root, split, size, channels), named, label_mode)
            result.vote_names = named if named != list(classes) else None
        result.classes = list(classes)
        result.notes[:0] = notes
    empty = [c for c, n in zip(classes, result.class_counts()) if n == 0]
    if len(result) == 0:
        hint = (f"; its class folders are {', '.join(result.ignored)} (test.py --class-map DATA=MODEL,... reads "
                "them as the model's names)") if result.ignored else ""
        if result.skipped:
            source, why = result.skipped[0]
            hint += f"; {len(result.skipped)} were skipped, the first ({source}) because {why}"
        raise DataError(f"{root}: no usable images in its {split} split for classes {', '.join(classes)}{hint}")
    if empty and not allow_missing:
        raise DataError(f"{root}: the {split} split has no readable images for class(es) {', '.join(empty)}")
    if empty:
        result.notes.append(f"no images of class(es) {', '.join(empty)}: they are scored without support")
    return result


def _load_folder_split(root, split, classes, size, channels, class_map):
    folder = split_dir(root, split)
    if folder is None:
        raise DataError(f"{root} has no {split}/ folder")
    # The folders of each class: its own name (in any case or Unicode form), a known synonym, or a data name that
    # class_map sends to it.
    subdirs = _subdirs(folder)
    read_as, notes = match_classes(classes, [p.name for p in subdirs], class_map, folder, "folder")
    by_class = {}
    for p in subdirs:
        by_class.setdefault(read_as.get(class_key(p.name)), []).append(p)
    ignored = by_class.pop(None, [])
    paths, labels, not_images = [], [], []
    for label, name in enumerate(classes):
        for f in data_files(*by_class.get(class_key(name), [])):
            if is_image(f):
                paths.append(f)
                labels.append(label)
            else:
                not_images.append(f)
    decoded = decode_many(paths, size, channels)
    keep, skipped, decode_notes = _sorted_decoded(paths, decoded)
    images = (torch.from_numpy(np.stack([decoded[i].array for i in keep])) if keep
              else torch.zeros(0, channels, size, size, dtype=torch.uint8))
    if not_images:
        notes.append(f"left out {len(not_images)} file(s) that are not images: {some(not_images)}")
    unscored = {p.name: sum(map(is_image, data_files(p))) for p in ignored}
    return FERSplit(split, images, torch.tensor([labels[i] for i in keep], dtype=torch.long), list(classes),
                    [str(paths[i]) for i in keep], skipped, ignored=[p.name for p in ignored],
                    notes=notes + decode_notes, unscored={k: n for k, n in unscored.items() if n})


def _pixels(text):
    """A FER2013 pixels cell -> uint8 48 x 48 array; ValueError naming the bad value and its position."""
    values = text.split()
    if len(values) != 48 * 48:
        raise ValueError(f"{len(values)} pixel values, expected 2304")
    pixels = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            pixels[i] = int(v)
        except ValueError:
            raise ValueError(f"pixel value {v!r} (number {i + 1}) is not an integer") from None
        if not 0 <= pixels[i] <= 255:
            raise ValueError(f"pixel value {v} (number {i + 1}) is outside 0..255")
    return pixels.astype(np.uint8).reshape(48, 48)


def _unknown_usage_note(unknown):
    """unknown ({Usage value: [rows, first line]}, _usage_split) -> one line naming each value (cut short: a row
    whose pixels hold a comma shifts them into Usage) with its count and first line."""
    shown = ", ".join(f"{u if len(u) <= 24 else u[:20] + '...'!r} ({n} row{'s' if n > 1 else ''}, first on line "
                      f"{line})" for u, (n, line) in sorted(unknown.items()))
    return f"rows with an unknown Usage were left out: {shown}; Usage is Training, PublicTest or PrivateTest"


def _load_csv_split(path, split, classes, size, channels):
    index_of = {c.lower(): i for i, c in enumerate(FER2013_CLASSES)}
    # A class FER2013 has no name for (FER+'s contempt) has no row.
    label_of = {index_of[c.lower()]: label for label, c in enumerate(classes) if c.lower() in index_of}
    arrays, labels, sources, skipped, unknown, unscored = [], [], [], [], {}, {}
    for line, row in _csv_rows(path, ("emotion", "pixels", "usage")):
        if _usage_split(row, unknown, line) != split:
            continue
        source = f"{path}:{line}"
        try:
            emotion = int(row["emotion"].strip())
            if emotion not in range(len(FER2013_CLASSES)):
                raise ValueError(f"emotion {emotion} is not 0-6")
            pixels = _pixels(row.get("pixels", ""))
        except (ValueError, TypeError, AttributeError) as e:
            skipped.append((source, str(e)[:120]))
            continue
        if emotion not in label_of:
            unscored[FER2013_CLASSES[emotion]] = unscored.get(FER2013_CLASSES[emotion], 0) + 1
            continue
        arrays.append(image_to_array(Image.fromarray(pixels, "L"), size, channels))
        labels.append(label_of[emotion])
        sources.append(source)
    images = (torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, channels, size, size, dtype=torch.uint8))
    result = FERSplit(split, images, torch.tensor(labels, dtype=torch.long), list(classes), sources, skipped,
                      unscored=unscored)
    if unknown:
        result.notes.append(_unknown_usage_note(unknown))
    return result


def _votes(values):
    """A row's ten vote counts (VOTE_COLUMNS order) -> list of float; ValueError saying what is wrong."""
    votes = [float(v) for v in values]
    if len(votes) != len(ferplus.VOTE_COLUMNS) or min(votes) < 0:
        raise ValueError(f"expected {len(ferplus.VOTE_COLUMNS)} vote counts >= 0, got {','.join(values)}")
    if sum(votes) == 0:
        raise ValueError("no votes (all ten counts are 0)")
    return votes


def _csv_row_votes(row):
    """The ten vote counts of a fer2013new.csv row (a _csv_rows dict) -> list of float; ValueError naming what is
    wrong, a short row included."""
    values = [row.get(c) for c in FERPLUS_CSV_HEADER[2:]]
    if None in values:
        raise ValueError(f"expected {len(values)} vote counts, the row has {len(values) - values.count(None)}")
    return _votes(values)


def _is_header(line, row):
    """Whether a label.csv row is a header line (Microsoft's files have none; edited copies sometimes do)."""
    return line == 1 and any(v.strip().lower() in {c.lower() for c in ferplus.VOTE_COLUMNS} for v in row)


def _label_csv_rows(folder):
    """-> (names, votes, skipped, every name the file lists) of a FER+ folder's label.csv; DataError if empty."""
    path = folder / "label.csv"
    names, votes, skipped, listed = [], [], [], set()
    for line, row in enumerate(csv.reader(text_lines(path)), start=1):
        if not row or _is_header(line, row):
            continue
        listed.add(row[0].strip())  # listed even when its votes are bad: not "unlisted"
        try:
            votes.append(_votes([v.strip() for v in row[2:]]))
            names.append(row[0].strip())
        except (ValueError, IndexError) as e:
            skipped.append((f"{path}:{line}", str(e)[:120]))
    if not listed:
        raise DataError(f"{path} is empty: it should list each image with its face box and ten vote counts")
    return names, votes, skipped, listed


def _ferplus_folder(root, split):
    """The folder of a split of Microsoft's FER+ layout; DataError when it or its label.csv is missing."""
    folder = split_dir(root, split)
    if folder is None or not (folder / "label.csv").is_file():
        raise DataError(f"{root} has no {split} folder with a label.csv (FER2013Train, FER2013Valid, FER2013Test)")
    return folder


def _train_votes(root, kind):
    """The vote rows of a FER+ training split, without decoding a pixel (list of 10-float lists)."""
    if kind == "ferplus":
        return _label_csv_rows(_ferplus_folder(root, "train"))[1]
    votes = []
    for _, row in _csv_rows(root, FERPLUS_CSV_HEADER):
        if _usage_split(row) == "train" and row.get("image name", "").strip():
            try:
                votes.append(_csv_row_votes(row))
            except ValueError:
                continue  # named when the split is loaded
    return votes


def _load_ferplus_folder(root, split, size, channels):
    """Microsoft's FER+ layout: split_dir/label.csv rows `name, box, 10 votes` and the images beside it.
    -> an unselected FERSplit (votes set, labels not yet)."""
    folder = _ferplus_folder(root, split)
    names, votes, skipped, listed = _label_csv_rows(folder)
    present = {p.name for p in data_files(folder) if p.name != "label.csv" and p.parent == folder}
    missing = [n for n in names if n not in present]
    unlisted = sorted(present - listed)
    kept = [i for i, n in enumerate(names) if n in present]
    decoded = decode_many([folder / names[i] for i in kept], size, channels)
    decoded_ok, unreadable, notes = _sorted_decoded([folder / names[i] for i in kept], decoded)
    good = [kept[j] for j in decoded_ok]
    arrays = [decoded[j].array for j in decoded_ok]
    result = _unselected(split, arrays, [votes[i] for i in good], [str(folder / names[i]) for i in good],
                         skipped + unreadable, size, channels)
    result.notes += notes
    if missing:
        result.notes.append(f"{len(missing)} image(s) listed in {folder / 'label.csv'} are missing, e.g. "
                            f"{', '.join(missing[:3])}")
    if unlisted:
        result.notes.append(f"{len(unlisted)} file(s) in {folder} are not listed in its label.csv and were left "
                            f"out, e.g. {', '.join(unlisted[:3])}")
    return result


def _load_ferplus_csv(path, split, size, channels):
    """FER+'s fer2013new.csv with the fer2013.csv beside it (same rows, same order) for the pixels."""
    pixels_csv = path.with_name("fer2013.csv")
    if not pixels_csv.is_file():
        raise DataError(f"{path} holds FER+ votes; their pixels are read from {pixels_csv}, which does not exist "
                        "(put FER2013's fer2013.csv beside it)")
    arrays, votes, sources, skipped, unknown, not_in_ferplus = [], [], [], [], {}, 0
    rows = itertools.zip_longest(_csv_rows(path, FERPLUS_CSV_HEADER), _csv_rows(pixels_csv, ("pixels", "usage")))
    for votes_line, pixels_line in rows:
        # The votes are matched to pixels by position: two files that do not line up would train every face on
        # another face's votes, silently.
        if votes_line is None or pixels_line is None:
            longer, line = (path, votes_line[0]) if pixels_line is None else (pixels_csv, pixels_line[0])
            raise DataError(f"{path} and {pixels_csv} must hold the same rows in the same order, but {longer} has "
                            f"more (from line {line})")
        (line, vote_row), (pixel_line, pixel_row) = votes_line, pixels_line
        row_split = _usage_split(vote_row, unknown, line)
        if row_split != _usage_split(pixel_row):
            raise DataError(f"{path} and {pixels_csv} must hold the same rows in the same order, but line {line} is "
                            f"{vote_row.get('usage', '').strip()!r} in one and line {pixel_line} "
                            f"{pixel_row.get('usage', '').strip()!r} in the other")
        if row_split != split:
            continue
        source = f"{path}:{line}"
        if not vote_row.get("image name", "").strip():
            not_in_ferplus += 1  # FER+ left this FER2013 row out
            continue
        try:
            face_votes = _csv_row_votes(vote_row)
            face = image_to_array(Image.fromarray(_pixels(pixel_row.get("pixels", "")), "L"), size, channels)
        except (ValueError, KeyError) as e:
            skipped.append((source, str(e)[:120]))
            continue
        votes.append(face_votes)
        arrays.append(face)
        sources.append(source)
    result = _unselected(split, arrays, votes, sources, skipped, size, channels)
    if not_in_ferplus:
        result.notes.append(f"{not_in_ferplus} {split} row(s) have no FER+ image name (FER+ left them out)")
    if unknown:
        result.notes.append(_unknown_usage_note(unknown))
    return result


def _unselected(split, arrays, votes, sources, skipped, size, channels):
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, channels, size, size, dtype=torch.uint8)
    votes = torch.tensor(votes, dtype=torch.float32).reshape(-1, len(ferplus.VOTE_COLUMNS))
    return FERSplit(split, images, torch.zeros(len(votes), dtype=torch.long), [], sources, skipped, votes=votes)


def scoring_protocol(split):
    """The faces of a split that are scored, with the labels they are scored on: for vote data (FER+) the
    faces with a majority emotion, labelled with it (ferplus.label_mode "majority"); other data as it is."""
    if split.votes is None:
        return split
    return _select_votes(split, split.classes, "majority")


def _select_votes(split, classes, mode):
    """The faces of a vote split that `mode` keeps, with labels and targets over classes (ferplus.label_mode)."""
    try:
        keep, labels, targets, left_out = ferplus.label_mode(split.votes, classes, mode)
    except ValueError as e:
        raise DataError(str(e)) from None
    index = torch.nonzero(keep).flatten()
    result = FERSplit(split.name, split.images[index], labels[index], list(classes),
                      [split.sources[i] for i in index.tolist()], split.skipped, votes=split.votes[index],
                      targets=None if targets is None else targets[index], notes=split.notes)
    if left_out:
        why = ", ".join(f"{n:,} {reason}" for reason, n in left_out.items())
        scored = mode == "majority" and split.name != "train"
        purpose = "scored (majority protocol)" if scored else f"usable with --label-mode {mode}"
        result.notes.append(f"{len(result):,} of {len(split):,} faces {purpose}; left out: {why}")
    return result
