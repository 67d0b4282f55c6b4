"""Per-face inference latency on this machine: the PyTorch checkpoint, its ONNX export under ONNX Runtime and
its torch.export program (.pt2), at each --threads count.

    python benchmarks/inference_latency.py --ckpt models/fer2013_5class_vgg.pth [--photo group.jpg]

Times classification of preprocessed face crops (batch 1 and batch 32, each face with the checkpoint's views;
median of repeated runs), in fp32 and, where the CPU runs bf16 natively, in bf16 as predict.py does, and, with
--photo, the whole predict path for that photo: detection, cropping and classification.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import engine  # noqa: E402
import export  # noqa: E402
from cli import thread_count  # noqa: E402
from errors import UserError  # noqa: E402
from faces import analyze_image, make_detector  # noqa: E402
from images import read_image  # noqa: E402
from inference import load_classifier  # noqa: E402


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--photo", help="a photo to time detection + classification on")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=thread_flag, nargs="+", default=[1, 2],
                   help="thread counts to time each runtime at: torch's, and ONNX Runtime's (waiting without "
                   "spinning, as a Recognizer runs it)")
    args = p.parse_args(argv)
    image = None
    if args.photo:
        try:
            image = read_image(args.photo)
        except (OSError, ValueError, UserError) as e:
            raise SystemExit(f"inference_latency.py: error: --photo {args.photo}: {e}") from None
    with tempfile.TemporaryDirectory() as exports:
        return time_runtimes(args, Path(exports), image)


def thread_flag(text):
    """--threads: a count from 1 to the cores this process may use (cli.thread_count's check, without 0)."""
    count = thread_count(text)
    if count == 0:
        raise argparse.ArgumentTypeError("must be 1 or more here: each runtime is timed at a count it is given")
    return count


def time_runtimes(args, exports, image):
    """main's work, the exports written into the folder exports: prints the tables."""
    for name, fmt in (("ONNX Runtime", "onnx"), ("torch.export", "pt2")):
        export.main(["--ckpt", args.ckpt, "--format", fmt, "--out", str(exports / f"model.{fmt}")])
    rng = np.random.default_rng(0)
    runtimes = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        runtimes = {"PyTorch": load_classifier(args.ckpt)}
        if engine.bf16_supported(torch.device("cpu")):  # as predict.py and Recognizer run it here (--amp auto)
            runtimes["PyTorch bf16"] = load_classifier(args.ckpt, amp=True)
        runtimes["ONNX Runtime"] = load_classifier(exports / "model.onnx", onnx_threads=threads)
        runtimes["torch.export"] = load_classifier(exports / "model.pt2")
        cfg = runtimes["PyTorch"].input
        scoring = runtimes["PyTorch"].scoring
        views = (1 + len(scoring.tta_scales)) * (2 if scoring.tta_flip else 1)
        print(f"torch {torch.__version__}, {threads} thread(s); input {cfg['channels']}x{cfg['size']}x{cfg['size']}")
        print(f"{'runtime':<14}{'1 face (ms)':>14}{'32 faces (ms/face)':>22}   (each face's views: {views})")
        for name, runtime in runtimes.items():
            one = rng.integers(0, 256, (1, cfg["channels"], cfg["size"], cfg["size"]), dtype=np.uint8)
            many = rng.integers(0, 256, (32, cfg["channels"], cfg["size"], cfg["size"]), dtype=np.uint8)
            single = median_ms(lambda: runtime.probabilities(one), args.repeats)
            batch = median_ms(lambda: runtime.probabilities(many), max(5, args.repeats // 5)) / 32
            print(f"{name:<14}{single:>14.2f}{batch:>22.3f}")
    if image is not None:
        detector = make_detector("yunet")
        detections = detector(image)
        detect = median_ms(lambda: detector(image), 10)
        print(f"\n{args.photo}: {image.width}x{image.height}, {len(detections)} faces; YuNet detection {detect:.1f} ms")
        for name, runtime in runtimes.items():
            total = median_ms(lambda: analyze_image(image, runtime, detections), 20)
            print(f"  {name:<14} align + classify all faces {total:.2f} ms "
                  f"({total / max(1, len(detections)):.2f} ms/face)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
