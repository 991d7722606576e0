"""Image-folder datasets (`data_dir/train/<class>/...`, optional `data_dir/test/<class>/...`) as arrays.

Images are resized (shorter side to `image_size`, bilinear) and center-cropped, decoded once and
cached as `.npy` under `data_dir/.cache/` keyed by split and size. The cache records a
fingerprint of the file list (relative paths, sizes, mtimes) and is rebuilt when it changes.
Class indices come from the sorted class folders of `train/` and are used for `test/` too, so
both splits share one map even when `test/` lacks some classes.

    python -c "from utils.folder import load_image_folder; x, y, c = load_image_folder('my_images', 'train', 64); print(x.shape, c)"
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from utils.decode import decode_into
from utils.errors import UserError

logger = logging.getLogger(__name__)

# The extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FOLDER = ".cache"
CACHE_VERSION = 1  # bump when the preprocessing below changes
SPLITS = ("train", "test")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not path.name.startswith(".")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_classes(data_dir: str | Path) -> list[str]:
    """The sorted class folder names of `data_dir/train` (label i = classes[i]); UserError if unusable."""
    train = Path(data_dir) / "train"
    if not train.is_dir():
        raise UserError(f"image folder {train} not found: expected {Path(data_dir)}/train/<class>/<image>")
    classes = [d.name for d in _class_dirs(train) if any(_is_image(p) for p in d.rglob("*"))]
    if not classes:
        raise UserError(f"no images found under {train}/<class>/ (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    if len(classes) < 2:
        raise UserError(f"only one class ({classes[0]}) under {train}: a classifier needs at least two")
    return classes


def has_split(data_dir: str | Path, split: str) -> bool:
    """True when `data_dir/<split>` exists (e.g. to decide whether a held-out test split is there)."""
    return (Path(data_dir) / split).is_dir()


def list_folder(data_dir: str | Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files of `split` (sorted by class, then path), their int64 labels, and the classes."""
    if split not in SPLITS:
        raise UserError(f"unknown folder split {split!r}; choose one of {SPLITS}")
    data_dir = Path(data_dir)
    classes = folder_classes(data_dir)
    split_dir = data_dir / split
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} does not exist: this image folder has no {split} split")
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in _class_dirs(split_dir):
        found = sorted(p for p in class_dir.rglob("*") if _is_image(p))
        if not found:
            continue
        if class_dir.name not in index:
            raise UserError(f"{class_dir} is a class that {data_dir / 'train'} does not have")
        files += found
        labels += [index[class_dir.name]] * len(found)
    if not files:
        raise UserError(f"no images found under {split_dir}/<class>/")
    return files, np.asarray(labels, dtype=np.int64), classes


def _fingerprint(data_dir: Path, files: list[Path], image_size: int) -> str:
    """Hash of what the cache depends on: file list with sizes and mtimes, size, format version."""
    digest = hashlib.sha1(f"v{CACHE_VERSION} size={image_size}\n".encode())
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(data_dir).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bilinear), then the central size x size square (torchvision's
    Resize(size) + CenterCrop(size) arithmetic)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def decode_folder_image(path: str | Path, size: int) -> np.ndarray:
    """One image file -> uint8 (size, size, 3) RGB (EXIF orientation applied)."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            return np.asarray(resize_center_crop(img, size), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot decode image {path}: {exc}") from None


def _build_cache(cache: Path, stem: str, files: list[Path], labels: np.ndarray, classes: list[str], key: str,
                 image_size: int, split: str) -> None:
    """Decode `files` into `cache/<stem>_{images,labels}.npy`; `<stem>_meta.json` is written last."""
    cache.mkdir(parents=True, exist_ok=True)
    meta_path = cache / f"{stem}_meta.json"
    meta_path.unlink(missing_ok=True)  # the meta file marks a complete cache: drop it first
    tmp_images = cache / f"{stem}_images.tmp.npy"
    images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8,
                                       shape=(len(files), image_size, image_size, 3))
    decode_into(images, files, decode_folder_image, f"decoding {split}")
    images.flush()
    del images
    os.replace(tmp_images, cache / f"{stem}_images.npy")
    tmp_labels = cache / f"{stem}_labels.tmp.npy"
    np.save(tmp_labels, labels)
    os.replace(tmp_labels, cache / f"{stem}_labels.npy")
    tmp_meta = cache / f"{stem}_meta.tmp.json"
    tmp_meta.write_text(json.dumps({"fingerprint": key, "classes": classes, "count": len(files)}))
    os.replace(tmp_meta, meta_path)


def load_image_folder(
    data_dir: str | Path, split: str, image_size: int = 64
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 (N, S, S, 3) (a read-only memmap of the cache), labels int64 (N,), classes.

    Raises UserError for a missing folder, no images, a single class, or (split="test") a
    missing `test/` folder; the caller decides what to do without a test split.
    """
    if image_size < 1:
        raise UserError(f"image_size must be positive, got {image_size}")
    data_dir = Path(data_dir)
    files, labels, classes = list_folder(data_dir, split)
    key = _fingerprint(data_dir, files, image_size)
    cache = data_dir / CACHE_FOLDER
    stem = f"{split}_{image_size}px"
    images_path, labels_path, meta_path = (cache / f"{stem}_{kind}" for kind in ("images.npy", "labels.npy", "meta.json"))
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    if meta.get("fingerprint") != key or not images_path.is_file() or not labels_path.is_file():
        logger.info("decoding %d %s images of %s into %s", len(files), split, data_dir, cache)
        try:
            _build_cache(cache, stem, files, labels, classes, key, image_size, split)
        except OSError as exc:
            raise UserError(f"cannot write the image cache in {cache}: {exc.strerror or exc}") from None
    images = np.load(images_path, mmap_mode="r")
    cached_labels = np.load(labels_path)
    if len(images) != len(files) or not np.array_equal(cached_labels, labels):
        raise UserError(f"image cache {images_path} is inconsistent; delete {cache} and rerun")
    return images, cached_labels.astype(np.int64, copy=False), classes
