"""From photo files to per-face records: reading, finding faces, classifying them, and the rows that
predict.py and app.py write (predictions.csv / .json).

`analyze_photo` is the one path from a photo file to its faces; both front ends render what it returns.
"""
import csv
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dataset import data_files, is_image, read_image, text_lines
from errors import UserError, not_a_file
from faces import LANDMARKS, Detection, analyze_image, clip_box, make_detector

# The shipped models (model cards in models/README.md), and the one predict.py and the page use without --ckpt:
# FER+'s, the most accurate on the same faces against ten annotators' majority (docs/report.md section 12).
MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "ferplus_vgg.pth"


@dataclass(frozen=True)
class FaceSettings:
    """How faces are found and cut out: detector ("yunet" or "haar"), its model file, score threshold, smallest
    face, largest side detected at and extra turned passes (faces.make_detector); or no detection (each image is
    one face crop) or boxes a user gave (--boxes rows, by file); align by landmarks, else box plus margin. Frozen,
    so that settings without boxes can key a cache of detectors (app.py)."""
    detector: str = "yunet"
    detector_model: str = None
    score_threshold: float = 0.6
    min_face: int = 24
    max_side: int = 960
    turns: tuple = (-30.0, 30.0)
    no_detect: bool = False
    boxes: dict = field(default=None)
    align: bool = True
    margin: float = 0.15

    def detector_for(self):
        """The detector these settings use, or None when faces are not detected."""
        if self.no_detect or self.boxes is not None:
            return None
        return make_detector(self.detector, self.detector_model, self.score_threshold, self.min_face,
                             self.max_side, self.turns)


@dataclass
class PhotoResult:
    """One photo's outcome: its decoded image and faces, or why it gave none (status "ok" when it did), and the
    warnings met on the way (a box outside the image)."""
    source: str
    image: Image.Image = None
    faces: list = field(default_factory=list)
    status: str = "ok"
    warnings: list = field(default_factory=list)


def analyze_photo(path, classifier, settings, detector=None, explain=False):
    """Read one photo file, find its faces (detector: settings.detector_for(), made once by the caller) and
    classify them (faces.analyze_image) -> PhotoResult. A file that cannot be read, is too large or shows no
    face is a result with that status, never an exception."""
    path = Path(path)
    result = PhotoResult(str(path))
    try:
        result.image = read_image(path)
    except Image.DecompressionBombError as e:
        result.status = f"too large: {str(e).split('.')[0]}"
        return result
    except (OSError, ValueError, SyntaxError) as e:
        result.status = f"unreadable: {type(e).__name__}: {str(e)[:80]}"
        return result
    image = result.image
    if settings.no_detect:
        detections = [Detection((0, 0, image.width, image.height))]
    elif settings.boxes is not None:
        detections = given_boxes(settings.boxes, path, image, result.warnings)
    else:
        detections = (detector or settings.detector_for())(image)
    result.faces = analyze_image(image, classifier, detections, align=settings.align,
                                 margin=0 if settings.no_detect else settings.margin, explain=explain)
    if not result.faces:
        result.status = ("no face found" if settings.boxes is None else
                         "no box inside the image" if boxes_of(settings.boxes, path) else "no --boxes row names it")
    return result


def find_images(inputs):
    """The files to classify -> (files, skipped): files as given, and the files of the folders given that are images
    (dataset.is_image, the rule training reads folders by; dataset.data_files: hidden files and system junk left
    out, links to folders followed), in order, each file once however often and by whatever path it was given;
    skipped: the folders' other files, for the caller to name. UserError for an input that does not exist or inputs
    with no image at all."""
    files, skipped = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            for f in data_files(item):
                (files if is_image(f) else skipped).append(f)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"input {item} does not exist")
    if not files:
        raise UserError(f"no images found in {', '.join(inputs)}")
    unique = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), skipped


def output_names(files):
    """A distinct name for each input's outputs: its stem, or where stems clash (a/face.png, b/face.png,
    a/face.jpg) its path below the inputs' common folder with its suffix, '/' written as '_'; a name that still
    clashes (a/b/face.jpg and a_b/face.jpg), also without regard to case, gets a number."""
    stems = [f.stem for f in files]
    clashing = {s.lower() for s in stems if [t.lower() for t in stems].count(s.lower()) > 1}
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([r.parent for r in resolved]))
    names, taken = [], set()
    for r, stem in zip(resolved, stems):
        name = "_".join(r.relative_to(common).parts) if stem.lower() in clashing else stem
        unique, k = name, 1
        while unique.lower() in taken:
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique.lower())
        names.append(unique)
    return names


def read_boxes(path):
    """A boxes CSV (file,x,y,w,h) -> ({file: [(x, y, w, h, "FILE:line")]}, warnings). A row without a file name or
    with x,y,w,h that are not finite numbers is left out with a warning naming its line; UserError for a missing
    file, a folder, missing columns or text that is not UTF-8."""
    path = Path(path)
    why = not_a_file(path, "a CSV file")
    if why:
        raise UserError(f"--boxes file {path} {why}")
    boxes, warnings = defaultdict(list), []
    reader = csv.DictReader(text_lines(path))
    names = {(n or "").strip().lower(): n for n in reader.fieldnames or []}
    if not {"file", "x", "y", "w", "h"} <= set(names):
        raise UserError(f"--boxes file {path} needs the columns file,x,y,w,h")
    for row in reader:
        where = f"{path}:{reader.line_num}"  # the line in the file, blank lines counted
        try:
            box = tuple(float(row[names[k]]) for k in ("x", "y", "w", "h"))
            file = row[names["file"]].strip()
            if not file or not all(map(math.isfinite, box)):
                raise ValueError
        except (AttributeError, TypeError, ValueError):
            warnings.append(f"{where}: needs a file name and finite numbers x,y,w,h; row left out")
            continue
        boxes[file].append((*box, where))
    return boxes, warnings


def boxes_of(known_boxes, path):
    """The rows of read_boxes that name this photo: by its path as given, or else by its name."""
    return known_boxes.get(str(path), known_boxes.get(Path(path).name, []))


def names_of_no_photo(known_boxes, paths):
    """The file names of read_boxes rows that name none of the photos (boxes_of's rule the other way round)."""
    named = {str(p) for p in paths} | {Path(p).name for p in paths}
    return [name for name in known_boxes if name not in named]


def given_boxes(known_boxes, path, image, warnings):
    """The boxes (read_boxes) of one image (boxes_of), clipped to it; a box with nothing inside the image is
    skipped, with a warning naming its row appended to warnings."""
    detections = []
    for *box, row in boxes_of(known_boxes, path):
        clipped = clip_box(box, image.width, image.height)
        if clipped is None:
            warnings.append(f"{row}: box {','.join(f'{v:g}' for v in box)} has nothing inside {path} "
                            f"({image.width}x{image.height}); skipped")
            continue
        detections.append(Detection(clipped))
    return detections


class Results:
    """Collects a row per face (and per input without one) and writes predictions.csv and predictions.json:
    file, face index, status, box, label, confidence, detector score, aligned, landmarks, every class's
    probability."""

    def __init__(self, classes):
        self.classes, self.rows = classes, []

    def add(self, source, index, face, **extra):
        k = int(face.probabilities.argmax())
        x, y, w, h = (int(round(v)) for v in face.box)
        row = {"file": str(source), **extra, "face": index, "status": "ok", "x": x, "y": y, "w": w, "h": h,
               "label": self.classes[k], "confidence": round(float(face.probabilities[k]), 6),
               "detector_score": "" if face.score is None else round(face.score, 4), "aligned": face.aligned}
        for name, point in zip(LANDMARKS, [] if face.landmarks is None else face.landmarks):
            row[f"{name}_x"], row[f"{name}_y"] = round(float(point[0]), 1), round(float(point[1]), 1)
        row.update({f"p_{c}": round(float(p), 6) for c, p in zip(self.classes, face.probabilities)})
        self.rows.append(row)
        return row

    def add_failure(self, source, why, **extra):
        """A row for an input that gave no face: why (no face found, unreadable, too large...)."""
        self.rows.append({"file": str(source), **extra, "face": "", "status": why})

    def write(self, out_dir, stem="predictions"):
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = out_dir / f"{stem}.csv"
        fields = list(dict.fromkeys(k for row in self.rows for k in row)) or ["file", "face", "status"]
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        (out_dir / f"{stem}.json").write_text(json.dumps({"classes": self.classes, "faces": self.rows}, indent=1))
        return csv_path
