"""Test-time views of trained checkpoints, judged where a choice may be made: on the validation faces that
training held out (the indices its checkpoint records), never on the test split.

    python benchmarks/tta_views.py runs/fer2013_v3/fer2013_w32_e45_v10_seed0/checkpoints/best.pth [...]

Prints accuracy and Macro-F1 for the image alone, its mirror (--tta), zoomed copies (--tta-scales) and both,
on the checkpoint's own data and split, with the checkpoint's logit adjustment.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import engine  # noqa: E402
from checkpoint import held_out_validation, load_checkpoint, logit_bias, model_from_checkpoint  # noqa: E402
from train import scale_list  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="+", help="checkpoints written by train.py")
    p.add_argument("--scales", type=scale_list, default=(0.9, 1.1), help="zoom factors to try")
    args = p.parse_args(argv)
    device = torch.device("cpu")
    print(f"{'checkpoint':<60} {'faces':>6} {'views':<24} {'val acc':>8} {'val F1':>8}")
    for path in args.ckpt:
        state = load_checkpoint(path)
        split = state.get("split", {})
        if "val_indices" not in split:
            raise SystemExit(f"{path} records no held-out validation indices (its data had a val folder)")
        val = held_out_validation(state, split["root"], path)
        model = engine.prepare_model(model_from_checkpoint(state, path), device)
        bias = logit_bias(state, path=path)
        for name, views in (("image", {}), ("+ mirror", {"tta_flip": True}),
                            ("+ zoom", {"tta_scales": args.scales}),
                            ("+ mirror + zoom", {"tta_flip": True, "tta_scales": args.scales})):
            _, report = engine.evaluate(model, val, state["input"], device, **views, logit_bias=bias)
            print(f"{path:<60} {len(val):>6} {name:<24} {100 * report['accuracy']:>8.2f} "
                  f"{100 * report['macro_f1']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
