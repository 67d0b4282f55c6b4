"""Batched tensor transforms on the device: normalising as the model was trained, random augmentation of whole
training batches (the whole dataset is one uint8 tensor; every sample of a batch gets its own random transform in one
call), mixing, and the zoomed views of test-time augmentation.

Written here rather than taken from torchvision.transforms.v2: its functional ops apply one set of parameters to a
whole batch, where training needs a different draw per image, in one grid_sample.
"""

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("flip", "affine", "jitter", "erase")
MIXES = ("none", "mixup", "cutmix")


def normalize(images_uint8, mean, std):
    """uint8 N x C x H x W -> float, as the model was trained: (x / 255 - mean) / std."""
    return (images_uint8.float().div_(255) - mean) / std


AFFINE_RANGES = (10.0, 0.1, 0.1)  # rotation (degrees), scale and shift (share of the image) either way


def augment_batch(x, kinds, generator, affine=AFFINE_RANGES):
    """Random augmentation of a whole float batch at once, on whatever device x is on.

    flip: horizontal flip; affine: rotation +-DEG, scale 1 +- SCALE, shift +-SHIFT of the image size, for
    affine = (DEG, SCALE, SHIFT), AFFINE_RANGES by default; jitter: brightness and contrast +-20%; erase: one
    random rectangle of up to a quarter of the image set to the mean (Random Erasing: Zhong, Zheng, Kang, Li and
    Yang, AAAI 2020). x: float N x C x H x W, normalised; -> the same shape and dtype.
    """
    n, dev = x.shape[0], x.device

    def uniform(lo, hi, *shape):
        return torch.rand(n, *shape, generator=generator, device="cpu").to(dev) * (hi - lo) + lo

    if "flip" in kinds or "affine" in kinds:
        sign = torch.ones(n, device=dev)
        if "flip" in kinds:
            sign = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
        degrees, scaling, shifting = affine
        angle = uniform(-degrees, degrees).deg2rad() if "affine" in kinds else torch.zeros(n, device=dev)
        scale = uniform(1 - scaling, 1 + scaling) if "affine" in kinds else torch.ones(n, device=dev)
        shift = uniform(-shifting, shifting, 2) if "affine" in kinds else torch.zeros(n, 2, device=dev)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * sign, -sin, shift[:, 0]], 1),
                             torch.stack([sin * sign, cos, shift[:, 1]], 1)], 1)
        x = warp(x, theta.to(x.dtype))
    if "jitter" in kinds:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
        brightness = uniform(-0.2, 0.2).view(n, 1, 1, 1)
        x = (x - mean) * contrast + mean + brightness
    if "erase" in kinds:
        h, w = x.shape[-2:]
        eh = (uniform(0.1, 0.5) * h).long().view(n, 1, 1)
        ew = (uniform(0.1, 0.5) * w).long().view(n, 1, 1)
        top = (uniform(0, 1) * (h - eh.view(n))).long().view(n, 1, 1)
        left = (uniform(0, 1) * (w - ew.view(n))).long().view(n, 1, 1)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
        apply = (uniform(0, 1) < 0.5).view(n, 1, 1)
        x = x.masked_fill((box & apply).unsqueeze(1), 0.0)  # 0 is the mean after normalisation
    return x


def mix_batch(x, kind, alpha, generator):
    """Blend each image of a float batch with a partner from the same batch (a random pairing).

    mixup: a weighted average of the two images; cutmix: a box of the partner pasted in. The original's share
    lam is drawn from Beta(alpha, alpha); for cutmix it is the share of pixels the original keeps after the box
    is clipped to the image. mixup: Zhang, Cisse, Dauphin and Lopez-Paz, "mixup: Beyond Empirical Risk
    Minimization", ICLR 2018; cutmix: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers
    with Localizable Features", ICCV 2019. -> (mixed batch, partner index of each image, lam); the loss to train on is
    lam x loss(labels) + (1 - lam) x loss(labels[partner]).
    """
    n, (h, w) = x.shape[0], x.shape[-2:]
    draw = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    lam = float(draw.beta(alpha, alpha))
    partner = torch.randperm(n, generator=generator).to(x.device)
    if kind == "mixup":
        return x * lam + x[partner] * (1 - lam), partner, lam
    if kind != "cutmix":
        raise ValueError(f"unknown mix {kind!r}; choose from {', '.join(MIXES[1:])}")
    # One box for the whole batch, centred anywhere, with an area of (1 - lam) before clipping.
    bh, bw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(draw.integers(h)), int(draw.integers(w))
    top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    x = x.clone()
    x[..., top:bottom, left:right] = x[partner, :, top:bottom, left:right]
    return x, partner, 1 - (bottom - top) * (right - left) / (h * w)


def warp(x, theta):
    """A float N x C x H x W batch resampled through N 2x3 affine matrices (output to input coordinates),
    bilinear, the border reflected."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def zoom(x, scale):
    """A float N x C x H x W batch zoomed about its centre by scale (above 1 zooms in), sampled as
    augment_batch's affine zoom is."""
    # Not torchvision.transforms.v2.functional.affine: it fills the uncovered border with a constant, where the
    # views must see the reflected border training saw.
    theta = torch.tensor([[1 / scale, 0.0, 0.0], [0.0, 1 / scale, 0.0]], dtype=x.dtype, device=x.device)
    return warp(x, theta.expand(x.shape[0], 2, 3))
