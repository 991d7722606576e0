"""The methods beside SimCLR (utils/methods/): each loss against a plain reference written from its paper,
under DDP against one process, the EMA schedule, LARS against its definition, the collapse measure, and
one synthetic epoch of each method through train.py: it resumes bit for bit and its checkpoint probes
(test.py) and loads (models.load_backbone, torch.hub) with the ONLINE backbone.

    python -m pytest tests/test_methods.py -q
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from torch import nn

import test as test_script
import train
import utils.eval.probe
from models import load_backbone
from utils.checkpoint import load_checkpoint
from utils.distributed import all_gather_with_grad, cleanup_distributed, init_distributed
from utils.lars import LARS
from utils.methods import METHODS, build_method
from utils.methods.barlow_twins import barlow_twins_loss
from utils.methods.base import COLLAPSE_FRACTION, collapse_measure, ema_tau, ema_update, embedding_std
from utils.methods.byol import byol_loss
from utils.methods.mocov2 import MoCoV2, moco_loss
from utils.methods.simsiam import simsiam_loss
from utils.methods.vicreg import vicreg_loss, vicreg_terms
from utils.runtime import LOG

ROOT = Path(__file__).resolve().parent.parent
NEW_METHODS = ("byol", "mocov2", "simsiam", "barlow_twins", "vicreg")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# Plain references, written from the papers with loops, in float64

def cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def naive_byol(p1, p2, t1, t2):
    """BYOL eq. 2: ||p/|p| - t/|t| ||^2 = 2 - 2 cos, batch mean, both directions summed."""
    n = len(p1)
    return (sum(2 - 2 * cos(p1[i], t2[i]) for i in range(n)) / n + sum(2 - 2 * cos(p2[i], t1[i]) for i in range(n)) / n)


def naive_simsiam(p1, p2, z1, z2):
    """SimSiam eq. 4: L = D(p1, z2) / 2 + D(p2, z1) / 2 with D = -cos, batch mean."""
    n = len(p1)
    return sum(-cos(p1[i], z2[i]) / 2 - cos(p2[i], z1[i]) / 2 for i in range(n)) / n


def naive_barlow(z1, z2, lambd, scale=1.0):
    """Barlow Twins eq. 1-2: each column standardised over the batch (biased variance, eps 1e-5), then
    C_ij = sum_b z1_bi z2_bj / N, L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    n, d = len(z1), len(z1[0])

    def standardise(z):
        cols = []
        for j in range(d):
            col = [z[b][j] for b in range(n)]
            mean = sum(col) / n
            var = sum((c - mean) ** 2 for c in col) / n
            cols.append([(c - mean) / math.sqrt(var + 1e-5) for c in col])
        return [[cols[j][b] for j in range(d)] for b in range(n)]

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return scale * loss


def naive_vicreg(z1, z2, weights=(25.0, 25.0, 1.0)):
    """VICReg eq. 1-6 as main_vicreg.py computes them."""
    n, d = len(z1), len(z1[0])
    sim = sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def var_and_cov(z):
        means = [sum(z[b][j] for b in range(n)) / n for j in range(d)]
        cov = [[sum((z[b][i] - means[i]) * (z[b][j] - means[j]) for b in range(n)) / (n - 1) for j in range(d)]
               for i in range(d)]
        hinge = sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        off = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return hinge, off

    (v1, c1), (v2, c2) = var_and_cov(z1), var_and_cov(z2)
    return weights[0] * sim + weights[1] * (v1 + v2) / 2 + weights[2] * (c1 + c2)


def naive_moco(q, k, queue, t):
    """InfoNCE (MoCo eq. 1): -log exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.k_j/t)), unit vectors, batch mean."""
    total = 0.0
    for qi, ki in zip(q, k):
        pos = math.exp(sum(a * b for a, b in zip(qi, ki)) / t)
        neg = sum(math.exp(sum(a * b for a, b in zip(qi, kj)) / t) for kj in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def _l(t):
    return t.tolist()


@pytest.mark.parametrize("n,d,seed", [(4, 3, 0), (7, 5, 1)])
def test_losses_match_their_plain_references(n, d, seed):
    z1, z2, p1, p2 = (_randn(n, d, seed=seed * 10 + i) for i in range(4))
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(naive_byol(_l(p1), _l(p2), _l(z1), _l(z2)), rel=1e-10)
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(naive_simsiam(_l(p1), _l(p2), _l(z1), _l(z2)),
                                                                  rel=1e-10)
    for lambd, scale in ((0.0051, 1.0), (0.5, 0.1)):
        got = barlow_twins_loss(z1, z2, lambd, scale, gather_fn=lambda x: x).item()
        assert got == pytest.approx(naive_barlow(_l(z1), _l(z2), lambd, scale), rel=1e-5)  # float32 inside
    for w in ((25.0, 25.0, 1.0), (1.0, 2.0, 3.0)):
        got = vicreg_loss(0.3 * z1, 0.3 * z2, w, gather_fn=lambda x: x).item()  # 0.3: std below 1, the hinge acts
        assert got == pytest.approx(naive_vicreg(_l(0.3 * z1), _l(0.3 * z2), w), rel=1e-5)
    q, k, queue = F.normalize(z1, dim=1), F.normalize(z2, dim=1), F.normalize(_randn(9, d, seed=seed + 99), dim=1)
    assert moco_loss(q, k, queue, 0.2).item() == pytest.approx(naive_moco(_l(q), _l(k), _l(queue), 0.2), rel=1e-5)


def test_vicreg_hinge_is_zero_above_unit_std_and_terms_have_closed_forms():
    z = _randn(64, 4, seed=3) * 5  # std about 5 in every column: no variance penalty
    sim, var, cov = vicreg_terms(z, z.clone(), gather_fn=lambda x: x)
    assert sim.item() == 0 and var.item() == 0 and cov.item() > 0
    const = torch.ones(8, 4)  # collapse: std 0, hinge 1 - sqrt(1e-4) = 0.99 per column and view
    assert vicreg_terms(const, const, gather_fn=lambda x: x)[1].item() == pytest.approx(0.99, rel=1e-6)


def test_stop_gradients_and_loss_gradients_match_the_references():
    p1, p2, z1, z2 = (_randn(5, 3, seed=i).requires_grad_(True) for i in range(4))
    byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None  # sg() on the targets
    p1.grad = None
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and p2.grad is not None
    for fn, naive in ((lambda a, b: barlow_twins_loss(a, b, 0.0051, 1.0, gather_fn=lambda x: x),
                       lambda a, b: naive_barlow(a, b, 0.0051)),
                      (lambda a, b: vicreg_loss(a, b, gather_fn=lambda x: x), naive_vicreg)):
        a, b = (_randn(6, 3, seed=s).requires_grad_(True) for s in (7, 8))
        grads = torch.autograd.grad(fn(a, b), (a, b))
        eps = 1e-6  # central differences of the plain reference
        for which, g in enumerate(grads):
            base = [_l(a), _l(b)]
            for i, j in ((0, 0), (3, 2)):
                up, down = [[r[:] for r in m] for m in base], [[r[:] for r in m] for m in base]
                up[which][i][j] += eps
                down[which][i][j] -= eps
                numeric = (naive(*up) - naive(*down)) / (2 * eps)
                assert g[i, j].item() == pytest.approx(numeric, rel=1e-3, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# EMA, collapse measure, LARS

def test_ema_tau_follows_the_cosine_from_base_to_final():
    assert ema_tau(0, 100, 0.99) == 0.99 and ema_tau(100, 100, 0.99) == 1.0
    assert ema_tau(50, 100, 0.99, 0.999) == pytest.approx((0.99 + 0.999) / 2)
    assert ema_tau(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    taus = [ema_tau(k, 10, 0.9) for k in range(11)]
    assert taus == sorted(taus) and ema_tau(12, 10, 0.9) == 1.0  # never beyond final


def test_ema_update_and_byol_after_step():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    backbone.feature_dim = 6
    byol = build_method("byol", backbone, {"proj_hidden_dim": 8, "proj_dim": 4, "pred_hidden_dim": 8,
                                           "tau_base": 0.9, "tau_final": 1.0})
    assert all(torch.equal(a, b) for a, b in zip(backbone.parameters(), byol.target_backbone.parameters()))
    assert not any(p.requires_grad for p in byol.target_backbone.parameters())
    online_before = [p.detach().clone() for p in backbone.parameters()]
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(1.0)
    target_before = [p.detach().clone() for p in byol.target_backbone.parameters()]
    byol.after_step(0, 10)  # tau = 0.9
    for t, t0, o in zip(byol.target_backbone.parameters(), target_before, online_before):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * (o + 1.0))
    module = nn.Linear(2, 2)
    copy = nn.Linear(2, 2)
    ema_update(module, copy, 0.0)  # tau 0: the target becomes the online network
    assert torch.equal(copy.weight, module.weight)


def test_simsiam_predictor_keeps_a_fixed_lr_while_the_rest_follows_the_schedule():
    from utils.schedule import lr_schedule, make_scheduler

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    backbone.feature_dim = 6
    simsiam = build_method("simsiam", backbone, {"proj_hidden_dim": 8, "proj_dim": 4, "pred_hidden_dim": 2})
    groups = simsiam.param_groups()
    assert len(groups) == 2 and groups[1]["fixed_lr"]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in simsiam.parameters()}
    opt = torch.optim.SGD(groups, lr=0.5)
    sched = make_scheduler(opt, lr_schedule("cosine", 0.5, 10, warmup_steps=2), 0.5)
    lrs = []
    for _ in range(6):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [lr[1] for lr in lrs] == [0.5] * 6 and lrs[0][0] == pytest.approx(0.25) and lrs[5][0] < 0.5


def test_embedding_std_is_zero_at_collapse_and_one_over_sqrt_d_when_spread():
    assert embedding_std(torch.ones(16, 8) * 3).item() == 0
    spread = torch.randn(20000, 64, generator=torch.Generator().manual_seed(0))
    assert embedding_std(spread).item() == pytest.approx(1 / 8, rel=0.02)


def test_collapse_is_logged_in_one_line():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOG.addHandler(handler)
    try:
        assert collapse_measure(16, 0.2, "simsiam", 1) == {"z_std": 0.2, "z_std_ref": 0.25} and not records
        collapse_measure(16, 0.001, "simsiam", 5)
        assert len(records) == 1 and "simsiam collapsed at epoch 5" in records[0].getMessage()
        assert collapse_measure(None, 0.0, "supervised", 1) == {}
    finally:
        LOG.removeHandler(handler)


def _lars_reference(w, g, buf, lr, momentum, wd, eta, clip, excluded):
    """LARS eq. 6 (You et al. 2017) with solo-learn's clip_lr, one tensor, plain arithmetic."""
    if not excluded and w.norm() > 0 and g.norm() > 0:
        local = eta * w.norm() / (g.norm() + wd * w.norm() + 1e-8)
        if clip:
            local = min(local / lr, 1.0)
        d = (g + wd * w) * local
    else:
        d = g
    buf = d if buf is None else momentum * buf + d
    return w - lr * buf, buf


@pytest.mark.parametrize("clip,lr", [(True, 0.5), (True, 1e-4), (False, 0.5)])
def test_lars_matches_its_definition(clip, lr):
    torch.manual_seed(1)
    layer = nn.Linear(4, 3)
    opt = LARS(layer.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3, eta=0.02, clip_lr=clip)
    ref = {name: (p.detach().clone().double(), None) for name, p in layer.named_parameters()}
    for step in range(3):
        grads = {"weight": _randn(3, 4, seed=step), "bias": _randn(3, seed=10 + step)}
        for name, p in layer.named_parameters():
            p.grad = grads[name].float()
        opt.step()
        for name, p in layer.named_parameters():
            w, buf = ref[name]
            ref[name] = _lars_reference(w, grads[name], buf, lr, 0.9, 1e-3, 0.02, clip, excluded=name == "bias")
            assert torch.allclose(p.double(), ref[name][0], rtol=1e-5, atol=1e-7), (name, step)
    if clip and lr == 1e-4:  # at a tiny lr the trust ratio exceeds 1 x lr: clipping makes it plain SGD on g + wd w
        w0 = nn.Linear(4, 3)
        assert LARS.trust_ratio(w0.weight, torch.ones(3, 4), opt.param_groups[0]).item() == 1.0


# ----------------------------------------------------------------------------------------------
# Two processes (gloo): every loss on half the global batch per rank against one process on all of it

WORLD, N_RANK, D_IN, D_OUT = 2, 4, 6, 5
SPAWN_TIMEOUT_S = 120


def _model(init):
    m = nn.Linear(D_IN, D_OUT)
    m.load_state_dict(init)
    return m


def _losses(model, x1, x2, gather_fn):
    """name -> each loss on a linear network's embeddings z1, z2 (BYOL and SimSiam: z1, z2 as the predictions,
    fixed functions of the inputs as the targets without gradient)."""
    z1, z2 = model(x1), model(x2)
    t1, t2 = torch.tanh(x1[:, :D_OUT]), torch.tanh(x2[:, :D_OUT])  # stand-ins for target projections
    return {
        "byol": byol_loss(z1, z2, t1, t2),
        "simsiam": simsiam_loss(z1, z2, t1, t2),
        "barlow_twins": barlow_twins_loss(z1, z2, 0.0051, 0.1, gather_fn=gather_fn),
        "vicreg": vicreg_loss(z1, z2, gather_fn=gather_fn),
    }


def _raw_all_reduce_barlow(z1, z2, lambd=0.0051):
    """What the official code and solo-learn do: C summed over ranks by a raw all_reduce, which passes no
    gradient across ranks (the batch normalisation here uses the global statistics, as SyncBatchNorm would)."""
    z1a, z2a = all_gather_with_grad(z1), all_gather_with_grad(z2)
    m1, s1 = z1a.mean(0), torch.sqrt(z1a.var(0, unbiased=False) + 1e-5)
    m2, s2 = z2a.mean(0), torch.sqrt(z2a.var(0, unbiased=False) + 1e-5)
    c = ((z1 - m1) / s1).t() @ ((z2 - m2) / s2) / z1a.shape[0]
    dist.all_reduce(c)
    return (torch.diagonal(c) - 1).pow(2).sum() + lambd * (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())


def _tiny_moco(seed=5):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(D_IN, 8))  # no BatchNorm: ranks can equal one process
    backbone.feature_dim = 8
    return MoCoV2(backbone, {"proj_hidden_dim": 8, "proj_dim": 4, "temperature": 0.2, "queue_size": 12,
                             "tau_base": 0.9, "tau_final": 1.0})


def _worker(rank, port, out_dir, inputs):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    init_distributed("cpu", timeout_s=SPAWN_TIMEOUT_S)
    lo, hi = rank * N_RANK, (rank + 1) * N_RANK
    x1, x2 = inputs["x1"][lo:hi], inputs["x2"][lo:hi]
    res = {}
    for name in ("byol", "simsiam", "barlow_twins", "vicreg"):
        model = _model(inputs["init"])
        ddp = nn.parallel.DistributedDataParallel(model)
        loss = _losses(ddp, x1, x2, all_gather_with_grad)[name]
        loss.backward()
        res[name] = {"loss": loss.item(), "grad": model.weight.grad.clone()}
    model = _model(inputs["init"])
    ddp = nn.parallel.DistributedDataParallel(model)
    loss = _raw_all_reduce_barlow(ddp(x1), ddp(x2))
    with warnings.catch_warnings():  # torch warns that all_reduce has no autograd kernel: the very pitfall shown
        warnings.simplefilter("ignore")
        loss.backward()
    res["barlow_raw_all_reduce"] = {"loss": loss.item(), "grad": model.weight.grad.clone()}
    # MoCo v2, the whole method: DDP ignores the key encoder and the queue; after_step enqueues all ranks' keys
    moco = _tiny_moco()
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(moco, moco.ddp_ignored())
    ddp = nn.parallel.DistributedDataParallel(moco)
    loss, _ = ddp([x1, x2])
    loss.backward()
    moco.after_step(0, 10)
    res["mocov2"] = {"loss": loss.item(), "grad": moco.backbone[1].weight.grad.clone(), "queue": moco.queue.clone(),
                     "ptr": int(moco.queue_ptr)}
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    cleanup_distributed()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_methods")
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    inputs = {"x1": torch.randn(WORLD * N_RANK, D_IN, generator=g), "x2": torch.randn(WORLD * N_RANK, D_IN, generator=g),
              "init": nn.Linear(D_IN, D_OUT).state_dict()}
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out), inputs), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("2-process gloo run did not finish in time")
    return inputs, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["byol", "simsiam", "barlow_twins", "vicreg", "mocov2"])
def test_two_process_loss_and_gradients_equal_one_process(two_ranks, name):
    inputs, ranks = two_ranks
    if name == "mocov2":
        moco = _tiny_moco()
        loss, _ = moco([inputs["x1"], inputs["x2"]])
        loss.backward()
        want_loss, want_grad = loss.item(), moco.backbone[1].weight.grad
        moco.after_step(0, 10)
        for r in ranks:  # both ranks hold the queue of the one-process run: the global batch's keys, in order
            assert torch.allclose(r["mocov2"]["queue"], moco.queue, atol=1e-6) and r["mocov2"]["ptr"] == 8
    else:
        model = _model(inputs["init"])
        loss = _losses(model, inputs["x1"], inputs["x2"], lambda x: x)[name]
        loss.backward()
        want_loss, want_grad = loss.item(), model.weight.grad
    per_rank = [r[name]["loss"] for r in ranks]
    if name == "barlow_twins":  # a loss of the global batch: the same on every rank
        assert per_rank[0] == pytest.approx(want_loss, rel=1e-5) and per_rank[1] == pytest.approx(want_loss, rel=1e-5)
    else:  # per-sample means (vicreg: its sim term), so the mean over ranks is the global loss
        assert sum(per_rank) / WORLD == pytest.approx(want_loss, rel=1e-5)
    assert torch.allclose(ranks[0][name]["grad"], ranks[1][name]["grad"])
    assert torch.allclose(ranks[0][name]["grad"], want_grad, rtol=1e-4, atol=1e-6), \
        (ranks[0][name]["grad"] - want_grad).abs().max()


def test_raw_all_reduce_of_barlows_matrix_gets_the_value_but_not_the_gradient(two_ranks):
    """lightly #1977: all_reduce(C) gives every rank the right loss, but its gradient misses the other ranks'
    share of C (about 1 / world size of it); the gathered loss above matches one process exactly."""
    _, ranks = two_ranks
    raw, ours = ranks[0]["barlow_raw_all_reduce"], ranks[0]["barlow_twins"]
    assert raw["loss"] * 0.1 == pytest.approx(ours["loss"], rel=1e-5)  # ours carries scale_loss 0.1
    assert not torch.allclose(raw["grad"] * 0.1, ours["grad"], rtol=1e-2, atol=1e-6)
    assert torch.allclose(raw["grad"] * 0.1, ours["grad"] / WORLD, rtol=1e-4, atol=1e-7)  # exactly 1 / world size


# ----------------------------------------------------------------------------------------------
# Done when: one synthetic epoch of each method through train.py, resumed bit for bit, probed, loaded

TINY = ["--dataset", "synthetic", "--data_scale", "0.01", "--batch_size", "10", "--epochs", "1", "--image_size", "8",
        "--device", "cpu", "--workers", "0", "--quiet", "--seed", "2", "--deterministic", "--proj_hidden_dim", "16",
        "--proj_dim", "8", "--pred_hidden_dim", "8", "--queue_size", "20"]  # 20 images: 2 steps


_SPLITS: dict = {}


@pytest.fixture
def cheap_runs(monkeypatch):
    """One thread; the synthetic split made once per session; no curves.png (drawn in its own test below):
    what is left of a run is its training."""
    real_load = train.load_split

    def load_split(dataset, split, *args, **kwargs):
        key = (dataset, split, kwargs.get("image_size"))
        if key not in _SPLITS:
            _SPLITS[key] = real_load(dataset, split, *args, **kwargs)
        return _SPLITS[key]

    monkeypatch.setattr(train, "load_split", load_split)
    monkeypatch.setattr(train, "plot_panels", lambda *args, **kwargs: None)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("name", NEW_METHODS)
def test_one_epoch_resumes_bit_for_bit_and_its_online_backbone_probes_and_loads(name, tmp_path, monkeypatch,
                                                                                  cheap_runs):
    argv = TINY + ["--train_type", name]
    monkeypatch.delenv(train.TEST_SIGNAL_ENV, raising=False)
    reference = train.main(argv + ["--run_dir", str(tmp_path / "ref")])
    run = tmp_path / "run"
    monkeypatch.setenv(train.TEST_SIGNAL_ENV, "1:TERM")  # SIGTERM after step 1: last.pth mid-epoch
    with pytest.raises(train.Interrupted):
        train.main(argv + ["--run_dir", str(run)])
    monkeypatch.delenv(train.TEST_SIGNAL_ENV)
    resumed = train.main(argv + ["--run_dir", str(run)])
    a, b = load_checkpoint(tmp_path / "ref" / "final.pth"), load_checkpoint(run / "final.pth")
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    extra_a = load_checkpoint(tmp_path / "ref" / "last.pth")["train_state"]["method"]
    extra_b = load_checkpoint(run / "last.pth")["train_state"]["method"]
    flat = lambda s: {f"{k}.{j}": v for k, d in (s or {}).items() for j, v in (d.items() if isinstance(d, dict)
                                                                                else [("", d)])}
    assert flat(extra_a).keys() == flat(extra_b).keys()
    assert all(torch.equal(v, flat(extra_b)[k]) for k, v in flat(extra_a).items())
    assert (extra_a is not None) == (name in ("byol", "mocov2"))
    for key in ("loss", "z_std", "z_std_ref", "lr_first", "lr_last"):
        assert reference["history"][0][key] == resumed["history"][0][key], key
    row = reference["history"][0]
    assert row["z_std_ref"] == pytest.approx(1 / math.sqrt(8), abs=1e-6) and 0 < row["z_std"] < 1
    assert "z_std" in (tmp_path / "ref" / "metrics.csv").read_text().splitlines()[0]

    # the probe and load_backbone read the ONLINE backbone, never the EMA target
    backbone, preprocess = load_backbone(run / "final.pth")
    assert all(torch.equal(v, b["backbone"][k]) for k, v in backbone.state_dict().items())
    if name in ("byol", "mocov2"):
        target = extra_b["target_backbone"]
        assert not all(torch.equal(target[k], b["backbone"][k]) for k in target)
    seen = {}
    real = utils.eval.probe.extract_features

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        seen[kwargs.get("progress")] = out.clone()
        return out

    monkeypatch.setattr(utils.eval.probe, "extract_features", record)
    data = _folder(tmp_path / "data")
    report = test_script.main(["--model_path", str(run / "final.pth"), "--dataset", "folder", "--data_dir", str(data),
                               "--test_num_epochs", "1", "--device", "cpu", "--run_dir", str(tmp_path / "eval"),
                               "--quiet", "--train_type", name])
    assert 0 <= report["test_accuracy"] <= 100
    files = sorted((data / "test").glob("*/*.png"))
    h = backbone(torch.stack([preprocess(Image.open(p)) for p in files]))
    assert torch.allclose(h, seen["test features"], rtol=1e-4, atol=1e-4)
    if name == "byol":  # torch.hub's entry loads the same online backbone
        hub = torch.hub.load(str(ROOT), "resnet18", source="local", checkpoint=str(run / "final.pth"))
        assert all(torch.equal(v, b["backbone"][k]) for k, v in hub.state_dict().items())


def test_curves_show_the_collapse_measure_beside_its_reference(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(train, "plot_panels", lambda path, x, panels, **kw: drawn.update(path=path, panels=dict(panels)))
    history = [{"epoch": 1, "loss": 1.0, "lr_first": 0.1, "lr_last": 0.1, "z_std": 0.2, "z_std_ref": 0.25},
               {"epoch": 2, "loss": 0.9, "lr_first": 0.1, "lr_last": 0.1, "z_std": 0.01, "z_std_ref": 0.25}]
    train.write_metrics(tmp_path, history, SimpleNamespace(train_type="vicreg", dataset="synthetic", data_scale=1.0))
    series = drawn["panels"]["collapse: std of l2-normalised z"]
    assert series["z_std"] == [0.2, 0.01] and series["1/sqrt(d)"] == [0.25, 0.25]
    assert series[f"collapse threshold ({COLLAPSE_FRACTION:g}/sqrt(d))"] == [0.025, 0.025]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["z_std", "z_std_ref"]


def test_every_method_is_a_train_type_with_its_recipe():
    for name in METHODS:
        args = train.parse_args(["--train_type", name, "--dataset", "synthetic"])
        assert args.train_type == name and args.learning_rate > 0
    byol = train.parse_args(["--train_type", "byol", "--batch_size", "512"])
    assert (byol.optimizer, byol.learning_rate, byol.weight_decay, byol.lars_eta, byol.lars_clip_lr) == \
        ("lars", 2.0, 1e-5, 0.02, True)  # solo-learn byol.yaml: lr 1.0 x B/256
    assert train.parse_args(["--train_type", "simclr", "--optimizer", "lars"]).lars_eta == 0.02
    with pytest.raises(Exception):
        train.parse_args(["--train_type", "mocov2", "--queue_size", "8", "--batch_size", "16"])


def test_a_short_run_warms_up_over_a_tenth_of_it_and_decays():
    """The methods' recipes warm up 10 of solo-learn's 1000 epochs: at the study's CPU budgets (2 epochs) that
    would be a warmup longer than the run, an lr rising to the last step. From the recipe it is capped at 10 %
    of the run's steps; a --warmup_epochs given that covers the run is kept and said in one warning line."""
    args = train.parse_args(["--train_type", "byol", "--dataset", "synthetic", "--epochs", "2"])
    assert args.warmup_epochs == 10.0 and args.warmup_cap == 0.1
    lr = train.make_lr_fn(args, total_steps=40, steps_per_epoch=20)
    peak = args.learning_rate
    assert lr(3) == pytest.approx(peak) and lr(2) < peak  # 4 warmup steps, not 200
    assert lr(39) < 0.01 * peak  # then the cosine down to 0 at the end
    assert train.make_lr_fn(args, total_steps=200_000, steps_per_epoch=200)(1999) == pytest.approx(peak)  # long: 10 ep
    assert train.parse_args(["--dataset", "synthetic"]).warmup_cap is None  # SimCLR's recipe: no warmup to cap
    given = train.parse_args(["--train_type", "byol", "--dataset", "synthetic", "--epochs", "2", "--warmup_epochs", "3"])
    assert given.warmup_cap is None
    seen: list[logging.LogRecord] = []  # a handler of our own: an earlier train.main may stop propagation
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append
    LOG.addHandler(handler)
    level = LOG.level
    LOG.setLevel(logging.WARNING)  # whatever level an earlier run left
    try:
        lr = train.make_lr_fn(given, total_steps=40, steps_per_epoch=20)
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)
    assert lr(39) == pytest.approx(peak * 40 / 60)  # still rising: what the user asked for
    warned = [r.getMessage() for r in seen if "covers the whole run" in r.getMessage()]
    assert len(warned) == 1 and "60 steps" in warned[0] and "40 steps" in warned[0]


def test_lr_1d_scale_puts_every_one_dimensional_parameter_at_that_share_of_the_lr():
    """--lr_1d_scale (facebookresearch/barlowtwins: biases and BatchNorm at 0.0048 / 0.2 of the weights' lr): each
    parameter in exactly one group, the 1-D ones at scale x the scheduled lr at every step, SimSiam's fixed-lr
    predictor still fixed (its 1-D part at scale x the fixed lr)."""
    from models import build_backbone
    from utils.schedule import make_scheduler
    spec = {"proj_hidden_dim": 32, "proj_dim": 16, "barlow_lambda": 0.0051, "scale_loss": 1.0}
    model = build_method("barlow_twins", build_backbone("cifar"), spec)
    groups = train.one_d_lr_groups(model.param_groups(), 0.024)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad) and len(set(ids)) == len(ids)
    assert all((p.ndim <= 1) == ("lr_scale" in g) for g in groups for p in g["params"])
    optimizer = LARS(groups, lr=0.3, momentum=0.9, weight_decay=1e-6, eta=0.001)
    lr_fn = lambda step: 0.3 * (1 - step / 10)  # noqa: E731
    scheduler = make_scheduler(optimizer, lr_fn, 0.3)
    for step in range(4):
        lrs = [(g.get("lr_scale", 1.0), g["lr"]) for g in optimizer.param_groups]
        assert all(math.isclose(lr, scale * lr_fn(step)) for scale, lr in lrs) and {s for s, _ in lrs} == {1.0, 0.024}
        optimizer.step()
        scheduler.step()
    simsiam = build_method("simsiam", build_backbone("cifar"), {"proj_hidden_dim": 32, "proj_dim": 16,
                                                                 "pred_hidden_dim": 8})
    split = train.one_d_lr_groups(simsiam.param_groups(), 0.5)
    optimizer = torch.optim.SGD(split, lr=0.1)
    scheduler = make_scheduler(optimizer, lambda step: 0.1 * 0.5 ** step, 0.1)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    fixed = [(g.get("lr_scale", 1.0), g["lr"]) for g in optimizer.param_groups if g.get("fixed_lr")]
    assert sorted(fixed) == [(0.5, 0.05), (1.0, 0.1)]


def test_lr_1d_scale_reaches_the_run_and_its_config(tmp_path):
    """A Barlow Twins run with --lr_1d_scale records it; without it the config says None (so runs made before the
    flag existed still resume) and every parameter sits in the one group of before."""
    argv = TINY + ["--train_type", "barlow_twins", "--proj_hidden_dim", "32", "--proj_dim", "16"]
    train.main(argv + ["--lr_1d_scale", "0.024", "--run_dir", str(tmp_path / "scaled")])
    train.main(argv + ["--run_dir", str(tmp_path / "plain")])
    scaled = load_checkpoint(tmp_path / "scaled" / "last.pth")
    plain = load_checkpoint(tmp_path / "plain" / "last.pth")
    assert scaled["config"]["lr_1d_scale"] == 0.024 and plain["config"]["lr_1d_scale"] is None
    groups = scaled["train_state"]["optimizer"]["param_groups"]
    assert sorted({g.get("lr_scale", 1.0) for g in groups}) == [0.024, 1.0]
    assert len(plain["train_state"]["optimizer"]["param_groups"]) == 1
