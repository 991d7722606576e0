"""The one table of datasets: every script's --dataset choices, load_split and data.py read it.

Each dataset lives in its own module (its files, checksums and parser) and describes itself with a
`DatasetInfo` (utils/data/constants.py); this module only collects them. To add a dataset, write
its module and list its DatasetInfo in `_ALL` below.

    python -c "from utils.data.registry import DATASETS; print({n: (d.num_classes, d.default_image_size) for n, d in DATASETS.items()})"
"""
from __future__ import annotations

from utils.data.cifar import CIFAR10, CIFAR100
from utils.data.constants import DatasetInfo
from utils.data.digits import DIGITS
from utils.data.folder import FOLDER
from utils.data.mnist import FASHION_MNIST, MNIST
from utils.data.stl10 import STL10
from utils.data.synthetic import SYNTHETIC
from utils.data.tinyimagenet import TINY_IMAGENET
from utils.errors import UserError

_ALL = (CIFAR10, CIFAR100, TINY_IMAGENET, SYNTHETIC, FOLDER, DIGITS, MNIST, FASHION_MNIST, STL10)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _ALL}
# Other spellings accepted on the command line (e.g. the original project's "imagenet").
DATASET_ALIASES: dict[str, str] = {alias: info.name for info in _ALL for alias in info.aliases}
DATASET_CHOICES = sorted(set(DATASETS) | set(DATASET_ALIASES))
# Datasets data.py can download and prepare ahead of time.
DOWNLOADABLE = tuple(name for name, info in DATASETS.items() if info.prepare is not None)


def canonical_dataset(name: str) -> str:
    """Map a command-line dataset name (aliases included) to its canonical key."""
    return DATASET_ALIASES.get(name, name)


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of `name` (aliases accepted); UserError naming the choices for an unknown one."""
    key = canonical_dataset(name)
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[key]


def dataset_sizes(name: str) -> tuple[int, int] | None:
    """(train, test) images of a built-in dataset without reading it; None for folders. What run lengths and the
    study's subset sizes are counted on (utils/data/splits.py, utils/sweep.py)."""
    from utils.data import synthetic  # its module attributes, read at call time: tests shrink the synthetic set

    if name == "synthetic":
        return synthetic.SYNTHETIC_TRAIN, synthetic.SYNTHETIC_TEST
    info = DATASETS.get(name)
    return info.sizes if info is not None else None
