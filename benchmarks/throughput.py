"""Training and inference images/s on this machine, and which levers give what.

    python benchmarks/throughput.py --data /path/to/fer5 [--device cpu] [--steps 20] [--widths 16,48,96,192 ...]

For the assignment's network it compares the assignment's data path and training step (PIL decodes and resizes
every image every epoch through a DataLoader, fp32, NCHW) with this toolkit's (images decoded once into a
uint8 tensor, augmented in batches on the device), then adds channels_last, bf16 autocast, a larger
batch and torch.compile one at a time (on a CPU without native bf16 the bf16 row runs in software, minutes a row, so
only with --bf16-in-software; the later rows are then fp32). Every row runs the same SGD training step on real
images. Then the vgg network at each of --widths (channels per stage): training images/s with the default recipe's
four augmentations, the FLOPs of a training image (torch.utils.flop_counter) and the TFLOP/s they make, to weigh
width against time. The first line names the machine (engine.describe_device).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from speedrun import step_flops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import engine  # noqa: E402
from augment import AUGMENTATIONS, augment_batch  # noqa: E402
from checkpoint import Scoring  # noqa: E402
from cli import width_list  # noqa: E402
from dataset import load_split, resolve_classes, split_dir  # noqa: E402
from errors import UserError, exit_code  # noqa: E402
from inference import ModelClassifier  # noqa: E402
from model import build_model, default_in_channels  # noqa: E402


class AssignmentImageFolder(torch.utils.data.Dataset):
    """The assignment's loading: open, convert to RGB, resize to 48x48, to tensor, normalise, per access."""

    def __init__(self, root, classes):
        folder = split_dir(root, "train")
        by_name = {p.name.lower(): p for p in folder.iterdir()}
        self.items = [(f, k) for k, c in enumerate(classes) for f in sorted(by_name[c.lower()].iterdir())]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB").resize((48, 48), Image.BILINEAR), dtype=np.float32) / 255
        return (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5, label


# The default network's widths, then its first stage at 24 (the default before) and 32, and FER+'s 32..256 with
# 32 and 16 channels first.
WIDTHS = [(16, 48, 96, 192), (24, 48, 96, 192), (32, 48, 96, 192), (32, 64, 128, 256), (16, 64, 128, 256)]


def time_steps(step, batches, steps, warmup=3):
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    n, start = 0, time.perf_counter()
    for _ in range(steps):
        n += step(*next(it))
    return n / (time.perf_counter() - start)


def training_step(model, optimizer, device, amp, channels_last, aug):
    def step(x, y):
        x, y = x.to(device), y.to(device)
        if x.dtype == torch.uint8:
            x = engine.to_input(x, {"mean": 0.5, "std": 0.5}, device, channels_last)
        if aug:
            x = augment_batch(x, aug, torch.Generator().manual_seed(0))
        with engine.autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(y)
    return step


def epochs_of(loader):
    """A DataLoader's batches, epoch after epoch: a row may time more steps than one epoch has."""
    while True:
        yield from loader


def cached_batches(split, batch_size):
    while True:
        order = torch.randperm(len(split))
        for idx in torch.split(order, batch_size):
            if len(idx) == batch_size:
                yield split.images[idx], split.labels[idx]


def measure_training(arch, split, device, steps, batch_size, amp, channels_last, aug, compile_model=False,
                     assignment_loader=None, arch_args=None):
    torch.manual_seed(0)
    model = build_model(arch, len(split.classes), **(arch_args or {})).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    trained = torch.compile(model) if compile_model else model
    model.train()
    batches = epochs_of(assignment_loader) if assignment_loader is not None else cached_batches(split, batch_size)
    return time_steps(training_step(trained, optimizer, device, amp, channels_last, aug), batches, steps,
                      warmup=5 if compile_model else 3)


def measure_inference(arch, split, device, amp, batch_size=256, repeats=3):
    model = engine.prepare_model(build_model(arch, len(split.classes)), device)
    scoring = Scoring(tuple(split.classes), {"size": 48, "channels": split.images.shape[1], "mean": 0.5, "std": 0.5})
    classifier = ModelClassifier(model, scoring, device=device, amp=amp, batch_size=batch_size)
    images = split.images[: batch_size * 4]
    classifier.decision_logits(images[:batch_size])
    start = time.perf_counter()
    for _ in range(repeats):
        classifier.decision_logits(images)
    return repeats * len(images) / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a dataset folder in the assignment's layout (train/<Class>/*.jpg)")
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu, cuda, cuda:1, mps")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--bf16-in-software", action="store_true",
                   help="on a CPU without native bf16, time the bf16 row too (in software: about 25 times slower than "
                   "fp32, minutes a row)")
    p.add_argument("--widths", type=width_list, nargs="*", metavar="W1,W2,...", default=WIDTHS,
                   help="vgg channels per stage to time, one comma list each (default: "
                   + " ".join(",".join(map(str, w)) for w in WIDTHS) + ")")
    return exit_code("throughput.py", run, p.parse_args(argv))


def run(args):
    device = engine.select_device(args.device)
    classes, _ = resolve_classes(args.data)
    print(f"machine: {engine.describe_device(device)}, torch {torch.__version__}, {args.steps} steps a row")

    start = time.perf_counter()
    rgb = load_split(args.data, "train", classes, 48, 3)
    print(f"decoding {len(rgb)} training images once: {time.perf_counter() - start:.1f}s")
    gray = load_split(args.data, "train", classes, 48, 1)
    if len(gray) < 128:  # the largest batch a row times
        raise UserError(f"--data {args.data}: {len(gray)} training images; throughput.py needs at least 128")
    assignment_loader = torch.utils.data.DataLoader(AssignmentImageFolder(args.data, classes), batch_size=64,
                                                    shuffle=True)
    bf16 = engine.bf16_supported(device)

    print("\n--arch assignment, training images/s (SGD step, batch 64 unless noted)")
    rows = [("the assignment's path: PIL every epoch, DataLoader, fp32", dict(assignment_loader=assignment_loader)),
            ("+ decoded once, uint8 tensor, batched flip+affine", dict(aug=["flip", "affine"])),
            ("+ channels_last", dict(aug=["flip", "affine"], channels_last=True))]
    if bf16 or args.bf16_in_software:
        rows.append(("+ bf16 autocast" + ("" if bf16 else " (in software: no native bf16)"),
                     dict(aug=["flip", "affine"], channels_last=True, amp=True)))
    fp32 = "" if bf16 else ", fp32"
    rows.append((f"+ batch 128{fp32}", dict(aug=["flip", "affine"], channels_last=True, amp=bf16, batch_size=128)))
    if not args.no_compile:
        rows.append((f"+ torch.compile (batch 128{fp32})", dict(aug=["flip", "affine"], channels_last=True, amp=bf16,
                                                                 batch_size=128, compile_model=True)))
    wide = max(len(name) for name, _ in rows)
    print(f"  {'':<{wide}}{'img/s':>9}{'vs. first':>11}")
    base = None
    for name, kw in rows:
        kw = {"batch_size": 64, "amp": False, "channels_last": False, "aug": [], **kw}
        try:
            speed = measure_training("assignment", rgb, device, args.steps, **kw)
        except Exception as e:  # torch.compile needs a working compiler toolchain; say so and go on
            print(f"  {name:<{wide}} failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}")
            continue
        base = base or speed
        print(f"  {name:<{wide}}{speed:>9.0f}{speed / base:>10.2f}x")

    print("\nevery arch, this toolkit's path (cached tensors, flip+affine, channels_last"
          + (", bf16" if bf16 else ", fp32") + ")")
    print(f"  {'arch':<12}{'train img/s (b64)':>20}{'inference img/s (b256)':>26}")
    for arch in ("assignment", "vgg"):
        split = rgb if default_in_channels(arch) == 3 else gray
        train = measure_training(arch, split, device, args.steps, 64, bf16, True, ["flip", "affine"])
        infer = measure_inference(arch, split, device, bf16)
        print(f"  {arch:<12}{train:>20.0f}{infer:>26.0f}")

    print("\nvgg by channels per stage, training images/s (batch 64, flip+affine+jitter+erase"
          + (", bf16" if bf16 else ", fp32") + ")")
    print(f"  {'widths':<20}{'train img/s':>12}{'GFLOP/img':>11}{'TFLOP/s':>9}")
    for widths in args.widths:
        shape = {"widths": widths}
        train = measure_training("vgg", gray, device, args.steps, 64, bf16, True, AUGMENTATIONS, arch_args=shape)
        flops = step_flops(build_model("vgg", len(gray.classes), **shape), 1, 48)
        print(f"  {','.join(map(str, widths)):<20}{train:>12.0f}{flops / 1e9:>11.3f}{train * flops / 1e12:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
