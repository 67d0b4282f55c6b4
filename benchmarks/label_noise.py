"""How noisy FER2013's single labels are, measured against FER+'s ten votes on the same faces, and what a model
trained on one set of labels scores against the other.

    python benchmarks/label_noise.py --fer2013 /path/to/fer2013 --ferplus /path/to/ferplus \\
        --fer2013-model models/fer2013_7class_vgg.pth --ferplus-model models/ferplus_vgg.pth \\
        --five-class-model models/fer2013_5class_vgg.pth

FER+'s faces are FER2013's: each FER+ PNG, stored as the JPEG (quality 95) that FER2013's folders hold, decodes to
exactly the same pixels, which pairs every FER+ face with its FER2013 file (pixel-identical copies inside FER2013
make a few pairs ambiguous: counted, and left out). Agreement is over the faces with a FER+ majority emotion
(the FER+ scoring protocol); contempt, which FER2013 lacks, counts as disagreement.
"""
import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ferplus  # noqa: E402
from dataset import ASSIGNMENT_CLASSES, FER2013_CLASSES, load_split  # noqa: E402
from inference import load_classifier  # noqa: E402

# FER+'s emotion names -> FER2013's (contempt has none).
TO_FER2013 = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
              "anger": "angry", "disgust": "disgust", "fear": "fear"}
FER2013 = [c.lower() for c in FER2013_CLASSES]


def as_fer2013_jpeg(image_uint8):
    """The pixels a 48x48 gray face has once stored as FER2013's folders store it (JPEG, quality 95)."""
    buffer = io.BytesIO()
    Image.fromarray(image_uint8).save(buffer, "JPEG", quality=95)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def digest(pixels):
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=12).hexdigest()


def paired(fer2013_split, ferplus_split):
    """-> (index into the FER2013 split of each FER+ face or -1, number of ambiguous faces)."""
    where, clashes = {}, set()
    for i, image in enumerate(fer2013_split.images[:, 0].numpy()):
        h = digest(image)
        if h in where and fer2013_split.labels[where[h]] != fer2013_split.labels[i]:
            clashes.add(h)
        where.setdefault(h, i)
    index = []
    for image in ferplus_split.images[:, 0].numpy():
        h = digest(as_fer2013_jpeg(image))
        index.append(-1 if h in clashes else where.get(h, -1))
    return np.array(index), len(clashes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fer2013", required=True, help="FER2013 folders (train/, val/ = PublicTest)")
    p.add_argument("--ferplus", required=True, help="FER+ folders (FER2013Train/, FER2013Valid/)")
    p.add_argument("--fer2013-model", help="a model trained on FER2013's seven classes")
    p.add_argument("--ferplus-model", help="a model trained on FER+'s eight emotions")
    p.add_argument("--five-class-model", help="a model of the assignment's five classes (scored, with the others, "
                   "on the faces whose truth is one of them)")
    args = p.parse_args(argv)
    emotions = list(ferplus.EMOTIONS)
    print("FER2013's label against the FER+ majority, on the same faces (faces with a FER+ majority emotion):")
    print(f"{'split':<12}{'class':<10}{'faces':>7}{'agree %':>9}   most common FER+ majority when they disagree")
    held = {}
    for split in ("train", "val"):
        fer = load_split(args.fer2013, split, FER2013)  # 48x48 gray, as both sets store their faces
        plus = load_split(args.ferplus, split, emotions)  # the majority protocol
        index, clashes = paired(fer, plus)
        ok = index >= 0
        fer_labels = fer.labels[torch.as_tensor(index[ok])].numpy()
        plus_labels = [TO_FER2013.get(emotions[k], "contempt") for k in plus.labels[torch.as_tensor(ok)].tolist()]
        held[split] = (fer, plus, index)
        total_agree = 0
        for k, name in enumerate(FER2013):
            mine = fer_labels == k
            agree = sum(plus_labels[i] == name for i in np.nonzero(mine)[0])
            total_agree += agree
            others = [plus_labels[i] for i in np.nonzero(mine)[0] if plus_labels[i] != name]
            common = max(set(others), key=others.count) if others else "-"
            print(f"{split:<12}{name:<10}{int(mine.sum()):>7}{100 * agree / max(1, mine.sum()):>9.1f}   {common}")
        print(f"{split:<12}{'all':<10}{int(ok.sum()):>7}{100 * total_agree / max(1, ok.sum()):>9.1f}   "
              f"({int((~ok).sum())} FER+ faces unpaired, {clashes} FER2013 images with conflicting copies)")
    fer, plus, index = held["val"]
    ok = index >= 0
    fer_truth = fer.labels[torch.as_tensor(index[ok])].numpy()
    plus_truth = np.array([FER2013.index(TO_FER2013[emotions[k]]) if emotions[k] in TO_FER2013 else -1
                           for k in plus.labels[torch.as_tensor(ok)].tolist()])
    decisions = {}  # model file -> its decision on each paired face, as a FER2013 class index (-1: none of them)
    by_input = {(48, 1): plus}  # FER+'s PublicTest faces at each input size and channels a model takes
    for path in (args.fer2013_model, args.ferplus_model, args.five_class_model):
        if path:
            classifier = load_classifier(path)
            names = [TO_FER2013.get(c.lower(), c.lower()) for c in classifier.classes]
            shape = (classifier.input["size"], classifier.input["channels"])
            if shape not in by_input:
                by_input[shape] = load_split(args.ferplus, "val", emotions, *shape)
            faces = by_input[shape]
            decided = classifier.probabilities(faces.images[torch.as_tensor(ok)]).argmax(1)
            decisions[Path(path).name] = np.array([FER2013.index(names[k]) if names[k] in FER2013 else -1
                                                   for k in decided])
    five = np.array([FER2013.index(c.lower()) for c in ASSIGNMENT_CLASSES])
    for title, classes in (("", None), (", the assignment's five classes", five)):
        if not decisions or (classes is not None and not args.five_class_model):
            continue
        # Each label set scored on its own faces of these classes: a decision outside them is wrong.
        fer_in = np.isin(fer_truth, classes) if classes is not None else np.ones(len(fer_truth), bool)
        plus_in = np.isin(plus_truth, classes) if classes is not None else np.ones(len(plus_truth), bool)
        print(f"\nPublicTest (FER2013Valid) faces with a FER+ majority emotion and a FER2013 pair{title}: accuracy "
              f"against\n{'model':<44}{f'FER2013 labels ({fer_in.sum()})':>24}{f'FER+ majority ({plus_in.sum()})':>23}")
        for name, decided in decisions.items():
            print(f"{name:<44}{100 * (decided == fer_truth)[fer_in].mean():>23.2f}%"
                  f"{100 * (decided == plus_truth)[plus_in].mean():>22.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
