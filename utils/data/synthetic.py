"""The built-in `synthetic` dataset: 32x32 RGB shapes, offline, made in memory in a second.

Ten classes told apart by shape and structure only (disk, square, triangle, ring, plus,
diagonal cross, horizontal stripes, vertical stripes, checkerboard, frame), each image a
wallpaper of its shape so that even a small random crop shows the class; colours (from a
shared palette), tile size, phase and noise are random, so colour says nothing about the class. The same seed always gives the same images. Tests and the quick start use it.

    from utils.data.synthetic import make_synthetic
    x, y = make_synthetic(2000, seed=0)   # x: uint8 (2000, 32, 32, 3), y: int64 (2000,)
"""
from __future__ import annotations

import numpy as np

from utils.data.constants import SYNTHETIC_MEAN, SYNTHETIC_STD, DatasetInfo

SYNTHETIC_CLASSES = [
    "disk", "square", "triangle", "ring", "plus", "cross", "h-stripes", "v-stripes", "checker", "frame",
]
SYNTHETIC_SIZE = 32
# Three well-separated RGB colours in [0, 1], shared by every class (background and shape
# always differ): 6 colour pairs, fewer than the classes, so colour cannot stand in for shape.
PALETTE = np.array([[0.90, 0.25, 0.20], [0.20, 0.75, 0.30], [0.25, 0.35, 0.90]])
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2000, 500
# The two splits come from disjoint seed streams of one base seed.
_SPLIT_OFFSET = {"train": 0, "test": 1_000_003}


def _masks(dx: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    """Boolean (N, S, S) masks of each shape in normalised coordinates (radius 1)."""
    ax, ay = np.abs(dx), np.abs(dy)
    rad, box = np.sqrt(dx**2 + dy**2), np.maximum(ax, ay)
    inside = box <= 1.0
    return [
        rad <= 1.0,
        box <= 0.8,
        (dy >= -0.85) & (dy <= 0.85) & (ax <= (dy + 0.85) / 1.7 * 0.95),
        (rad >= 0.55) & (rad <= 1.0),
        ((ax <= 0.25) & (ay <= 1.0)) | ((ay <= 0.25) & (ax <= 1.0)),
        ((np.abs(dx - dy) <= 0.3) | (np.abs(dx + dy) <= 0.3)) & (box <= 0.95),
        inside & (np.floor((dy + 1) * 2.5) % 2 == 0),
        inside & (np.floor((dx + 1) * 2.5) % 2 == 0),
        inside & ((np.floor((dx + 1) * 2) + np.floor((dy + 1) * 2)) % 2 == 0),
        (box >= 0.55) & (box <= 0.95),
    ]


def make_synthetic(n: int, seed: int = 0, size: int = SYNTHETIC_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n images (uint8, (n, size, size, 3)) and balanced labels (int64, (n,)), fully determined by seed."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SYNTHETIC_CLASSES)).astype(np.int64)
    # A wallpaper of one shape: every crop, even a small one, shows the class.
    scale = size / SYNTHETIC_SIZE
    period = rng.uniform(9, 14, n) * scale  # tile side in pixels
    radius = period * rng.uniform(0.36, 0.46, n)
    phase_x, phase_y = rng.uniform(0, 1, n) * period, rng.uniform(0, 1, n) * period
    grid = np.arange(size, dtype=np.float32) + 0.5
    local_x = (grid[None, None, :] - phase_x[:, None, None]) % period[:, None, None] - period[:, None, None] / 2
    local_y = (grid[None, :, None] - phase_y[:, None, None]) % period[:, None, None] - period[:, None, None] / 2
    dx = local_x / radius[:, None, None]
    dy = local_y / radius[:, None, None]
    masks = np.stack(_masks(dx, dy), axis=0)  # (C, n, S, S)
    mask = masks[labels, np.arange(n)]  # each image's own shape

    # Colours come from a small shared palette (plus a little per-image tint): colour then says
    # little about which image a view came from, so contrastive learning cannot tell instances
    # apart by colour alone and has to use shape (SimCLR's colour shortcut, Chen et al. 2020 fig. 6).
    bg_idx = rng.integers(0, len(PALETTE), n)
    fg_idx = (bg_idx + rng.integers(1, len(PALETTE), n)) % len(PALETTE)  # never the background colour
    tint = rng.normal(0, 0.04, (n, 1, 1, 3))
    background = PALETTE[bg_idx][:, None, None, :] + tint
    foreground = PALETTE[fg_idx][:, None, None, :] + tint
    noise = rng.normal(0, 0.06, (n, size, size, 3))
    image = np.where(mask[..., None], foreground, background) + noise
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), labels


def load_synthetic(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The `synthetic` dataset's split ("train": 2,000 images, "test": 500)."""
    n = SYNTHETIC_TRAIN if split == "train" else SYNTHETIC_TEST
    x, y = make_synthetic(n, seed=seed + _SPLIT_OFFSET[split])
    return x, y, list(SYNTHETIC_CLASSES)


def _load(data_dir, split: str, download: bool, image_size: int | None):
    return load_synthetic(split)


SYNTHETIC = DatasetInfo("synthetic", 10, SYNTHETIC_SIZE, SYNTHETIC_MEAN, SYNTHETIC_STD, load=_load,
                        source="made in memory from a seed (utils/data/synthetic.py): nothing to download",
                        sizes=(SYNTHETIC_TRAIN, SYNTHETIC_TEST), balanced=True)
