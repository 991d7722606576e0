"""The SimCLR data-scale and hyperparameter study: one resumable command, a results table and plots.

    python simclr_train.py --preset demo                  # quick start: offline, CPU, a few minutes
    python simclr_train.py --data_scales 0.1 0.25 0.5 1.0 --batch_sizes 256 512 --learning_rates 0.3 0.6 \\
        --epochs 250 --eval_at 50 100 --seeds 0 1 2 --out_dir sweeps/cifar10   # the original's study
    python simclr_train.py --dry_run ...                  # list the cells and estimate their cost, train nothing
    python simclr_train.py --report --out_dir sweeps/demo # redraw results.md and the plots from results.csv

Each cell of the grid (data scale x batch size x learning rate x epochs x seed; GRID below, or
the flags) is pretrained by train.main (SimCLR on the seeded, nested, class-stratified subset)
into OUT/runs/<cell>/ and linear-evaluated by test.main into OUT/runs/<cell>/eval-<dataset>-epochNNNN/,
at its last epoch and at every --eval_at epoch below it (checkpoints the same run keeps via
train.py --save_at, so choosing the epoch needs no retraining). This script has no loop of its own.

Resume: rerun the same command. Finished (cell, eval epoch) pairs are read back from their
record.json and skipped; an interrupted pretraining resumes from its last.pth; results.csv is
rewritten atomically after every finished evaluation, so Ctrl-C leaves it consistent. The study
settings (datasets, probe epochs, --val_split, passthrough args) are kept in OUT/sweep.json and
a rerun with other settings is refused; the grid itself may grow.

Selection: by the probe's validation accuracy (--val_split of the probe's train split), mean over
seeds; the test split is reported, never used to choose.

Outputs in OUT: results.csv (one row per cell and eval epoch; checkpoint paths relative to OUT),
results.md (sorted by validation accuracy, the chosen configuration marked, mean ± std over
seeds), accuracy_vs_data_scale.png, heatmap_lr_batch.png, sweep.json.

Passthrough: --train_args "..." and --test_args "..." are split like a shell line and appended
to every train.py / test.py call, e.g. --train_args "--temperature 0.2 --warmup_epochs 10".
Flags the sweep sets itself (dataset, scale, batch, lr, epochs, seed, run_dir, ...) are refused there.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import test
import train
from utils import sweep
from utils.cli import HelpFormatter, common_parser, positive_int
from utils.constants import DATASET_CHOICES, DATASETS, canonical_dataset
from utils.errors import NonFiniteLossError, UserError, run_cli
from utils.io import atomic_write_json, read_csv
from utils.runtime import resolve_device

# The grid: edit it here, or override any line with the flag of the same name.
# The original study swept 10-100 % of CIFAR-10, batch 256/512, lr 0.3/0.6, up to 250 epochs.
GRID = {
    "data_scales": [0.1, 0.25, 0.5, 1.0],
    "batch_sizes": [256, 512],
    "learning_rates": [0.3, 0.6],
    "epochs": [250],
    "seeds": [0],
}

# --preset demo: the README's quick start: 2 scales x 2 lrs of `synthetic` (100 / 200 images),
# 2 epochs, a 10-epoch probe. Measured on 2 CPU cores shared with other jobs (load ~6): 8 min 08 s
# wall, 4 min 54 s CPU; pretraining 4-6 images/s, each probe (feature pass over 2,500 images) 52-65 s.
PRESETS = {
    "demo": {"dataset": "synthetic", "eval_dataset": "synthetic", "data_scales": [0.05, 0.1], "batch_sizes": [50],
             "learning_rates": [0.3, 0.6], "epochs": [2], "seeds": [0], "test_num_epochs": 10,
             "out_dir": "sweeps/demo"},
}
FAILED = "failed.json"  # a cell whose pretraining diverged; skipped on rerun until deleted
TRAIN_RECORD = "sweep_train.json"  # the device a cell was pretrained on


def _glue_passthrough(argv: list[str]) -> list[str]:
    """'--train_args --flag' -> '--train_args=--flag': argparse would read a lone '--flag' value as an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--train_args", "--test_args") and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = _glue_passthrough(list(sys.argv[1:] if argv is None else argv))
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS))
    preset = pre.parse_known_args(argv)[0].preset
    # conflict_handler="resolve": --seed of the shared parent becomes an alias of --seeds here.
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, parents=[common_parser()],
                                conflict_handler="resolve")
    grid = p.add_argument_group("grid (each flag replaces that line of GRID; a preset replaces the defaults)")
    shown = lambda key: f"[GRID: {' '.join(map(str, GRID[key]))}]%(default).0s"  # noqa: E731
    grid.add_argument("--data_scales", type=float, nargs="+", help="fractions of the pretraining set " + shown("data_scales"))
    grid.add_argument("--batch_sizes", type=positive_int, nargs="+", help="SimCLR batch sizes " + shown("batch_sizes"))
    grid.add_argument("--learning_rates", type=float, nargs="+", help="peak SimCLR lrs " + shown("learning_rates"))
    grid.add_argument("--epochs", type=positive_int, nargs="+", help="pretraining epochs " + shown("epochs"))
    grid.add_argument("--seeds", "--seed", type=int, nargs="+", help="seeds (subset, init, order, probe split) " + shown("seeds"))
    s = p.add_argument_group("study")
    s.add_argument("--dataset", default="cifar10", choices=DATASET_CHOICES, help="pretraining data")
    s.add_argument("--eval_dataset", default="cifar100", choices=test.EVAL_DATASETS, help="linear-probe data")
    s.add_argument("--test_num_epochs", type=positive_int, default=100, help="linear-probe epochs")
    s.add_argument("--val_split", type=float, default=0.1,
                   help="fraction of the probe's train split held out for selection (0: nothing is chosen)")
    s.add_argument("--eval_at", type=positive_int, nargs="*", default=[],
                   help="also evaluate the checkpoints of these epochs (each cell's last epoch always is)")
    s.add_argument("--train_args", default="", help="extra train.py flags for every cell, one quoted string")
    s.add_argument("--test_args", default="", help="extra test.py flags for every evaluation, one quoted string")
    o = p.add_argument_group("run")
    o.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a ready-made study (demo: the quick start)")
    o.add_argument("--out_dir", default=None, help="sweep folder [sweeps/simclr-<dataset>-<eval_dataset>]%(default).0s")
    o.add_argument("--dry_run", action="store_true", help="print the cells and a measured cost estimate; train nothing")
    o.add_argument("--report", action="store_true", help="only redraw results.md and the plots from OUT/results.csv")
    o.add_argument("--quiet", action="store_true", help="pass --quiet to train.py and test.py")
    if preset:
        p.set_defaults(**PRESETS[preset])
    args = p.parse_args(argv)
    for key in sweep.GRID_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, list(GRID[key]))
    args.dataset, args.eval_dataset = canonical_dataset(args.dataset), canonical_dataset(args.eval_dataset)
    args.out_dir = Path(args.out_dir or f"sweeps/simclr-{args.dataset}-{args.eval_dataset}")
    if any(not 0 < v <= 1 for v in args.data_scales):
        raise UserError(f"--data_scales must be in (0, 1], got {args.data_scales}")
    if any(v <= 0 for v in args.learning_rates):
        raise UserError(f"--learning_rates must be > 0, got {args.learning_rates}")
    if not 0 <= args.val_split < 1:
        raise UserError(f"--val_split must be in [0, 1), got {args.val_split}")
    return args


def study_settings(args: argparse.Namespace) -> dict:
    """What every row of one out_dir must share (kept in sweep.json)."""
    return {"dataset": args.dataset, "eval_dataset": args.eval_dataset, "test_num_epochs": args.test_num_epochs,
            "val_split": args.val_split, "train_args": shlex.split(args.train_args),
            "test_args": shlex.split(args.test_args)}


def check_study(out_dir: Path, settings: dict, write: bool) -> None:
    path = out_dir / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        if diffs:
            raise UserError(f"{out_dir} holds a study made with other settings ({'; '.join(diffs)}); "
                            "use the same flags or another --out_dir")
    elif write:
        atomic_write_json(path, settings)


def train_argv(args: argparse.Namespace, cell: sweep.Cell, run_dir: Path) -> list[str]:
    keep = [str(e) for e in cell.eval_epochs if e < cell.epochs]
    return (["--train_type", "simclr", "--dataset", args.dataset, "--data_scale", repr(cell.data_scale),
             "--batch_size", str(cell.batch_size), "--learning_rate", repr(cell.learning_rate),
             "--epochs", str(cell.epochs), "--seed", str(cell.seed), "--run_dir", str(run_dir),
             "--device", args.device, "--data_dir", args.data_dir, "--workers", str(args.workers)]
            + (["--save_at", *keep] if keep else []) + (["--quiet"] if args.quiet else [])
            + shlex.split(args.train_args))


def test_argv(args: argparse.Namespace, cell: sweep.Cell, ckpt: Path, eval_dir: Path) -> list[str]:
    return (["--model_path", str(ckpt), "--dataset", args.eval_dataset, "--test_num_epochs", str(args.test_num_epochs),
             "--val_split", repr(args.val_split), "--run_dir", str(eval_dir), "--seed", str(cell.seed),
             "--device", args.device, "--data_dir", args.data_dir, "--workers", str(args.workers)]
            + (["--quiet"] if args.quiet else []) + shlex.split(args.test_args))


def check_passthrough(args: argparse.Namespace, cell: sweep.Cell, out_dir: Path) -> None:
    """Parse the real argv of one cell with train.py's and test.py's parsers; refuse overridden sweep flags."""
    run_dir, ckpt = out_dir / sweep.RUNS / cell.name, out_dir / "x.pth"
    expected = {
        "--train_args": (train.parse_args, train_argv(args, cell, run_dir), {
            "train_type": "simclr", "dataset": args.dataset, "data_scale": cell.data_scale,
            "batch_size": cell.batch_size, "learning_rate": cell.learning_rate, "epochs": cell.epochs,
            "seed": cell.seed, "run_dir": str(run_dir), "overwrite": False,
            "save_at": [e for e in cell.eval_epochs if e < cell.epochs]}),
        "--test_args": (test.parse_args, test_argv(args, cell, ckpt, run_dir / "eval"), {
            "model_path": str(ckpt), "dataset": args.eval_dataset, "test_num_epochs": args.test_num_epochs,
            "val_split": args.val_split, "run_dir": str(run_dir / "eval"), "seed": cell.seed, "finetune": False}),
    }
    for flag, (parse, argv, want) in expected.items():
        try:
            parsed = vars(parse(argv))
        except SystemExit:
            raise UserError(f"{flag} {getattr(args, flag[2:])!r} was refused by its script (see the message above)") from None
        clash = [k for k, v in want.items() if parsed.get(k) != v]
        if clash:
            raise UserError(f"{flag} must not set {', '.join(clash)}: the sweep sets those itself")


def describe_device(name: str) -> str:
    import torch

    device = resolve_device(name)
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def eval_dir(run_dir: Path, args: argparse.Namespace, epoch: int) -> Path:
    return run_dir / f"eval-{args.eval_dataset}-epoch{epoch:04d}"


def collect_rows(out_dir: Path) -> list[dict]:
    """Every finished (cell, eval epoch) of this out_dir, from its record.json."""
    return [json.loads(p.read_text(encoding="utf-8"))["row"]
            for p in sorted((out_dir / sweep.RUNS).glob(f"*/eval-*/{sweep.RECORD}"))]


def run_cell(args: argparse.Namespace, cell: sweep.Cell, out_dir: Path, tag: str) -> int:
    """Pretrain (or resume, or skip) one cell, then evaluate its missing eval epochs; returns rows added."""
    run_dir = out_dir / sweep.RUNS / cell.name
    todo = [e for e in cell.eval_epochs if not (eval_dir(run_dir, args, e) / sweep.RECORD).exists()]
    if not todo:
        print(f"{tag} {cell.name}: done, read back from its records", flush=True)
        return 0
    if (run_dir / FAILED).exists():
        print(f"{tag} {cell.name}: skipped, its pretraining diverged ({run_dir / FAILED}; delete it to retry)", flush=True)
        return 0
    if not (run_dir / "final.pth").exists():
        resuming = (run_dir / "last.pth").exists()
        print(f"{tag} {cell.name}: pretraining{' (resuming from last.pth)' if resuming else ''}", flush=True)
        argv = train_argv(args, cell, run_dir)
        try:
            train.main(argv)
        except NonFiniteLossError as exc:
            atomic_write_json(run_dir / FAILED, {"error": str(exc), "train_argv": argv})
            print(f"{tag} {cell.name}: pretraining diverged, cell skipped: {exc}", flush=True)
            return 0
        atomic_write_json(run_dir / TRAIN_RECORD, {"device": describe_device(args.device), "train_argv": argv})
    history = read_csv(run_dir / "metrics.csv")
    record = run_dir / TRAIN_RECORD
    device = json.loads(record.read_text())["device"] if record.exists() else describe_device(args.device)
    added = 0
    for epoch in todo:
        ckpt = run_dir / ("final.pth" if epoch == cell.epochs else f"epoch_{epoch:04d}.pth")
        if not ckpt.exists():
            print(f"{tag} {cell.name}: no {ckpt.name} (pretrained without --eval_at {epoch}); not evaluated", flush=True)
            continue
        print(f"{tag} {cell.name}: linear probe on {args.eval_dataset}, checkpoint of epoch {epoch}", flush=True)
        edir = eval_dir(run_dir, args, epoch)
        argv = test_argv(args, cell, ckpt, edir)
        evaluation = test.main(argv)
        row = sweep.make_row(cell, epoch, history, evaluation, study_settings(args), device,
                             ckpt.relative_to(out_dir).as_posix())
        atomic_write_json(edir / sweep.RECORD, {"row": row, "test_argv": argv})
        sweep.write_results_csv(out_dir / sweep.RESULTS_CSV, collect_rows(out_dir))  # after every row
        sweep.write_report(out_dir, sweep.read_results(out_dir / sweep.RESULTS_CSV), plots=False)
        added += 1
    return added


def dry_run(args: argparse.Namespace, cells: list[sweep.Cell], out_dir: Path) -> float | None:
    """Print each cell's status and estimated cost from a measured step time; returns the total seconds."""
    device = resolve_device(args.device)
    image_size = DATASETS[args.dataset].image_size or 64
    pre, post = sweep.dataset_sizes(args.dataset), sweep.dataset_sizes(args.eval_dataset)
    cap = sweep.MEASURE_CAP.get(device.type, max(c.batch_size for c in cells))
    measured = {b: sweep.measure_step_seconds(b, image_size, device, cap)
                for b in sorted({min(c.batch_size, cap) for c in cells})}
    timings = {c.batch_size: measured[min(c.batch_size, cap)] for c in cells}
    for t in measured.values():
        print(f"measured on {device}: SimCLR step {t['train_s_per_image'] * t['batch']:.3f} s for {t['batch']} images "
              f"(two views) = {1 / t['train_s_per_image']:.1f} images/s; feature pass "
              f"{1 / t['forward_s_per_image']:.1f} images/s", flush=True)
    total, known = 0.0, True
    print(f"{'#':>3}  {'cell':<36} {'eval epochs':<14} {'status':<22} {'images':>8} {'estimate':>9}")
    for i, cell in enumerate(cells, 1):
        run_dir = out_dir / sweep.RUNS / cell.name
        todo = [e for e in cell.eval_epochs if not (eval_dir(run_dir, args, e) / sweep.RECORD).exists()]
        done_epochs = len(read_csv(run_dir / "metrics.csv")) if (run_dir / "metrics.csv").exists() else 0
        if (run_dir / "final.pth").exists():
            done_epochs = cell.epochs
        status = ("done" if not todo else "diverged" if (run_dir / FAILED).exists()
                  else "evaluate" if done_epochs == cell.epochs else f"resume after epoch {done_epochs}"
                  if done_epochs else "new")
        t = timings[cell.batch_size]
        n = sweep.subset_size(pre[0], DATASETS[args.dataset].num_classes, cell.data_scale) if pre else None
        seconds = None
        if n is not None and post is not None and status not in ("done", "diverged"):
            per_epoch = (n // cell.batch_size) * cell.batch_size
            seconds = ((cell.epochs - done_epochs) * per_epoch * t["train_s_per_image"]
                       + len(todo) * sum(post) * t["forward_s_per_image"])
        elif status in ("done", "diverged"):
            seconds = 0.0
        known = known and seconds is not None
        total += seconds or 0.0
        print(f"{i:>3}  {cell.name:<36} {','.join(map(str, cell.eval_epochs)):<14} {status:<22} "
              f"{n if n is not None else '?':>8} {sweep.format_seconds(seconds):>9}")
    print(f"total estimate: {sweep.format_seconds(total) if known else 'unknown (dataset size unknown)'} for "
          f"{len(cells)} cells on {device} (model steps and probe feature passes; augmentation, data loading and "
          f"probe head training not included)", flush=True)
    return total if known else None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out_dir = args.out_dir
    csv_path = out_dir / sweep.RESULTS_CSV
    if args.report:
        if not csv_path.exists():
            raise UserError(f"--report: no {csv_path}; run the sweep first")
        rows = sweep.read_results(csv_path)
        for path in sweep.write_report(out_dir, rows, plots=True) or [out_dir / sweep.RESULTS_MD]:
            print(f"wrote {path}")
        return {"out_dir": str(out_dir), "rows": rows, "chosen": sweep.choose(sweep.aggregate(rows))}

    cells = sweep.expand_grid({k: getattr(args, k) for k in sweep.GRID_KEYS}, args.eval_at)
    sizes = sweep.dataset_sizes(args.dataset)
    for cell in cells:
        n = sweep.subset_size(sizes[0], DATASETS[args.dataset].num_classes, cell.data_scale) if sizes else None
        if n is not None and cell.batch_size > n:
            raise UserError(f"batch size {cell.batch_size} is larger than the {n} images of {args.dataset} at data "
                            f"scale {cell.data_scale:g}; drop it from --batch_sizes or --data_scales")
    check_passthrough(args, cells[0], out_dir)
    check_study(out_dir, study_settings(args), write=not args.dry_run)
    print(f"{len(cells)} cells: data scales {args.data_scales}, batch sizes {args.batch_sizes}, lrs "
          f"{args.learning_rates}, epochs {args.epochs}, seeds {args.seeds}, eval at {args.eval_at or 'the end'}; "
          f"{args.dataset} -> linear probe on {args.eval_dataset}; out_dir {out_dir}", flush=True)
    if args.dry_run:
        return {"out_dir": str(out_dir), "cells": cells, "estimate_s": dry_run(args, cells, out_dir)}

    added = sum(run_cell(args, cell, out_dir, f"[{i}/{len(cells)}]") for i, cell in enumerate(cells, 1))
    sweep.write_results_csv(csv_path, collect_rows(out_dir))
    rows = sweep.read_results(csv_path) if csv_path.exists() else []
    plots_missing = not all((out_dir / name).exists() for name in (sweep.PLOT_SCALE, sweep.PLOT_HEATMAP))
    sweep.write_report(out_dir, rows, plots=bool(added) or plots_missing)
    chosen = sweep.choose(sweep.aggregate(rows))
    print(f"{len(rows)} rows in {csv_path} ({added} new); table in {out_dir / sweep.RESULTS_MD}", flush=True)
    if chosen is not None:
        print(f"chosen by validation accuracy: {sweep.config_text(chosen)}: val {chosen['val_accuracy_mean']:.2f} %, "
              f"test {chosen['test_accuracy_mean']:.2f} %", flush=True)
    return {"out_dir": str(out_dir), "rows": rows, "chosen": chosen, "cells": cells, "added": added}


def cli(argv: list[str] | None = None) -> None:
    """Command-line entry: an interrupted pretraining (last.pth saved) exits 128 + signum, like train.py."""
    try:
        main(argv)
    except train.Interrupted as exc:
        print(f"interrupted: {exc}\nsweep: results.csv holds every finished evaluation; rerun the same command to "
              "resume the sweep", file=sys.stderr, flush=True)
        raise SystemExit(128 + getattr(exc, "signum", 2)) from None


if __name__ == "__main__":
    run_cli(cli)
