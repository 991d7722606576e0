"""Image transforms: SimCLR views, supervised training crops and the evaluation transform.

The per-image (PIL) transforms below are the reference pipeline that runs in DataLoader
workers. Every transform takes an HWC uint8 numpy array or a PIL image and returns a float
tensor (3, S, S) normalised with the given mean/std.

    from utils.augment import simclr_view_transform
    t = simclr_view_transform(image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

# SimCLR (Chen et al. 2020, Appendix A): crop scale, colour jitter strength s=0.5 for CIFAR
# is common, but the paper's default s=1.0 gives 0.8/0.8/0.8/0.2; this project follows the
# issue's 0.4/0.4/0.4/0.1 (s=0.5), applied with probability 0.8, grayscale with p=0.2.
SIMCLR_CROP_SCALE = (0.08, 1.0)
SIMCLR_CROP_RATIO = (3 / 4, 4 / 3)
SIMCLR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
SIMCLR_JITTER_P = 0.8
SIMCLR_GRAYSCALE_P = 0.2
SIMCLR_BLUR_P = 0.5
SUPERVISED_CROP_PADDING = 4  # pixels at 32 px; scaled with the image size


def _to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToTensor(), T.Normalize(mean, std)]


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's Gaussian blur kernel: 10 % of the image side, made odd."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 == 1 else k + 1


def simclr_view_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], blur: bool = False
) -> T.Compose:
    """One random SimCLR view: crop, flip, jitter (p=0.8), grayscale (p=0.2), [blur], normalise.

    Blur is off by default: SimCLR drops it for 32 px CIFAR images.
    """
    ops = [
        _to_pil,
        T.RandomResizedCrop(image_size, scale=SIMCLR_CROP_SCALE, ratio=SIMCLR_CROP_RATIO, antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*SIMCLR_JITTER)], p=SIMCLR_JITTER_P),
        T.RandomGrayscale(p=SIMCLR_GRAYSCALE_P),
    ]
    if blur:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0))], p=SIMCLR_BLUR_P))
    return T.Compose(ops + _normalise(mean, std))


def supervised_train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], native_size: int | None = None
) -> T.Compose:
    """Standard supervised augmentation: resize to `image_size`, padded random crop, flip."""
    padding = max(1, round(SUPERVISED_CROP_PADDING * image_size / 32))
    ops: list = [_to_pil]
    if native_size is not None and native_size != image_size:
        ops.append(T.Resize(image_size, antialias=True))
    ops += [T.RandomCrop(image_size, padding=padding, padding_mode="reflect"), T.RandomHorizontalFlip()]
    return T.Compose(ops + _normalise(mean, std))


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Deterministic evaluation transform: resize to `image_size` (if needed), normalise."""
    return T.Compose([_to_pil, T.Resize((image_size, image_size), antialias=True)] + _normalise(mean, std))


class TwoViews:
    """Apply a random transform twice to the same image: the SimCLR positive pair (x1, x2)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.transform(image)
