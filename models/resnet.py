"""ResNet-18 backbones from torchvision, with the CIFAR stem for small images.

    from models import build_backbone
    backbone = build_backbone(stem="cifar")   # (B, 3, 32, 32) -> h: (B, 512)

This package only builds networks: pretrained weights arrive as a state dict (torchvision's
ImageNet weights are fetched by utils.data.weights.load_imagenet_state_dict).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

FEATURE_DIM = 512  # width of ResNet-18's pooled features h
STEMS = ("cifar", "imagenet")


def imagenet_classifier(weights: dict[str, torch.Tensor], in_dim: int = FEATURE_DIM) -> nn.Linear:
    """torchvision's ImageNet ResNet-18 classifier (512 -> 1000) with `weights`' fc.weight / fc.bias."""
    fc = nn.Linear(in_dim, weights["fc.weight"].shape[0])
    fc.load_state_dict({"weight": weights["fc.weight"], "bias": weights["fc.bias"]})
    return fc


def build_backbone(stem: str = "cifar", weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """torchvision ResNet-18 without its classifier: x (B, 3, H, W) -> h (B, 512).

    stem="cifar": 3x3 stride-1 first convolution and no max-pool, for 32-64 px images
    (the usual SimCLR CIFAR variant). stem="imagenet": torchvision's 7x7 stride-2 conv and
    max-pool, required with `weights` (a torchvision ResNet-18 state dict such as the ImageNet
    one, loaded strictly before the classifier is dropped).
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if weights is not None and stem != "imagenet":
        raise ValueError("ImageNet weights need the ImageNet stem")
    net = resnet18(weights=None)
    if weights is not None:
        net.load_state_dict(weights)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.feature_dim = FEATURE_DIM
    return net
