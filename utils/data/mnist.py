"""MNIST and Fashion-MNIST: the four official idx files, fetched by utils.data.download or found in --data_dir.

Each dataset is four files under torchvision's names (train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), gzip-compressed (`.gz`, as published) or plain.
They are looked for in torchvision's layout `data_dir/<Folder>/raw/` (MNIST/raw, FashionMNIST/raw)
first, then directly in `data_dir`, then in the folder an operating-system package installs them in
(Debian's / Ubuntu's `dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist); a file found in none
is downloaded (resumed, md5-checked, atomic) into `<Folder>/raw/` from the mirrors torchvision 0.29
lists, in order.

Every file is verified by its content: the md5 of the decompressed idx bytes must be the published
file's. A `.gz` whose own md5 is the published `.gz` md5 passes too. So a re-compressed copy of the
published files (Debian's package re-compresses them: every `.gz` md5 differs, the content is the
same) and the plain files both pass, and a file whose content differs is refused in one line.

The idx parser is strict: a big-endian magic number (0x00000803 for images, 0x00000801 for labels),
then the dimensions, then exactly prod(dims) bytes. A wrong magic number, images that are not
28x28, a truncated or over-long file, a broken gzip stream, a label outside 0..9, image and label
counts that disagree, a md5 mismatch and a missing file are each one line naming the file
(UserError, exit 2). Parsing writes nothing; images come back as uint8 (N, 28, 28, 3), the grey
channel replicated to RGB.

    python data.py --dataset mnist
    python -c "from utils.data.mnist import load_idx_dataset; x, y, c = load_idx_dataset('fashion_mnist', 'data', 'test'); print(x.shape, c)"
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from utils.data.constants import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD, DatasetInfo)
from utils.data.download import ChecksumError, DownloadError, NetworkError, download_file, file_lock, md5sum
from utils.errors import DataMissingError, UserError

logger = logging.getLogger(__name__)

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes (0x08), 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes (0x08), 1 dimension
MNIST_SIZE = 28
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class IdxSource:
    """One idx dataset: torchvision's folder name, its download mirrors and the md5 of each `.gz`
    (all read from torchvision 0.29.1's torchvision/datasets/mnist.py), and its class names."""

    name: str
    title: str
    folder: str
    mirrors: tuple[str, ...]
    md5s: dict  # {"train-images-idx3-ubyte.gz": md5, ...}: the published compressed files
    content_md5s: dict  # {"train-images-idx3-ubyte": md5, ...}: the same files decompressed
    classes: tuple[str, ...]
    sizes: tuple[int, int]
    system_dirs: tuple[str, ...] = ()  # where an operating-system package installs the .gz files


IDX_SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        "mnist", "MNIST", "MNIST",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        # Decompressed: the md5s public dataset-preparation scripts check the unpacked files against (not seen
        # here: no MNIST file on this machine; a .gz with the published md5 above passes whatever these say).
        {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
         "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
         "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
         "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
        tuple(str(d) for d in range(10)), (60_000, 10_000),
    ),
    "fashion_mnist": IdxSource(
        "fashion_mnist", "Fashion-MNIST", "FashionMNIST",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        # Decompressed: the md5s that torchvision-style FashionMNIST loaders keep beside the .gz ones (`raw_data`)
        # and dataset guides print after `gunzip`; Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
        # decompresses to exactly these (checked here 2026-12-03), though none of its four .gz md5s is published.
        {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (60_000, 10_000),
        ("/usr/share/datasets/fashion-mnist",),  # `apt-get install dataset-fashion-mnist` (Debian 10+, Ubuntu)
    ),
}
ALL_FILES = tuple(f for split in ("train", "test") for f in SPLIT_FILES[split])


def raw_dir(src: IdxSource, data_dir: str | Path) -> Path:
    """torchvision's folder for the files, `data_dir/<Folder>/raw` (where downloads go)."""
    return Path(data_dir) / src.folder / "raw"


def search_dirs(src: IdxSource, data_dir: str | Path) -> tuple[Path, ...]:
    """Where the files are looked for, in order: <data_dir>/<Folder>/raw, <data_dir>, the system folders."""
    return (raw_dir(src, data_dir), Path(data_dir)) + tuple(Path(d) for d in src.system_dirs)


def find_idx_file(src: IdxSource, data_dir: str | Path, stem: str) -> Path | None:
    """The first <stem>.gz or <stem> in search_dirs(src, data_dir) that exists."""
    for folder in search_dirs(src, data_dir):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def idx_ready(name: str, data_dir: str | Path) -> bool:
    """True when all four files are there, .gz or plain (no network, nothing read)."""
    src = IDX_SOURCES[name]
    return all(find_idx_file(src, data_dir, stem) is not None for stem in ALL_FILES)


def _read_bytes(path: Path) -> bytes:
    """The idx bytes of `path`, gunzipped when it ends in .gz; UserError naming it when that fails."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{path} is not a complete gzip file ({exc}); delete it and run `python data.py` again") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def parse_idx(data: bytes, magic: int, label: str) -> np.ndarray:
    """The uint8 array of an idx file's bytes (big-endian header: magic, then one uint32 per dimension).

    Raises UserError (naming `label`) for another magic number or a byte count other than
    header + prod(dims).
    """
    ndim = magic & 0xFF
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise UserError(f"{label} is truncated: {len(data)} bytes, not even an idx magic number")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise UserError(f"{label} has the wrong magic number 0x{found:08x}; an idx {kind} file starts with 0x{magic:08x}")
    if len(data) < header:
        raise UserError(f"{label} is truncated: {len(data)} bytes, shorter than its {header}-byte idx header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise UserError(f"{label} is {what}: {len(data):,} bytes, expected {expected:,} for {kind} of shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int,
                  check: Callable[[Path, bytes], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split's two files, checked against each other.

    `check(path, idx_bytes)` runs on each file's decompressed bytes once both pass the structural checks.
    """
    raw_images = _read_bytes(images_path)
    images = parse_idx(raw_images, IDX_IMAGES_MAGIC, str(images_path))
    if images.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise UserError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected "
                        f"{MNIST_SIZE}x{MNIST_SIZE}")
    raw_labels = _read_bytes(labels_path)
    labels = parse_idx(raw_labels, IDX_LABELS_MAGIC, str(labels_path))
    if len(images) != len(labels):
        raise UserError(f"{images_path} has {len(images):,} images but {labels_path} has {len(labels):,} labels")
    if len(labels) and labels.max() >= num_classes:
        raise UserError(f"{labels_path} has label {int(labels.max())}, outside 0..{num_classes - 1}")
    if check is not None:  # after the structural checks, whose messages say more than a checksum's
        check(images_path, raw_images)
        check(labels_path, raw_labels)
    return images, labels.astype(np.int64)


def _missing(src: IdxSource, data_dir: Path, stem: str, why: str) -> DataMissingError:
    where = ", ".join(str(d) for d in search_dirs(src, data_dir))
    package = ", install Debian's / Ubuntu's dataset-fashion-mnist package" if src.system_dirs else ""
    return DataMissingError(
        f"{src.title} file {stem}[.gz] not found in {where} ({why}); run `python data.py --dataset {src.name} "
        f"--data_dir {data_dir}` with network access{package}, or put the four idx files "
        f"({', '.join(ALL_FILES)}, .gz or plain) in {data_dir}")


def check_content(src: IdxSource, path: Path, idx: bytes) -> None:
    """ChecksumError (one line, saying how to go on) unless `path`, whose decompressed bytes are `idx`, is the
    published file: its content md5 is the published content's, or it is the published .gz itself."""
    stem = path.name.removesuffix(".gz")
    got, expected = hashlib.md5(idx).hexdigest(), src.content_md5s[stem]
    if got == expected or (path.suffix == ".gz" and md5sum(path) == src.md5s[path.name]):
        return
    system = any(path.parent == Path(d) for d in src.system_dirs)
    how = (f"reinstall the package that put it there or point --data_dir at the published files" if system else
           f"delete it and run `python data.py --dataset {src.name} --force` with network access, or point "
           f"--data_dir at the published files")
    package = " (Debian/Ubuntu: apt-get install dataset-fashion-mnist)" if src.system_dirs else ""
    raise ChecksumError(f"md5 mismatch for {path}: got {got} for its {'decompressed ' if path.suffix == '.gz' else ''}"
                        f"content, expected {expected} (the published {src.title} {stem}); {how}{package}")


def verify_idx_file(src: IdxSource, path: Path) -> None:
    """check_content of one file on disk (reads and decompresses it)."""
    check_content(src, path, _read_bytes(path))


def _download(src: IdxSource, data_dir: Path, stem: str, mirrors: tuple[str, ...]) -> Path:
    """Fetch `<stem>.gz` into <Folder>/raw from the first mirror that has it (md5-checked, atomic)."""
    name, reasons = f"{stem}.gz", []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        logger.info("downloading %s", url)
        try:
            return download_file(url, raw_dir(src, data_dir) / name, md5=src.md5s[name])
        except ChecksumError:
            raise
        except NetworkError as exc:
            reasons.append(exc.reason)
        except DownloadError as exc:  # e.g. 404 on this mirror: try the next one
            reasons.append(str(exc))
    raise _missing(src, data_dir, stem, "download failed: " + "; ".join(reasons))


def prepare_idx(name: str, data_dir: str | Path, url: str | None = None, md5: str | None = None,
                force: bool = False, download: bool = True) -> Path:
    """Make the four files present and readable; return the folder holding the train images.

    `url`: a mirror folder holding the four .gz files (their md5s are still the published ones, so
    `md5` does not apply). `force`: a .gz under <Folder>/raw that fails its md5 is downloaded again.
    Every file is parsed at the end, so a bad one is reported here rather than at training time.
    """
    src = IDX_SOURCES[name]
    if md5 is not None:
        raise UserError(f"{src.title} is four files with published md5s: --md5 does not apply (--url may name a mirror "
                        "folder holding them)")
    data_dir = Path(data_dir)
    mirrors = (url,) if url else src.mirrors
    if not force and idx_ready(name, data_dir):  # all found (in --data_dir or a system folder): nothing to write
        stems = ()
    else:
        stems = ALL_FILES
    with file_lock(data_dir / f".{src.name}.lock") if stems else nullcontext():
        for stem in stems:
            path = find_idx_file(src, data_dir, stem)
            if path is not None and force and path.parent == raw_dir(src, data_dir) and path.suffix == ".gz":
                try:
                    verify_idx_file(src, path)
                except ChecksumError as exc:
                    logger.warning("%s; downloading it again", exc)
                    path.unlink()
                    path = None
            if path is None:
                if not download:
                    raise _missing(src, data_dir, stem, "download disabled")
                _download(src, data_dir, stem, mirrors)
    for split in ("train", "test"):
        load_idx_dataset(name, data_dir, split, download=False)
    return find_idx_file(src, data_dir, ALL_FILES[0]).parent


def load_idx_dataset(name: str, data_dir: str | Path, split: str, download: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 (N, 28, 28, 3), labels int64 (N,) and class names of `split` ("train" or "test").

    Missing files are downloaded first when `download`; raises DataMissingError otherwise, and
    UserError for a file that fails its md5 or the parser.
    """
    src = IDX_SOURCES[name]
    data_dir = Path(data_dir)
    if split not in SPLIT_FILES:
        raise UserError(f"unknown {src.title} split {split!r}; choose 'train' or 'test'")
    if download and not idx_ready(name, data_dir):
        prepare_idx(name, data_dir)
    paths = []
    for stem in SPLIT_FILES[split]:
        path = find_idx_file(src, data_dir, stem)
        if path is None:
            raise _missing(src, data_dir, stem, "download disabled" if not download else "not found after download")
        paths.append(path)
    images, labels = read_idx_pair(paths[0], paths[1], len(src.classes), check=partial(check_content, src))
    return np.repeat(images[..., None], 3, axis=-1), labels, list(src.classes)


def _load(name: str, data_dir, split: str, download: bool, image_size: int | None):
    return load_idx_dataset(name, data_dir, split, download=download)


MNIST = DatasetInfo(
    "mnist", 10, MNIST_SIZE, MNIST_MEAN, MNIST_STD, load=partial(_load, "mnist"),
    prepare=partial(prepare_idx, "mnist"), ready=partial(idx_ready, "mnist"),
    source=IDX_SOURCES["mnist"].mirrors[0], sizes=IDX_SOURCES["mnist"].sizes,  # classes unbalanced (5,421..6,742)
)
FASHION_MNIST = DatasetInfo(
    "fashion_mnist", 10, MNIST_SIZE, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load=partial(_load, "fashion_mnist"),
    prepare=partial(prepare_idx, "fashion_mnist"), ready=partial(idx_ready, "fashion_mnist"),
    source=IDX_SOURCES["fashion_mnist"].mirrors[0], sizes=IDX_SOURCES["fashion_mnist"].sizes, balanced=True,
)
