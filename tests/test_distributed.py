"""Tests for utils/distributed.py and the cross-rank NT-Xent (utils.train.losses.gathered_nt_xent_loss).

Two real gloo processes on CPU (torch.multiprocessing spawn, one run shared by the module) check
that the gathered loss and the DistributedDataParallel gradients equal single-process NT-Xent on
the concatenated batch, and that two classic faulty gathers (negatives without their gradients)
are caught. The pure functions (environment, data shards) are tested in-process.

    python -m pytest tests/test_distributed.py -q
"""
from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from utils.distributed import (
    DistEnv,
    all_gather_with_grad,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    dist_env_from_environ,
    init_distributed,
    per_rank_batch_size,
    shard_permutation,
    sharded_eval_indices,
    sync_bn_supported,
)
from utils.errors import UserError
from utils.train.losses import gathered_nt_xent_loss, nt_xent_loss

WORLD_SIZE = 2
N_PER_RANK = 4  # pairs per rank; the global batch is WORLD_SIZE * N_PER_RANK pairs
D_IN, D_OUT = 6, 5
TEMPERATURE = 0.5
SPAWN_TIMEOUT_S = 120  # a hung collective fails the test instead of blocking CI
SHARD_CASE = dict(n=50, seed=3, batch_size=8)  # 6 global steps, 2 samples left over


# ----------------------------------------------------------------------------------------------
# Faulty gathers: the public bug (negatives from other ranks, but no gradient back to them).

def detached_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Plain all_gather: other ranks' pieces are constants, only the local piece has a gradient."""
    pieces = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, x.detach().contiguous())
    pieces[dist.get_rank()] = x
    return torch.cat(pieces, dim=0)


class _LocalBackwardGather(torch.autograd.Function):
    """all_gather whose backward keeps the local gradient slice without summing over ranks."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        pieces = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, x.contiguous())
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        return grad_output[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


GATHERS = {
    "with_grad": all_gather_with_grad,
    "detached": detached_all_gather,
    "local_backward": _LocalBackwardGather.apply,
}


# ----------------------------------------------------------------------------------------------
# The spawned worker: every multi-process check in one run (torch start-up costs seconds).

def _worker(rank: int, world_size: int, port: int, out_dir: str, inputs: dict) -> None:
    os.environ.update({
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })
    torch.set_num_threads(1)
    env = init_distributed("cpu", timeout_s=SPAWN_TIMEOUT_S)
    res: dict = {"env": (env.rank, env.world_size, env.local_rank, env.is_distributed, env.is_main)}
    res["backend"] = dist.get_backend()

    barrier()
    res["barrier_passed"] = True
    res["broadcast_from_0"] = broadcast_object({"rank": rank, "text": f"from {rank}"}, src=0)
    res["broadcast_from_1"] = broadcast_object([rank, 7], src=1)
    t = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
    res["reduced"] = all_reduce_sum(t)
    res["reduce_input_after"] = t

    # all_gather_with_grad on its own: forward in rank order, backward = own slice of the sum.
    x = (torch.arange(6.0).view(3, 2) + 100 * rank).requires_grad_(True)
    y = all_gather_with_grad(x)
    (y * inputs["gather_weights"][rank]).sum().backward()
    res["gathered"] = y.detach()
    res["gather_grad"] = x.grad

    # The gathered NT-Xent under DDP, with the correct and the faulty gathers.
    lo, hi = rank * N_PER_RANK, (rank + 1) * N_PER_RANK
    x_local = torch.cat([inputs["x1"][lo:hi], inputs["x2"][lo:hi]])  # one forward for both views
    for name, gather_fn in GATHERS.items():
        model = nn.Linear(D_IN, D_OUT)
        model.load_state_dict(inputs["init"])
        ddp = nn.parallel.DistributedDataParallel(model)
        z1, z2 = ddp(x_local).chunk(2)
        loss = gathered_nt_xent_loss(z1, z2, TEMPERATURE, gather_fn=gather_fn)
        loss.backward()
        res[name] = {"loss": loss.item(), "grad_w": model.weight.grad.clone(),
                     "grad_b": model.bias.grad.clone()}

    # Contrastive accuracy: this rank's anchors against the global candidates (no model needed).
    _, correct = gathered_nt_xent_loss(inputs["x1"][lo:hi], inputs["x2"][lo:hi], TEMPERATURE, return_correct=True)
    res["contrastive_correct"] = correct.item()

    res["shards"] = {epoch: shard_permutation(epoch=epoch, rank=rank, world_size=world_size,
                                              **SHARD_CASE)
                     for epoch in (0, 1)}
    barrier()
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    cleanup_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_inputs() -> dict:
    g = torch.Generator().manual_seed(1234)
    n = WORLD_SIZE * N_PER_RANK
    torch.manual_seed(99)
    init = {k: v.clone() for k, v in nn.Linear(D_IN, D_OUT).state_dict().items()}
    return {
        "x1": torch.randn(n, D_IN, generator=g),
        "x2": torch.randn(n, D_IN, generator=g),
        "init": init,
        "gather_weights": torch.randn(WORLD_SIZE, WORLD_SIZE * 3, 2, generator=g),
    }


def _run_ranks(fn, args: tuple, what: str) -> None:
    """Run fn(rank, *args) on WORLD_SIZE spawned processes; fail (killing them) if they are not done in time."""
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=1):  # raises if a worker raised
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{what} did not finish within {SPAWN_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[dict, list[dict]]:
    """Run `_worker` on 2 gloo processes once; return the inputs and each rank's results."""
    out_dir = tmp_path_factory.mktemp("ddp")
    inputs = _make_inputs()
    _run_ranks(_worker, (WORLD_SIZE, _free_port(), str(out_dir), inputs), "2-process gloo run")
    results = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    return inputs, results


def _reference(inputs: dict) -> dict:
    """Single process on the concatenated batch: nt_xent_loss, its gradients, per-anchor losses."""
    model = nn.Linear(D_IN, D_OUT)
    model.load_state_dict(inputs["init"])
    z1, z2 = model(torch.cat([inputs["x1"], inputs["x2"]])).chunk(2)
    loss = nt_xent_loss(z1, z2, TEMPERATURE)
    loss.backward()
    # Per-anchor losses written straight from eq. (1), in float64, as an independent check.
    z = torch.cat([z1, z2]).detach().double()
    z = z / z.norm(dim=1, keepdim=True)
    sim = z @ z.t() / TEMPERATURE
    n = z1.shape[0]
    per_anchor = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(torch.exp(sim[i, k]) for k in range(2 * n) if k != i)
        per_anchor.append(-torch.log(torch.exp(sim[i, j]) / denom))
    return {"loss": loss.item(), "grad_w": model.weight.grad, "grad_b": model.bias.grad,
            "per_anchor": torch.stack(per_anchor)}


# ----------------------------------------------------------------------------------------------
# Two processes (gloo)

def test_collectives_under_gloo(two_ranks):
    _, results = two_ranks
    for rank, res in enumerate(results):
        assert res["env"] == (rank, WORLD_SIZE, rank, True, rank == 0)
        assert res["backend"] == "gloo"
        assert res["barrier_passed"]
        assert res["broadcast_from_0"] == {"rank": 0, "text": "from 0"}
        assert res["broadcast_from_1"] == [1, 7]
        assert torch.equal(res["reduced"], torch.tensor([3.0, 30.0]))
        assert torch.equal(res["reduce_input_after"], torch.tensor([rank + 1.0, 10.0 * (rank + 1)]))


def test_all_gather_with_grad_order_and_backward(two_ranks):
    inputs, results = two_ranks
    xs = [torch.arange(6.0).view(3, 2) + 100 * r for r in range(WORLD_SIZE)]
    w = inputs["gather_weights"]  # rank s's loss is sum(y * w[s])
    for rank, res in enumerate(results):
        assert torch.equal(res["gathered"], torch.cat(xs))
        # dL/dx_r with L = sum_s L_s: the rows of x_r in every rank's weights, summed over ranks.
        expected = w[:, rank * 3:(rank + 1) * 3].sum(dim=0)
        assert torch.allclose(res["gather_grad"], expected, atol=1e-6)


def test_gathered_loss_matches_single_process(two_ranks):
    inputs, results = two_ranks
    ref = _reference(inputs)
    n, big_n = N_PER_RANK, WORLD_SIZE * N_PER_RANK
    for rank, res in enumerate(results):
        # Rank offset: rank r's anchors are z1 rows [r*n, (r+1)*n) and z2 rows N + same.
        rows = list(range(rank * n, (rank + 1) * n)) + list(range(big_n + rank * n, big_n + (rank + 1) * n))
        assert res["with_grad"]["loss"] == pytest.approx(ref["per_anchor"][rows].mean().item(), rel=1e-5)
    mean_loss = sum(res["with_grad"]["loss"] for res in results) / WORLD_SIZE
    assert mean_loss == pytest.approx(ref["loss"], rel=1e-5)
    assert ref["loss"] == pytest.approx(ref["per_anchor"].mean().item(), rel=1e-5)


def test_gathered_contrastive_correct_sums_to_the_global_count(two_ranks):
    """Summed over ranks (what train.py's all-reduce does), each rank's count of anchors whose positive
    ranks first equals the single-process count on the concatenated batch, itself checked by a loop."""
    inputs, results = two_ranks
    x1, x2 = inputs["x1"], inputs["x2"]
    _, want = nt_xent_loss(x1, x2, TEMPERATURE, return_correct=True)
    z = torch.nn.functional.normalize(torch.cat([x1, x2]).double(), dim=1)
    sim, n2 = z @ z.t(), z.shape[0]
    loop = sum(all(sim[i, (i + n2 // 2) % n2] > sim[i, k] for k in range(n2) if k not in (i, (i + n2 // 2) % n2))
               for i in range(n2))
    per_rank = [res["contrastive_correct"] for res in results]
    assert sum(per_rank) == want.item() == loop
    assert 0 < want.item() < n2  # a mix of hits and misses, so a wrong candidate set would show
    # with only its local batch as candidates each rank would count more hits here: the gather matters
    local = [nt_xent_loss(x1[r * N_PER_RANK:(r + 1) * N_PER_RANK], x2[r * N_PER_RANK:(r + 1) * N_PER_RANK],
                          TEMPERATURE, return_correct=True)[1].item() for r in range(WORLD_SIZE)]
    assert sum(local) > sum(per_rank)


@pytest.mark.parametrize("gather", ["with_grad", "detached", "local_backward"])
def test_ddp_gradients_equal_single_process_only_with_grad_gather(two_ranks, gather):
    """DDP-averaged grads equal single-process grads on the full batch; faulty gathers fail this."""
    inputs, results = two_ranks
    ref = _reference(inputs)
    for res in results:  # faulty or not, the forward (the logged loss) is the same: the bug is silent
        assert res[gather]["loss"] == pytest.approx(res["with_grad"]["loss"], rel=1e-6)
    # DDP leaves the same averaged gradient on every rank.
    assert torch.allclose(results[0][gather]["grad_w"], results[1][gather]["grad_w"], atol=1e-7)
    grad_w, grad_b = results[0][gather]["grad_w"], results[0][gather]["grad_b"]
    matches = (torch.allclose(grad_w, ref["grad_w"], rtol=1e-4, atol=1e-6)
               and torch.allclose(grad_b, ref["grad_b"], rtol=1e-4, atol=1e-6))
    if gather == "with_grad":
        assert matches, f"max |diff| {(grad_w - ref['grad_w']).abs().max():.3g}"
    else:
        assert not matches, "a gather without cross-rank gradients went undetected"
        rel = (grad_w - ref["grad_w"]).norm() / ref["grad_w"].norm()
        assert rel > 1e-2  # a real difference, not rounding


def test_shards_identical_in_every_process(two_ranks):
    _, results = two_ranks
    for rank, res in enumerate(results):
        for epoch, shard in res["shards"].items():
            assert torch.equal(shard, shard_permutation(epoch=epoch, rank=rank,
                                                        world_size=WORLD_SIZE, **SHARD_CASE))


# ----------------------------------------------------------------------------------------------
# train.py --nan_policy skip under two processes: a NaN on one rank only

NAN_SKIP_ARGV = ["--train_type", "supervised", "--dataset", "synthetic", "--data_scale", "0.02", "--batch_size", "10",
                 "--epochs", "1", "--image_size", "8", "--device", "cpu", "--workers", "0", "--quiet",
                 "--nan_policy", "skip"]  # 40 images, 5 per rank: 4 steps


def _nan_skip_worker(rank: int, world_size: int, port: int, run_dir: str, out_dir: str) -> None:
    """train.main on one rank; rank 1's loss is NaN at its 2nd step, rank 0's never is."""
    import math

    import train

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from utils.methods.supervised import Supervised

    real_objective, real_end_epoch = Supervised.forward, train.end_epoch
    calls, states = [0], []

    def objective(method, views, labels=None):
        loss, stats = real_objective(method, views, labels)
        calls[0] += 1
        return (loss * math.nan if rank == 1 and calls[0] == 2 else loss), stats

    def end_epoch(run, epoch, tally):  # keep each rank's parameters: DDP replicas must still be equal
        real_end_epoch(run, epoch, tally)  # (BatchNorm's running statistics are per rank by design)
        states.append({k: v.detach().clone() for k, v in run.model.module.named_parameters()})

    Supervised.forward, train.end_epoch = objective, end_epoch
    result = train.main(NAN_SKIP_ARGV + ["--run_dir", run_dir])
    torch.save({"history": result["history"], "state": states[-1], "calls": calls[0]},
               Path(out_dir) / f"nan_rank{rank}.pt")


@pytest.mark.slow
def test_nan_skip_is_agreed_by_every_rank(tmp_path):
    """A per-rank loss NaN on rank 1 only: both ranks skip that step (rank 0 alone used to run backward and wait
    in DDP's gradient all-reduce for a rank that had skipped it: a hang or mismatched steps). A hang fails here."""
    run_dir = tmp_path / "run"
    _run_ranks(_nan_skip_worker, (WORLD_SIZE, _free_port(), str(run_dir), str(tmp_path)),
               "--nan_policy skip under 2 processes (a hang)")
    ranks = [torch.load(tmp_path / f"nan_rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    for res in ranks:
        assert res["calls"] == 4
        assert [row["skipped_steps"] for row in res["history"]] == [1]  # rank 0 skipped its finite step too
        assert math.isfinite(res["history"][0]["loss"])
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert rows[1].split(",")[header.index("skipped_steps")] == "1"


# ----------------------------------------------------------------------------------------------
# Single process

def test_single_process_gathered_equals_nt_xent_exactly():
    assert not dist.is_initialized()
    z1 = torch.randn(16, 8, requires_grad=True)
    z2 = torch.randn(16, 8, requires_grad=True)
    ref = nt_xent_loss(z1, z2, 0.2)
    ref_grads = torch.autograd.grad(ref, (z1, z2))
    for gather_fn in (all_gather_with_grad, lambda x: x):
        got = gathered_nt_xent_loss(z1, z2, 0.2, gather_fn=gather_fn)
        assert torch.equal(got, ref)
        for g, r in zip(torch.autograd.grad(got, (z1, z2)), ref_grads):
            assert torch.equal(g, r)


def test_gathered_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError):
        gathered_nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        gathered_nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)
    with pytest.raises(ValueError):  # a gather that does not return whole rank blocks
        gathered_nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), gather_fn=lambda x: x[:3])


def test_single_process_helpers_are_no_ops(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed("cpu")
    assert env == DistEnv(0, 1, 0) and not env.is_distributed and env.is_main
    assert not dist.is_initialized()
    barrier()
    assert broadcast_object({"a": 1}) == {"a": 1}
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    out = all_reduce_sum(t)
    assert torch.equal(out, t.detach()) and out.data_ptr() != t.data_ptr() and not out.requires_grad
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    cleanup_distributed()  # no group: must not raise


def test_dist_env_from_environ(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = dist_env_from_environ()
    assert env == DistEnv(rank=3, world_size=8, local_rank=1)
    assert env.is_distributed and not env.is_main
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(UserError, match="RANK"):
        dist_env_from_environ()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        dist_env_from_environ()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="cuda or cpu"):
        init_distributed("mps")
    assert not dist.is_initialized()


def test_per_rank_batch_size():
    assert per_rank_batch_size(512, 8) == 64
    assert per_rank_batch_size(64, 1) == 64
    with pytest.raises(UserError, match="divisible by the world size 4"):
        per_rank_batch_size(66, 4)


@pytest.mark.parametrize("n,world_size,batch_size", [(50, 1, 8), (50, 2, 8), (61, 3, 12), (7, 2, 8)])
def test_shard_permutation_partitions_global_batches(n, world_size, batch_size):
    steps = n // batch_size
    shards = [shard_permutation(n, 5, 2, r, world_size, batch_size) for r in range(world_size)]
    single = shard_permutation(n, 5, 2, 0, 1, batch_size)  # the single-process order
    assert len(single) == steps * batch_size and len(set(single.tolist())) == len(single)
    per_rank = batch_size // world_size
    for shard in shards:
        assert shard.dtype == torch.int64 and len(shard) == steps * per_rank
    union = torch.cat(shards).tolist()
    assert len(set(union)) == len(union)  # disjoint, nothing repeated
    assert set(union) <= set(range(n))
    for step in range(steps):  # at every step the ranks together hold the single-process batch
        together = torch.cat([s[step * per_rank:(step + 1) * per_rank] for s in shards])
        assert torch.equal(together, single[step * batch_size:(step + 1) * batch_size])


@pytest.mark.parametrize("n,world_size,batch_size", [(50, 2, 8), (20, 3, 6), (5, 4, 8)])
def test_shard_permutation_without_drop_last_covers_once(n, world_size, batch_size):
    shards = [shard_permutation(n, 0, 0, r, world_size, batch_size, drop_last=False)
              for r in range(world_size)]
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_permutation_seeding():
    def order(seed, epoch, rank=0):
        return shard_permutation(64, seed, epoch, rank, 2, 16)
    assert torch.equal(order(1, 0), order(1, 0))
    assert not torch.equal(order(1, 0), order(1, 1))  # a new order every epoch
    assert not torch.equal(order(1, 0), order(2, 0))
    assert not torch.equal(order(1, 0), order(0, 1))  # (seed, epoch) pairs do not alias
    assert shard_permutation(64, 0, 0, 0, 1, 16, device="cpu").device.type == "cpu"
    with pytest.raises(ValueError):
        shard_permutation(64, 0, 0, 2, 2, 16)


@pytest.mark.parametrize("n,world_size", [(10, 3), (1, 2), (12, 4), (0, 2)])
def test_sharded_eval_indices_cover_once(n, world_size):
    shards = [sharded_eval_indices(n, r, world_size) for r in range(world_size)]
    assert torch.cat(shards).tolist() == list(range(n))  # contiguous, in order, no padding
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_sync_bn_supported():
    assert sync_bn_supported("cuda")
    with pytest.warns(UserWarning, match="SyncBatchNorm"):
        assert not sync_bn_supported("cpu")
