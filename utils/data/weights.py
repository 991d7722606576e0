"""torchvision's ImageNet ResNet-18 weights, fetched and verified on the data side.

The model package only builds networks; this module finds the weights file in torchvision's
cache ($TORCH_HOME/hub/checkpoints), downloads it there with the project's downloader when it
is absent, checks it against the sha256 prefix in its name and hands back the state dict:

    from models import build_backbone
    from utils.data.weights import load_imagenet_state_dict
    backbone = build_backbone("imagenet", weights=load_imagenet_state_dict())
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torchvision.models import ResNet18_Weights

from utils.data.download import download_file
from utils.errors import DataMissingError, UserError

IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1


def _sha256_prefix(url: str) -> str | None:
    """torchvision names weight files <name>-<first hex digits of their sha256>.pth."""
    match = re.search(r"-([0-9a-f]{8,})\.pth$", url)
    return match.group(1) if match else None


def imagenet_weights_path(url: str = IMAGENET_WEIGHTS.url) -> Path:
    """Where torchvision caches the ImageNet ResNet-18 weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_imagenet_state_dict(url: str = IMAGENET_WEIGHTS.url) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-18 state dict (conv1 ... fc) from the torch cache, fetched if absent.

    The downloader resumes, times out instead of hanging and fails fast offline (DataMissingError,
    one line naming the path to place the file at); the file name carries the first 8 hex digits
    of its sha256 (torchvision's convention), checked after a download.
    """
    path = imagenet_weights_path(url)
    if not path.is_file():
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
