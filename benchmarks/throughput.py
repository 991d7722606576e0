"""Throughput of the SimCLR step: the per-image PIL baseline vs the project's on-device fast path.

Measures, in one run on one device and side by side:
- the SimCLR training step (ResNet-18 CIFAR stem + projection head, NT-Xent, SGD momentum 0.9):
  SimCLR images/s (each image gives two views), the equivalent seconds per CIFAR-10 epoch
  (50,000 images), peak memory and model FLOP utilisation;
- augmentation alone: views/s of the PIL transforms (per CPU core) and of the batched ones;
- the linear probe's feature pass (eval transform + backbone forward, no grad): images/s.

BASELINE is how the original and most public repos run: torchvision PIL transforms per image
in DataLoader workers, fp32, contiguous tensors. FAST is the project's path: the data as one
uint8 tensor on the device, an index shuffle on the device, BatchSimCLRAugment there,
channels_last, bf16 autocast on CUDA only (on CPUs without native bf16 it is much slower),
fused/foreach SGD, optional torch.compile, and no host synchronisation inside the timed steps.
With --compile the fast path is timed uncompiled and then compiled, and the line under the table
gives compilation's extra warm-up seconds, its speed-up and the step count where it pays off.
The data are random CIFAR-shaped uint8 images, so it runs anywhere, offline.

    python benchmarks/throughput.py --device cpu
    python benchmarks/throughput.py --device cuda --compile --json benchmarks/results/h100.json
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import resource
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

# Run as a script from anywhere: the repository root holds the models/ and utils/ packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from models import PretrainModel, ProjectionHead, build_backbone  # noqa: E402
from utils.cli import ArgumentParser, HelpFormatter, non_negative_int, positive_float, positive_int  # noqa: E402
from utils.cli import seed as seed_type  # noqa: E402
from utils.data.constants import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.runtime import autocast_context, bf16_native, cpu_bf16_native, resolve_device  # noqa: E402
from utils.augment import (  # noqa: E402
    BatchSimCLRAugment,
    TwoViews,
    batch_eval_transform,
    eval_transform,
    simclr_view_transform,
)
from utils.train.losses import nt_xent_loss  # noqa: E402

CIFAR10_TRAIN_IMAGES = 50_000  # images per CIFAR-10 epoch
IMAGE_SIZE = 32
TEMPERATURE = 0.5
LEARNING_RATE = 0.1  # any value: only the speed is measured
MOMENTUM = 0.9
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity),
# matched against the CUDA device name.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# Defaults per device type: (batch size, timed steps, warm-up steps). The CPU run is kept short
# (about a minute on 2 cores): a ResNet-18 step on 256 views takes ~10 s there.
DEFAULTS = {"cuda": (512, 30, 5), "cpu": (128, 2, 1)}
AUG_BATCHES = {"cuda": 20, "cpu": 6}  # batches timed for the augmentation-only figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run; auto = CUDA if present, else CPU")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="SimCLR images per step (two views each) [512 on CUDA, 128 on CPU]")
    p.add_argument("--steps", type=positive_int, default=None, help="timed steps per pipeline [30 CUDA, 2 CPU]")
    p.add_argument("--warmup", type=non_negative_int, default=None,
                   help="untimed steps first (worker start-up, cudnn autotune, compilation) [5 CUDA, 1 CPU]")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="DataLoader workers of the baseline [all CPU cores, at most 16]")
    p.add_argument("--compile", action="store_true", help="torch.compile the model on the fast path")
    p.add_argument("--cpu_bf16", action="store_true",
                   help="on a CPU with native bf16 (avx512_bf16 / amx_bf16), time the fast path again under bf16 "
                        "autocast, side by side with fp32 in the same run")
    p.add_argument("--peak_tflops", type=positive_float, default=None,
                   help="peak TFLOP/s for the utilisation [bf16 table for H100/H200/A100; none on CPU]")
    p.add_argument("--num_images", type=positive_int, default=CIFAR10_TRAIN_IMAGES,
                   help="synthetic training-set size held in memory (CIFAR-10: 50,000)")
    p.add_argument("--seed", type=seed_type, default=0, help="seed for the data, shuffles and augmentation")
    p.add_argument("--json", default=None,
                   help="where to write the figures [benchmarks/results/throughput_<device>.json]")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def default_peak_tflops(device: torch.device) -> float | None:
    """Peak dense bf16 TFLOP/s of a known GPU; None on CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mib() -> float | None:
    """This process's resident set size now (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of one phase, as a context manager: CUDA max_memory_allocated, or on CPU the
    main process's RSS sampled every 20 ms (getrusage's peak cannot be reset between phases;
    DataLoader workers are separate processes and not included)."""

    INTERVAL_S = 0.02

    def __init__(self, device: torch.device):
        self.device, self.peak_mib = device, None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_mib()
            if rss is not None:
                self.peak_mib = max(self.peak_mib or 0.0, rss)
            self._stop.wait(self.INTERVAL_S)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _rss_mib() is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:  # no /proc: the process's peak so far
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


def build_model(device: torch.device, channels_last: bool) -> PretrainModel:
    model = PretrainModel(build_backbone("cifar"), ProjectionHead()).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def simclr_flops_per_image(device: torch.device) -> int:
    """FLOPs of one SimCLR image (both views) through forward + backward, by FlopCounterMode.

    Counted on 2 images (4 views: BatchNorm needs more than one) and divided by 2; the count
    is linear in the batch size.
    """
    model = build_model(device, channels_last=False)
    x = torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        _, z = model(x)
        z1, z2 = z.chunk(2)
        nt_xent_loss(z1, z2, TEMPERATURE).backward()
    return counter.get_total_flops() // 2


class SyntheticImages(Dataset):
    """HWC uint8 images through a per-image transform (what the DataLoader workers run)."""

    def __init__(self, images: np.ndarray, transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index])


def make_loader(images: np.ndarray, transform, batch_size: int, workers: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(SyntheticImages(images, transform), batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=workers, pin_memory=device.type == "cuda", generator=g,
                      persistent_workers=False)


class DeviceIndexSampler:
    """Shuffled index batches drawn on the device: a new permutation per pass, no host sync."""

    def __init__(self, n: int, batch_size: int, device: torch.device, generator: torch.Generator):
        self.n, self.batch_size, self.device, self.generator = n, batch_size, device, generator
        self.perm = torch.randperm(n, device=device, generator=generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # drop the last partial batch, reshuffle
            self.perm = torch.randperm(self.n, device=self.device, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def timed(run_step, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(warm-up seconds, timed seconds) of `steps` calls of run_step after `warmup` calls.

    One synchronisation after the warm-up and one at the end: none inside the timed steps.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):
        run_step()
    synchronize(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        run_step()
    synchronize(device)
    return t1 - t0, time.perf_counter() - t1


# ----------------------------------------------------------------------------------------------
# The two pipelines
# ----------------------------------------------------------------------------------------------


def simclr_step(model, optimizer, x1: torch.Tensor, x2: torch.Tensor, autocast) -> torch.Tensor:
    """One SimCLR step: both views through one forward (BatchNorm sees all 2N), NT-Xent, SGD."""
    with autocast:
        _, z = model(torch.cat([x1, x2]))
        z1, z2 = z.chunk(2)
        loss = nt_xent_loss(z1, z2, TEMPERATURE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def run_baseline(args, images_hwc: np.ndarray, device: torch.device) -> dict:
    """PIL transforms per image in DataLoader workers, fp32, contiguous (NCHW)."""
    workers = args.workers
    transform = TwoViews(simclr_view_transform(IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD))
    model = build_model(device, channels_last=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    loader = make_loader(images_hwc, transform, args.batch_size, workers, device, args.seed)
    batches = iter(loader)
    losses = []

    def step():
        nonlocal batches
        try:
            x1, x2 = next(batches)
        except StopIteration:
            batches = iter(loader)
            x1, x2 = next(batches)
        x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
        losses.append(simclr_step(model, optimizer, x1, x2, nullcontext()))

    with PeakMemory(device) as mem:
        warm_s, secs = timed(step, args.warmup, args.steps, device)
    result = {"warmup_s": warm_s, "seconds": secs, "peak_memory_mib": mem.peak_mib,
              "final_loss": float(losses[-1])}
    del batches
    return result


def run_fast(args, data: torch.Tensor, device: torch.device, compile_model: bool | None = None,
             cpu_bf16: bool = False) -> dict:
    """Device-resident uint8 data, device shuffle, batched augmentation, channels_last, bf16 on CUDA (and, with
    cpu_bf16, on a CPU with native bf16).

    compile_model (default: --compile) wraps the model in torch.compile; compilation happens in
    the warm-up steps, so their seconds include it.
    """
    compile_model = args.compile if compile_model is None else compile_model
    g = torch.Generator(device=device).manual_seed(args.seed)
    augment = BatchSimCLRAugment(IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD)
    model = build_model(device, channels_last=True)
    # Fused kernels on CUDA, multi-tensor (foreach) elsewhere: one launch per group, not per tensor.
    opt_kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, **opt_kw)
    net = torch.compile(model) if compile_model else model
    sampler = DeviceIndexSampler(len(data), args.batch_size, device, g)
    loss_sum = torch.zeros((), device=device)  # accumulated on the device, read once at the end
    autocast = autocast_context(device, cpu=cpu_bf16)

    def step():
        nonlocal loss_sum
        x = data[sampler.next()]
        views = augment(torch.cat([x, x]), generator=g).contiguous(memory_format=torch.channels_last)
        x1, x2 = views.chunk(2)
        loss_sum = loss_sum + simclr_step(net, optimizer, x1, x2, autocast)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with PeakMemory(device) as mem:
        warm_s, secs = timed(step, args.warmup, args.steps, device)
    return {"warmup_s": warm_s, "seconds": secs, "peak_memory_mib": mem.peak_mib,
            "mean_loss": float(loss_sum) / (args.warmup + args.steps)}


def augmentation_rates(args, images_hwc: np.ndarray, data: torch.Tensor, device: torch.device) -> dict:
    """Views/s of the PIL transforms (workers and in-process) and of the batched transform."""
    n_batches = AUG_BATCHES[device.type]
    transform = TwoViews(simclr_view_transform(IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD))
    out: dict = {}
    # PIL in DataLoader workers, as in training (worker start-up and the first batch untimed).
    loader = make_loader(images_hwc, transform, args.batch_size, args.workers, device, args.seed)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    secs = time.perf_counter() - t0
    del it
    views = 2 * args.batch_size * n_batches
    out["pil_loader_views_per_s"] = views / secs
    out["pil_workers"] = args.workers
    out["pil_views_per_s_per_core"] = views / secs / max(1, args.workers)
    # PIL in this process, one image after another on one core (no loader overheads).
    view_t = simclr_view_transform(IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD)
    n_single = min(len(images_hwc), 256 * (n_batches // 4 + 1))
    view_t(images_hwc[0])
    t0 = time.perf_counter()
    for k in range(n_single):
        view_t(images_hwc[k])
    out["pil_views_per_s_in_process"] = n_single / (time.perf_counter() - t0)
    # Batched, on the device: two views of a batch per call, as in the fast step.
    g = torch.Generator(device=device).manual_seed(args.seed)
    augment = BatchSimCLRAugment(IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD)
    sampler = DeviceIndexSampler(len(data), args.batch_size, device, g)
    sink = []

    def step():
        x = data[sampler.next()]
        sink.append(augment(torch.cat([x, x]), generator=g).sum())  # keeps the work from being skipped
        if len(sink) > 4:
            sink.pop(0)

    _, secs = timed(step, 2, n_batches, device)
    out["batched_views_per_s"] = views / secs
    if device.type == "cpu":
        # The same on one core: the per-core figure to set beside PIL's per-core rate.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _, secs = timed(step, 1, n_batches, device)
        finally:
            torch.set_num_threads(threads)
        out["batched_views_per_s_one_thread"] = views / secs
    out["batched_vs_pil_per_core"] = out["batched_views_per_s"] / out["pil_views_per_s_per_core"]
    out["batched_vs_pil_in_process"] = out["batched_views_per_s"] / out["pil_views_per_s_in_process"]
    if "batched_views_per_s_one_thread" in out:
        out["batched_one_thread_vs_pil_per_core"] = (out["batched_views_per_s_one_thread"]
                                                     / out["pil_views_per_s_per_core"])
    return out


def feature_rates(args, images_hwc: np.ndarray, data: torch.Tensor, device: torch.device) -> dict:
    """Images/s of the probe's feature pass: eval transform + backbone forward, no gradients.

    Baseline: PIL eval transform in DataLoader workers, fp32, contiguous. Fast: device-resident
    data, batch_eval_transform, channels_last, bf16 on CUDA, inference_mode.
    """
    bs = args.batch_size
    steps, warmup = args.steps, max(1, args.warmup)
    out: dict = {}

    backbone = build_model(device, channels_last=False).backbone.eval()
    loader = make_loader(images_hwc, eval_transform(IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD), bs, args.workers,
                         device, args.seed)
    it = iter(loader)

    def base_step():
        nonlocal it
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
        with torch.no_grad():
            backbone(x.to(device, non_blocking=True))

    _, secs = timed(base_step, warmup, steps, device)
    del it
    out["baseline_images_per_s"] = bs * steps / secs

    fast_backbone = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
    if args.compile:
        fast_backbone = torch.compile(fast_backbone)
    sampler = DeviceIndexSampler(len(data), bs, device, torch.Generator(device=device).manual_seed(args.seed))
    autocast = autocast_context(device)
    feats = []

    def fast_step():
        with torch.inference_mode(), autocast:
            x = batch_eval_transform(data[sampler.next()], IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD)
            feats.append(fast_backbone(x.contiguous(memory_format=torch.channels_last)).float().sum())
            if len(feats) > 4:
                feats.pop(0)

    _, secs = timed(fast_step, warmup, steps, device)
    out["fast_images_per_s"] = bs * steps / secs
    out["fast_vs_baseline"] = out["fast_images_per_s"] / out["baseline_images_per_s"]
    return out


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _fmt(value, spec: str = ",.1f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def format_table(res: dict) -> str:
    """The side-by-side table printed at the end of a run."""
    b, f, a, p = res["baseline"], res["fast"], res["augmentation"], res["probe_features"]
    fast_label = "fast (device aug, channels_last" + (", bf16" if res["bf16"] else "") + \
        (", compile" if res["compile"] else "") + ")"
    rows = [
        ("SimCLR images/s (2 views each)", b["images_per_s"], f["images_per_s"], ",.1f"),
        ("seconds per CIFAR-10 epoch", b["epoch_seconds"], f["epoch_seconds"], ",.2f"),
        ("model TFLOP/s", b["tflops"], f["tflops"], ",.3f"),
        ("model FLOP utilisation", b["mfu"], f["mfu"], ".1%"),
        ("peak memory MiB" + (" (CUDA allocated)" if res["device_type"] == "cuda" else " (main process RSS)"),
         b["peak_memory_mib"], f["peak_memory_mib"], ",.0f"),
        ("augmentation views/s, total", a["pil_loader_views_per_s"], a["batched_views_per_s"], ",.0f"),
        (f"augmentation views/s, per PIL core ({a['pil_workers']} workers)", a["pil_views_per_s_per_core"],
         a["batched_views_per_s"], ",.0f"),
        ("augmentation views/s, PIL in-process (1 core)", a["pil_views_per_s_in_process"],
         a["batched_views_per_s"], ",.0f"),
        ("probe feature pass images/s", p["baseline_images_per_s"], p["fast_images_per_s"], ",.1f"),
    ]
    if "batched_views_per_s_one_thread" in a:
        rows.insert(8, ("augmentation views/s, one core each (PIL in-process)", a["pil_views_per_s_in_process"],
                        a["batched_views_per_s_one_thread"], ",.0f"))
    w0, w1, w2 = 52, 20, max(20, len(fast_label))
    load = res.get("load_average")
    lines = [
        f"device: {res['device']} | torch {res['torch']} | {res['date']}"
        + (f" | load average {load[0]:.1f} -> {load[1]:.1f}" if load else ""),
        f"batch {res['batch_size']} images ({2 * res['batch_size']} views), {res['steps']} timed steps "
        f"after {res['warmup']} warm-up; FLOPs per SimCLR image (fwd+bwd, 2 views): "
        f"{res['flops_per_image'] / 1e9:.2f} G; peak {_fmt(res['peak_tflops'], ',.0f')} TFLOP/s",
        "",
        f"{'':<{w0}} {'baseline (PIL, fp32)':>{w1}} {fast_label:>{w2}} {'fast/base':>10}",
    ]
    for name, base, fast, spec in rows:
        if name.startswith("seconds"):
            ratio = base / fast if base and fast else None  # speed-up: fewer seconds is better
        else:
            ratio = fast / base if base and fast else None
        ratio_text = "n/a" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"{name:<{w0}} {_fmt(base, spec):>{w1}} {_fmt(fast, spec):>{w2}} {ratio_text:>10}")
    return "\n".join(lines)


def compile_cost(eager: dict, compiled: dict, batch_size: int) -> dict:
    """What torch.compile costs and gains: extra warm-up seconds, steady-state speed-up, and the
    number of steps (and CIFAR-10 epochs) after which the compiled run is ahead; None = never."""
    extra = compiled["warmup_s"] - eager["warmup_s"]
    eager_step = batch_size / eager["images_per_s"]
    compiled_step = batch_size / compiled["images_per_s"]
    saved_per_step = eager_step - compiled_step
    steps = max(0.0, extra) / saved_per_step if saved_per_step > 0 else None
    return {"extra_warmup_s": extra, "speedup": eager_step / compiled_step, "break_even_steps": steps,
            "break_even_epochs": None if steps is None else steps * batch_size / CIFAR10_TRAIN_IMAGES}


def notes(res: dict) -> list[str]:
    """Lines under the table: the issue's augmentation target, and why a CPU figure may be low."""
    a = res["augmentation"]
    lines = [f"\nbatched augmentation vs PIL per core: {a['batched_vs_pil_per_core']:.1f}x "
             f"(target >= 5x); vs PIL in-process on one core: {a['batched_vs_pil_in_process']:.1f}x"]
    cost = res.get("compile_cost")
    if cost is not None:
        eager = res["fast_uncompiled"]
        pays = ("never pays off (not faster once compiled)" if cost["break_even_steps"] is None else
                f"ahead after {cost['break_even_steps']:,.0f} steps = {cost['break_even_epochs']:,.2f} CIFAR-10 epochs")
        lines.append(f"torch.compile: fast path {eager['images_per_s']:,.1f} -> {res['fast']['images_per_s']:,.1f} "
                     f"images/s ({cost['speedup']:.2f}x), {cost['extra_warmup_s']:,.1f} s of extra warm-up "
                     f"(compilation); {pays}")
    bf = res.get("fast_cpu_bf16")
    if bf is not None:
        f = res["fast"]
        lines.append(f"bf16 autocast on this CPU: fast path {f['images_per_s']:,.1f} -> {bf['images_per_s']:,.1f} "
                     f"images/s ({bf['images_per_s'] / f['images_per_s']:.2f}x); mean loss of the timed run "
                     f"{f['mean_loss']:.4f} (fp32) and {bf['mean_loss']:.4f} (bf16)")
    one = a.get("batched_views_per_s_one_thread")
    if one is not None:
        lines.append("batched augmentation on one thread vs PIL per core: "
                     f"{a['batched_one_thread_vs_pil_per_core']:.1f}x")
        if one > a["batched_views_per_s"]:
            load = res.get("load_average") or [None]
            lines.append(
                f"note: the batched rate with {torch.get_num_threads()} threads is below its one-thread rate: the "
                f"intra-op threads spin-wait while other processes hold the cores (load average {_fmt(load[0])} "
                f"on {os.cpu_count()} cores). On a shared machine OMP_WAIT_POLICY=PASSIVE avoids that.")
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available (use --device cpu)")
    device = resolve_device(args.device)
    if args.cpu_bf16 and device.type == "cpu" and not cpu_bf16_native():
        raise UserError("--cpu_bf16: this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo); "
                        "emulated bf16 was measured 17x slower than fp32, so there is nothing to compare")
    bs, steps, warmup = DEFAULTS[device.type]
    args.batch_size = args.batch_size or bs
    args.steps = args.steps or steps
    args.warmup = warmup if args.warmup is None else args.warmup
    args.workers = min(16, os.cpu_count() or 1) if args.workers is None else args.workers
    if args.batch_size > args.num_images:
        raise UserError(f"--batch_size {args.batch_size} is larger than --num_images {args.num_images}")
    peak = args.peak_tflops if args.peak_tflops is not None else default_peak_tflops(device)

    load_start = _load_average()
    print(f"device: {device_name(device)} | torch {torch.__version__}"
          + (f" | load average {load_start:.1f}" if load_start is not None else ""), flush=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images_hwc = rng.integers(0, 256, size=(args.num_images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    data = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous().to(device)  # (N, 3, H, W) uint8

    flops = simclr_flops_per_image(device)
    print(f"[1/4] baseline SimCLR step: {args.warmup} + {args.steps} steps at batch {args.batch_size}, "
          f"{args.workers} workers", flush=True)
    baseline = run_baseline(args, images_hwc, device)
    print("[2/4] fast SimCLR step" + (" (uncompiled, then compiled)" if args.compile else ""), flush=True)
    eager = run_fast(args, data, device, compile_model=False) if args.compile else None
    fast = run_fast(args, data, device)
    fast_bf16 = None
    if args.cpu_bf16 and device.type == "cpu":
        print("[2/4] fast SimCLR step again, under bf16 autocast (CPU with native bf16)", flush=True)
        fast_bf16 = run_fast(args, data, device, cpu_bf16=True)
    for r in (baseline, fast) + tuple(x for x in (eager, fast_bf16) if x):
        r["images_per_s"] = args.batch_size * args.steps / r["seconds"]
        r["epoch_seconds"] = CIFAR10_TRAIN_IMAGES / r["images_per_s"]
        r["tflops"] = flops * r["images_per_s"] / 1e12
        r["mfu"] = r["tflops"] / peak if peak else None
    print("[3/4] augmentation only", flush=True)
    aug = augmentation_rates(args, images_hwc, data, device)
    print("[4/4] probe feature pass", flush=True)
    feats = feature_rates(args, images_hwc, data, device)

    res = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "compile": args.compile,
        "bf16": device.type == "cuda" and bf16_native(),  # what autocast_context used (native bf16 only)
        "num_images": args.num_images,
        "flops_per_image": flops,
        # 1-minute load average at the start and the end: CPU figures are only comparable
        # between runs on an otherwise idle machine.
        "load_average": [load_start, _load_average()] if load_start is not None else None,
        "peak_tflops": peak,
        "baseline": baseline,
        "fast": fast,
        "speedup": fast["images_per_s"] / baseline["images_per_s"],
        "augmentation": aug,
        "probe_features": feats,
    }
    if fast_bf16 is not None:
        res["fast_cpu_bf16"] = fast_bf16
    if eager is not None:
        res["fast_uncompiled"] = eager
        res["compile_cost"] = compile_cost(eager, fast, args.batch_size)
    table = format_table(res) + "\n" + "\n".join(notes(res))
    res["table"] = table
    print()
    print(table)
    path = Path(args.json or f"benchmarks/results/throughput_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return res


if __name__ == "__main__":
    run_cli(main)
