"""The one place that knows how a checkpoint is written and read.

A checkpoint is a dict that rebuilds and runs the model on its own: arch and its arguments, class names,
input size, channels and normalisation, plus what resuming needs (optimizer, lr scheduler, epoch, early
stopping state, the train/val split indices) and the training arguments and metrics for the record.
How logits become decisions (flip and zoom TTA, the logit adjustment and the class frequencies it uses) is read
from it by scoring_views and logit_bias, which every scoring path calls.
It is written to a temporary file in the same folder, flushed to disk and renamed over the old one, so a
crash or a full disk leaves the previous checkpoint intact.
"""
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

import engine
from dataset import load_split, recorded_subset
from errors import UserError
from model import build_model

FORMAT = "fer-toolkit-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("arch", "arch_args", "classes", "input", "model")
# Architecture arguments a checkpoint made before they were recorded was built with: vgg checkpoints
# without "widths" (models/fer2013_5class_vgg.pth among them) predate the change of default to 24..192.
UNRECORDED_ARCH_ARGS = {"vgg": {"widths": (32, 64, 128, 256)}}


class CheckpointError(UserError):
    pass


def save_checkpoint(state, path):
    """Write state to path atomically: the old file stays whole until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    """Read and check a checkpoint written by save_checkpoint; CheckpointError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # weights_only=False: our checkpoints hold plain Python values (args, metrics) beside tensors.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or another kind of file): "
                              f"{str(e).splitlines()[0][:100]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return state


def model_from_checkpoint(state, path="checkpoint"):
    """Rebuild the model a checkpoint describes and load its weights."""
    arch_args = {**UNRECORDED_ARCH_ARGS.get(state["arch"], {}), **state["arch_args"]}
    model = build_model(state["arch"], len(state["classes"]), in_channels=state["input"]["channels"],
                        input_size=state["input"]["size"], **arch_args)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit arch {state['arch']!r}: "
                              f"{str(e).splitlines()[0][:120]}") from None
    return model


def held_out_validation(state, root, path="checkpoint"):
    """The faces of root's train split that training held out for validation, by the checkpoint's indices."""
    cfg = state["input"]
    return recorded_subset(load_split(root, "train", state["classes"], cfg["size"], cfg["channels"]),
                           state["split"]["val_indices"], "val", f"{root}: {path}'s validation split")


def scoring_views(state):
    """How the checkpoint's model is scored, as keyword arguments of engine.predict_logits: on each image's
    mirror too (train.py --tta) and on copies zoomed by each of --tta-scales. Checkpoints from before those
    flags were scored on the image alone."""
    args = state.get("args", {})
    return {"tta_flip": args.get("tta", False), "tta_scales": tuple(args.get("tta_scales", ()))}


def logit_bias(state, tau=None, path="checkpoint"):
    """The per-class offsets added to the logits before any decision: -tau * log(training class frequency).

    Logit adjustment (Menon et al., 2021): a model trained on imbalanced classes learns their frequencies
    into its logits; subtracting tau * log(frequency) makes it decide as if classes were equally common,
    which is what a class-balanced test and Macro-F1 reward (tau 1 is the Bayes rule for that). tau defaults
    to the checkpoint's --logit-adjust (checkpoints from before that flag: 0); -> None when tau is 0.
    """
    tau = state.get("args", {}).get("logit_adjust", 0.0) if tau is None else tau
    if not tau:
        return None
    if "class_prior" not in state:
        raise CheckpointError(f"{path} does not record its training class frequencies, which --logit-adjust "
                              "needs; pass --logit-adjust 0")
    return (-tau * torch.tensor(state["class_prior"], dtype=torch.float64).log()).tolist()


def check_same_task(members):
    """members: (path, classes, input config) of each model of an ensemble. CheckpointError unless all share
    the classes, in the same order, and the input size and channels (each normalises with its own mean/std)."""
    def task(classes, input_cfg):
        return f"classes {','.join(classes)}, {input_cfg['size']} px, {input_cfg['channels']} channel(s)"
    first_path, *first = members[0]
    for path, *other in members[1:]:
        if task(*other) != task(*first):
            raise CheckpointError(f"{path} ({task(*other)}) does not match {first_path} ({task(*first)}); "
                                  "an ensemble's models need the same classes and input")


def scored_logits(state, images_uint8, device, path="checkpoint", batch_size=256, amp=False, tta_flip=None,
                  tta_scales=None, tau=None):
    """Decision logits of the checkpoint's model for a uint8 N x C x H x W tensor, scored as training scored
    its test split (scoring_views, logit_bias) unless tta_flip, tta_scales or tau say otherwise.

    -> (logits, how): how records the views and logit bias used, for a report.
    """
    views = scoring_views(state)
    if tta_flip is not None:
        views["tta_flip"] = tta_flip
    if tta_scales is not None:
        views["tta_scales"] = tuple(tta_scales)
    bias = logit_bias(state, tau, path)
    model = engine.prepare_model(model_from_checkpoint(state, path), device)
    logits = engine.predict_logits(model, images_uint8, state["input"], device, batch_size, amp, **views,
                                   logit_bias=bias)
    return logits, dict(checkpoint=str(path), **views, logit_bias=bias)
