"""utils.io: atomic writes (text, JSON, CSV) are correct, keep the old file on failure, leave no temp files.

    python -m pytest tests/test_io.py -q
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils.io import (atomic_write, atomic_write_csv, atomic_write_json, atomic_write_text, read_csv,
                      remove_stale_temp_files)

ROOT = Path(__file__).resolve().parent.parent


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_text_round_trip_keeps_bytes_exactly(tmp_path):
    text = "héllo wörld ✓\nline two\r\nno translation\n"
    path = atomic_write_text(tmp_path / "a.txt", text)
    assert path == tmp_path / "a.txt"
    assert path.read_bytes() == text.encode("utf-8")  # UTF-8, newlines written as given
    atomic_write_text(path, "second")
    assert path.read_text(encoding="utf-8") == "second"
    assert _leftovers(tmp_path, {"a.txt"}) == []


def test_json_round_trip_and_non_json_values(tmp_path):
    obj = {"b": [1, 2.5, None, True], "a": {"nested": "x"}, "path": Path("/some/where")}
    atomic_write_json(tmp_path / "c.json", obj)
    back = json.loads((tmp_path / "c.json").read_text())
    assert back == {"b": [1, 2.5, None, True], "a": {"nested": "x"}, "path": "/some/where"}
    assert list(back) == ["b", "a", "path"]  # insertion order kept


def test_csv_fields_missing_and_extra_keys(tmp_path):
    rows = [{"epoch": 1, "loss": 2.5, "extra": "ignored"}, {"epoch": 2, "acc": 50.0}]
    atomic_write_csv(tmp_path / "m.csv", rows, ["epoch", "loss", "acc"])
    assert (tmp_path / "m.csv").read_text() == "epoch,loss,acc\n1,2.5,\n2,,50.0\n"
    assert read_csv(tmp_path / "m.csv") == [{"epoch": "1", "loss": "2.5", "acc": ""},
                                            {"epoch": "2", "loss": "", "acc": "50.0"}]


def test_creates_parent_folders(tmp_path):
    atomic_write_text(tmp_path / "x" / "y" / "z.txt", "deep")
    assert (tmp_path / "x" / "y" / "z.txt").read_text() == "deep"


def test_failing_write_keeps_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "state.bin"
    atomic_write(path, lambda f: f.write(b"old contents"))

    def half_then_fail(f):
        f.write(b"new contents, half of th")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old contents"
    assert _leftovers(tmp_path, {"state.bin"}) == []


def test_failing_replace_keeps_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = atomic_write_json(tmp_path / "eval.json", {"acc": 1})

    def broken_replace(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_json(path, {"acc": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"acc": 1}
    assert _leftovers(tmp_path, {"eval.json"}) == []


def test_failure_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "new.bin", lambda f: f.write(b"x") and 1 / 0)
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_mid_write_cleans_up(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "before")

    def interrupted(f):
        f.write("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "t.txt", interrupted, mode="w")
    assert (tmp_path / "t.txt").read_text() == "before"
    assert _leftovers(tmp_path, {"t.txt"}) == []


def test_sigkill_mid_write_keeps_old_file_and_stale_temp_is_removable(tmp_path):
    """A process killed inside the write: the old file stays whole; the temp it left is cleaned up later."""
    target = tmp_path / "last.txt"
    atomic_write_text(target, "epoch 1 state")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from utils.io import atomic_write
        def write(f):
            f.write(b"epoch 2 sta")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(target)!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "epoch 1 state"
    stale = _leftovers(tmp_path, {"last.txt"})
    assert len(stale) == 1 and stale[0].startswith(".last.txt.") and stale[0].endswith(".tmp")
    (tmp_path / "notes.tmp").write_text("a user's file")  # not ours: must survive
    (tmp_path / ".hidden").write_text("also not ours")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == stale
    assert _leftovers(tmp_path, {"last.txt"}) == [".hidden", "notes.tmp"]


def test_file_mode_follows_umask_and_keeps_existing_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "fresh.json", "{}")
        assert fresh.stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0600
        os.chmod(fresh, 0o600)
        atomic_write_text(fresh, "{} ")
        assert fresh.stat().st_mode & 0o777 == 0o600  # a user's chmod survives rewrites
    finally:
        os.umask(old)
