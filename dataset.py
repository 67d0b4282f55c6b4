"""Face-expression data: folder trees and the FER2013 CSV, decoded once into uint8 tensors.

Layouts read:
- folders: ROOT/<split>/<Class>/<image>, split one of train, val, test (also Training, PublicTest,
  PrivateTest, validation); class names are matched case-insensitively (`angry` == `Angry`).
- the Kaggle FER2013 CSV (`emotion,pixels,Usage`): Training -> train, PublicTest -> val,
  PrivateTest -> test.

Every image, whatever its mode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) and size, is brought to
`channels` x `size` x `size` uint8 once, at load time; training then augments whole batches on the
device (`augment_batch`), so no epoch decodes a file again and no DataLoader worker is needed.
"""
import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from errors import UserError

FER2013_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
SEED_CLASSES = ["Angry", "Happy", "Neutral", "Sad", "Surprise"]
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "publictest"),
    "test": ("test", "testing", "privatetest"),
}
CSV_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
AUGMENTATIONS = ("flip", "affine", "jitter", "erase")
MIXES = ("none", "mixup", "cutmix")


class DataError(UserError):
    pass


@dataclass
class FERSplit:
    """One split held in memory: images[i] (uint8, C x H x W) has label labels[i] into classes."""
    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list
    sources: list
    skipped: list = field(default_factory=list)   # (source, reason) of files that did not decode
    ignored: list = field(default_factory=list)   # class folders present but not asked for

    def __len__(self):
        return len(self.labels)

    def subset(self, indices, name=None):
        indices = torch.as_tensor(indices, dtype=torch.long)
        return FERSplit(name or self.name, self.images[indices], self.labels[indices], self.classes,
                        [self.sources[i] for i in indices.tolist()])

    def class_counts(self):
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def warnings(self):
        """One line per thing a user should know about how this split was read."""
        lines = []
        if self.skipped:
            shown = "; ".join(f"{src} ({why})" for src, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            lines.append(f"{self.name}: skipped {len(self.skipped)} unreadable file(s): {shown}{more}")
        if self.ignored:
            lines.append(f"{self.name}: ignored class folder(s) not in the class list: {', '.join(self.ignored)}")
        return lines


# ---------------------------------------------------------------------------------------------------------
# Decoding any image into channels x size x size uint8


def _to_8bit(im):
    """Bring 16-bit, 32-bit and float images into 0..255 by their range, not by clipping as PIL does."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        peak = arr.max() if arr.size else 0
        if im.mode.startswith("I;16") or peak > 255:
            arr = arr / 257.0
        elif im.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, as a viewer shows them, instead of whatever colour they hide.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im


def image_to_array(im, size, channels):
    """A PIL image of any mode and size -> uint8 array of shape (channels, size, size)."""
    im = _to_8bit(ImageOps.exif_transpose(im))
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)  # PIL's bilinear filters when shrinking
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def decode_file(path, size, channels):
    """-> (array, None) or (None, reason) for a file that is not a readable image."""
    try:
        with Image.open(path) as im:
            im.load()
            return image_to_array(im, size, channels), None
    except Exception as e:  # PIL raises many kinds for corrupt, truncated and non-image files
        return None, f"{type(e).__name__}: {e}".strip()[:120]


def _decode_many(paths, size, channels):
    # PIL releases the GIL while decoding, so threads give real parallelism for a folder of JPEGs.
    workers = min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: decode_file(p, size, channels), paths, chunksize=64))


# ---------------------------------------------------------------------------------------------------------
# Finding splits and classes


def _is_csv(root):
    return Path(root).suffix.lower() == ".csv"


def _subdirs(folder):
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_root(root):
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if root.is_dir() and not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty")
    return root


def split_dir(root, split):
    """The folder of `split` under root (case-insensitive, with aliases), or None."""
    by_name = {p.name.lower(): p for p in _subdirs(root)}
    for alias in SPLIT_ALIASES[split]:
        if alias in by_name:
            return by_name[alias]
    return None


def available_splits(root):
    root = _check_root(root)
    if _is_csv(root):
        with open(root, newline="") as f:
            usages = {row.get("Usage") for row in csv.DictReader(f)}
        return [CSV_USAGE[u] for u in CSV_USAGE if u in usages]
    if not root.is_dir():
        raise DataError(f"data path {root} is neither a folder nor a FER2013 .csv file")
    return [s for s in SPLIT_ALIASES if split_dir(root, s) is not None]


def resolve_classes(root, classes=None):
    """The ordered class list: `classes` as given (checked against the data), else the data's own.

    For folders the data's own list is the sorted class folders of train; for the CSV, FER2013's seven.
    """
    root = _check_root(root)
    if _is_csv(root):
        found = FER2013_CLASSES
    else:
        train = split_dir(root, "train")
        if train is None:
            raise DataError(f"{root} has no train/ folder (expected {root}/train/<Class>/*.jpg)")
        found = [p.name for p in _subdirs(train)]
        if not found:
            raise DataError(f"{train} has no class folders (expected {train}/<Class>/*.jpg)")
    if classes is None:
        return list(found)
    lower = {c.lower() for c in found}
    unknown = [c for c in classes if c.lower() not in lower]
    if unknown:
        raise DataError(f"unknown class(es) {', '.join(unknown)} in --classes; {root} has: {', '.join(found)}")
    if len({c.lower() for c in classes}) != len(classes):
        raise DataError(f"--classes names a class twice: {', '.join(classes)}")
    return list(classes)


def load_split(root, split, classes, size=48, channels=1):
    """Decode one split (train, val or test) of the data at root into a FERSplit over `classes`."""
    root = _check_root(root)
    if _is_csv(root):
        return _load_csv_split(root, split, classes, size, channels)
    folder = split_dir(root, split)
    if folder is None:
        raise DataError(f"{root} has no {split}/ folder")
    by_name = {p.name.lower(): p for p in _subdirs(folder)}
    wanted = {c.lower() for c in classes}
    missing = [c for c in classes if c.lower() not in by_name]
    if missing:
        raise DataError(f"{folder} has no folder for class(es) {', '.join(missing)}; "
                        f"it has: {', '.join(p.name for p in by_name.values()) or 'none'}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in by_name[name.lower()].rglob("*") if p.is_file() and not p.name.startswith("."))
        paths += files
        labels += [label] * len(files)
    decoded = _decode_many(paths, size, channels)
    keep = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
    skipped = [(str(paths[i]), decoded[i][1]) for i in range(len(paths)) if decoded[i][0] is None]
    images = (torch.from_numpy(np.stack([decoded[i][0] for i in keep])) if keep
              else torch.zeros(0, channels, size, size, dtype=torch.uint8))
    result = FERSplit(split, images, torch.tensor([labels[i] for i in keep], dtype=torch.long), list(classes),
                      [str(paths[i]) for i in keep], skipped,
                      ignored=[p.name for n, p in by_name.items() if n not in wanted])
    empty = [c for c, n in zip(classes, result.class_counts()) if n == 0]
    if empty:
        raise DataError(f"{folder}: no readable images for class(es) {', '.join(empty)}")
    return result


def _load_csv_split(path, split, classes, size, channels):
    usage = {v: k for k, v in CSV_USAGE.items()}[split]
    index_of = {c.lower(): i for i, c in enumerate(FER2013_CLASSES)}
    label_of = {index_of[c.lower()]: label for label, c in enumerate(classes)}
    arrays, labels, sources, skipped = [], [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"emotion", "pixels", "Usage"} <= set(reader.fieldnames or []):
            raise DataError(f"{path} is not a FER2013 CSV: it needs the columns emotion,pixels,Usage")
        for line, row in enumerate(reader, start=2):
            if row.get("Usage") != usage:
                continue
            source = f"{path}:{line}"
            try:
                emotion = int(row["emotion"])
                pixels = np.array(row["pixels"].split(), dtype=np.int64)
                if emotion not in range(len(FER2013_CLASSES)):
                    raise ValueError(f"emotion {emotion} is not 0-6")
                if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
                    raise ValueError(f"{pixels.size} pixels, expected 2304 values in 0..255")
            except (ValueError, TypeError, AttributeError) as e:
                skipped.append((source, str(e)[:120]))
                continue
            if emotion not in label_of:
                continue
            im = Image.fromarray(pixels.astype(np.uint8).reshape(48, 48), "L")
            arrays.append(image_to_array(im, size, channels))
            labels.append(label_of[emotion])
            sources.append(source)
    if not arrays:
        raise DataError(f"{path} has no usable {usage} rows for classes {', '.join(classes)}")
    return FERSplit(split, torch.from_numpy(np.stack(arrays)), torch.tensor(labels), list(classes), sources,
                    skipped)


# ---------------------------------------------------------------------------------------------------------
# Splitting, hashing, normalising and augmenting


def recorded_subset(full, indices, name, record):
    """full.subset(indices) for indices that a checkpoint recorded; DataError if they cannot be this data's."""
    if indices and max(indices) >= len(full):
        raise DataError(f"{record} indexes {full.name} images up to {max(indices)}, but {full.name} has "
                        f"{len(full)}; is this the data it was trained on?")
    return full.subset(indices, name)


def stratified_split(labels, val_fraction, seed):
    """Seeded per-class shuffle; each class gives round(n * val_fraction) images (at least one) to val."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.cat(train_idx).sort().values.tolist(), torch.cat(val_idx).sort().values.tolist()


def pixel_hashes(images):
    """A digest of each image's pixels, to find identical images across splits."""
    return [hashlib.blake2b(img.numpy().tobytes(), digest_size=12).hexdigest() for img in images]


def count_shared_images(split_a, split_b):
    """How many images of split_b are pixel-identical to some image of split_a."""
    seen = set(pixel_hashes(split_a.images))
    return sum(h in seen for h in pixel_hashes(split_b.images))


def normalize(images_uint8, mean, std):
    """uint8 N x C x H x W -> float, as the model was trained: (x / 255 - mean) / std."""
    return (images_uint8.float().div_(255) - mean) / std


AFFINE_RANGES = (10.0, 0.1, 0.1)  # rotation (degrees), scale and shift (share of the image) either way


def augment_batch(x, kinds, generator, affine=AFFINE_RANGES):
    """Random augmentation of a whole float batch at once, on whatever device x is on.

    flip: horizontal flip; affine: rotation +-DEG, scale 1 +- SCALE, shift +-SHIFT of the image size, for
    affine = (DEG, SCALE, SHIFT), AFFINE_RANGES by default; jitter: brightness and contrast +-20%; erase: one
    random rectangle of up to a quarter of the image set to the mean.
    """
    n, dev = x.shape[0], x.device

    def uniform(lo, hi, *shape):
        return torch.rand(n, *shape, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    if "flip" in kinds or "affine" in kinds:
        sign = torch.ones(n, device=dev)
        if "flip" in kinds:
            sign = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
        degrees, scaling, shifting = affine
        angle = uniform(-degrees, degrees).deg2rad() if "affine" in kinds else torch.zeros(n, device=dev)
        scale = uniform(1 - scaling, 1 + scaling) if "affine" in kinds else torch.ones(n, device=dev)
        shift = uniform(-shifting, shifting, 2) if "affine" in kinds else torch.zeros(n, 2, device=dev)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * sign, -sin, shift[:, 0]], 1),
                             torch.stack([sin * sign, cos, shift[:, 1]], 1)], 1)
        x = warp(x, theta.to(x.dtype))
    if "jitter" in kinds:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
        brightness = uniform(-0.2, 0.2).view(n, 1, 1, 1)
        x = (x - mean) * contrast + mean + brightness
    if "erase" in kinds:
        h, w = x.shape[-2:]
        eh = (uniform(0.1, 0.5) * h).long().view(n, 1, 1)
        ew = (uniform(0.1, 0.5) * w).long().view(n, 1, 1)
        top = (uniform(0, 1) * (h - eh.view(n))).long().view(n, 1, 1)
        left = (uniform(0, 1) * (w - ew.view(n))).long().view(n, 1, 1)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
        apply = (uniform(0, 1) < 0.5).view(n, 1, 1)
        x = x.masked_fill((box & apply).unsqueeze(1), 0.0)  # 0 is the mean after normalisation
    return x


def mix_batch(x, kind, alpha, generator):
    """Blend each image of a float batch with a partner from the same batch (a random pairing).

    mixup: a weighted average of the two images; cutmix: a box of the partner pasted in. The original's share
    lam is drawn from Beta(alpha, alpha); for cutmix it is the share of pixels the original keeps after the box
    is clipped to the image. -> (mixed batch, partner index of each image, lam); the loss to train on is
    lam x loss(labels) + (1 - lam) x loss(labels[partner]).
    """
    n, (h, w) = x.shape[0], x.shape[-2:]
    draw = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    lam = float(draw.beta(alpha, alpha))
    partner = torch.randperm(n, generator=generator).to(x.device)
    if kind == "mixup":
        return x * lam + x[partner] * (1 - lam), partner, lam
    if kind != "cutmix":
        raise ValueError(f"unknown mix {kind!r}; choose from {', '.join(MIXES[1:])}")
    # One box for the whole batch, centred anywhere, with an area of (1 - lam) before clipping.
    bh, bw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(draw.integers(h)), int(draw.integers(w))
    top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    x = x.clone()
    x[..., top:bottom, left:right] = x[partner, :, top:bottom, left:right]
    return x, partner, 1 - (bottom - top) * (right - left) / (h * w)


def warp(x, theta):
    """A float N x C x H x W batch resampled through N 2x3 affine matrices (output to input coordinates),
    bilinear, the border reflected."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def zoom(x, scale):
    """A float N x C x H x W batch zoomed about its centre by scale (above 1 zooms in), sampled as
    augment_batch's affine zoom is."""
    theta = torch.tensor([[1 / scale, 0.0, 0.0], [0.0, 1 / scale, 0.0]], dtype=x.dtype, device=x.device)
    return warp(x, theta.expand(x.shape[0], 2, 3))
