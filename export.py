"""Export a checkpoint for deployment: ONNX (run by ONNX Runtime), a torch.export program, or TorchScript.

    python export.py --ckpt checkpoints/best.pth --format onnx          # -> checkpoints/best.onnx
    python export.py --ckpt checkpoints/best.pth --format pt2           # -> checkpoints/best.pt2
    python export.py --ckpt checkpoints/best.pth --format torchscript   # -> checkpoints/best.torchscript.pt
    python export.py --ckpt checkpoints/best.pth --format release --out models/my_model.pth
        # a checkpoint for shipping: fp16 weights, no optimizer state or split indices (predict.py reads it)

The exported model takes normalised float images (N x C x H x W, (pixel / 255 - mean) / std) and returns
logits; the class names and that preprocessing travel inside the file (ONNX metadata `fer_toolkit`, or the
extra file `fer_toolkit.json` of a .pt2 or TorchScript file), so `predict.py --ckpt model.onnx` (or .pt2)
needs nothing else. pt2 (torch.export, loaded with torch.export.load) is what PyTorch now recommends in place
of TorchScript, which it deprecates; TorchScript stays for LibTorch (C++) deployments.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from checkpoint import load_checkpoint, save_checkpoint
from cli import HelpFormatter, output_file
from errors import UserError, exit_code
from inference import (
    EXPORT_METADATA_FILE,
    ONNX_METADATA_KEY,
    ModelClassifier,
    export_metadata,
    file_sha256,
    quiet_logger,
)

# The opset torch.onnx's exporter writes a model in; it converts that up to a later opset, but converting down
# fails for these networks and then leaves the model at this one.
ONNX_BASE_OPSET = 18


def onnx_opset(text):
    """--opset: an ONNX opset the model can be exported at, ONNX_BASE_OPSET up to the latest the installed onnx
    package knows (unchecked without onnx, which exporting to ONNX then asks for)."""
    value = int(text)
    try:
        import onnx
        latest = onnx.defs.onnx_opset_version()
    except ImportError:
        latest = max(value, ONNX_BASE_OPSET)
    if not ONNX_BASE_OPSET <= value <= latest:
        raise argparse.ArgumentTypeError(f"torch.onnx exports at opsets {ONNX_BASE_OPSET} to {latest}, got {text}")
    return value


def get_args_parser():
    p = argparse.ArgumentParser(description="Export a trained checkpoint to ONNX, torch.export (.pt2) or "
                                "TorchScript.",
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", default="checkpoints/best.pth", help="the checkpoint to export")
    p.add_argument("--format", choices=["onnx", "pt2", "torchscript", "release"], default="onnx",
                   help="onnx: for ONNX Runtime; pt2: a torch.export program; torchscript: for LibTorch (C++); "
                   "release: the checkpoint with fp16 weights and no optimizer state, as models/ ships them")
    p.add_argument("--out", type=output_file, help="output file; beside the checkpoint when not given")
    p.add_argument("--opset", type=onnx_opset, default=ONNX_BASE_OPSET, help="ONNX opset version")
    return p


# Any batch size, for the ONNX and torch.export programs.
DYNAMIC_BATCH = {"x": {0: torch.export.Dim("batch")}}


def export_onnx(model, example, info, out, opset):
    """model (fp32, eval) -> an ONNX file at out for any batch size of example's shape, at opset, with info (the
    scoring block and arch) in its metadata under ONNX_METADATA_KEY. UserError when the onnx package is missing
    or the exporter could not write that opset (no file is left then)."""
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxscript") from None
    # torch.export-based exporter (PyTorch's default since 2.9). verbose=False: its progress lines ("Obtain model
    # graph...", "Run decompositions...") tell a user nothing the line export.py prints does not; its registry's
    # "torchvision is not installed. Skipping torchvision::nms" (four times without torchvision) concerns
    # operators these networks do not have.
    with quiet_logger("torch.onnx._internal.exporter._registration"):
        torch.onnx.export(model, (example,), str(out), input_names=["image"], output_names=["logits"],
                          dynamic_shapes=DYNAMIC_BATCH, opset_version=opset, verbose=False)
    proto = onnx.load(str(out))  # with the weights the exporter may have put in a side file
    # A conversion to the opset asked for that fails is only logged, and the model keeps the exporter's own.
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        for path in (out, Path(str(out) + ".data")):
            path.unlink(missing_ok=True)
        raise UserError(f"--opset {opset}: torch.onnx could not convert the model to opset {opset} (it stays at "
                        f"{written}); nothing was written")
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(info)
    onnx.save(proto, str(out))  # one file, weights inside (a model this small is far from ONNX's 2 GB limit)
    Path(str(out) + ".data").unlink(missing_ok=True)


def export_program(model, example, info, out):
    """model -> a torch.export program (.pt2) for any batch size, with info as its fer_toolkit.json extra file."""
    program = torch.export.export(model, (example,), dynamic_shapes=DYNAMIC_BATCH)
    torch.export.save(program, str(out), extra_files={EXPORT_METADATA_FILE: json.dumps(info)})


def export_torchscript(model, example, info, out):
    """model -> a traced TorchScript file (for LibTorch), with info as its fer_toolkit.json extra file."""
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(out), _extra_files={EXPORT_METADATA_FILE: json.dumps(info)})


def export_release(state, out):
    """The checkpoint without what only training needs, its weights in fp16 (loading casts them back)."""
    keep = ("arch", "arch_args", "scoring", "epoch", "args", "metrics", "progress")
    release = {k: state[k] for k in keep if k in state}
    release["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    release["split"] = {k: v for k, v in state.get("split", {}).items() if not k.endswith("_indices")}
    save_checkpoint(release, out)


def main(argv=None):
    """The command line: -> exit code (2, with a one-line message, for bad input)."""
    return exit_code("export.py", run, get_args_parser().parse_args(argv))


def run(args):
    suffix = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt", "release": ".release.pth"}[args.format]
    out = Path(args.out) if args.out else Path(args.ckpt).with_suffix(suffix)
    # predict.py and test.py tell the kinds apart by their last suffix: another one would be read as another kind.
    known_by = "." + suffix.rsplit(".", 1)[-1]
    if out.suffix.lower() != known_by:
        raise UserError(f"--out {out}: a {args.format} file is known by its suffix; name it *{known_by}")
    state = load_checkpoint(args.ckpt)
    # The network and scoring exactly as the checkpoint's classifier runs them: a checkpoint whose model cannot be
    # built is refused (CheckpointError) before anything is written, a release among them.
    classifier = ModelClassifier.from_checkpoint(args.ckpt, state=state)
    scoring = classifier.scoring
    if args.format == "release":
        export_release(state, out)
    else:
        model = classifier.model.to(memory_format=torch.contiguous_format).eval()  # fp32, the default layout
        cfg = classifier.input
        example = torch.zeros(2, cfg["channels"], cfg["size"], cfg["size"])
        # The checkpoint's SHA-256 lets a Recognizer run an .onnx beside its checkpoint in its place, and only while
        # the checkpoint is the one it was exported from (inference.onnx_twin).
        info = {**export_metadata(classifier), "checkpoint_sha256": file_sha256(args.ckpt)}
        out.parent.mkdir(parents=True, exist_ok=True)
        {"onnx": lambda: export_onnx(model, example, info, out, args.opset),
         "pt2": lambda: export_program(model, example, info, out),
         "torchscript": lambda: export_torchscript(model, example, info, out)}[args.format]()
    cfg = scoring.input
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): classes {', '.join(scoring.classes)}; "
          f"input {cfg['channels']}x{cfg['size']}x{cfg['size']}, (pixel/255 - {cfg['mean']}) / {cfg['std']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
