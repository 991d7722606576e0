"""What a run trains on: the size of a dataset's split without reading it, and a run's training subset.

SimCLR pretrains on a dataset's `pretrain_split` (STL-10: train+unlabeled, 105,000 images), supervised
training on `train` (STL-10: 5,000); every count a run length is derived from (train.py's epochs of a
--steps run, the study's subset sizes, its steps budget, its --eval_at checkpoints) comes from the split
actually trained on. `training_subset` is the one rule for the images of a run (train.py trains on it, the
study counts with it), so the two cannot disagree.

    from utils.splits import split_size, training_subset
    split_size("stl10", "train+unlabeled")    # 105000
    idx = training_subset(labels, data_scale=0.5, seed=0, val_split=0.1)   # half of train, less the probe's val
"""
from __future__ import annotations

import numpy as np

from utils.data.datasets import stratified_split, stratified_subset
from utils.data.labels import probe_labelled_subset

# Splits whose size the registry's `sizes` (train, test) does not give. STL-10's unlabelled split: 100,000
# images (the STL-10 README, Coates, Lee & Ng 2011, https://cs.stanford.edu/~acoates/stl10/).
EXTRA_SPLIT_SIZES = {("stl10", "unlabeled"): 100_000}
UNLABELLED = -1  # the label of an unlabelled image (utils/data/stl10.py)
# The seed word of the unlabelled images' draw in a data-scale subset: a class id no dataset has (numpy's seed
# words must be >= 0, so -1 itself cannot seed the draw, and stratified_subset refuses it).
UNLABELLED_STREAM = 2**32 - 1


def split_size(dataset: str, split: str) -> int | None:
    """Images in `split` of a built-in dataset ("a+b": the sum of its parts); None when unknown (folders)."""
    from utils import sweep  # read at call time: tests shrink the synthetic set

    sizes = sweep.dataset_sizes(dataset)
    total = 0
    for part in split.split("+"):
        if (dataset, part) in EXTRA_SPLIT_SIZES:
            total += EXTRA_SPLIT_SIZES[(dataset, part)]
        elif sizes is not None and part in ("train", "test"):
            total += sizes[0 if part == "train" else 1]
        else:
            return None
    return total


def balanced_labels(dataset: str, split: str, num_classes: int) -> np.ndarray | None:
    """Labels with the class counts of `split` of a class-balanced dataset, in class order (unlabelled
    images last, label -1): what subset sizes are counted on without reading the data; None when unknown."""
    from utils import sweep

    sizes = sweep.dataset_sizes(dataset)
    if sizes is None:
        return None
    parts = []
    for part in split.split("+"):
        if (dataset, part) in EXTRA_SPLIT_SIZES:
            parts.append(np.full(EXTRA_SPLIT_SIZES[(dataset, part)], UNLABELLED, dtype=np.int64))
        elif part in ("train", "test"):
            n = sizes[0 if part == "train" else 1]
            parts.append(np.repeat(np.arange(num_classes, dtype=np.int64), n // num_classes))
        else:
            return None
    return np.concatenate(parts)


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
