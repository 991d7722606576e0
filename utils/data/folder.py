"""Image-folder datasets (`data_dir/train/<class>/...`, optional `data_dir/test/<class>/...`) as arrays.

Images are resized (shorter side to `image_size`, bilinear) and center-cropped, decoded once and
cached as `.npy` under `data_dir/.cache/` keyed by split and size. The cache records a
fingerprint of the class map and the file list (relative paths, sizes, mtimes) and rebuilds
itself when either changes (a class added to `train/` renumbers the classes of `test/` too).
Class indices come from the sorted class folders of `train/` and are used for `test/` too, so
both splits share one map even when `test/` lacks some classes.

Every class folder must hold at least one image with one of IMAGE_EXTENSIONS (as torchvision's
ImageFolder requires); other files and broken links are skipped with one warning counting them
by extension. Several processes may build or read one cache at once: `.cache/<split>_<size>px.lock`
lets one build while the others wait and then reuse it, and the arrays are written to unique
temp files allocated in full up front (a full disk is one line, exit 2, no temp file left).

    python -c "from utils.data.folder import load_image_folder; x, y, c = load_image_folder('my_images', 'train', 64); print(x.shape, c)"
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from utils.data.constants import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from utils.data.decode import open_image, write_decoded_npy
from utils.data.download import file_lock
from utils.errors import UserError
from utils.io import atomic_write

logger = logging.getLogger("simclr.folder")  # under train.py's logger: warnings reach train.log

# The extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FOLDER = ".cache"
CACHE_VERSION = 2  # bump when the preprocessing or the fingerprint below changes
SPLITS = ("train", "test")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not path.name.startswith(".")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(class_dir: Path) -> tuple[list[Path], list[str]]:
    """(image files, sorted), and what was skipped: an extension (".gif", "no extension") or "broken link"
    for each other entry. Hidden files (.DS_Store, ...) are neither."""
    images, skipped = [], []
    for path in class_dir.rglob("*"):
        if path.name.startswith(".") or path.is_dir():
            continue
        if _is_image(path):
            images.append(path)
        elif path.is_symlink() and not path.exists():
            skipped.append("broken link")
        else:
            skipped.append(path.suffix.lower() or "no extension")
    return sorted(images), skipped


def _warn_skipped(split_dir: Path, skipped: list[str]) -> None:
    if not skipped:
        return
    counts: dict[str, int] = {}
    for kind in skipped:
        counts[kind] = counts.get(kind, 0) + 1
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    logger.warning("warning: skipped %d file(s) under %s that are not images (%s); images must end in %s",
                   len(skipped), split_dir, kinds, " ".join(IMAGE_EXTENSIONS))


def _empty_class_error(split_dir: Path, empty: list[str], skipped_in: dict[str, list[str]]) -> UserError:
    found = {name: sorted(set(skipped_in.get(name, []))) for name in empty}
    described = ", ".join(f"{name} ({'has only ' + ' '.join(found[name]) if found[name] else 'empty'})"
                          for name in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    return UserError(f"class folder(s) under {split_dir} with no usable image: {described}; images must end in "
                     f"{' '.join(IMAGE_EXTENSIONS)}: add some or remove the folder")


def folder_classes(data_dir: str | Path) -> list[str]:
    """The sorted class folder names of `data_dir/train` (label i = classes[i]); UserError if unusable.

    A class folder without a usable image is an error (naming it), not silently dropped.
    """
    train = Path(data_dir) / "train"
    if not train.is_dir():
        raise UserError(f"image folder {train} not found: expected {Path(data_dir)}/train/<class>/<image>")
    names = [d.name for d in _class_dirs(train)]
    scans = {name: _scan(train / name) for name in names}
    classes = [name for name in names if scans[name][0]]
    if not classes:
        raise UserError(f"no images found under {train}/<class>/ (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    empty = [name for name in names if not scans[name][0]]
    if empty:
        raise _empty_class_error(train, empty, {name: scans[name][1] for name in names})
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
    skipped: list[str] = []
    scans = {d.name: _scan(d) for d in _class_dirs(split_dir)}
    for name, (found, passed_over) in scans.items():
        skipped += passed_over
        if found and name not in index:
            raise UserError(f"{split_dir / name} is a class that {data_dir / 'train'} does not have")
        files += found
        labels += [index.get(name, -1)] * len(found)
    if not files:
        raise UserError(f"no images found under {split_dir}/<class>/")
    empty = [name for name, (found, _) in scans.items() if not found]
    if empty:
        raise _empty_class_error(split_dir, empty, {name: scan[1] for name, scan in scans.items()})
    _warn_skipped(split_dir, skipped)
    return files, np.asarray(labels, dtype=np.int64), classes


def _fingerprint(data_dir: Path, files: list[Path], classes: list[str], image_size: int) -> str:
    """Hash of what the cache depends on: class map, file list with sizes and mtimes, size, format version."""
    digest = hashlib.sha1(f"v{CACHE_VERSION} size={image_size}\n".encode())
    digest.update(json.dumps(classes).encode() + b"\n")  # labels are indices into this map
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
        with open_image(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            return np.asarray(resize_center_crop(img, size), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot decode image {path}: {exc}") from None


def _build_cache(cache: Path, stem: str, files: list[Path], labels: np.ndarray, classes: list[str], key: str,
                 image_size: int, split: str) -> None:
    """Decode `files` into `cache/<stem>_{images,labels}.npy`; `<stem>_meta.json` is written last.

    Called with the cache's lock held: any temp file of this stem is a killed builder's leftover.
    """
    for stale in cache.glob(f".{stem}_*.tmp*"):
        stale.unlink(missing_ok=True)
    meta_path = cache / f"{stem}_meta.json"
    meta_path.unlink(missing_ok=True)  # the meta file marks a complete cache: drop it first
    write_decoded_npy(cache / f"{stem}_images.npy", files, decode_folder_image, image_size, f"decoding {split}")
    atomic_write(cache / f"{stem}_labels.npy", lambda f: np.save(f, labels))
    atomic_write(meta_path, lambda f: f.write(json.dumps({"fingerprint": key, "classes": classes,
                                                           "count": len(files)}).encode()))


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def load_image_folder(
    data_dir: str | Path, split: str, image_size: int = 64
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 (N, S, S, 3) (a read-only memmap of the cache), labels int64 (N,), classes.

    Raises UserError for a missing folder, no images, a single class, a class folder without
    images, undecodable images (all named together), a full disk, or (split="test") a missing
    `test/` folder; the caller decides what to do without a test split.
    """
    if image_size < 1:
        raise UserError(f"image_size must be positive, got {image_size}")
    data_dir = Path(data_dir)
    files, labels, classes = list_folder(data_dir, split)
    key = _fingerprint(data_dir, files, classes, image_size)
    cache = data_dir / CACHE_FOLDER
    stem = f"{split}_{image_size}px"
    images_path, labels_path, meta_path = (cache / f"{stem}_{kind}" for kind in ("images.npy", "labels.npy", "meta.json"))

    def complete() -> bool:
        return _read_meta(meta_path).get("fingerprint") == key and images_path.is_file() and labels_path.is_file()

    with ExitStack() as stack:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(cache / f"{stem}.lock"))  # one builder; the others wait, then reuse
            writable = True
        except OSError as exc:  # a read-only data folder with a complete cache is fine; anything else is not
            if not complete():
                raise UserError(f"cannot write the image cache in {cache}: {exc.strerror or exc}") from None
            writable = False
        if writable and not complete():  # checked under the lock: another process may have just built it
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


DEFAULT_FOLDER_IMAGE_SIZE = 64  # --image_size when none is given (folder images have no native size)


def _load(data_dir, split: str, download: bool, image_size: int | None):
    return load_image_folder(data_dir, split, image_size or DEFAULT_FOLDER_IMAGE_SIZE)


FOLDER = DatasetInfo("folder", None, None, IMAGENET_MEAN, IMAGENET_STD, load=_load,
                     source="your own images under --data_dir (train/<class>/*, test/<class>/*): nothing to download")
