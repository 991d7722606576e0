"""STL-10: the official binary archive, extracted safely, parsed strictly, cached once as HWC uint8 arrays.

5,000 labelled train, 8,000 labelled test and 100,000 unlabelled 96x96 colour images in ten classes.
The archive `stl10_binary.tar.gz` (URL and md5 from torchvision 0.29.1's datasets/stl10.py) is
downloaded through utils.data.download (resumed, md5-checked, atomic) and extracted through
utils.data.archive into `data_dir/stl10_binary/`; a `data_dir/stl10_binary/` that already holds the
`.bin` files (copied from another machine) is used as it is. The binary format: `*_X.bin` is uint8,
3 x 96 x 96 bytes per image, each channel stored column by column; `*_y.bin` one uint8 label 1..10
per image. Before use every file is checked: a size that is not a whole number of images, image
and label counts that disagree, a label outside 1..10 or an md5 other than the published one is
one line naming the file (UserError, exit 2).

The three files (2.8 GB, most of it the unlabelled images) are then converted once into

    data_dir/stl10_binary/cache/train_unlabeled_images.npy  uint8 (105000, 96, 96, 3): train, then unlabelled
    data_dir/stl10_binary/cache/train_unlabeled_labels.npy  int64: 0..9 for train, -1 for unlabelled
    data_dir/stl10_binary/cache/test_images.npy, test_labels.npy, classes.json, meta.json (written last)

built in `cache.partial/` and renamed when complete, and memory-mapped afterwards, so "train",
"unlabeled" and "train+unlabeled" are views of one file and no epoch reads the column-major bytes.
Unlabelled images carry the label -1: SimCLR pretrains on "train+unlabeled" by default (train.py);
the supervised baseline and the linear probe read "train" and "test" only.

    python data.py --dataset stl10
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.data.archive import extract_into_place
from utils.data.constants import STL10_MEAN, STL10_STD, DatasetInfo
from utils.data.decode import publish_cache, read_cache_meta, write_decoded_npy
from utils.data.download import ChecksumError, fetch_archive, file_lock, verify_file
from utils.errors import DataMissingError, UserError

logger = logging.getLogger(__name__)

STL10_SIZE = 96
IMAGE_BYTES = 3 * STL10_SIZE * STL10_SIZE  # 27,648
CACHE_VERSION = 1
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
SPLITS = ("train", "test", "unlabeled", "train+unlabeled")


@dataclass(frozen=True)
class Stl10Source:
    """The archive (torchvision 0.29.1's url and tgz_md5) and the published md5 of each .bin it holds."""

    url: str = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    md5: str = "91f7769df0f17e558f3565bffb0c7dfb"
    folder: str = "stl10_binary"
    md5s: tuple[tuple[str, str], ...] = (
        ("train_X.bin", "918c2871b30a85fa023e0c44e0bee87f"), ("train_y.bin", "5a34089d4802c674881badbb80307741"),
        ("unlabeled_X.bin", "5242ba1fed5e4be9e1e742405eb56ca4"),
        ("test_X.bin", "7f263ba9f9e0b06b93213547f721ac82"), ("test_y.bin", "36f9794fa4beb8a2c72628de14fa638e"))

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


SOURCE = Stl10Source()


def stl10_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / SOURCE.folder


def stl10_ready(data_dir: str | Path) -> bool:
    """True when the array cache is complete (no network, nothing read but meta.json)."""
    cache = stl10_root(data_dir) / "cache"
    names = ["classes.json"] + [f"{s}_{k}.npy" for s in ("train_unlabeled", "test") for k in ("images", "labels")]
    return read_cache_meta(cache, CACHE_VERSION) is not None and all((cache / n).is_file() for n in names)


def _bins_present(root: Path) -> bool:
    return all((root / name).is_file() for name, _ in SOURCE.md5s)


def count_images(path: Path) -> int:
    """Images in a *_X.bin file; UserError when its size is not a whole number of 3x96x96 images."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(f"{path} has {size:,} bytes, not a whole number of {IMAGE_BYTES:,}-byte 3x96x96 images "
                        "(truncated or not an STL-10 file)")
    return size // IMAGE_BYTES


def read_labels(path: Path, expected: int, images_path: Path) -> np.ndarray:
    """Labels 1..10 of a *_y.bin file as int64 0..9, checked against the image count of `images_path`."""
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != expected:
        raise UserError(f"{images_path} has {expected:,} images but {path} has {len(labels):,} labels")
    if len(labels) and (labels.min() < 1 or labels.max() > len(STL10_CLASSES)):
        bad = int(labels.min() if labels.min() < 1 else labels.max())
        raise UserError(f"{path} has label {bad}, outside 1..{len(STL10_CLASSES)}")
    return labels.astype(np.int64) - 1


def read_classes(root: Path) -> list[str]:
    """class_names.txt when the folder has it (one name a line, ten lines), else the published names."""
    path = root / "class_names.txt"
    if not path.is_file():
        return list(STL10_CLASSES)
    names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(names) != len(STL10_CLASSES):
        raise UserError(f"{path} lists {len(names)} class names, expected {len(STL10_CLASSES)}")
    return names


def check_bins(root: Path) -> dict[str, int]:
    """Sizes, counts and labels of the five .bin files, then their md5s; returns {file: image count}."""
    counts = {name: count_images(root / name) for name in ("train_X.bin", "test_X.bin", "unlabeled_X.bin")}
    for split in ("train", "test"):
        read_labels(root / f"{split}_y.bin", counts[f"{split}_X.bin"], root / f"{split}_X.bin")
    for name, md5 in SOURCE.md5s:
        try:
            verify_file(root / name, md5)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc} (the published STL-10 file); replace it, or delete {root} and run "
                                f"`python data.py --dataset stl10`") from None
    return counts


def _hwc(raw: np.ndarray, i: int) -> np.ndarray:
    """Image i of a (N, 3, 96, 96) column-major view as (96, 96, 3): raw[i, c, x, y] -> out[y, x, c]."""
    return raw[i].transpose(2, 1, 0)


def build_cache(root: Path) -> Path:
    """Convert the checked .bin files into `root/cache` (see the module docstring); return it."""
    counts = check_bins(root)
    classes = read_classes(root)
    raws = {name: np.memmap(root / name, dtype=np.uint8, mode="r", shape=(counts[name], 3, STL10_SIZE, STL10_SIZE))
            for name in counts}
    n_train = counts["train_X.bin"]
    final, partial = root / "cache", root / "cache.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()

    def train_then_unlabeled(i, size):
        return _hwc(raws["train_X.bin"], i) if i < n_train else _hwc(raws["unlabeled_X.bin"], i - n_train)

    n_both = n_train + counts["unlabeled_X.bin"]
    write_decoded_npy(partial / "train_unlabeled_images.npy", list(range(n_both)), train_then_unlabeled, STL10_SIZE,
                      "stl10 train + unlabeled")
    labels = np.full(n_both, -1, dtype=np.int64)
    labels[:n_train] = read_labels(root / "train_y.bin", n_train, root / "train_X.bin")
    np.save(partial / "train_unlabeled_labels.npy", labels)
    write_decoded_npy(partial / "test_images.npy", list(range(counts["test_X.bin"])),
                      lambda i, size: _hwc(raws["test_X.bin"], i), STL10_SIZE, "stl10 test")
    np.save(partial / "test_labels.npy", read_labels(root / "test_y.bin", counts["test_X.bin"], root / "test_X.bin"))
    (partial / "classes.json").write_text(json.dumps(classes))
    meta = {"version": CACHE_VERSION, "counts": {"train": n_train, "unlabeled": counts["unlabeled_X.bin"],
                                                 "test": counts["test_X.bin"]}}
    return publish_cache(partial, final, meta)


def _missing(data_dir: Path, why: str) -> DataMissingError:
    return DataMissingError(
        f"STL-10 not found at {stl10_root(data_dir)} ({why}); run `python data.py --dataset stl10 --data_dir "
        f"{data_dir}` with network access, or put {SOURCE.filename} ({SOURCE.url}) or its extracted "
        f"{SOURCE.folder}/ folder in {data_dir}")


def _fetch_and_extract(data_dir: Path, url: str, md5: str, force: bool, download: bool) -> None:
    root, archive = stl10_root(data_dir), data_dir / SOURCE.filename
    if root.exists():
        missing = [name for name, _ in SOURCE.md5s if not (root / name).is_file()]
        raise UserError(f"{root} lacks {', '.join(missing)}; put the file(s) there, or delete the folder and run "
                        f"`python data.py --dataset stl10 --data_dir {data_dir}`")
    fetch_archive(archive, url, md5, None, force=force, download=download, missing=lambda why: _missing(data_dir, why),
                  redo="python data.py --dataset stl10 --force")
    logger.info("extracting %s", archive)
    extract_into_place(archive, root, member_root=SOURCE.folder)


def prepare_stl10(data_dir: str | Path, url: str | None = None, md5: str | None = None, force: bool = False,
                  download: bool = True) -> Path:
    """Find or fetch the .bin files, check them and build the array cache; return `data_dir/stl10_binary`.

    Does nothing when the cache is complete, unless `force`: then the cache is rebuilt, and an
    archive in `data_dir` is extracted again (downloaded again if it fails its md5).
    """
    data_dir = Path(data_dir)
    root = stl10_root(data_dir)
    if not force and stl10_ready(data_dir):
        return root
    url, md5 = url or SOURCE.url, (md5 or SOURCE.md5).lower()
    with file_lock(data_dir / ".stl10.lock"):
        if not force and stl10_ready(data_dir):  # another process finished while we waited
            return root
        if force and (data_dir / SOURCE.filename).exists() and root.exists():
            shutil.rmtree(root)
        if not _bins_present(root):
            _fetch_and_extract(data_dir, url, md5, force, download)
        if not _bins_present(root):
            raise UserError(f"{data_dir / SOURCE.filename} does not hold the STL-10 files {[n for n, _ in SOURCE.md5s]}")
        logger.info("checking the STL-10 files and converting them once into %s", root / "cache")
        try:
            build_cache(root)
        except OSError as exc:  # a full disk: one line; the partial cache is redone by the next run
            raise UserError(f"cannot write the STL-10 cache in {root / 'cache.partial'}: {exc.strerror or exc}") from None
    return root


def load_stl10(data_dir: str | Path, split: str, download: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 (N, 96, 96, 3) (read-only memory maps of the cache), labels int64 (N,), class names.

    split: "train" (5,000), "test" (8,000), "unlabeled" (100,000, labels -1) or "train+unlabeled"
    (105,000: train first).
    """
    if split not in SPLITS:
        raise UserError(f"unknown STL-10 split {split!r}; choose from {list(SPLITS)}")
    if not stl10_ready(data_dir):
        prepare_stl10(data_dir, download=download)
    cache = stl10_root(data_dir) / "cache"
    counts = (read_cache_meta(cache, CACHE_VERSION) or {}).get("counts", {})
    stem = "test" if split == "test" else "train_unlabeled"
    images = np.load(cache / f"{stem}_images.npy", mmap_mode="r")
    labels = np.load(cache / f"{stem}_labels.npy")
    classes = json.loads((cache / "classes.json").read_text())
    n_train = counts.get("train", -1)
    expected = counts.get("test") if split == "test" else n_train + counts.get("unlabeled", -1)
    if images.shape[1:] != (STL10_SIZE, STL10_SIZE, 3) or len(images) != len(labels) or len(labels) != expected:
        raise UserError(f"the STL-10 cache in {cache} is inconsistent; run `python data.py --dataset stl10 "
                        f"--data_dir {data_dir} --force`")
    part = {"train": slice(0, n_train), "unlabeled": slice(n_train, None)}.get(split, slice(None))
    return images[part], labels[part], list(classes)


def _load(data_dir, split: str, download: bool, image_size: int | None):
    return load_stl10(data_dir, split, download=download)


STL10 = DatasetInfo(
    "stl10", len(STL10_CLASSES), STL10_SIZE, STL10_MEAN, STL10_STD, load=_load, splits=SPLITS,
    pretrain_split="train+unlabeled", prepare=prepare_stl10, ready=stl10_ready, source=SOURCE.url,
    sizes=(5_000, 8_000), balanced=True,
)
