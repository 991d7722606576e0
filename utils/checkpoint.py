"""Checkpoints: plain dicts of tensors and Python values, saved atomically, loaded safely.

A checkpoint carries everything needed to rebuild the model and its preprocessing, so test.py
reads it instead of asking the user:

    {"format": "simclr-lcp/1", "model": {train_type, stem, num_classes, proj_hidden_dim, proj_dim,
     feature_dim, pretrained}, "data": {dataset, image_size, mean, std, classes, data_scale,
     subset_sha256, num_train}, "backbone": state_dict, "head": state_dict, "epoch": int,
     "step": int, "finished": bool, "config": {...}, "train_state": {...} (last.pth only)}

Loading uses `torch.load(weights_only=True)` only: a pickle that would run code is refused. The
reading lives in models/checkpoint.py (models.load_backbone uses it too, with a CheckpointError);
here its errors become the scripts' one-line UserError.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import FORMAT, KNOWN_PREFIXES, CheckpointError, read_checkpoint, strip_prefixes
from models.checkpoint import load_state_strict as _load_state_strict
from utils.errors import UserError
from utils.io import atomic_write

__all__ = ["FORMAT", "KNOWN_PREFIXES", "load_checkpoint", "load_state_strict", "plain", "save_checkpoint",
           "strip_prefixes"]


def save_checkpoint(path: str | Path, ckpt: dict) -> Path:
    """torch.save to a temp file in the same folder, fsync, rename: never a half-written file."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by train.py, or raise a one-line UserError saying what is wrong.

    Only `torch.load(weights_only=True)` is used, so a pickle that would call a function
    (`os.system`, `open`, ...) is refused before anything runs. The zip members' CRC-32s are
    checked first, so bytes damaged in transfer are reported instead of loaded as weights.
    The reading itself is models.checkpoint.read_checkpoint (also behind models.load_backbone);
    its one-line CheckpointError becomes the scripts' UserError (exit code 2).
    """
    try:
        return read_checkpoint(path, map_location=map_location)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


def load_state_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) after prefix cleaning; mismatches reported key by key (UserError)."""
    try:
        _load_state_strict(module, state_dict, what)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


def check_finite_weights(ckpt: dict, path: str | Path, parts: tuple[str, ...] = ("backbone", "head")) -> None:
    """UserError naming the first tensor of `ckpt[part]` holding NaN or inf (a diverged or damaged model).

    Checked when a checkpoint is loaded for evaluation or resumption, so such a file fails at
    once, not after a whole feature pass with a misleading hint about the learning rate.
    """
    for part in parts:
        state = ckpt.get(part)
        if not isinstance(state, dict):
            continue
        for name, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                kinds = "/".join(k for k, f in (("NaN", torch.isnan), ("inf", torch.isinf)) if bool(f(value).any()))
                raise UserError(f"{path}: tensor {part}.{name} holds {bad} {kinds} value(s) of {value.numel()}; "
                                "the model diverged or the file is damaged: use an earlier checkpoint")


def plain(obj: Any) -> Any:
    """Convert to checkpoint-safe values: Paths -> str, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, torch.Tensor):
        return obj.item()
    return obj
