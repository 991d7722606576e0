"""utils/data/tinyimagenet.py on a miniature archive with the real Tiny-ImageNet layout, served locally.

    python -m pytest tests/test_tinyimagenet.py -q

`make_tiny_imagenet_zip` is also used by tests/test_data_script.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import utils.data.tinyimagenet as tin
from test_download import LocalServer, closed_port
from utils.data.download import ChecksumError
from utils.data.tinyimagenet import load_tiny_imagenet, prepare_tiny_imagenet, tiny_imagenet_ready
from utils.errors import DataMissingError, UserError

WNIDS = ("n09999999", "n01443537", "n05555555")  # deliberately NOT sorted, like the real wnids.txt
# One far-apart colour per class, so a decoded image tells which class it came from.
COLOURS = {"n09999999": (230, 30, 30), "n01443537": (30, 230, 30), "n05555555": (30, 30, 230)}
TRAIN_PER_CLASS = 3
# val file -> wnid, interleaved so that file order and class order disagree
VAL = {"val_0.JPEG": "n05555555", "val_1.JPEG": "n09999999", "val_2.JPEG": "n01443537",
       "val_3.JPEG": "n09999999", "val_4.JPEG": "n05555555", "val_5.JPEG": "n01443537"}
GRAY_TRAIN = "n01443537_1.JPEG"  # this one is stored as a single-channel JPEG
GRAY_LEVEL = 128


def _jpeg(colour: tuple[int, int, int] | None) -> bytes:
    img = Image.new("L", (64, 64), GRAY_LEVEL) if colour is None else Image.new("RGB", (64, 64), colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_tiny_imagenet_zip(path: Path) -> str:
    """Write a miniature tiny-imagenet-200.zip (real layout) to `path`; return its md5."""
    top = "tiny-imagenet-200/"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(top, b"")
        zf.writestr(top + "wnids.txt", "\n".join(WNIDS) + "\n")
        zf.writestr(top + "words.txt", "n01443537\tgoldfish, Carassius auratus\nn05555555\tthing\n"
                    "n09999999\tother thing, stuff\nn00000001\tunused class\n")
        for wnid in WNIDS:
            boxes = []
            for i in range(TRAIN_PER_CLASS):
                name = f"{wnid}_{i}.JPEG"
                zf.writestr(f"{top}train/{wnid}/images/{name}", _jpeg(None if name == GRAY_TRAIN else COLOURS[wnid]))
                boxes.append(f"{name}\t0\t0\t63\t63")
            zf.writestr(f"{top}train/{wnid}/{wnid}_boxes.txt", "\n".join(boxes) + "\n")
        for name, wnid in VAL.items():
            zf.writestr(f"{top}val/images/{name}", _jpeg(COLOURS[wnid]))
        zf.writestr(top + "val/val_annotations.txt", "".join(f"{n}\t{w}\t1\t2\t60\t61\n" for n, w in VAL.items()))
        for i in range(2):
            zf.writestr(f"{top}test/images/test_{i}.JPEG", _jpeg((120, 120, 120)))
    return hashlib.md5(path.read_bytes()).hexdigest()


def nearest_class(image: np.ndarray) -> str:
    mean = image.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda w: np.abs(mean - np.array(COLOURS[w])).sum())


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[bytes, str]:
    path = tmp_path_factory.mktemp("zip") / "tiny-imagenet-200.zip"
    md5 = make_tiny_imagenet_zip(path)
    return path.read_bytes(), md5


@pytest.fixture
def server():
    with LocalServer() as s:
        yield s


def test_prepare_from_mirror_and_read_arrays(server, archive, tmp_path):
    data, md5 = archive
    url = server.add("tiny-imagenet-200.zip", data)
    root = prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    assert root == tmp_path / "tiny-imagenet-200" and tiny_imagenet_ready(tmp_path)
    train_x, train_y, train_classes = load_tiny_imagenet(tmp_path, "train", download=False)
    val_x, val_y, val_classes = load_tiny_imagenet(tmp_path, "val", download=False)
    # One class map for both splits, equal to the sorted wnids (not wnids.txt's order).
    assert train_classes == val_classes == sorted(WNIDS) != list(WNIDS)
    assert train_x.shape == (3 * TRAIN_PER_CLASS, 64, 64, 3) and val_x.shape == (len(VAL), 64, 64, 3)
    assert train_x.dtype == val_x.dtype == np.uint8 and train_y.dtype == val_y.dtype == np.int64
    assert isinstance(train_x, np.memmap) and not train_x.flags.writeable
    # Val labels follow val_annotations.txt: checked by file name and by the pixels themselves.
    val_files = (root / "cache" / "val_files.txt").read_text().split()
    assert [VAL[Path(f).name] for f in val_files] == [val_classes[y] for y in val_y]
    assert [nearest_class(x) for x in val_x] == [val_classes[y] for y in val_y]
    # Train labels follow the folder each image came from.
    train_files = (root / "cache" / "train_files.txt").read_text().split()
    assert [f.split("/")[1] for f in train_files] == [train_classes[y] for y in train_y]
    for f, x, y in zip(train_files, train_x, train_y):
        if f.endswith(GRAY_TRAIN):  # grayscale JPEG -> 3 equal channels
            assert x.shape == (64, 64, 3) and np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])
            assert abs(int(x.mean()) - GRAY_LEVEL) <= 3
        else:
            assert nearest_class(x) == train_classes[y]
    # val arranged by class on disk; test/ left out of the cache.
    assert sorted(p.name for p in (root / "val" / "n05555555" / "images").iterdir()) == ["val_0.JPEG", "val_4.JPEG"]
    assert not (root / "val" / "images").exists()
    assert all("test" not in f for f in train_files + val_files)
    assert json.loads((root / "cache" / "meta.json").read_text())["class_words"]["n01443537"] == "goldfish"


def test_second_prepare_does_nothing(server, archive, tmp_path):
    data, md5 = archive
    url = server.add("tiny-imagenet-200.zip", data)
    root = prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    stamps = {p: p.stat().st_mtime_ns for p in (root / "cache").iterdir()}
    requests_before = len(server.requests)
    # Even pointed at a dead host it succeeds: nothing is fetched, decoded or rewritten.
    assert prepare_tiny_imagenet(tmp_path, url=f"http://127.0.0.1:{closed_port()}/x.zip", md5=md5) == root
    assert len(server.requests) == requests_before
    assert {p: p.stat().st_mtime_ns for p in (root / "cache").iterdir()} == stamps


def test_connection_cut_mid_download_is_survived(server, archive, tmp_path):
    data, md5 = archive
    url = server.add("tiny-imagenet-200.zip", data, mode="drop_once")
    prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    assert tiny_imagenet_ready(tmp_path)
    ranges = server.ranges("tiny-imagenet-200.zip")
    assert ranges[0] is None and ranges[1].startswith("bytes=")


def test_interrupted_cache_build_is_redone(server, archive, tmp_path, monkeypatch):
    data, md5 = archive
    url = server.add("tiny-imagenet-200.zip", data)
    real_decode, calls = tin.decode_image, []

    def crash_after_four(path, size=64):
        calls.append(path)
        if len(calls) > 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        return real_decode(path, size)

    monkeypatch.setattr(tin, "decode_image", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    root = tmp_path / "tiny-imagenet-200"
    assert not tiny_imagenet_ready(tmp_path) and not (root / "cache").exists()
    assert (root / "cache.partial").exists()  # what an interrupted run leaves behind
    monkeypatch.setattr(tin, "decode_image", real_decode)
    # Also a leftover half extraction next to it: must not confuse the rerun.
    (tmp_path / ".tiny-imagenet-200.extracting").mkdir()
    n_requests = len(server.requests)
    prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    assert len(server.requests) == n_requests  # the archive and the tree were reused
    assert not (root / "cache.partial").exists()
    x, y, _ = load_tiny_imagenet(tmp_path, "train", download=False)
    assert len(x) == len(y) == 3 * TRAIN_PER_CLASS


def test_interrupted_extraction_is_redone(archive, tmp_path):
    data, md5 = archive
    (tmp_path / "tiny-imagenet-200.zip").write_bytes(data)  # placed by hand
    junk = tmp_path / ".tiny-imagenet-200.extracting" / "tiny-imagenet-200"
    junk.mkdir(parents=True)
    (junk / "wnids.txt").write_text("n00000000\n")
    prepare_tiny_imagenet(tmp_path, md5=md5, download=False)
    _, _, classes = load_tiny_imagenet(tmp_path, "val", download=False)
    assert classes == sorted(WNIDS)
    assert not (tmp_path / ".tiny-imagenet-200.extracting").exists()


def test_wrong_md5_extracts_nothing(server, archive, tmp_path):
    data, _ = archive
    url = server.add("tiny-imagenet-200.zip", data)
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        prepare_tiny_imagenet(tmp_path, url=url, md5="0" * 32)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_missing_without_download_names_the_command(tmp_path):
    for call in (lambda: prepare_tiny_imagenet(tmp_path, download=False),
                 lambda: load_tiny_imagenet(tmp_path, "train", download=False)):
        with pytest.raises(DataMissingError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and str(tmp_path / "tiny-imagenet-200") in message
        assert "python data.py --dataset tiny-imagenet" in message and "tiny-imagenet-200.zip" in message


def test_offline_download_fails_fast_with_data_missing(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataMissingError, match="download failed"):
        load_tiny_imagenet(tmp_path, "train")  # default URL: DNS fails / socket blocked in tests
    assert time.monotonic() - start < 15


def test_force_rebuilds_from_the_archive_without_network(server, archive, tmp_path):
    data, md5 = archive
    url = server.add("tiny-imagenet-200.zip", data)
    root = prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    (root / "cache" / "meta.json").write_text("{}")  # damage the cache: not ready any more
    assert not tiny_imagenet_ready(tmp_path)
    n_requests = len(server.requests)
    prepare_tiny_imagenet(tmp_path, url=f"http://127.0.0.1:{closed_port()}/x.zip", md5=md5, force=True)
    assert len(server.requests) == n_requests and tiny_imagenet_ready(tmp_path)
    assert load_tiny_imagenet(tmp_path, "val", download=False)[1].shape == (len(VAL),)


def test_full_disk_while_building_the_cache_is_one_line(server, archive, tmp_path, monkeypatch):
    """ENOSPC when the array is allocated (before any write into its memory map): one line, no temp file."""
    import errno

    data, md5 = archive
    url = server.add("tiny-imagenet-200.zip", data)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    root = tmp_path / "tiny-imagenet-200"
    with pytest.raises(UserError) as info:
        prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    assert str(info.value) == f"cannot write the image cache in {root / 'cache.partial'}: No space left on device"
    assert not [p.name for p in (root / "cache.partial").iterdir() if "tmp" in p.name]
    monkeypatch.undo()
    prepare_tiny_imagenet(tmp_path, url=url, md5=md5)
    assert tiny_imagenet_ready(tmp_path)
