"""Sweep helpers for simclr_train.py: the grid, per-cell records, results.csv/.md, plots, cost estimate.

A sweep is a grid of cells (data scale x batch size x learning rate x epochs x seed); each cell
is pretrained once and linear-evaluated at one or more of its epochs ("eval epochs"). Every
finished (cell, eval epoch) leaves a record.json in its evaluation folder; results.csv is
rebuilt from those records after each one, atomically, so it always holds exactly one row per
finished (cell, eval epoch). results.md and the plots are drawn from results.csv alone.

Selection uses the probe's validation accuracy only (the mean over seeds); test figures are
reported, never used to choose. Spreads are the sample standard deviation (ddof=1) over seeds.

    python simclr_train.py --report --out_dir sweeps/demo      # redraw results.md and plots from results.csv
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from utils.io import atomic_write, read_csv

GRID_KEYS = ("data_scales", "batch_sizes", "learning_rates", "epochs", "seeds")
RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
PLOT_SCALE, PLOT_HEATMAP = "accuracy_vs_data_scale.png", "heatmap_lr_batch.png"
RECORD = "record.json"  # one per (cell, eval epoch), written after test.main returns
RUNS = "runs"  # out_dir/runs/<cell>/ is the cell's train.py --run_dir

# results.csv columns, in order. `checkpoint` is relative to the sweep's out_dir.
RESULT_FIELDS = [
    "dataset", "data_scale", "batch_size", "learning_rate", "epochs", "eval_epoch", "seed",
    "eval_dataset", "val_split", "probe_epochs", "val_accuracy", "val_loss", "test_accuracy", "test_loss",
    "pretrain_loss", "pretrain_seconds", "images_per_s", "eval_seconds", "device", "checkpoint",
]
INT_FIELDS = {"batch_size", "epochs", "eval_epoch", "seed", "probe_epochs"}
STR_FIELDS = {"dataset", "eval_dataset", "device", "checkpoint"}
CONFIG_KEYS = ("data_scale", "batch_size", "learning_rate", "epochs", "eval_epoch")
STUDY_KEYS = ("dataset", "eval_dataset", "val_split", "probe_epochs")

# Dry-run step timing: the largest batch actually run per measured step. On CPU a ResNet-18
# SimCLR step runs at ~10-25 images/s on 2 cores, so the cost per image is measured on a small
# batch and scaled linearly; on a GPU the cell's own batch size is measured (up to the cap).
MEASURE_CAP = {"cpu": 16, "cuda": 1024}
MEASURE_STEPS = 2  # timed steps, after one untimed warm-up step


@dataclass(frozen=True)
class Cell:
    """One pretraining run of the grid and the epochs at which its checkpoints are evaluated."""

    data_scale: float
    batch_size: int
    learning_rate: float
    epochs: int
    seed: int
    eval_epochs: tuple[int, ...]

    @property
    def name(self) -> str:
        """Folder name under out_dir/runs, e.g. ds0.5_bs256_lr0.3_ep250_seed0."""
        return (f"ds{self.data_scale:g}_bs{self.batch_size}_lr{self.learning_rate:g}"
                f"_ep{self.epochs}_seed{self.seed}")


def _unique(values: Iterable) -> list:
    out: list = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def expand_grid(grid: Mapping[str, Sequence], eval_at: Sequence[int] = ()) -> list[Cell]:
    """All cells of `grid` (keys GRID_KEYS), seeds outermost so a first pass over the grid ends early.

    Each cell is evaluated at the `eval_at` epochs below its own `epochs`, and always at its end.
    """
    missing = [k for k in GRID_KEYS if not grid.get(k)]
    if missing:
        raise ValueError(f"grid needs non-empty {missing}")
    values = {k: _unique(grid[k]) for k in GRID_KEYS}
    cells = []
    for seed, scale, bs, lr, epochs in itertools.product(values["seeds"], values["data_scales"],
                                                         values["batch_sizes"], values["learning_rates"],
                                                         values["epochs"]):
        evals = tuple(sorted({int(e) for e in eval_at if 0 < int(e) < int(epochs)} | {int(epochs)}))
        cells.append(Cell(float(scale), int(bs), float(lr), int(epochs), int(seed), evals))
    return cells


def subset_size(num_train: int, num_classes: int, data_scale: float) -> int:
    """Images in utils.datasets.stratified_subset for a class-balanced split (exact when balanced)."""
    if data_scale >= 1:
        return num_train
    return num_classes * max(1, int(round(data_scale * num_train / num_classes)))


def dataset_sizes(name: str) -> tuple[int, int] | None:
    """(train, test) images of a built-in dataset without reading it; None for folder datasets."""
    from utils import synthetic  # read at call time: tests shrink the synthetic set

    sizes = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "tiny-imagenet": (100_000, 10_000),
             "synthetic": (synthetic.SYNTHETIC_TRAIN, synthetic.SYNTHETIC_TEST)}
    return sizes.get(name)


# ---------------------------------------------------------------------------------------------
# Rows: built from one cell's training history and one test.py report; read back from the CSV
# ---------------------------------------------------------------------------------------------

def make_row(cell: Cell, eval_epoch: int, history: Sequence[Mapping], evaluation: Mapping, study: Mapping,
             device: str, checkpoint: str) -> dict:
    """One results.csv row. `history`: train.py metrics.csv rows (epoch, loss, images_per_s, seconds)."""
    done = [h for h in history if int(h["epoch"]) <= eval_epoch]
    seconds = [float(h["seconds"]) for h in done]
    images = sum(float(h["images_per_s"]) * s for h, s in zip(done, seconds))
    total = sum(seconds)
    val_acc, val_loss = evaluation.get("val_accuracy"), evaluation.get("val_loss")
    return {
        "dataset": study["dataset"], "data_scale": cell.data_scale, "batch_size": cell.batch_size,
        "learning_rate": cell.learning_rate, "epochs": cell.epochs, "eval_epoch": eval_epoch, "seed": cell.seed,
        "eval_dataset": study["eval_dataset"], "val_split": study["val_split"],
        "probe_epochs": study["test_num_epochs"],
        "val_accuracy": None if val_acc is None else round(float(val_acc), 4),
        "val_loss": None if val_loss is None else round(float(val_loss), 6),
        "test_accuracy": round(float(evaluation["test_accuracy"]), 4),
        "test_loss": round(float(evaluation["test_loss"]), 6),
        "pretrain_loss": round(float(done[-1]["loss"]), 6) if done else None,
        "pretrain_seconds": round(total, 2),
        "images_per_s": round(images / total, 2) if total > 0 else None,
        "eval_seconds": round(float(evaluation.get("seconds", {}).get("total", float("nan"))), 2),
        "device": device, "checkpoint": checkpoint,
    }


def _sort_key(row: Mapping) -> tuple:
    return tuple(row[k] for k in ("data_scale", "batch_size", "learning_rate", "epochs", "seed", "eval_epoch"))


def parse_row(raw: Mapping[str, str]) -> dict:
    """Types back from a results.csv row (empty cells become None)."""
    row: dict = {}
    for key in RESULT_FIELDS:
        value = raw.get(key, "")
        if value in ("", None):
            row[key] = None
        elif key in INT_FIELDS:
            row[key] = int(value)
        elif key in STR_FIELDS:
            row[key] = value
        else:
            row[key] = float(value)
    return row


def write_results_csv(path: Path, rows: Sequence[Mapping]) -> bool:
    """Write rows sorted by configuration, atomically; skipped (False) when the file would not change."""
    rows = sorted(rows, key=_sort_key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_if_changed(path, buf.getvalue())


def write_if_changed(path: Path, text: str) -> bool:
    """Atomic write unless `path` already holds exactly `text` (a rerun then changes nothing)."""
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write(path, lambda f: f.write(text), mode="w")
    return True


def read_results(path: Path) -> list[dict]:
    """Typed rows of a results.csv."""
    return [parse_row(r) for r in read_csv(path)]


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds, and selection by validation accuracy
# ---------------------------------------------------------------------------------------------

def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the non-missing values; std None for fewer than two."""
    vals = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if vals.size == 0:
        return None, None
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else None


def aggregate(rows: Sequence[Mapping]) -> list[dict]:
    """One entry per configuration (CONFIG_KEYS + STUDY_KEYS) with mean/std over its seeds."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in STUDY_KEYS + CONFIG_KEYS), []).append(row)
    out = []
    for key, members in groups.items():
        entry = dict(zip(STUDY_KEYS + CONFIG_KEYS, key))
        entry["seeds"] = sorted(int(m["seed"]) for m in members)
        entry["n_seeds"] = len(members)
        for metric in ("val_accuracy", "test_accuracy", "test_loss", "pretrain_seconds", "images_per_s"):
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std([m.get(metric) for m in members])
        out.append(entry)
    return sorted(out, key=selection_order)


def selection_order(entry: Mapping) -> tuple:
    """Sort key: highest mean validation accuracy first, then the cheaper configuration. No test figure."""
    val = entry.get("val_accuracy_mean")
    config = tuple(entry[k] for k in CONFIG_KEYS)
    return (val is None, -(val or 0.0), config)


def choose(entries: Sequence[Mapping]) -> Mapping | None:
    """The configuration with the best mean validation accuracy (None without a validation split)."""
    ranked = [e for e in sorted(entries, key=selection_order) if e.get("val_accuracy_mean") is not None]
    return ranked[0] if ranked else None


# ---------------------------------------------------------------------------------------------
# results.md
# ---------------------------------------------------------------------------------------------

def _pm(mean: float | None, std: float | None, fmt: str) -> str:
    if mean is None:
        return "–"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if std is not None else "")


def config_text(e: Mapping) -> str:
    """'data scale 0.5, batch 256, lr 0.3, 250 epochs, checkpoint of epoch 250'."""
    return (f"data scale {e['data_scale']:g}, batch {e['batch_size']}, lr {e['learning_rate']:g}, "
            f"{e['epochs']} epochs, checkpoint of epoch {e['eval_epoch']}")


def _table(entries: Sequence[Mapping], chosen: Mapping | None) -> list[str]:
    lines = ["| | data scale | batch | lr | epochs | eval epoch | seeds | val acc (%) | test acc (%) | test loss "
             "| pretrain (s) | images/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        mark = "★" if e is chosen else ""
        lines.append(
            f"| {mark} | {e['data_scale']:g} | {e['batch_size']} | {e['learning_rate']:g} | {e['epochs']} "
            f"| {e['eval_epoch']} | {e['n_seeds']} | {_pm(e['val_accuracy_mean'], e['val_accuracy_std'], '.2f')} "
            f"| {_pm(e['test_accuracy_mean'], e['test_accuracy_std'], '.2f')} "
            f"| {_pm(e['test_loss_mean'], e['test_loss_std'], '.3f')} "
            f"| {_pm(e['pretrain_seconds_mean'], None, '.1f')} | {_pm(e['images_per_s_mean'], None, '.1f')} |")
    return lines


def results_markdown(rows: Sequence[Mapping]) -> str:
    """results.md from typed results.csv rows alone (no clock, no paths: reruns give the same bytes)."""
    entries = aggregate(rows)
    chosen = choose(entries)
    study = {k: sorted({str(r[k]) for r in rows}) for k in STUDY_KEYS}
    seeds = sorted({int(r["seed"]) for r in rows})
    out = [f"# SimCLR sweep: pretraining on {', '.join(study['dataset'])}, "
           f"linear probe on {', '.join(study['eval_dataset'])}", ""]
    out.append(f"{len(rows)} rows (cell x eval epoch) from {RESULTS_CSV}; {len(entries)} configurations; "
               f"seeds {', '.join(map(str, seeds))}; probe {', '.join(study['probe_epochs'])} epochs, "
               f"validation split {', '.join(study['val_split'])} of the probe's train split.")
    out.append("")
    out.append("Selection uses the linear probe's validation accuracy (mean over seeds) only; test accuracy "
               "and loss are reported, never used to choose. Values are mean ± sample std (ddof=1) over seeds "
               "where there are several. `pretrain (s)` is the pretraining time up to the eval epoch.")
    out.append("")
    if chosen is None:
        out += ["**Chosen:** none — there is no validation accuracy (run with --val_split > 0 to select).", ""]
    else:
        out += [f"**Chosen (★):** {config_text(chosen)} — val "
                f"{_pm(chosen['val_accuracy_mean'], chosen['val_accuracy_std'], '.2f')} %, test "
                f"{_pm(chosen['test_accuracy_mean'], chosen['test_accuracy_std'], '.2f')} % "
                f"({chosen['n_seeds']} seed{'s' if chosen['n_seeds'] > 1 else ''}).", ""]
    out += ["## All configurations, by validation accuracy", ""] + _table(entries, chosen) + [""]
    scales = sorted({e["data_scale"] for e in entries})
    if len(scales) > 1 and chosen is not None:
        best = [choose([e for e in entries if e["data_scale"] == s]) for s in scales]
        out += ["## Best configuration per data scale (by validation accuracy)", ""]
        out += _table([b for b in best if b is not None], chosen) + [""]
    out += [f"Plots: [{PLOT_SCALE}]({PLOT_SCALE}), [{PLOT_HEATMAP}]({PLOT_HEATMAP}). "
            "Redraw with `python simclr_train.py --report --out_dir <this folder>`.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_accuracy_vs_scale(entries: Sequence[Mapping], path: Path) -> Path:
    """Mean test accuracy against data scale, one line per (batch, lr[, epochs, eval epoch]); std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = [k for k in ("batch_size", "learning_rate", "epochs", "eval_epoch")
               if len({e[k] for e in entries}) > 1] or ["batch_size", "learning_rate"]
    names = {"batch_size": "bs", "learning_rate": "lr", "epochs": "ep", "eval_epoch": "@"}
    lines: dict[tuple, list[Mapping]] = {}
    for e in entries:
        lines.setdefault(tuple(e[k] for k in varying), []).append(e)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sorted(lines):
        pts = sorted((e for e in lines[key] if e["test_accuracy_mean"] is not None), key=lambda e: e["data_scale"])
        if not pts:
            continue
        label = " ".join(f"{names[k]} {v:g}" if isinstance(v, float) else f"{names[k]} {v}" for k, v in zip(varying, key))
        ax.errorbar([e["data_scale"] for e in pts], [e["test_accuracy_mean"] for e in pts],
                    yerr=[e["test_accuracy_std"] or 0.0 for e in pts], marker="o", capsize=3, label=label)
    scales = sorted({e["data_scale"] for e in entries})
    if len(scales) > 1 and scales[-1] / scales[0] >= 4:
        ax.set_xscale("log")
    ax.set_xticks(scales)
    ax.set_xticklabels([f"{s:g}" for s in scales])
    ax.minorticks_off()
    ax.set_xlabel("data scale (fraction of the pretraining set)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Linear probe test accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


def plot_heatmaps(entries: Sequence[Mapping], path: Path) -> Path:
    """One lr x batch-size panel per data scale, coloured by mean val accuracy (test if none), both printed.

    Where a (scale, batch, lr) has several epochs / eval epochs, the one validation would pick is shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_val = any(e["val_accuracy_mean"] is not None for e in entries)
    colour_key = "val_accuracy_mean" if use_val else "test_accuracy_mean"
    scales = sorted({e["data_scale"] for e in entries})
    lrs = sorted({e["learning_rate"] for e in entries})
    bss = sorted({e["batch_size"] for e in entries})
    values = [e[colour_key] for e in entries if e[colour_key] is not None]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    fig, axes = plt.subplots(1, len(scales), figsize=(1.8 + 1.5 * len(bss) * len(scales), 1.4 + 0.8 * len(lrs)),
                             squeeze=False, layout="constrained")
    image = None
    for k, (ax, scale) in enumerate(zip(axes[0], scales)):
        grid = np.full((len(lrs), len(bss)), np.nan)
        for i, lr in enumerate(lrs):
            for j, bs in enumerate(bss):
                cell = [e for e in entries if (e["data_scale"], e["learning_rate"], e["batch_size"]) == (scale, lr, bs)]
                best = (choose(cell) if use_val else None) or (cell[0] if cell else None)
                if best is None or best[colour_key] is None:
                    continue
                grid[i, j] = best[colour_key]
                text = (f"val {best['val_accuracy_mean']:.1f}\n" if best["val_accuracy_mean"] is not None else "")
                text += f"test {best['test_accuracy_mean']:.1f}"
                dark = (best[colour_key] - vmin) / (vmax - vmin) < 0.5  # viridis is dark at the low end
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(bss)), [str(b) for b in bss])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs] if k == 0 else [])
        ax.set_xlabel("batch size")
        if k == 0:
            ax.set_ylabel("learning rate")
        ax.set_title(f"data scale {scale:g}", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label=("val" if use_val else "test") + " accuracy (%)")
    fig.suptitle(f"Linear probe accuracy, coloured by {'validation' if use_val else 'test'} accuracy", fontsize=10)
    _save(fig, Path(path))
    return Path(path)


def write_report(out_dir: Path, rows: Sequence[Mapping], plots: bool = True) -> list[Path]:
    """results.md (only rewritten when it changes) and, if `plots`, both figures; returns what was written."""
    out_dir = Path(out_dir)
    written = []
    if write_if_changed(out_dir / RESULTS_MD, results_markdown(rows)):
        written.append(out_dir / RESULTS_MD)
    if plots and rows:
        entries = aggregate(rows)
        written.append(plot_accuracy_vs_scale(entries, out_dir / PLOT_SCALE))
        written.append(plot_heatmaps(entries, out_dir / PLOT_HEATMAP))
    return written


# ---------------------------------------------------------------------------------------------
# Dry run: measured step time -> cost estimate
# ---------------------------------------------------------------------------------------------

def measure_step_seconds(batch_size: int, image_size: int, device, cap: int | None = None) -> dict:
    """Seconds per image of a SimCLR step (two views, forward + backward + SGD) and of a feature forward.

    Runs one warm-up and MEASURE_STEPS timed steps of ResNet-18 + projection head on random
    (2B, 3, S, S) input, B = min(batch_size, cap); scaled linearly per image. Returns
    {"batch": B, "train_s_per_image": float, "forward_s_per_image": float}.
    """
    import torch

    from models import build_model
    from utils.losses import nt_xent_loss

    device = torch.device(device)
    b = max(1, min(batch_size, cap if cap is not None else MEASURE_CAP.get(device.type, 1024)))
    model = build_model({"train_type": "simclr", "stem": "cifar" if image_size <= 64 else "imagenet",
                         "proj_hidden_dim": 512, "proj_dim": 128}).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * b, 3, image_size, image_size, generator=g).to(device, memory_format=torch.channels_last)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step():
        _, z = model(x)
        z1, z2 = z.chunk(2)
        loss = nt_xent_loss(z1, z2, 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(MEASURE_STEPS):
        step()
    sync()
    train_s = (time.perf_counter() - t0) / MEASURE_STEPS / b
    model.eval()
    with torch.no_grad():
        model.backbone(x)
        sync()
        t0 = time.perf_counter()
        model.backbone(x)
        sync()
        forward_s = (time.perf_counter() - t0) / (2 * b)
    return {"batch": b, "train_s_per_image": train_s, "forward_s_per_image": forward_s}


def format_seconds(seconds: float | None) -> str:
    """'2h 05m', '7m 12s', '45s'."""
    if seconds is None or math.isnan(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
