"""Multi-process training helpers: torchrun environment, process group, collectives, data shards.

Everything here is a no-op (or the identity) in a plain single-process run, so `train.py` calls
these functions unconditionally and `python train.py` never touches `torch.distributed`. Under
torchrun they give DistributedDataParallel what it needs:

    torchrun --standalone --nproc_per_node 2 train.py --dataset synthetic --device cpu

    env = init_distributed(device.type)      # NCCL on CUDA, gloo on CPU, from torchrun's env
    per_rank = per_rank_batch_size(args.batch_size, env.world_size)
    idx = shard_permutation(n, seed, epoch, env.rank, env.world_size, args.batch_size)
    ...
    cleanup_distributed()

`all_gather_with_grad` is the autograd-aware gather used by the cross-rank NT-Xent
(`utils.train.losses.gathered_nt_xent_loss`): its backward all-reduces (sums) the incoming gradient
and returns this rank's own slice, so gradients reach the rank that produced each embedding.
"""
from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError

# Names of the variables torchrun (torch.distributed.run) sets for every worker process.
ENV_RANK = "RANK"
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_LOCAL_RANK = "LOCAL_RANK"

# Backends: NCCL is the only fast GPU backend; gloo is the one that runs on CPU.
BACKEND_FOR_DEVICE = {"cuda": "nccl", "cpu": "gloo"}

# Odd 64-bit constant (the golden ratio's fraction, as in splitmix64) that spreads (seed, epoch)
# pairs over the generator's seed space, so (seed=1, epoch=0) and (seed=0, epoch=1) differ.
_SEED_MIX = 0x9E3779B97F4A7C15
_SEED_MOD = 2**63


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, number of processes, and GPU index on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that downloads data and writes files (global rank 0)."""
        return self.rank == 0


def _int_from_environ(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_env_from_environ() -> DistEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; without them, a single process."""
    world_size = _int_from_environ(ENV_WORLD_SIZE, 1)
    rank = _int_from_environ(ENV_RANK, 0)
    local_rank = _int_from_environ(ENV_LOCAL_RANK, 0)
    if world_size < 1:
        raise UserError(f"{ENV_WORLD_SIZE}={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise UserError(f"{ENV_RANK}={rank} must be in [0, {ENV_WORLD_SIZE}={world_size})")
    if local_rank < 0:
        raise UserError(f"{ENV_LOCAL_RANK}={local_rank} must be >= 0")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)


def is_dist_active() -> bool:
    """True when a process group with more than one member is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_distributed(device_type: str, timeout_s: float | None = None) -> DistEnv:
    """Join the process group torchrun describes; do nothing for a single process.

    Args:
        device_type: "cuda" (NCCL, and this process's GPU becomes `cuda:LOCAL_RANK`) or "cpu"
            (gloo). Other devices cannot run more than one process.
        timeout_s: collective timeout; None keeps torch's default (10 min NCCL, 30 min gloo).
            Raise it when rank 0 may spend longer than that downloading data at a barrier.
    Returns:
        The DistEnv read from the environment.
    """
    env = dist_env_from_environ()
    if not env.is_distributed:
        return env
    if device_type not in BACKEND_FOR_DEVICE:
        raise UserError(
            f"multi-process training needs --device cuda or cpu, not {device_type!r} "
            f"({ENV_WORLD_SIZE}={env.world_size})"
        )
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run a single process")
    backend = BACKEND_FOR_DEVICE[device_type]
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda under torchrun, but CUDA is not available")
        if env.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"{ENV_LOCAL_RANK}={env.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                "are visible: lower --nproc_per_node"
            )
        # Before the group exists, so that NCCL's communicator and every later collective use
        # this process's own GPU instead of all piling onto cuda:0.
        torch.cuda.set_device(env.local_rank)
    if dist.is_initialized():  # a caller (or a test harness) already joined the group
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise RuntimeError(
                f"process group is rank {dist.get_rank()}/{dist.get_world_size()}, "
                f"environment says {env.rank}/{env.world_size}"
            )
        return env
    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    # env:// reads MASTER_ADDR / MASTER_PORT (set by torchrun) plus RANK / WORLD_SIZE.
    dist.init_process_group(backend=backend, init_method="env://",
                            rank=env.rank, world_size=env.world_size, **kwargs)
    return env


def local_device(env: DistEnv, device_type: str) -> torch.device:
    """The device this process computes on: `cuda:LOCAL_RANK` under torchrun on GPUs."""
    if device_type == "cuda" and env.is_distributed:
        return torch.device("cuda", env.local_rank)
    return torch.device(device_type)


def cleanup_distributed() -> None:
    """Leave the process group (if any), so the process exits without NCCL/gloo warnings."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank arrives here; no-op when not distributed."""
    if not is_dist_active():
        return
    if dist.get_backend() == "nccl":
        # Without device_ids NCCL guesses the GPU from the rank and warns.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return `obj` from rank `src` on every rank (any picklable value); no-op when not distributed."""
    if not is_dist_active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over all ranks, as a new tensor (same shape); a copy of `t` when not distributed.

    Not differentiable (the result is detached): for gradients across ranks use
    `all_gather_with_grad`. Meant for metric sums (loss sums, correct counts).
    """
    out = t.detach().clone()
    if is_dist_active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward: own slice of the summed gradient.

    Rank r's output feeds rank r's loss L_r, and every rank's output contains x_s for all s, so
    dL/dx_s = sum_r dL_r/dx_s: the gradient that arrives on each rank must be summed over ranks
    (all-reduce) before rank s keeps its own rows.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world_size = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.rows = x.shape[0]
        x = x.contiguous()
        pieces = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(pieces, x)
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Gather `x` from every rank, with gradients flowing back to the rank that owns each piece.

    Args:
        x: (n, ...) on each rank; n must be the same on every rank.
    Returns:
        (world_size * n, ...): rank 0's rows first, then rank 1's, ... Identity (same tensor)
        when not distributed. Every rank must call backward through it (it is a collective).
    """
    if not is_dist_active():
        return x
    return _AllGatherWithGrad.apply(x)


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """Split the global `--batch_size` over ranks; a clear error if it does not divide."""
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if batch_size % world_size != 0:
        raise UserError(
            f"--batch_size {batch_size} is the global batch and must be divisible by the world "
            f"size {world_size} (processes); try {max(world_size, batch_size // world_size * world_size)}"
        )
    return batch_size // world_size


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # CPU generator: the same (seed, epoch) gives the same order on every rank and machine.
    mixed = (int(seed) * _SEED_MIX + int(epoch)) % _SEED_MOD
    return torch.Generator(device="cpu").manual_seed(mixed)


def shard_permutation(
    n: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    drop_last: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """This rank's sample indices for one epoch, in step order.

    One seeded permutation of range(n) per (seed, epoch), identical on every rank, is cut into
    global batches of `batch_size`; each global batch is split into `world_size` contiguous
    per-rank slices of batch_size / world_size. So at step s the ranks together hold exactly
    global batch s, as a single process with the same seed would see it.

    Args:
        n: dataset size. batch_size: the GLOBAL batch, divisible by world_size.
        drop_last: drop the final partial global batch (needed by the gathered NT-Xent, which
            requires equal per-rank batches). With False the final partial batch is split into
            world_size nearly equal contiguous slices (sizes differ by at most 1, some may be 0).
        device: where the result goes (generated on CPU for reproducibility).
    Returns:
        (steps * batch_size // world_size,) int64 indices (plus this rank's share of the
        remainder when drop_last is False).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    per_rank = per_rank_batch_size(batch_size, world_size)
    perm = torch.randperm(n, generator=_epoch_generator(seed, epoch))
    steps = n // batch_size
    full = perm[: steps * batch_size].view(steps, world_size, per_rank)[:, rank, :].reshape(-1)
    if not drop_last and steps * batch_size < n:
        tail = torch.tensor_split(perm[steps * batch_size:], world_size)[rank]
        full = torch.cat([full, tail])
    return full.to(device) if device is not None else full


def sharded_eval_indices(n: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous block of range(n) for evaluation: each index on exactly one rank.

    No padding (unlike DistributedSampler), so per-rank counts may differ by one; sum metrics
    with `all_reduce_sum` and divide by n. Evaluate with the unwrapped model, not the DDP
    wrapper, so that ranks with fewer batches do not wait on a collective.

    Returns:
        (len_r,) int64 indices, len_r in {n // world_size, n // world_size + 1}.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    return torch.tensor_split(torch.arange(n), world_size)[rank].clone()


def sync_bn_supported(device_type: str) -> bool:
    """True when SyncBatchNorm works on this device (CUDA); otherwise warn and return False."""
    if device_type == "cuda":
        return True
    warnings.warn(
        f"SyncBatchNorm needs CUDA (NCCL); on {device_type} each process keeps its own "
        "BatchNorm statistics",
        stacklevel=2,
    )
    return False
