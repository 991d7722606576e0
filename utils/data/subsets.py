"""The images a pretraining run trains on: its seeded, class-stratified subset of the training split.

    from utils.data.subsets import training_subset
    idx = training_subset(labels, data_scale=0.25, seed=0)   # sorted int64 indices, nested across scales

Moved here from train.py (which imports it, so `train.training_subset` still works for the study).
"""
from __future__ import annotations

import numpy as np

from utils.data.datasets import stratified_split, stratified_subset
from utils.data.labels import probe_labelled_subset
from utils.data.splits import UNLABELLED

# The seed word of the unlabelled images' draw in a data-scale subset: a class id no dataset has (numpy's seed
# words must be >= 0, so the label -1 cannot seed the draw, and stratified_subset refuses it).
UNLABELLED_STREAM = 2**32 - 1


def training_subset(labels: np.ndarray, data_scale: float = 1.0, seed: int = 0, label_fraction: float = 1.0,
                    val_split: float = 0.0, classes: list[str] | None = None) -> np.ndarray:
    """Sorted int64 indices into `labels` (N,) of the images a run trains on.

    - every label, val_split 0: the seeded, class-stratified `data_scale` subset (nested across scales;
      SimCLR, and supervised pretraining on other data than the probe's);
    - the probe's validation split (test.py --val_split V --seed S; none when V is 0) is drawn first and never
      trained on; then the `label_fraction` labelled subset of the rest (the scratch baseline), or the
      `data_scale` subset of the rest (supervised pretraining on the probe's own data).
    """
    labels = np.asarray(labels)
    if label_fraction >= 1 and val_split <= 0:
        return data_scale_subset(labels, data_scale, seed)
    if label_fraction < 1 or data_scale >= 1:
        names = classes if classes is not None else [str(c) for c in range(int(labels.max()) + 1)]
        return np.asarray(probe_labelled_subset(labels, names, seed, label_fraction, val_split), dtype=np.int64)
    keep = stratified_split(labels, val_split, seed, classes=classes)[0]
    return np.sort(keep[stratified_subset(labels[keep], data_scale, seed)]).astype(np.int64)


def data_scale_subset(labels: np.ndarray, data_scale: float, seed: int) -> np.ndarray:
    """stratified_subset, with the unlabelled images (label -1: STL-10's train+unlabeled) as one more group
    drawn in its own seeded order: sorted int64 indices, nested across scales for one seed."""
    labels = np.asarray(labels)
    unlabelled = np.flatnonzero(labels == UNLABELLED)
    if data_scale >= 1 or len(unlabelled) == 0:
        return stratified_subset(labels, data_scale, seed).astype(np.int64)
    labelled = np.flatnonzero(labels != UNLABELLED)
    keep = [labelled[stratified_subset(labels[labelled], data_scale, seed)]] if len(labelled) else []
    order = np.random.default_rng([seed, UNLABELLED_STREAM]).permutation(unlabelled)
    keep.append(order[: max(1, int(round(data_scale * len(unlabelled))))])
    return np.sort(np.concatenate(keep)).astype(np.int64)
