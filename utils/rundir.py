"""Run directories: config.json, finished/unfinished detection, and the resume decision.

A run directory holds config.json, metrics.csv, curves.png, train.log, last.pth (written every
epoch and on Ctrl-C/SIGTERM) and final.pth (written at the end, which marks the run finished).
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch
import torchvision

from utils.checkpoint import load_checkpoint
from utils.errors import UserError

# Arguments that change what is computed. The rest (device, workers, logging, ...) may differ
# between a run and its resumption.
IGNORED_FOR_RESUME = {
    "device", "workers", "resume", "overwrite", "debug", "run_dir", "data_dir", "quiet", "tensorboard",
    "log_every", "compile", "knn_every", "save_every", "save_at", "nan_policy", "max_nan_skips",
}
RUN_FILES = ("last.pth", "final.pth", "metrics.csv", "curves.png", "config.json", "train.log")


def environment_info() -> dict:
    """Versions and git commit recorded next to the arguments."""
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "platform": platform.platform()}
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def config_differences(old: dict, new: dict) -> list[str]:
    """Keys (not in IGNORED_FOR_RESUME) whose values differ, as 'key: old -> new'."""
    keys = sorted((set(old) | set(new)) - IGNORED_FOR_RESUME)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def prepare_run_dir(run_dir: Path, config: dict, resume: bool, overwrite: bool) -> dict | None:
    """Create/check the run directory; return the last.pth checkpoint to resume from, or None.

    - holds final.pth (a finished run): refused unless --overwrite;
    - holds last.pth of an unfinished run: resumed when the config matches (automatically,
      or with --resume); a differing config is refused, naming the keys, unless --overwrite;
    - --resume with nothing to resume from is an error.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"run directory {run_dir} is not writable")
    last, final = run_dir / "last.pth", run_dir / "final.pth"
    if overwrite:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for old in run_dir.glob("epoch_*.pth"):
            old.unlink()
        return None
    if final.exists():
        raise UserError(f"{run_dir} already holds a finished run (final.pth); use a new --run_dir or --overwrite")
    if not last.exists():
        if resume:
            raise UserError(f"--resume: no last.pth in {run_dir} to resume from")
        return None
    ckpt = load_checkpoint(last)
    if "train_state" not in ckpt:
        raise UserError(f"{last} holds no training state to resume from; use --overwrite to start again")
    diffs = config_differences(ckpt.get("config", {}), config)
    if diffs:
        raise UserError(f"{last} was made with another config ({'; '.join(diffs)}); "
                        "use the same flags, a new --run_dir, or --overwrite")
    return ckpt
