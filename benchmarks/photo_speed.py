"""Time per photo, stage by stage, and side by side with PyPI's `fer` where it is installed elsewhere.

    python benchmarks/photo_speed.py --faces /path/to/fer2013/val
    python benchmarks/photo_speed.py --faces /path/to/fer2013/val --fer-python /path/to/fer-venv/bin/python

Portraits like a studio set's: --count held-out faces of the five classes both tools know (angry, happy, neutral, sad,
surprise; drawn evenly), each upscaled to 160 pixels and pasted in the middle of a 256x256 canvas of a plain colour,
saved as JPEG. Our side runs recognizer.Recognizer with its default settings (the shipped FER+ model, YuNet with its
turned passes, aligned crops, the model's views): the whole photo (take the array in, detect, cut, classify) and, apart,
each stage (of detection, the time YuNet's network takes in ONNX Runtime, added up over the threads its passes run on,
and its calls a photo; the rest is the work around the passes). Both tools are given the photos decoded by OpenCV before
the clock starts (the fer worker reads them so), ours as BGR arrays (analyze(..., bgr=True)). `fer`
(FER().detect_emotions: OpenCV's Haar cascade and its mini-Xception) runs in its own Python, given by --fer-python, on
the same files, the two taking turns round by round, so that a slow spell of the machine falls on both. Each setting
runs quiet and then loaded: while another process keeps both cores busy with matrix products. Accuracy counts a photo
right when its largest face's label is the photo's class (no face: wrong). `fer` is never a dependency of the toolkit:
install it in another environment (pip install --no-deps fer==25.10.3, then tensorflow-cpu and
opencv-contrib-python-headless)."""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli import positive_int, thread_count  # noqa: E402
from dataset import CLASS_SYNONYMS  # noqa: E402
from faces import classify_faces, cut_faces  # noqa: E402
from images import data_files, image_from_array, read_image  # noqa: E402
from recognizer import Recognizer, torch_threads  # noqa: E402

CLASSES = ("angry", "happy", "neutral", "sad", "surprise")
# Our model's class names as fer's: the synonym table training reads other datasets' names by (happiness: happy).
OURS = {name: group[0] for group in CLASS_SYNONYMS for name in group}
FER_WORKER = """
import json, sys, time
import numpy as np, cv2
from fer.fer import FER
files = json.loads(sys.argv[1])
images = [cv2.imread(f) for f in files]
detector = FER()
detector.detect_emotions(images[0])
for line in sys.stdin:
    labels, start = [], time.perf_counter()
    for image in images:
        faces = detector.detect_emotions(image)
        big = max(faces, key=lambda f: f["box"][2] * f["box"][3], default=None)
        labels.append(None if big is None else max(big["emotions"], key=big["emotions"].get))
    print(json.dumps({"ms": 1000 * (time.perf_counter() - start) / len(images), "labels": labels}), flush=True)
"""
LOAD = "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def make_portraits(folder, count, seed, out):
    """-> [(path, class)]: count faces of CLASSES from folder/<class>/, each a 256x256 JPEG portrait in out."""
    rng = np.random.default_rng(seed)
    if not Path(folder).is_dir():
        raise SystemExit(f"photo_speed.py: error: --faces {folder} is not a folder")
    by_name = {p.name.lower(): p for p in Path(folder).iterdir() if p.is_dir()}
    missing = [c for c in CLASSES if not (c in by_name and data_files(by_name[c]))]
    if missing:
        raise SystemExit(f"photo_speed.py: error: --faces {folder} has no images in {', '.join(missing)}/ (it needs a "
                         f"folder of images for each of {', '.join(CLASSES)})")
    portraits = []
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        files = data_files(by_name[label])
        face = read_image(files[rng.integers(len(files))]).convert("RGB").resize((160, 160), Image.BICUBIC)
        canvas = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(40, 220, 3)))
        canvas.paste(face, (48, 40))
        path = out / f"portrait_{i:03d}_{label}.jpg"
        canvas.save(path, quality=92)
        portraits.append((path, label))
    return portraits


def time_ours(recognizer, photos):
    """photos: BGR arrays, as OpenCV reads them -> (ms per photo for the whole path, labels of each photo's
    largest face)."""
    start = time.perf_counter()
    labels = []
    for photo in photos:
        faces = recognizer.analyze(photo, bgr=True)
        big = max(faces, key=lambda f: f["box"][2] * f["box"][3], default=None)
        labels.append(None if big is None else OURS.get(big["label"], big["label"]))
    return 1000 * (time.perf_counter() - start) / len(photos), labels


class TimedSession:
    """An ONNX Runtime session that adds up the time its run() takes (seconds) and counts the calls."""

    def __init__(self, session):
        self.session, self.seconds, self.calls = session, 0.0, 0

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def __getattr__(self, name):
        return getattr(self.session, name)


def time_stages(recognizer, photos):
    """-> {stage: ms per photo}: taking the array in, every detection pass together ("detect"; of it, YuNet's
    network in ONNX Runtime, "network", and its calls a photo, "passes": the upright and turned passes and the
    second looks), cutting out, classifying."""
    spent = dict.fromkeys(("take in", "detect", "cut", "classify"), 0.0)
    detector = recognizer.detector
    session = getattr(detector, "session", None)  # YuNet's; Haar has none
    timed = TimedSession(session) if session is not None else None
    if timed is not None:
        detector.session = timed
    try:
        with torch_threads(recognizer.plan.torch):
            for photo in photos:
                t0 = time.perf_counter()
                image = image_from_array(photo, bgr=True)
                t1 = time.perf_counter()
                found = detector(image)
                t2 = time.perf_counter()
                faces = cut_faces(image, found, recognizer.classifier.input)
                t3 = time.perf_counter()
                classify_faces(faces, recognizer.classifier)
                t4 = time.perf_counter()
                for stage, (a, b) in zip(spent, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
                    spent[stage] += b - a
    finally:
        if timed is not None:
            detector.session = session
    per_photo = {stage: 1000 * s / len(photos) for stage, s in spent.items()}
    per_photo["network"] = 1000 * timed.seconds / len(photos) if timed is not None else float("nan")
    per_photo["passes"] = timed.calls / len(photos) if timed is not None else float("nan")
    return per_photo


def accuracy(labels, truth):
    return 100 * np.mean([a == b for a, b in zip(labels, truth)])


def fer_round(fer, python):
    """One round of the fer worker (a Popen running FER_WORKER) -> its reply {"ms", "labels"}; SystemExit when it
    has stopped (no fer package in that Python, or its import failed)."""
    try:
        fer.stdin.write("go\n")
        fer.stdin.flush()
        return json.loads(fer.stdout.readline())
    except (BrokenPipeError, json.JSONDecodeError):
        raise SystemExit(f"photo_speed.py: error: the fer worker in {python} stopped; is fer installed there? (pip "
                         "install --no-deps fer==25.10.3, then tensorflow-cpu and opencv-contrib-python-headless)") \
            from None


def threads_setting(text):
    """--threads: 'default' -> None (Recognizer's own plan), else cli.thread_count's whole number."""
    return None if text == "default" else thread_count(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faces", required=True, help="a split folder of <class>/ images (e.g. fer2013/val)")
    p.add_argument("--count", type=positive_int, default=152)
    p.add_argument("--rounds", type=positive_int, default=5, help="turns each tool takes per setting")
    p.add_argument("--threads", type=threads_setting, nargs="+", default=[None, 1, 2], metavar="N",
                   help="Recognizer threads to time: 'default' (its own plan: YuNet's passes two at once, torch on "
                   "one thread, an ONNX twin on two), N (passes N at once, the classifier on N) or 0 (each library's "
                   "own) (default: default 1 2)")
    p.add_argument("--fer-python", help="a Python with the fer package installed, to time it beside ours")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="portraits_") as out:
        return time_photos(args, Path(out))


def time_photos(args, out):
    """main's work, the portraits made in the folder out: prints the table."""
    portraits = make_portraits(args.faces, args.count, args.seed, out)
    paths, truth = [p for p, _ in portraits], [c for _, c in portraits]
    import cv2

    photos = [cv2.imread(str(p)) for p in paths]  # decoded before timing, as the fer worker decodes them
    fer = None
    if args.fer_python:
        if not Path(args.fer_python).is_file():
            raise SystemExit(f"photo_speed.py: error: --fer-python {args.fer_python} is not a file")
        fer = subprocess.Popen([args.fer_python, "-c", FER_WORKER, json.dumps([str(p) for p in paths])],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    print(f"{len(paths)} portraits of 256x256; median of {args.rounds} rounds, ms per photo")
    print("| threads | machine | ours | take in | detect | YuNet's network, all threads (passes) | cut | classify | "
          "fer | ours / fer | ours acc | fer acc |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for threads in args.threads:
        recognizer = Recognizer(threads=threads)
        time_ours(recognizer, photos)  # warm-up: kernels chosen, caches filled
        for machine in ("quiet", "loaded"):
            load = subprocess.Popen([sys.executable, "-c", LOAD]) if machine == "loaded" else None
            try:
                if load:
                    time.sleep(2)
                ours, theirs, stages, ratios = [], [], [], []
                for _ in range(args.rounds):
                    ms, our_labels = time_ours(recognizer, photos)
                    ours.append(ms)
                    stages.append(time_stages(recognizer, photos))
                    if fer:
                        reply = fer_round(fer, args.fer_python)
                        theirs.append(reply["ms"])
                        ratios.append(ms / reply["ms"])
            finally:
                if load:
                    load.kill()
                    load.wait()
            stage = {k: np.median([s[k] for s in stages]) for k in stages[0]}
            fer_cells = (f"{np.median(theirs):.1f} | {np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                         if fer else "- | -")
            fer_acc = f"{accuracy(reply['labels'], truth):.1f}%" if fer else "-"
            setting = "default" if threads is None else threads or "libraries"
            print(f"| {setting} | {machine} | {np.median(ours):.1f} | {stage['take in']:.1f} | "
                  f"{stage['detect']:.1f} | {stage['network']:.1f} ({stage['passes']:.2f}) | {stage['cut']:.1f} | "
                  f"{stage['classify']:.1f} | {fer_cells} | "
                  f"{accuracy(our_labels, truth):.1f}% | {fer_acc} |", flush=True)
    if fer:
        fer.stdin.close()
        fer.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
