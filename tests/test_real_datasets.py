"""The real datasets of utils/data/registry.py: digits (scikit-learn), mnist / fashion_mnist (idx files)
and stl10 (binary archive), with miniature files in the real formats made here and served from
127.0.0.1; train.py and test.py end to end on each.

    python -m pytest tests/test_real_datasets.py -q
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

import test as test_script
import train
from utils.checkpoint import load_checkpoint
from utils.data import digits, registry
from utils.data.constants import DIGITS_MEAN, DIGITS_STD
from utils.data.datasets import load_split
from utils.errors import UserError, run_cli

SMALL_RUN = ["--data_scale", "1", "--batch_size", "16", "--steps", "2", "--device", "cpu", "--workers", "0",
             "--quiet"]
SMALL_PROBE = ["--test_num_epochs", "2", "--device", "cpu", "--workers", "0", "--quiet"]


# ---- digits -------------------------------------------------------------------------------------

def _sklearn_pairs() -> list[tuple[bytes, int]]:
    """Every (image bytes in 0..16, label) of scikit-learn's digits, as an independent reference."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return sorted((img.astype(np.uint8).tobytes(), int(y)) for img, y in zip(bunch.images, bunch.target))


def test_digits_split_is_stratified_seeded_disjoint_and_covers_all():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert train.images.shape == (1438, 8, 8, 3) and test.images.shape == (359, 8, 8, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.classes == test.classes == [str(d) for d in range(10)]
    for split in (train, test):  # grey replicated to RGB, 0..16 scaled to the full 0..255
        assert np.array_equal(split.images[..., 0], split.images[..., 2])
        assert split.images.min() == 0 and split.images.max() == 255
    # Every image once, in train or test: undo the 255/16 scaling and compare with scikit-learn's own.
    ours = [((img[..., 0].astype(np.float64) * 16 / 255).round().astype(np.uint8).tobytes(), int(y))
            for part in (train, test) for img, y in zip(part.images, part.labels)]
    assert sorted(ours) == _sklearn_pairs()
    # Stratified: each class gives round(0.2 * n) images to test.
    all_labels = np.concatenate([train.labels, test.labels])
    for cls in range(10):
        n = int((all_labels == cls).sum())
        assert int((test.labels == cls).sum()) == round(digits.DIGITS_TEST_FRACTION * n)
    # Seeded: the same indices every call; another seed gives another split of the same size.
    a_train, a_test = digits.digits_split_indices(all_labels, 0.2, 0)
    b_train, b_test = digits.digits_split_indices(all_labels, 0.2, 0)
    c_train, c_test = digits.digits_split_indices(all_labels, 0.2, 1)
    assert np.array_equal(a_test, b_test) and len(c_test) == len(a_test) and not np.array_equal(a_test, c_test)
    assert not set(a_train) & set(a_test) and len(a_train) + len(a_test) == len(all_labels)


def test_digits_mean_std_constants_are_the_train_split_statistics():
    x = load_split("digits", "train").images.astype(np.float64) / 255
    assert DIGITS_MEAN == pytest.approx(tuple(x.mean(axis=(0, 1, 2))), abs=1e-4)
    assert DIGITS_STD == pytest.approx(tuple(x.std(axis=(0, 1, 2))), abs=1e-4)


def test_digits_uint8_scaling_endpoints():
    out = digits.to_uint8_rgb(np.array([[[0, 8, 16, 1]]], dtype=np.float64))
    assert out.shape == (1, 1, 4, 3) and out[0, 0, :, 1].tolist() == [0, 128, 255, 16]


def test_digits_without_scikit_learn_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if it were not installed
    digits._digits_arrays.cache_clear()
    try:
        with pytest.raises(UserError, match=r"^the digits dataset needs scikit-learn: pip install 'scikit-learn>=1.3'$"):
            load_split("digits", "train")
    finally:
        digits._digits_arrays.cache_clear()


def test_registry_is_what_every_script_offers():
    import data
    import simclr_train

    for name in ("digits", "cifar10", "cifar100", "tiny-imagenet", "imagenet", "synthetic", "folder"):
        assert name in registry.DATASET_CHOICES
        assert name in test_script.EVAL_DATASETS
    assert train.parse_args(["--dataset", "digits"]).dataset == "digits"
    assert test_script.parse_args(["--model_path", "x", "--dataset", "digits"]).dataset == "digits"
    assert simclr_train.parse_args(["--dataset", "digits", "--eval_dataset", "digits"]).eval_dataset == "digits"
    assert data.parse_args(["--dataset", "digits"]).dataset == "digits"
    assert registry.DATASETS["digits"].default_image_size == 16 and registry.DATASETS["cifar10"].default_image_size == 32
    with pytest.raises(UserError, match="has no split 'unlabeled'"):
        load_split("digits", "unlabeled")
    # The study's subset sizes for an unbalanced set are counted, so they match the subsets train.py takes.
    from utils.data.datasets import stratified_subset

    sizes = simclr_train.subset_sizes(simclr_train.parse_args(["--dataset", "digits", "--eval_dataset", "digits"]))
    labels = load_split("digits", "train").labels
    assert [sizes(f) for f in (0.1, 0.5, 1.0)] == [len(stratified_subset(labels, f, 0)) for f in (0.1, 0.5, 1.0)]


def test_data_py_digits_says_nothing_to_download(tmp_path, capsys):
    import data

    assert data.main(["--dataset", "digits", "--data_dir", str(tmp_path / "d")]) == {"digits": None}
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "scikit-learn" in out and "nothing to download" in out
    assert not (tmp_path / "d").exists()
    with pytest.raises(UserError, match="nothing to download"):
        data.parse_args(["--dataset", "digits", "--url", "http://127.0.0.1/x"])


@pytest.mark.slow
def test_train_and_test_end_to_end_on_digits(tmp_path, monkeypatch, capsys):
    described = train.describe_data(train.parse_args(["--dataset", "digits"]))
    assert described["image_size"] == 16 and described["stem"] == "cifar"  # the digits default: 8 px upsampled
    run = tmp_path / "run"
    flags = ["--dataset", "digits", "--train_type", "simclr", "--run_dir", str(run), "--image_size", "8", *SMALL_RUN]
    train.main(flags)
    ckpt = load_checkpoint(run / "final.pth")
    assert ckpt["data"]["image_size"] == 8
    assert ckpt["data"]["split"] == f"train ({digits.split_rule(0.2, 0)})"
    assert ckpt["data"]["num_train"] == 1438
    result = test_script.main(["--model_path", str(run / "final.pth"), "--dataset", "digits", *SMALL_PROBE])
    assert 0 <= result["test_accuracy"] <= 100

    # Another split of digits is another dataset: the unfinished run is not resumed on it.
    (run / "final.pth").unlink()
    monkeypatch.setattr(digits, "DIGITS_SPLIT_SEED", 1)
    monkeypatch.setitem(registry.DATASETS, "digits",
                        dataclasses.replace(digits.DIGITS, split_rule=digits.split_rule(0.2, 1)))
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, flags)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "was trained on other data (split: " in err
    assert "seed 0)" in err and "seed 1)" in err and err.startswith("error: ")
