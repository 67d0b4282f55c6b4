"""Leakage: test or validation faces that are copies of training faces (pixel-identical, or the same photograph
re-encoded, re-scaled or re-toned), found by pixel hashes and the correlation of downsampled images.
"""

import hashlib

import torch.nn.functional as F


def pixel_hashes(images):
    """A digest of each image's pixels, to find identical images across splits."""
    return [hashlib.blake2b(img.numpy().tobytes(), digest_size=12).hexdigest() for img in images]


# Test faces whose most similar training face reaches this are copies of it. Measured on FER2013 Training against
# PublicTest: every pair looked at from 0.90 up was the same photograph (re-cropped, re-toned, re-encoded or
# retouched), and distinct faces begin below about 0.88; a JPEG quality-70 copy scores above 0.99.
NEAR_DUPLICATE_SIMILARITY = 0.90


def _fingerprints(images):
    """Gray images averaged over 2 x 2 blocks (which JPEG noise does not survive), centred and scaled to unit
    length: their dot product is the correlation of two images, blind to brightness and contrast."""
    x = F.avg_pool2d(images.float().mean(1, keepdim=True), 2).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)


def near_duplicates(train, test, threshold=NEAR_DUPLICATE_SIMILARITY, chunk=1024):
    """Test images that are copies of training images: pixel-identical, or whose correlation with a training
    image (_fingerprints) is at least threshold. -> [{"test": source, "train": source, "similarity": float,
    "identical": bool}], one per test image that has such a copy (its most similar training image)."""
    if len(train) == 0 or len(test) == 0:
        return []
    where = {h: i for i, h in enumerate(pixel_hashes(train.images))}
    reference = _fingerprints(train.images)
    pairs = []
    for start in range(0, len(test), chunk):
        batch = test.images[start:start + chunk]
        similarity, nearest = (_fingerprints(batch) @ reference.T).max(1)
        for offset, h in enumerate(pixel_hashes(batch)):
            i = start + offset
            if h in where or similarity[offset] >= threshold:
                j = where.get(h, int(nearest[offset]))
                pairs.append({"test": test.sources[i], "train": train.sources[j],
                              "similarity": round(1.0 if h in where else float(similarity[offset]), 4),
                              "identical": h in where})
    return pairs


def unseen(split, seen):
    """split without the images that are copies of images in seen (near_duplicates): what a model scores as
    new faces, not from memory."""
    copies = {p["test"] for p in near_duplicates(seen, split)}
    if not copies:
        return split
    return split.subset([i for i, source in enumerate(split.sources) if source not in copies])
