"""From photo files to per-face records: reading, finding faces, classifying them, and the rows that
predict.py and app.py write (predictions.csv / .json).

`analyze_photos` is the one path from photos (files, PIL images, arrays) to their classified faces;
recognizer.Recognizer (the Python API), predict.py and app.py all go through it.
"""
import csv
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from errors import UserError, not_a_file, some, text_lines
from faces import LANDMARKS, Detection, classify_faces, clip_box, cut_faces, make_detector
from images import canonical_image, data_files, frames_note, image_from_array, is_image, read_image, why_not_a_face
from runs import SHIPPED_MODELS

# The shipped models (model cards in models/README.md), and the one predict.py and the page use without --ckpt:
# FER+'s, the most accurate on the same faces against ten annotators' majority (docs/report.md section 12).
MODELS_DIR = SHIPPED_MODELS
DEFAULT_MODEL = MODELS_DIR / "ferplus_vgg.pth"
# The names of what predict.py writes (annotated_name, gradcam_name, Results.write, its video's): never inputs.
OUTPUT_NAMES = re.compile(r".+_annotated\.(jpg|mp4)|.+_face\d+_gradcam\.png|(predictions|.+_frames)\.(csv|json)|"
                          r".+_tracks\.csv|.+_timeline\.png")


@dataclass(frozen=True)
class FaceSettings:
    """How faces are found and cut out: detector ("yunet" or "haar"), its model file, score threshold, smallest
    face, largest side detected at and extra turned passes (faces.make_detector); or no detection (each image is
    one face crop) or boxes a user gave (--boxes rows, by file); align by landmarks, else box plus margin; the
    detector's threads (YuNet's ONNX Runtime, a pass; 0: its own choice) and how many of its passes run at once.
    Frozen, so that settings without boxes can key a cache of detectors (app.py)."""
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
    threads: int = 0
    passes_at_once: int = 1

    def detector_for(self):
        """The detector these settings use, or None when faces are not detected."""
        if self.no_detect or self.boxes is not None:
            return None
        return make_detector(self.detector, self.detector_model, self.score_threshold, self.min_face,
                             self.max_side, self.turns, self.threads, self.passes_at_once)


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
    """A photo file's path, a PIL image or a numpy array (images.image_from_array; bgr: OpenCV's channel
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
        why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {str(e)[:80]}"
        return PhotoResult(str(source) if isinstance(source, (str, Path)) else type(source).__name__,
                           status=f"unreadable: {why}")
    result = PhotoResult(name, image)
    frames = frames_note(image)
    if frames:
        result.warnings.append(f"{name}: {frames}")
    if settings.no_detect:
        # The face rule training skips such images by: a 1x1 PNG was classified, status ok.
        problem = why_not_a_face(image.width, image.height)
        if problem:
            result.status = f"not a face: {problem}"
            return result
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
        if frames and settings.boxes is None:
            result.status += f" in the first of {image.info['frames']} frames"
    return result


def analyze_photos(sources, classifier, settings, detector=None, explain=False, bgr=False):
    """Photos (paths, PIL images or numpy arrays) -> [PhotoResult], each with its faces found (locate_faces) and
    classified: the faces of all of them go through the classifier in one batch (faces.classify_faces). This is
    the one path from pixels to decisions: recognizer.Recognizer, predict.py and the page call it."""
    results = [locate_faces(source, settings, detector, classifier.input, bgr) for source in sources]
    classify_faces([face for r in results for face in r.faces], classifier, explain)
    return results


def face_record(face, classes):
    """A classified face (faces.Face) -> a dict of plain Python values that json.dumps takes as they are: box [x,
    y, w, h] (int pixels of the photo), score (the detector's, None for Haar, --boxes and no detection),
    landmarks ({name: [x, y]}, LANDMARKS' names, None without them), label and confidence (its probability),
    probabilities ({class: p}, every class, summing to 1), aligned (cut out by its landmarks) and, for a face of a
    video, track (its track's id)."""
    probabilities = {c: float(p) for c, p in zip(classes, face.probabilities)}
    label = classes[int(face.probabilities.argmax())]
    return {"box": [int(round(float(v))) for v in face.box],
            "score": None if face.score is None else float(face.score),
            "landmarks": None if face.landmarks is None else
            {n: [round(float(x), 1), round(float(y), 1)] for n, (x, y) in zip(LANDMARKS, face.landmarks)},
            "label": label, "confidence": probabilities[label], "probabilities": probabilities,
            "aligned": bool(face.aligned), **({} if face.track is None else {"track": int(face.track)})}


def annotated_name(name):
    """The file name of the annotated copy of the photo whose outputs are named name (output_names)."""
    return f"{name}_annotated.jpg"


def gradcam_name(name, face):
    """The file name of the Grad-CAM map of face number `face` of the photo whose outputs are named name."""
    return f"{name}_face{face}_gradcam.png"


def is_output(path, out_dir=None):
    """Whether a file is one predict.py wrote (OUTPUT_NAMES): so named, in out_dir or in a folder that holds
    predict.py's predictions.csv (an earlier run's outputs)."""
    path = Path(path)
    if not OUTPUT_NAMES.fullmatch(path.name):
        return False
    return (out_dir is not None and path.parent.resolve() == Path(out_dir).resolve()) or \
        (path.parent / "predictions.csv").is_file()


def find_images(inputs, out_dir=None):
    """The files to classify -> (files, skipped, outputs): files as given, and the files of the folders given that
    are images (images.is_image, the rule training reads folders by; images.data_files: hidden files and system
    junk left out, links to folders followed), in order, each file once however often and by whatever path it was
    given; skipped: the folders' other files; outputs: files predict.py wrote (is_output, in out_dir or beside an
    earlier run's predictions.csv), which are never inputs; both for the caller to name. UserError for an input
    that does not exist or inputs with no image at all."""
    files, skipped, outputs = [], [], []
    for item in map(Path, inputs):
        if item.is_dir():
            for f in data_files(item):
                (outputs if is_output(f, out_dir) else files if is_image(f) else skipped).append(f)
        elif item.is_file():
            (outputs if is_output(item, out_dir) else files).append(item)
        else:
            raise UserError(f"input {item} does not exist")
    if not files:
        also = f" (left out {some(outputs)}, which predict.py wrote)" if outputs else ""
        raise UserError(f"no images found in {', '.join(inputs)}{also}")
    unique = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), skipped, outputs


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


def names(file, path):
    """Whether a --boxes row's file names the photo at path: it is the photo's path, or the photo's path (as given
    or in full) ends with it, in whole parts (face.png, b/face.png and /data/b/face.png name /data/b/face.png)."""
    row, path = Path(file), Path(path)
    if row.resolve() == path.resolve():
        return True
    return not row.is_absolute() and any(p.parts[-len(row.parts):] == row.parts for p in (path, path.resolve()))


def assign_boxes(known_boxes, paths):
    """The rows of read_boxes given to the photos at paths -> ({str(path): rows} for every photo, warnings). A row
    goes to the photo its file names (names); one whose file names several photos (face.png for a/face.png and
    b/face.png) goes to none, with a warning naming them, unless it is one's very path; a photo given the same box
    twice gets it once, with a warning; rows naming no photo are named in a warning."""
    by_photo, warnings, no_photo = {str(p): [] for p in paths}, [], []
    for file, rows in known_boxes.items():
        named = [p for p in paths if names(file, p)]
        exact = [p for p in named if Path(file).resolve() == Path(p).resolve()]
        if len(named) > 1 and len(exact) == 1:
            named = exact
        if len(named) > 1:
            warnings.append(f"{rows[0][-1]}: {file} names {len(named)} inputs ({some(named)}); its {len(rows)} row(s) "
                            "left out: write the path of the one meant (e.g. its folder/name)")
        elif named:
            by_photo[str(named[0])] += rows
        else:
            no_photo.append(file)
    for photo, rows in by_photo.items():
        first = {}
        for *box, where in rows:
            if tuple(box) in first:
                warnings.append(f"{where}: repeats the box of {first[tuple(box)]} for {photo}; used once")
            else:
                first[tuple(box)] = where
        by_photo[photo] = [(*box, where) for box, where in first.items()]
    if no_photo:
        warnings.append(f"--boxes rows name file(s) not among the inputs: {some(no_photo, 5)}")
    return by_photo, warnings


def boxes_of(known_boxes, path):
    """The rows assign_boxes gave the photo at path."""
    return known_boxes.get(str(path), [])


def given_boxes(known_boxes, path, image, warnings):
    """The boxes (assign_boxes) of one image (boxes_of), clipped to it; a box with nothing inside the image, or too
    small or narrow to be a face (images.why_not_a_face), is skipped, with a warning naming its row appended to
    warnings."""
    detections = []
    for *box, row in boxes_of(known_boxes, path):
        clipped = clip_box(box, image.width, image.height)
        shown = ",".join(f"{v:g}" for v in box)
        if clipped is None:
            warnings.append(f"{row}: box {shown} has nothing inside {path} ({image.width}x{image.height}); skipped")
            continue
        problem = why_not_a_face(*clipped[2:])
        if problem:
            warnings.append(f"{row}: box {shown} of {path} cannot be a face ({problem} inside the image); skipped")
            continue
        inside = clipped[2] * clipped[3] / (box[2] * box[3])
        if inside < 0.5:  # what is left is more background than the face the row meant
            warnings.append(f"{row}: box {shown} lies {100 * (1 - inside):.0f}% outside {path} "
                            f"({image.width}x{image.height}); classified as cut to {','.join(map(str, clipped))}")
        detections.append(Detection(clipped))
    return detections


class Results:
    """Collects a row per face (and per input without one) and writes predictions.csv and predictions.json:
    file, face index, status, box, label, confidence, detector score, aligned, landmarks, every class's
    probability. A value a row does not have (the face index of an input without one, the score of a box that
    no detector gave) is null in the JSON and empty in the CSV."""

    def __init__(self, classes):
        self.classes, self.rows = classes, []

    def add(self, source, index, face, **extra):
        """A row for one face: face_record's values flattened (probabilities to 6 decimals)."""
        record = face_record(face, self.classes)
        x, y, w, h = record["box"]
        row = {"file": str(source), **extra, "face": index, **({"track": record["track"]} if "track" in record else {}),
               "status": "ok", "x": x, "y": y, "w": w, "h": h,
               "label": record["label"], "confidence": round(record["confidence"], 6),
               "detector_score": None if record["score"] is None else round(record["score"], 4),
               "aligned": record["aligned"]}
        for name, (px, py) in (record["landmarks"] or {}).items():
            row[f"{name}_x"], row[f"{name}_y"] = px, py
        row.update({f"p_{c}": round(p, 6) for c, p in record["probabilities"].items()})
        self.rows.append(row)
        return row

    def add_failure(self, source, why, **extra):
        """A row for an input that gave no face: why (no face found, unreadable, too large...)."""
        self.rows.append({"file": str(source), **extra, "face": None, "status": why})

    def write(self, out_dir, stem="predictions"):
        """-> (the CSV's path, the JSON's path), STEM.csv and STEM.json in out_dir."""
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = out_dir / f"{stem}.csv"
        fields = list(dict.fromkeys(k for row in self.rows for k in row)) or ["file", "face", "status"]
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        json_path = out_dir / f"{stem}.json"
        # Every row with every field, so a reader finds the same keys in each (null where the CSV is empty).
        rows = [{k: row.get(k) for k in fields} for row in self.rows]
        json_path.write_text(json.dumps({"classes": self.classes, "faces": rows}, indent=1))
        return csv_path, json_path
