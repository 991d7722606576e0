"""A feature cache for the linear probe: one backbone pass per checkpoint, however many label fractions.

test.py --feature_cache DIR keeps the frozen backbone's features of the WHOLE train split and of
the test split in DIR/<key>.pt, the key a sha256 of everything the features depend on: the
checkpoint file's sha256, the evaluation dataset's name and content fingerprints (data_sha256 of
both splits), the preprocessing (image size, mean, std), the feature dtype and this module's
FORMAT. A second call with another --label_fraction, --labels_per_class, --val_split or --seed
then reads them (a few hundred ms) and picks its train / val rows by index instead of running the
network. simclr_train.py --label_fractions points every fraction of one checkpoint at one cache.

    feats = cached_features(backbone, data, preprocess, device, sha, cache_dir, dataset="cifar100")
    # {"train": (N_train, D), "val": (N_val, D) or None, "test": (N_test, D), "seconds": s, "hit": bool}

Features computed on a whole split and then indexed equal those computed on the subset up to
float rounding of the batched convolutions (tests/test_labels.py compares them with a tolerance).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

from utils.data.datasets import data_sha256
from utils.eval.features import extract_features
from utils.io import atomic_write

FORMAT = 1  # bump when what is stored (or how it is computed) changes: old files then miss


def cache_key(checkpoint_sha256: str, dataset: str, data, preprocess, precision: str = "fp32") -> str:
    """sha256 of what the features of `data` (a utils.eval.probe.ProbeData) depend on: not of which rows
    are labelled or held out, so every fraction, validation split and seed of one checkpoint shares it."""
    parts = {"format": FORMAT, "checkpoint": checkpoint_sha256, "dataset": dataset,
             "train": data_sha256(data.all_train_images, data.all_train_labels),
             "test": data_sha256(data.test_images, data.test_labels),
             "image_size": preprocess.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std),
             "dtype": "float32", "precision": precision}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_features(backbone: nn.Module, data, preprocess, device: torch.device, checkpoint_sha256: str,
                    cache_dir: str | Path, dataset: str, batch_size: int = 512, precision: str = "fp32") -> dict:
    """Train / val / test features (cached eval-transform features) of `data`'s rows, from the cache or
    computed on the whole train split and stored. The backbone must be frozen (eval mode, no gradients)."""
    path = Path(cache_dir) / f"{cache_key(checkpoint_sha256, dataset, data, preprocess, precision)}.pt"
    t0 = time.perf_counter()
    hit = path.is_file()
    if hit:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    else:
        size, mean, std = preprocess.image_size, preprocess.mean, preprocess.std
        stored = {split: extract_features(backbone, images, size, mean, std, device, batch_size=batch_size,
                                          progress=f"{split} features (cached in {path.parent})",
                                          precision=precision).cpu()
                  for split, images in (("train", data.all_train_images), ("test", data.test_images))}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(stored, f))
    train = stored["train"]
    out = {"train": train[torch.as_tensor(data.train_index)], "test": stored["test"],
           "val": None if data.val_index is None else train[torch.as_tensor(data.val_index)],
           "hit": hit, "path": str(path)}
    out["seconds"] = time.perf_counter() - t0
    return out
