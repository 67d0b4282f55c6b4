"""Splits: the seeded stratified train/validation split, and the splits a checkpoint's training used, read again
from its split record (so test.py, calibration and the benchmarks score the faces training held out).
"""

import torch

from dataset import load_split, scoring_protocol
from errors import DataError


def recorded_subset(full, indices, name, record):
    """full.subset(indices) for indices that a checkpoint recorded; DataError if they cannot be this data's."""
    if indices and max(indices) >= len(full):
        raise DataError(f"{record} indexes {full.name} images up to {max(indices)}, but {full.name} has "
                        f"{len(full)}; is this the data it was trained on?")
    return full.subset(indices, name)


def stratified_split(labels, val_fraction, seed):
    """Seeded per-class shuffle; each class gives round(n * val_fraction) images (at least one) to val."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.cat(train_idx).sort().values.tolist(), torch.cat(val_idx).sort().values.tolist()


def recorded_splits(root, classes, input_cfg, split_record, label_mode="majority"):
    """The training and validation faces a checkpoint's training used, by its split record -> (train, val), val on
    the scoring protocol: the data's val split ("val split") beside its train split, or what training held out of
    the train split (read as training read it, with its label_mode): its "val_indices", or for a release
    checkpoint, which keeps no indices, the split its "stratified F of train, seed S" names, drawn again.
    DataError when the record allows neither."""
    source = split_record.get("source", "")
    full = load_split(root, "train", classes, input_cfg["size"], input_cfg["channels"], label_mode)
    if source == "val split" and "val_indices" not in split_record:
        train_indices = split_record.get("train_indices", range(len(full)))
        val = load_split(root, "val", classes, input_cfg["size"], input_cfg["channels"])
        return recorded_subset(full, list(train_indices), "train", f"{root}: the checkpoint's split"), val
    indices = split_record.get("val_indices")
    words = source.split()
    if indices is None and len(words) == 6 and words[:1] + words[2:5] == ["stratified", "of", "train,", "seed"]:
        _, indices = stratified_split(full.labels, float(words[1]), int(words[5]))
    if indices is None:
        raise DataError(f"{root}: the checkpoint records no validation split it could be scored on ({source!r})")
    record = f"{root}: the checkpoint's validation split"
    train_indices = split_record.get("train_indices") or sorted(set(range(len(full))) - set(indices))
    return (recorded_subset(full, train_indices, "train", record),
            scoring_protocol(recorded_subset(full, indices, "val", record)))


def held_out_of_train(split_record):
    """Whether a split record names validation images held out of the train split (indices, or the stratified
    split a release checkpoint's record names) -> what identifies them (compare two records with it), or None."""
    if "val_indices" in split_record:
        return split_record["val_indices"]
    source = split_record.get("source", "")
    return source if source.startswith("stratified ") else None


def recorded_validation(root, classes, input_cfg, split_record, label_mode="majority"):
    """The validation faces of recorded_splits."""
    return recorded_splits(root, classes, input_cfg, split_record, label_mode)[1]
