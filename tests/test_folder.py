"""utils/folder.py: ImageFolder trees to cached uint8 arrays, one class map, clear errors.

    python -m pytest tests/test_folder.py -q
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

import utils.folder as folder
from utils.errors import UserError
from utils.folder import has_split, load_image_folder


def _image(path, size, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


@pytest.fixture
def tree(tmp_path):
    """train/{cat,dog,eel} with non-square PNGs (one grayscale, one nested), test/{cat,eel}."""
    root = tmp_path / "imgs"
    _image(root / "train" / "dog" / "d0.png", (50, 30), 1)
    _image(root / "train" / "dog" / "d1.png", (20, 40), 2, mode="L")
    _image(root / "train" / "cat" / "c0.png", (33, 33), 3)
    _image(root / "train" / "cat" / "sub" / "c1.png", (70, 45), 4)
    _image(root / "train" / "eel" / "e0.png", (16, 16), 5)
    (root / "train" / "eel" / "notes.txt").write_text("not an image")
    _image(root / "test" / "cat" / "t0.png", (40, 24), 6)
    _image(root / "test" / "eel" / "t1.png", (24, 40), 7)
    return root


def test_arrays_match_torchvision_resize_and_center_crop(tree):
    x, y, classes = load_image_folder(tree, "train", image_size=24)
    assert classes == ["cat", "dog", "eel"]
    assert x.shape == (5, 24, 24, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert y.tolist() == [0, 0, 1, 1, 2]
    files = ["cat/c0.png", "cat/sub/c1.png", "dog/d0.png", "dog/d1.png", "eel/e0.png"]
    reference = T.Compose([T.Resize(24), T.CenterCrop(24)])  # independent implementation
    for row, rel in zip(x, files):
        expected = np.asarray(reference(Image.open(tree / "train" / rel).convert("RGB")))
        assert np.abs(row.astype(int) - expected.astype(int)).max() <= 1, rel


def test_test_split_uses_train_class_map(tree):
    x, y, classes = load_image_folder(tree, "test", image_size=16)
    assert classes == ["cat", "dog", "eel"] and y.tolist() == [0, 2] and x.shape == (2, 16, 16, 3)


def test_cache_reused_then_rebuilt_when_files_change(tree, monkeypatch):
    load_image_folder(tree, "train", image_size=16)
    assert (tree / ".cache" / "train_16px_images.npy").is_file()
    calls = []
    real = folder.decode_folder_image
    monkeypatch.setattr(folder, "decode_folder_image", lambda p, s: calls.append(p) or real(p, s))
    x, _, _ = load_image_folder(tree, "train", image_size=16)
    assert calls == [] and isinstance(x, np.memmap)  # cached: nothing decoded
    load_image_folder(tree, "train", image_size=20)  # another size: its own cache
    assert len(calls) == 5
    _image(tree / "train" / "dog" / "d2.png", (30, 30), 8)
    x, y, _ = load_image_folder(tree, "train", image_size=16)
    assert len(calls) == 11 and len(x) == 6 and y.tolist().count(1) == 3
    # Same names, same count, new content (mtime/size change): rebuilt as well.
    _image(tree / "train" / "eel" / "e0.png", (16, 16), 99)
    os.utime(tree / "train" / "eel" / "e0.png", ns=(1, 1))
    x, _, _ = load_image_folder(tree, "train", image_size=16)
    assert len(calls) == 17
    assert np.array_equal(x[-1], np.asarray(Image.open(tree / "train" / "eel" / "e0.png").convert("RGB")))


def test_missing_test_split_says_so(tree):
    import shutil
    shutil.rmtree(tree / "test")
    assert not has_split(tree, "test")
    with pytest.raises(UserError, match="no test split"):
        load_image_folder(tree, "test")


def test_user_errors(tmp_path, tree):
    with pytest.raises(UserError, match="not found"):
        load_image_folder(tmp_path / "nowhere", "train")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        load_image_folder(tmp_path / "empty", "train")
    _image(tmp_path / "one" / "train" / "only" / "x.png", (8, 8), 0)
    with pytest.raises(UserError, match="only one class"):
        load_image_folder(tmp_path / "one", "train")
    _image(tree / "test" / "fox" / "f.png", (8, 8), 0)
    with pytest.raises(UserError, match="does not have"):
        load_image_folder(tree, "test")
    (tree / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode"):
        load_image_folder(tree, "train")
