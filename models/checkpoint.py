"""Reading this project's checkpoints safely: `torch.load(weights_only=True)` only, one-line errors.

A checkpoint written by train.py is a plain dict of tensors and Python values (format
"simclr-lcp/1"; keys listed in utils/checkpoint.py). A pickle that would run code is refused
before anything runs, and every problem with the file is one CheckpointError line:

    from models.checkpoint import read_checkpoint
    ckpt = read_checkpoint("checkpoints/simclr-cifar10-<time>/final.pth")   # dict

The scripts read checkpoints through utils.checkpoint.load_checkpoint, which turns these errors
into the one-line UserError (exit code 2) of the command-line tools.
"""
from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

FORMAT = "simclr-lcp/1"
KNOWN_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel / torch.compile


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe or not this project's; the message is one line."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by train.py, or raise a one-line CheckpointError saying what is wrong.

    Only `torch.load(weights_only=True)` is used, so a pickle that would call a function
    (`os.system`, `open`, ...) is refused before anything runs. The zip members' CRC-32s are
    checked first, so bytes damaged in transfer are reported instead of loaded as weights.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, expected a .pth file: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    damaged = _damaged_zip_member(path)
    if damaged:
        raise CheckpointError(f"{path} is corrupt: {damaged} (re-copy or re-create the file)")
    try:
        with warnings.catch_warnings():
            # The weights-only unpickler warns about pickle protocols before refusing a file;
            # the refusal below is the message the user needs, not that warning.
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(_describe_load_failure(path, exc)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = type(ckpt).__name__ if not isinstance(ckpt, dict) else f"a dict without format {FORMAT!r}"
        hint = " (a bare state_dict?)" if isinstance(ckpt, dict) and ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else ""
        raise CheckpointError(f"{path} is not a checkpoint written by this project's train.py (found {found}{hint})")
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
    """load_state_dict(strict=True) after prefix cleaning; mismatches reported key by key in one line."""
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
        raise CheckpointError(f"{what} weights do not match the model (another architecture?): " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def _short(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
