"""Tiny-ImageNet: download, safe extraction, one class map, and a decoded uint8 array cache.

Preparation (once): the zip (layout in /work/shared/REFERENCES.md) is downloaded through
utils.data.download, extracted safely to `data_dir/tiny-imagenet-200`, `val/` is arranged by class
from `val/val_annotations.txt` (`val/<wnid>/images/*.JPEG`, the layout `train/` has), and the
train and val JPEGs are decoded once (grayscale -> RGB) into

    data_dir/tiny-imagenet-200/cache/{train,val}_images.npy   uint8 (N, 64, 64, 3)
    data_dir/tiny-imagenet-200/cache/{train,val}_labels.npy   int64 (N,)
    data_dir/tiny-imagenet-200/cache/{train,val}_files.txt    source file of each row
    data_dir/tiny-imagenet-200/cache/classes.json             the sorted wnids (label i = classes[i])
    data_dir/tiny-imagenet-200/cache/meta.json                counts, format version, class words

which later runs memory-map (np.load(mmap_mode="r")): no epoch decodes a JPEG and the whole set
can go to a GPU in one copy. Train and val share ONE class-to-index map, the sorted wnids
(never ImageFolder's alphabetical order against the unsorted wnids.txt, nor wnids.txt's order
for one split only). `test/` has no labels and is left out. The cache is built in
`cache.partial/` and renamed when complete, so an interrupted run is redone, never trusted.

    python data.py --dataset tiny-imagenet
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from utils.data.archive import extract_into_place
from utils.data.constants import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, DatasetInfo
from utils.data.decode import open_image, publish_cache, read_cache_meta, write_decoded_npy
from utils.data.download import fetch_archive, file_lock
from utils.errors import DataMissingError, UserError

logger = logging.getLogger(__name__)

# Official archive (http only; /work/shared/REFERENCES.md).
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_BYTES = 248_100_043
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_ZIP = "tiny-imagenet-200.zip"
IMAGE_SIZE = 64  # every Tiny-ImageNet image is 64x64
SPLITS = ("train", "val")
CACHE_VERSION = 1  # bump when the cache's format or content changes
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def tiny_imagenet_root(data_dir: str | Path) -> Path:
    """The extracted folder, `data_dir/tiny-imagenet-200`."""
    return Path(data_dir) / TINY_IMAGENET_FOLDER


def tiny_imagenet_cache_dir(data_dir: str | Path) -> Path:
    """The array cache folder, `data_dir/tiny-imagenet-200/cache`."""
    return tiny_imagenet_root(data_dir) / "cache"


def tiny_imagenet_ready(data_dir: str | Path) -> bool:
    """True when the array cache is complete (no network, no decoding)."""
    cache = tiny_imagenet_cache_dir(data_dir)
    if read_cache_meta(cache, CACHE_VERSION) is None:
        return False
    needed = ["classes.json"] + [f"{s}_{kind}.npy" for s in SPLITS for kind in ("images", "labels")]
    return all((cache / name).is_file() for name in needed)


def read_wnids(root: str | Path) -> list[str]:
    """The class ids from `wnids.txt`, sorted: index i of this list is label i for every split."""
    path = Path(root) / "wnids.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing: {root} is not an extracted Tiny-ImageNet folder")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise UserError(f"{path} is empty or lists a class twice")
    return sorted(wnids)


def read_val_annotations(root: str | Path) -> dict[str, str]:
    """`val/val_annotations.txt` as {file name: wnid} (the box columns are ignored)."""
    path = Path(root) / "val" / "val_annotations.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing: cannot label the validation images")
    mapping: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserError(f"{path}:{number}: expected 'file<TAB>wnid<TAB>box', got {line!r}")
        mapping[fields[0].strip()] = fields[1].strip()
    return mapping


def arrange_val_by_class(root: str | Path) -> int:
    """Move `val/images/<file>` to `val/<wnid>/images/<file>` per val_annotations.txt.

    Idempotent and resumable (files already moved are left alone); returns how many moved.
    Afterwards `val/` has the same `<wnid>/images/` layout as `train/`.
    """
    root = Path(root)
    annotations = read_val_annotations(root)
    flat = root / "val" / "images"
    moved = 0
    for name, wnid in annotations.items():
        source = flat / name
        if source.is_file():
            target = root / "val" / wnid / "images" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            moved += 1
    if flat.is_dir() and not any(flat.iterdir()):
        flat.rmdir()
    return moved


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_split(root: str | Path, split: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files of `split` and their labels (int64, index into `classes`), in a fixed order.

    train: `train/<wnid>/images/*`, classes in order, files sorted by name.
    val: every file named in val_annotations.txt (sorted by name), found under
    `val/<wnid>/images/` (arranged) or `val/images/` (as extracted).
    """
    root = Path(root)
    index = {wnid: i for i, wnid in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for wnid in classes:
            folder = root / "train" / wnid / "images"
            found = sorted(p for p in folder.iterdir() if _is_image(p)) if folder.is_dir() else []
            if not found:
                raise UserError(f"no training images in {folder}: the Tiny-ImageNet folder is incomplete")
            files += found
            labels += [index[wnid]] * len(found)
    elif split == "val":
        for name, wnid in sorted(read_val_annotations(root).items()):
            if wnid not in index:
                raise UserError(f"val_annotations.txt labels {name} with {wnid}, which is not in wnids.txt")
            for candidate in (root / "val" / wnid / "images" / name, root / "val" / "images" / name):
                if candidate.is_file():
                    files.append(candidate)
                    break
            else:
                raise UserError(f"validation image {name} (listed in val_annotations.txt) is missing under {root / 'val'}")
            labels.append(index[wnid])
    else:
        raise UserError(f"unknown Tiny-ImageNet split {split!r}; choose 'train' or 'val' (test/ has no labels)")
    return files, np.asarray(labels, dtype=np.int64)


def decode_image(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode one image to uint8 (size, size, 3) RGB; grayscale/CMYK/palette become RGB."""
    try:
        with open_image(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):  # never the case in the official archive
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot decode {path}: {exc}") from None


def _read_words(root: Path, classes: list[str]) -> dict[str, str]:
    """Human-readable names from words.txt for our classes (first synonym), if the file is there."""
    words: dict[str, str] = {}
    path = root / "words.txt"
    if path.is_file():
        wanted = set(classes)
        for line in path.read_text(errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in wanted:
                words[wnid] = text.split(",")[0].strip()
    return words


def build_cache(root: str | Path) -> Path:
    """Decode train and val of an extracted, arranged tree into `root/cache` (see module doc)."""
    root = Path(root)
    classes = read_wnids(root)
    final = root / "cache"
    partial = root / "cache.partial"
    if partial.exists():  # leftover of an interrupted build: never resumed, always redone
        shutil.rmtree(partial)
    partial.mkdir()
    counts = {}
    for split in SPLITS:
        files, labels = list_split(root, split, classes)
        # allocated up front (a full disk is an OSError, not SIGBUS), renamed into place when complete
        write_decoded_npy(partial / f"{split}_images.npy", files, decode_image, IMAGE_SIZE, f"decoding {split}")
        np.save(partial / f"{split}_labels.npy", labels)
        (partial / f"{split}_files.txt").write_text("".join(f"{p.relative_to(root).as_posix()}\n" for p in files))
        counts[split] = len(files)
    (partial / "classes.json").write_text(json.dumps(classes))
    meta = {"version": CACHE_VERSION, "image_size": IMAGE_SIZE, "num_classes": len(classes), "counts": counts,
            "class_words": _read_words(root, classes)}
    return publish_cache(partial, final, meta)


def _missing(data_dir: Path, why: str) -> DataMissingError:
    return DataMissingError(
        f"Tiny-ImageNet not found at {tiny_imagenet_root(data_dir)} ({why}); run `python data.py --dataset "
        f"tiny-imagenet --data_dir {data_dir}` with network access, or put {TINY_IMAGENET_ZIP} "
        f"({TINY_IMAGENET_URL}) in {data_dir} and run that command"
    )


def _tree_complete(root: Path) -> bool:
    return (root / "wnids.txt").is_file() and (root / "train").is_dir() and (root / "val").is_dir()


def prepare_tiny_imagenet(
    data_dir: str | Path,
    url: str | None = None,
    md5: str | None = None,
    force: bool = False,
    download: bool = True,
) -> Path:
    """Download (if needed and allowed), extract, arrange val and build the array cache.

    `url`/`md5` name a mirror (default: the official archive). Returns `data_dir/tiny-imagenet-200`. Does nothing (no network) when the cache is complete,
    unless `force`, which rebuilds from the archive (re-downloaded if it fails its md5).
    Raises DataMissingError when there is no data and it cannot be downloaded.
    """
    data_dir = Path(data_dir)
    root = tiny_imagenet_root(data_dir)
    if not force and tiny_imagenet_ready(data_dir):
        return root
    url, md5 = url or TINY_IMAGENET_URL, (md5 or TINY_IMAGENET_MD5).lower()
    size = TINY_IMAGENET_BYTES if md5 == TINY_IMAGENET_MD5 else None  # a mirror's own file: md5 only
    archive = data_dir / TINY_IMAGENET_ZIP
    with file_lock(data_dir / ".tiny-imagenet.lock"):  # creates data_dir (one line if a file is in the way)
        if not force and tiny_imagenet_ready(data_dir):  # another process finished while we waited
            return root
        if force and root.exists():
            shutil.rmtree(root)
        if not _tree_complete(root):
            if root.exists():
                raise UserError(f"{root} exists but is incomplete (no wnids.txt, train/ or val/); delete it "
                                f"or run `python data.py --dataset tiny-imagenet --data_dir {data_dir} --force`")
            fetch_archive(archive, url, md5, size, force=force, download=download,
                          missing=lambda why: _missing(data_dir, why),
                          redo="python data.py --dataset tiny-imagenet --force")
            logger.info("extracting %s", archive)
            extract_into_place(archive, root, member_root=TINY_IMAGENET_FOLDER)
        arrange_val_by_class(root)
        logger.info("decoding the JPEGs once into %s", root / "cache")
        try:
            build_cache(root)
        except OSError as exc:  # a full disk: one line; the partial cache is redone by the next run
            raise UserError(f"cannot write the image cache in {root / 'cache.partial'}: {exc.strerror or exc}") from None
    return root


def load_tiny_imagenet(
    data_dir: str | Path, split: str, download: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a split from the array cache, preparing it first when needed.

    Returns images uint8 (N, 64, 64, 3) (a read-only memmap), labels int64 (N,) and the sorted
    wnids (label i = classes[i]). Raises DataMissingError when absent and not downloadable.
    """
    if split not in SPLITS:
        raise UserError(f"unknown Tiny-ImageNet split {split!r}; choose 'train' or 'val' (test/ has no labels)")
    if not tiny_imagenet_ready(data_dir):
        prepare_tiny_imagenet(data_dir, download=download)
    cache = tiny_imagenet_cache_dir(data_dir)
    meta = read_cache_meta(cache, CACHE_VERSION) or {}
    images = np.load(cache / f"{split}_images.npy", mmap_mode="r")
    labels = np.load(cache / f"{split}_labels.npy")
    classes = json.loads((cache / "classes.json").read_text())
    expected = meta.get("counts", {}).get(split)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(images) != len(labels) or len(labels) != expected:
        raise UserError(f"Tiny-ImageNet cache in {cache} is inconsistent; run `python data.py --dataset "
                        f"tiny-imagenet --data_dir {data_dir} --force`")
    return images, labels.astype(np.int64, copy=False), list(classes)


def _load(data_dir, split: str, download: bool, image_size: int | None):
    return load_tiny_imagenet(data_dir, "train" if split == "train" else "val", download=download)


TINY_IMAGENET = DatasetInfo(
    "tiny-imagenet", 200, IMAGE_SIZE, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, load=_load,
    aliases=("imagenet",),  # the original project's name for it
    prepare=prepare_tiny_imagenet, ready=tiny_imagenet_ready, source=TINY_IMAGENET_URL, sizes=(100_000, 10_000),
    balanced=True,
)
