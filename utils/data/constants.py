"""Per-dataset constants: classes, native image size and normalisation statistics.

Mean/std are per-channel statistics of each training split in [0, 1] units:
- CIFAR-10 / CIFAR-100: computed over the 50,000 training images (the values used across the
  CIFAR literature, e.g. kuangliu/pytorch-cifar and weiaicunzai/pytorch-cifar100).
- Tiny-ImageNet: computed over its 100,000 training images (values commonly quoted for it).
- ImageNet: torchvision's `ResNet18_Weights.IMAGENET1K_V1` preprocessing; used whenever the
  ImageNet weights are loaded, because those weights expect it.
- synthetic: measured on `make_synthetic(seed=0)` train split (see utils/data/synthetic.py).
"""
from __future__ import annotations

from dataclasses import dataclass

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYNTHETIC_MEAN = (0.452, 0.449, 0.467)
SYNTHETIC_STD = (0.325, 0.228, 0.317)

IMAGENET_IMAGE_SIZE = 224  # the resolution torchvision's ImageNet weights were trained at


@dataclass(frozen=True)
class DatasetInfo:
    """What the code needs to know about a dataset before reading it."""

    name: str
    num_classes: int | None  # None: read from the data (folder datasets)
    image_size: int | None  # native side length in pixels; None: chosen by --image_size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 32, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": DatasetInfo("cifar100", 100, 32, CIFAR100_MEAN, CIFAR100_STD),
    "tiny-imagenet": DatasetInfo("tiny-imagenet", 200, 64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD),
    "synthetic": DatasetInfo("synthetic", 10, 32, SYNTHETIC_MEAN, SYNTHETIC_STD),
    "folder": DatasetInfo("folder", None, None, IMAGENET_MEAN, IMAGENET_STD),
}

# Spellings accepted on the command line for the original project's vocabulary.
DATASET_ALIASES = {"imagenet": "tiny-imagenet"}
DATASET_CHOICES = sorted(set(DATASETS) | set(DATASET_ALIASES))


def canonical_dataset(name: str) -> str:
    """Map a command-line dataset name (aliases included) to its canonical key."""
    return DATASET_ALIASES.get(name, name)
