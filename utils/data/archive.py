"""Safe extraction of .zip and .tar(.gz) archives into place.

Every member is checked before anything is written: absolute paths, `..` components, links
that point outside the target, and device/fifo members are refused with a UserError naming the
member. Extraction goes to a hidden temporary sibling folder that is renamed into place only
when complete, so an interrupted extraction never looks finished (the next run deletes the
leftover and starts again).

    python -c "from utils.data.archive import extract_into_place; extract_into_place('data/cifar-10-python.tar.gz', 'data/cifar-10-batches-py', member_root='cifar-10-batches-py')"
"""
from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from utils.errors import UserError

logger = logging.getLogger(__name__)

EXTRACTING_SUFFIX = ".extracting"  # hidden sibling folder `.<name>.extracting` while in progress


def _check_name(archive: Path, name: str) -> str:
    """Normalise a member name to a relative POSIX path inside the target, or raise UserError."""
    if not name or "\x00" in name:
        raise UserError(f"unsafe archive {archive.name}: empty or malformed member name {name!r}")
    unixy = name.replace("\\", "/")
    if unixy.startswith("/") or (len(unixy) > 1 and unixy[1] == ":"):
        raise UserError(f"unsafe archive {archive.name}: member {name!r} has an absolute path")
    parts = [p for p in unixy.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"unsafe archive {archive.name}: member {name!r} points outside the target ('..')")
    return "/".join(parts)


def _check_link(archive: Path, name: str, target: str, hard: bool) -> None:
    """Refuse a link whose target resolves outside the extraction folder."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise UserError(f"unsafe archive {archive.name}: link {name!r} points to absolute path {target!r}")
    # Symlink targets are relative to the link's folder; tar hard-link targets to the root.
    base = "" if hard else posixpath.dirname(name)
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise UserError(f"unsafe archive {archive.name}: link {name!r} -> {target!r} points outside the target")


def check_members(archive: str | Path) -> list[str]:
    """Validate every member of a zip or tar archive; return their normalised names.

    Raises UserError for unsafe members (see module docstring) or an unreadable archive.
    """
    archive = Path(archive)
    names: list[str] = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = _check_name(archive, info.filename)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):  # zipfile writes links as text files; refuse escapes anyway
                        _check_link(archive, name, zf.read(info).decode("utf-8", "replace"), hard=False)
                    names.append(name)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf:
                    name = _check_name(archive, member.name)
                    if member.issym() or member.islnk():
                        _check_link(archive, name, member.linkname, hard=member.islnk())
                    elif not (member.isfile() or member.isdir()):
                        raise UserError(f"unsafe archive {archive.name}: member {member.name!r} is a device or fifo")
                    names.append(name)
        else:
            raise UserError(f"{archive} is not a zip or tar archive (corrupt or incomplete download?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"cannot read archive {archive}: {exc}") from None
    return names


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract every member of `archive` under `dest` after validating them all."""
    archive, dest = Path(archive), Path(dest)
    check_members(archive)  # nothing is written unless every member is safe
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                # The stdlib "data" filter repeats our checks (defence in depth) and drops
                # setuid bits and ownership.
                tf.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"cannot extract {archive}: {exc}") from None


def extract_into_place(archive: str | Path, final_dir: str | Path, member_root: str | None = None) -> Path:
    """Extract `archive` so that its folder `member_root` (or its whole content) becomes `final_dir`.

    Work happens in `final_dir.parent / ".<name>.extracting"`; a leftover from an interrupted
    run is removed first. `final_dir` must not exist yet (UserError otherwise).
    """
    archive, final_dir = Path(archive), Path(final_dir)
    if final_dir.exists():
        raise UserError(f"{final_dir} already exists; delete it to extract {archive.name} again")
    tmp = final_dir.parent / f".{final_dir.name}{EXTRACTING_SUFFIX}"
    if tmp.exists():
        logger.info("removing leftover of an interrupted extraction: %s", tmp)
        shutil.rmtree(tmp)
    try:
        safe_extract(archive, tmp)
        source = tmp / member_root if member_root else tmp
        if not source.is_dir():
            raise UserError(f"archive {archive.name} has no folder {member_root}/ (wrong archive?)")
        os.replace(source, final_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final_dir
