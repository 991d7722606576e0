"""A trained backbone in your own code: the checkpoint's ResNet-18 and its preprocessing.

    from models import load_backbone
    backbone, preprocess = load_backbone("checkpoints/simclr-cifar10-<time>/final.pth", device="cpu")
    h = backbone(preprocess(PIL.Image.open("cat.png")).unsqueeze(0))   # (1, 512) features

Works for every checkpoint train.py writes (SimCLR, supervised, ImageNet weights saved with
`--epochs 0 --pretrained true`). The features are the ones the linear protocol (test.py) trains
its head on: same stem, weights, image size, mean/std and resizing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageOps  # torchvision's image library
from torchvision import transforms as T
from torchvision.models import ResNet

from models.checkpoint import CheckpointError, load_state_strict, read_checkpoint
from models.resnet import STEMS, build_backbone


class ToUint8Image:
    """PIL image or uint8 tensor -> uint8 tensor (3, S, S), or (B, 3, H, W) for a batch, as test.py reads images.

    A PIL image is read the way test.py reads an image folder (utils/data/folder.py): EXIF orientation
    applied, RGB, shorter side to `image_size` (bilinear) and the central square. A uint8 tensor
    (3, H, W) or batch (B, 3, H, W) is passed on unchanged, as test.py passes dataset arrays
    (CIFAR, Tiny-ImageNet) on; the next steps resize it to image_size x image_size. One channel
    is repeated to three, as PIL's RGB conversion does.
    """

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.crop = T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                               T.CenterCrop(image_size), T.PILToTensor()])

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            return self.crop(ImageOps.exif_transpose(image).convert("RGB"))
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"expected a PIL image or a uint8 tensor (3, H, W), got {type(image).__name__}")
        if image.dtype != torch.uint8 or image.dim() not in (3, 4) or image.shape[-3] not in (1, 3):
            raise ValueError(f"expected a uint8 tensor (3, H, W) or (B, 3, H, W), got {image.dtype} "
                             f"{tuple(image.shape)}")
        if image.shape[-3] == 1:
            image = image.expand(*image.shape[:-3], 3, *image.shape[-2:])
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size})"


def eval_preprocess(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """test.py's evaluation preprocessing for one image (or a uint8 batch): -> float32 (3, S, S), normalised.

    Equal to what test.py's feature pass feeds the backbone (utils.augment.batch_eval_transform
    after utils.data.folder's decoding): uint8 -> [0, 1], resize to S x S (bilinear, antialiased; a
    no-op for images already at S), (x - mean) / std per channel.
    """
    return T.Compose([
        ToUint8Image(image_size),
        T.ConvertImageDtype(torch.float32),
        T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.Normalize([float(m) for m in mean], [float(s) for s in std]),
    ])


def load_backbone(checkpoint: str | Path | dict, device: str | torch.device = "cpu") -> tuple[ResNet, T.Compose]:
    """(backbone, preprocess) from a checkpoint written by train.py (a path, or the dict already read).

    backbone: torchvision ResNet-18 with the checkpoint's stem and weights and `fc` = Identity,
    x (B, 3, S, S) -> h (B, 512), in eval mode and frozen (requires_grad False), as in the linear
    protocol; `backbone.train().requires_grad_(True)` to fine-tune it. preprocess: see
    eval_preprocess, at the checkpoint's image size and mean/std. A file is read with
    `torch.load(weights_only=True)` only; every problem is one CheckpointError (a ValueError) line.
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    where = "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    try:
        stem, data, state = ckpt["model"]["stem"], ckpt["data"], ckpt["backbone"]
        image_size, mean, std = int(data["image_size"]), list(data["mean"]), list(data["std"])
        if not isinstance(state, dict):
            raise TypeError("backbone is not a state dict")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} lacks what the backbone needs ({type(exc).__name__}: {exc})") from None
    if stem not in STEMS:
        raise CheckpointError(f"{where} has an unknown stem {stem!r} (expected one of {STEMS})")
    backbone = build_backbone(stem)
    try:
        load_state_strict(backbone, state, "backbone")
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    backbone = backbone.to(device).eval().requires_grad_(False)
    return backbone, eval_preprocess(image_size, mean, std)
