"""Argument types every script's parser shares: each turns one flag's text into its final value, once.

A flag is parsed here into the value the code uses (a tuple of augmentation names, a tuple of zoom factors),
so no later code splits or strips the text again, and a bad value is an argparse error naming the flag.
"""
import argparse
import math
import os
import sys
from pathlib import Path

from augment import AFFINE_RANGES, AUGMENTATIONS
from dataset import class_key, class_name


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0  # not a whole number: refused below with the same words
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def usable_cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(text):
    """--threads (and Recognizer(threads=)): a whole number from 0 (each library's own choice) to the cores this
    process may use -> int. More threads than cores only wait for each other (10,000 made ONNX Runtime start 10,000
    spinning threads)."""
    cores = usable_cores()
    try:
        count = float(text)
    except ValueError:
        count = math.nan
    if not count.is_integer():
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {cores}, got {text!r}")
    if not 0 <= count <= cores:
        raise argparse.ArgumentTypeError(f"must be from 0 (each library's own choice) to {cores} (the cores this "
                                         f"process may use), got {int(count)}")
    return int(count)


def output_folder(text):
    """A folder a script writes into, checked (not made) when the flag is parsed, so that a run fails before its
    work rather than after it: it is a folder, or the nearest path above it that exists is a folder this process
    may write in. -> the text as given."""
    path = Path(text)
    broken = next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)
    if broken is not None:  # mkdir would stop at it with FileExistsError, after the run's work
        raise argparse.ArgumentTypeError(f"{text} cannot be made: {broken} is a broken link (to {os.readlink(broken)})")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder" if existing == path
                                         else f"{text} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text} cannot be written: no permission to write in {existing}")
    return text


def output_file(text):
    """A file a script writes, checked when the flag is parsed: not a folder, and in a folder that is or can be
    made (output_folder). -> the text as given."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the name of the file to write")
    output_folder(str(Path(text).parent))
    return text


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


def seed(text):
    """A random seed: an integer in [0, 2**32 - 1], what every generator the toolkit seeds (NumPy's, torch's) takes."""
    value = int(text)
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {2 ** 32 - 1}, got {text}")
    return value


def logit_adjust_tau(text):
    """The logit adjustment's TAU (Menon et al., ICLR 2021, use 1): a number in [0, 10]; beyond 10 the class prior
    alone would decide and the probabilities overflow."""
    value = float(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be in [0, 10], got {text}")
    return value


def fraction(text):
    """A number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def share(text):
    """A number in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def fraction_or_zero(text):
    """A number in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def width_list(text):
    """"24,48,96" -> (24, 48, 96): comma-separated positive integers."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return widths


def conv_counts(text):
    """One conv count for every stage ("2" -> 2) or one per stage ("1,2,2,2" -> (1, 2, 2, 2))."""
    counts = width_list(text)
    return counts[0] if len(counts) == 1 else counts


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
    """Zoom factors for test-time augmentation: "0.9,1.1" -> (0.9, 1.1); "none" -> (). 1 (the image itself, always
    scored) and a factor given twice are refused: each would count one view twice."""
    if text.strip().lower() == "none":
        return ()
    return float_list(text, lambda scales: all(0 < v < math.inf and v != 1 for v in scales)
                      and len(set(scales)) == len(scales),
                      "none or distinct comma-separated positive numbers other than 1 (the image itself is always "
                      "scored)")


def attach_negative_values(argv, flags):
    """Command-line words (argv; None: sys.argv[1:]) with each of flags followed by a value that starts with "-"
    joined to it ("--turns -30,30" -> "--turns=-30,30"): argparse takes "-30,30" for a flag of its own."""
    words = list(sys.argv[1:] if argv is None else argv)
    out = []
    for word in words:
        if out and out[-1] in flags and word.startswith("-") and word[1:2].isdigit():
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


TTA_HELP = ("score each image and its mirror, and each --tta-scales zoom and its mirror, logits averaged; --no-tta "
            "scores the image alone: no mirror, and no zooms unless --tta-scales is given")
TTA_SCALES_HELP = ("also score each image zoomed about the centre by each factor (above 1 zooms in; each view mirrored "
                   "too under --tta), logits averaged; none: no zooms")


def single_view(args, scales_given):
    """--no-tta means the image alone: no mirror, and no zoomed views unless --tta-scales was given too
    (scales_given); it used to leave the zooms on. Sets args.tta_scales accordingly."""
    if args.tta is False and not scales_given:
        args.tta_scales = ()


def angle_list(text):
    """Angles in degrees: "-30,30" -> (-30.0, 30.0); "none" -> ()."""
    if text.strip().lower() == "none":
        return ()
    return float_list(text, lambda angles: all(-180 < v < 180 for v in angles),
                      "none or comma-separated angles between -180 and 180 degrees")


AFFINE_DEFAULT = ",".join(f"{v:g}" for v in AFFINE_RANGES)  # as --affine is written


def affine_ranges(text):
    """--affine DEG,SCALE,SHIFT: three non-negative numbers, SCALE and SHIFT below 1."""
    return float_list(text, lambda r: len(r) == 3 and all(0 <= v < math.inf for v in r) and max(r[1:]) < 1,
                      f"DEG,SCALE,SHIFT, three non-negative numbers with SCALE and SHIFT below 1, e.g. "
                      f"{AFFINE_DEFAULT}")


def augmentation_list(text):
    """"flip, affine" -> ("flip", "affine"); "none" -> (). Names are checked against augment.AUGMENTATIONS."""
    if text.strip().lower() == "none":
        return ()
    kinds = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown augmentation {', '.join(unknown) or repr(text)}; "
                                         f"choose from none or a comma list of {', '.join(AUGMENTATIONS)}")
    return tuple(dict.fromkeys(kinds))


def class_list(text):
    """"Angry, Happy" -> ["Angry", "Happy"]: at least two names, each a dataset.class_name (NFC)."""
    names = [class_name(c) for c in text.split(",") if c.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"needs at least two comma-separated class names, got {text!r}")
    return names


def class_map(text):
    """"anger=Angry, happiness=Happy" -> {"anger": "Angry", "happiness": "Happy"}: the data's class names
    mapped to a model's, each a dataset.class_name (NFC)."""
    pairs = [item.split("=") for item in text.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError(f"must be comma-separated DATA_NAME=MODEL_NAME pairs, got {text!r}")
    pairs = [(class_name(k), class_name(v)) for k, v in pairs]
    keys = [class_key(k) for k, _ in pairs]
    twice = sorted({k for k, _ in pairs if keys.count(class_key(k)) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"maps {', '.join(twice)} more than once, got {text!r}")
    return dict(pairs)


def add_runtime_args(group, device="auto", amp="auto"):
    """--device and --amp, as train.py and test.py name them."""
    group.add_argument("--device", default=device, help="auto, cpu, cuda, cuda:1, mps")
    group.add_argument("--amp", choices=["auto", "bf16", "off"], default=amp,
                       help="bf16 autocast; auto uses it where the device runs bf16 natively")


def flags_given(make_parser, argv):
    """The destinations of the flags that argv spells out, as opposed to those left at their defaults.
    make_parser() builds the script's parser (a fresh one: its defaults are overwritten here)."""
    unset = object()
    probe = make_parser()
    probe.set_defaults(**{dest: unset for dest in vars(make_parser().parse_args(argv))})
    return {dest for dest, value in vars(probe.parse_args(argv)).items() if value is not unset}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with each flag's default as a user would type it ("flip,affine", not a Python tuple), and
    none for a default of None: the flag's help says what happens then."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or not action.option_strings or "%(default)" in text:
            return action.help
        return f"{text} (default: {str(shown(action.default)).replace('%', '%%')})".lstrip()


def shown(value):
    """A flag's value as a message shows it: "the default" for None, a list comma-separated ("none" if empty)."""
    if value is None:
        return "the default"
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return value
