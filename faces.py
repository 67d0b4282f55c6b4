"""From a photo to faces: detection, cropping like the training data, per-face results, and drawing them.

A face is brought to the model exactly as training images were: the box (plus a margin) is cropped from
the photo and passed through `dataset.image_to_array`, the very function that decoded the training set;
the classifier (inference.py) then normalises it with the mean and std its scoring records.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset import image_to_array
from errors import UserError


@dataclass
class Face:
    box: tuple                                   # x, y, width, height in the photo's pixels
    crop: np.ndarray = field(default=None)      # what the model saw: C x size x size uint8
    probabilities: np.ndarray = field(default=None)
    heatmap: np.ndarray = field(default=None)   # Grad-CAM, crop-sized, 0..1


class FaceDetector:
    """OpenCV's frontal-face Haar cascade, which ships inside the opencv-python-headless wheel."""

    def __init__(self, min_face=24):
        try:
            import cv2
        except ImportError:
            raise UserError("face detection needs OpenCV: pip install opencv-python-headless "
                            "(or pass --no-detect or --boxes FILE)") from None
        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        self.min_face = min_face

    def __call__(self, image):
        """PIL image -> list of (x, y, w, h) boxes, largest first."""
        # No histogram equalisation: on photos with large flat areas it stretches the background and
        # hides faces (it found 2 of 6 FER faces pasted on a gray canvas, against 6 of 6 without).
        gray = np.asarray(image.convert("L"))
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(self.min_face, self.min_face))
        return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])


def crop_faces(image, boxes, input_cfg, margin=0.15):
    """Crop each box grown by `margin` of its size on every side, then preprocess like the training set."""
    crops = []
    for x, y, w, h in boxes:
        dx, dy = margin * w, margin * h
        region = (max(0, x - dx), max(0, y - dy), min(image.width, x + w + dx), min(image.height, y + h + dy))
        crops.append(image_to_array(image.crop(tuple(int(round(v)) for v in region)), input_cfg["size"],
                                    input_cfg["channels"]))
    if not crops:
        return np.zeros((0, input_cfg["channels"], input_cfg["size"], input_cfg["size"]), dtype=np.uint8)
    return np.stack(crops)


def classify_image(image, classifier, boxes, margin=0.15, explain=False):
    """Faces of one PIL image (already-known boxes) with their class probabilities (and heat-maps)."""
    faces = [Face(tuple(b)) for b in boxes]
    if not faces:
        return faces
    crops = crop_faces(image, boxes, classifier.input, margin)
    probs = classifier.probabilities(crops)
    heatmaps = classifier.grad_cam(crops, probs.argmax(1)) if explain else [None] * len(faces)
    for face, crop, p, hm in zip(faces, crops, probs, heatmaps):
        face.crop, face.probabilities, face.heatmap = crop, p, hm
    return faces


def heatmap_overlay(crop_uint8, heatmap, alpha=0.45):
    """A face crop (C x H x W uint8) with its heat-map blended in red-yellow, as an RGB PIL image."""
    gray = crop_uint8.mean(0) if crop_uint8.ndim == 3 else crop_uint8
    base = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    heat = np.stack([np.clip(2 * heatmap, 0, 1), np.clip(2 * heatmap - 1, 0, 1), np.zeros_like(heatmap)], 2) * 255
    return Image.fromarray(((1 - alpha) * base + alpha * heat).clip(0, 255).astype(np.uint8), "RGB")



def annotate(image, faces, classes):
    """A copy of the photo with each face's box and its label and confidence drawn on it."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 200))
    font = ImageFont.load_default(size=max(12, min(out.size) // 36))
    for face in faces:
        x, y, w, h = face.box
        k = int(face.probabilities.argmax())
        draw.rectangle([x, y, x + w, y + h], outline=(255, 64, 64), width=width)
        text = f"{classes[k]} {100 * face.probabilities[k]:.0f}%"
        box = draw.textbbox((0, 0), text, font=font)
        tx, ty = x, max(0, y - (box[3] - box[1]) - 2 * width)
        box = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(255, 64, 64))
        draw.text((tx, ty), text, fill=(255, 255, 255), font=font)
    return out
