"""Decode many image files into a preallocated uint8 array with a thread pool.

PIL releases the GIL while decoding, so threads scale; used to build the array caches of
Tiny-ImageNet and image folders once, so no training epoch decodes a JPEG.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

DECODE_CHUNK = 128  # images per thread task: few futures, a steady progress bar
MAX_DECODE_THREADS = 8


def decode_into(out: np.ndarray, files: list[Path], decode: Callable[[Path, int], np.ndarray], desc: str) -> None:
    """Fill `out` (N, S, S, 3) with `decode(files[i], S)` for every i, in parallel, with a progress bar."""
    size = out.shape[1]

    def work(start: int) -> int:
        stop = min(start + DECODE_CHUNK, len(files))
        for i in range(start, stop):
            out[i] = decode(files[i], size)
        return stop - start

    workers = max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(files), unit="img", desc=desc, disable=None, leave=False
    ) as bar:
        for done in pool.map(work, range(0, len(files), DECODE_CHUNK)):
            bar.update(done)
