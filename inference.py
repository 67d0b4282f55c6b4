"""From a photo to expressions: face detection, cropping like the training data, classification with a
checkpoint or an exported ONNX model, Grad-CAM, and drawing the results.

A face is brought to the model exactly as training images were: the box (plus a margin) is cropped from
the photo and passed through `dataset.image_to_array`, the very function that decoded the training set,
then normalised with the mean and std stored in the checkpoint or the ONNX metadata.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import engine
from checkpoint import check_same_task, load_checkpoint, logit_bias, model_from_checkpoint, scoring_views
from dataset import image_to_array, normalize
from errors import UserError

ONNX_METADATA_KEY = "fer_toolkit"
EXPORT_METADATA_FILE = f"{ONNX_METADATA_KEY}.json"  # inside .pt2 and TorchScript files


@dataclass
class Face:
    box: tuple                                   # x, y, width, height in the photo's pixels
    crop: np.ndarray = field(default=None)      # what the model saw: C x size x size uint8
    probabilities: np.ndarray = field(default=None)
    heatmap: np.ndarray = field(default=None)   # Grad-CAM, crop-sized, 0..1


# ---------------------------------------------------------------------------------------------------------
# Models: a checkpoint (PyTorch), an exported ONNX or torch.export file, or an ensemble of them, behind one
# interface: classes, input, decision_logits (TTA views averaged, logit bias added), probabilities, grad_cam.


class Classifier:
    def probabilities(self, crops_uint8):
        return torch.softmax(self.decision_logits(crops_uint8), 1).numpy()


class TorchClassifier(Classifier):
    def __init__(self, ckpt_path, device="cpu"):
        state = load_checkpoint(ckpt_path)
        self.classes, self.input = state["classes"], state["input"]
        self.views = scoring_views(state)  # scored as training's test was
        self.logit_bias = logit_bias(state, path=ckpt_path)
        self.device = engine.select_device(device)
        self.model = engine.prepare_model(model_from_checkpoint(state, ckpt_path).float(), self.device).eval()

    def decision_logits(self, crops_uint8):
        return engine.predict_logits(self.model, torch.from_numpy(crops_uint8), self.input, self.device,
                                     **self.views, logit_bias=self.logit_bias)

    def grad_cam(self, crops_uint8, class_indices):
        x = engine.to_input(torch.from_numpy(crops_uint8), self.input, self.device)
        return grad_cam(self.model, x, class_indices)


class ExportedClassifier(Classifier):
    """A model exported by export.py: the class names, preprocessing and scoring views travel in its metadata
    (deployment_info there); subclasses say how to run one normalised float batch to logits."""

    def __init__(self, info):
        self.classes, self.input = info["classes"], info["input"]
        self.views = {"tta_flip": info.get("tta_flip", False), "tta_scales": tuple(info.get("tta_scales", ()))}
        self.logit_bias = info.get("logit_bias")

    def decision_logits(self, crops_uint8):
        x = normalize(torch.from_numpy(crops_uint8), self.input["mean"], self.input["std"])
        return engine.decision_logits([self.logits(view) for view in engine.tta_views(x, **self.views)],
                                      self.logit_bias)

    def grad_cam(self, crops_uint8, class_indices):
        raise UserError("--explain needs a PyTorch checkpoint (.pth): an exported graph has no layers to read")


class OnnxClassifier(ExportedClassifier):
    def __init__(self, onnx_path):
        try:
            import onnxruntime
        except ImportError:
            raise UserError("running an .onnx model needs onnxruntime: pip install onnxruntime") from None
        try:
            self.session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"{onnx_path} is not a readable ONNX model: {str(e).splitlines()[0][:100]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEY not in meta:
            raise UserError(f"{onnx_path} was not exported by this toolkit (no {ONNX_METADATA_KEY} metadata)")
        super().__init__(json.loads(meta[ONNX_METADATA_KEY]))
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, x):
        return torch.from_numpy(self.session.run(None, {self.input_name: x.contiguous().numpy()})[0])


class ExportedProgramClassifier(ExportedClassifier):
    """A torch.export program (.pt2), TorchScript's successor, run by PyTorch without the toolkit's model code."""

    def __init__(self, path):
        extra = {EXPORT_METADATA_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as e:
            raise UserError(f"{path} is not a readable torch.export program: {str(e).splitlines()[0][:100]}") \
                from None
        if not extra[EXPORT_METADATA_FILE]:
            raise UserError(f"{path} was not exported by this toolkit (no {EXPORT_METADATA_FILE} inside)")
        super().__init__(json.loads(extra[EXPORT_METADATA_FILE]))
        self.module = program.module()

    @torch.no_grad()
    def logits(self, x):
        return self.module(x).float()


class EnsembleClassifier(Classifier):
    """Several models deciding together on the mean of their decision logits, as `test.py --ckpt A B` scores."""

    def __init__(self, members, paths):
        check_same_task([(path, m.classes, m.input) for path, m in zip(paths, members)])
        self.members = members
        self.classes, self.input = members[0].classes, members[0].input

    def decision_logits(self, crops_uint8):
        return torch.stack([m.decision_logits(crops_uint8) for m in self.members]).mean(0)

    def grad_cam(self, crops_uint8, class_indices):
        """The members' heat-maps for the ensemble's classes, averaged."""
        return np.mean([m.grad_cam(crops_uint8, class_indices) for m in self.members], axis=0)


def load_classifier(paths, device="cpu"):
    """A checkpoint (.pth), an exported .onnx or .pt2 file, or a list of them (an ensemble)."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    members = [load_one_classifier(path, device) for path in paths]
    return members[0] if len(members) == 1 else EnsembleClassifier(members, paths)


def load_one_classifier(path, device):
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        return OnnxClassifier(path)
    if path.suffix.lower() == ".pt2":
        return ExportedProgramClassifier(path)
    return TorchClassifier(path, device)


# ---------------------------------------------------------------------------------------------------------
# Faces: detection and cropping


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


# ---------------------------------------------------------------------------------------------------------
# Grad-CAM


def grad_cam(model, x, class_indices):
    """Grad-CAM (Selvaraju et al., 2017) on the last convolutional feature map of `model`.

    -> array (N, H, W) in 0..1 at the input's resolution: where evidence for class_indices[i] lies.
    """
    maps = []

    def keep(_module, _inputs, output):
        if output.ndim == 4:
            maps.append(output)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    try:
        model.eval()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = model(x)
            features = maps[-1]
            score = logits.gather(1, torch.as_tensor(class_indices, device=logits.device).view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, features)
    finally:
        for h in hooks:
            h.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp(min=1e-8).view(-1, 1, 1)
    return (cam / peak).detach().cpu().numpy()


def heatmap_overlay(crop_uint8, heatmap, alpha=0.45):
    """A face crop (C x H x W uint8) with its heat-map blended in red-yellow, as an RGB PIL image."""
    gray = crop_uint8.mean(0) if crop_uint8.ndim == 3 else crop_uint8
    base = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    heat = np.stack([np.clip(2 * heatmap, 0, 1), np.clip(2 * heatmap - 1, 0, 1), np.zeros_like(heatmap)], 2) * 255
    return Image.fromarray(((1 - alpha) * base + alpha * heat).clip(0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------------------------------
# Drawing


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
