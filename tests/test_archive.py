"""utils/data/archive.py: unsafe members refused, extraction atomic and restartable.

    python -m pytest tests/test_archive.py -q
"""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from utils.data.archive import check_members, extract_into_place, safe_extract
from utils.errors import UserError


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_good_zip_and_tar_extract_into_place(tmp_path):
    z = make_zip(tmp_path / "a.zip", {"top/a.txt": b"A", "top/sub/b.txt": b"B"})
    out = extract_into_place(z, tmp_path / "data" / "top", member_root="top")
    assert (out / "a.txt").read_bytes() == b"A" and (out / "sub" / "b.txt").read_bytes() == b"B"
    t = make_tar(tmp_path / "b.tar.gz", [("top/x.txt", b"X"), link("top/y", "x.txt")])
    out = extract_into_place(t, tmp_path / "data" / "other", member_root="top")
    assert (out / "x.txt").read_bytes() == b"X"
    assert (out / "y").is_symlink() and (out / "y").read_bytes() == b"X"  # link inside the target: fine
    assert files_under(tmp_path / "data") == {"top", "top/a.txt", "top/sub", "top/sub/b.txt",
                                              "other", "other/x.txt", "other/y"}


@pytest.mark.parametrize("name", ["../evil.txt", "top/../../evil.txt", "/tmp/evil_abs.txt"])
def test_zip_with_escaping_member_refused_nothing_written(tmp_path, name):
    z = make_zip(tmp_path / "bad.zip", {"top/ok.txt": b"ok", name: b"evil"})
    target = tmp_path / "work" / "top"
    target.parent.mkdir()
    with pytest.raises(UserError, match="unsafe archive bad.zip"):
        extract_into_place(z, target, member_root="top")
    assert files_under(tmp_path) == {"bad.zip", "work"}  # no target, no temp folder, no evil.txt
    assert not Path("/tmp/evil_abs.txt").exists()


@pytest.mark.parametrize("member", [
    ("/abs/evil.txt", b"x"),
    ("top/../../evil.txt", b"x"),
    link("top/escape", "../../outside"),
    link("top/abs", "/etc/passwd"),
    link("top/hard", "../outside", tarfile.LNKTYPE),
], ids=["absolute", "dotdot", "symlink-escape", "symlink-absolute", "hardlink-escape"])
def test_tar_with_unsafe_member_refused(tmp_path, member):
    t = make_tar(tmp_path / "bad.tar.gz", [("top/ok.txt", b"ok"), member])
    with pytest.raises(UserError, match="unsafe archive bad.tar.gz"):
        extract_into_place(t, tmp_path / "out" / "top", member_root="top")
    assert files_under(tmp_path) == {"bad.tar.gz"}


def test_tar_device_member_refused(tmp_path):
    dev = tarfile.TarInfo("top/dev")
    dev.type = tarfile.CHRTYPE
    t = make_tar(tmp_path / "dev.tar.gz", [dev])
    with pytest.raises(UserError, match="device"):
        check_members(t)


def test_interrupted_extraction_leftover_is_replaced(tmp_path):
    z = make_zip(tmp_path / "a.zip", {"top/a.txt": b"A"})
    leftover = tmp_path / ".top.extracting"
    (leftover / "top").mkdir(parents=True)
    (leftover / "top" / "half.txt").write_bytes(b"partial")
    out = extract_into_place(z, tmp_path / "top", member_root="top")
    assert files_under(out) == {"a.txt"}
    assert not leftover.exists()


def test_existing_target_and_missing_root_refused(tmp_path):
    z = make_zip(tmp_path / "a.zip", {"top/a.txt": b"A"})
    (tmp_path / "top").mkdir()
    with pytest.raises(UserError, match="already exists"):
        extract_into_place(z, tmp_path / "top", member_root="top")
    with pytest.raises(UserError, match="no folder other/"):
        extract_into_place(z, tmp_path / "other", member_root="other")
    assert not (tmp_path / "other").exists() and not (tmp_path / ".other.extracting").exists()


def test_corrupt_or_truncated_archive_is_a_user_error(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(UserError, match="not a zip or tar"):
        safe_extract(junk, tmp_path / "out")
    t = make_tar(tmp_path / "t.tar.gz", [("top/big.bin", bytes(range(256)) * 4000)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(t.read_bytes()[: t.stat().st_size // 2])
    with pytest.raises(UserError):
        extract_into_place(cut, tmp_path / "top", member_root="top")
    assert not (tmp_path / "top").exists()
