"""Run directories: config.json, finished/unfinished detection, and the resume decision.

A run directory holds config.json, metrics.csv, curves.png, train.log, last.pth (written every
epoch and on Ctrl-C/SIGTERM) and final.pth (written at the end, which marks the run finished).
While a run uses it, the directory is locked (`.lock`, released when the process ends, even
by SIGKILL), so a second run started with the same --run_dir is refused instead of clobbering it.

What is refused (one line, exit 2, and a folder this run created is removed again): a path
component over the file system's name limit; --resume where there is no folder or no last.pth;
a folder holding files no run wrote (a config.json or metrics.csv without our markers, a
curves.png without our config.json) unless --overwrite; resuming from a last.pth with NaN/inf
weights, made with another config, or trained on other data (`data_differences`: the dataset,
its classes, its size, the subset's sha256 or the data's fingerprint changed).

    python train.py --dataset synthetic --run_dir R ...   # prepare_run_dir(R, config, resume, overwrite)
"""
from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch
import torchvision

from utils.checkpoint import check_finite_weights, load_checkpoint
from utils.errors import UserError
from utils.io import remove_stale_temp_files
from utils.runtime import runtime_info

# Arguments that change what is computed. The rest (device, workers, logging, ...) may differ
# between a run and its resumption.
IGNORED_FOR_RESUME = {
    "device", "workers", "resume", "overwrite", "debug", "run_dir", "data_dir", "quiet", "tensorboard",
    "log_every", "compile", "knn_every", "save_every", "save_at", "nan_policy", "max_nan_skips",
    "threads",  # changes the last bits on CPU, like device; a run may resume on a machine with fewer cores
}
RUN_FILES = ("last.pth", "final.pth", "metrics.csv", "curves.png", "config.json", "train.log")
LOCK_FILE = ".lock"
NAME_MAX = 255  # bytes in one path component on Linux/macOS file systems (ext4, xfs, btrfs, apfs, tmpfs)
METRICS_HEADER = "epoch,loss,"  # how train.py's metrics.csv begins
_LOCKS: dict[str, int] = {}  # resolved run directory -> open file descriptor holding its lock


def environment_info() -> dict:
    """Versions, git commit and the run's thread count and determinism (utils.runtime.runtime_info) recorded
    next to the arguments."""
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "platform": platform.platform(), **runtime_info()}
    try:
        root = Path(__file__).resolve().parents[2]  # utils/train/rundir.py -> the repository
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


def check_run_dir_path(run_dir: Path) -> None:
    """UserError for a --run_dir no file system can hold: a component longer than NAME_MAX bytes."""
    for part in Path(run_dir).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(f"--run_dir: the folder name {part[:24]}... is {len(os.fsencode(part))} bytes long, over "
                            f"the file system's limit of {NAME_MAX}; use a shorter --run_dir")


def run_dir_exists(run_dir: Path) -> bool:
    """Path.exists, with a path the file system cannot hold as a one-line UserError instead of OSError."""
    check_run_dir_path(run_dir)
    try:
        return os.path.lexists(run_dir)
    except OSError as exc:
        raise UserError(f"cannot use --run_dir {run_dir}: {exc.strerror or exc}") from None


def foreign_files(run_dir: Path) -> list[str]:
    """Files a run would overwrite that no run wrote: a config.json without train.py's "args" and "env",
    a metrics.csv not starting with our header, a curves.png beside no config.json of ours."""
    run_dir = Path(run_dir)
    found = []
    ours = False
    config = run_dir / "config.json"
    if config.exists():
        try:
            content = json.loads(config.read_text())
            ours = isinstance(content, dict) and isinstance(content.get("args"), dict) and "env" in content
        except (OSError, ValueError, UnicodeDecodeError):
            ours = False
        if not ours:
            found.append("config.json")
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        try:
            with open(metrics, encoding="utf-8") as f:
                first = f.readline()
        except (OSError, UnicodeDecodeError):
            first = ""
        if not first.startswith(METRICS_HEADER):
            found.append("metrics.csv")
    if (run_dir / "curves.png").exists() and not ours:
        found.append("curves.png")
    return found


def prepare_run_dir(run_dir: Path, config: dict, resume: bool, overwrite: bool) -> dict | None:
    """Create, lock and check the run directory; return the last.pth checkpoint to resume from, or None.

    - holds final.pth (a finished run): refused unless --overwrite;
    - holds last.pth of an unfinished run: resumed when the config matches (automatically,
      or with --resume); a differing config is refused, naming the keys, unless --overwrite;
    - holds files no run wrote (`foreign_files`): refused unless --overwrite;
    - --resume with nothing to resume from is an error (and creates no folder).
    Nothing is deleted here: with --overwrite the caller calls `clear_run_dir` once the other
    inputs have been checked, so a typo in another flag does not cost the previous run. A folder
    created here is removed again when it is refused.
    """
    run_dir = Path(run_dir)
    existed = run_dir_exists(run_dir)
    if resume and not existed:
        raise UserError(f"--resume: no last.pth in {run_dir} to resume from (the folder does not exist)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    try:
        return _check_run_dir(run_dir, config, resume, overwrite)
    except BaseException:
        if not existed:
            remove_unused_run_dir(run_dir)
        raise


def _check_run_dir(run_dir: Path, config: dict, resume: bool, overwrite: bool) -> dict | None:
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"run directory {run_dir} is not writable")
    lock_run_dir(run_dir)
    remove_stale_temp_files(run_dir)  # left by a kill during an atomic write; safe under the lock
    last, final = run_dir / "last.pth", run_dir / "final.pth"
    if overwrite:
        return None
    if final.exists():
        raise UserError(f"{run_dir} already holds a finished run (final.pth); use a new --run_dir or --overwrite")
    if not last.exists():
        if resume:
            raise UserError(f"--resume: no last.pth in {run_dir} to resume from")
        foreign = foreign_files(run_dir)
        if foreign:
            raise UserError(f"{run_dir} holds {', '.join(foreign)} that no training run wrote; a run would "
                            "overwrite them: use a new --run_dir, or --overwrite to replace them")
        return None
    try:
        ckpt = load_checkpoint(last)
    except UserError as exc:
        raise UserError(f"cannot resume: {exc}; use --overwrite to start again") from None
    if "train_state" not in ckpt:
        raise UserError(f"{last} holds no training state to resume from; use --overwrite to start again")
    try:
        check_finite_weights(ckpt, last)
    except UserError as exc:
        raise UserError(f"cannot resume: {exc}, or --overwrite to start again") from None
    diffs = config_differences(ckpt.get("config", {}), config)
    if diffs:
        raise UserError(f"{last} was made with another config ({'; '.join(diffs)}); "
                        "use the same flags, a new --run_dir, or --overwrite")
    return ckpt


def data_differences(stored: dict, current: dict) -> list[str]:
    """What changed between the data a checkpoint was trained on (`ckpt["data"]`) and the data now.

    Compared: dataset, split (which split, and how a dataset without an official split was split),
    classes, num_train, subset_sha256 (the subset's indices) and data_sha256 (labels and a strided
    sample of the images), each only when both sides record it.
    """
    diffs = []
    for key in ("dataset", "split", "num_train", "subset_sha256", "data_sha256"):
        old, new = stored.get(key), current.get(key)
        if old is not None and new is not None and old != new:
            shown = (lambda v: str(v)[:12]) if key.endswith("sha256") else repr
            diffs.append(f"{key}: {shown(old)} -> {shown(new)}")
    old, new = stored.get("classes"), current.get("classes")
    if old is not None and new is not None and list(old) != list(new):
        added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        what = "; ".join(part for part in (f"added {', '.join(map(str, added[:5]))}" if added else "",
                                           f"removed {', '.join(map(str, removed[:5]))}" if removed else "") if part)
        diffs.append(f"classes: {len(old)} -> {len(new)}" + (f" ({what})" if what else " (renumbered)"))
    return diffs


def remove_unused_run_dir(run_dir: Path) -> bool:
    """Remove a run folder this process created if no checkpoint or metrics were written to it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(run_dir.glob("*.pth")) or (run_dir / "metrics.csv").exists():
        return False
    if str(run_dir.resolve()) not in _LOCKS and any(run_dir.iterdir()):
        return False  # not locked by this process: another run may have just made it its own
    unlock_run_dir(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def clear_run_dir(run_dir: Path) -> list[Path]:
    """Delete a previous run's files (--overwrite): run files, epoch_*.pth; return what was removed."""
    run_dir = Path(run_dir)
    removed = []
    for path in [run_dir / name for name in RUN_FILES] + sorted(run_dir.glob("epoch_*.pth")):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on `run_dir` for this process's lifetime (or until `unlock_run_dir`).

    UserError when another process holds it, or when a file cannot be created there.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _LOCKS:
        return
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable: {exc.strerror or exc}") from None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the rest still works
        _LOCKS[key] = fd
        return
    try:
        # A POSIX record lock (lockf), not flock: it belongs to this process only, so DataLoader
        # workers forked from it do not hold it on after a SIGKILL of the main process.
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise UserError(f"run directory {run_dir} is in use by another training process; wait for it to "
                            "end or use another --run_dir") from None
        # file systems without lock support (some network mounts): carry on unlocked
    _LOCKS[key] = fd


def unlock_run_dir(run_dir: Path) -> None:
    """Release the lock taken by `prepare_run_dir` (a no-op when not held)."""
    fd = _LOCKS.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)
