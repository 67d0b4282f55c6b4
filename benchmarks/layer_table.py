"""The architecture table of the write-up: every layer of a model with its output shape and parameters.

    python benchmarks/layer_table.py --arch vgg [--widths 32,64,128,256] [--convs-per-stage 2]
    python benchmarks/layer_table.py --arch assignment

Prints a Markdown table for one 48x48 image, built from train.py's own model flags, so the table shows
exactly what `python train.py` trains.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from model import build_model, count_parameters, default_in_channels  # noqa: E402


def layer_rows(model, input_shape):
    """(name, layer, output shape, parameters) for every leaf module, in the order they run."""
    rows, hooks = [], []
    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(
                lambda m, inp, out, name=name: rows.append(
                    (name, m, tuple(out.shape[1:]), sum(p.numel() for p in m.parameters())))))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return rows


def describe(m):
    if isinstance(m, torch.nn.Conv2d):
        return f"Conv2d {m.in_channels}->{m.out_channels}, {m.kernel_size[0]}x{m.kernel_size[1]}" + \
            (", bias" if m.bias is not None else "")
    if isinstance(m, torch.nn.BatchNorm2d):
        return f"BatchNorm2d {m.num_features}"
    if isinstance(m, torch.nn.Linear):
        return f"Linear {m.in_features}->{m.out_features}"
    if isinstance(m, torch.nn.MaxPool2d):
        return f"MaxPool2d {m.kernel_size}"
    if isinstance(m, torch.nn.Dropout):
        return f"Dropout {m.p}"
    return type(m).__name__


def main(argv=None):
    # train.py's parser, so the flags mean what they mean there; --data is required there but unused here
    args = train.get_args_parser().parse_args(["--data", "-", *(argv if argv is not None else sys.argv[1:])])
    channels = args.channels or default_in_channels(args.arch)
    model = build_model(args.arch, num_classes=5, in_channels=channels, input_size=args.input_size,
                        **train.arch_args(args))
    print("| # | layer | output (C x H x W) | parameters |\n|---|---|---|---|")
    print(f"| | input | {' x '.join(map(str, (channels, args.input_size, args.input_size)))} | |")
    for i, (name, module, shape, params) in enumerate(layer_rows(model, (channels, args.input_size,
                                                                           args.input_size)), 1):
        print(f"| {i} | {describe(module)} | {' x '.join(map(str, shape))} | {params:,} |")
    print(f"\ntotal parameters: {count_parameters(model):,}")


if __name__ == "__main__":
    sys.exit(main())
