"""Backbone features h for a whole image set: one batched pass on the device, in order.

Used by linear evaluation (test.py caches the features once and trains the head on them) and
by train.py's kNN monitor. The images stay uint8 until they reach the device; the evaluation
transform (resize to the checkpoint's size, normalise) or an augmentation runs there in batches.
Features are computed in float32 by default, on a GPU too (autocast off, TF32 convolutions off),
so a GPU probe and a CPU probe see the same features; precision="bf16" opts into bf16 autocast
(only on a GPU with native bf16; elsewhere it stays float32).

    from utils.eval.features import extract_features
    h = extract_features(backbone, arrays.images, image_size=32, mean=CIFAR10_MEAN,
                         std=CIFAR10_STD, device=torch.device("cpu"))   # (N, 512) float32

Run its tests with `python -m pytest tests/test_probe.py -q`.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from utils.runtime import autocast_context, bf16_native
from utils.augment import batch_eval_transform

# Images per forward pass. 512 fills an H100 at 32 px and still fits at 224 px in inference
# mode (the input batch alone is 512 x 3 x 224 x 224 x 4 B = 308 MB).
DEFAULT_FEATURE_BATCH_SIZE = 512
FEATURE_PRECISIONS = ("fp32", "bf16")


def feature_precision_used(precision: str, device: torch.device) -> str:
    """What extract_features(precision=...) computes in on `device`: bf16 only on a GPU with native bf16."""
    if precision not in FEATURE_PRECISIONS:
        raise ValueError(f"feature precision must be one of {FEATURE_PRECISIONS}, got {precision!r}")
    return "bf16" if precision == "bf16" and device.type == "cuda" and bf16_native() else "fp32"


@contextmanager
def _cudnn_tf32(allowed: bool) -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def precision_context(precision: str, device: torch.device):
    """The context a feature pass runs in: bf16 autocast (where native), or float32 throughout:
    autocast off (also inside a caller's autocast region) and, on CUDA, no TF32 convolutions."""
    if feature_precision_used(precision, device) == "bf16":
        return autocast_context(device)
    stack = ExitStack()
    if device.type in ("cuda", "cpu"):
        stack.enter_context(torch.autocast(device.type, enabled=False))
    if device.type == "cuda":
        stack.enter_context(_cudnn_tf32(False))
    return stack


def _batch_to_device(images: np.ndarray | torch.Tensor, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """images[start:stop] (B, H, W, 3) uint8 -> (B, 3, H, W) uint8 on `device`."""
    if isinstance(images, torch.Tensor):
        chunk = images[start:stop]
    else:
        # np.array copies: the source may be a read-only memory map, which torch.from_numpy warns about.
        chunk = torch.from_numpy(np.array(images[start:stop], copy=True))
        if device.type == "cuda":
            chunk = chunk.pin_memory()
    return chunk.to(device, non_blocking=True).permute(0, 3, 1, 2)


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    images: np.ndarray | torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = DEFAULT_FEATURE_BATCH_SIZE,
    augment: Callable[..., torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
    progress: str | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Features h of every image, exactly once and in order: (N, H, W, 3) uint8 -> (N, D) float32 on `device`.

    The backbone runs in eval mode (BatchNorm uses its running statistics and does not update
    them); its previous train/eval mode is restored afterwards. Without `augment` each batch
    gets the evaluation transform (resize to `image_size` if needed, normalise with mean/std);
    with it, `augment(x_uint8 (B, 3, H, W), generator=generator) -> (B, 3, S, S)` float is used
    instead (e.g. utils.augment.BatchSupervisedAugment), drawing from `generator` (which must
    live on `device`). `precision`: "fp32" (default) or "bf16" (see feature_precision_used).
    `progress` is a tqdm description (None: no bar).

    The result is an inference tensor: `.clone()` it outside inference mode before it takes
    part in autograd (test.py's probe does).
    """
    n = int(images.shape[0])
    feature_precision_used(precision, device)  # ValueError for an unknown name, before any work
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images (N, H, W, 3), got shape {tuple(images.shape)}")
    was_training = backbone.training
    backbone.eval()
    out: torch.Tensor | None = None
    starts = range(0, n, batch_size)
    if progress is not None:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", leave=False, disable=None)
    try:
        for start in starts:
            stop = min(start + batch_size, n)
            x = _batch_to_device(images, start, stop, device)
            if augment is None:
                x = batch_eval_transform(x, image_size, mean, std)
            else:
                x = augment(x, generator=generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision_context(precision, device):
                h = backbone(x)
            h = h.float().flatten(1)
            if out is None:
                out = torch.empty((n, h.shape[1]), dtype=torch.float32, device=device)
            out[start:stop] = h
    finally:
        backbone.train(was_training)
    if out is None:  # no images: the width is unknown without a forward pass
        dim = int(getattr(backbone, "feature_dim", 0))
        out = torch.empty((0, dim), dtype=torch.float32, device=device)
    return out
