"""Datasets as in-memory uint8 arrays, seeded stratified subsets, and the per-image Dataset.

Every dataset of utils/data/registry.py (CIFAR-10/100, Tiny-ImageNet, digits, ..., folder) is read into the same form,
`ImageArrays` (images uint8 (N, H, W, 3), labels int64 (N,), class names), so both data paths
use it: the DataLoader path (PIL transforms in workers) and the device path (one uint8 tensor
on the accelerator).

    arrays = load_split("cifar10", "train", data_dir="data")
    idx = stratified_subset(arrays.labels, fraction=0.5, seed=0)
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.registry import dataset_info
from utils.errors import UserError


@dataclass
class ImageArrays:
    """One split of a dataset held as arrays."""

    images: np.ndarray  # uint8 (N, H, W, 3); may be a read-only memory map
    labels: np.ndarray  # int64 (N,)
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


def load_split(
    dataset: str, split: str, data_dir: str | Path = "data", download: bool = True, image_size: int | None = None
) -> ImageArrays:
    """Load one split of a dataset: "train" or "test" for every dataset (Tiny-ImageNet's labelled
    "val" serves as test), plus the dataset's own (stl10: "unlabeled", "train+unlabeled").

    Labels are -1 for unlabelled images. Raises DataMissingError (one line: dataset, path, command
    to run) when the data is absent and cannot be fetched.
    """
    info = dataset_info(dataset)
    if split not in info.splits:
        raise UserError(f"{info.name} has no split {split!r}; choose from {list(info.splits)}")
    x, y, classes = info.load(Path(data_dir), split, download, image_size)
    return ImageArrays(np.asarray(x) if not isinstance(x, np.memmap) else x, np.asarray(y, dtype=np.int64), list(classes))


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified `fraction` of the data.

    Each class is shuffled once by a generator seeded with (seed, class) and its first
    round(fraction * n_class) members (at least one) are kept, so for one seed the subsets are
    nested: the 10 % subset lies inside the 50 % one, which lies inside the full set.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"--data_scale must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1:
        return np.arange(len(labels))
    keep = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, int(cls)]).permutation(members)
        keep.append(order[: max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(keep))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int,
                     classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train, val) index split: `val_fraction` of every class goes to val.

    Each class gives val round(val_fraction * n) images, at least one, but always keeps at least
    one for train: a class with a single image stays in train only (no val image for it), and
    one warning names such classes (`classes` gives their names), since the head would otherwise
    never see them.
    """
    if not 0 < val_fraction < 1:
        raise UserError(f"validation fraction must be in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    val, train_only = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, int(cls), 1]).permutation(members)
        n_val = min(max(1, int(round(val_fraction * len(members)))), len(members) - 1)
        if n_val == 0:
            train_only.append(classes[int(cls)] if classes else str(int(cls)))
        val.append(order[:n_val])
    if train_only:
        shown = ", ".join(train_only[:10]) + (f" and {len(train_only) - 10} more" if len(train_only) > 10 else "")
        logging.getLogger("simclr").warning(
            "warning: %d class(es) have a single train image, kept for training with none in the validation "
            "split: %s", len(train_only), shown)
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
    if len(val_idx) == 0:
        raise UserError("no validation split possible: every class has a single train image")
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def indices_sha256(indices: np.ndarray) -> str:
    """Fingerprint of a subset (int64 little-endian bytes), recorded in checkpoints."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


DATA_SHA256_ROWS = 1024  # images hashed by data_sha256: a strided sample, so it costs milliseconds


def data_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """Fingerprint of a dataset split: its shape, every label and a strided sample of DATA_SHA256_ROWS
    images; recorded in checkpoints so a resumed run can tell that --data_dir now holds other data."""
    step = max(1, len(labels) // DATA_SHA256_ROWS)
    digest = hashlib.sha256(f"{tuple(images.shape)}\n".encode())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(images[::step]).tobytes())
    return digest.hexdigest()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation in one epoch: a pure function, so runs resume exactly."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ArrayDataset(Dataset):
    """Per-image Dataset over `ImageArrays` for the DataLoader path.

    `transform` maps an HWC uint8 array to a tensor (or a tuple of views). When `seed` is
    given, each sample's augmentation is seeded by (seed, epoch, index) (call `set_epoch`),
    which makes augmentations independent of worker count and resumable mid-epoch.
    """

    def __init__(self, arrays: ImageArrays, indices: np.ndarray | None, transform: Callable, seed: int | None = None):
        self.arrays = arrays
        self.indices = np.arange(len(arrays)) if indices is None else np.asarray(indices)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        if self.seed is not None:
            torch.manual_seed(sample_seed(self.seed, self.epoch, j))
        return self.transform(self.arrays.images[j]), int(self.arrays.labels[j])
