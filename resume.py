"""Resuming a training run (train.py --resume): the run's own flags read back from its checkpoint, what may
change, and its weights, optimizer, scheduler and best-so-far restored, so that the resumed epochs are the epochs
the run would have trained.
"""
import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cli import augmentation_list, shown
from model import ARCH_ALIASES
from training_recipes import RECIPE_ALIASES

# What --resume lets change: how much longer to train, and where and how the run executes. Anything else would
# make the resumed epochs another run's; those flags are refused when they differ from the checkpoint's.
RESUMABLE_CHANGES = ("epochs", "patience", "data", "device", "amp", "compile", "output_dir", "log_dir", "resume",
                     "no_progress")


@dataclass
class Progress:
    """Where the run stands after `epoch`: the best --monitor value so far and epochs since it improved."""
    epoch: int = 0
    best: dict = None
    bad_epochs: int = 0



def resume_point(args, given):
    """-> (checkpoint state, its path, args with the run's own flags) for --resume, or (None, None, args).

    Flags not given on the command line take the checkpoint's values; a flag given with another value is
    refused unless RESUMABLE_CHANGES allows it, since the resumed epochs would otherwise be another run's."""
    if not args.resume:
        return None, None, args
    path = Path(args.output_dir) / "last.pth" if args.resume == "last" else Path(args.resume)
    if not path.exists():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    state = load_checkpoint(path)
    needed = ["optimizer", "lr_scheduler", "epoch", "args", "split"] + (["ema_steps"] if "online_model" in state
                                                                       else [])
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{path} holds no training state to resume from (it lacks {', '.join(missing)}; a "
                              "release checkpoint keeps only what predicting needs)")
    recorded = {k: recorded_value(k, v) for k, v in state["args"].items() if hasattr(args, k)}
    # A version-1 run from before --tta, --tta-scales or --logit-adjust was scored without them.
    scoring = state["scoring"]
    recorded.update({k: v for k, v in (("tta", scoring["tta_flip"]), ("tta_scales", tuple(scoring["tta_scales"])),
                                       ("logit_adjust", scoring["logit_adjust"])) if recorded.get(k) is None})
    for dest in sorted(given):
        if dest == "recipe" and args.recipe == "default":
            continue  # the default picks by the data: the run's own pick, whichever it was
        if dest in recorded and dest not in RESUMABLE_CHANGES and comparable(getattr(args, dest)) != \
                comparable(recorded[dest]):
            raise CheckpointError(
                f"--{dest.replace('_', '-')} {shown(getattr(args, dest))} differs from the run in {path} "
                f"({shown(recorded[dest])}); --resume continues a run with its own flags (only --epochs, "
                "--patience, --data and runtime flags may change): start a new run in another --output-dir")
    if "output_dir" in given and "log_dir" not in given and \
            Path(args.output_dir).resolve() != Path(recorded.get("output_dir", args.output_dir)).resolve():
        raise CheckpointError(f"resuming {path} into another --output-dir: give its --log-dir too (the run's logs "
                              f"are in {recorded.get('log_dir')}, and the resumed run would write there)")
    merged = argparse.Namespace(**{**vars(args), **{k: v for k, v in recorded.items() if k not in given}})
    return state, path, merged


def recorded_value(dest, value):
    """A flag's value as an older checkpoint recorded it, in today's parsed form."""
    if dest == "aug" and isinstance(value, str):
        return augmentation_list(value)
    if dest == "arch":
        return ARCH_ALIASES.get(value, value)
    if dest == "recipe":
        return RECIPE_ALIASES.get(value, value)
    return value


def comparable(value):
    return tuple(value) if isinstance(value, list) else value


def restore(state, path, trainer, args, run):
    """Load a resumed checkpoint's weights and optimizer, scheduler and moving-average states -> Progress."""
    trainer.model.load_state_dict(state.get("online_model", state["model"]))
    if trainer.ema is not None:  # --ema cannot change on resume, so the run kept its average
        trainer.ema.module.load_state_dict(state["model"])
        trainer.ema.n_averaged.fill_(state["ema_steps"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["lr_scheduler"])
    # The optimizer carries the learning rate of the step it stopped at; under a changed --epochs the
    # schedule's factor at that step is another, and it applies from the first resumed step on.
    for group, base, factor in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs,
                                   trainer.scheduler.lr_lambdas):
        group["lr"] = base * factor(trainer.scheduler.last_epoch)
    started_with = state["args"].get("epochs", args.epochs)
    if started_with != args.epochs:
        run.say(f"note: the run was started for {started_with} epoch{'s' * (started_with != 1)}; resumed for "
                f"{args.epochs}, its remaining epochs follow the learning-rate schedule of a {args.epochs}-epoch run")
    progress = state.get("progress", {})
    return Progress(state["epoch"], progress.get("best"), progress.get("bad_epochs", 0))


def carry_best(path, state, out_dir, write=True):
    """Make sure OUTPUT_DIR/best.pth is the resumed run's best checkpoint: resuming into a new --output-dir
    copies it from beside the resumed one (or writes the resumed one, if it is the best; only with write).
    CheckpointError before any training if the run's best.pth cannot be found, or OUTPUT_DIR holds another's."""
    target = out_dir / "best.pth"
    best_epoch = (state.get("progress", {}).get("best") or {}).get("epoch")
    beside = path.parent / "best.pth"
    if target.exists():
        # best.pth is written before last.pth: after a crash between the two it is one epoch ahead, which the
        # resumed run replays exactly.
        if load_checkpoint(target).get("epoch") not in (best_epoch, state["epoch"] + 1):
            raise CheckpointError(f"{target} is not the best checkpoint of the run in {path} (epoch {best_epoch}); "
                                  "resume into the run's own --output-dir or an empty one")
        return
    if beside.is_file() and load_checkpoint(beside).get("epoch") == best_epoch:
        if write:
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(beside, target)
    elif best_epoch == state["epoch"]:
        if write:
            save_checkpoint(state, target)
    else:
        raise CheckpointError(f"the best checkpoint of the run in {path} (epoch {best_epoch}) is neither "
                              f"{target} nor {beside}; resume from the folder that holds it")
