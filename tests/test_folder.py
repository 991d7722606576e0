"""utils/data/folder.py: ImageFolder trees to cached uint8 arrays, one class map, clear errors.

    python -m pytest tests/test_folder.py -q
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

import utils.data.folder as folder
from utils.data.folder import has_split, load_image_folder
from utils.errors import UserError


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


# --- issue 14: the cache under concurrency, full disks and odd images --------------------------

def test_class_folder_without_usable_image_is_named(tree):
    """A class holding only .gif files (or nothing) is an error naming it, not a silently dropped class."""
    (tree / "train" / "gifs").mkdir()
    (tree / "train" / "gifs" / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(UserError, match=r"no usable image: gifs \(has only \.gif\)"):
        load_image_folder(tree, "train", image_size=16)
    (tree / "train" / "gifs" / "a.gif").unlink()
    with pytest.raises(UserError, match=r"no usable image: gifs \(empty\)"):
        load_image_folder(tree, "train", image_size=16)


def test_skipped_files_are_counted_in_one_warning(tree, caplog, monkeypatch):
    import logging
    monkeypatch.setattr(logging.getLogger("simclr"), "propagate", True)  # train.py's setup_logging turns it off
    (tree / "train" / "dog" / "x.gif").write_bytes(b"GIF89a")
    (tree / "train" / "dog" / "y.gif").write_bytes(b"GIF89a")
    (tree / "train" / "cat" / "gone.png").symlink_to(tree / "nowhere.png")
    (tree / "train" / "cat" / ".DS_Store").write_bytes(b"")  # hidden: not counted
    with caplog.at_level("WARNING", logger="simclr.folder"):
        x, _, classes = load_image_folder(tree, "train", image_size=16)
    assert len(x) == 5 and classes == ["cat", "dog", "eel"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "skipped 4 file(s)" in warnings[0] and "2 .gif, 1 .txt, 1 broken link" in warnings[0]


def test_adding_a_class_rebuilds_the_test_cache(tree):
    """The fingerprint includes the class map: a new train class renumbers test's labels, by itself."""
    _, y, _ = load_image_folder(tree, "test", image_size=16)
    assert y.tolist() == [0, 2]
    _image(tree / "train" / "bee" / "b0.png", (16, 16), 11)
    x, y, classes = load_image_folder(tree, "test", image_size=16)
    assert classes == ["bee", "cat", "dog", "eel"] and y.tolist() == [1, 3] and len(x) == 2


def test_every_undecodable_image_is_reported_together(tree):
    for name in ("bad1.png", "bad2.png"):
        (tree / "train" / "cat" / name).write_bytes(b"not a png")
    (tree / "train" / "dog" / "cut.png").write_bytes((tree / "train" / "dog" / "d0.png").read_bytes()[:60])
    with pytest.raises(UserError) as info:
        load_image_folder(tree, "train", image_size=16)
    message = str(info.value)
    assert "\n" not in message and message.startswith("3 of 8 images could not be used")
    assert all(name in message for name in ("bad1.png", "bad2.png", "cut.png"))
    assert not list((tree / ".cache").glob("*.npy")) and not list((tree / ".cache").glob(".*tmp*"))


def test_pixel_limit_names_the_file_and_can_be_raised(tree, monkeypatch):
    """A decompression-bomb-sized image: one line with the file and the limit; the env var lifts it."""
    _image(tree / "train" / "eel" / "big.png", (60, 40), 12)
    monkeypatch.setenv("SIMCLR_MAX_IMAGE_PIXELS", "2000")
    with pytest.raises(UserError) as info:
        load_image_folder(tree, "train", image_size=16)
    message = str(info.value)
    assert message.startswith("2 of 6 images could not be used")  # both named: big.png and sub/c1.png
    assert "big.png is 60 x 40 = 2,400 pixels, over the limit of 2,000" in message
    assert "SIMCLR_MAX_IMAGE_PIXELS=2400" in message and "c1.png is 70 x 45 = 3,150 pixels" in message
    monkeypatch.setenv("SIMCLR_MAX_IMAGE_PIXELS", "2400")
    with pytest.raises(UserError, match="1 of 6 images could not be used: .*c1.png is 70 x 45"):
        load_image_folder(tree, "train", image_size=16)
    monkeypatch.setenv("SIMCLR_MAX_IMAGE_PIXELS", "0")
    assert len(load_image_folder(tree, "train", image_size=16)[0]) == 6
    monkeypatch.setenv("SIMCLR_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(UserError, match="SIMCLR_MAX_IMAGE_PIXELS must be a number"):
        load_image_folder(tree, "train", image_size=20)


def test_full_disk_is_one_line_and_leaves_no_temp_file(tree, monkeypatch):
    """ENOSPC when the cache file is allocated (before any mmap write, which would be SIGBUS)."""
    import errno

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(UserError) as info:
        load_image_folder(tree, "train", image_size=16)
    assert str(info.value) == f"cannot write the image cache in {tree / '.cache'}: No space left on device"
    assert sorted(p.name for p in (tree / ".cache").iterdir()) == ["train_16px.lock"]
    monkeypatch.undo()
    assert len(load_image_folder(tree, "train", image_size=16)[0]) == 5


def test_full_disk_on_a_real_tmpfs(tmp_path):
    """The same on a 256 KiB tmpfs (only where this test may mount one): exit 2, the message, no temp file."""
    import shutil
    import subprocess
    import sys

    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for i in range(30):
            _image(mnt / "train" / ("a" if i % 2 else "b") / f"{i}.png", (8, 8), i)
        code = ("import sys; from utils.errors import run_cli; from utils.data.folder import load_image_folder; "
                f"run_cli(lambda argv: load_image_folder({str(mnt)!r}, 'train', 96), [])")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert proc.returncode == 2, proc.stderr  # 30 x 96 x 96 x 3 = 810 KiB does not fit: not SIGBUS (-7)
        assert proc.stderr.strip() == f"error: cannot write the image cache in {mnt / '.cache'}: No space left on device"
        assert not [p.name for p in (mnt / ".cache").iterdir() if "tmp" in p.name]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_stale_temp_of_a_killed_builder_is_removed(tree):
    (tree / ".cache").mkdir()
    stale = tree / ".cache" / ".train_16px_images.abcd1234.tmp.npy"
    stale.write_bytes(b"\0" * 1000)
    load_image_folder(tree, "train", image_size=16)
    assert not stale.exists()


_BUILDER = """
import sys, time
import utils.data.folder as folder
real, calls = folder.decode_folder_image, []
def slow(path, size):
    calls.append(path)
    time.sleep(0.002)
    return real(path, size)
folder.decode_folder_image = slow
print('ready', flush=True)
sys.stdin.readline()  # start together
x, y, classes = folder.load_image_folder(sys.argv[1], 'train', 16)
print(len(calls), int(x.astype('int64').sum()), flush=True)
"""


def test_two_processes_building_one_cache_at_once(tmp_path):
    """The second waits for the first and reuses its cache: one decode in all, the same arrays, no crash."""
    import subprocess
    import sys

    root = tmp_path / "imgs"
    for i in range(120):
        _image(root / "train" / f"c{i % 3}" / f"{i}.png", (20, 20), i)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(root)], cwd=here, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(tuple(int(v) for v in out.split()))
    assert sorted(n for n, _ in results) == [0, 120]  # one built it, the other reused it
    assert results[0][1] == results[1][1]
    assert not [p.name for p in (root / ".cache").iterdir() if "tmp" in p.name]


def test_ctrl_c_stops_the_decode_without_waiting_for_it(tmp_path):
    from utils.data.decode import decode_into
    import time

    calls = []

    def decode(path, size):
        calls.append(path)
        if path == files[2]:
            raise KeyboardInterrupt  # as if Ctrl-C arrived mid-way
        time.sleep(0.001)
        return np.zeros((size, size, 3), np.uint8)

    files = [tmp_path / f"{i}.png" for i in range(5000)]
    with pytest.raises(KeyboardInterrupt):
        decode_into(np.zeros((5000, 2, 2, 3), np.uint8), files, decode, "test")
    time.sleep(0.5)  # what still runs after the return would show up here
    assert len(calls) < 50  # queued chunks cancelled, running ones stopped at their next image (not 128 each)


def test_cache_files_get_the_usual_permissions(tree):
    """Temp files are created 0600; the finished cache has the mode a plain open() gives (shared data folders)."""
    umask = os.umask(0o022)
    os.umask(umask)
    load_image_folder(tree, "train", image_size=16)
    for name in ("train_16px_images.npy", "train_16px_labels.npy", "train_16px_meta.json"):
        assert (tree / ".cache" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
