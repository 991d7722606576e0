"""Per-dataset constants: classes, native image size and normalisation statistics.

Mean/std are per-channel statistics of each training split in [0, 1] units:
- CIFAR-10 / CIFAR-100: computed over the 50,000 training images (the values used across the
  CIFAR literature, e.g. kuangliu/pytorch-cifar and weiaicunzai/pytorch-cifar100).
- Tiny-ImageNet: computed over its 100,000 training images (values commonly quoted for it).
- ImageNet: torchvision's `ResNet18_Weights.IMAGENET1K_V1` preprocessing; used whenever the
  ImageNet weights are loaded, because those weights expect it.
- synthetic: measured on `make_synthetic(seed=0)` train split (see utils/data/synthetic.py).
- MNIST / Fashion-MNIST: the values quoted for their 60,000 training images (MNIST's 0.1307 / 0.3081 as
  in the PyTorch MNIST example; Fashion-MNIST's 0.2860 / 0.3530), grey so equal per channel; not
  re-measured here (this machine has no copy of the data).
- STL-10: the values quoted for it in SimCLR reimplementations (computed over its train + unlabelled
  images); not re-measured here (this machine has no copy of the data).
- digits: measured 2026-12-01 on its 1,438-image train split as stored (sklearn 1.9.1 load_digits,
  scaled to uint8 by 255/16, stratified 80/20 split with seed 0; utils/data/digits.py); grey, so the
  three channels are equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)
STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2713)
DIGITS_MEAN = (0.3050, 0.3050, 0.3050)
DIGITS_STD = (0.3759, 0.3759, 0.3759)

IMAGENET_IMAGE_SIZE = 224  # the resolution torchvision's ImageNet weights were trained at


@dataclass(frozen=True)
class DatasetInfo:
    """What the code needs to know about a dataset before reading it, and how to read it.

    Each dataset module (cifar.py, digits.py, ...) defines its DatasetInfo next to its files and
    checksums; utils/data/registry.py collects them into the one table every script reads.
    `load(data_dir, split, download, image_size) -> (images uint8 (N, H, W, 3), labels int64 (N,),
    class names)` reads one of `splits`; `prepare(data_dir, url=None, md5=None, force=False) -> Path`
    and `ready(data_dir) -> bool` are what data.py calls (None: nothing to download).
    """

    name: str
    num_classes: int | None  # None: read from the data (folder datasets)
    image_size: int | None  # native side length in pixels; None: chosen by --image_size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    load: Callable[..., tuple] | None = field(default=None, repr=False, compare=False)
    splits: tuple[str, ...] = ("train", "test")
    pretrain_split: str = "train"  # what SimCLR pretrains on by default (stl10: train+unlabeled)
    run_image_size: int | None = None  # the run's --image_size default when not the native size
    split_rule: str | None = None  # how train/test were made when the source has no official split
    aliases: tuple[str, ...] = ()
    prepare: Callable[..., Path] | None = field(default=None, repr=False, compare=False)
    ready: Callable[[Path], bool] | None = field(default=None, repr=False, compare=False)
    source: str = ""  # one line: where the data comes from (data.py prints it when nothing is downloaded)
    sizes: tuple[int, int] | None = None  # (train, test) images, known without reading the data
    balanced: bool = False  # every class has as many train images as any other (subset sizes follow from sizes)

    @property
    def default_image_size(self) -> int | None:
        """The run's --image_size when none is given (before --pretrained's 224)."""
        return self.run_image_size or self.image_size
