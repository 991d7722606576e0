"""`digits`: scikit-learn's handwritten digits, real images that every machine has (no download).

scikit-learn ships the UCI "Optical Recognition of Handwritten Digits" test set inside the package:
1,797 grey 8x8 images with values 0..16, ten classes (0-9, 174-183 images each). Here they are
scaled to uint8 0..255 (v * 255 / 16, rounded), the grey channel is replicated to RGB, and a fixed,
seeded, class-stratified split makes train (1,438 images) and test (359): the source has no
official split. The split's parameters (DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED) are part of the
dataset's `split_rule`, which train.py stores in every checkpoint and compares on resume, so a
run never resumes on another split. The run's default --image_size is 16 (DIGITS_RUN_IMAGE_SIZE):
the 8 px images are upsampled where every dataset is resized to the run's size (augmentations and
the evaluation transform), never here.

    python -c "from utils.data.digits import load_digits_split; x, y, c = load_digits_split('train'); print(x.shape, x.dtype, y[:10])"
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from utils.data.constants import DIGITS_MEAN, DIGITS_STD, DatasetInfo
from utils.errors import UserError

DIGITS_COUNT = 1797  # images in sklearn.datasets.load_digits
DIGITS_NATIVE_SIZE = 8
DIGITS_MAX_VALUE = 16  # load_digits' pixel range is 0..16 (4x4 blocks of a 32x32 bitmap, counted)
DIGITS_RUN_IMAGE_SIZE = 16  # the run's --image_size default: 8 px leaves a ResNet-18 almost nothing to crop
DIGITS_TEST_FRACTION = 0.2  # round(0.2 * n) images of every class go to test
DIGITS_SPLIT_SEED = 0  # the split's seed; changing it (or the fraction) makes another dataset
DIGITS_CLASSES = [str(d) for d in range(10)]


def split_rule(test_fraction: float, seed: int) -> str:
    """How train/test are made, as stored in checkpoints (a resume on another split is refused)."""
    return f"sklearn load_digits, stratified {1 - test_fraction:.0%}/{test_fraction:.0%} train/test split, seed {seed}"


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float (1797, 8, 8) in 0..16, labels int (1797,)): scikit-learn's file, read as load_digits reads it.

    Importing sklearn costs about 4 s, once per process, and the study starts a process per cell; so the
    package's `datasets/data/digits.csv.gz` (64 pixel columns and the label, one image a row) is located
    without importing sklearn and parsed here, with load_digits itself as the fallback."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it (tests: "not installed")
        spec = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (DIGITS_COUNT, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits dataset needs scikit-learn: pip install 'scikit-learn>=1.3'") from None
    bunch = load_digits()
    return bunch.images, bunch.target


def to_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> uint8 (N, 8, 8, 3): scaled by 255/16, rounded, grey replicated to RGB."""
    grey = np.rint(np.asarray(images, dtype=np.float64) * (255 / DIGITS_MAX_VALUE)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def digits_split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: each class shuffled by a generator seeded with (seed, class),
    its first round(test_fraction * n) members go to test, the rest to train."""
    labels = np.asarray(labels)
    train, test = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, int(cls)]).permutation(members)
        n_test = int(round(test_fraction * len(members)))
        test.append(order[:n_test])
        train.append(order[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    images, labels = _sklearn_digits()
    if images.shape != (DIGITS_COUNT, DIGITS_NATIVE_SIZE, DIGITS_NATIVE_SIZE):
        raise UserError(f"scikit-learn's load_digits returned images of shape {images.shape}, expected "
                        f"({DIGITS_COUNT}, 8, 8): an unsupported scikit-learn version")
    x, y = to_uint8_rgb(images), np.asarray(labels, dtype=np.int64)
    x.setflags(write=False)  # shared by every call: nobody may change it in place
    y.setflags(write=False)
    return x, y


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 (N, 8, 8, 3), labels int64 (N,) and the class names of the "train" or "test" split."""
    if split not in ("train", "test"):
        raise UserError(f"unknown digits split {split!r}; choose 'train' or 'test'")
    x, y = _digits_arrays()
    train, test = digits_split_indices(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    idx = train if split == "train" else test
    return x[idx], y[idx], list(DIGITS_CLASSES)


def _load(data_dir, split: str, download: bool, image_size: int | None):
    return load_digits_split(split)


DIGITS = DatasetInfo(
    "digits", 10, DIGITS_NATIVE_SIZE, DIGITS_MEAN, DIGITS_STD, load=_load, run_image_size=DIGITS_RUN_IMAGE_SIZE,
    split_rule=split_rule(DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED), sizes=(1438, 359),
    source="ships inside scikit-learn (sklearn.datasets.load_digits): nothing to download",
)
