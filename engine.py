"""Running a network over in-memory data: device choice, torchrun/DDP set-up, mixed precision, the batched
loop over test-time views, and scoring a split.

The policy (which views, which logit bias) is the caller's: inference.Classifier holds it and calls
predict_logits. Scoring under torchrun sums every process's confusion matrix, so it equals a single-process
evaluation.
"""
import contextlib
import os
import platform

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from augment import normalize, zoom
from errors import UserError
from ferplus import vote_distribution
from metrics import calibration_from_sums, calibration_sums, confusion_matrix, report_from_confusion


def init_distributed():
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a no-op without torchrun.

    -> (rank, world_size, local_rank). NCCL on GPUs, Gloo on CPUs.
    """
    if "RANK" not in os.environ or dist.is_initialized():
        return rank_and_world() + (int(os.environ.get("LOCAL_RANK", 0)),)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


@contextlib.contextmanager
def distributed_process():
    """Join torchrun's process group for the block (a no-op without torchrun) -> (rank, world, local_rank).

    On a normal exit every process meets at a barrier before the group is torn down: one that leaves while a
    peer still works (rank 0 writing the test report) can abort the run under Gloo. Not on an exception,
    where a peer may never arrive.
    """
    rank, world, local_rank = init_distributed()
    try:
        yield rank, world, local_rank
        if world > 1:
            dist.barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()


def rank_and_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor, device):
    """Sum a CPU tensor over all processes, through `device` (NCCL reduces only GPU tensors)."""
    if rank_and_world()[1] == 1:
        return tensor
    on_device = tensor.to(device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.cpu()


def select_device(name="auto", local_rank=0):
    """--device -> torch.device: "auto" picks CUDA (this process's local_rank under torchrun), then Apple's MPS,
    then the CPU; a named device must exist here. UserError naming the flag otherwise."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
        available = {"cpu": True, "cuda": torch.cuda.is_available(),
                     "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
        if not available.get(device.type, False):
            raise UserError(f"--device {name}: there is no {device.type} device on this machine")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device):
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN runs bf16 convolutions natively only on CPUs with AVX-512 BF16 or AMX; elsewhere it is slower.
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def cpu_name():
    """The CPU's model name: /proc/cpuinfo's on Linux, platform.processor() elsewhere ("" where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def describe_device(device):
    """What a speed figure was measured on, in one line: the GPU's name, or the CPU's model name, the widest vector
    instructions torch uses on it, its thread count and whether it runs bf16 natively (on a CPU without it,
    --amp auto trains in fp32, several times slower: docs/report.md, section 8.3)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type != "cpu":
        return str(device)
    bf16 = "native bf16" if bf16_supported(device) else "no native bf16"
    threads = torch.get_num_threads()
    named = [cpu_name() or "CPU", torch.backends.cpu.get_cpu_capability(), f"{threads} thread{'s' * (threads != 1)}",
             bf16]
    return f"cpu ({', '.join(named)})"


def amp_warning(amp, device):
    """Why amp ("auto", "bf16", "off") will be slow on device, or None: bf16 asked for on a CPU without native bf16
    runs in software, many times slower than fp32 (25 times in docs/report.md, section 8.3)."""
    if amp == "bf16" and device.type == "cpu" and not bf16_supported(device):
        return ("bf16 runs in software on this CPU, which has no native bf16 (AVX-512 BF16 or AMX): many times "
                "slower than fp32, which auto picks here")
    return None


def use_amp(amp, device):
    """--amp auto|bf16|off -> whether to run under bf16 autocast on this device."""
    if amp == "auto":
        return bf16_supported(device)
    return amp == "bf16"


def autocast(device, enabled):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare_model(model, device, channels_last=True):
    """The model moved to device, in channels_last memory layout unless told otherwise."""
    model = model.to(device)
    # channels_last lets oneDNN and cuDNN pick their fastest convolution kernels (about 1.2x here on CPU).
    return model.to(memory_format=torch.channels_last) if channels_last else model


def to_input(images_uint8, input_cfg, device, channels_last=True):
    """uint8 N x C x H x W -> float32 on device, (x / 255 - mean) / std (input_cfg's), channels_last unless told
    otherwise."""
    x = normalize(images_uint8.to(device, non_blocking=True), input_cfg["mean"], input_cfg["std"])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def tta_views(x, tta_flip=False, tta_scales=()):
    """The views of a normalised batch that test-time augmentation scores: the batch itself, then a copy
    zoomed by each factor in tta_scales (above 1 zooms in, as train-time affine augmentation does; the border
    is reflected, as there), each followed by its mirror under tta_flip."""
    for scale in (1.0, *tta_scales):
        view = x if scale == 1.0 else zoom(x, scale)
        if not x.is_contiguous():  # a channels_last batch (to_input's) keeps its layout
            view = view.contiguous(memory_format=torch.channels_last)
        yield view
        if tta_flip:
            yield torch.flip(view, dims=[3])


def decision_logits(view_logits, logit_bias=None):
    """The logits a model decides on, from its raw float32 outputs (N x classes, PyTorch's or an exported
    program's) for each of tta_views: averaged, then shifted by logit_bias (one number per class)."""
    logits = torch.stack(list(view_logits)).mean(0)
    if logit_bias is not None:
        logits = logits + torch.tensor(logit_bias, dtype=logits.dtype, device=logits.device)
    return logits


@torch.no_grad()
def predict_logits(forward, images_uint8, input_cfg, device, batch_size=256, amp=False, tta_flip=False,
                   tta_scales=(), logit_bias=None, channels_last=True):
    """Decision logits (float32 N x classes, on the CPU) for a uint8 N x C x H x W tensor, a batch at a time:
    each batch normalised by input_cfg ("mean", "std"), every view of tta_views run through forward (a model,
    or any callable from a float batch to logits), averaged and shifted by logit_bias. A batch's views go
    through forward together, batch_size images in all: one face's six views in one call take 40% of the time of
    six calls on this project's CPU at one thread."""
    views = (1 + len(tta_scales)) * (2 if tta_flip else 1)
    step = max(1, batch_size // views)
    outputs = []
    for start in range(0, len(images_uint8), step):
        x = to_input(images_uint8[start:start + step], input_cfg, device, channels_last)
        with autocast(device, amp):
            logits = forward(torch.cat(list(tta_views(x, tta_flip, tta_scales)))).float()
        outputs.append(decision_logits(logits.split(len(x)), logit_bias).cpu())
    if not outputs:
        return torch.zeros(0, 0)
    return torch.cat(outputs)


def evaluate(decide, split, device, temperature=None):
    """-> (mean cross-entropy, classification_report) of decide (uint8 images -> decision logits, e.g. a
    Classifier's decision_logits) on a FERSplit; with a temperature the report adds the calibration figures
    before and after it (classification_scores).

    Under torchrun each process decides every world-size-th image and classification_scores adds the shares up.
    """
    rank, world = rank_and_world()
    logits = decide(split.images[rank::world])
    votes = (None if split.votes is None
             else vote_distribution(split.votes[rank::world], split.vote_names or split.classes))
    return classification_scores(logits, split.labels[rank::world], split.classes, device, votes, temperature)


def classification_scores(logits, labels, classes, device, vote_distributions=None, temperature=None):
    """-> (mean cross-entropy, classification_report) of decision logits (N x classes) against int labels (N).

    vote_distributions (float N x classes, vote data): the report adds the mean cross-entropy and KL divergence
    of the predicted distribution from the annotators' (vote_cross_entropy, vote_kl, in nats).
    temperature: the report adds "calibration": ECE, NLL and Brier score (metrics.calibration_from_sums) of
    softmax(logits) ("before") and softmax(logits / temperature) ("after"), and the temperature.
    Under torchrun each process passes its share of a split; the confusion matrices and loss sums are added
    up, so every process gets the figures of one process scoring the whole split.
    """
    k = len(classes)
    cm = confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), k) if len(labels) else 0
    # Everything is a sum, added up over processes: the confusion matrix, the loss, the vote cross-entropy and
    # entropy, and with a temperature the calibration sums and vote cross-entropy before and after it.
    calibrating = temperature is not None
    size = len(calibration_sums(np.zeros((0, k)), [])) if calibrating else 0
    totals = torch.zeros(k * k + 3 + (2 * size + 2 if calibrating else 0), dtype=torch.float64)
    totals[:k * k] += torch.as_tensor(cm, dtype=torch.float64).flatten()
    if len(labels):
        totals[k * k] = F.cross_entropy(logits, labels, reduction="sum").double()
        if vote_distributions is not None:
            t = vote_distributions.double()
            totals[k * k + 1] = -(t * torch.log_softmax(logits.double(), 1)).sum()
            totals[k * k + 2] = -(t * t.clamp(min=1e-300).log()).sum()
        if calibrating:
            at = k * k + 3
            for i, scale in enumerate((1.0, temperature)):
                scaled = logits.double() / scale
                totals[at + i * size:at + (i + 1) * size] = torch.from_numpy(
                    calibration_sums(torch.softmax(scaled, 1).numpy(), labels.numpy()))
                if vote_distributions is not None:
                    totals[at + 2 * size + i] = -(vote_distributions.double() * torch.log_softmax(scaled, 1)).sum()
    totals = all_reduce_sum(totals, device)
    cm = totals[:k * k].round().long().view(k, k).numpy()
    n = max(1, int(cm.sum()))
    report = report_from_confusion(cm, classes)
    if vote_distributions is not None:
        report.update(vote_cross_entropy=(totals[k * k + 1] / n).item(),
                      vote_kl=((totals[k * k + 1] - totals[k * k + 2]) / n).item())
    if calibrating:
        at = k * k + 3
        report["calibration"] = {"temperature": float(temperature)}
        for i, name in enumerate(("before", "after")):
            report["calibration"][name] = calibration_from_sums(totals[at + i * size:at + (i + 1) * size].numpy())
            if vote_distributions is not None:
                report["calibration"][name]["vote_kl"] = ((totals[at + 2 * size + i] - totals[k * k + 2]) / n).item()
    return (totals[k * k] / n).item(), report
