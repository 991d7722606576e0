"""data.py end to end (subprocess, local mirror on 127.0.0.1) and CIFAR through utils/data/cifar.py.

    python -m pytest tests/test_data_script.py -q
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

import data
from test_download import closed_port
from test_tinyimagenet import archive, server  # noqa: F401  (shared fixtures: the miniature zip, a local server)
from utils.data.cifar import ensure_cifar, load_cifar
from utils.data.download import md5sum
from utils.errors import DataMissingError, UserError

REPO = Path(__file__).resolve().parents[1]


def run_data(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(REPO)}, **(env_extra or {}))
    env.pop("SIMCLR_DEBUG", None)
    return subprocess.run([sys.executable, str(REPO / "data.py"), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_data_py_prepares_from_mirror_survives_cut_and_rerun_is_a_no_op(server, archive, tmp_path):
    blob, md5 = archive
    url = server.add("tiny-imagenet-200.zip", blob, mode="drop_once")
    args = ("--dataset", "tiny-imagenet", "--url", url, "--md5", md5, "--data_dir", str(tmp_path))
    first = run_data(*args)
    assert first.returncode == 0, first.stderr
    assert "prepared" in first.stdout
    ranges = server.ranges("tiny-imagenet-200.zip")
    assert ranges[0] is None and ranges[1].startswith("bytes=")  # cut mid-body, then resumed
    cache = tmp_path / "tiny-imagenet-200" / "cache"
    assert np.load(cache / "val_images.npy", mmap_mode="r").shape == (6, 64, 64, 3)
    n_requests = len(server.requests)
    second = run_data(*args)
    assert second.returncode == 0, second.stderr
    assert len(second.stdout.strip().splitlines()) == 1 and "already" in second.stdout
    assert second.stderr.strip() == ""
    assert len(server.requests) == n_requests  # no network on the rerun


def test_data_py_wrong_md5_exits_2_with_one_line_and_no_data(server, archive, tmp_path):
    blob, _ = archive
    url = server.add("tiny-imagenet-200.zip", blob)
    out = run_data("--dataset", "imagenet", "--url", url, "--md5", "f" * 32, "--data_dir", str(tmp_path))
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "md5 mismatch for tiny-imagenet-200.zip" in errors[0]
    assert out.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in out.stderr
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_data_py_offline_fails_fast_with_the_command(tmp_path):
    # A dead proxy makes this machine "offline" for sure, even where the network is up.
    dead = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    out = run_data("--dataset", "cifar100", "--data_dir", str(tmp_path),
                   env_extra={"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "NO_PROXY": ""})
    assert time.monotonic() - start < 20
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "CIFAR-100 not found" in lines[0]
    assert "python data.py --dataset cifar100" in lines[0] and "Traceback" not in out.stderr


def test_parse_args_rules():
    assert data.parse_args([]).dataset == "tiny-imagenet" and data.parse_args([]).data_dir == "data"
    assert data.parse_args(["--dataset", "imagenet"]).dataset == "tiny-imagenet"
    with pytest.raises(UserError, match="single --dataset"):
        data.parse_args(["--dataset", "all", "--url", "http://x/y.zip"])
    with pytest.raises(UserError, match="32 hexadecimal"):
        data.parse_args(["--md5", "abc"])
    with pytest.raises(SystemExit):
        data.parse_args(["--dataset", "svhn"])


# ---- CIFAR: a miniature archive in the real pickle format -------------------------------------

def _cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: str) -> None:
    """Write a batch the way the CIFAR python archives store it: rows of 1024 R, 1024 G, 1024 B."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)
    entry = {"batch_label": path.name, label_key: labels, "data": rows,
             "filenames": [f"img_{i}.png" for i in range(len(images))]}
    if label_key == "fine_labels":
        entry["coarse_labels"] = [0] * len(labels)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def make_cifar_archive(tmp: Path, name: str) -> tuple[Path, dict]:
    """A miniature cifar-10/100-python.tar.gz; returns it and the reference arrays."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, train_files, test_file, meta_file = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"
        classes, label_key, meta = [f"class{i}" for i in range(10)], "labels", {"label_names": [f"class{i}" for i in range(10)]}
    else:
        folder, train_files, test_file, meta_file = "cifar-100-python", ["train"], "test", "meta"
        classes, label_key = [f"fine{i}" for i in range(100)], "fine_labels"
        meta = {"fine_label_names": classes, "coarse_label_names": ["c0"]}
    src = tmp / "src" / folder
    src.mkdir(parents=True)
    ref = {"train_x": [], "train_y": [], "classes": classes}
    for i, fname in enumerate(train_files):
        x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, len(classes), 2)]
        _cifar_batch(src / fname, x, y, label_key)
        ref["train_x"].append(x)
        ref["train_y"] += y
    ref["test_x"] = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ref["test_y"] = [1, 0, 2]
    _cifar_batch(src / test_file, ref["test_x"], ref["test_y"], label_key)
    with open(src / meta_file, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    ref["train_x"] = np.concatenate(ref["train_x"])
    ref["md5s"] = {f: md5sum(src / f) for f in [*train_files, test_file, meta_file]}
    archive = tmp / ("cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=folder)
    return archive, ref


def _trust_miniature_md5s(monkeypatch, name: str, md5s: dict) -> None:
    """torchvision checks each extracted file against the real archive's md5s: point it at ours."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [[f, md5s[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5s[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_via_data_main_and_load_cifar(server, tmp_path, monkeypatch, name):
    archive, ref = make_cifar_archive(tmp_path, name)
    url = server.add(archive.name, archive.read_bytes())
    _trust_miniature_md5s(monkeypatch, name, ref["md5s"])
    out = tmp_path / "data"
    prepared = data.main(["--dataset", name, "--url", url, "--md5", md5sum(archive), "--data_dir", str(out)])
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    assert prepared == {name: out / folder}
    n_requests = len(server.requests)
    x, y, classes = load_cifar(name, out, train=True)
    assert len(server.requests) == n_requests  # already there: no download
    assert x.dtype == np.uint8 and x.shape == (len(ref["train_y"]), 32, 32, 3) and y.dtype == np.int64
    assert np.array_equal(x, ref["train_x"]) and y.tolist() == ref["train_y"] and classes == ref["classes"]
    tx, ty, _ = load_cifar(name, out, train=False, download=False)
    assert np.array_equal(tx, ref["test_x"]) and ty.tolist() == ref["test_y"]


def test_cifar_wrong_md5_extracts_nothing(server, tmp_path):
    archive, _ = make_cifar_archive(tmp_path, "cifar10")
    url = server.add(archive.name, archive.read_bytes())
    out = tmp_path / "data"
    with pytest.raises(UserError, match="md5 mismatch"):
        ensure_cifar("cifar10", out, url=url, md5="1" * 32)
    assert [p.name for p in out.iterdir() if not p.name.endswith(".lock")] == []


def test_cifar_missing_without_download_names_the_command(tmp_path):
    with pytest.raises(DataMissingError) as err:
        load_cifar("cifar10", tmp_path, train=True, download=False)
    message = str(err.value)
    assert "\n" not in message and "python data.py --dataset cifar10" in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "cifar-10-python.tar.gz" in message


@pytest.mark.parametrize("dataset", ["cifar10", "tiny-imagenet", "all"])
def test_data_dir_that_is_a_file_is_one_line(tmp_path, dataset):
    (tmp_path / "afile").write_text("x")
    out = run_data("--dataset", dataset, "--data_dir", str(tmp_path / "afile"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == f"error: cannot use {tmp_path / 'afile'} as the data folder (--data_dir): it is a file\n"
    assert (tmp_path / "afile").read_text() == "x"
