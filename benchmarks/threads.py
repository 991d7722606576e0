"""What a fixed CPU thread count costs: the study's cell at 1 thread against more, side by side in one run.

The study runs every cell with --threads_per_cell threads (default 1) so that its numbers do not depend on
--jobs (docs/reproducibility.md). With --jobs 1 on a machine with more cores that leaves cores idle; this
prints how much, for the two things a cell spends its time on:
- a SimCLR training step (ResNet-18 CIFAR stem + projection head, two views, NT-Xent, SGD momentum 0.9,
  channels_last) on --batch_size images of --image_size px, as the demo preset's cells train;
- the linear probe's feature pass (backbone forward, no grad) on the same images.
Thread counts are measured interleaved (1, 2, 1, 2, ...) --repeats times, so a change of load on a shared
machine hits each count alike; the table gives the median and the fastest repeat, the CPU seconds each step
used (several threads can use more CPU for less wall time) and the load average before and after.
--deterministic adds the same at each count with deterministic kernels (their cost; on CPU expected small).
The input is random: only speed is measured, offline.

    python benchmarks/threads.py                                  # 1 thread vs every core of this machine
    python benchmarks/threads.py --threads 1 2 --repeats 5 --json threads.json
    python benchmarks/threads.py --device cuda --threads 1 8 --deterministic --batch_size 256
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: models/ and utils/

import torch  # noqa: E402

from models import build_model  # noqa: E402
from utils.cli import ArgumentParser, HelpFormatter, image_size, positive_int, thread_count  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.runtime import resolve_device, run_settings  # noqa: E402
from utils.train.losses import nt_xent_loss  # noqa: E402

TEMPERATURE = 0.5
DEMO_BATCH, DEMO_SIZE = 50, 32  # simclr_train.py --preset demo: batch 50 of the 32 px synthetic set


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--threads", type=thread_count, nargs="+", default=sorted({1, cores}),
                   help="CPU thread counts to compare [1 and every core]%(default).0s")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch_size", type=positive_int, default=DEMO_BATCH, help="images per step (two views each)")
    p.add_argument("--image_size", type=image_size, default=DEMO_SIZE, help="image side in pixels")
    p.add_argument("--steps", type=positive_int, default=2, help="timed training steps per repeat (after one warm-up)")
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds over the thread counts")
    p.add_argument("--deterministic", action="store_true", help="also measure each count with deterministic kernels")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def measure(device: torch.device, batch: int, size: int, steps: int) -> dict:
    """Seconds (wall and CPU) per training step and per feature pass of `batch` images, after a warm-up."""
    torch.manual_seed(0)
    model = build_model({"train_type": "simclr", "stem": "cifar", "proj_hidden_dim": 512, "proj_dim": 128})
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2 * batch, 3, size, size).to(device, memory_format=torch.channels_last)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def step():
        _, z = model(x)
        loss = nt_xent_loss(*z.chunk(2), TEMPERATURE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn, n):
        fn()  # warm-up: kernel selection, allocations
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n

    step_s, step_cpu = timed(step, steps)
    model.eval()
    with torch.no_grad():
        forward_s, _ = timed(lambda: model.backbone(x[:batch]), steps)
    return {"step_s": step_s, "step_cpu_s": step_cpu, "forward_s": forward_s}


def summarise(runs: list[dict], batch: int) -> dict:
    steps = [r["step_s"] for r in runs]
    return {"step_s_median": statistics.median(steps), "step_s_min": min(steps),
            "step_cpu_s_median": statistics.median(r["step_cpu_s"] for r in runs),
            "images_per_s": batch / statistics.median(steps),
            "forward_images_per_s": batch / statistics.median(r["forward_s"] for r in runs), "repeats": steps}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    modes = [(t, det) for t in args.threads for det in ((False, True) if args.deterministic else (False,))]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs: dict[tuple, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for threads, det in modes:
            with run_settings(threads, det):
                runs[(threads, det)].append(measure(device, args.batch_size, args.image_size, args.steps))
            print(f"repeat {rep + 1}/{args.repeats}, {threads} thread(s){', deterministic' if det else ''}: "
                  f"step {runs[(threads, det)][-1]['step_s']:.3f} s", flush=True)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    table = {m: summarise(r, args.batch_size) for m, r in runs.items()}
    best = min(v["step_s_median"] for v in table.values())
    print(f"\n{device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, batch "
          f"{args.batch_size} x 2 views at {args.image_size} px, {args.steps} steps x {args.repeats} repeats; "
          f"load average {load_before:.1f} before, {load_after:.1f} after" if load_before is not None else "")
    print(f"{'threads':>7} {'determ.':>7} {'step s (median)':>15} {'fastest':>8} {'CPU s/step':>10} "
          f"{'images/s':>9} {'probe img/s':>11} {'time vs best':>12}")
    for (threads, det), v in table.items():
        print(f"{threads:>7} {'yes' if det else 'no':>7} {v['step_s_median']:>15.3f} {v['step_s_min']:>8.3f} "
              f"{v['step_cpu_s_median']:>10.3f} {v['images_per_s']:>9.1f} {v['forward_images_per_s']:>11.1f} "
              f"{v['step_s_median'] / best:>11.2f}x")
    result = {"device": str(device), "torch": torch.__version__, "batch_size": args.batch_size,
              "image_size": args.image_size, "steps": args.steps, "load_before": load_before, "load_after": load_after,
              "results": [{"threads": t, "deterministic": d, **v} for (t, d), v in table.items()]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    run_cli(main)
