"""The one place that knows how a checkpoint is written and read, and what its scoring block means.

A checkpoint (format version 2) is a dict:
- "arch", "arch_args", "model": what rebuilds the network (model.build_model) and its weights;
- "scoring": how the network's outputs become decisions (a Scoring, below), for anything that runs the model:
  classes, input size, channels and normalisation, test-time views, logit adjustment. Exports copy it verbatim;
- what resuming needs, as in torchvision's references: "optimizer", "lr_scheduler", "epoch", "args" (the
  training flags, as parsed), and "progress" (best epoch and early-stopping count), "split" (the train/val
  indices and where the data was), "metrics" of the epoch, "online_model"/"ema_steps" under --ema.

Version-1 checkpoints (before the scoring block: the shipped models/fer2013_*.pth among them) kept classes,
input and class frequencies at the top and the scoring policy in the training flags; `load_checkpoint` reads
them through `_upgrade_v1` into the version-2 layout, so nothing else knows there was a version 1.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over the old
one, so a crash or a full disk leaves the previous checkpoint whole; the file gets the mode any new file gets
(0666 less the umask), as if written in place.
"""
import dataclasses
import math
import os
import pickle
import re
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from errors import UserError, not_a_file
from model import ARCH_ALIASES, ARCHS, build_model

FORMAT = "fer-toolkit-checkpoint"
VERSION = 2
REQUIRED_KEYS = ("arch", "arch_args", "model", "scoring")
INPUT_KEYS = ("size", "channels", "mean", "std")  # a scoring block's "input"
# Architecture arguments a version-1 checkpoint made before they were recorded was built with: vgg checkpoints
# without "widths" (models/fer2013_5class_vgg.pth among them) predate the change of default to 24..192.
UNRECORDED_ARCH_ARGS = {"vgg": {"widths": (32, 64, 128, 256)}}
# Prefixes that wrappers put before every weight's name: DataParallel/DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
PRIOR_FLOOR = 0.1  # logit adjustment counts a class's share as at least this share of 1 / classes


class CheckpointError(UserError):
    pass


@dataclass(frozen=True)
class Scoring:
    """How a model's logits become decisions: a checkpoint's "scoring" block, and an export's.

    classes: names of the model's outputs, in order. input: {"size": pixels of the square input, "channels":
    1 or 3, "mean", "std"}: a uint8 image x enters the model as (x / 255 - mean) / std. tta_flip, tta_scales:
    the test-time views whose logits are averaged: the image, copies zoomed about the centre by each scale
    (above 1 zooms in), and the mirror of each under tta_flip. logit_adjust, class_prior: the averaged logits are
    shifted by logit_bias = -logit_adjust x log(class_prior) (logit adjustment, Menon et al., "Long-tail learning
    via logit adjustment", ICLR 2021): with tau 1 a model trained on imbalanced classes decides as if they were
    equally common, as a class-balanced test and Macro-F1 reward; 0 is the plain argmax. temperature: the
    probabilities are softmax(decision logits / temperature) (calibration.py; 1 until one is fitted), which
    leaves every decision as it was.
    """
    classes: tuple
    input: dict
    tta_flip: bool = False
    tta_scales: tuple = ()
    logit_adjust: float = 0.0
    class_prior: tuple = None   # share of each class among the training images
    temperature: float = 1.0

    VERSION = 1

    def __post_init__(self):
        if not self.classes:
            raise ValueError("has no classes in its scoring block")
        missing = [k for k in INPUT_KEYS if k not in self.input]
        if missing:
            raise ValueError(f"has no {', '.join(missing)} in its scoring input")
        if not self.temperature > 0:
            raise ValueError(f"has temperature {self.temperature}; it must be positive")
        if self.logit_adjust and self.class_prior is None:
            raise ValueError("records no training class frequencies, which --logit-adjust needs; "
                             "pass --logit-adjust 0")

    @property
    def logit_bias(self):
        """-> one float per class added to the averaged logits, or None for the plain argmax.

        A class's share counts as at least PRIOR_FLOOR of an equal share: a class seen a handful of times
        (one Disgust image among thousands) would otherwise get a boost no logit can match and take every
        decision. Label smoothing (0.1 by default) keeps a network's own prior above that floor anyway.
        """
        if not self.logit_adjust:
            return None
        floor = PRIOR_FLOOR / len(self.class_prior)
        return [-self.logit_adjust * math.log(max(p, floor)) for p in self.class_prior]

    def replace(self, **changes):
        """A copy with the fields in changes replaced; those that are None keep their value."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self):
        """The JSON-able block stored in checkpoints and exports; logit_bias is written out for readers
        outside this toolkit (from_dict derives it again)."""
        return {"version": self.VERSION, "classes": list(self.classes), "input": dict(self.input),
                "tta_flip": self.tta_flip, "tta_scales": list(self.tta_scales), "logit_adjust": self.logit_adjust,
                "class_prior": None if self.class_prior is None else list(self.class_prior),
                "logit_bias": self.logit_bias, "temperature": self.temperature}

    @classmethod
    def from_dict(cls, block):
        """A scoring block (to_dict's) -> Scoring. ValueError for a block of a later version, without classes or
        with an input that lacks one of INPUT_KEYS; KeyError or TypeError for one that lacks a field or has the
        wrong kind of value (or is not a dict)."""
        if not isinstance(block, dict):
            raise TypeError(f"it is {type(block).__name__}, not a dict")
        if block.get("version", 1) > cls.VERSION:
            raise ValueError(f"has a version-{block['version']} scoring block; this toolkit reads version "
                             f"{cls.VERSION}")
        prior = block.get("class_prior")
        return cls(classes=tuple(block["classes"]), input=dict(block["input"]), tta_flip=bool(block["tta_flip"]),
                   tta_scales=tuple(block["tta_scales"]), logit_adjust=float(block["logit_adjust"]),
                   class_prior=None if prior is None else tuple(prior),
                   temperature=float(block.get("temperature", 1.0)))


def scoring_of(state, path="checkpoint"):
    """The Scoring of a loaded checkpoint; CheckpointError naming path for a block that cannot be read."""
    try:
        return Scoring.from_dict(state["scoring"])
    except ValueError as e:
        raise CheckpointError(f"{path} {e}") from None
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: its scoring block is incomplete or malformed ({type(e).__name__}: {e})") \
            from None


def save_checkpoint(state, path):
    """Write state (the version-2 layout above) to path atomically: the old file stays whole until the new one
    is complete. The file's mode is a new file's (0666 less the umask). OSError if it cannot be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "format": FORMAT, "version": VERSION}
    # Not tempfile.mkstemp, which makes the file 0600 whatever the umask; O_EXCL keeps a name already taken.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by save_checkpoint (either version) -> a dict in the version-2 layout.

    Raises CheckpointError, naming path, for a missing, truncated or foreign file (a TorchScript export among
    them), one that lacks a key, or one whose arch this toolkit does not build or whose scoring block cannot be
    read (model_from_checkpoint checks that the model builds from them)."""
    path = Path(path)
    why = not_a_file(path, "a checkpoint")
    if why:
        raise CheckpointError(f"checkpoint {path} {why}")
    if is_torchscript(path):
        raise CheckpointError(f"{path} is a TorchScript export, which is for LibTorch (C++), not a checkpoint; give "
                              "the .pth checkpoint it was exported from (predict.py and test.py also take an .onnx "
                              "or .pt2 export)")
    try:
        # weights_only=False: our checkpoints hold plain Python values (args, metrics) beside tensors.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or another kind of file): "
                              f"{str(e).splitlines()[0][:100]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no '{FORMAT}' marker)")
    version = state.get("version", 1)
    if version == 1:
        missing = [k for k in ("arch", "arch_args", "classes", "input", "model") if k not in state]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}")
        state = _upgrade_v1(state)
    elif version != VERSION:
        raise CheckpointError(f"{path} is a version-{version} checkpoint; this toolkit reads versions 1 and {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    arch = state["arch"]
    if not (isinstance(arch, str) and ARCH_ALIASES.get(arch, arch) in ARCHS):
        raise CheckpointError(f"{path} has arch {arch!r}, which this toolkit does not build; it builds "
                              f"{', '.join(ARCHS)}")
    state["arch"] = ARCH_ALIASES.get(arch, arch)
    scoring_of(state, path)  # CheckpointError for a block that cannot be read
    return state


def is_torchscript(path):
    """Whether path is a TorchScript archive (torch.jit.save's zip, which holds <name>/constants.pkl; a
    torch.save zip does not)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _upgrade_v1(state):
    """A version-1 checkpoint in the version-2 layout: the scoring policy that v1 read from the training flags
    (--tta, --tta-scales, --logit-adjust; checkpoints from before a flag were scored without it) and the class
    frequencies become the scoring block; early-stopping state moves to "progress"."""
    state = dict(state)
    args = state.get("args", {})
    classes, input_cfg, prior = state.pop("classes"), state.pop("input"), state.pop("class_prior", None)
    state["arch_args"] = {**UNRECORDED_ARCH_ARGS.get(state["arch"], {}), **state["arch_args"]}
    state["scoring"] = Scoring(classes=tuple(classes), input=dict(input_cfg), tta_flip=bool(args.get("tta")),
                               tta_scales=tuple(args.get("tta_scales") or ()),
                               logit_adjust=float(args.get("logit_adjust") or 0.0),
                               class_prior=None if prior is None else tuple(prior)).to_dict()
    if "best" in state:
        state["progress"] = {"best": state.pop("best"), "bad_epochs": state.pop("bad_epochs", 0)}
    return state


def model_from_checkpoint(state, path="checkpoint"):
    """Rebuild the model a loaded checkpoint describes and load its weights (fp16 release weights are cast to
    the model's fp32). CheckpointError, naming path, if the scoring block cannot be read, if the arch cannot be
    built from its arch_args and scoring input (an unknown arch, an input too small for it), or, naming the keys,
    if the weights do not fit."""
    scoring = scoring_of(state, path)
    try:
        model = build_model(state["arch"], len(scoring.classes), in_channels=scoring.input["channels"],
                            input_size=scoring.input["size"], **state["arch_args"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: arch {state['arch']!r} cannot be built from its arch_args "
                              f"{state['arch_args']!r} and scoring input {scoring.input!r}: {e}") from None
    weights = strip_wrapper_prefixes(state["model"])
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong_shape = [f"{k} {tuple(weights[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
                   if k in weights and weights[k].shape != v.shape]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            problems.append(f"{what} {_listing(keys)}")
    if problems:
        raise CheckpointError(f"{path}: weights do not fit arch {state['arch']!r}: {'; '.join(problems)}")
    model.load_state_dict(weights)
    return model


def strip_wrapper_prefixes(weights):
    """A state dict saved from a wrapped model (DataParallel/DDP "module.", torch.compile "_orig_mod.", in any
    nesting) with the wrappers' prefixes removed, so it loads into the bare model."""
    pattern = re.compile("^(?:" + "|".join(re.escape(p) for p in WRAPPER_PREFIXES) + ")+")
    return {pattern.sub("", k): v for k, v in weights.items()}


def _listing(keys, shown=4):
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
