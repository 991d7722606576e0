"""Augmented test views: a fitted probe scored on K seeded SimCLR views of every test image.

The probe is fit on clean train features as always; scoring it on augmented views of the test
images as well asks whether the features carry the class through the augmentations SimCLR
trains to ignore, which separates a learning SimCLR backbone from random init within a few CPU
epochs, long before clean test accuracy does (issue 18; docs/measures.md).

Every view is a function of (seed, view k, image index i) alone: its parameters (crop box, flip,
jitter factors and order, grayscale, blur) are drawn by `BatchSimCLRAugment.sample_params` on
the CPU from a generator seeded with `view_seed(seed, k, i)`, then applied in batches on the
device. So the views are the same for every checkpoint (given the same spec and native image
size), every batch size and every device, and image i's views do not depend on the others.

    from utils.eval.views import score_augmented_views
    scores = score_augmented_views(backbone, head, test_images, test_labels, preprocess, spec, views=2,
                                   seed=0, device=torch.device("cpu"))   # {"loss", "acc", "count", ...}

Run its tests with `python -m pytest tests/test_views.py -q`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from utils.augment import BatchSimCLRAugment, SimCLRViewSpec
from utils.eval.features import DEFAULT_FEATURE_BATCH_SIZE, extract_features
from utils.eval.probe import Preprocess, evaluate_head

EVAL_VIEW_SEED = 0  # test.py --eval_view_seed's default: fixed, apart from --seed, so every run sees the same views
SPEC_FIELDS = ("crop_min_scale", "hflip_prob", "jitter", "jitter_prob", "gray_prob", "blur_prob")


def view_seed(seed: int, view: int, index: int) -> int:
    """The generator seed of view `view` of image `index`: numpy's SeedSequence([seed, view, index])
    hashed to 63 bits (well mixed, so neighbouring images and views get unrelated streams)."""
    words = np.random.SeedSequence([int(seed), int(view), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def sample_view_params(augment: BatchSimCLRAugment, n: int, height: int, width: int, view: int,
                       seed: int) -> dict[str, torch.Tensor]:
    """Parameters of view `view` of images 0..n-1 (native size height x width), each image drawn
    from its own generator (`view_seed`): a dict of CPU tensors with n rows, as sample_params gives."""
    rows = []
    for index in range(n):
        generator = torch.Generator().manual_seed(view_seed(seed, view, index))
        rows.append(augment.sample_params(1, height, width, generator=generator))
    if not rows:
        return {}
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


class _ViewsInOrder:
    """extract_features' `augment`: applies precomputed per-image parameters to the batches it is
    handed, which extract_features passes exactly once and in order."""

    def __init__(self, augment: BatchSimCLRAugment, params: dict[str, torch.Tensor]):
        self.augment, self.params, self.position = augment, params, 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        start, stop = self.position, self.position + x.shape[0]
        self.position = stop
        return self.augment.apply(x, {k: v[start:stop].to(x.device) for k, v in self.params.items()})


def augmented_view_features(
    backbone: nn.Module,
    images: np.ndarray | torch.Tensor,
    preprocess: Preprocess,
    spec: SimCLRViewSpec,
    view: int,
    seed: int,
    device: torch.device,
    batch_size: int = DEFAULT_FEATURE_BATCH_SIZE,
) -> torch.Tensor:
    """Backbone features h of view `view` of every image: (N, H, W, 3) uint8 -> (N, D) float32 on `device`.

    The view is made at the checkpoint's image size and normalised with its mean/std (preprocess).
    """
    augment = BatchSimCLRAugment(preprocess.image_size, preprocess.mean, preprocess.std, spec)
    n, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    params = sample_view_params(augment, n, height, width, view, seed)
    return extract_features(backbone, images, preprocess.image_size, preprocess.mean, preprocess.std, device,
                            batch_size=batch_size, augment=_ViewsInOrder(augment, params))


def score_augmented_views(
    backbone: nn.Module,
    head: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    preprocess: Preprocess,
    spec: SimCLRViewSpec,
    views: int,
    seed: int,
    device: torch.device,
    batch_size: int = DEFAULT_FEATURE_BATCH_SIZE,
) -> dict:
    """Mean cross-entropy and accuracy (%) of `head` (with its Standardize, as the probe returns it)
    over `views` seeded views of every image: {"loss", "acc", "count" (= views x N), "per_view_acc"}."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    loss_sum, correct, per_view = 0.0, 0.0, []
    for view in range(views):
        h = augmented_view_features(backbone, images, preprocess, spec, view, seed, device, batch_size)
        scores = evaluate_head(head, h, y)
        loss_sum += scores["loss"] * scores["count"]
        correct += scores["acc"] * scores["count"] / 100.0
        per_view.append(scores["acc"])
    count = views * int(y.shape[0])
    return {"loss": loss_sum / count, "acc": 100.0 * correct / count, "count": count, "per_view_acc": per_view}


def resolve_view_spec(checkpoint_config: dict | None, recipe_values: dict,
                      overrides: dict) -> tuple[SimCLRViewSpec, dict[str, str]]:
    """The SimCLR view spec of the augmented test views, and where each field came from.

    Each of SPEC_FIELDS is taken from `overrides` (test.py's --eval_* flags) when given (not None),
    else from the checkpoint's own SimCLR training config when it is a SimCLR checkpoint that
    records it, else from the recipe's simclr part. ValueError names a bad value.
    """
    own = checkpoint_config if isinstance(checkpoint_config, dict) and \
        checkpoint_config.get("train_type") not in (None, "supervised") else {}  # any two-view method's
    values, source = {}, {}
    for name in SPEC_FIELDS:
        for where, table in (("flag", overrides), ("checkpoint", own), ("recipe", recipe_values)):
            if table.get(name) is not None:
                values[name], source[name] = table[name], where
                break
    values["jitter"] = tuple(values["jitter"])
    return SimCLRViewSpec(**values), source
