"""From photo files to per-face records: reading, finding faces, classifying them, and the rows that
predict.py and app.py write (predictions.csv / .json).

`analyze_photos` is the one path from photos (files, PIL images, arrays) to their classified faces;
recognizer.Recognizer (the Python API), predict.py and app.py all go through it.
"""
import csv
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dataset import canonical_image, data_files, image_from_array, read_image, text_lines
from errors import UserError, not_a_file
from faces import LANDMARKS, Detection, classify_faces, clip_box, cut_faces, make_detector

# The shipped models (model cards in models/README.md), and the one predict.py and the page use without --ckpt:
# FER+'s, the most accurate on the same faces against ten annotators' majority (docs/report.md section 12).
MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "ferplus_vgg.pth"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


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
    warnings met on the way (a box outside the image). readable: whether the photo could be read at all."""
    source: str
    image: Image.Image = None
    faces: list = field(default_factory=list)
    status: str = "ok"
    warnings: list = field(default_factory=list)

    @property
    def readable(self):
        return self.image is not None


def load_photo(source, bgr=False):
    """A photo file's path, a PIL image or a numpy array (dataset.image_from_array; bgr: OpenCV's channel
    order) -> (name for messages, canonical PIL image). Raises OSError, ValueError or SyntaxError (PIL's) for a
    file that is not a readable image, Image.DecompressionBombError for one too large, UserError for an array
    of another shape or dtype or a source of another type."""
    if isinstance(source, (str, Path)):
        return str(source), read_image(source)
    if isinstance(source, Image.Image):
        return "image", canonical_image(source)
    if isinstance(source, np.ndarray):
        return "array", image_from_array(source, bgr)
    raise UserError(f"a photo is a file path, a PIL image or a numpy array, not {type(source).__name__}")


def locate_faces(source, settings, detector, input_cfg, bgr=False):
    """Read one photo (load_photo) and cut out its faces as the model sees them (faces.cut_faces), unclassified:
    detected by detector (settings.detector_for(), made once by the caller), or the whole image with
    settings.no_detect, or the --boxes rows naming it -> PhotoResult. A photo that cannot be read, is too large or
    shows no face is a result with that status, never an exception."""
    try:
        name, image = load_photo(source, bgr)
    except Image.DecompressionBombError as e:
        return PhotoResult(str(source), status=f"too large: {str(e).split('.')[0]}")
    except (OSError, ValueError, SyntaxError, UserError) as e:
        return PhotoResult(str(source) if isinstance(source, (str, Path)) else type(source).__name__,
                           status=f"unreadable: {type(e).__name__}: {str(e)[:80]}")
    result = PhotoResult(name, image)
    if settings.no_detect:
        detections = [Detection((0, 0, image.width, image.height))]
    elif settings.boxes is not None:
        detections = given_boxes(settings.boxes, source, image, result.warnings)
    else:
        detections = (detector or settings.detector_for())(image)
    result.faces = cut_faces(image, detections, input_cfg, align=settings.align,
                             margin=0 if settings.no_detect else settings.margin)
    if not result.faces:
        result.status = ("no face found" if settings.boxes is None else
                         "no box inside the image" if boxes_of(settings.boxes, source) else "no --boxes row names it")
    return result


def analyze_photos(sources, classifier, settings, detector=None, explain=False, bgr=False):
    """Photos (paths, PIL images or numpy arrays) -> [PhotoResult], each with its faces found (locate_faces) and
    classified: the faces of all of them go through the classifier in one batch (faces.classify_faces). This is
    the one path from pixels to decisions: recognizer.Recognizer, predict.py and the page call it."""
    results = [locate_faces(source, settings, detector, classifier.input, bgr) for source in sources]
    classify_faces([face for r in results for face in r.faces], classifier, explain)
    return results


def analyze_photo(path, classifier, settings, detector=None, explain=False):
    """One photo through analyze_photos -> PhotoResult."""
    return analyze_photos([path], classifier, settings, detector, explain)[0]


def face_record(face, classes):
    """A classified face (faces.Face) -> a dict of plain Python values that json.dumps takes as they are: box [x,
    y, w, h] (int pixels of the photo), score (the detector's, None for Haar, --boxes and no detection),
    landmarks ({name: [x, y]}, LANDMARKS' names, None without them), label and confidence (its probability),
    probabilities ({class: p}, every class, summing to 1) and aligned (cut out by its landmarks)."""
    probabilities = {c: float(p) for c, p in zip(classes, face.probabilities)}
    label = classes[int(face.probabilities.argmax())]
    return {"box": [int(round(float(v))) for v in face.box],
            "score": None if face.score is None else float(face.score),
            "landmarks": None if face.landmarks is None else
            {n: [round(float(x), 1), round(float(y), 1)] for n, (x, y) in zip(LANDMARKS, face.landmarks)},
            "label": label, "confidence": probabilities[label], "probabilities": probabilities,
            "aligned": bool(face.aligned)}


def find_images(inputs):
    """The files to classify -> (files, skipped): files as given, and the files of the folders given whose suffix
    is an image's (IMAGE_SUFFIXES; hidden files and system junk left out), in order, each file once however often
    and by whatever path it was given; skipped: the folders' other files, for the caller to name. UserError for an
    input that does not exist or inputs with no image at all."""
    files, skipped = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            for f in data_files(item):
                (files if f.suffix.lower() in IMAGE_SUFFIXES else skipped).append(f)
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
        """A row for one face: face_record's values flattened (probabilities to 6 decimals)."""
        record = face_record(face, self.classes)
        x, y, w, h = record["box"]
        row = {"file": str(source), **extra, "face": index, "status": "ok", "x": x, "y": y, "w": w, "h": h,
               "label": record["label"], "confidence": round(record["confidence"], 6),
               "detector_score": "" if record["score"] is None else round(record["score"], 4),
               "aligned": record["aligned"]}
        for name, (px, py) in (record["landmarks"] or {}).items():
            row[f"{name}_x"], row[f"{name}_y"] = px, py
        row.update({f"p_{c}": round(p, 6) for c, p in record["probabilities"].items()})
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
