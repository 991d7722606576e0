"""The real datasets of utils/data/registry.py: digits (scikit-learn), mnist / fashion_mnist (idx files)
and stl10 (binary archive), with miniature files in the real formats made here and served from
127.0.0.1; train.py and test.py end to end on each.

    python -m pytest tests/test_real_datasets.py -q
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import test as test_script
import train
from test_download import closed_port, server  # noqa: F401  (a local HTTP server on 127.0.0.1)
from utils.checkpoint import load_checkpoint
from utils.data import digits, mnist, registry, stl10
from utils.data.constants import DIGITS_MEAN, DIGITS_STD
from utils.data.datasets import load_split
from utils.errors import UserError, run_cli

SMALL_RUN = ["--data_scale", "1", "--batch_size", "16", "--steps", "1", "--device", "cpu", "--workers", "0",
             "--quiet"]
SMALL_PROBE = ["--test_num_epochs", "2", "--device", "cpu", "--workers", "0", "--quiet"]


# ---- digits -------------------------------------------------------------------------------------

def _train_refuses_in_one_line(dataset: str, data_dir: Path, run: Path, expected: str, capsys) -> None:
    """train.py on a bad file: one line starting `error: <expected>`, exit 2, and nothing written in data_dir
    (no file added, none half-written) and no run folder."""
    before = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*") if not p.name.endswith(".lock"))
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, ["--dataset", dataset, "--data_dir", str(data_dir), "--run_dir", str(run), *SMALL_RUN])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: " + expected), err
    after = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*") if not p.name.endswith(".lock"))
    assert after == before and not run.exists()


def _sklearn_pairs() -> list[tuple[bytes, int]]:
    """Every (image bytes in 0..16, label) of scikit-learn's digits, as an independent reference."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return sorted((img.astype(np.uint8).tobytes(), int(y)) for img, y in zip(bunch.images, bunch.target))


def test_digits_split_is_stratified_seeded_disjoint_and_covers_all():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert train.images.shape == (1438, 8, 8, 3) and test.images.shape == (359, 8, 8, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.classes == test.classes == [str(d) for d in range(10)]
    for split in (train, test):  # grey replicated to RGB, 0..16 scaled to the full 0..255
        assert np.array_equal(split.images[..., 0], split.images[..., 2])
        assert split.images.min() == 0 and split.images.max() == 255
    # Every image once, in train or test: undo the 255/16 scaling and compare with scikit-learn's own.
    ours = [((img[..., 0].astype(np.float64) * 16 / 255).round().astype(np.uint8).tobytes(), int(y))
            for part in (train, test) for img, y in zip(part.images, part.labels)]
    assert sorted(ours) == _sklearn_pairs()
    # Stratified: each class gives round(0.2 * n) images to test.
    all_labels = np.concatenate([train.labels, test.labels])
    for cls in range(10):
        n = int((all_labels == cls).sum())
        assert int((test.labels == cls).sum()) == round(digits.DIGITS_TEST_FRACTION * n)
    # Seeded: the same indices every call; another seed gives another split of the same size.
    a_train, a_test = digits.digits_split_indices(all_labels, 0.2, 0)
    b_train, b_test = digits.digits_split_indices(all_labels, 0.2, 0)
    c_train, c_test = digits.digits_split_indices(all_labels, 0.2, 1)
    assert np.array_equal(a_test, b_test) and len(c_test) == len(a_test) and not np.array_equal(a_test, c_test)
    assert not set(a_train) & set(a_test) and len(a_train) + len(a_test) == len(all_labels)


def test_digits_mean_std_constants_are_the_train_split_statistics():
    x = load_split("digits", "train").images.astype(np.float64) / 255
    assert DIGITS_MEAN == pytest.approx(tuple(x.mean(axis=(0, 1, 2))), abs=1e-4)
    assert DIGITS_STD == pytest.approx(tuple(x.std(axis=(0, 1, 2))), abs=1e-4)


def test_digits_uint8_scaling_endpoints():
    out = digits.to_uint8_rgb(np.array([[[0, 8, 16, 1]]], dtype=np.float64))
    assert out.shape == (1, 1, 4, 3) and out[0, 0, :, 1].tolist() == [0, 128, 255, 16]


def test_digits_without_scikit_learn_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # neither found nor imported, as if it were not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    digits._digits_arrays.cache_clear()
    try:
        with pytest.raises(UserError, match=r"^the digits dataset needs scikit-learn: pip install 'scikit-learn>=1.3'$"):
            load_split("digits", "train")
    finally:
        digits._digits_arrays.cache_clear()


def test_registry_is_what_every_script_offers():
    import data
    import simclr_train

    for name in ("digits", "cifar10", "cifar100", "tiny-imagenet", "imagenet", "synthetic", "folder"):
        assert name in registry.DATASET_CHOICES
        assert name in test_script.EVAL_DATASETS
    assert train.parse_args(["--dataset", "digits"]).dataset == "digits"
    assert test_script.parse_args(["--model_path", "x", "--dataset", "digits"]).dataset == "digits"
    assert simclr_train.parse_args(["--dataset", "digits", "--eval_dataset", "digits"]).eval_dataset == "digits"
    assert data.parse_args(["--dataset", "digits"]).dataset == "digits"
    assert registry.DATASETS["digits"].default_image_size == 16 and registry.DATASETS["cifar10"].default_image_size == 32
    with pytest.raises(UserError, match="has no split 'unlabeled'"):
        load_split("digits", "unlabeled")
    with pytest.raises(UserError, match="supervised needs train"):
        train.parse_args(["--dataset", "stl10", "--train_type", "supervised", "--train_split", "train+unlabeled"])
    with pytest.raises(UserError, match=r"cifar10 has the splits \['train', 'test'\]"):
        train.parse_args(["--dataset", "cifar10", "--train_split", "unlabeled"])
    # The study's subset sizes for an unbalanced set are counted, so they match the subsets train.py takes.
    from utils.data.datasets import stratified_subset

    sizes = simclr_train.subset_sizes(simclr_train.parse_args(["--dataset", "digits", "--eval_dataset", "digits"]))
    labels = load_split("digits", "train").labels
    assert [sizes(f) for f in (0.1, 0.5, 1.0)] == [len(stratified_subset(labels, f, 0)) for f in (0.1, 0.5, 1.0)]


def test_data_py_digits_says_nothing_to_download(tmp_path, capsys):
    import data

    assert data.main(["--dataset", "digits", "--data_dir", str(tmp_path / "d")]) == {"digits": None}
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "scikit-learn" in out and "nothing to download" in out
    assert not (tmp_path / "d").exists()
    with pytest.raises(UserError, match="nothing to download"):
        data.parse_args(["--dataset", "digits", "--url", "http://127.0.0.1/x"])


@pytest.mark.slow
def test_train_and_test_end_to_end_on_digits(tmp_path, monkeypatch, capsys):
    described = train.describe_data(train.parse_args(["--dataset", "digits"]))
    assert described["image_size"] == 16 and described["stem"] == "cifar"  # the digits default: 8 px upsampled
    run = tmp_path / "run"
    flags = ["--dataset", "digits", "--train_type", "simclr", "--run_dir", str(run), "--image_size", "8", *SMALL_RUN]
    train.main(flags)
    ckpt = load_checkpoint(run / "final.pth")
    assert ckpt["data"]["image_size"] == 8
    assert ckpt["data"]["split"] == f"train ({digits.split_rule(0.2, 0)})"
    assert ckpt["data"]["num_train"] == 1438
    result = test_script.main(["--model_path", str(run / "final.pth"), "--dataset", "digits", *SMALL_PROBE])
    assert result["test_images_evaluated"] == 359 and 0 <= result["test_accuracy"] <= 100

    # Another split of digits is another dataset: the unfinished run is not resumed on it.
    (run / "final.pth").unlink()
    monkeypatch.setattr(digits, "DIGITS_SPLIT_SEED", 1)
    monkeypatch.setitem(registry.DATASETS, "digits",
                        dataclasses.replace(digits.DIGITS, split_rule=digits.split_rule(0.2, 1)))
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, flags)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "was trained on other data (split: " in err
    assert "seed 0)" in err and "seed 1)" in err and err.startswith("error: ")


# ---- mnist / fashion_mnist: miniature idx files -------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An idx file as published: big-endian magic, one uint32 per dimension, then the uint8 data."""
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def make_idx(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_y": np.arange(n_train) % 10, "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_y": (np.arange(n_test) + 3) % 10}


def idx_files(ref: dict[str, np.ndarray], gz: bool = True) -> dict[str, bytes]:
    """{file name: bytes} of the four files (gzip-compressed with a fixed mtime when `gz`)."""
    raw = {"train-images-idx3-ubyte": idx_bytes(ref["train_x"], mnist.IDX_IMAGES_MAGIC),
           "train-labels-idx1-ubyte": idx_bytes(ref["train_y"], mnist.IDX_LABELS_MAGIC),
           "t10k-images-idx3-ubyte": idx_bytes(ref["test_x"], mnist.IDX_IMAGES_MAGIC),
           "t10k-labels-idx1-ubyte": idx_bytes(ref["test_y"], mnist.IDX_LABELS_MAGIC)}
    if not gz:
        return raw
    return {f"{name}.gz": gzip.compress(data, mtime=0) for name, data in raw.items()}


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def idx_source(monkeypatch):
    """Point a dataset's mirrors and md5s (of the .gz files and of their content) at miniature files:
    idx_source(name, files, mirrors, system_dirs)."""
    def use(name: str, files: dict[str, bytes], mirrors: tuple[str, ...] | None = None,
            system_dirs: tuple[str, ...] = ()) -> None:
        src = mnist.IDX_SOURCES[name]
        md5s = {n: hashlib.md5(d).hexdigest() for n, d in files.items() if n.endswith(".gz")}
        content = {n.removesuffix(".gz"): _content_md5(n, d) for n, d in files.items()}
        mirrors = mirrors or (f"http://127.0.0.1:{closed_port()}/",)  # offline: refused at once
        monkeypatch.setitem(mnist.IDX_SOURCES, name, dataclasses.replace(
            src, md5s=md5s or src.md5s, content_md5s=content, mirrors=mirrors, system_dirs=system_dirs))
    return use


def _content_md5(name: str, data: bytes) -> str:
    """md5 of a file's idx bytes (its own bytes where they do not decompress: the truncated-gzip case)."""
    try:
        return hashlib.md5(gzip.decompress(data) if name.endswith(".gz") else data).hexdigest()
    except EOFError:
        return hashlib.md5(data).hexdigest()


def recompressed(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same content gzip-compressed again at another level and time, as Debian's package ships it:
    every .gz md5 differs from the published one."""
    return {n: gzip.compress(gzip.decompress(d), compresslevel=6, mtime=1_591_315_200) for n, d in files.items()}


def flip_pixel(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    """`files` with one image byte of `name` changed (well past the header): it still parses."""
    out = dict(files)
    data = bytearray(gzip.decompress(out[name]) if name.endswith(".gz") else out[name])
    data[100] ^= 0xFF
    out[name] = gzip.compress(bytes(data), mtime=0) if name.endswith(".gz") else bytes(data)
    return out


def _assert_split(arrays, x: np.ndarray, y: np.ndarray) -> None:
    assert arrays.images.dtype == np.uint8 and arrays.images.shape == (len(x), 28, 28, 3)
    assert all(np.array_equal(arrays.images[..., c], x) for c in range(3)) and arrays.labels.tolist() == y.tolist()


def test_mnist_downloads_resume_after_a_cut_and_a_rerun_is_a_no_op(server, idx_source, tmp_path, capsys):
    import data

    ref = make_idx()
    files = idx_files(ref)
    for name, blob in files.items():  # the first mirror has nothing (404); the second cuts one file halfway
        server.add(f"ok/{name}", blob, mode="drop_once" if name.startswith("train-images") else "ok")
    idx_source("mnist", files, mirrors=(server.url("missing/"), server.url("ok/")))
    prepared = data.main(["--dataset", "mnist", "--data_dir", str(tmp_path)])
    assert prepared == {"mnist": tmp_path / "MNIST" / "raw"}
    ranges = server.ranges("ok/train-images-idx3-ubyte.gz")
    assert ranges[0] is None and ranges[1].startswith("bytes=")  # cut mid-body, then resumed
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(files)  # no .part left
    _assert_split(load_split("mnist", "train", tmp_path), ref["train_x"], ref["train_y"])
    _assert_split(load_split("mnist", "test", tmp_path), ref["test_x"], ref["test_y"])
    capsys.readouterr()
    n_requests = len(server.requests)
    data.main(["--dataset", "mnist", "--data_dir", str(tmp_path)])
    assert "already prepared" in capsys.readouterr().out and len(server.requests) == n_requests


def test_mnist_download_with_a_wrong_md5_is_refused(server, idx_source, tmp_path, capsys):
    import data

    files = idx_files(make_idx())
    for name, blob in files.items():
        altered = blob[:20] + bytes([blob[20] ^ 0xFF]) + blob[21:]  # one byte flipped
        server.add(f"m/{name}", altered if "t10k-labels" in name else blob)
    idx_source("mnist", files, mirrors=(server.url("m/"),))
    with pytest.raises(SystemExit) as info:
        run_cli(data.main, ["--dataset", "mnist", "--data_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: md5 mismatch for t10k-labels-idx1-ubyte.gz downloaded from http://127.0.0.1")
    raw = tmp_path / "MNIST" / "raw"
    assert not (raw / "t10k-labels-idx1-ubyte.gz").exists() and not (raw / "t10k-labels-idx1-ubyte.gz.part").exists()


@pytest.mark.parametrize("layout", ["flat", "raw"])
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_from_a_local_folder(idx_source, tmp_path, layout, gz, name):
    ref = make_idx(seed=1)
    files = idx_files(ref, gz=gz)
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    write_files(tmp_path / folder / "raw" if layout == "raw" else tmp_path, files)
    idx_source(name, files)  # mirrors: a closed port, so any download attempt would fail loudly
    train_arrays = load_split(name, "train", tmp_path)
    _assert_split(train_arrays, ref["train_x"], ref["train_y"])
    _assert_split(load_split(name, "test", tmp_path, download=False), ref["test_x"], ref["test_y"])
    assert train_arrays.classes == list(mnist.IDX_SOURCES[name].classes) and len(train_arrays.classes) == 10


def _bad_idx(kind: str, tmp: Path) -> tuple[Path, str]:
    """Write four files with one fault; return the data folder and what the one error line must say."""
    ref = make_idx()
    files = idx_files(ref, gz=False)
    raw = tmp / "MNIST" / "raw"
    if kind == "wrong magic":
        files["train-images-idx3-ubyte"] = struct.pack(">I", 0x00000801) + files["train-images-idx3-ubyte"][4:]
        return write_files(raw, files).parents[1], (f"{raw / 'train-images-idx3-ubyte'} has the wrong magic number "
                                                    "0x00000801; an idx images file starts with 0x00000803")
    if kind == "counts disagree":
        files["train-labels-idx1-ubyte"] = idx_bytes(ref["train_y"][:-1], mnist.IDX_LABELS_MAGIC)
        return write_files(raw, files).parents[1], (f"{raw / 'train-images-idx3-ubyte'} has 6 images but "
                                                    f"{raw / 'train-labels-idx1-ubyte'} has 5 labels")
    if kind == "truncated":
        files["train-images-idx3-ubyte"] = files["train-images-idx3-ubyte"][:-100]
        return write_files(raw, files).parents[1], (f"{raw / 'train-images-idx3-ubyte'} is truncated: 4,620 bytes, "
                                                    "expected 4,720 for images of shape (6, 28, 28)")
    if kind == "truncated gzip":
        gz = idx_files(ref)
        gz["train-labels-idx1-ubyte.gz"] = gz["train-labels-idx1-ubyte.gz"][:-12]
        write_files(raw, gz)
        return tmp, f"{raw / 'train-labels-idx1-ubyte.gz'} is not a complete gzip file"
    if kind == "md5 mismatch":  # one pixel changed, compressed again: neither md5 is the published one
        write_files(raw, flip_pixel(idx_files(ref), "train-images-idx3-ubyte.gz"))
        return tmp, f"md5 mismatch for {raw / 'train-images-idx3-ubyte.gz'}: got "
    if kind == "plain file md5 mismatch":  # plain files are verified by their content too
        write_files(raw, flip_pixel(files, "train-images-idx3-ubyte"))
        return tmp, f"md5 mismatch for {raw / 'train-images-idx3-ubyte'}: got "
    assert kind == "missing file"
    del files["t10k-labels-idx1-ubyte"]
    return write_files(raw, files).parents[1], "MNIST file t10k-labels-idx1-ubyte[.gz] not found in "


@pytest.mark.parametrize("kind", ["wrong magic", "counts disagree", "truncated", "truncated gzip", "md5 mismatch",
                                  "plain file md5 mismatch", "missing file"])
def test_bad_idx_file_is_one_line_and_exit_2(idx_source, tmp_path, kind, capsys):
    data_dir, expected = _bad_idx(kind, tmp_path / "d")
    published = idx_files(make_idx())  # the md5s of the good miniature; the mirrors refuse connections
    if kind == "truncated gzip":  # its md5 taken as the published one, so that the gzip reader itself is tested
        published = {p.name: p.read_bytes() for p in (data_dir / "MNIST" / "raw").iterdir()}
    idx_source("mnist", published)
    _train_refuses_in_one_line("mnist", data_dir, tmp_path / "run", expected, capsys)


def test_a_recompressed_copy_in_the_system_folder_is_found_verified_and_prepared_offline(idx_source, tmp_path,
                                                                                           capsys):
    """Debian's dataset-fashion-mnist: the published content, compressed again (no .gz md5 matches), in a folder
    of its own. data.py finds it after --data_dir, verifies the content and exits 0 with no network; train.py's
    loader reads it; a --data_dir copy comes first."""
    import data

    ref = make_idx(seed=2)
    published = idx_files(ref)
    system = write_files(tmp_path / "usr-share" / "fashion-mnist", recompressed(published))
    assert all(hashlib.md5((system / n).read_bytes()).hexdigest() != hashlib.md5(published[n]).hexdigest()
               for n in published)
    idx_source("fashion_mnist", published, system_dirs=(str(system),))  # mirrors: a closed port
    empty = tmp_path / "data"
    assert data.main(["--dataset", "fashion_mnist", "--data_dir", str(empty)]) == {"fashion_mnist": system}
    assert "already prepared in " + str(system) in capsys.readouterr().out and not empty.exists()
    _assert_split(load_split("fashion_mnist", "train", empty), ref["train_x"], ref["train_y"])
    _assert_split(load_split("fashion_mnist", "test", empty, download=False), ref["test_x"], ref["test_y"])
    own = make_idx(seed=3)  # a --data_dir holding other files is read first (its md5s are made the published)
    write_files(tmp_path / "mine", idx_files(own))
    idx_source("fashion_mnist", idx_files(own), system_dirs=(str(system),))
    _assert_split(load_split("fashion_mnist", "train", tmp_path / "mine"), own["train_x"], own["train_y"])


def test_a_tampered_file_in_the_system_folder_is_refused_in_one_line(idx_source, tmp_path, capsys):
    import data

    published = idx_files(make_idx(seed=2))
    system = write_files(tmp_path / "sys", flip_pixel(recompressed(published), "train-images-idx3-ubyte.gz"))
    idx_source("fashion_mnist", published, system_dirs=(str(system),))
    with pytest.raises(SystemExit) as info:
        run_cli(data.main, ["--dataset", "fashion_mnist", "--data_dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: md5 mismatch for {system / 'train-images-idx3-ubyte.gz'}: got ")
    assert "reinstall the package" in err and not (tmp_path / "data").exists()
    _train_refuses_in_one_line("fashion_mnist", tmp_path / "data", tmp_path / "run",
                               f"md5 mismatch for {system / 'train-images-idx3-ubyte.gz'}", capsys)


SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_installed_debian_fashion_mnist_is_the_published_content():
    """The recorded content md5s against the real files, where the package is installed (about 1 s)."""
    src = mnist.IDX_SOURCES["fashion_mnist"]
    for stem in mnist.ALL_FILES:
        path = SYSTEM_FASHION / f"{stem}.gz"
        assert hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest() == src.content_md5s[stem]
        assert hashlib.md5(path.read_bytes()).hexdigest() != src.md5s[path.name]  # re-compressed: the old dead end


@pytest.mark.slow
def test_train_and_test_end_to_end_on_a_miniature_mnist_folder(idx_source, tmp_path):
    files = idx_files(make_idx(n_train=20, n_test=10), gz=False)
    data_dir = write_files(tmp_path / "d", files)  # the four plain files, flat
    idx_source("mnist", files)
    run = tmp_path / "run"
    train.main(["--dataset", "mnist", "--data_dir", str(data_dir), "--train_type", "supervised", "--run_dir", str(run),
                "--image_size", "8", "--data_scale", "1", "--batch_size", "8", "--steps", "1", "--device", "cpu",
                "--workers", "0", "--quiet"])
    ckpt = load_checkpoint(run / "final.pth")
    assert ckpt["data"]["num_train"] == 20 and ckpt["data"]["split"] == "train" and ckpt["model"]["num_classes"] == 10
    assert train.describe_data(train.parse_args(["--dataset", "mnist"]))["image_size"] == 28  # native size by default
    result = test_script.main(["--model_path", str(run / "final.pth"), "--dataset", "mnist", "--data_dir",
                               str(data_dir), "--batch_size", "8", *SMALL_PROBE])
    assert result["test_images_evaluated"] == 10 and 0 <= result["test_accuracy"] <= 100


# ---- stl10: a miniature stl10_binary/ ------------------------------------------------------------

def stl10_bin(images: np.ndarray) -> bytes:
    """Images (N, 96, 96, 3) as STL-10 stores them: per image, each channel's 96x96 plane column by column."""
    return b"".join(img[:, :, c].tobytes(order="F") for img in images for c in range(3))


def make_stl10(folder: Path, n_train: int = 4, n_test: int = 3, n_unlabeled: int = 5, seed: int = 0) -> dict:
    """Write the five .bin files and class_names.txt into `folder`; return the reference arrays and md5s."""
    rng = np.random.default_rng(seed)
    ref = {"train_x": rng.integers(0, 256, (n_train, 96, 96, 3), dtype=np.uint8), "train_y": np.arange(n_train) % 10,
           "test_x": rng.integers(0, 256, (n_test, 96, 96, 3), dtype=np.uint8), "test_y": (np.arange(n_test) + 5) % 10,
           "unlabeled_x": rng.integers(0, 256, (n_unlabeled, 96, 96, 3), dtype=np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test", "unlabeled"):
        (folder / f"{split}_X.bin").write_bytes(stl10_bin(ref[f"{split}_x"]))
    for split in ("train", "test"):
        (folder / f"{split}_y.bin").write_bytes((ref[f"{split}_y"] + 1).astype(np.uint8).tobytes())  # labels 1..10
    (folder / "class_names.txt").write_text("\n".join(stl10.STL10_CLASSES) + "\n")
    ref["md5s"] = tuple((name, hashlib.md5((folder / name).read_bytes()).hexdigest()) for name, _ in stl10.SOURCE.md5s)
    return ref


def use_stl10(monkeypatch, md5s, url: str | None = None, md5: str | None = None) -> None:
    """Trust the miniature's md5s; the archive's URL is a closed port unless given (offline)."""
    monkeypatch.setattr(stl10, "SOURCE", dataclasses.replace(
        stl10.SOURCE, md5s=md5s, url=url or f"http://127.0.0.1:{closed_port()}/stl10_binary.tar.gz",
        md5=md5 or stl10.SOURCE.md5))


def _assert_stl10(data_dir: Path, ref: dict) -> None:
    train_arrays, unl = load_split("stl10", "train", data_dir), load_split("stl10", "unlabeled", data_dir)
    both, test = load_split("stl10", "train+unlabeled", data_dir), load_split("stl10", "test", data_dir)
    assert np.array_equal(train_arrays.images, ref["train_x"]) and train_arrays.labels.tolist() == ref["train_y"].tolist()
    assert np.array_equal(test.images, ref["test_x"]) and test.labels.tolist() == ref["test_y"].tolist()
    assert np.array_equal(unl.images, ref["unlabeled_x"]) and set(unl.labels.tolist()) == {-1}
    assert np.array_equal(both.images, np.concatenate([ref["train_x"], ref["unlabeled_x"]]))
    assert both.labels.tolist() == ref["train_y"].tolist() + [-1] * len(ref["unlabeled_x"])
    assert train_arrays.classes == list(stl10.STL10_CLASSES) and train_arrays.images.dtype == np.uint8


def test_stl10_archive_download_resumes_extracts_and_reads(server, tmp_path, monkeypatch, capsys):
    import data

    ref = make_stl10(tmp_path / "src" / "stl10_binary")
    archive = tmp_path / "stl10_binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "stl10_binary", arcname="stl10_binary")
    blob = archive.read_bytes()
    use_stl10(monkeypatch, ref["md5s"], url=server.add("stl10_binary.tar.gz", blob, mode="drop_once"),
              md5=hashlib.md5(blob).hexdigest())
    out = tmp_path / "data"
    assert data.main(["--dataset", "stl10", "--data_dir", str(out)]) == {"stl10": out / "stl10_binary"}
    ranges = server.ranges("stl10_binary.tar.gz")
    assert ranges[0] is None and ranges[1].startswith("bytes=")  # cut mid-body, then resumed
    _assert_stl10(out, ref)
    capsys.readouterr()
    n_requests = len(server.requests)
    data.main(["--dataset", "stl10", "--data_dir", str(out)])
    assert "already prepared" in capsys.readouterr().out and len(server.requests) == n_requests

    # A wrong md5 for the archive: refused in one line, nothing extracted.
    other = tmp_path / "other"
    with pytest.raises(SystemExit) as info:
        run_cli(data.main, ["--dataset", "stl10", "--data_dir", str(other), "--url", server.url("stl10_binary.tar.gz"),
                            "--md5", "0" * 32])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: md5 mismatch for stl10_binary.tar.gz")
    assert [p.name for p in other.iterdir() if not p.name.endswith(".lock")] == []


def test_stl10_from_a_local_folder(tmp_path, monkeypatch):
    ref = make_stl10(tmp_path / "stl10_binary", seed=2)
    use_stl10(monkeypatch, ref["md5s"])  # no archive, and any download would be refused
    _assert_stl10(tmp_path, ref)
    assert sorted(p.name for p in (tmp_path / "stl10_binary" / "cache").iterdir()) == [
        "classes.json", "meta.json", "test_images.npy", "test_labels.npy", "train_unlabeled_images.npy",
        "train_unlabeled_labels.npy"]


def _bad_stl10(kind: str, root: Path) -> str:
    """Write a miniature stl10_binary/ with one fault; return what the one error line must start with."""
    make_stl10(root)
    if kind == "truncated":
        path = root / "unlabeled_X.bin"
        path.write_bytes(path.read_bytes()[:-10])
        return f"{path} has 138,230 bytes, not a whole number of 27,648-byte 3x96x96 images"
    if kind == "counts disagree":
        (root / "test_y.bin").write_bytes(bytes([1, 2]))
        return f"{root / 'test_X.bin'} has 3 images but {root / 'test_y.bin'} has 2 labels"
    if kind == "label out of range":
        (root / "train_y.bin").write_bytes(bytes([1, 2, 11, 3]))
        return f"{root / 'train_y.bin'} has label 11, outside 1..10"
    if kind == "md5 mismatch":
        path = root / "train_X.bin"
        data = bytearray(path.read_bytes())
        data[5] ^= 0xFF
        path.write_bytes(bytes(data))
        return f"md5 mismatch for {path}: got "
    if kind == "missing file":
        (root / "test_X.bin").unlink()
        return f"{root} lacks test_X.bin; put the file(s) there"
    assert kind == "absent, offline"
    shutil.rmtree(root)
    return f"STL-10 not found at {root} (download failed: cannot reach 127.0.0.1:"


@pytest.mark.parametrize("kind", ["truncated", "counts disagree", "label out of range", "md5 mismatch", "missing file",
                                  "absent, offline"])
def test_bad_stl10_file_is_one_line_and_exit_2(tmp_path, monkeypatch, kind, capsys):
    data_dir = tmp_path / "d"
    root = data_dir / "stl10_binary"
    ref = make_stl10(tmp_path / "good" / "stl10_binary")  # the same miniature, untouched: its md5s are the published
    expected = _bad_stl10(kind, root)
    use_stl10(monkeypatch, ref["md5s"])
    _train_refuses_in_one_line("stl10", data_dir, tmp_path / "run", expected, capsys)  # no cache, no cache.partial


@pytest.mark.slow
def test_train_and_test_end_to_end_on_a_miniature_stl10_folder(tmp_path, monkeypatch):
    ref = make_stl10(tmp_path / "d" / "stl10_binary", n_train=8, n_test=4, n_unlabeled=8)
    use_stl10(monkeypatch, ref["md5s"])
    common = ["--dataset", "stl10", "--data_dir", str(tmp_path / "d"), "--image_size", "8", "--data_scale", "1",
              "--batch_size", "4", "--steps", "1", "--device", "cpu", "--workers", "0", "--quiet"]
    described = train.describe_data(train.parse_args(["--dataset", "stl10"]))
    assert described["image_size"] == 96 and described["stem"] == "imagenet"  # native size; above 64 px
    train.main(common + ["--train_type", "simclr", "--run_dir", str(tmp_path / "simclr")])
    simclr_ckpt = load_checkpoint(tmp_path / "simclr" / "final.pth")
    assert simclr_ckpt["data"]["split"] == "train+unlabeled" and simclr_ckpt["data"]["num_train"] == 16
    train.main(common + ["--train_type", "supervised", "--run_dir", str(tmp_path / "sup")])
    sup_ckpt = load_checkpoint(tmp_path / "sup" / "final.pth")
    assert sup_ckpt["data"]["split"] == "train" and sup_ckpt["data"]["num_train"] == 8  # no unlabelled image
    result = test_script.main(["--model_path", str(tmp_path / "simclr" / "final.pth"), "--dataset", "stl10",
                               "--data_dir", str(tmp_path / "d"), "--batch_size", "4", *SMALL_PROBE])
    assert result["test_images_evaluated"] == 4 and 0 <= result["test_accuracy"] <= 100
