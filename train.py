"""Train a facial-expression CNN, keep the best and last checkpoints, and score the best on the test split.

    python train.py --data demo                          # synthetic faces, a few minutes on a CPU
    python train.py --data /path/to/fer5                 # ROOT/train/<Class>/*.jpg, ROOT/test/<Class>/*.jpg
    python train.py --data fer2013 --test-split val      # FER2013 folders: PublicTest (val/) as the test
    python train.py --data fer5 --recipe assignment      # the course assignment's recipe, for comparison
    python train.py --data fer5 --resume                 # carry on from checkpoints/last.pth

The steps read top to bottom: build (data, model, optimizer), restore (--resume), fit (train one epoch,
evaluate, save, every epoch), test. The whole dataset is decoded once into a uint8 tensor on the training
device and augmented there a batch at a time; validation is a seeded, stratified 80/20 split of train (or the
data's val/ folder).
"""
import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import center_crop
from tqdm import tqdm

import engine
from augment import AFFINE_RANGES, AUGMENTATIONS, MIXES, augment_batch, mix_batch
from calibration import bound_note, calibrate, summary
from checkpoint import (
    CheckpointError,
    Scoring,
    model_from_checkpoint,
    save_checkpoint,
)
from cli import (
    TTA_HELP,
    TTA_SCALES_HELP,
    HelpFormatter,
    add_runtime_args,
    affine_ranges,
    augmentation_list,
    class_list,
    conv_counts,
    flags_given,
    fraction,
    fraction_or_zero,
    logit_adjust_tau,
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
    scale_list,
    seed,
    share,
    shown,
    single_view,
    width_list,
)
from dataset import FER2013_CLASSES, available_splits, class_key, layout, load_split, resolve_classes, scoring_protocol
from errors import UserError, exit_code
from ferplus import LABEL_MODES, MultiTargetLoss
from inference import ModelClassifier
from leakage import near_duplicates
from metrics import format_report
from model import (
    ARCH_ALIASES,
    ARCHS,
    VGG_WIDTHS,
    build_model,
    check_input_size,
    count_parameters,
    default_in_channels,
)
from reports import TrainingLog, save_report
from resume import Progress, carry_best, restore, resume_point
from runs import set_aside_earlier_run
from splits import recorded_subset, stratified_split
from synthetic import demo_dataset
from training_recipes import FERPLUS_LABEL_MODE, RECIPE_ALIASES, RECIPES

MONITORS = {"val_macro_f1": max, "val_acc": max, "val_loss": min}


# ---------------------------------------------------------------------------------------------------------
# Arguments


def get_args_parser():
    p = argparse.ArgumentParser(description="Train a facial-expression CNN.",
                                formatter_class=HelpFormatter)
    p.add_argument("--recipe", choices=RECIPES, default="default",
                   help="a named set of defaults (flags given still win): default picks ferplus for vote data, "
                   "fer2013 for FER2013's seven classes and fer5 (the defaults shown here) for other data; fast is "
                   "fer5's with its first epochs on smaller images (about 13%% less time for as good a validation "
                   "accuracy); fer5-w24 and ferplus-w32 are fer5's and ferplus's recipes from before their first stage "
                   "was narrowed to 16 channels; assignment is the course assignment's recipe. " +
                   "; ".join(f"{name}: " + " ".join(f"--{dest.replace('_', '-')} {shown(value)}"
                                                     for dest, value in RECIPES[name].items())
                             for name in ("fast", "fer5-w24", "ferplus", "ferplus-w32", "fer2013")))

    g = p.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="dataset folder (train/<Class>/..., test/<Class>/...), a FER2013 .csv, FER+ (a folder of "
                   "FER2013Train/, FER2013Valid/, FER2013Test/ with their label.csv, or fer2013new.csv with "
                   "fer2013.csv beside it), or 'demo'")
    g.add_argument("--classes", type=class_list, help="comma list choosing and ordering classes, e.g. "
                   "Angry,Happy,Neutral,Sad,Surprise (case-insensitive); default: all in train/")
    g.add_argument("--test-split", default="test", choices=["test", "val"],
                   help="split scored at the end; 'val' for FER2013's folders, whose val/ is PublicTest")
    g.add_argument("--val-fraction", type=fraction, default=0.2,
                   help="stratified share of train held out for validation when the data has no val/")
    g.add_argument("--label-mode", choices=LABEL_MODES,
                   help="vote data (FER+): how the ten annotators' votes become training targets, one of the "
                   f"FER+ paper's four schemes (ferplus.py; default {FERPLUS_LABEL_MODE}; multi_target ignores "
                   "--label-smoothing and --class-weights). Validation and test score the faces with a majority "
                   "emotion, as the paper does")
    g.add_argument("--input-size", type=positive_int, default=48, help="images are resized to this square")
    g.add_argument("--progressive-resize", type=positive_int, metavar="SIZE",
                   help="train the first epochs on smaller images: SIZE pixels in epoch 1, growing step by step to "
                   "--input-size (or --train-crop) at two thirds of --epochs (validation and test always at "
                   "--input-size)")
    g.add_argument("--channels", type=int, choices=[1, 3], help="input channels (default: the arch's)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=[*ARCHS, *ARCH_ALIASES], default="vgg", metavar="{" + ",".join(ARCHS) + "}",
                   help="vgg (this toolkit's) or the assignment's network")
    g.add_argument("--widths", type=width_list,
                   help=f"vgg: channels per stage (default: {','.join(map(str, VGG_WIDTHS))})")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=28,
                   help="passes over the training split at most (--patience may stop earlier); the learning-rate "
                   "schedule spans them")
    g.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per training step of each process (under torchrun, N processes take N times as many)")
    g.add_argument("--opt", choices=["sgd", "adamw"], default="sgd", help="the optimizer")
    g.add_argument("--lr", type=positive_float, default=0.05,
                   help="peak learning rate, reached after --warmup-epochs and decayed by --sched")
    g.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD's momentum (0: plain SGD)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="SGD's Nesterov momentum")
    g.add_argument("--weight-decay", type=non_negative_float, default=5e-4,
                   help="L2 penalty on conv and linear weights (not on BatchNorm or biases)")
    g.add_argument("--sched", choices=["cosine", "none"], default="cosine",
                   help="per-step cosine decay to 0 over --epochs after a linear warm-up, or constant")
    g.add_argument("--warmup-epochs", type=non_negative_int, default=2,
                   help="epochs of linear learning-rate warm-up from 0 to --lr")
    g.add_argument("--label-smoothing", type=fraction_or_zero, default=0.1,
                   help="share of each target spread evenly over all classes, in [0, 1)")
    g.add_argument("--patience", type=positive_int, default=10,
                   help="stop after this many epochs without a better --monitor value")
    g.add_argument("--monitor", choices=MONITORS, default="val_macro_f1",
                   help="validation figure that picks best.pth and drives early stopping")
    g.add_argument("--seed", type=seed, default=0, help="random seed of the split, initial weights and batches")

    g = p.add_argument_group("augmentation")
    g.add_argument("--aug", type=augmentation_list, default=("flip", "affine", "jitter", "erase"),
                   metavar="KINDS", help=f"none, or a comma list of {', '.join(AUGMENTATIONS)}")
    g.add_argument("--affine", type=affine_ranges, default=AFFINE_RANGES, metavar="DEG,SCALE,SHIFT",
                   help="ranges of the affine augmentation: rotation +-DEG degrees, scale 1 +- SCALE, shift "
                   "+-SHIFT of the image size")

    g = p.add_argument_group("evaluation", "how the test split (and predict.py's faces) are scored; validation "
                             "stays single-view without logit adjustment, so epochs are chosen as without them")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help=TTA_HELP)
    # Zoomed views beat the mirror alone on validation on fer5 and FER2013 (docs/report.md, sections 7 and 9).
    g.add_argument("--tta-scales", type=scale_list, default=(0.9, 1.1), metavar="S1,S2", help=TTA_SCALES_HELP)
    g.add_argument("--logit-adjust", type=logit_adjust_tau, metavar="TAU",
                   help="decide on logits minus TAU x log(training class frequency): 1 makes an imbalanced "
                   "training set decide as if classes were equally common, as a class-balanced test and "
                   "Macro-F1 reward; 0 is the plain argmax, for data distributed like train. Default 1, or 0 "
                   "under --class-weights balanced or --sampler balanced, which balance the classes already")

    g = p.add_argument_group("runtime")
    add_runtime_args(g)
    g.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    g.add_argument("--output-dir", type=output_folder, default="checkpoints", help="where best.pth and last.pth go")
    g.add_argument("--log-dir", type=output_folder, default="logs", help="where training_log.txt/.jsonl and reports go")
    g.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue the run CKPT (default: OUTPUT_DIR/last.pth) holds, with its own flags: flags "
                   "not given are the checkpoint's, and only --epochs, --patience, --data and the runtime flags "
                   "may differ. A larger --epochs extends the run: the remaining epochs follow the learning-rate "
                   "schedule of a run that long. best.pth is carried over into OUTPUT_DIR, the logs appended to")
    g.add_argument("--overwrite", action="store_true",
                   help="a new run deletes an earlier run's checkpoints, logs and reports in OUTPUT_DIR and LOG_DIR; "
                   "without it they are moved to a sub-folder run-N of each (said when it happens)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")

    # Measured and not better on validation (docs/report.md, sections 7 and 8.1): kept to reproduce the tables.
    g = p.add_argument_group("options kept for ablations", "measured in docs/report.md sections 7 and 8.1 and not "
                             "better than the default on validation")
    g.add_argument("--train-fraction", type=share, default=1.0,
                   help="train on this stratified share of the training split (learning curves); "
                   "validation is unchanged")
    g.add_argument("--convs-per-stage", type=conv_counts,
                   help="vgg: conv3x3-BN-ReLU layers per stage, one count or one per stage (2)")
    g.add_argument("--dropout", type=fraction_or_zero, help="vgg: dropout before the classifier (0.3)")
    g.add_argument("--head", choices=["gap", "fc"],
                   help="vgg: global average pooling + linear (gap), or the assignment's 4096-1024-256 dense head "
                   "(fc)")
    g.add_argument("--sampler", choices=["shuffle", "balanced"], default="shuffle",
                   help="each image once per epoch (shuffle), or classes drawn equally often (balanced)")
    g.add_argument("--class-weights", choices=["none", "balanced"], default="none",
                   help="'balanced' weights each class's loss by N / (classes * count)")
    g.add_argument("--mix", choices=MIXES, default="none",
                   help="blend each training batch with itself shuffled, labels weighted alike: mixup (whole "
                   "images) or cutmix (a pasted box)")
    g.add_argument("--mix-alpha", type=positive_float, default=1.0, metavar="ALPHA",
                   help="--mix draws the original image's share from Beta(ALPHA, ALPHA)")
    g.add_argument("--sam", type=non_negative_float, default=0.0, metavar="RHO",
                   help="sharpness-aware minimisation: step with the gradient taken at the weights moved RHO "
                   "(in L2 norm) up the gradient, which costs a second forward and backward pass (0: off)")
    # Lost on validation in docs/report.md section 8.1 (fer5 and FER+): kept to reproduce the table.
    g.add_argument("--train-crop", type=positive_int, metavar="SIZE",
                   help="train on the central SIZE x SIZE pixels of each augmented image, which the random shift of "
                   "the affine augmentation makes a random crop; validation and test see the whole image at "
                   "--input-size (fewer FLOPs a training image: (SIZE / input size) squared)")
    g.add_argument("--ema", type=fraction_or_zero, default=0.0, metavar="DECAY",
                   help="validate, keep and test an exponential moving average of the weights and BatchNorm "
                   "statistics, updated every step with this decay (0: off)")
    return p


def parse_args(argv=None):
    """-> (args, the destinations of the flags argv gave explicitly, warnings). A recipe sets defaults; old names
    of recipes and architectures are accepted, with a warning that the training log keeps."""
    # A recipe changes the defaults, so it is read first and the full parse then sees them.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=[*RECIPES, *RECIPE_ALIASES], default="default")
    known, _ = pre.parse_known_args(argv)
    warnings = []
    recipe = renamed("--recipe", known.recipe, RECIPE_ALIASES, warnings)

    def make_parser():
        parser = get_args_parser()
        parser.set_defaults(**RECIPES[recipe])
        return parser

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [RECIPE_ALIASES.get(a, a) if i and argv[i - 1] == "--recipe" else a for i, a in enumerate(argv)]
    parser = make_parser()
    args = parser.parse_args(argv)
    given = flags_given(make_parser, argv)
    args.arch = renamed("--arch", args.arch, ARCH_ALIASES, warnings)
    if args.logit_adjust is None:
        balanced_already = args.class_weights == "balanced" or args.sampler == "balanced"
        args.logit_adjust = 0.0 if balanced_already else 1.0
    single_view(args, "tta_scales" in given)
    # Checked here, not at the first step of training: an input the network pools away ended in a traceback there.
    shape = {"widths": args.widths or VGG_WIDTHS, "head": args.head or "gap"} if args.arch == "vgg" else {}
    for flag, size in (("--input-size", args.input_size), ("--progressive-resize", args.progressive_resize),
                       ("--train-crop", args.train_crop)):
        try:
            check_input_size(args.arch, size or args.input_size, **shape)
        except ValueError as e:
            parser.error(f"argument {flag}: {e}")
    # A dense head is sized for --input-size's feature map: other training sizes would not fit it. Given, such a
    # size is refused; set by the recipe, it is left out, as a recipe's vgg flags are under another --arch.
    dense = "the assignment's network" if args.arch == "assignment" else "--head fc" if args.head == "fc" else None
    for flag, size in (("--progressive-resize", args.progressive_resize), ("--train-crop", args.train_crop)):
        if dense and size and size != args.input_size:
            why = f"{dense} has a dense head sized for --input-size {args.input_size}; it trains at that size only"
            if flag[2:].replace("-", "_") in given:
                parser.error(f"argument {flag}: {why}")
            warnings.append(f"recipe {recipe} sets {flag} {size}, which is left out: {why}")
            setattr(args, flag[2:].replace("-", "_"), None)
    if (args.train_crop or 0) > args.input_size:
        parser.error(f"argument --train-crop: {args.train_crop} is larger than --input-size {args.input_size}; it "
                     "is a part of the image")
    if (args.progressive_resize or 0) > (args.train_crop or args.input_size):
        by_recipe = "" if "progressive_resize" in given else \
            f" (--recipe {recipe} sets --progressive-resize {args.progressive_resize})"
        parser.error(f"argument --progressive-resize: {args.progressive_resize} is larger than "
                     + (f"--train-crop {args.train_crop}" if args.train_crop else f"--input-size {args.input_size}")
                     + f"; it is the size the first epochs start from{by_recipe}")
    if args.resume and args.overwrite:
        parser.error("--overwrite starts a new run in place of an earlier one; --resume continues a run")
    return args, given, warnings


def renamed(flag, value, aliases, warnings):
    """The current name of a value of flag; an old one adds a warning to warnings."""
    if value in aliases:
        warnings.append(f"{flag} {value} is now {flag} {aliases[value]}")
    return aliases.get(value, value)


VGG_FLAGS = ("widths", "convs_per_stage", "dropout", "head")  # the flags that shape --arch vgg's network


def arch_args(args, given=None):
    """The architecture flags that were set, as keyword arguments of the model (stored in checkpoints).
    vgg's widths are always recorded, so a later change of their default cannot misread a checkpoint. given: the
    flags the command line gave (None: all set ones); for another --arch, vgg's flags a recipe set are left out
    and those given refused."""
    shape = {k: getattr(args, k) for k in VGG_FLAGS if getattr(args, k) is not None}
    if args.arch != "vgg":
        refused = [k for k in shape if given is None or k in given]
        if refused:
            raise UserError(f"--{refused[0].replace('_', '-')} applies to --arch vgg only")
        return {}
    shape.setdefault("widths", VGG_WIDTHS)
    return shape


# ---------------------------------------------------------------------------------------------------------
# The state one training process shares between its steps


@dataclass
class Run:
    """One training process: where it runs (torchrun rank and world size, device, bf16 autocast) and what it
    trains (the data's location, the classes, the input the network takes)."""
    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    amp: bool
    root: Path = None
    classes: list = field(default_factory=list)
    arch_args: dict = field(default_factory=dict)  # the network's build arguments (model.build_model)
    # What was said before the training log opened (data warnings, the splits, the model): it heads the log, so a
    # log read later says what the run saw, not only what it scored.
    preamble: list = field(default_factory=list)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def input(self):
        channels = self.args.channels or default_in_channels(self.args.arch)
        return {"size": self.args.input_size, "channels": channels, "mean": 0.5, "std": 0.5}

    def say(self, *text, **kwargs):
        """print, on rank 0 only; kept for the head of the training log until it opens (TrainingLog)."""
        if self.is_main:
            print(*text, **kwargs)
            if self.preamble is not None:
                self.preamble.append(" ".join(map(str, text)).strip())


@dataclass
class Data:
    """The splits training uses; split_record goes into every checkpoint so the split can be rebuilt."""
    train: object
    val: object
    full_train: object  # the whole train split, of which train (and, without a val/ folder, val) are subsets
    split_record: dict


# ---------------------------------------------------------------------------------------------------------
# Data


def load_data(args, root, classes, input_cfg, split_record=None):
    """Decode the splits -> Data. split_record (from a resumed checkpoint) fixes the train/val indices. The
    training split holds the faces --label-mode trains on; validation is scored on the scoring protocol."""
    size, channels = input_cfg["size"], input_cfg["channels"]
    splits = available_splits(root)
    full_train = load_split(root, "train", classes, size, channels, args.label_mode)
    indexed_by = f"{root}: the checkpoint's split"
    recorded = split_record if split_record and "train_indices" in split_record else None
    if "val" in splits and args.test_split != "val":
        val = load_split(root, "val", classes, size, channels)
        record = {"source": "val split", "root": str(root)}
        if recorded is None and args.train_fraction == 1:
            return Data(full_train, val, full_train, record)
        train_idx = (recorded["train_indices"] if recorded
                     else training_share(list(range(len(full_train))), full_train.labels, args))
        record["train_indices"] = train_idx
        return Data(recorded_subset(full_train, train_idx, "train", indexed_by), val, full_train, record)
    if recorded is None:
        train_idx, val_idx = stratified_split(full_train.labels, args.val_fraction, args.seed)
        train_idx = training_share(train_idx, full_train.labels, args)
    else:
        train_idx, val_idx = recorded["train_indices"], recorded["val_indices"]
    record = {"source": f"stratified {args.val_fraction:g} of train, seed {args.seed}", "root": str(root),
              "train_indices": train_idx, "val_indices": val_idx}
    val = scoring_protocol(recorded_subset(full_train, val_idx, "val", indexed_by))
    return Data(recorded_subset(full_train, train_idx, "train", indexed_by), val, full_train, record)


def training_share(indices, labels, args):
    """A stratified --train-fraction of the training indices, drawn with --seed; all of them at 1."""
    if args.train_fraction == 1:
        return indices
    kept, _ = stratified_split(labels[indices], 1 - args.train_fraction, args.seed)
    return [indices[i] for i in kept]


def data_root(args):
    """--data as a path; 'demo' is the synthetic set (synthetic.demo_dataset), drawn on first use."""
    return demo_dataset() if args.data == "demo" else Path(args.data)


def describe(split):
    counts = ", ".join(f"{c} {n}" for c, n in zip(split.classes, split.class_counts()))
    return f"{split.name}: {len(split)} images ({counts})"


def class_counts(train):
    """Training images per class (float): label counts, or for vote data the sums of the targets' shares."""
    if train.targets is None:
        return torch.tensor(train.class_counts(), dtype=torch.float64)
    targets = train.targets.double()
    return (targets / targets.sum(1, keepdim=True)).sum(0)


def class_prior(train):
    """Each class's share of the training targets (a class with none counts as one image, so its log stays
    finite; Scoring bounds it further)."""
    counts = class_counts(train).clamp(min=1)
    if train.targets is None:  # as the label counts were always shared out, to the last bit
        return tuple(n / len(train) for n in counts.tolist())
    return tuple((counts / counts.sum()).tolist())


# ---------------------------------------------------------------------------------------------------------
# Optimisation


def make_optimizer(model, args):
    """SGD (Nesterov momentum unless --no-nesterov) or AdamW at --lr, weight decay on conv and linear weights
    only."""
    # No weight decay on BatchNorm and bias parameters: decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum,
                           nesterov=args.nesterov and args.momentum > 0)


def make_scheduler(optimizer, args, steps_per_epoch):
    """Per-step learning-rate factor: linear warm-up over --warmup-epochs, then cosine decay to 0 at --epochs
    (SGDR's cosine, Loshchilov and Hutter, ICLR 2017, without restarts), or constant under --sched none."""
    warmup = args.warmup_epochs * steps_per_epoch
    total = args.epochs * steps_per_epoch

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if args.sched == "none":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def class_weights(train, args, device):
    """--class-weights balanced: float32 tensor (classes,) on device, N / (classes x count) per class; else None."""
    if args.class_weights == "none":
        return None
    counts = class_counts(train).float()
    return (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)


def make_criterion(train, args, device):
    """The training loss: cross-entropy on labels or on target distributions (label smoothing and class weights
    apply to both), or for --label-mode multi_target the -log of the best probability among the right emotions
    (which takes neither)."""
    if args.label_mode == "multi_target":
        return MultiTargetLoss()
    return torch.nn.CrossEntropyLoss(weight=class_weights(train, args, device), label_smoothing=args.label_smoothing)


def epoch_targets(train, args, epoch, device):
    """What this epoch's loss compares with, for every training image: the labels (long N), the target
    distributions or multi-target masks (float N x classes) of vote data, or under --label-mode probability a
    label drawn afresh from each face's vote distribution (seeded by --seed and the epoch, so a resumed run
    draws the same)."""
    if train.targets is None or args.label_mode == "majority":
        return train.labels.to(device)
    if args.label_mode == "probability":
        g = torch.Generator().manual_seed(epoch_seed(args.seed, epoch))
        return torch.multinomial(train.targets, 1, generator=g).flatten().to(device)
    return train.targets.to(device)


def epoch_seed(seed, epoch, rank=0):
    # Every epoch's randomness derives from (seed, epoch, rank) alone, so a resumed run replays it exactly.
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def epoch_input_size(args, epoch):
    """The side (pixels) of the images of training epoch `epoch` (1-based): --train-crop or else --input-size
    (the full size), or under --progressive-resize a size growing linearly from it in epoch 1 to the full size at
    two thirds of the epochs, in steps of 4 pixels. Progressive resizing: Howard and Gugger, "fastai: A Layered
    API for Deep Learning", Information 2020; Tan and Le, "EfficientNetV2: Smaller Models and Faster Training",
    ICML 2021. Small images cost fewer FLOPs (a 32-pixel image 0.44 of a 48-pixel one); the last third at full
    size adapts the network, and its batch norms, to the size it is scored at."""
    start, full = args.progressive_resize, args.train_crop or args.input_size
    if not start or start >= full:
        return full
    ramp = max(1, round(2 * args.epochs / 3) - 1)
    size = start + (full - start) * min(1.0, (epoch - 1) / ramp)
    return min(full, 4 * round(size / 4))


def epoch_batches(labels, args, epoch, rank, world):
    """This process's batches of image indices for one epoch.

    Every process draws the same order and takes every world-th image of it, so the processes see
    disjoint shards that change each epoch; all shards have the same length, as DDP needs equal steps.
    --sampler balanced draws as many images, with replacement, each class equally often on average.
    """
    num_images = len(labels)
    g = torch.Generator().manual_seed(epoch_seed(args.seed, epoch))
    if args.sampler == "balanced":
        per_image = 1.0 / torch.bincount(labels)[labels].double()
        order = torch.multinomial(per_image, num_images, replacement=True, generator=g)
    else:
        order = torch.randperm(num_images, generator=g)
    shard = order[rank:num_images - num_images % world:world]
    batches = list(torch.split(shard, args.batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()  # BatchNorm cannot train on a batch of one
    return batches


@dataclass
class Trainer:
    """What one epoch of training steps: `model` is what the optimizer updates, `trained` the same wrapped for
    DDP or compiled, `scored` what is validated, kept as best.pth and tested (`model`, or its moving average
    under --ema)."""
    model: torch.nn.Module
    trained: torch.nn.Module
    scored: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    criterion: torch.nn.Module
    ema: object = None


def build_trainer(model, args, run, data):
    model = engine.prepare_model(model, run.device)
    trained, ema = model, None
    if args.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
    if run.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if args.compile:
        trained = torch.compile(trained)
    steps_per_epoch = len(epoch_batches(data.train.labels, args, 1, run.rank, run.world))
    optimizer = make_optimizer(model, args)
    criterion = make_criterion(data.train, args, run.device)
    return Trainer(model, trained, ema.module if ema is not None else model, optimizer,
                   make_scheduler(optimizer, args, steps_per_epoch), criterion, ema)


def train_one_epoch(trainer, images, targets, labels, args, run, epoch):
    """One pass over this process's shard of the training split (uint8 images, epoch_targets and labels, on
    run.device) -> train_loss, train_acc (against labels), train_time, train_img_per_s (over all processes).
    FloatingPointError on a non-finite loss."""
    model = trainer.trained
    model.train()
    g = torch.Generator().manual_seed(epoch_seed(args.seed, epoch, run.rank))  # augmentation
    torch.manual_seed(epoch_seed(args.seed, epoch, run.rank))  # dropout
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
    size = epoch_input_size(args, epoch)
    start = time.perf_counter()
    bar = tqdm(epoch_batches(labels.cpu(), args, epoch, run.rank, run.world), desc=f"epoch {epoch}/{args.epochs}",
               leave=False, disable=args.no_progress or not run.is_main)
    for idx in bar:
        idx = idx.to(run.device)
        x = engine.to_input(images[idx], run.input, run.device)
        y, truth = targets[idx], labels[idx]
        if args.aug:
            x = augment_batch(x, args.aug, g, args.affine)
        if args.train_crop:
            x = center_crop(x, [args.train_crop])
        if size != x.shape[-1]:  # antialiased, as PIL's bilinear shrinking of the decoded images is
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        partner, lam = None, 1.0
        if args.mix != "none":
            x, partner, lam = mix_batch(x, args.mix, args.mix_alpha, g)

        def forward_backward(x=x, y=y, partner=partner, lam=lam):
            with engine.autocast(run.device, run.amp):
                logits = model(x).float()
            loss = trainer.criterion(logits, y)
            if partner is not None:
                loss = lam * loss + (1 - lam) * trainer.criterion(logits, y[partner])
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return logits, loss

        logits, loss = forward_backward()
        if args.sam:
            # SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
            # ICLR 2021): the gradient at the worst nearby weights favours flat minima.
            moves = sam_ascent(trainer.model, args.sam)
            forward_backward()
            with torch.no_grad():
                for param, move in moves:
                    param.sub_(move)
        trainer.optimizer.step()
        trainer.scheduler.step()
        if trainer.ema is not None:
            trainer.ema.update_parameters(trainer.model)
        totals += torch.tensor([loss.item() * len(y), (logits.argmax(1) == truth).sum().item(), len(y)],
                               dtype=torch.float64)
        seen = totals[2].item()
        bar.set_postfix(loss=f"{totals[0].item() / seen:.3f}", acc=f"{100 * totals[1].item() / seen:.1f}%",
                        img_s=f"{run.world * seen / (time.perf_counter() - start):.0f}")
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen = engine.all_reduce_sum(totals, run.device).tolist()
    # Checked once per epoch on the sum over processes, so every process stops together; a NaN spreads
    # to all weights through the gradient all-reduce anyway, and this epoch is never saved.
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"non-finite training loss ({loss_sum / seen}) in epoch {epoch}")
    # seen counts every process's images, so this is the throughput of the whole job.
    return {"train_loss": loss_sum / seen, "train_acc": 100 * correct / seen, "train_time": elapsed,
            "train_img_per_s": seen / elapsed, "train_size": size}


def sam_ascent(model, rho):
    """The ascent step of sharpness-aware minimisation (Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", ICLR 2021): move every weight that has a gradient by
    rho * grad / ||grad|| (one L2 norm over all of them) -> the (weight, move) pairs, to move back after the
    second gradient."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    scale = rho / (norm + 1e-12)
    moves = []
    with torch.no_grad():
        for p in params:
            move = p.grad * scale
            p.add_(move)
            moves.append((p, move))
    return moves


# ---------------------------------------------------------------------------------------------------------
# Logging and checkpoints


def checkpoint_state(trainer, run, scoring, progress, metrics, split_record):
    """The checkpoint of the run after progress.epoch (checkpoint.py describes the layout). "model" holds the
    weights that were validated and are deployed: the moving average under --ema, and then "online_model" holds
    the weights the optimizer steps, which --resume continues from."""
    state = {
        "arch": run.args.arch, "arch_args": run.arch_args, "model": trainer.scored.state_dict(),
        "scoring": scoring.to_dict(), "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.scheduler.state_dict(), "epoch": progress.epoch, "args": vars(run.args),
        "metrics": metrics, "progress": {"best": progress.best, "bad_epochs": progress.bad_epochs},
        "split": split_record,
    }
    if trainer.ema is not None:
        state.update(online_model=trainer.model.state_dict(), ema_steps=int(trainer.ema.n_averaged))
    return state


# ---------------------------------------------------------------------------------------------------------
# The run


def main(argv=None):
    """The command line: -> exit code (0 done, 1 non-finite loss, 2 bad input, 130 interrupted)."""
    args, given, warnings = parse_args(argv)
    return exit_code("train.py", train, args, given, warnings)


def train(args, given=frozenset(), warnings=()):
    with engine.distributed_process() as (rank, world, local_rank):
        return train_process(args, given, warnings, rank, world, local_rank)


def train_process(args, given, warnings, rank, world, local_rank):
    """One process of training: the only one without torchrun, else one of `world` (rank 0 writes). warnings:
    parse_args' own, said (and logged) by rank 0 like the data's."""
    # Build: the run's flags (a resumed run's own), its data and its model.
    state, resume_path, args = resume_point(args, given)
    device = engine.select_device(args.device, local_rank)
    run = Run(args, rank, world, device, engine.use_amp(args.amp, device))
    slow = engine.amp_warning(args.amp, device)
    for warning in warnings + ([slow] if slow else []):
        run.say(f"warning: {warning}", file=sys.stderr)
    out_dir, log_dir = Path(args.output_dir), Path(args.log_dir)
    if state is not None and finished(state, args):
        stopped = state["epoch"] < args.epochs
        run.say(f"{resume_path} is a finished run (epoch {state['epoch']} of {args.epochs}, "
                f"{'stopped early by --patience' if stopped else 'all epochs done'}): nothing to train; pass a "
                f"larger {'--patience' if stopped else '--epochs'} to go on")
        return 0
    run.root = data_root(args)
    run.classes, notes = resolve_classes(run.root, args.classes)
    for note in notes:
        run.say(f"warning: {note}", file=sys.stderr)
    if state is None and args.recipe == "default":
        # The recipe picked is the run's, recorded in its checkpoints as if named.
        args.recipe = data_recipe(run.root, run.classes)
        run.say(f"recipe: {args.recipe}, the default for {RECIPE_DATA[args.recipe]}")
        for dest, value in RECIPES[args.recipe].items():
            if dest not in given:
                setattr(args, dest, value)
        single_view(args, "tta_scales" in given)  # --no-tta still means the image alone
    elif state is None:
        run.say(f"recipe: {args.recipe}")
    else:
        run.say(f"recipe: {args.recipe}; resuming from {resume_path} after epoch {state['epoch']}")
    args.label_mode = resolve_label_mode(args, run.root)
    if state is not None and [*map(class_key, state["scoring"]["classes"])] != [*map(class_key, run.classes)]:
        raise CheckpointError(f"{resume_path} was trained on classes {', '.join(state['scoring']['classes'])}, "
                              f"not {', '.join(run.classes)}")
    # The model is built before any data is decoded, so a bad architecture flag fails at once.
    torch.manual_seed(args.seed)  # the same initial weights in every process
    if state is not None:
        model, run.arch_args = model_from_checkpoint(state, resume_path), state["arch_args"]
        carry_best(resume_path, state, out_dir, write=run.is_main)  # every process checks, so all stop alike
    else:
        run.arch_args = arch_args(args, given)
        if args.arch != "vgg":  # the vgg flags a recipe set were left out: the recorded args say so too
            unused = [f"--{flag.replace('_', '-')} {shown(getattr(args, flag))}" for flag in VGG_FLAGS
                      if flag in RECIPES[args.recipe]]
            if unused:
                run.say(f"warning: recipe {args.recipe} sets {', '.join(unused)}, which --arch {args.arch} does not "
                        "use (vgg's network only)", file=sys.stderr)
            for flag in VGG_FLAGS:
                setattr(args, flag, None)
        try:
            model = build_model(args.arch, len(run.classes), in_channels=run.input["channels"],
                                input_size=args.input_size, **run.arch_args)
        except ValueError as e:
            raise UserError(f"--arch {args.arch}: {e}") from None
    data = load_data(args, run.root, run.classes, run.input, state["split"] if state is not None else None)
    # Everything that can be checked before the first epoch is: the splits, the test split, leaked images.
    test_split = load_test_split(args, run)
    for s in (data.full_train, data.val, *([test_split] if test_split is not None else [])):
        for warning in s.warnings(class_map=False):  # train.py chooses classes by --classes
            run.say(f"warning: {warning}", file=sys.stderr)
    for warning in check_splits(data, test_split, args):
        run.say(f"warning: {warning}", file=sys.stderr)
    run.say(describe(data.train))
    run.say(describe(data.val))
    if state is None and run.is_main:
        # Before the run's first file is written and after everything that could refuse it.
        moved = set_aside_earlier_run([out_dir, log_dir], args.overwrite)
        if moved:
            run.say(f"note: {moved}")
    leaks = report_leakage(data.full_train, test_split, Path(args.log_dir), run)
    trainer = build_trainer(model, args, run, data)
    scoring = Scoring(tuple(run.classes), run.input, args.tta, tuple(args.tta_scales), args.logit_adjust,
                      class_prior(data.train))

    # Restore.
    progress = Progress()
    if state is not None:
        progress = restore(state, resume_path, trainer, args, run)
    run.say(f"model {args.arch}: {count_parameters(trainer.model):,} parameters; device "
            f"{engine.describe_device(device)}" + (f" x {world} processes" if world > 1 else "")
            + f"; bf16 autocast {'on' if run.amp else 'off'}")

    # Fit.
    log = TrainingLog(log_dir, append=state is not None, enabled=run.is_main)
    if state is not None:
        log.line(f"Resumed after epoch {progress.epoch}:", echo=False)  # the resumed run's own head follows
    for line in run.preamble:
        log.line(line, echo=False)
    run.preamble = None
    try:
        status = fit(trainer, data, scoring, progress, args, run, log)
        if status == 0:
            if world > 1:
                torch.distributed.barrier()  # best.pth is written by rank 0 before anyone reads it
            # Test.
            status = test(out_dir / "best.pth", data, test_split, leaks, args, run, log)
    finally:
        log.close()
    return status


RECIPE_DATA = {"ferplus": "vote data (FER+)", "fer2013": "FER2013's seven classes",
               "fer5": "data other than FER+ and FER2013's seven classes"}


def data_recipe(root, classes):
    """The recipe the default picks for the data at root trained on `classes`: "ferplus" for vote data, "fer2013"
    for FER2013's seven classes (its CSV, or folders of just those), else "fer5"."""
    kind = layout(root)
    if kind in ("ferplus", "ferplus_csv"):
        return "ferplus"
    if sorted(map(class_key, classes)) == sorted(map(class_key, FER2013_CLASSES)):
        return "fer2013"
    return "fer5"


def resolve_label_mode(args, root):
    """--label-mode as it applies to the data: FER+'s default for vote data, "majority" (one label a face)
    for the rest, where the other modes have no votes to work on."""
    votes = layout(root) in ("ferplus", "ferplus_csv")
    if args.label_mode is None:
        return FERPLUS_LABEL_MODE if votes else "majority"
    if not votes and args.label_mode != "majority":
        raise UserError(f"--label-mode {args.label_mode} needs vote data (FER+: FER2013Train/label.csv or "
                        f"fer2013new.csv); {root} has one label a face")
    return args.label_mode


def finished(state, args):
    progress = state.get("progress", {})
    return state["epoch"] >= args.epochs or progress.get("bad_epochs", 0) >= args.patience


def fit(trainer, data, scoring, progress, args, run, log):
    """Train epochs progress.epoch + 1 .. --epochs (or until --patience runs out), validating and saving
    last.pth (and best.pth when --monitor improves) after each. -> 0, or 1 on a non-finite loss, 130 on Ctrl-C;
    the checkpoints then keep the last good epoch."""
    out_dir = Path(args.output_dir)
    pick = MONITORS[args.monitor]
    # Validation picks epochs on the image alone, without logit adjustment, as the test never may influence.
    validator = ModelClassifier(trainer.scored, Scoring(scoring.classes, scoring.input), device=run.device,
                                amp=run.amp)
    images, labels = data.train.images.to(run.device), data.train.labels.to(run.device)
    started = time.perf_counter()
    try:
        for epoch in range(progress.epoch + 1, args.epochs + 1):
            log.line(f"Epoch [{epoch}/{args.epochs}]")
            lr = trainer.optimizer.param_groups[0]["lr"]
            stats = train_one_epoch(trainer, images, epoch_targets(data.train, args, epoch, run.device), labels,
                                    args, run, epoch)
            val_loss, val_report = engine.evaluate(validator.decision_logits, data.val, run.device)
            metrics = {"epoch": epoch, "lr": lr, **stats, "val_loss": val_loss,
                       "val_acc": 100 * val_report["accuracy"], "val_macro_f1": 100 * val_report["macro_f1"]}
            value = metrics[args.monitor]
            best = progress.best
            improved = best is None or best["value"] is None or pick(value, best["value"]) != best["value"]
            progress.epoch = epoch
            if improved:
                progress.best, progress.bad_epochs = {"monitor": args.monitor, "value": value, "epoch": epoch}, 0
            else:
                progress.bad_epochs += 1
            if run.is_main:
                state = checkpoint_state(trainer, run, scoring, progress, metrics, data.split_record)
                if improved:
                    save_checkpoint(state, out_dir / "best.pth")
                save_checkpoint(state, out_dir / "last.pth")

            log.line(f"Train Loss: {stats['train_loss']:.4f}, Train Accuracy: {stats['train_acc']:.2f}%")
            log.line(f"Validation Loss: {val_loss:.4f}, Validation Accuracy: {metrics['val_acc']:.2f}%")
            log.line(f"Validation Macro-F1: {metrics['val_macro_f1']:.2f}, lr: {lr:.3g}, "
                     f"time: {stats['train_time']:.1f}s, {stats['train_img_per_s']:.0f} img/s"
                     + (", best so far" if improved else f", {progress.bad_epochs} epoch(s) without improvement"))
            log.record({**metrics, "best": improved, "processes": run.world})
            if progress.bad_epochs >= args.patience:
                log.line(f"Stopping training: no better {args.monitor} for {args.patience} epochs "
                         f"(best {progress.best['value']:.4f} at epoch {progress.best['epoch']}).")
                break
    except FloatingPointError as e:
        log.line(f"Stopped: {e}. {out_dir / 'last.pth'} keeps the last good epoch.")
        run.say(f"train.py: error: {e}; the checkpoints in {out_dir} keep the last good epoch", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.line(f"Interrupted. Resume with: python train.py {' '.join(sys.argv[1:])} --resume")
        run.say(f"\ninterrupted; {out_dir / 'last.pth'} holds the last finished epoch; resume with --resume",
                file=sys.stderr)
        return 130
    log.line(f"Training time: {time.perf_counter() - started:.2f} seconds")
    return 0


def load_test_split(args, run):
    """The split scored at the end, read before training so that a split that cannot be scored stops the run
    before its first epoch; None if the data has none. A class it lacks is scored without support (a note)."""
    if args.test_split not in available_splits(run.root):
        return None
    split = load_split(run.root, args.test_split, run.classes, run.input["size"], run.input["channels"],
                       allow_missing=True)
    if args.test_split != "test":  # --test-split val: validation is held out of train and also called "val"
        split.name = f"test ({args.test_split} split)"
    return split


def check_splits(data, test_split, args):
    """UserError for splits training cannot use: no validation image, or a class with no training image left
    (after --train-fraction) -> warnings: classes with no validation image (too few images to be in both; the
    classes missing from a val/ folder or the test split are warned about by their notes)."""
    if len(data.val) == 0:
        few = [c for c, n in zip(data.full_train.classes, data.full_train.class_counts()) if n < 2]
        raise UserError(f"validation holds no images: a held-out share of train needs two or more images of a "
                        f"class (fewer for: {', '.join(few) or 'every class'}); add images or a val/ folder")
    empty = [c for c, n in zip(data.train.classes, data.train.class_counts()) if n == 0]
    if empty:
        raise UserError(f"no training image of class(es) {', '.join(empty)} is left after the validation split "
                        f"and --train-fraction {args.train_fraction:g}; add images or leave them out of --classes")
    counts = dict(zip(data.full_train.classes, data.full_train.class_counts()))
    unseen = [c for c, n in zip(data.val.classes, data.val.class_counts()) if n == 0]
    return [f"validation holds no image of {', '.join(f'{c} ({counts[c]} training image(s))' for c in unseen)}: "
            "a class needs 2 or more images to be in both training and validation; validation's figures (balanced "
            "accuracy, Macro-F1), which pick best.pth and stop early, leave it out and swing as it is predicted or "
            "not; add images of it"] if unseen else []


def report_leakage(full_train, test_split, log_dir, run):
    """Test images that are copies or near-copies of training images (leakage.near_duplicates: re-encoded,
    re-scaled or re-toned), said before training and written pair by pair to LOG_DIR/leakage.csv.
    -> the counts the test report keeps, or None without a test split."""
    if test_split is None:
        return None
    pairs = near_duplicates(full_train, test_split)
    identical = sum(p["identical"] for p in pairs)
    counts = {"test_images": len(test_split), "pixel_identical": identical, "near_duplicates": len(pairs) - identical}
    if pairs and run.is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "leakage.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(pairs[0]))
            writer.writeheader()
            writer.writerows(pairs)
        counts["pairs_file"] = str(log_dir / "leakage.csv")
        alike = (" (more than half: data made of very similar images, drawn faces or frames of one video, looks "
                 "like this)") if len(pairs) > len(test_split) / 2 else ""
        run.say(f"note: {len(pairs)} of {len(test_split)} {test_split.name} images are copies of training images "
                f"({identical} pixel-identical, {len(pairs) - identical} near-identical: re-encoded, re-scaled or "
                f"re-toned){alike}; the pairs are in {log_dir / 'leakage.csv'}")
    return counts


def test(best_path, data, test_split, leaks, args, run, log):
    """Calibrate best.pth on validation, then score it on the test split, if the data has one, as test.py
    would. The test split never influenced training, selection or calibration."""
    if not best_path.exists():
        raise CheckpointError(f"{best_path} is missing: no epoch was trained, or it was removed")
    classifier = ModelClassifier.from_checkpoint(best_path, run.device)
    # One pass of best.pth over all of validation serves the balanced accuracies and the temperature's fit. Every
    # process makes it, so all fit on all of validation and agree on the temperature; rank 0 stores it.
    plain_logits = classifier.rescored(logit_adjust=0.0).decision_logits(data.val.images)
    bias = classifier.scoring.logit_bias
    val_logits = plain_logits if bias is None else engine.decision_logits([plain_logits], bias)
    if bias is not None:
        # What the adjustment does on data we may look at: balanced accuracy (the accuracy a test with
        # equally many images per class would give) of best.pth on validation, without and with it.
        rank, world = engine.rank_and_world()
        plain, adjusted = (engine.classification_scores(logits[rank::world], data.val.labels[rank::world],
                                                        data.val.classes, run.device)[1]["macro_recall"]
                           for logits in (plain_logits, val_logits))
        log.line(f"Validation balanced accuracy: {100 * plain:.2f}% plain argmax, {100 * adjusted:.2f}% with "
                 f"--logit-adjust {args.logit_adjust:g}")
    classifier, figures = calibrate(classifier, data.val, data.train, best_path if run.is_main else None,
                                    val_logits)
    log.line(f"Calibration: {summary(figures)}")
    bound = bound_note(figures)
    if bound:
        log.line(f"warning: {bound}", echo=False)
        run.say(f"warning: {bound}", file=sys.stderr)
    if test_split is None:
        run.say(f"no {args.test_split} split in {run.root}; score another dataset with: "
                f"python test.py --ckpt {best_path} --data DIR")
        return 0
    # fp32, as test.py scores by default, so the two print the same figures for the same checkpoint.
    loss, report = engine.evaluate(classifier.decision_logits, test_split, run.device, classifier.temperature)
    report["leakage"] = leaks
    log.line(f"Test Loss: {loss:.4f}, Test Accuracy: {100 * report['accuracy']:.2f}%")
    log.line(f"Test Macro-F1: {100 * report['macro_f1']:.2f} (best.pth from epoch {classifier.record['epoch']})")
    run.say(format_report(report))
    if run.is_main:
        written = save_report(report, args.log_dir, "test_report", title=f"{args.arch}, {args.test_split} split")
        run.say(f"wrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
