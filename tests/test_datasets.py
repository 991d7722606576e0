"""Seeded stratified subsets (nested across scales), splits, the synthetic dataset."""
import numpy as np
import pytest
import torch

from utils.data.datasets import (ArrayDataset, ImageArrays, indices_sha256, load_split, stratified_split,
                                 stratified_subset)
from utils.data.synthetic import SYNTHETIC_CLASSES, make_synthetic
from utils.errors import UserError


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(10), [50, 60, 70, 80, 90, 100, 110, 120, 130, 140]))


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_subset_is_stratified(labels, fraction):
    idx = stratified_subset(labels, fraction, seed=0)
    full = np.bincount(labels)
    sub = np.bincount(labels[idx], minlength=10)
    assert np.all(np.abs(sub - np.round(fraction * full)) <= 1)
    assert len(np.unique(idx)) == len(idx)
    assert np.all(np.diff(idx) > 0)


def test_subsets_are_nested_for_one_seed(labels):
    small, mid, large = (set(stratified_subset(labels, f, seed=3)) for f in (0.1, 0.5, 0.9))
    assert small <= mid <= large
    assert set(stratified_subset(labels, 1.0, seed=3)) == set(range(len(labels)))


def test_subsets_are_seeded(labels):
    a = stratified_subset(labels, 0.3, seed=1)
    assert np.array_equal(a, stratified_subset(labels, 0.3, seed=1))
    assert not np.array_equal(a, stratified_subset(labels, 0.3, seed=2))
    assert indices_sha256(a) == indices_sha256(a.copy())
    assert indices_sha256(a) != indices_sha256(stratified_subset(labels, 0.3, seed=2))


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_subset_rejects_bad_fraction(labels, fraction):
    with pytest.raises(UserError, match="data_scale"):
        stratified_subset(labels, fraction, seed=0)


def test_stratified_split_disjoint_and_covering(labels):
    train, val = stratified_split(labels, 0.2, seed=0)
    assert set(train).isdisjoint(val)
    assert len(train) + len(val) == len(labels)
    assert np.all(np.abs(np.bincount(labels[val]) - 0.2 * np.bincount(labels)) <= 1)


def test_synthetic_is_deterministic_and_balanced():
    x1, y1 = make_synthetic(200, seed=5)
    x2, y2 = make_synthetic(200, seed=5)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, make_synthetic(200, seed=6)[0])
    assert x1.shape == (200, 32, 32, 3) and x1.dtype == np.uint8
    assert np.all(np.bincount(y1) == 20)


def test_synthetic_classes_not_separable_by_colour():
    # The class must come from shape: a nearest-centroid classifier on each image's mean
    # colour (fitted on one split, scored on another) stays near chance (10 %).
    x, y = make_synthetic(2000, seed=0)
    xt, yt = make_synthetic(1000, seed=1)
    colour, colour_t = x.reshape(len(x), -1, 3).mean(1), xt.reshape(len(xt), -1, 3).mean(1)
    centroids = np.stack([colour[y == c].mean(0) for c in range(10)])
    pred = np.argmin(((colour_t[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() < 0.2


def test_load_split_synthetic():
    train = load_split("synthetic", "train")
    test = load_split("synthetic", "test")
    assert len(train) == 2000 and len(test) == 500
    assert train.classes == SYNTHETIC_CLASSES and train.num_classes == 10 and train.image_size == 32
    # Train and test are different images.
    assert not np.array_equal(train.images[:500], test.images)


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset"):
        load_split("svhn", "train")


def test_array_dataset_seeds_each_sample_by_epoch():
    arrays = ImageArrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), ["a", "b", "c", "d"])
    ds = ArrayDataset(arrays, None, lambda img: torch.rand(1), seed=7)
    first = [ds[i][0] for i in range(4)]
    assert torch.equal(ds[2][0], first[2])  # same (seed, epoch, index): same draw, in any order
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], first[2])


def test_stratified_split_keeps_a_train_image_of_every_class(caplog, monkeypatch):
    import logging
    monkeypatch.setattr(logging.getLogger("simclr"), "propagate", True)  # train.py's setup_logging turns it off
    """A class with one image stays in train (the head must see it), with a warning naming it."""
    labels = np.array([0] * 10 + [1] + [2] * 2)
    with caplog.at_level("WARNING", logger="simclr"):
        train, val = stratified_split(labels, 0.1, seed=0, classes=["ant", "bee", "cow"])
    assert set(labels[train]) == {0, 1, 2} and 1 not in set(labels[val])
    assert np.bincount(labels[val], minlength=3).tolist() == [1, 0, 1]  # cow: 1 val, 1 train
    assert len(train) + len(val) == len(labels) and set(train).isdisjoint(val)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "single train image" in warnings[0] and warnings[0].endswith(": bee")
    with pytest.raises(UserError, match="every class has a single train image"):
        stratified_split(np.array([0, 1, 2]), 0.5, seed=0)
