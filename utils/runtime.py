"""Device choice, seeding, precision and logging helpers shared by the scripts."""
from __future__ import annotations

import logging
import os
import platform
import random
import sys
from contextlib import contextmanager, nullcontext
from typing import Callable

import numpy as np
import torch

from utils.errors import UserError

LOG = logging.getLogger("simclr")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU. A malformed name, or a GPU that is not there, is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was requested but no CUDA GPU is available (use --device cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: only {count} CUDA GPU(s) here (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name} was requested but MPS is not available (use --device cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: only auto, cpu, cuda[:N] (and mps) are supported")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (bitwise repeatable runs); slower on GPU. warn_only: an op without a deterministic
    kernel warns and runs anyway. CUBLAS_WORKSPACE_CONFIG was required by older torch releases (torch 2.14
    allocates a cuBLAS workspace per handle and stream and no longer asks for it); harmless when set."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def bf16_native() -> bool:
    """True on a CUDA GPU with bf16 in hardware (compute capability 8.0 and later).

    torch.cuda.is_bf16_supported() alone also says True on V100 / T4, where bf16 is emulated
    (slow); only including_emulation=False tells the two apart.
    """
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def _cpuinfo_field(name: str, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo (Linux); None where there is none."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_bf16_native(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on a CPU with bf16 in hardware: avx512_bf16 (AVX-512 BF16 dot products) or amx_bf16 (AMX tiles) among
    its flags. Elsewhere oneDNN emulates bf16, measured 17x slower than fp32 here; False where /proc/cpuinfo is
    missing (not Linux)."""
    return bool({"avx512_bf16", "amx_bf16"} & set((_cpuinfo_field("flags", cpuinfo) or "").split()))


def choose_precision(requested: str, device: torch.device) -> str:
    """--precision auto -> bf16 on a GPU with native bf16, fp16 (with a GradScaler) on older GPUs, fp32 on CPU."""
    if requested != "auto":
        if requested == "bf16" and device.type == "cuda" and not bf16_native():
            LOG.warning("warning: --precision bf16 on a GPU without native bf16 runs emulated (slow); "
                        "--precision auto picks fp16 here")
        if requested == "bf16" and device.type == "cpu" and not cpu_bf16_native():
            LOG.warning("warning: --precision bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 in "
                        "/proc/cpuinfo) runs emulated, many times slower than fp32")
        return requested
    if device.type != "cuda":
        return "fp32"
    return "bf16" if bf16_native() else "fp16"


def mixed_precision(precision: str, device: torch.device) -> tuple[torch.amp.GradScaler, Callable]:
    """(GradScaler, () -> autocast context) for a chosen precision; the scaler is on for fp16 only."""
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return scaler, ((lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext)


@contextmanager
def run_settings(threads: int | None, deterministic: bool):
    """Inside: `threads` intra-op CPU threads (None: unchanged) and set_deterministic(deterministic); after,
    all of it restored, so a cell run in-process (the study's --jobs 1) leaves no setting to the next one.

    CPU kernels split their reductions by the thread count, so the same computation at 1 and 2 threads can
    differ in the last bits and then drift apart over a training run: the count is part of what is computed.
    """
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        set_deterministic(deterministic)
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor()); '' where neither says."""
    return _cpuinfo_field("model name") or platform.processor()


def runtime_info() -> dict:
    """What changes a run's numbers besides its flags, as it is now: intra-op and inter-op threads,
    deterministic kernels, cuDNN benchmarking, the thread variables of the environment (numpy's BLAS
    reads them; no cell computes with it), and the CPU: its model and the instruction set torch's kernels
    were chosen for (another one rounds differently: docs/reproducibility.md)."""
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "CUBLAS_WORKSPACE_CONFIG") if os.environ.get(k) is not None}
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "env": env,
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def autocast_context(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bf16 autocast on a CUDA GPU with native bf16 (fp32 elsewhere); with cpu=True also on a CPU with native bf16
    (cpu_bf16_native). On CPUs without native bf16 it was measured 17x slower; on V100 / T4 it would be emulated."""
    if enabled and device.type == "cuda" and bf16_native():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and cpu and device.type == "cpu" and cpu_bf16_native():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def full_precision(x: torch.Tensor):
    """Autocast off on x's device: what runs inside computes in float32 even within a bf16/fp16
    autocast region (image transforms would lose 8 bits of pixel precision, NT-Xent's logits would
    be quantised to about 2^-8 / temperature)."""
    if x.device.type in ("cuda", "cpu"):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


def setup_logging(log_file: str | os.PathLike | None = None, quiet: bool = False) -> logging.Logger:
    """One line per event to stdout (and to `log_file` if given)."""
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
        handler.close()
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    stream.setLevel(logging.WARNING if quiet else logging.INFO)  # quiet silences the console, not the log file
    LOG.addHandler(stream)
    if log_file is not None:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        LOG.addHandler(fh)
    return LOG


def rng_state() -> dict:
    """All RNG states as checkpoint-safe values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _tuple_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_list_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuple_to_list(x):
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x):
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, (tuple, list)) else x
