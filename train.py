"""Train a facial-expression CNN, keep the best and last checkpoints, and score the best on the test split.

    python train.py --data demo                      # synthetic faces, a few minutes on a CPU
    python train.py --data /path/to/fer5             # ROOT/train/<Class>/*.jpg, ROOT/test/<Class>/*.jpg
    python train.py --data fer2013 --test-split val  # FER2013 folders: PublicTest (val/) as the test
    python train.py --data fer5 --recipe seed        # the course assignment's recipe, for comparison
    python train.py --data fer5 --resume             # carry on from checkpoints/last.pth

The whole dataset is decoded once into a uint8 tensor on the training device and augmented there a
batch at a time; validation is a seeded, stratified 80/20 split of train (or the data's val/ folder).
"""
import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import engine
from checkpoint import (CheckpointError, load_checkpoint, logit_bias, model_from_checkpoint, save_checkpoint,
                        scoring_views)
from dataset import (AFFINE_RANGES, AUGMENTATIONS, MIXES, available_splits, augment_batch, count_shared_images,
                     load_split, mix_batch, recorded_subset, resolve_classes, stratified_split)
from errors import UserError, exit_code
from metrics import format_report
from model import ARCHS, VGG_WIDTHS, build_model, count_parameters, default_in_channels

DEMO_ROOT = Path("data/demo")

# Each recipe is a set of argument defaults; flags given on the command line still win.
RECIPES = {
    "default": {},
    # The assignment's recipe (fer5 homework): its network, SGD lr 0.001 momentum 0.9, no augmentation,
    # no weight decay, a constant learning rate, up to 50 epochs, early stopping after 3 epochs without a
    # lower validation loss, no test-time augmentation. The assignment does not show its batch size; 64 is assumed.
    "seed": dict(arch="seed", mix="none", opt="sgd", lr=0.001, momentum=0.9, nesterov=False, weight_decay=0.0,
                 sched="none", warmup_epochs=0, aug="none", label_smoothing=0.0, class_weights="none",
                 patience=3, monitor="val_loss", batch_size=64, epochs=50, tta=False, tta_scales=(),
                 logit_adjust=0.0),
}
MONITORS = {"val_macro_f1": max, "val_acc": max, "val_loss": min}


# ---------------------------------------------------------------------------------------------------------
# Arguments


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text):
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def share(text):
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def fraction_or_zero(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def width_list(text):
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return widths


def float_list(text, valid, expected):
    """A comma list of numbers that valid(tuple) accepts, else an argparse error saying it `expected` them."""
    error = argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
    try:
        numbers = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise error from None
    if not valid(numbers):
        raise error
    return numbers


def scale_list(text):
    """Zoom factors for test-time augmentation: a comma list of positive numbers, or none."""
    if text.lower() == "none":
        return ()
    return float_list(text, lambda scales: all(0 < v < math.inf for v in scales),
                      "none or comma-separated positive numbers")


def conv_counts(text):
    """One conv count for every stage ("2") or one per stage ("1,2,2,2")."""
    counts = width_list(text)
    return counts[0] if len(counts) == 1 else counts


def arch_args(args):
    """The architecture flags that were given, as keyword arguments of the model (stored in checkpoints).
    vgg's widths are always recorded, so a later change of their default cannot misread a checkpoint."""
    given = {"widths": args.widths, "convs_per_stage": args.convs_per_stage, "dropout": args.dropout,
             "head": args.head}
    given = {k: v for k, v in given.items() if v is not None}
    if given and args.arch != "vgg":
        raise UserError(f"--{next(iter(given)).replace('_', '-')} applies to --arch vgg only")
    if args.arch == "vgg":
        given.setdefault("widths", VGG_WIDTHS)
    return given


def augmentation_list(text):
    kinds = [] if text.lower() == "none" else [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown augmentation {', '.join(unknown)}; "
                                         f"choose from none or a comma list of {', '.join(AUGMENTATIONS)}")
    return text


AFFINE_DEFAULT = ",".join(f"{v:g}" for v in AFFINE_RANGES)  # as --affine is written


def affine_ranges(text):
    """--affine DEG,SCALE,SHIFT: three non-negative numbers, SCALE and SHIFT below 1."""
    return float_list(text, lambda r: len(r) == 3 and all(0 <= v < math.inf for v in r) and max(r[1:]) < 1,
                      f"DEG,SCALE,SHIFT, three non-negative numbers with SCALE and SHIFT below 1, e.g. "
                      f"{AFFINE_DEFAULT}")


def class_list(text):
    names = [c.strip() for c in text.split(",") if c.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"needs at least two comma-separated class names, got {text!r}")
    return names


def get_args_parser():
    p = argparse.ArgumentParser(description="Train a facial-expression CNN.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True,
                   help="dataset folder (train/<Class>/..., test/<Class>/...), a FER2013 .csv, or 'demo'")
    p.add_argument("--recipe", choices=RECIPES, default="default", help="a named set of defaults")
    p.add_argument("--classes", type=class_list, help="comma list choosing and ordering classes, e.g. "
                   "Angry,Happy,Neutral,Sad,Surprise (case-insensitive); default: all in train/")
    p.add_argument("--test-split", default="test", choices=["test", "val"],
                   help="split scored at the end; 'val' for FER2013's folders, whose val/ is PublicTest")
    p.add_argument("--val-fraction", type=fraction, default=0.2,
                   help="stratified share of train held out for validation when the data has no val/")
    p.add_argument("--train-fraction", type=share, default=1.0,
                   help="train on this stratified share of the training split (learning curves); "
                   "validation is unchanged")
    p.add_argument("--arch", choices=ARCHS, default="vgg")
    p.add_argument("--input-size", type=positive_int, default=48, help="images are resized to this square")
    p.add_argument("--channels", type=int, choices=[1, 3], help="input channels (default: the arch's)")
    p.add_argument("--widths", type=width_list,
                   help=f"vgg: channels per stage (default: {','.join(map(str, VGG_WIDTHS))})")
    p.add_argument("--convs-per-stage", type=conv_counts,
                   help="vgg: conv3x3-BN-ReLU layers per stage, one count or one per stage (2)")
    p.add_argument("--dropout", type=fraction_or_zero, help="vgg: dropout before the classifier (0.3)")
    p.add_argument("--head", choices=["gap", "fc"],
                   help="vgg: global average pooling + linear (gap), or the seed's 4096-1024-256 dense head (fc)")
    p.add_argument("--epochs", type=positive_int, default=28)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--opt", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--lr", type=positive_float, default=0.05)
    p.add_argument("--momentum", type=non_negative_float, default=0.9)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    p.add_argument("--sched", choices=["cosine", "none"], default="cosine",
                   help="per-step cosine decay to 0 over --epochs after a linear warm-up, or constant")
    p.add_argument("--warmup-epochs", type=non_negative_int, default=2)
    p.add_argument("--sampler", choices=["shuffle", "balanced"], default="shuffle",
                   help="each image once per epoch (shuffle), or classes drawn equally often (balanced)")
    p.add_argument("--label-smoothing", type=non_negative_float, default=0.1)
    # Plain beat 'balanced' on validation Macro-F1 in the fer5 ablation (docs/report.md, section 7).
    p.add_argument("--class-weights", choices=["none", "balanced"], default="none",
                   help="'balanced' weights each class's loss by N / (classes * count)")
    p.add_argument("--aug", type=augmentation_list, default="flip,affine,jitter,erase",
                   help=f"none, or a comma list of {', '.join(AUGMENTATIONS)}")
    p.add_argument("--affine", type=affine_ranges, default=AFFINE_RANGES, metavar="DEG,SCALE,SHIFT",
                   help="ranges of the affine augmentation: rotation +-DEG degrees, scale 1 +- SCALE, shift "
                   f"+-SHIFT of the image size ({AFFINE_DEFAULT})")
    p.add_argument("--mix", choices=MIXES, default="none",
                   help="blend each training batch with itself shuffled, labels weighted alike: mixup (whole "
                   "images) or cutmix (a pasted box)")
    p.add_argument("--mix-alpha", type=positive_float, default=1.0, metavar="ALPHA",
                   help="--mix draws the original image's share from Beta(ALPHA, ALPHA)")
    p.add_argument("--sam", type=non_negative_float, default=0.0, metavar="RHO",
                   help="sharpness-aware minimisation: step with the gradient taken at the weights moved RHO "
                   "(in L2 norm) up the gradient, which costs a second forward and backward pass (0: off)")
    p.add_argument("--ema", type=fraction_or_zero, default=0.0, metavar="DECAY",
                   help="validate, keep and test an exponential moving average of the weights and BatchNorm "
                   "statistics, updated every step with this decay (0: off)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="score the test split (and predict.py faces) on each image and its mirror, logits "
                   "averaged; validation stays single-view, so epochs are chosen as without it")
    # Zoomed views beat the mirror alone on validation on fer5 and FER2013 (docs/report.md, sections 7 and 9).
    p.add_argument("--tta-scales", type=scale_list, default=(0.9, 1.1), metavar="S1,S2",
                   help="also score the test split (and predict.py faces) zoomed about the centre by each factor "
                   "(above 1 zooms in; each view mirrored too under --tta), logits averaged; none: the image "
                   "alone")
    p.add_argument("--logit-adjust", type=non_negative_float, metavar="TAU",
                   help="decide on logits minus TAU x log(training class frequency), on the test split and in "
                   "predict.py: 1 makes an imbalanced training set decide as if classes were equally common, "
                   "as a class-balanced test and Macro-F1 reward; 0 is the plain argmax, for data distributed "
                   "like train. Default 1, or 0 under --class-weights balanced or --sampler balanced, which "
                   "balance the classes already. Validation picks epochs without it")
    p.add_argument("--patience", type=positive_int, default=10,
                   help="stop after this many epochs without a better --monitor value")
    p.add_argument("--monitor", choices=MONITORS, default="val_macro_f1",
                   help="validation figure that picks best.pth and drives early stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast; auto uses it where the device runs bf16 natively")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--output-dir", default="checkpoints", help="where best.pth and last.pth go")
    p.add_argument("--log-dir", default="logs", help="where training_log.txt/.jsonl and reports go")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue from CKPT (default: OUTPUT_DIR/last.pth)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def parse_args(argv=None):
    # A recipe changes the defaults, so it is read first and the full parse then sees them.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=RECIPES, default="default")
    known, _ = pre.parse_known_args(argv)
    parser = get_args_parser()
    parser.set_defaults(**RECIPES[known.recipe])
    args = parser.parse_args(argv)
    if args.logit_adjust is None:
        balanced_already = args.class_weights == "balanced" or args.sampler == "balanced"
        args.logit_adjust = 0.0 if balanced_already else 1.0
    return args


# ---------------------------------------------------------------------------------------------------------
# Data


def load_data(args, root, classes, split_indices=None):
    """-> (train, val, split_record, full_train); split_indices (from a checkpoint) fix the split."""
    channels = args.channels or default_in_channels(args.arch)
    splits = available_splits(root)
    full_train = load_split(root, "train", classes, args.input_size, channels)
    indexed_by = f"{root}: the checkpoint's split"
    if "val" in splits and args.test_split != "val":
        val = load_split(root, "val", classes, args.input_size, channels)
        record = {"source": "val split", "root": str(root)}
        if split_indices is None and args.train_fraction == 1:
            return full_train, val, record, full_train
        train_idx = (split_indices["train_indices"] if split_indices
                     else training_share(list(range(len(full_train))), full_train.labels, args))
        record["train_indices"] = train_idx
        return recorded_subset(full_train, train_idx, "train", indexed_by), val, record, full_train
    if split_indices is None:
        train_idx, val_idx = stratified_split(full_train.labels, args.val_fraction, args.seed)
        train_idx = training_share(train_idx, full_train.labels, args)
    else:
        train_idx, val_idx = split_indices["train_indices"], split_indices["val_indices"]
    train = recorded_subset(full_train, train_idx, "train", indexed_by)
    val = recorded_subset(full_train, val_idx, "val", indexed_by)
    record = {"source": f"stratified {args.val_fraction:g} of train, seed {args.seed}", "root": str(root),
              "train_indices": train_idx, "val_indices": val_idx}
    return train, val, record, full_train


def training_share(indices, labels, args):
    """A stratified --train-fraction of the training indices, drawn with --seed; all of them at 1."""
    if args.train_fraction == 1:
        return indices
    kept, _ = stratified_split(labels[indices], 1 - args.train_fraction, args.seed)
    return [indices[i] for i in kept]


def data_root(args):
    """--data as a path; 'demo' is the synthetic set, drawn on first use."""
    if args.data != "demo":
        return args.data
    if not (DEMO_ROOT / "train").is_dir():
        from synthetic import make_demo_dataset

        print(f"making the synthetic demo dataset in {DEMO_ROOT} (procedurally drawn faces, not real data)")
        DEMO_ROOT.parent.mkdir(parents=True, exist_ok=True)
        # Drawn aside and renamed into place, so a second process (torchrun) never reads a half-made set.
        staging = Path(tempfile.mkdtemp(dir=DEMO_ROOT.parent))
        try:
            make_demo_dataset(staging / "demo").rename(DEMO_ROOT)
        except OSError:  # another process got there first
            pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return DEMO_ROOT


def describe(split):
    counts = ", ".join(f"{c} {n}" for c, n in zip(split.classes, split.class_counts()))
    return f"{split.name}: {len(split)} images ({counts})"


# ---------------------------------------------------------------------------------------------------------
# Optimisation


def make_optimizer(model, args):
    # No weight decay on BatchNorm and bias parameters: decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum,
                           nesterov=args.nesterov and args.momentum > 0)


def make_scheduler(optimizer, args, steps_per_epoch):
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
    if args.class_weights == "none":
        return None
    counts = torch.tensor(train.class_counts(), dtype=torch.float32)
    return (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)


def epoch_seed(seed, epoch, rank=0):
    # Every epoch's randomness derives from (seed, epoch, rank) alone, so a resumed run replays it exactly.
    return (seed * 1_000_003 + epoch) * 1_009 + rank


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


def train_one_epoch(model, train_images, train_labels, optimizer, scheduler, criterion, args, ctx, epoch, ema=None):
    model.train()
    rank, world = ctx["rank"], ctx["world"]
    g = torch.Generator().manual_seed(epoch_seed(args.seed, epoch, rank))  # augmentation
    torch.manual_seed(epoch_seed(args.seed, epoch, rank))  # dropout
    aug = [] if args.aug.lower() == "none" else args.aug.split(",")
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
    start = time.perf_counter()
    bar = tqdm(epoch_batches(train_labels.cpu(), args, epoch, rank, world), desc=f"epoch {epoch}/{args.epochs}",
               leave=False, disable=args.no_progress or rank != 0)
    for idx in bar:
        idx = idx.to(ctx["device"])
        x = engine.to_input(train_images[idx], ctx["input"], ctx["device"])
        y = train_labels[idx]
        if aug:
            x = augment_batch(x, aug, g, args.affine)
        if args.mix != "none":
            x, partner, lam = mix_batch(x, args.mix, args.mix_alpha, g)

        def forward_backward():
            with engine.autocast(ctx["device"], ctx["amp"]):
                logits = model(x).float()
            loss = criterion(logits, y)
            if args.mix != "none":
                loss = lam * loss + (1 - lam) * criterion(logits, y[partner])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return logits, loss

        logits, loss = forward_backward()
        if args.sam:
            # SAM (Foret et al., 2021): the gradient at the worst nearby weights favours flat minima.
            moves = sam_ascent(model, args.sam)
            forward_backward()
            with torch.no_grad():
                for param, move in moves:
                    param.sub_(move)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        totals += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)],
                               dtype=torch.float64)
        seen = totals[2].item()
        bar.set_postfix(loss=f"{totals[0].item() / seen:.3f}", acc=f"{100 * totals[1].item() / seen:.1f}%",
                        img_s=f"{world * seen / (time.perf_counter() - start):.0f}")
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen = engine.all_reduce_sum(totals, ctx["device"]).tolist()
    # Checked once per epoch on the sum over processes, so every process stops together; a NaN spreads
    # to all weights through the gradient all-reduce anyway, and this epoch is never saved.
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"non-finite training loss ({loss_sum / seen}) in epoch {epoch}")
    # seen counts every process's images, so this is the throughput of the whole job.
    return {"train_loss": loss_sum / seen, "train_acc": 100 * correct / seen, "train_time": elapsed,
            "train_img_per_s": seen / elapsed}


def sam_ascent(model, rho):
    """Move every weight that has a gradient by rho * grad / ||grad|| (one norm over all of them, as SAM does);
    -> the (weight, move) pairs, to move back after the second gradient."""
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
# Logging


class TrainingLog:
    """logs/training_log.txt in the seed's words (so old and new logs plot alike) and a JSONL record
    per epoch with every figure. Each line is flushed as written, so a crash loses nothing written."""

    def __init__(self, log_dir, append, enabled=True):
        self.enabled = enabled
        if not enabled:  # processes other than rank 0 under torchrun
            return
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        mode = "a" if append else "w"
        self.text = open(log_dir / "training_log.txt", mode)
        self.jsonl = open(log_dir / "training_log.jsonl", mode)

    def line(self, text, echo=True):
        if not self.enabled:
            return
        if echo:
            tqdm.write(text)
        self.text.write(text + "\n")
        self.text.flush()

    def record(self, row):
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()

    def close(self):
        if not self.enabled:
            return
        self.text.close()
        self.jsonl.close()


# ---------------------------------------------------------------------------------------------------------


def checkpoint_state(model, optimizer, scheduler, args, ctx, epoch, metrics, best, bad_epochs, split, ema=None):
    """"model" holds the weights that were validated and are deployed: the moving average when --ema is on,
    and then "online_model" holds the weights the optimizer steps, which --resume continues from."""
    state = {
        "arch": args.arch, "arch_args": ctx["arch_args"], "classes": ctx["classes"], "input": ctx["input"],
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch, "args": vars(args), "metrics": metrics, "best": best, "bad_epochs": bad_epochs,
        "split": split, "class_prior": ctx["class_prior"],
    }
    if ema is not None:
        state.update(model=ema.module.state_dict(), online_model=model.state_dict(), ema_steps=int(ema.n_averaged))
    return state


def check_resumable(state, args, classes, path):
    if state.get("arch") != args.arch:
        raise CheckpointError(f"{path} holds arch {state.get('arch')!r}, not --arch {args.arch}; "
                              "resume with the flags it was trained with")
    if [c.lower() for c in state["classes"]] != [c.lower() for c in classes]:
        raise CheckpointError(f"{path} was trained on classes {', '.join(state['classes'])}, "
                              f"not {', '.join(classes)}")
    if "optimizer" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} holds no training state to resume from")


def main(argv=None):
    return exit_code("train.py", train, parse_args(argv))


def train(args):
    rank, world, local_rank = engine.init_distributed()
    try:
        status = train_process(args, rank, world, local_rank)
        if world > 1:
            # A process that tears Gloo down while its peer still works (rank 0 writing the test report)
            # can abort the run and lose that report: all leave together. Not on an exception, where a
            # peer may never arrive.
            torch.distributed.barrier()
        return status
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def train_process(args, rank, world, local_rank):
    """One process of training: the only one without torchrun, else one of `world` (rank 0 writes)."""
    is_main = rank == 0
    say = print if is_main else (lambda *a, **k: None)
    out_dir, log_dir = Path(args.output_dir), Path(args.log_dir)
    resume_state, resume_path = None, None
    if args.resume:
        resume_path = out_dir / "last.pth" if args.resume == "last" else Path(args.resume)
        if not resume_path.exists():
            raise CheckpointError(f"nothing to resume: {resume_path} does not exist")
        resume_state = load_checkpoint(resume_path)

    model_args = arch_args(args)
    device = engine.select_device(args.device, local_rank)
    root = data_root(args)
    classes = resolve_classes(root, args.classes)
    if resume_state:
        check_resumable(resume_state, args, classes, resume_path)
    # The model is built before any data is decoded, so a bad architecture flag fails at once.
    channels = args.channels or default_in_channels(args.arch)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    if resume_state:
        model = model_from_checkpoint(resume_state, resume_path)
        if "online_model" in resume_state:
            model.load_state_dict(resume_state["online_model"])
    else:
        try:
            model = build_model(args.arch, len(classes), in_channels=channels, input_size=args.input_size,
                                **model_args)
        except ValueError as e:
            raise UserError(f"--arch {args.arch}: {e}") from None
    saved_split = resume_state.get("split", {}) if resume_state else {}
    train_split, val_split, split_record, full_train = load_data(
        args, root, classes, saved_split if "train_indices" in saved_split else None)
    for s in (full_train, val_split):
        for warning in s.warnings():
            say(f"warning: {warning}", file=sys.stderr)
    say(describe(train_split))
    say(describe(val_split))

    ctx = {"device": device, "amp": engine.use_amp(args.amp, device), "classes": classes, "rank": rank,
           "arch_args": model_args,
           "world": world, "input": {"size": args.input_size, "channels": channels, "mean": 0.5, "std": 0.5},
           "class_prior": [max(n, 1) / len(train_split) for n in train_split.class_counts()]}
    model = engine.prepare_model(model, device)
    # `model` is what the optimizer steps, `trained` the same wrapped for DDP or compiled, and `scored` what
    # is validated, saved as best.pth and tested: `model` itself, or its moving average under --ema.
    trained, ema = model, None
    if args.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
        if resume_state and "online_model" in resume_state:
            ema.module.load_state_dict(resume_state["model"])
            ema.n_averaged.fill_(resume_state["ema_steps"])
    scored = ema.module if ema is not None else model
    if world > 1:
        device_ids = [local_rank] if device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if args.compile:
        trained = torch.compile(trained)
    steps_per_epoch = len(epoch_batches(train_split.labels, args, 1, rank, world))
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, steps_per_epoch)
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights(train_split, args, device),
                                          label_smoothing=args.label_smoothing)

    pick = MONITORS[args.monitor]
    best = {"monitor": args.monitor, "value": None, "epoch": 0}
    bad_epochs, start_epoch = 0, 1
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["lr_scheduler"])
        best, bad_epochs = resume_state["best"], resume_state["bad_epochs"]
        start_epoch = resume_state["epoch"] + 1
        say(f"resuming from {resume_path} after epoch {resume_state['epoch']}")

    say(f"model {args.arch}: {count_parameters(model):,} parameters; device {device}"
        + (f" x {world} processes" if world > 1 else "") + f"; bf16 autocast {'on' if ctx['amp'] else 'off'}")
    # The whole split lives on the device as uint8; batches are normalised and augmented there.
    train_images, train_labels = train_split.images.to(device), train_split.labels.to(device)

    log = TrainingLog(log_dir, append=resume_state is not None, enabled=is_main)
    started = time.perf_counter()
    stopped_early = bad_epochs >= args.patience
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            if stopped_early:
                break
            log.line(f"Epoch [{epoch}/{args.epochs}]")
            lr = optimizer.param_groups[0]["lr"]
            stats = train_one_epoch(trained, train_images, train_labels, optimizer, scheduler, criterion, args,
                                    ctx, epoch, ema)
            val_loss, val_report = engine.evaluate(scored, val_split, ctx["input"], device, amp=ctx["amp"])
            metrics = {"epoch": epoch, "lr": lr, **stats, "val_loss": val_loss,
                       "val_acc": 100 * val_report["accuracy"], "val_macro_f1": 100 * val_report["macro_f1"]}
            value = metrics[args.monitor]
            improved = best["value"] is None or pick(value, best["value"]) != best["value"]
            if improved:
                best, bad_epochs = {"monitor": args.monitor, "value": value, "epoch": epoch}, 0
            else:
                bad_epochs += 1
            if is_main:
                state = checkpoint_state(model, optimizer, scheduler, args, ctx, epoch, metrics, best, bad_epochs,
                                         split_record, ema)
                if improved:
                    save_checkpoint(state, out_dir / "best.pth")
                save_checkpoint(state, out_dir / "last.pth")

            log.line(f"Train Loss: {stats['train_loss']:.4f}, Train Accuracy: {stats['train_acc']:.2f}%")
            log.line(f"Validation Loss: {val_loss:.4f}, Validation Accuracy: {metrics['val_acc']:.2f}%")
            log.line(f"Validation Macro-F1: {metrics['val_macro_f1']:.2f}, lr: {lr:.3g}, "
                     f"time: {stats['train_time']:.1f}s, {stats['train_img_per_s']:.0f} img/s"
                     + (", best so far" if improved else f", {bad_epochs} epoch(s) without improvement"))
            log.record({**metrics, "best": improved, "processes": world})
            if bad_epochs >= args.patience:
                log.line(f"Stopping training: no better {args.monitor} for {args.patience} epochs "
                         f"(best {best['value']:.4f} at epoch {best['epoch']}).")
                stopped_early = True
    except FloatingPointError as e:
        log.line(f"Stopped: {e}. {out_dir / 'last.pth'} keeps the last good epoch.")
        log.close()
        say(f"train.py: error: {e}; the checkpoints in {out_dir} keep the last good epoch", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.line(f"Interrupted. Resume with: python train.py {' '.join(sys.argv[1:])} --resume")
        log.close()
        say(f"\ninterrupted; {out_dir / 'last.pth'} holds the last finished epoch; resume with --resume",
            file=sys.stderr)
        return 130
    log.line(f"Training time: {time.perf_counter() - started:.2f} seconds")

    if world > 1:
        torch.distributed.barrier()  # best.pth is written by rank 0 before anyone reads it
    if not (out_dir / "best.pth").exists():
        log.close()
        raise CheckpointError(f"{out_dir / 'best.pth'} is missing: no epoch was trained, or it was removed")
    result = test_best(args, root, out_dir / "best.pth", full_train, val_split, ctx, log, say)
    log.close()
    return result


def test_best(args, root, best_path, full_train, val_split, ctx, log, say):
    """Score best.pth on the test split, if the data has one. It never influenced training or selection."""
    state = load_checkpoint(best_path)
    model = engine.prepare_model(model_from_checkpoint(state, best_path), ctx["device"])
    bias, views = logit_bias(state, path=best_path), scoring_views(state)
    if bias is not None:
        # What the adjustment does on data we may look at: balanced accuracy (the accuracy a test with
        # equally many images per class would give) of best.pth on validation, without and with it.
        plain, adjusted = (engine.evaluate(model, val_split, ctx["input"], ctx["device"], **views,
                                           logit_bias=b)[1]["macro_recall"] for b in (None, bias))
        log.line(f"Validation balanced accuracy: {100 * plain:.2f}% plain argmax, {100 * adjusted:.2f}% with "
                 f"--logit-adjust {args.logit_adjust:g}")
    if args.test_split not in available_splits(root):
        say(f"no {args.test_split} split in {root}; score another dataset with: "
              f"python test.py --ckpt {best_path} --data DIR")
        return 0
    test_split = load_split(root, args.test_split, ctx["classes"], ctx["input"]["size"], ctx["input"]["channels"])
    for warning in test_split.warnings():
        say(f"warning: {warning}", file=sys.stderr)
    shared = count_shared_images(full_train, test_split)
    if shared:
        say(f"note: {shared} of {len(test_split)} {args.test_split} images are pixel-identical to training images")
    # fp32, as test.py scores by default, so the two print the same figures for the same checkpoint.
    loss, report = engine.evaluate(model, test_split, ctx["input"], ctx["device"], **views, logit_bias=bias)
    log.line(f"Test Loss: {loss:.4f}, Test Accuracy: {100 * report['accuracy']:.2f}%")
    log.line(f"Test Macro-F1: {100 * report['macro_f1']:.2f} (best.pth from epoch {state['epoch']})")
    say(format_report(report))
    if ctx["rank"] == 0:
        json_path, png_path = engine.save_report(report, args.log_dir, "test_report",
                                                 title=f"{args.arch}, {args.test_split} split")
        say(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
