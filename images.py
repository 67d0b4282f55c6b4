"""Decoding any image, the one way every path reads pictures: training, test, predict.py, the page, video frames.

`read_image`/`canonical_image` turn a file or PIL image of any mode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F),
EXIF orientation and size into an 8-bit L or RGB picture; `image_to_array` brings it to the network's
channels x size x size uint8; `data_files`/`is_image` say which files of a folder are images.
"""

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps

from errors import UserError

JUNK_FILES = {"thumbs.db", "desktop.ini", "icon\r"}
# Suffixes of the image files read; a file of a folder with another suffix is read when its content is an image
# (is_image).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# The smallest face and the most elongated picture taken as a face (why_not_a_face). Below 8 pixels on its shorter
# side a face's eyes and mouth are a pixel or two each, nothing an expression can be read from (FER2013's faces are
# 48 pixels, the Haar cascade's smallest window 24), while 8 still takes the 16-pixel faces of low-resolution sets.
# Face crops are near square (FER2013 1:1, CK+'s 640x490 frames 1.3:1, a 16:9 video frame given whole 1.8:1); a
# picture beyond 4:1 is squeezed into the square input four-fold or more, past recognising any face.
MIN_FACE_SIDE = 8
MAX_FACE_ASPECT = 4.0


def canonical_image(im):
    """Any PIL image -> the same picture as an 8-bit 'L' or 'RGB' image, the form every path works on.

    EXIF orientation is applied (a phone photo stored sideways is turned upright); 16-bit, 32-bit and float
    images are scaled from their range (PIL would clip them to white): 16-bit samples (0..65535) and floats in
    0..1 or -1..1 by that scale, other values beyond 0..255 from their own minimum and maximum; transparent pixels
    become white, as a viewer shows them; palette, CMYK and other colour modes become RGB, bilevel images L.
    """
    # Only where the photo says it is stored turned: exif_transpose copies every image it is given (2 ms a
    # 1280x720 video frame, twice a frame).
    if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        high = arr.max() if arr.size else 0.0
        if im.mode.startswith("I;16") or (im.mode == "I" and arr.min(initial=0) >= 0 and 255 < high <= 65535):
            return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")
        return Image.fromarray(scaled_to_uint8(arr, floats=im.mode == "F"), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("L", "RGB"):
        return im
    return im.convert("L" if im.mode == "1" else "RGB")


# Decoded by PIL, not torchvision.io.decode_image: that reads JPEG, PNG, GIF and WebP only (and is deprecated since
# torchvision 0.29), where users bring TIFF, BMP, PGM and 16-bit scans too.
def read_image(path):
    """Open and decode an image file -> canonical_image of its first frame, with info["frames"] set to the file's
    frame count (an animated GIF's or a multi-page TIFF's; 1 for a still). Raises OSError (or PIL's errors, which
    are subclasses of it or ValueError) for a file that is not a readable image."""
    # Photos of 89-179 megapixels are decoded with a warning of PIL's that names no file; the detectors shrink them,
    # and larger ones raise DecompressionBombError, which callers report by file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            image = canonical_image(im)
            image.info["frames"] = getattr(im, "n_frames", 1)
            return image


def frames_note(image):
    """What to say of a read_image image whose file holds several frames (only the first is read), or None."""
    frames = image.info.get("frames", 1)
    return f"{frames} frames, only the first is read" if frames > 1 else None


def why_not_a_face(width, height):
    """Why a picture of width x height pixels cannot be a face (MIN_FACE_SIDE, MAX_FACE_ASPECT), or None: the one
    rule training, test and predict.py's --no-detect and --boxes faces are checked by."""
    short, long = sorted((width, height))
    if short < MIN_FACE_SIDE:
        return f"{width}x{height} pixels, under {MIN_FACE_SIDE} on a side"
    if long > MAX_FACE_ASPECT * short:
        return f"{width}x{height} pixels, {round(long / short, 1):g}:1, beyond {MAX_FACE_ASPECT:g}:1"
    return None


def is_image(path):
    """Whether a file is read as an image: its suffix is an image's (IMAGE_SUFFIXES; one that does not decode is
    then named as unreadable), or PIL recognises its content (a JPEG saved as photo.heic or without a suffix). The
    one rule by which training, test and predict.py tell the images of a folder from its other files."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):  # reads the header only
                return True
    except Image.DecompressionBombError:
        return True
    except Exception:  # noqa: BLE001 - whatever PIL cannot identify is not an image
        return False


def scaled_to_uint8(arr, floats):
    """Samples (a float64 array of any shape, NaN already replaced) -> uint8 in 0..255: floats (float samples) in
    0..1 or -1..1 by that scale, any values beyond 0..255 from their own minimum and maximum, others as they are.
    The one rule for float and 32-bit images, whether they come as files or arrays."""
    low, high = (arr.min(), arr.max()) if arr.size else (0.0, 0.0)
    if floats and low >= -1.0 and high <= 1.0:
        arr = (arr + 1.0) * 127.5 if low < 0 else arr * 255.0
    elif low < 0 or high > 255:
        arr = (arr - low) * (255.0 / (high - low)) if high > low else np.zeros_like(arr)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def image_from_array(array, bgr=False):
    """A photo held as a numpy array -> canonical_image of it. array: H x W (gray), H x W x 1, H x W x 3 (RGB, or
    BGR as OpenCV holds it when bgr) or H x W x 4 (RGBA, or BGRA); uint8, uint16 (0..65535) or float (0..1, or
    0..255 when larger values occur). Raises UserError naming the shape or dtype for anything else."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise UserError(f"an image array must be H x W, H x W x 3 or H x W x 4, got shape {array.shape}")
    if array.dtype == np.uint16 and array.ndim == 2:
        return canonical_image(Image.fromarray(np.ascontiguousarray(array)))  # mode I;16, scaled as 16-bit files are
    if np.issubdtype(array.dtype, np.floating):
        array = scaled_to_uint8(np.nan_to_num(array.astype(np.float64)), floats=True)
    elif array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise UserError(f"an image array must be uint8, uint16 or float, got {array.dtype}")
    if array.ndim == 3 and bgr:
        # OpenCV's own conversion: numpy's reordered copy of a 1280x720 frame takes 5.5 ms, cvtColor 0.05.
        import cv2  # imported here: training never needs OpenCV
        code = cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        array = cv2.cvtColor(np.ascontiguousarray(array), code)
    return canonical_image(Image.fromarray(np.ascontiguousarray(array)))


def image_to_array(im, size, channels):
    """A PIL image of any mode and size -> uint8 array (channels, size, size): canonical_image, then gray (1) or
    RGB (3), resized with PIL's bilinear filter (which low-passes when shrinking)."""
    im = canonical_image(im).convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


class Decoded(NamedTuple):
    """What decode_file made of a file: array (uint8 channels x size x size), or None with why (the error, or
    why_not_a_face's reason when not_a_face); note: frames_note's, for a file read by its first frame."""
    array: np.ndarray = None
    why: str = None
    not_a_face: bool = False
    note: str = None


def decode_file(path, size, channels):
    """A training or test image file -> Decoded: its array, or why it gives none (not a readable image, or a
    picture why_not_a_face refuses)."""
    try:
        image = read_image(path)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for corrupt, truncated and non-image files
        return Decoded(why=f"{type(e).__name__}: {e}".strip()[:120])
    problem = why_not_a_face(*image.size)
    if problem:
        return Decoded(why=problem, not_a_face=True)
    return Decoded(image_to_array(image, size, channels), note=frames_note(image))


def decode_many(paths, size, channels):
    """decode_file of each path, in order, on a few threads."""
    # PIL releases the GIL while decoding, so threads give real parallelism for a folder of JPEGs.
    workers = min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: decode_file(p, size, channels), paths, chunksize=64))


def _hidden_name(name):
    return name.startswith(".") or name == "__MACOSX"


def is_hidden(path, below):
    """Whether path (under the folder `below`) is not data: any part of it below `below` is hidden (a leading
    dot, macOS's __MACOSX folder and ._name resource files) or a known junk file (Thumbs.db, desktop.ini)."""
    parts = Path(path).relative_to(below).parts
    return any(map(_hidden_name, parts)) or parts[-1].lower() in JUNK_FILES


def data_files(*folders):
    """Every file below the folders that may be data, sorted (is_hidden files and folders left out), each file once:
    links to folders are followed (train/Happy/more -> /elsewhere/happy_faces is read), except those to a folder that
    holds the one walked (train/Happy/loop -> .., a loop through the other classes), a folder reached twice (a
    second link to it, a link loop) is walked once, and a file reached by two paths (a link to it) is read once, by
    the first in sorted order. A broken link is one, so that reading it fails by name rather than its being left
    out in silence."""
    walked, found = set(), []
    for folder in map(Path, folders):
        root = Path(os.path.realpath(folder))
        for top, dirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(top)
            if real in walked:
                dirs[:] = []
                continue
            walked.add(real)
            # A link to a folder that holds the walked one (train/Happy/loop -> ..) would read its neighbours, the
            # other classes' folders, as this one's: it is a loop, never data.
            dirs[:] = sorted(d for d in dirs if not _hidden_name(d) and not (
                os.path.islink(os.path.join(top, d)) and root.is_relative_to(os.path.realpath(os.path.join(top, d)))))
            for name in files:
                path = Path(top) / name
                if (path.is_file() or (path.is_symlink() and not path.exists())) and not is_hidden(path, folder):
                    found.append(path)
    unique = {}
    for path in sorted(found):
        unique.setdefault(os.path.realpath(path), path)
    return sorted(unique.values())
