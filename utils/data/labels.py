"""The labelled subset of the few-label axis: class-balanced, seeded, nested across fractions.

test.py --label_fraction / --labels_per_class train the probe (or the fine-tune) on it, and
train.py --label_fraction trains the `scratch` baseline on exactly the same images.

    from utils.data.labels import labelled_subset
    idx = labelled_subset(labels, num_classes=10, seed=0, fraction=0.1, exclude=val_idx)

Rules (docs/label-efficiency.md):
- the candidates are the train split minus `exclude` (the probe's validation split, drawn first
  from the whole train split by utils.data.datasets.stratified_split with the same seed), so a
  validation image never carries a label;
- class-balanced: the same number k per class, capped by what the class has. A fraction F < 1
  asks for T = round(F x candidates) labels: every class gets T // C and the first T % C classes
  of a seeded class order one more (counts differ by at most 1), and every class at least one;
  F = 1 is the whole candidate set, as before the axis existed. --labels_per_class N asks N per class;
- nested: each class's candidates are taken in one seeded order (a permutation of the whole class
  drawn from (seed, class)), so for one seed and validation split the 1 % subset lies inside the
  10 % one, and any labels-per-class subset inside every larger one;
- refused (UserError, one line, exit 2): a class with no candidate left (no train image, or all of
  them in the validation split), a labels-per-class larger than a class's candidates.
"""
from __future__ import annotations

import numpy as np

from utils.data.datasets import stratified_split
from utils.errors import UserError

LABEL_STREAM = 2  # third word of the per-class generator's seed (stratified_split uses 1): its own stream


def class_order(num_classes: int, seed: int) -> np.ndarray:
    """The seeded order in which classes receive the remainder T % C (one extra label each)."""
    return np.random.default_rng([seed, LABEL_STREAM]).permutation(num_classes)


def per_class_counts(available: np.ndarray, seed: int, fraction: float | None = None,
                     per_class: int | None = None, classes: list[str] | None = None) -> np.ndarray:
    """Labels to take from each class (C,), given the candidates each class has (C,).

    Monotone in `fraction` for one seed (what makes the subsets nested); see the module docstring.
    """
    available = np.asarray(available, dtype=np.int64)
    name = (lambda c: classes[c] if classes else str(c))
    empty = np.flatnonzero(available == 0)
    if len(empty):
        shown = ", ".join(name(int(c)) for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise UserError(f"the labelled subset needs at least one label per class, but {len(empty)} class(es) have "
                        f"no train image outside the validation split: {shown}")
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    if per_class is not None:
        short = np.flatnonzero(available < per_class)
        if len(short):
            c = int(short[np.argmin(available[short])])
            raise UserError(f"--labels_per_class {per_class} is more than class {name(c)} has "
                            f"({available[c]} train images outside the validation split); the most every class "
                            f"allows is {int(available.min())}")
        return np.full(len(available), per_class, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise UserError(f"--label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return available.copy()
    total, num_classes = int(round(fraction * available.sum())), len(available)
    counts = np.full(num_classes, total // num_classes, dtype=np.int64)
    counts[class_order(num_classes, seed)[: total % num_classes]] += 1
    return np.minimum(np.maximum(counts, 1), available)


def labelled_subset(labels: np.ndarray, num_classes: int, seed: int, fraction: float | None = None,
                    per_class: int | None = None, exclude: np.ndarray | None = None,
                    classes: list[str] | None = None) -> np.ndarray:
    """Sorted int64 indices into `labels` (the whole train split, (N,)) of the labelled subset.

    `exclude`: indices never labelled (the validation split). Give `fraction` or `per_class`.
    """
    labels = np.asarray(labels)
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None and len(exclude):
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    orders = []
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, cls, LABEL_STREAM]).permutation(members)
        orders.append(order[allowed[order]])
    counts = per_class_counts(np.array([len(o) for o in orders]), seed, fraction, per_class, classes)
    keep = [order[:k] for order, k in zip(orders, counts)]
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, dtype=np.int64)


def label_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Images per class (C,) of a label array, as plain ints for JSON."""
    return [int(v) for v in np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)]


def describe_labels(fraction: float | None, per_class: int | None, counts: list[int]) -> str:
    """'10 labels per class (1,000 labels)', '1 % of the labels (500 labels, 5 per class)' for titles and logs."""
    total = sum(counts)
    spread = (f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}") + " per class"
    if per_class is not None:
        return f"{per_class} labels per class ({total:,} labels)"
    if fraction is None or fraction == 1:
        return f"all labels ({total:,}, {spread})"
    return f"{fraction * 100:g} % of the labels ({total:,} labels, {spread})"


def probe_labelled_subset(labels: np.ndarray, classes: list[str], seed: int, fraction: float,
                          val_split: float) -> np.ndarray:
    """The labelled subset test.py --label_fraction F --val_split V --seed S trains on, as indices into the
    whole train split: the validation split drawn first (stratified_split, the same seed), then the subset."""
    labels = np.asarray(labels)
    val = stratified_split(labels, val_split, seed, classes=classes)[1] if val_split > 0 else None
    return labelled_subset(labels, len(classes), seed, fraction=fraction, exclude=val, classes=classes)
