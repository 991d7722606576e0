"""The size of a dataset's split without reading it: what run lengths are counted on.

SimCLR pretrains on a dataset's `pretrain_split` (STL-10: train+unlabeled, 105,000 images), supervised
training on `train` (STL-10: 5,000); every count a run length is derived from (train.py's epochs of a
--steps run, the study's subset sizes, its steps budget, its --eval_at checkpoints) comes from the split
actually trained on. The images of a run are train.py's `training_subset` (the study counts with it, on
`balanced_labels` where the data need not be read), so the two cannot disagree.

    from utils.data.splits import split_size
    split_size("stl10", "train+unlabeled")    # 105000
"""
from __future__ import annotations

import numpy as np

from utils.data.registry import dataset_sizes

# Splits whose size the registry's `sizes` (train, test) does not give. STL-10's unlabelled split: 100,000
# images (the STL-10 README, Coates, Lee & Ng 2011, https://cs.stanford.edu/~acoates/stl10/).
EXTRA_SPLIT_SIZES = {("stl10", "unlabeled"): 100_000}
UNLABELLED = -1  # the label of an unlabelled image (utils/data/stl10.py)


def split_size(dataset: str, split: str) -> int | None:
    """Images in `split` of a built-in dataset ("a+b": the sum of its parts); None when unknown (folders)."""
    sizes = dataset_sizes(dataset)
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
    sizes = dataset_sizes(dataset)
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
