"""Where a study's cells run (simclr_train.py): its devices and CPU slots, N worker processes on this machine,
or one submitit job per cell (SLURM, or submitit's local executor), and a worker's tie to the study process.

The study decides what runs (the unfinished cells) and how (a command line per cell and device); this module
only starts, watches and stops those commands.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from utils.errors import UserError
from utils.sweep import Cell

PARENT_ENV = "SIMCLR_SWEEP_PARENT"  # a worker's parent pid: the worker stops when that process dies
Command = Callable[[Cell, str], list[str]]  # (cell, device) -> the worker's command line


def default_devices(args: argparse.Namespace) -> list[str]:
    if args.devices:
        return list(args.devices)
    import torch

    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [args.device if args.device != "auto" else "cpu"]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def warn_oversubscription(args: argparse.Namespace) -> None:
    """One line when the cells at once ask for more CPU threads than this machine has (slower, same numbers)."""
    cores, threads = available_cores(), args.jobs * args.threads_per_cell
    if args.launcher == "local" and threads > cores:
        print(f"warning: --jobs {args.jobs} x --threads_per_cell {args.threads_per_cell} = {threads} CPU threads on "
              f"{cores} cores: oversubscribed, so slower (the numbers do not change)", flush=True)


def slots(args: argparse.Namespace) -> list[dict]:
    """One slot per concurrent cell: its device (or GPU group) and its environment overrides. The worker's
    OpenMP pool (and numpy's BLAS) start with --threads_per_cell threads; train.py / test.py --threads then
    set torch's count, as they do for a cell run in this process."""
    devices, g = default_devices(args), args.gpus_per_cell
    threads = args.threads_per_cell
    out = []
    for i in range(args.jobs):
        env = {"OMP_NUM_THREADS": str(threads)}
        if devices[0].startswith("cuda") and g > 1:
            group = [devices[(i * g + k) % len(devices)] for k in range(g)]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            ids = [d.split(":")[1] if ":" in d else "0" for d in group]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[int(k)] if visible != [""] else k for k in ids)
            out.append({"device": "cuda", "where": "+".join(group), "env": env})
        else:
            device = devices[i % len(devices)]
            out.append({"device": device, "where": device if device != "cpu" else f"cpu ({threads} threads)",
                        "env": env})
    return out


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_local_jobs(args: argparse.Namespace, todo: list[Cell], logs: Path, command: Command,
                   on_interrupt: Callable[[], object] = lambda: None) -> list[str]:
    """Up to --jobs worker processes at once, each with its own device, running `command(cell, device)` with its
    output in logs/<cell>.log; returns the cells that failed.

    A worker stops (SIGTERM: train.py saves last.pth) when this process dies, even by SIGKILL. Workers run
    in their own sessions, so a Ctrl-C reaches this process alone, which then sends each worker one
    SIGTERM (a second signal would stop it without saving), waits for them to save, then calls on_interrupt.
    """
    todo, running, failed = list(todo), {}, []
    free = slots(args)
    logs.mkdir(parents=True, exist_ok=True)
    total = len(todo)
    print(f"{total} cells to run, {len(free)} at a time; each one's output in {logs}/<cell>.log", flush=True)
    try:
        while todo or running:
            while todo and free:
                cell, slot = todo.pop(0), free.pop(0)
                env = dict(os.environ, **slot["env"], **{PARENT_ENV: str(os.getpid())})
                log = open(logs / f"{cell.name}.log", "a")
                proc = subprocess.Popen(command(cell, slot["device"]), stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=os.getcwd(), start_new_session=True)
                log.close()
                running[proc] = (cell, slot)
                print(f"[{total - len(todo)}/{total}] {cell.name}: started on {slot['where']} (pid {proc.pid})", flush=True)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                cell, slot = running.pop(proc)
                free.append(slot)
                if proc.returncode == 0:
                    print(f"{cell.name}: finished", flush=True)
                else:
                    failed.append(cell.name)
                    print(f"{cell.name}: failed (exit {proc.returncode}): {_log_tail(logs / f'{cell.name}.log')}",
                          flush=True)
    except KeyboardInterrupt:
        print(f"interrupted: waiting for {len(running)} running cells to save their last.pth", flush=True)
        for proc in running:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
        on_interrupt()
        raise
    return failed


def run_submitit(args: argparse.Namespace, todo: list[Cell], out_dir: Path, command: Command) -> list[str]:
    """One submitit job per cell in todo (SLURM, or this machine's local executor), each running
    `command(cell, device)`; waits for them and returns the cells whose job failed."""
    try:
        import submitit
    except ImportError:
        raise UserError(f"--launcher {args.launcher} needs submitit: pip install submitit") from None
    cluster = "slurm" if args.launcher == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=out_dir / "submitit" / "%j", cluster=cluster)
    except RuntimeError as exc:  # e.g. no srun: not on a SLURM cluster
        raise UserError(f"--launcher {args.launcher}: {exc} (--launcher submitit_local runs the jobs here)") from None
    gpus = args.gpus_per_cell if (args.launcher == "slurm" or default_devices(args)[0].startswith("cuda")) else 0
    params = {"timeout_min": args.slurm_time, "name": f"simclr-{out_dir.name}", "nodes": 1, "tasks_per_node": 1,
              "gpus_per_node": gpus}
    # The cell computes with --threads_per_cell threads (train.py / test.py --threads) whatever it is given.
    params["cpus_per_task"] = args.cpus_per_cell or (max(args.threads_per_cell, 10 * max(1, gpus))
                                                     if args.launcher == "slurm" else args.threads_per_cell)
    if args.launcher == "slurm":
        params.update({f"slurm_{k}": v for k, v in (("partition", args.slurm_partition), ("account", args.slurm_account),
                                                    ("qos", args.slurm_qos)) if v})
    executor.update_parameters(**params)
    device = "cuda" if gpus else "cpu"
    jobs = {}
    for cell in todo:
        job = submitit.helpers.CommandFunction(command(cell, device), cwd=os.getcwd(), verbose=False)
        jobs[cell.name] = executor.submit(job)
        print(f"{cell.name}: submitted as job {jobs[cell.name].job_id} ({cluster})", flush=True)
    failed = []
    while jobs:
        for name, job in list(jobs.items()):
            if not job.done():
                continue
            del jobs[name]
            try:
                job.result()
                print(f"{name}: job {job.job_id} finished", flush=True)
            except Exception as exc:  # the job's own error: reported, the others go on
                failed.append(name)
                why = [line for line in str(exc).splitlines() if line.strip()]
                print(f"{name}: job {job.job_id} failed: {why[-1] if why else type(exc).__name__}", flush=True)
        time.sleep(0.5)
    return failed


def die_with_parent() -> None:
    """A --jobs worker: stop (SIGTERM, so train.py saves last.pth) when the study process dies (Linux)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the prctl
        raise SystemExit(143)
