"""Tests for utils/augment.py: the PIL transforms' shapes, and the batched tensor transforms
checked against torchvision image by image (colour ops, crop, blur, rotation, eval resize) and
statistically against the PIL pipeline (crop boxes, output mean/std, grayscale and flip rates),
for the default augmentation specs and for others (SimCLRViewSpec, SupervisedAugSpec).

    python -m pytest tests/test_augment.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision import transforms as T

from utils.augment import (
    SIMCLR_BLUR_P,
    SIMCLR_CROP_RATIO,
    SIMCLR_CROP_SCALE,
    SIMCLR_GRAYSCALE_P,
    SIMCLR_JITTER,
    SIMCLR_JITTER_P,
    BatchSimCLRAugment,
    BatchSupervisedAugment,
    SimCLRViewSpec,
    SupervisedAugSpec,
    TwoViews,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    batch_eval_transform,
    color_jitter,
    eval_transform,
    gaussian_blur,
    resized_crop,
    rgb_to_grayscale,
    rotate,
    sample_resized_crop_boxes,
    simclr_view_transform,
    supervised_padding,
    supervised_train_transform,
)

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SIZES = [(32, 32), (32, 64), (64, 32), (64, 64)]  # (input side, image_size)


def _uint8_batch(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images with some texture, (n, 3, side, side) uint8."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=g)
    smooth = F.interpolate(low, size=side, mode="bicubic", align_corners=False).clamp(0, 1)
    img = 0.7 * smooth + 0.3 * torch.rand((n, 3, side, side), generator=g)
    return (img * 255).round().to(torch.uint8)


def _hwc(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 tensor -> (H, W, 3) numpy array, what the PIL transforms take."""
    return x.permute(1, 2, 0).numpy()


def _binomial_tol(p: float, n: int, sigmas: float = 4.5) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    grid = torch.cat([a, b]).sort().values
    fa = torch.searchsorted(a.sort().values.contiguous(), grid, right=True).double() / len(a)
    fb = torch.searchsorted(b.sort().values.contiguous(), grid, right=True).double() / len(b)
    return float((fa - fb).abs().max())


def _ks_critical(n: int, m: int, c_alpha: float = 1.95) -> float:
    """KS critical value at alpha = 0.001 (c(alpha) = 1.95)."""
    return c_alpha * math.sqrt((n + m) / (n * m))


# ----------------------------------------------------------------------------------------------
# PIL transforms (the reference path): shapes and dtypes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side,size", SIZES)
def test_pil_transforms_shapes(side: int, size: int) -> None:
    img = _hwc(_uint8_batch(1, side)[0])
    for t in (
        simclr_view_transform(size, MEAN, STD),
        simclr_view_transform(size, MEAN, STD, SimCLRViewSpec(blur_prob=SIMCLR_BLUR_P)),
        supervised_train_transform(size, MEAN, STD, native_size=side),
        eval_transform(size, MEAN, STD),
    ):
        out = t(img)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    x1, x2 = TwoViews(simclr_view_transform(size, MEAN, STD))(img)
    assert x1.shape == x2.shape == (3, size, size)
    assert not torch.equal(x1, x2)  # two independent random views


# ----------------------------------------------------------------------------------------------
# Batched transforms: shapes, dtypes, seeding, per-sample randomness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side,size", SIZES)
def test_batched_shapes_and_dtypes(side: int, size: int) -> None:
    x = _uint8_batch(6, side)
    for aug in (
        BatchSimCLRAugment(size, MEAN, STD),
        BatchSimCLRAugment(size, MEAN, STD, SimCLRViewSpec(blur_prob=SIMCLR_BLUR_P)),
        BatchSupervisedAugment(size, MEAN, STD),
    ):
        out = aug(x, torch.Generator().manual_seed(0))
        assert out.shape == (6, 3, size, size) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    out = batch_eval_transform(x, size, MEAN, STD)
    assert out.shape == (6, 3, size, size) and out.dtype == torch.float32


def test_batched_rejects_bad_input() -> None:
    aug = BatchSimCLRAugment(32, MEAN, STD)
    with pytest.raises(ValueError):
        aug(torch.zeros(3, 32, 32, dtype=torch.uint8))  # no batch dimension
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))  # not RGB
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.int32))


@pytest.mark.parametrize("blur", [False, True])
def test_simclr_seeded(blur: bool) -> None:
    x = _uint8_batch(16, 32)
    aug = BatchSimCLRAugment(32, MEAN, STD, SimCLRViewSpec(blur_prob=SIMCLR_BLUR_P if blur else 0.0))
    a = aug(x, torch.Generator().manual_seed(123))
    b = aug(x, torch.Generator().manual_seed(123))
    c = aug(x, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # Without a generator the global RNG is used, and it too is reproducible.
    torch.manual_seed(5)
    d = aug(x)
    torch.manual_seed(5)
    assert torch.equal(d, aug(x))


def test_supervised_seeded() -> None:
    x = _uint8_batch(16, 32)
    aug = BatchSupervisedAugment(32, MEAN, STD)
    a = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))


def test_views_are_random_per_sample() -> None:
    """The same image repeated in one batch gets a different view in every slot."""
    x = _uint8_batch(1, 32).repeat(32, 1, 1, 1)
    blur = SimCLRViewSpec(blur_prob=SIMCLR_BLUR_P)
    for aug in (BatchSimCLRAugment(32, MEAN, STD, blur), BatchSimCLRAugment(32, MEAN, STD)):
        out = aug(x, torch.Generator().manual_seed(0)).flatten(1)
        dist = torch.cdist(out, out)
        off_diag = dist[~torch.eye(32, dtype=torch.bool)]
        assert off_diag.min() > 1e-3
    # Supervised crops have few positions (9 x 9 x 2), so only ask for many distinct ones.
    out = BatchSupervisedAugment(32, MEAN, STD)(x, torch.Generator().manual_seed(0)).flatten(1)
    assert len(torch.unique(out, dim=0)) >= 25


def test_params_are_per_sample_and_well_formed() -> None:
    aug = BatchSimCLRAugment(32, MEAN, STD, SimCLRViewSpec(blur_prob=SIMCLR_BLUR_P))
    p = aug.sample_params(4000, 32, 32, torch.Generator().manual_seed(0))
    n = 4000
    assert abs(p["flip"].float().mean().item() - 0.5) < _binomial_tol(0.5, n)
    assert abs(p["jitter"].float().mean().item() - SIMCLR_JITTER_P) < _binomial_tol(SIMCLR_JITTER_P, n)
    assert abs(p["gray"].float().mean().item() - SIMCLR_GRAYSCALE_P) < _binomial_tol(SIMCLR_GRAYSCALE_P, n)
    assert abs(p["blur"].float().mean().item() - 0.5) < _binomial_tol(0.5, n)
    b, c, s, h = SIMCLR_JITTER
    for key, lo, hi in [("brightness", 1 - b, 1 + b), ("contrast", 1 - c, 1 + c), ("saturation", 1 - s, 1 + s),
                        ("hue", -h, h), ("sigma", 0.1, 2.0)]:
        v = p[key]
        assert v.min() >= lo and v.max() <= hi, key
        # Uniform: mean in the middle, and spread over the whole range.
        assert abs(v.mean().item() - (lo + hi) / 2) < 0.02 * (hi - lo) + 1e-6, key
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo), key
    # The jitter order is a permutation per sample, and all 24 orders occur about equally.
    assert torch.equal(p["order"].sort(dim=1).values, torch.arange(4).expand(n, 4))
    codes = (p["order"] * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    counts = torch.bincount(torch.unique(codes, return_inverse=True)[1])
    assert len(counts) == 24 and counts.min() > n / 24 * 0.6


def test_spec_defaults_are_the_historical_values() -> None:
    spec = SimCLRViewSpec()
    assert spec.crop_scale == SIMCLR_CROP_SCALE and spec.crop_ratio == SIMCLR_CROP_RATIO
    assert spec.hflip_prob == 0.5 and spec.jitter == SIMCLR_JITTER and spec.jitter_prob == SIMCLR_JITTER_P
    assert spec.gray_prob == SIMCLR_GRAYSCALE_P and spec.blur_prob == 0.0 and spec.blur_sigma == (0.1, 2.0)
    sup = SupervisedAugSpec()
    assert (sup.padding, sup.pad_mode, sup.hflip_prob, sup.rotation) == (4, "reflect", 0.5, 0.0)
    # Sequences are stored as tuples of floats: specs compare by value and are hashable.
    assert SimCLRViewSpec(jitter=[0.4, 0.4, 0.4, 0.1], crop_ratio=[0.75, 4 / 3]) == spec
    assert hash(SimCLRViewSpec(crop_ratio=[1, 2])) == hash(SimCLRViewSpec(crop_ratio=(1.0, 2.0)))


@pytest.mark.parametrize(
    "cls,kwargs,field",
    [
        (SimCLRViewSpec, {"crop_min_scale": 0.0}, "crop_min_scale"),
        (SimCLRViewSpec, {"crop_min_scale": 1.5}, "crop_min_scale"),
        (SimCLRViewSpec, {"crop_ratio": (4 / 3, 3 / 4)}, "crop_ratio"),
        (SimCLRViewSpec, {"crop_ratio": (0.0, 1.0)}, "crop_ratio"),
        (SimCLRViewSpec, {"crop_ratio": (1.0, 2.0, 3.0)}, "crop_ratio"),
        (SimCLRViewSpec, {"hflip_prob": -0.1}, "hflip_prob"),
        (SimCLRViewSpec, {"hflip_prob": 1.1}, "hflip_prob"),
        (SimCLRViewSpec, {"jitter": (0.4, 0.4, 0.4)}, "jitter"),
        (SimCLRViewSpec, {"jitter": (-0.1, 0.4, 0.4, 0.1)}, "jitter brightness, contrast and saturation"),
        (SimCLRViewSpec, {"jitter": (0.4, 0.4, 0.4, 0.6)}, "jitter hue"),
        (SimCLRViewSpec, {"jitter": (0.4, 0.4, 0.4, -0.1)}, "jitter hue"),
        (SimCLRViewSpec, {"jitter_prob": 2.0}, "jitter_prob"),
        (SimCLRViewSpec, {"gray_prob": -1.0}, "gray_prob"),
        (SimCLRViewSpec, {"blur_prob": 1.5}, "blur_prob"),
        (SimCLRViewSpec, {"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        (SimCLRViewSpec, {"blur_sigma": (2.0, 1.0)}, "blur_sigma"),
        (SupervisedAugSpec, {"padding": -1}, "padding"),
        (SupervisedAugSpec, {"padding": 2.5}, "padding"),
        (SupervisedAugSpec, {"pad_mode": "edge"}, "pad_mode"),
        (SupervisedAugSpec, {"hflip_prob": 1.5}, "hflip_prob"),
        (SupervisedAugSpec, {"rotation": -15.0}, "rotation"),
        (SupervisedAugSpec, {"rotation": 200.0}, "rotation"),
    ],
)
def test_specs_reject_bad_values(cls, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must"):
        cls(**kwargs)


@pytest.mark.parametrize("crop_min_scale,ratio",
                         [(0.2, SIMCLR_CROP_RATIO), (0.5, SIMCLR_CROP_RATIO), (0.3, (0.5, 2.0))])
def test_spec_crop_boxes_match_torchvision_distribution(crop_min_scale: float, ratio: tuple) -> None:
    """BatchSimCLRAugment draws its boxes from RandomResizedCrop(scale=(min, 1), ratio)."""
    n, height, width = 4000, 32, 32
    spec = SimCLRViewSpec(crop_min_scale=crop_min_scale, crop_ratio=ratio)
    boxes = BatchSimCLRAugment(32, MEAN, STD, spec).sample_params(n, height, width, torch.Generator().manual_seed(0))
    i, j, h, w = boxes["boxes"].unbind(1)
    assert (i >= 0).all() and (j >= 0).all() and (i + h <= height).all() and (j + w <= width).all()
    torch.manual_seed(1)
    img = torch.zeros(3, height, width)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, [crop_min_scale, 1.0], list(ratio)) for _ in range(n)])
    _, _, rh, rw = ref.unbind(1)
    area, ref_area = (h * w).double() / (height * width), (rh * rw).double() / (height * width)
    # Rounding h and w can take a box a little under the minimum scale, as in torchvision.
    assert area.min() > crop_min_scale - 0.1
    assert _ks_statistic(area, ref_area) < _ks_critical(n, n)
    assert _ks_statistic((w / h).double(), (rw / rh).double()) < _ks_critical(n, n)


def test_spec_params_match_torchvision_distributions() -> None:
    """Every drawn parameter follows the spec: rates within binomial tolerance, jitter factors
    and blur sigmas from the distributions of torchvision's ColorJitter / GaussianBlur."""
    spec = OTHER_VIEW_SPEC
    n = 4000
    p = BatchSimCLRAugment(32, MEAN, STD, spec).sample_params(n, 32, 32, torch.Generator().manual_seed(0))
    for key, prob in [("flip", spec.hflip_prob), ("jitter", spec.jitter_prob), ("gray", spec.gray_prob),
                      ("blur", spec.blur_prob)]:
        assert abs(p[key].float().mean().item() - prob) < _binomial_tol(prob, n), key
    torch.manual_seed(2)
    jitter = T.ColorJitter(*spec.jitter)
    ref = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
           for _ in range(n)]
    ref_factors = torch.tensor([r[1:] for r in ref])  # (n, 4): brightness, contrast, saturation, hue
    for col, key in enumerate(["brightness", "contrast", "saturation", "hue"]):
        lo, hi = (jitter.hue if key == "hue" else getattr(jitter, key))
        assert p[key].min() >= lo and p[key].max() <= hi, key
        assert _ks_statistic(p[key].double(), ref_factors[:, col]) < _ks_critical(n, n), key
    blur = T.GaussianBlur(3, sigma=spec.blur_sigma)
    ref_sigma = torch.tensor([T.GaussianBlur.get_params(*blur.sigma) for _ in range(n)], dtype=torch.float64)
    assert _ks_statistic(p["sigma"].double(), ref_sigma) < _ks_critical(n, n)
    # A probability of 0 never fires and 1 always does.
    p = BatchSimCLRAugment(32, MEAN, STD, SimCLRViewSpec(hflip_prob=0, jitter_prob=1, gray_prob=0, blur_prob=1))
    p = p.sample_params(500, 32, 32, torch.Generator().manual_seed(0))
    assert not p["flip"].any() and p["jitter"].all() and not p["gray"].any() and p["blur"].all()


def test_zero_strength_jitter_changes_nothing() -> None:
    """jitter (0, 0, 0, 0) with p = 1 and no grayscale: the view is the crop alone (as the PIL
    ColorJitter(0, 0, 0, 0), whose ops are all skipped); a zero hue strength skips the hue op."""
    x = _uint8_batch(16, 32, seed=4)
    spec = SimCLRViewSpec(jitter=(0, 0, 0, 0), jitter_prob=1.0, gray_prob=0.0)
    aug = BatchSimCLRAugment(32, (0.0,) * 3, (1.0,) * 3, spec)
    params = aug.sample_params(16, 32, 32, torch.Generator().manual_seed(0))
    crop = resized_crop(x.float() / 255, params["boxes"], 32, params["flip"])
    assert torch.equal(aug.apply(x, params), crop)
    # Hue strength 0, the others not: brightness / contrast / saturation in the drawn order only.
    spec = SimCLRViewSpec(jitter=(0.4, 0.4, 0.4, 0.0), jitter_prob=1.0, gray_prob=0.0)
    aug = BatchSimCLRAugment(32, (0.0,) * 3, (1.0,) * 3, spec)
    params = aug.sample_params(16, 32, 32, torch.Generator().manual_seed(0))
    out = aug.apply(x, params)
    crop = resized_crop(x.float() / 255, params["boxes"], 32, params["flip"])
    ops = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation}
    for k in range(16):
        ref = crop[k]
        for op in params["order"][k].tolist():
            if op in ops:
                ref = ops[op](ref, float(params[["brightness", "contrast", "saturation"][op]][k]))
        assert torch.allclose(out[k], ref, atol=1e-5), k


# ----------------------------------------------------------------------------------------------
# Random resized crop: boxes from torchvision's distribution, pixels as torchvision's resize
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(32, 32), (64, 48)])
def test_crop_boxes_match_torchvision_distribution(height: int, width: int) -> None:
    n = 4000
    ours = sample_resized_crop_boxes(n, height, width, generator=torch.Generator().manual_seed(0))
    i, j, h, w = ours.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (i >= 0).all() and (j >= 0).all()
    assert (i + h <= height).all() and (j + w <= width).all()

    torch.manual_seed(1)
    img = torch.zeros(3, height, width)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, list(SIMCLR_CROP_SCALE), list(SIMCLR_CROP_RATIO))
                        for _ in range(n)])
    ri, rj, rh, rw = ref.unbind(1)
    area = (h * w).double() / (height * width)
    ref_area = (rh * rw).double() / (height * width)
    crit = _ks_critical(n, n)
    assert _ks_statistic(area, ref_area) < crit
    assert _ks_statistic((w / h).double(), (rw / rh).double()) < crit
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(torch.quantile(area, q) - torch.quantile(ref_area, q)) < 0.03
    assert abs(area.mean() - ref_area.mean()) < 0.015
    # Offsets uniform over the valid positions: relative position has mean 1/2 where it can move.
    for off, span, roff, rspan in [(i, height - h, ri, height - rh), (j, width - w, rj, width - rw)]:
        movable, rmovable = span > 0, rspan > 0
        rel = (off[movable].double() / span[movable]).mean()
        rrel = (roff[rmovable].double() / rspan[rmovable]).mean()
        assert abs(rel - 0.5) < 0.03 and abs(rel - rrel) < 0.04


def test_crop_boxes_fallback_is_torchvision_central_crop() -> None:
    # 8 x 200: no box of area >= 8 % with ratio in [3/4, 4/3] fits, so every draw falls back.
    torch.manual_seed(0)
    ref = T.RandomResizedCrop.get_params(torch.zeros(3, 8, 200), list(SIMCLR_CROP_SCALE), list(SIMCLR_CROP_RATIO))
    ours = sample_resized_crop_boxes(50, 8, 200, generator=torch.Generator().manual_seed(0))
    assert (ours == torch.tensor(ref)).all()


@pytest.mark.parametrize("out_size", [8, 20, 32])
def test_resized_crop_matches_torchvision(out_size: int) -> None:
    """Pixel values equal torchvision's resized_crop(antialias=True) then hflip, per image."""
    x = torch.rand(24, 3, 20, 24)
    boxes = sample_resized_crop_boxes(24, 20, 24, generator=torch.Generator().manual_seed(3))
    boxes[0] = torch.tensor([0, 0, 20, 24])  # the whole image
    boxes[1] = torch.tensor([5, 7, 1, 1])  # a single pixel
    flip = torch.rand(24) < 0.5
    out = resized_crop(x, boxes, out_size, flip)
    for k in range(24):
        ref = TF.resized_crop(x[k], *[int(v) for v in boxes[k]], [out_size, out_size], antialias=True)
        ref = TF.hflip(ref) if flip[k] else ref
        assert torch.allclose(out[k], ref, atol=1e-5), k


# ----------------------------------------------------------------------------------------------
# Colour ops: exact against torchvision.transforms.functional, image by image
# ----------------------------------------------------------------------------------------------


def _colour_batch() -> torch.Tensor:
    x = torch.rand(12, 3, 9, 11)
    x[0] = 0.5  # a grey image: no hue
    x[1, :, :4] = x[1, :1, :4]  # grey pixels inside a colour image
    x[2, 1] = x[2, 0]  # ties between the max channels
    x[3, 2] = x[3, 1]
    x[4] = x[4].round()  # saturated primaries and black / white
    return x


@pytest.mark.parametrize(
    "ours,ref,lo,hi",
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_ops_match_torchvision(ours, ref, lo, hi) -> None:
    x = _colour_batch()
    factors = torch.rand(len(x)) * (hi - lo) + lo
    out = ours(x, factors)
    expected = torch.stack([ref(x[k], float(factors[k])) for k in range(len(x))])
    atol = 1e-5 if ours is adjust_hue else 1e-6
    assert torch.allclose(out, expected, atol=atol)


def test_hue_shift_wraps_around() -> None:
    x = _colour_batch()
    # A full turn is the identity; +0.5 and -0.5 turns are the same shift.
    assert torch.allclose(adjust_hue(adjust_hue(x, 0.5), 0.5), x, atol=1e-5)
    assert torch.allclose(adjust_hue(x, 0.5), adjust_hue(x, -0.5), atol=1e-5)


def test_grayscale_matches_torchvision() -> None:
    x = _colour_batch()
    expected = torch.stack([TF.rgb_to_grayscale(x[k]) for k in range(len(x))])
    assert torch.allclose(rgb_to_grayscale(x), expected, atol=1e-7)


def test_color_jitter_random_order_matches_sequential_torchvision() -> None:
    """Per-sample op order and factors: same as applying torchvision's ops one by one."""
    x = _colour_batch()
    n = len(x)
    b, c, s, h = SIMCLR_JITTER
    g = torch.Generator().manual_seed(7)
    brightness = torch.rand(n, generator=g) * 2 * b + 1 - b
    contrast = torch.rand(n, generator=g) * 2 * c + 1 - c
    saturation = torch.rand(n, generator=g) * 2 * s + 1 - s
    hue = (torch.rand(n, generator=g) * 2 - 1) * h
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(n)])
    order[0] = torch.tensor([3, 0, 1, 2])  # hue first
    order[1] = torch.tensor([0, 1, 2, 3])  # hue last
    apply = torch.ones(n, dtype=torch.bool)
    apply[5] = False
    out = color_jitter(x, brightness, contrast, saturation, hue, order, apply)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for k in range(n):
        ref = x[k]
        if apply[k]:
            factors = [brightness[k], contrast[k], saturation[k], hue[k]]
            for op in order[k].tolist():
                ref = ops[op](ref, float(factors[op]))
        assert torch.allclose(out[k], ref, atol=1e-5), k
    assert torch.equal(out[5], x[5])  # not applied: bit-identical


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_gaussian_blur_matches_torchvision(kernel_size: int) -> None:
    x = torch.rand(6, 3, 16, 16)
    sigma = torch.rand(6) * 1.9 + 0.1
    out = gaussian_blur(x, sigma, kernel_size)
    for k in range(6):
        ref = TF.gaussian_blur(x[k], [kernel_size, kernel_size], [float(sigma[k])] * 2)
        assert torch.allclose(out[k], ref, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Whole SimCLR view: statistics against the PIL pipeline
# ----------------------------------------------------------------------------------------------


# Every SimCLR field away from its default at once (blur on, hue strength changed, ...).
OTHER_VIEW_SPEC = SimCLRViewSpec(
    crop_min_scale=0.5,
    crop_ratio=(0.6, 1.5),
    hflip_prob=0.3,
    jitter=(0.8, 0.2, 0.6, 0.3),
    jitter_prob=0.3,
    gray_prob=0.1,
    blur_prob=0.5,
    blur_sigma=(0.5, 1.5),
)


@pytest.mark.parametrize("spec", [SimCLRViewSpec(), OTHER_VIEW_SPEC], ids=["default", "other"])
def test_simclr_output_statistics_match_pil(spec: SimCLRViewSpec) -> None:
    """Per-channel mean/std and the grayscale rate of many views, batched vs PIL, same spec."""
    images = _uint8_batch(48, 32, seed=1)
    reps = 30  # 1440 views per path
    pil_t = simclr_view_transform(32, MEAN, STD, spec)
    hwc = [_hwc(im) for im in images]
    pil = torch.stack([pil_t(hwc[k % len(hwc)]) for k in range(len(hwc) * reps)])
    aug = BatchSimCLRAugment(32, MEAN, STD, spec)
    batched = aug(images.repeat(reps, 1, 1, 1), torch.Generator().manual_seed(0))
    assert pil.shape == batched.shape

    n_views = len(pil)
    view_means_p = pil.mean(dim=(2, 3))  # (N, 3)
    view_means_b = batched.mean(dim=(2, 3))
    # Standard error of the difference of the two channel means, from the spread of views.
    se = torch.sqrt(view_means_p.var(0) / n_views + view_means_b.var(0) / n_views)
    assert ((view_means_p.mean(0) - view_means_b.mean(0)).abs() < 5 * se + 0.01).all()
    std_p = pil.std(dim=(0, 2, 3))
    std_b = batched.std(dim=(0, 2, 3))
    assert torch.allclose(std_p, std_b, rtol=0.05)

    def gray_fraction(out: torch.Tensor) -> float:
        raw = out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        spread = (raw.amax(dim=1) - raw.amin(dim=1)).amax(dim=(1, 2))
        return (spread < 1e-5).float().mean().item()

    # Sharpness (mean absolute difference of neighbouring pixels per view): smaller crops are
    # upscaled more and blur smooths, so this tells crop scales and blur settings apart.
    def sharpness(out: torch.Tensor) -> torch.Tensor:
        return (out[..., 1:] - out[..., :-1]).abs().mean(dim=(1, 2, 3))

    sharp_p, sharp_b = sharpness(pil), sharpness(batched)
    se = torch.sqrt((sharp_p.var() + sharp_b.var()) / n_views)
    assert (sharp_p.mean() - sharp_b.mean()).abs() < 5 * se

    tol = _binomial_tol(spec.gray_prob, n_views)
    assert abs(gray_fraction(batched) - spec.gray_prob) < tol
    assert abs(gray_fraction(pil) - spec.gray_prob) < tol + 0.02  # PIL rounds: rare false greys


def _ramp_images(n: int, size: int = 32) -> torch.Tensor:
    """n copies of a grey left-dark, right-bright ramp, (n, 3, size, size) uint8."""
    ramp = torch.linspace(0.1, 0.6, size).expand(size, size)  # grey, so hue and saturation keep it
    return (ramp * 255).round().to(torch.uint8).expand(n, 3, size, size)


def _flipped(out: torch.Tensor, margin: int = 0) -> torch.Tensor:
    """(N, 3, S, S) views of the ramp -> (N,) bool: brighter on the left, i.e. mirrored.
    Columns `margin` from each edge (supervised crops shift by up to the padding)."""
    left = out[..., margin].mean(dim=(1, 2))
    right = out[..., out.shape[-1] - 1 - margin].mean(dim=(1, 2))
    assert (left != right).all()
    return left > right


def _check_flip_rate(flipped: torch.Tensor, p: float) -> None:
    rate = flipped.float().mean().item()
    if p in (0.0, 1.0):
        assert rate == p  # never / always
    else:
        assert abs(rate - p) < _binomial_tol(p, len(flipped))


@pytest.mark.parametrize("hflip_prob", [0.5, 0.0, 1.0, 0.3])
def test_flip_fraction_from_outputs(hflip_prob: float) -> None:
    """A left-dark, right-bright image: its views are mirrored with probability hflip_prob
    (half the cases by default), on the batched path and on the PIL path."""
    n = 2000
    x = _ramp_images(n)
    spec = SimCLRViewSpec(hflip_prob=hflip_prob)
    out = BatchSimCLRAugment(32, (0.0,) * 3, (1.0,) * 3, spec)(x, torch.Generator().manual_seed(0))
    _check_flip_rate(_flipped(out), hflip_prob)
    torch.manual_seed(0)
    pil_t = simclr_view_transform(32, (0.0,) * 3, (1.0,) * 3, spec)
    img = _hwc(x[0])
    _check_flip_rate(_flipped(torch.stack([pil_t(img) for _ in range(400)])), hflip_prob)


@pytest.mark.parametrize("hflip_prob", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_supervised_flip_fraction_from_outputs(hflip_prob: float, pad_mode: str) -> None:
    n = 2000
    x = _ramp_images(n)
    spec = SupervisedAugSpec(hflip_prob=hflip_prob, pad_mode=pad_mode)
    pad = supervised_padding(32, spec.padding)
    out = BatchSupervisedAugment(32, (0.0,) * 3, (1.0,) * 3, spec)(x, torch.Generator().manual_seed(0))
    _check_flip_rate(_flipped(out, margin=pad), hflip_prob)
    torch.manual_seed(0)
    pil_t = supervised_train_transform(32, (0.0,) * 3, (1.0,) * 3, spec=spec)
    img = _hwc(x[0])
    _check_flip_rate(_flipped(torch.stack([pil_t(img) for _ in range(400)]), margin=pad), hflip_prob)


# ----------------------------------------------------------------------------------------------
# Evaluation and supervised transforms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side,size", SIZES)
def test_batch_eval_matches_torchvision(side: int, size: int) -> None:
    x = _uint8_batch(5, side, seed=2)
    out = batch_eval_transform(x, size, MEAN, STD)
    ref_t = T.Compose([T.Resize((size, size), antialias=True), T.Normalize(MEAN, STD)])
    expected = torch.stack([ref_t(im.float() / 255) for im in x])
    assert torch.allclose(out, expected, atol=1e-5)
    # And the PIL eval transform: identical without a resize; PIL rounds resized pixels to uint8.
    pil = torch.stack([eval_transform(size, MEAN, STD)(_hwc(im)) for im in x])
    if side == size:
        assert torch.allclose(out, pil, atol=1e-5)
    else:
        assert (out - pil).abs().mean() < 0.02 and (out - pil).abs().max() < 0.1


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_supervised_views_are_padded_crops_with_flips(pad_mode: str) -> None:
    """Every output is one of the (2p+1)^2 x 2 padded crops (flipped or not), reflect- or
    zero-padded as the spec says, on the batched path and on the PIL path."""
    size = 16
    pad = supervised_padding(size)
    x = _uint8_batch(20, size, seed=3)
    spec = SupervisedAugSpec(pad_mode=pad_mode)
    aug = BatchSupervisedAugment(size, (0.0,) * 3, (1.0,) * 3, spec)
    out = aug(x, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    pil_t = supervised_train_transform(size, (0.0,) * 3, (1.0,) * 3, native_size=size, spec=spec)
    flips = pil_flips = 0
    for k in range(len(x)):
        padded = F.pad(x[k : k + 1].float() / 255, (pad, pad, pad, pad), mode=pad_mode)[0]
        crops = torch.stack([padded[:, i : i + size, j : j + size]
                             for i in range(2 * pad + 1) for j in range(2 * pad + 1)])
        candidates = torch.cat([crops, crops.flip(-1)])
        dist = (candidates - out[k]).abs().flatten(1).amax(dim=1)
        assert dist.min() < 1e-6
        flips += int(dist.argmin() >= len(crops))
        pil_dist = (candidates - pil_t(_hwc(x[k]))).abs().flatten(1).amax(dim=1)
        assert pil_dist.min() < 1e-6
        pil_flips += int(pil_dist.argmin() >= len(crops))
    assert 0 < flips < len(x) and 0 < pil_flips < len(x)
    assert supervised_padding(32) == 4 and supervised_padding(64) == 8
    assert supervised_padding(16, 0) == 0 and supervised_padding(32, 2) == 2 and supervised_padding(8, 1) == 1


def test_supervised_without_padding_only_flips() -> None:
    x = _uint8_batch(8, 16, seed=5)
    aug = BatchSupervisedAugment(16, (0.0,) * 3, (1.0,) * 3, SupervisedAugSpec(padding=0, hflip_prob=1.0))
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), x.float().div(255).flip(-1))


@pytest.mark.parametrize("height,width", [(32, 32), (17, 23)])
def test_rotate_matches_torchvision(height: int, width: int) -> None:
    """Same pixels as torchvision.transforms.functional.rotate (tensor path, nearest, fill 0),
    image by image. Measured: 0 of 369,088 pixels differ over 256 images of 16-64 px at
    angles in [-180, 180], so the comparison is exact."""
    x = torch.rand(40, 3, height, width)
    angle = torch.empty(40).uniform_(-180, 180, generator=torch.Generator().manual_seed(0))
    angle[:9] = torch.tensor([0.0, 90.0, -90.0, 180.0, -180.0, 45.0, 15.0, -15.0, 0.5])
    out = rotate(x, angle)
    for k in range(len(x)):
        assert torch.equal(out[k], TF.rotate(x[k], float(angle[k]))), float(angle[k])
    assert torch.equal(out[0], x[0])  # 0 degrees is the identity


def test_rotation_angles_match_torchvision_distribution() -> None:
    n, degrees = 4000, 15.0
    aug = BatchSupervisedAugment(32, MEAN, STD, SupervisedAugSpec(rotation=degrees))
    angle = aug.sample_params(n, torch.Generator().manual_seed(0))["angle"].double()
    assert angle.min() >= -degrees and angle.max() <= degrees
    assert angle.min() < -0.99 * degrees and angle.max() > 0.99 * degrees
    assert abs(angle.mean().item()) < 4.5 * degrees / math.sqrt(3 * n)  # uniform: sd = degrees / sqrt(3)
    torch.manual_seed(3)
    ref = torch.tensor([T.RandomRotation.get_params([-degrees, degrees]) for _ in range(n)], dtype=torch.float64)
    assert _ks_statistic(angle, ref) < _ks_critical(n, n)
    # No rotation, no angle drawn: the random stream of the default spec is unchanged.
    assert "angle" not in BatchSupervisedAugment(32, MEAN, STD).sample_params(4)


def test_supervised_pipeline_matches_torchvision_ops() -> None:
    """Each output equals pad, crop, flip, then TF.rotate with that sample's parameters, in
    the order of RandomCrop(padding), RandomHorizontalFlip(), RandomRotation(degrees)."""
    size = 24
    x = _uint8_batch(12, size, seed=6)
    spec = SupervisedAugSpec(pad_mode="constant", rotation=15.0, hflip_prob=0.5)
    aug = BatchSupervisedAugment(size, MEAN, STD, spec)
    params = aug.sample_params(len(x), torch.Generator().manual_seed(0))
    out = aug.apply(x, params)
    pad = supervised_padding(size)
    norm = T.Normalize(MEAN, STD)
    for k in range(len(x)):
        img = TF.pad(x[k].float() / 255, [pad], fill=0, padding_mode="constant")
        img = TF.crop(img, int(params["offsets"][k, 0]), int(params["offsets"][k, 1]), size, size)
        img = TF.hflip(img) if params["flip"][k] else img
        img = TF.rotate(img, float(params["angle"][k]), interpolation=T.InterpolationMode.NEAREST, fill=0)
        assert torch.allclose(out[k], norm(img), atol=1e-6), k


def test_supervised_rotation_statistics_match_pil() -> None:
    """Zero padding and rotation 15: the fraction of black pixels (corners rotated in and
    padding) and the channel means agree between the batched and the PIL path."""
    images = _uint8_batch(48, 32, seed=7).clamp_(min=1)  # no black pixels of their own
    reps = 20  # 960 views per path
    spec = SupervisedAugSpec(pad_mode="constant", rotation=15.0)
    pil_t = supervised_train_transform(32, (0.0,) * 3, (1.0,) * 3, native_size=32, spec=spec)
    hwc = [_hwc(im) for im in images]
    torch.manual_seed(0)
    pil = torch.stack([pil_t(hwc[k % len(hwc)]) for k in range(len(hwc) * reps)])
    aug = BatchSupervisedAugment(32, (0.0,) * 3, (1.0,) * 3, spec)
    batched = aug(images.repeat(reps, 1, 1, 1), torch.Generator().manual_seed(0))
    n_views = len(pil)

    def black(out: torch.Tensor) -> torch.Tensor:  # fraction of black pixels per view
        return (out.amax(dim=1) == 0).float().mean(dim=(1, 2))

    black_p, black_b = black(pil), black(batched)
    assert black_b.mean() > 0.05  # padding and rotated-in corners are there
    se = torch.sqrt((black_p.var() + black_b.var()) / n_views)
    assert (black_p.mean() - black_b.mean()).abs() < 5 * se
    means_p, means_b = pil.mean(dim=(2, 3)), batched.mean(dim=(2, 3))
    se = torch.sqrt(means_p.var(0) / n_views + means_b.var(0) / n_views)
    assert ((means_p.mean(0) - means_b.mean(0)).abs() < 5 * se).all()
    # Without rotation the corners stay: fewer black pixels (padding only).
    plain = BatchSupervisedAugment(32, (0.0,) * 3, (1.0,) * 3, SupervisedAugSpec(pad_mode="constant"))
    assert black(plain(images.repeat(reps, 1, 1, 1), torch.Generator().manual_seed(0))).mean() < black_b.mean() - 0.01


def test_supervised_resizes_other_native_sizes() -> None:
    x = _uint8_batch(4, 64)
    out = BatchSupervisedAugment(32, MEAN, STD)(x, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)
    # The mean colour survives resize + crop + flip (reflect padding only mirrors pixels).
    expected = batch_eval_transform(x, 32, MEAN, STD).mean(dim=(2, 3))
    assert torch.allclose(out.mean(dim=(2, 3)), expected, atol=0.15)


def test_no_host_reads_inside_the_transforms() -> None:
    """Meta tensors have no data: any .item() or data-dependent shape would raise here."""
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8, device="meta")
    assert BatchSimCLRAugment(32, MEAN, STD, SimCLRViewSpec(blur_prob=SIMCLR_BLUR_P))(x).device.type == "meta"
    assert BatchSupervisedAugment(32, MEAN, STD)(x).shape == (8, 3, 32, 32)
    spec = SupervisedAugSpec(pad_mode="constant", rotation=15.0)
    assert BatchSupervisedAugment(32, MEAN, STD, spec)(x).device.type == "meta"
    assert batch_eval_transform(x, 64, MEAN, STD).shape == (8, 3, 64, 64)
