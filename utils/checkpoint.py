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
import re
import warnings
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
    """Read a checkpoint written by train.py, or raise a one-line UserError saying what is wrong.

    Only `torch.load(weights_only=True)` is used, so a pickle that would call a function
    (`os.system`, `open`, ...) is refused before anything runs. The zip members' CRC-32s are
    checked first, so bytes damaged in transfer are reported instead of loaded as weights.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"checkpoint path is a directory, expected a .pth file: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise UserError(f"checkpoint is empty (0 bytes): {path}")
    damaged = _damaged_zip_member(path)
    if damaged:
        raise UserError(f"{path} is corrupt: {damaged} (re-copy or re-create the file)")
    try:
        with warnings.catch_warnings():
            # The weights-only unpickler warns about pickle protocols before refusing a file;
            # the refusal below is the message the user needs, not that warning.
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(_describe_load_failure(path, exc)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = type(ckpt).__name__ if not isinstance(ckpt, dict) else f"a dict without format {FORMAT!r}"
        hint = " (a bare state_dict?)" if isinstance(ckpt, dict) and ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else ""
        raise UserError(f"{path} is not a checkpoint written by this project's train.py (found {found}{hint})")
    return ckpt


def _damaged_zip_member(path: Path) -> str | None:
    """Name of the first zip member whose CRC-32 does not match (torch.load does not check), or None."""
    if not zipfile.is_zipfile(path):
        return None  # not a zip (legacy format, or not a checkpoint at all): torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        return f"unreadable zip archive ({type(exc).__name__})"
    return f"CRC mismatch in {bad}" if bad else None


def _describe_load_failure(path: Path, exc: Exception) -> str:
    text = str(exc)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked:
        return (f"refusing to load {path}: its pickle would call {blocked.group(1)} (code execution); only "
                f"tensors and plain values are accepted, as in checkpoints written by train.py")
    if "Weights only load failed" in text:
        return (f"refusing to load {path}: it is not a PyTorch checkpoint of tensors and plain values "
                f"(corrupt, or a pickle of another kind)")
    if not zipfile.is_zipfile(path):
        return f"{path} is not a readable PyTorch checkpoint (truncated or corrupt file)"
    first = text.splitlines()[0][:120] if text else ""
    return f"{path} is truncated or corrupt ({type(exc).__name__}: {first})"


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
