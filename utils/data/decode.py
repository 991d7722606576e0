"""Decode many image files into a uint8 array cache: opened safely, in parallel, written without SIGBUS.

PIL releases the GIL while decoding, so threads scale; used to build the array caches of
Tiny-ImageNet and image folders once, so no training epoch decodes a JPEG.

- `open_image` refuses images over a pixel limit (a decompression bomb, or a genuinely huge
  microscopy/satellite image) with one line naming the file and the limit. The limit is PIL's
  default (89,478,485 pixels, about 9,459 x 9,459) unless the environment variable
  SIMCLR_MAX_IMAGE_PIXELS sets another (`0` or `none`: no limit).
- `decode_into` decodes every file, collects every failure and reports them together in one
  line; Ctrl-C cancels the queued work instead of waiting for the whole decode.
- `write_decoded_npy` writes the array to a uniquely named temp `.npy` whose blocks are allocated
  up front (`os.posix_fallocate`), so a full disk is an OSError at the start (a write into a
  memory map on a full file system would be SIGBUS), then renames it into place.

    python -c "from utils.data.decode import max_image_pixels; print(max_image_pixels())"
"""
from __future__ import annotations

import errno
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.errors import UserError
from utils.io import _target_mode  # the mode open() would give (umask), as atomic_write does

DECODE_CHUNK = 128  # images per thread task: few futures, a steady progress bar
MAX_DECODE_THREADS = 8
MAX_PIXELS_ENV = "SIMCLR_MAX_IMAGE_PIXELS"
PIL_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own default (Image.MAX_IMAGE_PIXELS: 1024 * 1024 * 1024 // 4 // 3)
FAILURES_SHOWN = 3  # failed files named in the one-line error; the rest are counted
_ALLOCATE_BLOCK = 1 << 24  # bytes written per call where posix_fallocate is missing


def max_image_pixels() -> int | None:
    """The pixel limit per image: SIMCLR_MAX_IMAGE_PIXELS if set (0/none: no limit), else PIL's default."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().lower()
    if not raw:
        return PIL_MAX_IMAGE_PIXELS
    if raw in ("0", "none"):
        return None
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"{MAX_PIXELS_ENV} must be a number of pixels (0 or none: no limit), got {raw!r}")
    return value


def open_image(path: str | Path) -> Image.Image:
    """Image.open with the pixel limit above; UserError naming the file and the limit when over it."""
    limit = max_image_pixels()
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; the limit is checked here instead.
    Image.MAX_IMAGE_PIXELS = None
    img = Image.open(path)
    if limit is not None and img.width * img.height > limit:
        img.close()
        raise UserError(f"{path} is {img.width} x {img.height} = {img.width * img.height:,} pixels, over the limit "
                        f"of {limit:,} (a guard against decompression bombs); to allow it, set "
                        f"{MAX_PIXELS_ENV}={img.width * img.height} (or 0 for no limit)")
    return img


def decode_into(out: np.ndarray, files: list[Path], decode: Callable[[Path, int], np.ndarray], desc: str) -> None:
    """Fill `out` (N, S, S, 3) with `decode(files[i], S)` for every i, in parallel, with a progress bar.

    A `decode` that raises UserError for a file (unreadable, truncated, too large) does not stop
    the others: every failure is collected and one UserError names them all (the first few by
    name, the rest counted). Any other exception, and Ctrl-C, stops at once: queued chunks are
    cancelled and running ones stop at their next image.
    """
    size = out.shape[1]
    failures: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work(start: int) -> int:
        stop_at = min(start + DECODE_CHUNK, len(files))
        for i in range(start, stop_at):
            if stop.is_set():
                break
            try:
                out[i] = decode(files[i], size)
            except UserError as exc:
                with lock:
                    failures.append((i, str(exc)))
            except BaseException:
                stop.set()  # the other threads stop at their next image
                raise
        return stop_at - start

    workers = max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with tqdm(total=len(files), unit="img", desc=desc, disable=None, leave=False) as bar:
            futures = [pool.submit(work, start) for start in range(0, len(files), DECODE_CHUNK)]
            for future in as_completed(futures):  # the first exception surfaces at once, whichever chunk
                bar.update(future.result())
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failures:
        failures.sort()
        shown = "; ".join(message for _, message in failures[:FAILURES_SHOWN])
        more = f"; and {len(failures) - FAILURES_SHOWN} more" if len(failures) > FAILURES_SHOWN else ""
        raise UserError(f"{len(failures)} of {len(files)} images could not be used: {shown}{more}. "
                        "Fix or remove them and rerun")


def _allocate(fd: int, length: int) -> None:
    """Reserve `length` bytes of disk for `fd` now, so later writes through a memory map cannot hit ENOSPC."""
    try:
        os.posix_fallocate(fd, 0, length)
        return
    except AttributeError:  # no posix_fallocate on this platform
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    zeros = bytes(min(_ALLOCATE_BLOCK, length))  # file systems without fallocate: write the zeros
    done = 0
    while done < length:
        done += os.pwrite(fd, zeros[: min(len(zeros), length - done)], done)


def write_decoded_npy(path: Path, files: list[Path], decode: Callable[[Path, int], np.ndarray], size: int,
                      desc: str) -> None:
    """Decode `files` into a uint8 (N, size, size, 3) `.npy` at `path`, atomically.

    The array goes to a temp file of its own in `path`'s folder (so two processes never write
    one file), allocated in full before the first image is decoded; it is renamed to `path`
    when complete and removed on any failure (OSError such as ENOSPC, bad images, Ctrl-C).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npy", dir=path.parent)
    os.fchmod(fd, _target_mode(path))  # mkstemp makes 0600 files; a shared data folder's cache must stay readable
    os.close(fd)
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        try:
            fd = os.open(tmp, os.O_RDWR)
            try:
                _allocate(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            decode_into(images, files, decode, desc)
            images.flush()
        finally:
            del images
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_cache_meta(cache: Path, version: int) -> dict | None:
    """A cache folder's meta.json when it is there, readable and of `version` (the cache is complete); else None."""
    import json

    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("version") == version else None


def publish_cache(partial: Path, final: Path, meta: dict) -> Path:
    """Finish a cache folder built in `partial`: write its meta.json last (its presence marks the cache complete),
    then put the folder in place of `final` (an older cache there is removed first)."""
    import json
    import shutil

    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final
