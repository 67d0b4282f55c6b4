"""Classifiers: the one way anything turns face crops into decision logits and probabilities.

A Classifier holds a model and its Scoring (checkpoint.Scoring: classes, input normalisation, test-time views,
logit bias) and applies both the same way wherever it is used: train.py's final test, test.py, predict.py,
export.py and the benchmarks. Kinds:
- ModelClassifier: a network in memory (a checkpoint's, or one being trained);
- OnnxClassifier, ExportedProgramClassifier: files export.py wrote, run without this toolkit's model code (a
  checkpoint's own .onnx export, beside it, can also run its network: onnx_twin);
- EnsembleClassifier: several of them deciding on the mean of their decision logits.
`load_classifier(paths)` picks the kind by file suffix.
"""
import contextlib
import copy
import hashlib
import json
import logging
import threading
from pathlib import Path

import numpy as np
import torch

import engine
from checkpoint import PRIOR_FLOOR, CheckpointError, Scoring, load_checkpoint, model_from_checkpoint, scoring_of
from errors import UserError, not_a_file
from model import fuse_batch_norms

ONNX_METADATA_KEY = "fer_toolkit"
EXPORT_METADATA_FILE = f"{ONNX_METADATA_KEY}.json"  # inside .pt2 and TorchScript files
EXPORT_FORMAT = "fer-toolkit-export"


class Classifier:
    """Face crops (uint8 N x C x H x W, C and H = W as scoring.input says) -> decision logits: every test-time
    view of a batch through the model (view_logits), the views' logits averaged, the logit bias added.

    source: the file it came from (for reports); record: the checkpoint's training record (its "args",
    "split", "epoch"...) or None for exports.
    """
    channels_last = False  # the memory layout view_logits wants its batches in

    def __init__(self, scoring, source="model", record=None, device="cpu", amp=False, batch_size=256):
        self.scoring, self.source, self.record = scoring, str(source), record
        self.device = torch.device(device)
        self.amp, self.batch_size = amp, batch_size

    @property
    def classes(self):
        return list(self.scoring.classes)

    @property
    def input(self):
        return self.scoring.input

    def view_logits(self, x):
        """One normalised float batch of one view -> its float32 logits (N x classes)."""
        raise NotImplementedError

    def decision_logits(self, images):
        """uint8 images (tensor or array, N x C x H x W) -> float32 decision logits (N x classes), on the CPU."""
        s = self.scoring
        return engine.predict_logits(self.view_logits, torch.as_tensor(images), s.input, self.device,
                                     self.batch_size, self.amp, s.tta_flip, s.tta_scales, s.logit_bias,
                                     self.channels_last)

    def probabilities(self, images):
        """uint8 images -> class probabilities (float32 array, N x classes): the softmax of decision_logits
        divided by the scoring's temperature (calibration.py)."""
        return torch.softmax(self.decision_logits(images) / self.temperature, 1).numpy()

    @property
    def temperature(self):
        return self.scoring.temperature

    def rescored(self, **overrides):
        """The same model scored otherwise: tta_flip, tta_scales, logit_adjust, temperature (None keeps the
        current one)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        try:
            clone.scoring = self.scoring.replace(**overrides)
        except ValueError as e:
            raise CheckpointError(f"{self.source} {e}") from None
        return clone

    def describe(self):
        """How this classifier decides, for a report: its source file, views and logit bias."""
        s = self.scoring
        return {"checkpoint": self.source, "tta_flip": s.tta_flip, "tta_scales": list(s.tta_scales),
                "logit_bias": s.logit_bias, "temperature": s.temperature}

    def grad_cam(self, images, class_indices):
        """Grad-CAM maps (float N x H x W, 0..1) of class_indices[i] in image i; only a PyTorch model has the
        layers to read, so other classifiers raise UserError."""
        raise UserError(f"--explain needs a PyTorch checkpoint (.pth): {self.source} is an exported graph, "
                        "which has no layers to read")


class ModelClassifier(Classifier):
    """A PyTorch network in memory, run in eval mode on `device` (channels_last, optional bf16). frozen: its
    weights will not change (a loaded checkpoint), so bf16 on the CPU may run a bf16 copy of them; a model still
    training (train.py's validation) runs under autocast, which reads its weights as they are at each call. twin:
    where set (onnx_twin), the checkpoint's own ONNX export runs the network instead; Grad-CAM still reads the
    PyTorch layers."""
    channels_last = True

    def __init__(self, model, scoring, source="model", record=None, device="cpu", amp=False, batch_size=256,
                 frozen=False):
        super().__init__(scoring, source, record, device, amp, batch_size)
        self.model, self.frozen, self._bf16 = model, frozen, None
        self.twin = None  # an OnnxClassifier of the same network that runs it instead (onnx_twin), or None
        self.grad_cam_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path, device="cpu", amp=False, batch_size=256, state=None):
        """The network a checkpoint file holds (state: the file already loaded), in fp32 on device."""
        state = state if state is not None else load_checkpoint(path)
        model = fuse_batch_norms(model_from_checkpoint(state, path).float())
        model = engine.prepare_model(model, torch.device(device))
        record = {k: v for k, v in state.items() if k not in ("model", "optimizer", "online_model")}
        return cls(model, scoring_of(state, path), path, record, device, amp, batch_size, frozen=True)

    def view_logits(self, x):
        if self.twin is not None:
            return self.twin.view_logits(x)
        if self.amp and self.frozen and self.device.type == "cpu":
            # bf16 weights, not autocast's cast of the fp32 ones at every call, which took a quarter longer for a
            # face's two views at one thread (benchmarks/inference_latency.py times bf16 against fp32).
            return self.bf16_model()(x.to(torch.bfloat16))
        return self.model(x)

    def bf16_model(self):
        """A bf16 copy of the frozen model for inference, made on first use (grad_cam keeps the fp32 one)."""
        if self._bf16 is None:
            self._bf16 = copy.deepcopy(self.model).to(torch.bfloat16).eval()
        return self._bf16

    def decision_logits(self, images):
        if self.model.training:  # train.py's validation; eval() walks every layer, 0.1 ms a photo's face
            self.model.eval()
        return super().decision_logits(images)

    def grad_cam(self, images, class_indices):
        """-> array (N, H, W) in 0..1: Grad-CAM of class_indices[i] for image i, on the image itself. One call at a
        time: grad_cam hooks the model's layers, and two threads' hooks would catch each other's feature maps."""
        x = engine.to_input(torch.as_tensor(images), self.input, self.device)
        with self.grad_cam_lock:
            return grad_cam(self.model, x, class_indices)


class OnnxClassifier(Classifier):
    """An .onnx file export.py wrote, run by ONNX Runtime on the CPU; its scoring travels in its metadata."""

    def __init__(self, path, batch_size=256, threads=0):
        """threads: ONNX Runtime's threads (0: its own choice, a spinning thread a core); n threads wait for work
        without spinning, which keeps them from taking the cores from other work between calls."""
        try:
            import onnxruntime
        except ImportError:
            raise UserError("running an .onnx model needs onnxruntime: pip install onnxruntime") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"{path} is not a readable ONNX model: {str(e).splitlines()[0][:100]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEY not in meta:
            raise UserError(f"{path} was not exported by this toolkit (no {ONNX_METADATA_KEY} metadata)")
        self.metadata = json.loads(meta[ONNX_METADATA_KEY])
        super().__init__(scoring_from_export(self.metadata, path), path, batch_size=batch_size)
        self.input_name = self.session.get_inputs()[0].name

    def view_logits(self, x):
        return torch.from_numpy(self.session.run(None, {self.input_name: x.float().contiguous().numpy()})[0])


def file_sha256(path):
    """The SHA-256 of a file's bytes, as hex (a 2.4 MB checkpoint: about 3 ms)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def onnx_twin(classifier, threads=0):
    """Run a checkpoint's network (a ModelClassifier on the CPU) in ONNX Runtime where export.py wrote its .onnx
    beside it (the same name, suffix .onnx) from this very file: the export records the checkpoint's SHA-256, so a
    checkpoint changed since (retrained, or calibrated by test.py) keeps its PyTorch network. A face's two views
    took 1.2 ms in ONNX Runtime on two threads against 1.7-2.4 ms in PyTorch's bf16 on one, where PyTorch's two
    threads, asleep between a photo's faces, took longer than its one (docs/report.md, 14.3). threads:
    OnnxClassifier's. -> classifier, with its twin set when there is one; the scoring (views, bias, temperature)
    stays the checkpoint's."""
    if not isinstance(classifier, ModelClassifier) or classifier.device.type != "cpu" or not classifier.frozen:
        return classifier
    export = Path(classifier.source).with_suffix(".onnx")
    if not export.is_file():
        return classifier
    try:
        twin = OnnxClassifier(export, classifier.batch_size, threads)
    except UserError:  # an unreadable or foreign file of that name is not the checkpoint's export
        return classifier
    if twin.metadata.get("checkpoint_sha256") == file_sha256(classifier.source):
        # All of it in fp32: under autocast the zoomed views (tta_scales) would be resampled in bf16.
        classifier.twin, classifier.amp = twin, False
    return classifier


class ExportedProgramClassifier(Classifier):
    """A torch.export program (.pt2) export.py wrote, TorchScript's successor, run by PyTorch without the
    toolkit's model code; its scoring travels in the file."""

    def __init__(self, path, batch_size=256):
        """UserError naming path for a file that is not a readable program or was not exported by this toolkit
        (torch's own logged traceback of the failure is kept quiet)."""
        extra = {EXPORT_METADATA_FILE: ""}
        try:
            with quiet_logger(torch.export.__name__):  # it logs a traceback of the failure before raising
                program = torch.export.load(str(path), extra_files=extra)
        except Exception as e:
            # The first sentence of torch's message: the rest points to its log, which is kept quiet above.
            why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:100]
            raise UserError(f"{path} is not a readable torch.export program: {why}") \
                from None
        if not extra[EXPORT_METADATA_FILE]:
            raise UserError(f"{path} was not exported by this toolkit (no {EXPORT_METADATA_FILE} inside)")
        super().__init__(scoring_from_export(json.loads(extra[EXPORT_METADATA_FILE]), path), path,
                         batch_size=batch_size)
        self.module = program.module()

    def view_logits(self, x):
        return self.module(x)


@contextlib.contextmanager
def quiet_logger(name):
    """Within the block, the logger called name (and those below it that have no level of their own) logs
    nothing; its level is restored after."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_metadata(classifier):
    """What a file export.py writes carries: the checkpoint's scoring block verbatim, its arch, and how to use
    them (for readers outside this toolkit)."""
    return {"format": EXPORT_FORMAT, "version": 2, "arch": (classifier.record or {}).get("arch"),
            "scoring": classifier.scoring.to_dict(),
            "output": "logits of one image; average them with those of the image zoomed about its centre by "
                      "each of scoring.tta_scales (border reflected) and, with scoring.tta_flip, of the mirror "
                      "of each view; then add scoring.logit_bias (one number per class) when it is not null"}


def scoring_from_export(info, path):
    """The Scoring in an export's metadata; exports made before the scoring block (top-level classes, input,
    tta_flip, tta_scales, logit_bias) are read too."""
    try:
        if "scoring" in info:
            return Scoring.from_dict(info["scoring"])
        bias = info.get("logit_bias")
        # An old export kept only the bias: a prior whose -log is that bias decides alike. A constant added to a
        # bias changes no decision and no probability; this one lifts every share above Scoring's floor.
        shift = None if bias is None else max(bias) + np.log(PRIOR_FLOOR / len(bias))
        prior = None if bias is None else tuple(float(np.exp(shift - b)) for b in bias)
        return Scoring(tuple(info["classes"]), dict(info["input"]), bool(info.get("tta_flip", False)),
                       tuple(info.get("tta_scales", ())), 0.0 if bias is None else 1.0, prior)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: its {ONNX_METADATA_KEY} metadata is incomplete ({type(e).__name__}: {e})") \
            from None


class EnsembleClassifier(Classifier):
    """Several classifiers deciding together on the mean of their decision logits (ensemble_logits). Members
    must share classes and input (check_same_task); each keeps its own views and logit bias. The ensemble's
    probabilities divide that mean by the mean of the members' temperatures, unless one was fitted for it."""

    def __init__(self, members, temperature=None):
        check_same_task(members)
        temperature = temperature or sum(m.temperature for m in members) / len(members)
        super().__init__(members[0].scoring.replace(temperature=temperature), [m.source for m in members],
                         members[0].record)
        self.members = members

    def decision_logits(self, images):
        return ensemble_logits([m.decision_logits(images) for m in self.members])

    def rescored(self, temperature=None, **overrides):
        return EnsembleClassifier([m.rescored(**overrides) for m in self.members],
                                  temperature or self.temperature)

    def describe(self):
        return {"checkpoint": [m.source for m in self.members], "members": [m.describe() for m in self.members],
                "temperature": self.temperature}

    def grad_cam(self, images, class_indices):
        """The members' heat-maps for the ensemble's classes, averaged."""
        return np.mean([m.grad_cam(images, class_indices) for m in self.members], axis=0)


def ensemble_logits(member_logits):
    """An ensemble's decision logits: the mean of its members' (each N x classes)."""
    return torch.stack(list(member_logits)).mean(0)


def check_same_task(members):
    """UserError naming the file unless every classifier shares the first one's classes, in the same order,
    and its input size and channels (each normalises with its own mean/std)."""
    def task(m):
        return f"classes {','.join(m.classes)}, {m.input['size']} px, {m.input['channels']} channel(s)"
    for other in members[1:]:
        if task(other) != task(members[0]):
            raise CheckpointError(f"{other.source} ({task(other)}) does not match {members[0].source} "
                                  f"({task(members[0])}); an ensemble's models need the same classes and input")


def amp_warnings(amp, device, classifier):
    """What to say of amp ("auto", "bf16", "off") for classifier (load_classifier's) on device -> a list of warnings:
    bf16 asked for where only exported models run (they run as exported), or where it would run in software
    (engine.amp_warning)."""
    members = getattr(classifier, "members", [classifier])
    if amp == "bf16" and not any(isinstance(m, ModelClassifier) for m in members):
        several = len(members) > 1
        return [f"bf16 is left unused: {', '.join(str(m.source) for m in members)} "
                f"{'are exported models, which run' if several else 'is an exported model, which runs'} as exported"]
    slow = engine.amp_warning(amp, device)
    return [slow] if slow else []


def load_classifier(paths, device="cpu", amp=False, batch_size=256, onnx_threads=0, **overrides):
    """A checkpoint (.pth), an exported .onnx or .pt2 file, or a list of them (an ensemble) -> a Classifier.
    overrides (tta_flip, tta_scales, logit_adjust; None keeps each file's own) change how they score;
    onnx_threads: OnnxClassifier's threads."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    members = [_load_one(path, device, amp, batch_size, onnx_threads).rescored(**overrides) for path in paths]
    return members[0] if len(members) == 1 else EnsembleClassifier(members)


def _load_one(path, device, amp, batch_size, onnx_threads=0):
    why = not_a_file(path, "a checkpoint or export")
    if why:
        raise UserError(f"model file {path} {why}")
    if path.suffix.lower() == ".onnx":
        return OnnxClassifier(path, batch_size, onnx_threads)
    if path.suffix.lower() == ".pt2":
        return ExportedProgramClassifier(path, batch_size)
    return ModelClassifier.from_checkpoint(path, engine.select_device(device), amp, batch_size)


def grad_cam(model, x, class_indices):
    """Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017) on the last convolutional feature map of `model` (the output of its last ReLU
    with a spatial map).

    x: normalised float batch N x C x H x W; class_indices: N ints. -> float array (N, H, W) in 0..1 at the
    input's resolution: where the evidence for class_indices[i] lies in image i.
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
