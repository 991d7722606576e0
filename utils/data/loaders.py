"""Training batches, resumable at any step: the DataLoader path and the device-resident path.

Both yield `(views, labels)` per step, where `views` is a list of float tensors on the
training device (two views for SimCLR, one image for supervised) and `labels` is (B,) int64.
Data order and augmentation are pure functions of (seed, epoch, step), so a run resumed
from a checkpoint taken at any step sees exactly the batches an uninterrupted run sees.

- LoaderBatches: per-image PIL transforms in DataLoader workers (the reference pipeline),
  DistributedSampler with set_epoch for order and sharding.
- DeviceBatches: the whole uint8 training set on the device, one seeded global permutation
  per epoch sharded by rank, batched augmentation on the device (no workers, no host copies).
"""
from __future__ import annotations

from typing import Callable, Iterator

import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from utils.data.datasets import ArrayDataset, ImageArrays
from utils.distributed import DistEnv, shard_permutation

Batch = tuple[list[torch.Tensor], torch.Tensor]


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step, rank, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _ignore_stop_signals(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers must not die before the main process
    # has written last.pth; it shuts them down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class LoaderBatches:
    """DataLoader path: `transform(image HWC uint8) -> tensor or tuple of view tensors`."""

    def __init__(
        self,
        arrays: ImageArrays,
        indices: np.ndarray,
        transform: Callable,
        local_batch_size: int,
        seed: int,
        env: DistEnv,
        device: torch.device,
        workers: int = 0,
        channels_last: bool = True,
    ):
        self.dataset = ArrayDataset(arrays, indices, transform, seed=seed)
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = local_batch_size
        self.steps_per_epoch = len(self.sampler) // local_batch_size
        self.device, self.workers, self.channels_last = device, workers, channels_last

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)[start_step * self.batch_size: self.steps_per_epoch * self.batch_size]
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order,
            num_workers=self.workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # workers must see this epoch's set_epoch
            worker_init_fn=_ignore_stop_signals if self.workers else None,
        )
        for images, labels in loader:
            views = list(images) if isinstance(images, (list, tuple)) else [images]
            yield [_to_device(v, self.device, self.channels_last) for v in views], labels.to(self.device, non_blocking=True)


class DeviceBatches:
    """Device path: `augment(x uint8 (B,3,H,W), generator) -> float (B,3,S,S)`, applied `n_views` times."""

    def __init__(
        self,
        arrays: ImageArrays,
        indices: np.ndarray,
        augment: Callable,
        n_views: int,
        global_batch_size: int,
        seed: int,
        env: DistEnv,
        device: torch.device,
        channels_last: bool = True,
    ):
        images = np.ascontiguousarray(arrays.images[np.asarray(indices)])
        self.images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, H, W)
        self.labels = torch.from_numpy(np.asarray(arrays.labels[np.asarray(indices)])).to(device)
        self.augment, self.n_views = augment, n_views
        self.global_batch_size, self.local_batch_size = global_batch_size, global_batch_size // env.world_size
        self.steps_per_epoch = len(self.labels) // global_batch_size
        self.seed, self.env, self.device, self.channels_last = seed, env, device, channels_last

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = shard_permutation(
            len(self.labels), self.seed, epoch, self.env.rank, self.env.world_size, self.global_batch_size,
            drop_last=True, device=self.device,
        )
        bs = self.local_batch_size
        generator = torch.Generator(device=self.device)
        for step in range(start_step, self.steps_per_epoch):
            idx = order[step * bs:(step + 1) * bs]
            x = self.images[idx]
            generator.manual_seed(_step_seed(self.seed, epoch, step, self.env.rank))
            views = [self.augment(x, generator) for _ in range(self.n_views)]
            yield [_to_device(v, self.device, self.channels_last) for v in views], self.labels[idx]
