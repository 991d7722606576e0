"""Augmented test views (utils/eval/views.py) against a naive per-image reference, and their seeding.

    python -m pytest tests/test_views.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import build_backbone
from utils.augment import BatchSimCLRAugment, SimCLRViewSpec
from utils.eval.probe import Preprocess, Standardize
from utils.eval.views import (augmented_view_features, resolve_view_spec, sample_view_params, score_augmented_views,
                              view_seed)

CPU = torch.device("cpu")
PRE = Preprocess(8, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
SPEC = SimCLRViewSpec(crop_min_scale=0.3, hflip_prob=0.5, gray_prob=0.3, blur_prob=0.5)  # every op can fire
NATIVE = 12  # images are resized from 12 px to the checkpoint's 8 px inside the crop


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    backbone = build_backbone("cifar")
    backbone.train()
    with torch.no_grad():  # move BatchNorm statistics off their initial values
        backbone(torch.randn(8, 3, 8, 8))
    backbone.eval()
    g = np.random.default_rng(0)
    images = g.integers(0, 256, size=(7, NATIVE, NATIVE, 3), dtype=np.uint8)
    labels = g.integers(0, 3, size=7)
    with torch.no_grad():
        train_h = backbone(torch.randn(20, 3, 8, 8))
    linear = nn.Linear(512, 3)
    head = nn.Sequential(Standardize.fit(train_h), linear)
    return backbone, images, labels, train_h, head


def naive_scores(backbone, images, labels, train_h, linear, views, seed):
    """Loop over views and images: make the view alone, run the backbone, standardise with the train
    features' statistics (float64, population variance + BatchNorm's eps), apply W h + b, compare."""
    augment = BatchSimCLRAugment(PRE.image_size, PRE.mean, PRE.std, SPEC)
    mean = train_h.double().mean(0)
    std = (train_h.double().var(0, unbiased=False) + 1e-5).sqrt()
    w, b = linear.weight.detach().double(), linear.bias.detach().double()
    losses, hits = [], 0
    for k in range(views):
        for i, image in enumerate(images):
            generator = torch.Generator().manual_seed(view_seed(seed, k, i))
            x = augment(torch.from_numpy(image).permute(2, 0, 1)[None], generator=generator)
            with torch.no_grad():
                h = backbone(x)[0].double()
            logits = w @ ((h - mean) / std) + b
            losses.append((torch.logsumexp(logits, 0) - logits[int(labels[i])]).item())
            hits += int(logits.argmax().item() == int(labels[i]))
    return float(np.mean(losses)), 100.0 * hits / len(losses)


def test_scores_equal_a_naive_per_image_loop(setup):
    backbone, images, labels, train_h, head = setup
    got = score_augmented_views(backbone, head, images, labels, PRE, SPEC, views=2, seed=5, device=CPU, batch_size=3)
    loss, acc = naive_scores(backbone, images, labels, train_h, head[1], views=2, seed=5)
    assert got["count"] == 14 and len(got["per_view_acc"]) == 2
    assert got["loss"] == pytest.approx(loss, rel=1e-4)
    assert got["acc"] == pytest.approx(acc)
    # the views are augmented: another seed gives other features, and so does view 1 against view 0
    f0 = augmented_view_features(backbone, images, PRE, SPEC, 0, 5, CPU)
    assert not torch.allclose(f0, augmented_view_features(backbone, images, PRE, SPEC, 1, 5, CPU))
    assert not torch.allclose(f0, augmented_view_features(backbone, images, PRE, SPEC, 0, 6, CPU))


def test_views_do_not_depend_on_batch_size_call_or_the_other_images(setup):
    backbone, images, *_ = setup
    a = augmented_view_features(backbone, images, PRE, SPEC, 1, 3, CPU, batch_size=2)
    b = augmented_view_features(backbone, images, PRE, SPEC, 1, 3, CPU, batch_size=512)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(a, augmented_view_features(backbone, images, PRE, SPEC, 1, 3, CPU, batch_size=2))  # repeatable
    aug = BatchSimCLRAugment(PRE.image_size, PRE.mean, PRE.std, SPEC)
    few, more = sample_view_params(aug, 3, NATIVE, NATIVE, 0, 3), sample_view_params(aug, 7, NATIVE, NATIVE, 0, 3)
    assert set(few) == set(more) and all(torch.equal(few[k], more[k][:3]) for k in few)
    assert len({view_seed(0, k, i) for k in range(3) for i in range(100)}) == 300


def test_view_spec_comes_from_flags_then_the_checkpoint_then_the_recipe():
    recipe = {"crop_min_scale": 0.2, "hflip_prob": 0.5, "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_prob": 0.8,
              "gray_prob": 0.1, "blur_prob": 0.0, "lr": 0.06}
    simclr = {"train_type": "simclr", "crop_min_scale": 0.3, "hflip_prob": 0.0, "jitter": [0.4, 0.4, 0.4, 0.1],
              "jitter_prob": 0.8, "gray_prob": 0.2, "blur_prob": 0.0}
    spec, source = resolve_view_spec(simclr, recipe, {"hflip_prob": 0.5, "crop_min_scale": None})
    assert (spec.crop_min_scale, spec.hflip_prob, spec.gray_prob) == (0.3, 0.5, 0.2)
    assert source["hflip_prob"] == "flag" and source["crop_min_scale"] == "checkpoint"
    spec, source = resolve_view_spec({**simclr, "train_type": "supervised"}, recipe, {})
    assert spec.crop_min_scale == 0.2 and set(source.values()) == {"recipe"}
    with pytest.raises(ValueError, match="crop_min_scale"):
        resolve_view_spec(None, {**recipe, "crop_min_scale": 0.0}, {})
