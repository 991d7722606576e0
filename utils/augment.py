"""Image transforms: SimCLR views, supervised training crops and the evaluation transform.

The per-image (PIL) transforms below are the reference pipeline that runs in DataLoader
workers. Every transform takes an HWC uint8 numpy array or a PIL image and returns a float
tensor (3, S, S) normalised with the given mean/std.

    from utils.augment import SimCLRViewSpec, simclr_view_transform
    t = simclr_view_transform(image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    t = simclr_view_transform(32, CIFAR10_MEAN, CIFAR10_STD, SimCLRViewSpec(crop_min_scale=0.2, gray_prob=0.1))

The augmentation parameters live in two frozen dataclasses, SimCLRViewSpec and
SupervisedAugSpec, whose defaults are this project's historical values; both paths (PIL and
batched) read every field of the spec they are given.

The batched transforms at the end of the file (BatchSimCLRAugment, BatchSupervisedAugment,
batch_eval_transform) do the same on a whole uint8 batch (B, 3, H, W) with pure torch ops on
whatever device the batch lives on, drawing per-sample parameters from the same distributions:

    aug = BatchSimCLRAugment(image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    x1, x2 = aug(x_uint8, generator=g), aug(x_uint8, generator=g)   # (B, 3, 32, 32) float32
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from utils.runtime import full_precision

# SimCLR (Chen et al. 2020, Appendix A): crop scale, colour jitter strength s=0.5 for CIFAR
# is common, but the paper's default s=1.0 gives 0.8/0.8/0.8/0.2; this project follows the
# issue's 0.4/0.4/0.4/0.1 (s=0.5), applied with probability 0.8, grayscale with p=0.2.
# These are the defaults of SimCLRViewSpec / SupervisedAugSpec below.
SIMCLR_CROP_SCALE = (0.08, 1.0)
SIMCLR_CROP_RATIO = (3 / 4, 4 / 3)
SIMCLR_HFLIP_P = 0.5
SIMCLR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
SIMCLR_JITTER_P = 0.8
SIMCLR_GRAYSCALE_P = 0.2
SIMCLR_BLUR_P = 0.5  # what train.py's --blur switches on
# torchvision.transforms.GaussianBlur(sigma=(0.1, 2.0)) as used by SimCLR (Appendix A).
SIMCLR_BLUR_SIGMA = (0.1, 2.0)
SUPERVISED_CROP_PADDING = 4  # pixels at 32 px; scaled with the image size
SUPERVISED_HFLIP_P = 0.5
SUPERVISED_PAD_MODES = ("reflect", "constant")  # constant = zeros, torchvision RandomCrop's default


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _float_pair(name: str, value) -> tuple[float, float]:
    try:
        pair = tuple(float(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
    return pair


@dataclasses.dataclass(frozen=True)
class SimCLRViewSpec:
    """Parameters of one SimCLR view (both the PIL and the batched path read every field).

    crop_min_scale: RandomResizedCrop's scale is (crop_min_scale, 1), in (0, 1];
    crop_ratio: its aspect-ratio range (low, high), 0 < low <= high;
    hflip_prob: probability of a horizontal flip;
    jitter: ColorJitter strengths (brightness, contrast, saturation, hue): factors are drawn
        uniformly from [max(0, 1 - s), 1 + s] for the first three and [-hue, hue] for the hue,
        with brightness, contrast, saturation >= 0 and hue in [0, 0.5];
    jitter_prob: probability that the jitter is applied (RandomApply);
    gray_prob: probability of converting to grayscale (RandomGrayscale);
    blur_prob: probability of a Gaussian blur (0 = no blur op at all; train.py's --blur = 0.5);
    blur_sigma: the blur's sigma range (low, high), 0 < low <= high; its kernel is 10 % of the
        image side (blur_kernel_size).
    """

    crop_min_scale: float = SIMCLR_CROP_SCALE[0]
    crop_ratio: tuple[float, float] = SIMCLR_CROP_RATIO
    hflip_prob: float = SIMCLR_HFLIP_P
    jitter: tuple[float, float, float, float] = SIMCLR_JITTER
    jitter_prob: float = SIMCLR_JITTER_P
    gray_prob: float = SIMCLR_GRAYSCALE_P
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = SIMCLR_BLUR_SIGMA

    def __post_init__(self) -> None:
        # Sequences are stored as tuples of floats, so that specs compare and hash by value.
        ratio = _float_pair("crop_ratio", self.crop_ratio)
        sigma = _float_pair("blur_sigma", self.blur_sigma)
        try:
            jitter = tuple(float(v) for v in self.jitter)
        except TypeError:
            jitter = ()
        if len(jitter) != 4:
            raise ValueError(f"jitter must be 4 strengths (brightness, contrast, saturation, hue), got {self.jitter!r}")
        object.__setattr__(self, "crop_ratio", ratio)
        object.__setattr__(self, "blur_sigma", sigma)
        object.__setattr__(self, "jitter", jitter)
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {ratio}")
        if min(jitter[:3]) < 0.0:
            raise ValueError(f"jitter brightness, contrast and saturation must be >= 0, got {jitter[:3]}")
        if not 0.0 <= jitter[3] <= 0.5:
            raise ValueError(f"jitter hue must be in [0, 0.5], got {jitter[3]}")
        for name in ("hflip_prob", "jitter_prob", "gray_prob", "blur_prob"):
            _check_prob(name, getattr(self, name))
        if not 0.0 < sigma[0] <= sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {sigma}")

    @property
    def crop_scale(self) -> tuple[float, float]:
        """RandomResizedCrop's scale range (crop_min_scale, 1)."""
        return (float(self.crop_min_scale), 1.0)


@dataclasses.dataclass(frozen=True)
class SupervisedAugSpec:
    """Parameters of the supervised training augmentation (both paths read every field).

    Order: resize (if the native size differs), padded random crop, flip, rotation, normalise
    (the order of RandomCrop(32, padding=4), RandomHorizontalFlip(), RandomRotation(15)).
    padding: pixels on each side at 32 px, scaled with the image size (supervised_padding);
        0 = plain crop, i.e. no shift;
    pad_mode: "reflect" or "constant" (zeros, before normalisation: torchvision RandomCrop's default);
    hflip_prob: probability of a horizontal flip;
    rotation: degrees; the angle is uniform in [-rotation, rotation] (torchvision
        RandomRotation(rotation)), nearest interpolation about the image centre, corners
        filled with 0, same size; 0 = no rotation op at all. In [0, 180].
    """

    padding: int = SUPERVISED_CROP_PADDING
    pad_mode: str = "reflect"
    hflip_prob: float = SUPERVISED_HFLIP_P
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or int(self.padding) != self.padding or self.padding < 0:
            raise ValueError(f"padding must be a whole number of pixels >= 0, got {self.padding}")
        object.__setattr__(self, "padding", int(self.padding))
        if self.pad_mode not in SUPERVISED_PAD_MODES:
            raise ValueError(f"pad_mode must be one of {SUPERVISED_PAD_MODES}, got {self.pad_mode!r}")
        _check_prob("hflip_prob", self.hflip_prob)
        if not 0.0 <= self.rotation <= 180.0:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")


def _to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToTensor(), T.Normalize(mean, std)]


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's Gaussian blur kernel: 10 % of the image side, made odd."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 == 1 else k + 1


def simclr_view_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], spec: SimCLRViewSpec = SimCLRViewSpec()
) -> T.Compose:
    """One random SimCLR view: crop, flip, jitter, grayscale, [blur], normalise, as `spec` says.

    Blur is off by default (blur_prob 0): SimCLR drops it for 32 px CIFAR images.
    """
    ops = [
        _to_pil,
        T.RandomResizedCrop(image_size, scale=spec.crop_scale, ratio=spec.crop_ratio, antialias=True),
        T.RandomHorizontalFlip(p=spec.hflip_prob),
        T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_prob),
        T.RandomGrayscale(p=spec.gray_prob),
    ]
    if spec.blur_prob > 0:
        blur = T.GaussianBlur(blur_kernel_size(image_size), sigma=spec.blur_sigma)
        ops.append(T.RandomApply([blur], p=spec.blur_prob))
    return T.Compose(ops + _normalise(mean, std))


def supervised_train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    native_size: int | None = None,
    spec: SupervisedAugSpec = SupervisedAugSpec(),
) -> T.Compose:
    """Supervised augmentation: resize to `image_size`, padded random crop, flip, [rotation], normalise."""
    padding = supervised_padding(image_size, spec.padding)
    ops: list = [_to_pil]
    if native_size is not None and native_size != image_size:
        ops.append(T.Resize(image_size, antialias=True))
    ops += [
        T.RandomCrop(image_size, padding=padding, padding_mode=spec.pad_mode),
        T.RandomHorizontalFlip(p=spec.hflip_prob),
    ]
    if spec.rotation > 0:
        ops.append(T.RandomRotation(spec.rotation, interpolation=T.InterpolationMode.NEAREST, fill=0))
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


# ---------------------------------------------------------------------------------------------
# Batched augmentation on tensors
#
# The same augmentations as above on a whole batch at once, with pure torch ops, so that they
# run where the batch lives (GPU or CPU) without DataLoader workers. Every image in the batch
# draws its own parameters (crop box, flip, jitter factors and order, grayscale, blur sigma)
# from the distributions torchvision's transforms use; all draws come from `generator` when one
# is given, so a batch's views are a pure function of its seed. Nothing here reads a value back
# to the host (no .item(), no boolean indexing), so the ops queue up asynchronously on CUDA.
#
# Colour ops work on float batches in [0, 1] and follow torchvision's tensor semantics
# (transforms.functional.adjust_*), which the tests check image by image. The PIL path differs
# only in rounding to uint8 between ops.
# ---------------------------------------------------------------------------------------------

# ITU-R 601-2 luma transform, the weights of torchvision's rgb_to_grayscale (and PIL's "L").
GRAYSCALE_WEIGHTS = (0.2989, 0.587, 0.114)
# torchvision.transforms.RandomResizedCrop.get_params draws up to this many boxes before
# falling back to a central crop.
CROP_ATTEMPTS = 10
# Order of the colour-jitter ops in the per-sample permutation (torchvision: fn_idx 0..3).
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def _per_sample(factor: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A per-sample factor (B,) (or a scalar) shaped (B, 1, 1, 1) to broadcast over x (B, C, H, W)."""
    if not isinstance(factor, torch.Tensor):
        return torch.full((x.shape[0], 1, 1, 1), float(factor), dtype=x.dtype, device=x.device)
    return factor.to(dtype=x.dtype).reshape(-1, 1, 1, 1)


def _blend(x: torch.Tensor, ref: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend for float images: clamp(factor * x + (1 - factor) * ref, 0, 1)."""
    return (factor * x + (1.0 - factor) * ref).clamp_(0.0, 1.0)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of a float batch: x (B, 3, H, W) -> (B, 1, H, W), ITU-R 601-2 weights."""
    r, g, b = x.unbind(dim=1)
    wr, wg, wb = GRAYSCALE_WEIGHTS
    gray = r * wr  # one new plane, then accumulated in place (fewer temporaries)
    return gray.add_(g, alpha=wg).add_(b, alpha=wb).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Multiply by a per-sample factor (B,) and clamp: x (B, 3, H, W) float in [0, 1] -> same."""
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend each image with the mean of its grayscale version: x (B, 3, H, W) -> same."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend each image with its grayscale version: x (B, 3, H, W) -> same."""
    return _blend(x, rgb_to_grayscale(x), _per_sample(factor, x))


def adjust_hue(x: torch.Tensor, hue_factor: torch.Tensor | float) -> torch.Tensor:
    """Shift the HSV hue of each image by hue_factor (B,) in [-0.5, 0.5] turns: (B, 3, H, W) -> same.

    H is torchvision's _rgb2hsv hue (max channel r > g > b on ties) in sixths of a turn; the
    way back uses the closed form channel_n = V - C * clamp(min(k, 4 - k), 0, 1),
    k = (n + 6 H) mod 6, n = 5, 3, 1 for R, G, B, with V = max and C = max - min (= V * S),
    which equals torchvision's sector-by-sector _hsv2rgb. V and C do not change.
    Written with float arithmetic only (boolean masks and torch.where are several times
    slower than float ops on CPU) and mostly in place (each new CPU temporary costs page faults).
    """
    # amax / amin, not aminmax: the latter is 10x slower over the channel dim on CPU.
    maxc = x.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    chroma = x.amin(dim=1, keepdim=True).neg_().add_(maxc)
    # 1.0 on the channel that holds the max, else 0.0 (sign is exact); ties go to r, then g.
    at_max = torch.sub(x, maxc).sign_().add_(1.0)
    is_r, is_g, is_b = at_max.unbind(dim=1)
    is_g.addcmul_(is_g, is_r, value=-1.0)
    is_b.fill_(1.0).sub_(is_r).sub_(is_g)
    # C * hue in sixths, in (-C, 5C]: g - b if R is max, b - r + 2C if G, r - g + 4C if B.
    r, g, b = x.unbind(dim=1)
    c = chroma.squeeze(1)
    num = torch.empty_like(x)
    torch.sub(g, b, out=num[:, 0])
    torch.sub(b, r, out=num[:, 1]).add_(c, alpha=2.0)
    torch.sub(r, g, out=num[:, 2]).add_(c, alpha=4.0)
    h6 = num.mul_(at_max).sum(dim=1, keepdim=True)
    # Grey pixels (C = 0) have h6 = 0; any positive divisor keeps them grey and NaN-free.
    h6.div_(chroma.clamp_min(torch.finfo(x.dtype).tiny)).add_(_per_sample(hue_factor, x), alpha=6.0)
    # n = 5, 3, 1 made on the device (a torch.tensor([...]) would be a host -> device copy).
    sectors = torch.arange(5, 0, -2, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.add(h6, sectors, out=at_max)  # (B, 3, H, W), reusing at_max's memory
    tmp = torch.mul(k, 1.0 / 6.0, out=num).floor_().mul_(6.0)
    k.sub_(tmp)  # k mod 6 (torch.remainder is much slower on CPU)
    torch.mul(k, -1.0, out=tmp).add_(4.0)  # 4 - k
    ramp = torch.minimum(k, tmp, out=k).clamp_(0.0, 1.0)
    return ramp.mul_(chroma).neg_().add_(maxc)  # V - C * ramp


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image with its own Gaussian: x (B, C, H, W) float, sigma (B,) -> (B, C, H, W).

    Same kernel and reflect padding as torchvision's gaussian_blur, applied separably (rows,
    then columns) as one grouped convolution over the batch.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    bsz, channels, height, width = x.shape
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, dtype=x.dtype, device=x.device)
    pdf = torch.exp(-0.5 * (pos / sigma.to(x.dtype).reshape(-1, 1)) ** 2)  # (B, k)
    kernel = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, bsz * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(-1, 1, 1, kernel_size), groups=bsz * channels)  # along W
    y = F.conv2d(y, kernel.view(-1, 1, kernel_size, 1), groups=bsz * channels)  # along H
    return y.view(bsz, channels, height, width)


def _uniform(shape: tuple[int, ...], low: float, high: float, generator, device) -> torch.Tensor:
    """U[low, high) draws of the given shape from `generator` on `device`."""
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def sample_resized_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float] = SIMCLR_CROP_SCALE,
    ratio: tuple[float, float] = SIMCLR_CROP_RATIO,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes: -> (B, 4) int64 rows (top i, left j, h, w).

    Same distribution as torchvision's RandomResizedCrop.get_params, vectorised: each sample
    draws CROP_ATTEMPTS candidate (area, log aspect ratio) pairs and keeps the first that fits,
    else the same central-crop fallback; the offset is uniform over the valid positions.
    """
    area = float(height * width)
    shape = (batch, CROP_ATTEMPTS)
    target_area = area * _uniform(shape, scale[0], scale[1], generator, device)
    aspect = torch.exp(_uniform(shape, math.log(ratio[0]), math.log(ratio[1]), generator, device))
    # torch.round rounds half to even, like Python's round() in get_params.
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting candidate
    found = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Central-crop fallback, a function of the image shape only (torchvision's rule).
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    w = torch.where(found, w, fb_w)
    h = torch.where(found, h, fb_h)
    u = torch.rand((batch, 2), generator=generator, device=device)
    # floor(U * n) is uniform on {0, ..., n-1}, like torch.randint(0, n) in get_params
    # (the clamp only guards against float rounding).
    i = torch.minimum((u[:, 0] * (height - h + 1)).long(), height - h)
    j = torch.minimum((u[:, 1] * (width - w + 1)).long(), width - w)
    i = torch.where(found, i, (height - fb_h) // 2)
    j = torch.where(found, j, (width - fb_w) // 2)
    return torch.stack([i, j, h, w], dim=1)


def _resample_weights(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample 1-D resampling matrices: (B, out_size, in_size), rows sum to 1.

    Output pixel k of sample b reads the window [start, start + length) of the input with
    the triangle (bilinear) filter, widened by the downscale factor when the window is larger
    than the output: PIL's and torch's antialiased bilinear resize of the cropped image.
    Pixels outside the window get weight 0 (the crop), and the weights are renormalised,
    which at the edges is the same as clamping. flip (B,) bool reverses the output order.
    """
    scale = (length / out_size).unsqueeze(1)  # (B, 1): input pixels per output pixel
    support = scale.clamp(min=1.0).unsqueeze(2)  # (B, 1, 1)
    k = torch.arange(out_size, dtype=start.dtype, device=start.device).expand(start.shape[0], out_size)
    if flip is not None:
        k = torch.where(flip.unsqueeze(1), out_size - 1 - k, k)
    centre = start.unsqueeze(1) + (k + 0.5) * scale  # (B, out) in pixel-edge coordinates
    pix = torch.arange(in_size, dtype=start.dtype, device=start.device) + 0.5  # pixel centres
    weights = torch.sub(pix, centre.unsqueeze(2))  # (B, out, in)
    weights.abs_().div_(support).neg_().add_(1.0).clamp_(min=0.0)
    inside = (pix >= start.unsqueeze(1)) & (pix < (start + length).unsqueeze(1))  # (B, in)
    weights.mul_(inside.unsqueeze(1))
    # The pixel under each centre is inside the window with weight >= 0.5: no division by 0.
    return weights.div_(weights.sum(dim=2, keepdim=True))


def resized_crop(
    x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop box (i, j, h, w) of each image, resize it to size x size (bilinear), optionally flip.

    x: (B, C, H, W) float, boxes: (B, 4) (top, left, height, width), flip: (B,) bool or None
    -> (B, C, size, size). The resize is separable, so it is two batched matrix products with
    per-sample resampling matrices (_resample_weights): the same result as
    torchvision.transforms.functional.resized_crop(..., antialias=True) per image, for the
    cost of a few small matmuls, with the horizontal flip folded into the column matrix.
    """
    bsz, channels, height, width = x.shape
    i, j, h, w = boxes.to(x.dtype).unbind(dim=1)
    rows = _resample_weights(i, h, height, size)  # (B, S, H)
    cols = _resample_weights(j, w, width, size, flip).transpose(1, 2)  # (B, W, S)
    y = torch.bmm(x.reshape(bsz, channels * height, width), cols).view(bsz, channels, height, size)
    return torch.matmul(rows.unsqueeze(1), y)  # (B, 1, S, H) @ (B, C, H, S) -> (B, C, S, S)


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor | None,
    order: torch.Tensor,
    apply: torch.Tensor | None = None,
) -> torch.Tensor:
    """torchvision's ColorJitter with explicit per-sample parameters, on a float batch.

    x: (B, 3, H, W) in [0, 1]; brightness, contrast, saturation, hue: (B,) factors;
    hue may be None: no hue op (torchvision's ColorJitter(hue=0) skips it too);
    order: (B, 4) a permutation of 0..3 per sample, the order the ops run in (0 brightness,
    1 contrast, 2 saturation, 3 hue: torchvision's fn_idx); apply: (B,) bool, False leaves the
    image unchanged. Returns a new (B, 3, H, W) tensor.

    Brightness, contrast and saturation are blends (with black, the grey mean, the grey image),
    so one blend per step covers all three with a per-sample reference and factor (factor 1 is
    the identity). The hue shift is the expensive op, so it runs once, in the middle of the
    schedule blend, blend, blend, HUE, blend, blend, blend: each image puts the ops it runs
    before its hue shift into the first three steps and the rest into the last three.
    """
    keep = torch.ones_like(brightness, dtype=torch.bool) if apply is None else apply.bool()
    order = order.long()
    factors = torch.stack([brightness, contrast, saturation], dim=1).to(x.dtype)  # (B, 3)
    hue_pos = (order == _HUE).int().argmax(dim=1, keepdim=True)  # (B, 1) where the hue op sits
    steps = torch.arange(3, device=x.device).unsqueeze(0)  # (1, 3)
    # Step s before the hue runs order[:, s] if s < hue_pos; step s after it runs
    # order[:, hue_pos + 1 + s] if that exists; otherwise the step is the identity (-1).
    before = torch.where(steps < hue_pos, order[:, :3], -1)
    after_idx = hue_pos + 1 + steps
    after = torch.where(after_idx < 4, order.gather(1, after_idx.clamp(max=3)), -1)
    before = torch.where(keep.unsqueeze(1), before, -1)
    after = torch.where(keep.unsqueeze(1), after, -1)
    x = x.clone()  # the steps below work in place

    def blend_step(op: torch.Tensor) -> None:
        factor = factors.gather(1, op.clamp(min=0).unsqueeze(1)).squeeze(1)
        factor = torch.where(op < 0, 1.0, factor)
        # Reference image: grey mean (contrast), grey image (saturation), black (brightness,
        # and the identity step, whose factor 1 ignores it); mixed with float weights.
        gray = rgb_to_grayscale(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True) * _per_sample(op == _CONTRAST, gray)
        ref = gray.mul_(_per_sample(op == _SATURATION, gray)).add_(mean)
        # torchvision's _blend f * x + (1 - f) * ref, as x + (1 - f) (ref - x): exactly x for f = 1.
        x.lerp_(ref, _per_sample(1.0 - factor, x)).clamp_(0.0, 1.0)

    for s in range(3):
        blend_step(before[:, s])
    if hue is not None:
        # lerp with weight 0 / 1 is exactly x / the shifted image: a where() without bool planes.
        x.lerp_(adjust_hue(x, hue), _per_sample(keep, x))
    for s in range(3):
        blend_step(after[:, s])
    return x


def _normalise_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, in place: x (B, 3, H, W) float -> x."""
    mean_t, std_t = _channel_stats(tuple(float(m) for m in mean), tuple(float(s) for s in std), x.device)
    return x.sub_(mean_t).div_(std_t)


@functools.lru_cache(maxsize=32)
def _channel_stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: building them each call would copy host -> device every batch.
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
        torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1),
    )


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in 0..255 (or float in [0, 1]) -> a new float32 tensor in [0, 1]."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.is_floating_point():
        return x.to(torch.float32, copy=True)  # a copy: later steps work in place
    raise ValueError(f"expected uint8 or float images, got {x.dtype}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear antialiased resize to size x size (torchvision's tensor Resize) if needed."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def batch_eval_transform(
    x: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, S, S): resize (bilinear, antialias) if H != S, normalise."""
    with full_precision(x):
        return _normalise_batch(_resize(_to_float(x), image_size), mean, std)


# On CPU, batched ops are applied to chunks of about this many pixels per image plane
# (64 images at 32 x 32): the fastest of 16-256 images per chunk measured on 2 cores.
CPU_CHUNK_PIXELS = 64 * 32 * 32


def _cpu_chunk(x: torch.Tensor) -> int:
    """Images per chunk for CPU batches of x (B, C, H, W)."""
    return max(1, CPU_CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))


class BatchSimCLRAugment:
    """One random SimCLR view per image of a batch, on the batch's device.

    Crop (scale crop_min_scale-1, ratio crop_ratio), flip (hflip_prob), colour jitter
    (jitter strengths, jitter_prob, random op order), grayscale (gray_prob), blur (blur_prob,
    sigma blur_sigma; no op at all when 0), normalise: the PIL pipeline of
    simclr_view_transform with the same `spec`, with per-sample parameters. Call it twice (or on the batch
    concatenated with itself) for the two views x1, x2. `sample_params` and `apply` split
    the call into drawing the parameters and using them, so that tests can inspect them.
    """

    def __init__(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], spec: SimCLRViewSpec = SimCLRViewSpec()
    ):
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.spec = spec
        self.kernel_size = blur_kernel_size(self.image_size)

    def sample_params(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, torch.Tensor]:
        """Per-sample parameters of one view, all on `device`: a dict of (B,) tensors except
        boxes (B, 4) int64 (top, left, h, w) and order (B, 4) int64 (jitter op order).
        "blur" and "sigma" only when spec.blur_prob > 0. The other draws are made whatever
        the spec's values (a probability of 0 draws and never fires)."""
        bsz, dev, spec = batch, device, self.spec
        boxes = sample_resized_crop_boxes(
            bsz, height, width, spec.crop_scale, spec.crop_ratio, generator=generator, device=dev
        )
        # U[0, 1) < p: never for p = 0, always for p = 1.
        flip = torch.rand(bsz, generator=generator, device=dev) < spec.hflip_prob
        b, c, s, h = spec.jitter
        params = {
            "boxes": boxes,
            "flip": flip,
            "jitter": torch.rand(bsz, generator=generator, device=dev) < spec.jitter_prob,
            "order": torch.rand((bsz, 4), generator=generator, device=dev).argsort(dim=1),
            "brightness": _uniform((bsz,), max(0.0, 1 - b), 1 + b, generator, dev),
            "contrast": _uniform((bsz,), max(0.0, 1 - c), 1 + c, generator, dev),
            "saturation": _uniform((bsz,), max(0.0, 1 - s), 1 + s, generator, dev),
            "hue": _uniform((bsz,), -h, h, generator, dev),
            "gray": torch.rand(bsz, generator=generator, device=dev) < spec.gray_prob,
        }
        if spec.blur_prob > 0:
            params["blur"] = torch.rand(bsz, generator=generator, device=dev) < spec.blur_prob
            params["sigma"] = _uniform((bsz,), *spec.blur_sigma, generator, dev)
        return params

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: uint8 (B, 3, H, W), params from sample_params -> float32 (B, 3, S, S) normalised.

        On CPU the batch is processed in chunks of a few tens of images (a loop over chunks,
        not samples): the temporaries then stay in cache and in the heap, instead of being
        fresh mmap'ed pages that fault in on every op (measured 1.4x faster on 2 cores).
        Every op is per image, so the result does not depend on the chunking.
        """
        chunk = _cpu_chunk(x) if x.device.type == "cpu" else x.shape[0]
        with full_precision(x):
            if chunk >= x.shape[0]:
                return self._apply(x, params)
            out = torch.empty((x.shape[0], 3, self.image_size, self.image_size), dtype=torch.float32)
            for start in range(0, x.shape[0], chunk):
                part = slice(start, start + chunk)
                out[part] = self._apply(x[part], {k: v[part] for k, v in params.items()})
            return out

    def _apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        spec = self.spec
        x = resized_crop(_to_float(x), params["boxes"], self.image_size, params["flip"])
        # Ops that can never fire are skipped (the result would be x, bit for bit, only slower).
        if spec.jitter_prob > 0 and max(spec.jitter) > 0:
            x = color_jitter(
                x,
                brightness=params["brightness"],
                contrast=params["contrast"],
                saturation=params["saturation"],
                hue=params["hue"] if spec.jitter[3] > 0 else None,
                order=params["order"],
                apply=params["jitter"],
            )
        if spec.gray_prob > 0:
            # lerp with a per-sample weight of 0 or 1 is an exact per-sample select.
            x.lerp_(rgb_to_grayscale(x).expand_as(x), _per_sample(params["gray"], x))
        if spec.blur_prob > 0:
            x.lerp_(gaussian_blur(x, params["sigma"], self.kernel_size), _per_sample(params["blur"], x))
        return _normalise_batch(x, self.mean, self.std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: uint8 (B, 3, H, W) on any device -> float32 (B, 3, S, S) normalised."""
        params = self.sample_params(x.shape[0], x.shape[-2], x.shape[-1], generator, x.device)
        return self.apply(x, params)


def supervised_padding(image_size: int, padding: int = SUPERVISED_CROP_PADDING) -> int:
    """Padding of the supervised random crop: `padding` px at 32 px, scaled with the size
    (at least 1 px unless `padding` is 0)."""
    return 0 if padding == 0 else max(1, round(padding * image_size / 32))


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its own angle (degrees, counter-clockwise) about its centre.

    x: (B, C, H, W) float, angle: (B,) -> (B, C, H, W): nearest interpolation, pixels from
    outside the image are 0, same size. The sampling grid is torchvision's (_gen_affine_grid
    for the inverse rotation matrix of transforms.functional.rotate, matrix entries rounded
    to float32 from float64 cos / sin as there), batched: one bmm and one grid_sample for
    the whole batch, nothing read back to the host.
    """
    bsz, _, height, width = x.shape
    dev = x.device
    # math.radians(a) = a * (pi / 180) in float64, then cos / sin, then float32 (torchvision's rounding).
    rad = angle.to(torch.float64) * (math.pi / 180.0)
    cos, sin = torch.cos(rad).to(x.dtype), torch.sin(rad).to(x.dtype)
    # torchvision's theta = [[cos, -sin, 0], [sin, cos, 0]]; the grid is base @ (theta^T / (w/2, h/2)).
    half_w, half_h = 0.5 * width, 0.5 * height
    theta_t = torch.zeros((bsz, 3, 2), dtype=x.dtype, device=dev)
    theta_t[:, 0, 0] = cos / half_w
    theta_t[:, 0, 1] = sin / half_h
    theta_t[:, 1, 0] = sin.neg() / half_w
    theta_t[:, 1, 1] = cos / half_h
    base = _base_grid(height, width, x.dtype, dev)  # (1, H*W, 3): pixel centres from the image centre, 1
    grid = torch.bmm(base.expand(bsz, -1, -1), theta_t).view(bsz, height, width, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _base_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, H*W, 3) rows (x, y, 1), x and y the pixel centres measured from the image centre."""
    base = torch.empty((1, height, width, 3), dtype=dtype, device=device)
    base[..., 0].copy_(torch.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5, steps=height, device=device)[:, None])
    base[..., 2].fill_(1.0)
    return base.view(1, height * width, 3)


class BatchSupervisedAugment:
    """supervised_train_transform on a batch: resize if needed, padded random crop, flip,
    [rotation], normalise, with the parameters of `spec` drawn per sample.
    `sample_params` and `apply` split the call into drawing the parameters and using them."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        spec: SupervisedAugSpec = SupervisedAugSpec(),
    ):
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.spec = spec
        self.padding = supervised_padding(self.image_size, spec.padding)

    def sample_params(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Per-sample parameters on `device`: offsets (B, 2) int64 (top, left) in the padded
        image, flip (B,) bool, and angle (B,) float32 degrees when spec.rotation > 0."""
        pad, dev = self.padding, device
        # Offsets uniform on {0, ..., 2 pad}, like RandomCrop's randint(0, h - th + 1).
        offsets = (torch.rand((batch, 2), generator=generator, device=dev) * (2 * pad + 1)).long().clamp_(max=2 * pad)
        # U[0, 1) < p: never for p = 0, always for p = 1.
        params = {"offsets": offsets, "flip": torch.rand(batch, generator=generator, device=dev) < self.spec.hflip_prob}
        if self.spec.rotation > 0:
            # RandomRotation.get_params: uniform_(-degrees, degrees).
            params["angle"] = _uniform((batch,), -self.spec.rotation, self.spec.rotation, generator, dev)
        return params

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: uint8 (B, 3, H, W), params from sample_params -> float32 (B, 3, S, S) normalised.
        Without rotation the result is laid out channels_last in memory (what the gather
        produces, and what a channels_last model wants); rotation returns it contiguous."""
        size, pad = self.image_size, self.padding
        x = _resize(_to_float(x), size)
        dev, bsz = x.device, x.shape[0]
        padded = F.pad(x, (pad, pad, pad, pad), mode=self.spec.pad_mode) if pad else x
        offsets, flip = params["offsets"], params["flip"]
        steps = torch.arange(size, device=dev)
        rows = offsets[:, :1] + steps  # (B, S)
        cols = offsets[:, 1:] + torch.where(flip[:, None], size - 1 - steps, steps)  # flip by reading backwards
        batch = torch.arange(bsz, device=dev)
        # One gather does the crop and the flip; advanced indices first -> (B, S, S, C).
        out = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if "angle" in params:
            out = rotate(out, params["angle"])
        return _normalise_batch(out, self.mean, self.std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: uint8 (B, 3, H, W) on any device -> float32 (B, 3, S, S) normalised."""
        return self.apply(x, self.sample_params(x.shape[0], generator, x.device))
