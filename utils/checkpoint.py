"""Checkpoints: plain dicts of tensors and Python values, saved atomically, loaded safely.

A checkpoint carries everything needed to rebuild the model and its preprocessing, so test.py
reads it instead of asking the user:

    {"format": "simclr-lcp/1", "model": {train_type, stem, num_classes, proj_hidden_dim, proj_dim,
     feature_dim, pretrained}, "data": {dataset, image_size, mean, std, classes, data_scale,
     subset_sha256, num_train}, "backbone": state_dict, "head": state_dict, "epoch": int,
     "step": int, "finished": bool, "config": {...}, "train_state": {...} (last.pth only)}

Loading uses `torch.load(weights_only=True)` only: a pickle that would run code is refused.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError
from utils.io import atomic_write

FORMAT = "simclr-lcp/1"
KNOWN_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel / torch.compile


def save_checkpoint(path: str | Path, ckpt: dict) -> Path:
    """torch.save to a temp file in the same folder, fsync, rename: never a half-written file."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by train.py, or raise a one-line UserError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"checkpoint path is a directory, expected a .pth file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint is empty (0 bytes): {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(_describe_load_failure(path, exc)) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = type(ckpt).__name__ if not isinstance(ckpt, dict) else f"dict without format {FORMAT!r}"
        raise UserError(f"{path} is not a checkpoint written by this project's train.py (found {found})")
    return ckpt


def _describe_load_failure(path: Path, exc: Exception) -> str:
    text = str(exc)
    if "Weights only load failed" in text or "Unsupported global" in text or "unsupported" in text.lower():
        return (f"refusing to load {path}: it contains pickled objects other than tensors and plain "
                f"values (it could run code); only checkpoints written by train.py are accepted")
    if not zipfile.is_zipfile(path):
        return f"{path} is not a readable PyTorch checkpoint (truncated or corrupt file)"
    return f"{path} is truncated or corrupt ({type(exc).__name__}: {text.splitlines()[0][:120] if text else ''})"


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (`module.` from DDP, `_orig_mod.` from torch.compile) from keys."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in KNOWN_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_state_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) after prefix cleaning; mismatches reported key by key."""
    state_dict = strip_prefixes(state_dict)
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shape:
            parts.append("shape mismatch " + _short([f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in shape]))
        raise UserError(f"{what} weights do not match the model (another architecture?): " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def _short(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


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
