"""utils.checkpoint: safe loading (weights_only), one-line errors for bad files, strict state loading.

    python -m pytest tests/test_checkpoint.py -q
"""
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet34

from models import build_backbone
from utils.checkpoint import FORMAT, load_checkpoint, load_state_strict, save_checkpoint, strip_prefixes
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def _small_ckpt() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"format": FORMAT, "model": {"train_type": "simclr", "stem": "cifar"},
            "data": {"dataset": "synthetic", "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
            "backbone": {"w": torch.randn(64, 64, generator=g), "b": torch.arange(7)},
            "head": {"h": torch.randn(3, generator=g)}, "epoch": 3, "step": 30, "finished": False,
            "config": {"lr": 0.6, "run_dir": "x", "save_at": [1, 2]}}


class _OpensAFile:
    """Unpickling this calls open(path, "w"): the file appears if the pickle runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsAShellCommand:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_save_load_round_trip_plain_values(tmp_path):
    ckpt = _small_ckpt()
    save_checkpoint(tmp_path / "c.pth", ckpt)
    back = load_checkpoint(tmp_path / "c.pth")
    assert torch.equal(back["backbone"]["w"], ckpt["backbone"]["w"])
    assert back["config"] == ckpt["config"] and back["epoch"] == 3 and back["finished"] is False
    assert torch.load(tmp_path / "c.pth", weights_only=True)["step"] == 30  # what users may do themselves
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


@pytest.mark.parametrize("payload", [_OpensAFile, _RunsAShellCommand])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"format": FORMAT, "backbone": {}, "x": payload(str(marker))}, evil)
    if payload is _OpensAFile:  # the fixture is real: an unsafe load does create the file
        torch.load(evil, weights_only=False)
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UserError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert "\n" not in message and "refusing to load" in message and "code execution" in message
    assert ("open" in message) if payload is _OpensAFile else ("system" in message)
    assert not marker.exists()


def _truncated(tmp_path):
    buf = io.BytesIO()
    torch.save(_small_ckpt(), buf)
    data = buf.getvalue()
    (tmp_path / "bad.pth").write_bytes(data[: len(data) // 2])


def _bit_flipped(tmp_path):
    save_checkpoint(tmp_path / "bad.pth", _small_ckpt())
    data = bytearray((tmp_path / "bad.pth").read_bytes())
    start = data.index(_small_ckpt()["backbone"]["w"].numpy().tobytes()[:64])  # inside the tensor bytes
    data[start + 100] ^= 0xFF
    (tmp_path / "bad.pth").write_bytes(bytes(data))


BAD_FILES = {
    "missing": (lambda d: None, "not found"),
    "directory": (lambda d: (d / "bad.pth").mkdir(), "directory"),
    "empty": (lambda d: (d / "bad.pth").write_bytes(b""), "empty"),
    "truncated": (_truncated, "truncated or corrupt"),
    "bit flipped": (_bit_flipped, "CRC mismatch"),
    # Seeded: about 1 in 12 unseeded draws is read as a legacy file and gets the "not a readable" message.
    "random bytes": (lambda d: (d / "bad.pth").write_bytes(random.Random(0).randbytes(4096)), "not a PyTorch checkpoint"),
    "text": (lambda d: (d / "bad.pth").write_text("not a checkpoint\n"), "PyTorch checkpoint"),
    "tensor": (lambda d: torch.save(torch.zeros(3), d / "bad.pth"), "not a checkpoint written by this project"),
    "bare state_dict": (lambda d: torch.save(nn.Linear(2, 2).state_dict(), d / "bad.pth"), "bare state_dict"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_is_one_line_user_error(tmp_path, kind, recwarn):
    make, expected = BAD_FILES[kind]
    make(tmp_path)
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "bad.pth")
    message = str(info.value)
    assert expected in message and "\n" not in message and str(tmp_path / "bad.pth") in message
    assert info.value.__cause__ is None or kind == "missing"  # no chained traceback material
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # torch's protocol warning is silenced


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failing_save_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch, fail_at):
    """The bytes of the new checkpoint are written, then the save fails: the old file still loads."""
    old = _small_ckpt()
    save_checkpoint(tmp_path / "last.pth", old)
    new = _small_ckpt()
    new["backbone"]["w"] = new["backbone"]["w"] + 1

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, fail_at, fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "last.pth", new)
    monkeypatch.undo()
    back = load_checkpoint(tmp_path / "last.pth")
    assert torch.equal(back["backbone"]["w"], old["backbone"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_strip_prefixes():
    sd = {"module._orig_mod.conv.weight": 1, "_orig_mod.module.fc.bias": 2, "layer.module.x": 3}
    assert strip_prefixes(sd) == {"conv.weight": 1, "fc.bias": 2, "layer.module.x": 3}


def test_load_state_strict_accepts_wrapped_keys():
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    wrapped = {f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}
    load_state_strict(dst, wrapped, "head")
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)


def test_other_architecture_reported_key_by_key_and_nothing_loaded():
    backbone = build_backbone("cifar")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    other = {k: v for k, v in resnet34().state_dict().items() if not k.startswith("fc.")}
    with pytest.raises(UserError) as info:
        load_state_strict(backbone, other, "backbone")
    message = str(info.value)
    assert "\n" not in message and "another architecture" in message
    assert "unexpected keys [layer1.2.bn1.bias" in message  # resnet34 has 3 blocks in layer1, resnet18 two
    assert "shape mismatch [conv1.weight (64, 3, 7, 7) vs (64, 3, 3, 3)] (1)" in message
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_missing_keys_named():
    head = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    partial = {k: v for k, v in head.state_dict().items() if not k.startswith("2.")}
    with pytest.raises(UserError, match=r"missing keys \[2.bias, 2.weight\] \(2\)"):
        load_state_strict(head, partial, "head")


def test_test_py_refuses_other_architecture_from_the_command_line(tmp_path):
    """test.py (linear evaluation) on a checkpoint whose backbone is not a ResNet-18: exit 2, one line."""
    if not (ROOT / "test.py").exists():
        pytest.skip("test.py is not there yet")
    ckpt = _small_ckpt()
    ckpt["backbone"] = {k: v for k, v in resnet34().state_dict().items() if not k.startswith("fc.")}
    save_checkpoint(tmp_path / "r34.pth", ckpt)
    proc = subprocess.run([sys.executable, "test.py", "--model_path", str(tmp_path / "r34.pth"), "--dataset",
                           "synthetic", "--device", "cpu", "--workers", "0", "--run_dir", str(tmp_path / "eval")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "another architecture" in error_lines[0]
