"""ResNet-18 backbones from torchvision, with the CIFAR stem for small images.

    from models import build_backbone
    backbone = build_backbone(stem="cifar")   # (B, 3, 32, 32) -> h: (B, 512)
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from utils.errors import DataMissingError, UserError

FEATURE_DIM = 512  # width of ResNet-18's pooled features h
STEMS = ("cifar", "imagenet")
IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1


def _sha256_prefix(url: str) -> str | None:
    """torchvision names weight files <name>-<first hex digits of their sha256>.pth."""
    match = re.search(r"-([0-9a-f]{8,})\.pth$", url)
    return match.group(1) if match else None


def imagenet_weights_path(url: str = IMAGENET_WEIGHTS.url) -> Path:
    """Where torchvision caches the ImageNet ResNet-18 weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_imagenet_state_dict(url: str = IMAGENET_WEIGHTS.url) -> dict:
    """torchvision's ImageNet ResNet-18 weights from the torch cache, fetched with our downloader if absent.

    The downloader resumes, times out instead of hanging and fails fast offline; the file name
    carries the first 8 hex digits of its sha256 (torchvision's convention), checked here.
    """
    path = imagenet_weights_path(url)
    if not path.is_file():
        from utils.download import download_file

        try:
            download_file(url, path)
        except UserError as exc:  # no network, proxy, partial download ...
            raise DataMissingError(
                f"ImageNet ResNet-18 weights not found at {path} and could not be downloaded "
                f"({getattr(exc, 'reason', exc)}); download {url} and place it at that path"
            ) from exc
        prefix = _sha256_prefix(url)
        if prefix and not hashlib.sha256(path.read_bytes()).hexdigest().startswith(prefix):
            path.unlink()
            raise DataMissingError(f"downloaded {url} does not match the sha256 prefix {prefix} in its name; "
                                   "removed it, try again")
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_classifier(in_dim: int = FEATURE_DIM) -> nn.Linear:
    """torchvision's ImageNet ResNet-18 classifier (512 -> 1000), weights loaded."""
    fc = nn.Linear(in_dim, 1000)
    state = _load_imagenet_state_dict()
    fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    return fc


def build_backbone(stem: str = "cifar", pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-18 without its classifier: x (B, 3, H, W) -> h (B, 512).

    stem="cifar": 3x3 stride-1 first convolution and no max-pool, for 32-64 px images
    (the usual SimCLR CIFAR variant). stem="imagenet": torchvision's 7x7 stride-2 conv and
    max-pool, required with `pretrained=True` (torchvision's ImageNet weights).
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if pretrained and stem != "imagenet":
        raise ValueError("ImageNet weights need the ImageNet stem")
    net = resnet18(weights=None)
    if pretrained:
        net.load_state_dict(_load_imagenet_state_dict())
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.feature_dim = FEATURE_DIM
    return net
