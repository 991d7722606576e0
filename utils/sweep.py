"""Sweep helpers for simclr_train.py: the grid, per-cell records, results.csv/.md, plots, cost estimate.

A sweep is a grid of cells (data scale x batch size x learning rate x epochs x seed); each cell
is pretrained once and linear-evaluated at one or more of its epochs ("eval epochs"). Every
finished (cell, eval epoch) leaves a record.json in its evaluation folder; results.csv is
rebuilt from those records after each one, atomically, so it always holds exactly one row per
finished (cell, eval epoch). results.md and the plots are drawn from results.csv alone.

Cells are of four kinds: `simclr` (the grid), and the baselines `supervised` (supervised
pretraining on the same seeded subset at each data scale), `random` (the backbone at init) and
`imagenet` (torchvision's ImageNet weights), all probed the same way. A cell's compute budget is
`epochs` (its --epochs over its own subset) or `steps` (the steps that --epochs take at data
scale 1.0, whatever its data scale: equal compute across scales for one batch size).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from utils.io import atomic_write
from utils.stats import RULE_TEXT, compare, describe

GRID_KEYS = ("data_scales", "batch_sizes", "learning_rates", "epochs", "seeds")
RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
PLOT_SCALE, PLOT_HEATMAP = "accuracy_vs_data_scale.png", "heatmap_lr_batch.png"
PLOT_LABELS = "accuracy_vs_label_fraction.png"
PLOT_NEIGHBOURS = "neighbours.png"  # test.py --knn's pictures of one backbone per kind, side by side
PLOT_SCRATCH = "scratch_training.png"  # the scratch cells' training loss per epoch: did the baseline converge?
RECORD = "record.json"  # one per (cell, eval epoch), written after test.main returns
RUNS = "runs"  # out_dir/runs/<cell>/ is the cell's train.py --run_dir

# results.csv columns, in order. `checkpoint` is relative to the sweep's out_dir.
# kind: simclr | supervised | random | imagenet; budget: epochs | steps (empty in older files: simclr,
# epochs). epochs / eval_epoch count epochs at data scale 1.0 under the steps budget; train_epochs is
# the epoch of the evaluated checkpoint in the cell's own run and steps its cumulative training steps.
# recipe: the --recipe of the study (utils/recipes.py; empty in older files). label_fraction: the share of
# the probe's train labels (test.py --label_fraction; older files without it read as 1.0). threads: the intra-op
# CPU threads the cell's pretraining ran with (its config.json; else its evaluation's); deterministic: 1 when the
# cell ran with --deterministic (both empty in older files; docs/reproducibility.md). aug_test_acc / aug_test_loss:
# the probe scored on augmented test views (test.py --eval_views); knn10_acc / knn200_acc: test.py --knn;
# contrastive_acc: the pretraining's last epoch (train.py metrics.csv); aug_views: the augmented test views'
# specification (views_text); each empty where not measured.
RESULT_FIELDS = [
    "dataset", "data_scale", "batch_size", "learning_rate", "epochs", "eval_epoch", "seed",
    "eval_dataset", "val_split", "probe_epochs", "val_accuracy", "val_loss", "test_accuracy", "test_loss",
    "pretrain_loss", "pretrain_seconds", "images_per_s", "eval_seconds", "device", "checkpoint",
    "kind", "budget", "steps", "train_epochs", "recipe", "label_fraction", "threads", "deterministic",
    "aug_test_acc", "aug_test_loss", "knn10_acc", "knn200_acc", "contrastive_acc", "aug_views",
    "labels_used", "cv_accuracy",
]
INT_FIELDS = {"batch_size", "epochs", "eval_epoch", "seed", "probe_epochs", "steps", "train_epochs", "threads",
              "deterministic", "labels_used"}
STR_FIELDS = {"dataset", "eval_dataset", "device", "checkpoint", "kind", "budget", "recipe", "aug_views"}
REQUIRED_FIELDS = ("dataset", "eval_epoch", "seed", "eval_dataset", "test_accuracy", "test_loss")
CONFIG_KEYS = ("data_scale", "batch_size", "learning_rate", "epochs", "eval_epoch", "label_fraction")
STUDY_KEYS = ("dataset", "eval_dataset", "val_split", "probe_epochs", "recipe")
# The self-supervised arms (simclr_train.py --methods; utils.methods.SELF_SUPERVISED, checked in tests/test_sweep.py)
METHOD_KINDS = ("simclr", "byol", "mocov2", "simsiam", "barlow_twins", "vicreg")
BASELINES = ("supervised", "random", "imagenet", "scratch")
KINDS = METHOD_KINDS + BASELINES
BUDGETS = ("epochs", "steps")
KIND_LABELS = {"simclr": "SimCLR", "byol": "BYOL", "mocov2": "MoCo v2", "simsiam": "SimSiam",
               "barlow_twins": "Barlow Twins", "vicreg": "VICReg", "supervised": "supervised", "random": "random init",
               "imagenet": "ImageNet weights", "scratch": "supervised from scratch on the labels"}
COLOURS = {"simclr": "tab:blue", "supervised": "tab:orange", "random": "tab:gray", "imagenet": "tab:green",
           "scratch": "tab:red", "byol": "tab:purple", "mocov2": "tab:brown", "simsiam": "tab:pink",
           "barlow_twins": "tab:olive", "vicreg": "tab:cyan"}


def fraction_of(row: Mapping) -> float:
    return 1.0 if row.get("label_fraction") is None else float(row["label_fraction"])


def kind_of(row: Mapping) -> str:
    return row.get("kind") or "simclr"


def budget_of(row: Mapping) -> str:
    return row.get("budget") or "epochs"

# Dry-run step timing: the largest batch actually run per measured step, scaled linearly per image
# above it; a step of 64 pairs at 16 px takes about a second on one CPU core, so on CPU the cell's own
# batch is measured up to 64, on a GPU up to 1024.
MEASURE_CAP = {"cpu": 64, "cuda": 1024}
MEASURE_STEPS = 2  # timed steps, after one untimed warm-up step


@dataclass(frozen=True)
class Cell:
    """One pretraining run (or baseline) and the epochs at which its checkpoints are evaluated.

    learning_rate None: train.py's own (the recipe's rule). Under the steps budget `steps` is the
    run's length and `steps_per_epoch` that of its subset; `epochs` / `eval_epochs` count epochs at
    data scale 1.0. `random` / `imagenet` cells have no data scale, batch or lr and epochs 0.
    """

    data_scale: float | None
    batch_size: int | None
    learning_rate: float | None
    epochs: int
    seed: int
    eval_epochs: tuple[int, ...]
    kind: str = "simclr"
    budget: str = "epochs"
    steps: int | None = None
    steps_per_epoch: int | None = None
    label_fraction: float | None = None  # scratch cells: the labelled subset they train on

    @property
    def name(self) -> str:
        """Folder name under out_dir/runs, e.g. ds0.5_bs256_lr0.3_ep250_seed0, supervised_ds0.5_bs128_lrauto_
        steps97500_seed0, random_seed0."""
        if self.kind in ("random", "imagenet"):
            return f"{self.kind}_seed{self.seed}"
        if self.kind == "scratch":
            return f"scratch_lf{self.label_fraction:g}_bs{self.batch_size}_ep{self.epochs}_seed{self.seed}"
        lr = "auto" if self.learning_rate is None else f"{self.learning_rate:g}"
        length = f"ep{self.epochs}" if self.budget == "epochs" else f"steps{self.steps}"
        prefix = "" if self.kind == "simclr" else f"{self.kind}_"
        return f"{prefix}ds{self.data_scale:g}_bs{self.batch_size}_lr{lr}_{length}_seed{self.seed}"

    def checkpoint_epoch(self, eval_epoch: int) -> int:
        """The epoch of this cell's own run whose checkpoint stands for `eval_epoch` (epochs at scale 1.0
        under the steps budget: the epoch in which that share of the steps is reached)."""
        if self.budget == "epochs":
            return eval_epoch
        target = self.steps * eval_epoch // self.epochs
        return -(-target // self.steps_per_epoch)


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
        cells.append(Cell(float(scale), int(bs), None if lr is None else float(lr), int(epochs), int(seed), evals))
    return cells


def steps_budget(epochs: int, full_size: int, batch_size: int) -> int:
    """Steps that `epochs` epochs take at data scale 1.0 (train.py drops the last partial batch)."""
    return epochs * (full_size // batch_size)


def study_cells(grid: Mapping[str, Sequence], eval_at: Sequence[int], budgets: Sequence[str],
                baselines: Sequence[str], sizes, supervised_batch: int | None = None,
                label_fractions: Sequence[float] = (1.0,), scratch_epochs: int | None = None,
                methods: Sequence[str] = ("simclr",)) -> list[Cell]:
    """The SimCLR grid under each budget, then each other method's arm, then the baselines (seeds outermost
    within each). A method beside SimCLR takes the grid's data scales, batch sizes, epochs and seeds with its
    own recipe's lr at each batch (the grid's lrs are SimCLR's).

    `sizes(data_scale, kind) -> images the cell of that kind trains on at that scale` (the split it reads, less
    any images it leaves out; needed by the steps budget, else unused): every cell of a kind and batch size
    gets the steps of its epochs at data scale 1.0 of its own training split. Under both budgets a steps cell at data scale 1.0 would repeat its epochs cell step for step; it is
    run once, as the epochs cell, and the report uses it for both. Supervised cells follow the grid's
    data scales and epochs with `supervised_batch` (train.py's supervised recipe decides the rest); scratch cells
    train `scratch_epochs` epochs over their labelled subset (None: the grid's epochs).
    """
    cells: list[Cell] = []

    def budgeted(cell: Cell, budget: str) -> Cell | None:
        if budget == "epochs":
            return cell
        if cell.data_scale == 1.0 and "epochs" in budgets:
            return None
        steps = steps_budget(cell.epochs, sizes(1.0, cell.kind), cell.batch_size)
        return replace(cell, budget="steps", steps=steps,
                       steps_per_epoch=sizes(cell.data_scale, cell.kind) // cell.batch_size)

    arms = [expand_grid(grid, eval_at)] if "simclr" in methods else []
    arms += [[replace(c, kind=m) for c in expand_grid(dict(grid, learning_rates=[None]), eval_at)]
             for m in METHOD_KINDS[1:] if m in methods]
    for arm in arms:
        for budget in budgets:
            cells += [c for c in (budgeted(c, budget) for c in arm) if c is not None]
    if "supervised" in baselines:
        sup = [replace(c, kind="supervised", batch_size=supervised_batch, learning_rate=None)
               for c in expand_grid(dict(grid, batch_sizes=[supervised_batch or 1], learning_rates=[None]), eval_at)]
        for budget in budgets:
            cells += [c for c in (budgeted(c, budget) for c in sup) if c is not None]
    for kind in ("random", "imagenet"):
        if kind in baselines:
            cells += [Cell(None, None, None, 0, int(seed), (0,), kind=kind) for seed in _unique(grid["seeds"])]
    if "scratch" in baselines:  # supervised training on the probe's labelled subset only, per fraction
        cells += [Cell(None, supervised_batch, None, int(epochs), int(seed), (int(epochs),), kind="scratch",
                       label_fraction=float(f))
                  for seed in _unique(grid["seeds"]) for f in _unique(label_fractions) for epochs in
                  ([scratch_epochs] if scratch_epochs else _unique(grid["epochs"]))]
    return cells


def subset_size(num_train: int, num_classes: int, data_scale: float) -> int:
    """Images in utils.data.datasets.stratified_subset for a class-balanced split (exact when balanced)."""
    if data_scale >= 1:
        return num_train
    return num_classes * max(1, int(round(data_scale * num_train / num_classes)))


# ---------------------------------------------------------------------------------------------
# Rows: built from one cell's training history and one test.py report; read back from the CSV
# ---------------------------------------------------------------------------------------------

def make_row(cell: Cell, eval_epoch: int, history: Sequence[Mapping], evaluation: Mapping, study: Mapping,
             device: str, checkpoint: str, learning_rate: float | None = None, batch_size: int | None = None,
             label_fraction: float = 1.0, threads: int | None = None, deterministic: bool | None = None) -> dict:
    """One results.csv row. `history`: train.py metrics.csv rows (epoch, step, loss, images_per_s, seconds);
    `learning_rate` / `batch_size`: what the run used, when the cell left them to train.py; `dataset`: what the
    cell trained on (the probe's data for scratch, else the study's pretraining data); `threads` /
    `deterministic`: what it ran with."""
    ckpt_epoch = cell.checkpoint_epoch(eval_epoch)
    done = [h for h in history if int(h["epoch"]) <= ckpt_epoch]
    step = done[-1].get("step") if done else None
    seconds = [float(h["seconds"]) for h in done]
    images = sum(float(h["images_per_s"]) * s for h, s in zip(done, seconds))
    total = sum(seconds)
    val_acc, val_loss = evaluation.get("val_accuracy"), evaluation.get("val_loss")
    return {  # a scratch cell trains on the probe's labelled subset: its dataset is the probe's
        "dataset": study["eval_dataset"] if cell.kind == "scratch" else study["dataset"], "data_scale": cell.data_scale,
        "batch_size": cell.batch_size if batch_size is None else batch_size,
        "learning_rate": cell.learning_rate if learning_rate is None else learning_rate, "epochs": cell.epochs, "eval_epoch": eval_epoch, "seed": cell.seed,
        "eval_dataset": study["eval_dataset"], "val_split": study["val_split"],
        "probe_epochs": study["test_num_epochs"], "recipe": study.get("recipe", ""),
        "val_accuracy": None if val_acc is None else round(float(val_acc), 4),
        "val_loss": None if val_loss is None else round(float(val_loss), 6),
        "test_accuracy": round(float(evaluation["test_accuracy"]), 4),
        "test_loss": round(float(evaluation["test_loss"]), 6),
        "pretrain_loss": round(float(done[-1]["loss"]), 6) if done else None,
        "pretrain_seconds": round(total, 2),
        "images_per_s": round(images / total, 2) if total > 0 else None,
        "eval_seconds": round(float(evaluation.get("seconds", {}).get("total", float("nan"))), 2),
        "device": device, "checkpoint": checkpoint, "kind": cell.kind, "budget": cell.budget,
        "steps": int(step) if step not in (None, "") else (0 if cell.epochs == 0 else None),
        "train_epochs": ckpt_epoch, "label_fraction": label_fraction, "threads": threads,
        "deterministic": None if deterministic is None else int(bool(deterministic)),
        "aug_test_acc": _rounded(evaluation.get("augmented_test_accuracy"), 4),
        "aug_test_loss": _rounded(evaluation.get("augmented_test_loss"), 6),
        "knn10_acc": _rounded(evaluation.get("knn10_accuracy"), 4),
        "knn200_acc": _rounded(evaluation.get("knn200_accuracy"), 4),
        "contrastive_acc": _rounded(done[-1].get("contrastive_acc") if done else None, 4),
        "aug_views": views_text(evaluation.get("augmented_test")),
        # distinct train-split images whose labels the probe read (= the labelled subset below every label)
        "labels_used": evaluation.get("labels_used"), "cv_accuracy": _rounded(evaluation.get("cv_accuracy"), 4),
    }


def views_text(augmented: Mapping | None) -> str | None:
    """'2 per image (seed 0): crop (0.3, 1), flip 0, jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2, blur 0' from eval.json's
    augmented_test (its views and their spec); None when the views were not measured."""
    if not augmented:
        return None
    s = augmented["spec"]
    return (f"{augmented['views_per_image']} per image (seed {augmented['seed']}): crop ({s['crop_min_scale']:g}, 1), "
            f"flip {s['hflip_prob']:g}, jitter {'/'.join(f'{j:g}' for j in s['jitter'])} p {s['jitter_prob']:g}, "
            f"gray {s['gray_prob']:g}, blur {s['blur_prob']:g}")


def _rounded(value, digits: int) -> float | None:
    """A number from a report or a metrics.csv cell, rounded; None for absent or empty."""
    return None if value in (None, "") else round(float(value), digits)


def _orderable(value) -> tuple:
    """None sorts first and never meets a number in a comparison."""
    return (value is not None, value if value is not None else 0)


def _sort_key(row: Mapping) -> tuple:
    return (KINDS.index(kind_of(row)), BUDGETS.index(budget_of(row))) + tuple(
        _orderable(row.get(k)) for k in ("data_scale", "batch_size", "learning_rate", "epochs", "seed", "eval_epoch",
                                         "label_fraction"))


def parse_row(raw: Mapping[str, str]) -> dict:
    """Types back from a results.csv row (empty cells become None); ValueError names a bad field."""
    row: dict = {}
    for key in RESULT_FIELDS:
        value = raw.get(key, "")
        if key == "label_fraction" and value in ("", None):
            row[key] = 1.0  # results.csv from before the label axis: every label
        elif value in ("", None):
            row[key] = None
        elif key in INT_FIELDS:
            row[key] = int(value)
        elif key in STR_FIELDS:
            row[key] = value
        else:
            row[key] = float(value)
            if math.isnan(row[key]) or math.isinf(row[key]):
                raise ValueError(f"{key} is {value}")
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
    """Typed rows of a results.csv; ValueError with one line naming the row when the file is damaged."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [k for k in REQUIRED_FIELDS if k not in header]
            if missing:
                raise ValueError(f"its header lacks {', '.join(missing)}" if header else "it is empty")
            rows = []
            for raw in reader:
                where = f"row {reader.line_num}"
                if None in raw or any(raw.get(k) is None for k in header):
                    raise ValueError(f"{where} has {'more' if None in raw else 'fewer'} fields than the header")
                if any(raw.get(k) in ("", None) for k in REQUIRED_FIELDS):
                    raise ValueError(f"{where} lacks {', '.join(k for k in REQUIRED_FIELDS if not raw.get(k))}")
                try:
                    row = parse_row(raw)
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                if kind_of(row) not in KINDS or budget_of(row) not in BUDGETS:
                    raise ValueError(f"{where}: unknown kind {row['kind']!r} or budget {row['budget']!r}")
                rows.append(row)
    except UnicodeDecodeError:
        raise ValueError("it is not text (binary data)") from None
    except csv.Error as exc:
        raise ValueError(f"it is not a valid CSV ({exc})") from None
    if not rows:
        raise ValueError("it holds no rows")
    return rows


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
    """One entry per configuration (kind, budget, CONFIG_KEYS, STUDY_KEYS) with mean/std over its seeds."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        key = (kind_of(row), budget_of(row)) + tuple(row.get(k) for k in STUDY_KEYS + CONFIG_KEYS)
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        entry = dict(zip(("kind", "budget") + STUDY_KEYS + CONFIG_KEYS, key))
        steps = {m.get("steps") for m in members}
        entry["steps"] = steps.pop() if len(steps) == 1 else None
        entry["seeds"] = sorted(int(m["seed"]) for m in members)
        entry["n_seeds"] = len(members)
        for metric in ("val_accuracy", "test_accuracy", "test_loss", "pretrain_seconds", "images_per_s",
                       "aug_test_acc", "knn10_acc", "contrastive_acc", "labels_used"):
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std([m.get(metric) for m in members])
        out.append(entry)
    return sorted(out, key=selection_order)


def selection_order(entry: Mapping) -> tuple:
    """Sort key: highest mean validation accuracy first, then the cheaper configuration. No test figure."""
    val = entry.get("val_accuracy_mean")
    config = (KINDS.index(kind_of(entry)), BUDGETS.index(budget_of(entry))) + tuple(
        _orderable(entry.get(k)) for k in CONFIG_KEYS)
    return (val is None, -(val or 0.0), config)


def choose(entries: Sequence[Mapping], kind: str = "simclr") -> Mapping | None:
    """The `kind` configuration with the best mean validation accuracy (None without a validation split)."""
    ranked = [e for e in sorted(entries, key=selection_order)
              if e.get("val_accuracy_mean") is not None and kind_of(e) == kind]
    return ranked[0] if ranked else None


def of_kind(entries: Sequence[Mapping], kind: str, budget: str | None = None) -> list[Mapping]:
    """Entries of one kind (and budget). Under the steps budget the data-scale-1.0 epochs entries count
    too: at scale 1.0 both budgets are the same run, which is run once (as the epochs cell)."""
    out = [e for e in entries if kind_of(e) == kind and (budget is None or budget_of(e) == budget)]
    if budget == "steps" and not any(e["data_scale"] == 1.0 for e in out):
        out += [e for e in entries if kind_of(e) == kind and budget_of(e) == "epochs" and e["data_scale"] == 1.0]
    return out


def best_per_scale(entries: Sequence[Mapping], kind: str, budget: str) -> list[Mapping]:
    """For each data scale, the `kind` configuration of `budget` with the best validation accuracy
    (the only one when there is no validation split and a single configuration per scale)."""
    pool = of_kind(entries, kind, budget)
    out = []
    for scale in sorted({e["data_scale"] for e in pool if e["data_scale"] is not None}):
        at = [e for e in pool if e["data_scale"] == scale]
        best = choose(at, kind) or (at[0] if len(at) == 1 else None)
        if best is not None:
            out.append(best)
    return out


# ---------------------------------------------------------------------------------------------
# results.md
# ---------------------------------------------------------------------------------------------

def _pm(mean: float | None, std: float | None, fmt: str) -> str:
    if mean is None:
        return "–"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if std is not None else "")


def _g(value, fmt: str = "g") -> str:
    return "–" if value is None else f"{value:{fmt}}"


def config_text(e: Mapping) -> str:
    """'data scale 0.5, batch 256, lr 0.3, 250 epochs, checkpoint of epoch 250' (+ ', steps budget')."""
    return (f"data scale {e['data_scale']:g}, batch {_g(e['batch_size'])}, lr {_g(e['learning_rate'])}, "
            f"{e['epochs']} epochs, checkpoint of epoch {e['eval_epoch']}"
            + (", steps budget" if budget_of(e) == "steps" else ""))


def _table(entries: Sequence[Mapping], chosen: Mapping | None) -> list[str]:
    lines = ["| | data scale | batch | lr | epochs | eval epoch | seeds | val acc (%) | test acc (%) | test loss "
             "| pretrain (s) | images/s | budget | steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        mark = "★" if e is chosen else ""
        lines.append(
            f"| {mark} | {_g(e['data_scale'])} | {_g(e['batch_size'])} | {_g(e['learning_rate'])} | {e['epochs']} "
            f"| {e['eval_epoch']} | {e['n_seeds']} | {_pm(e['val_accuracy_mean'], e['val_accuracy_std'], '.2f')} "
            f"| {_pm(e['test_accuracy_mean'], e['test_accuracy_std'], '.2f')} "
            f"| {_pm(e['test_loss_mean'], e['test_loss_std'], '.3f')} "
            f"| {_pm(e['pretrain_seconds_mean'], None, '.1f')} | {_pm(e['images_per_s_mean'], None, '.1f')} "
            f"| {budget_of(e)} | {_g(e.get('steps'), 'd')} |")
    return lines


def _baseline_lines(entries: Sequence[Mapping]) -> list[str]:
    """Per budget: the best SimCLR and supervised configuration per data scale, and the references."""
    refs = []
    for kind in ("random", "imagenet"):
        ref = of_kind(entries, kind)
        if ref:
            e = ref[0]
            refs.append(f"{KIND_LABELS[kind]} {_pm(e['test_accuracy_mean'], e['test_accuracy_std'], '.2f')} % "
                        f"({e['n_seeds']} seed{'s' if e['n_seeds'] > 1 else ''})")
    out = ["## SimCLR against the baselines, test accuracy (%) per data scale", "",
           "Best configuration per data scale by validation accuracy for SimCLR and for supervised pretraining "
           "on the same seeded subset; every backbone probed by the same protocol. References without "
           f"pretraining: {'; '.join(refs) if refs else 'none run'}.", ""]
    for budget in BUDGETS:
        simclr, sup = best_per_scale(entries, "simclr", budget), best_per_scale(entries, "supervised", budget)
        if not any(budget_of(e) == budget for e in entries if kind_of(e) in ("simclr", "supervised")):
            continue
        what = ("epochs budget: every cell runs its epochs over its own subset" if budget == "epochs" else
                "steps budget: every cell of a batch size runs the steps of its epochs at data scale 1.0")
        out += [f"**{what}**", "", "| data scale | SimCLR | SimCLR configuration | supervised "
                "| supervised configuration | SimCLR − supervised |", "|---|---|---|---|---|---|"]
        for scale in sorted({e["data_scale"] for e in simclr + sup}):
            a = next((e for e in simclr if e["data_scale"] == scale), None)
            b = next((e for e in sup if e["data_scale"] == scale), None)
            acc = lambda e: _pm(e["test_accuracy_mean"], e["test_accuracy_std"], ".2f") if e else "–"  # noqa: E731
            conf = lambda e: (f"bs {_g(e['batch_size'])}, lr {_g(e['learning_rate'])}, ep {e['epochs']}@"  # noqa: E731
                              f"{e['eval_epoch']}, {_g(e.get('steps'), 'd')} steps") if e else "–"
            diff = (f"{a['test_accuracy_mean'] - b['test_accuracy_mean']:+.2f}"
                    if a and b and a["test_accuracy_mean"] is not None and b["test_accuracy_mean"] is not None else "–")
            out.append(f"| {scale:g} | {acc(a)} | {conf(a)} | {acc(b)} | {conf(b)} | {diff} |")
        out.append("")
    return out


def _method_lines(entries: Sequence[Mapping]) -> list[str]:
    """--methods: per budget and data scale, each method's best configuration by validation accuracy (nothing
    when SimCLR is the only method)."""
    kinds = [k for k in METHOD_KINDS if any(kind_of(e) == k for e in entries)]
    if not set(kinds) - {"simclr"}:
        return []
    out = ["## The self-supervised methods, test accuracy (%) per data scale", "",
           "Each method on the same subsets, batch sizes, epochs, seeds and probe; its lr from its own recipe "
           "(utils/recipes.py); the best configuration per data scale by validation accuracy.", ""]
    for budget in BUDGETS:
        best = {k: best_per_scale(entries, k, budget) for k in kinds}
        scales = sorted({e["data_scale"] for pts in best.values() for e in pts})
        if not scales:
            continue
        out += [f"**{budget} budget**", "", "| data scale | " + " | ".join(KIND_LABELS[k] for k in kinds) + " |",
                "|---" * (len(kinds) + 1) + "|"]
        for scale in scales:
            cells = []
            for k in kinds:
                e = next((e for e in best[k] if e["data_scale"] == scale), None)
                cells.append(_pm(e["test_accuracy_mean"], e["test_accuracy_std"], ".2f") if e else "–")
            out.append(f"| {scale:g} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _threads_text(rows: Sequence[Mapping]) -> str:
    """' Cells ran with 1 CPU thread each (deterministic kernels).' from the rows' threads / deterministic."""
    threads = sorted({r["threads"] for r in rows if r.get("threads") is not None})
    if not threads:
        return ""
    det = {r.get("deterministic") for r in rows} - {None}
    how = {frozenset({1}): " (deterministic kernels)", frozenset({0, 1}): " (some with deterministic kernels)"}
    return (f" Cells ran with {' or '.join(map(str, threads))} CPU thread{'s' if threads != [1] else ''} each"
            f"{how.get(frozenset(det), '')}.")


def results_markdown(rows: Sequence[Mapping]) -> str:
    """results.md from typed results.csv rows alone (no clock, no paths: reruns give the same bytes).

    The data-scale sections use the rows with every label (label fraction 1.0, no scratch cell); the
    label-efficiency section (label_axis_markdown) all of them."""
    all_rows, rows = rows, [r for r in rows if fraction_of(r) == 1.0 and kind_of(r) != "scratch"]
    everything = aggregate(rows)
    entries = [e for e in everything if kind_of(e) == "simclr"]
    baselines = [e for e in everything if kind_of(e) != "simclr"]
    chosen = choose(entries)
    study = {k: sorted({str(r.get(k) or '') for r in rows} - {''}) for k in STUDY_KEYS}
    seeds = sorted({int(r["seed"]) for r in rows})
    out = [f"# SimCLR sweep: pretraining on {', '.join(study['dataset'])}, "
           f"linear probe on {', '.join(study['eval_dataset'])}", ""]
    out.append(f"{len(rows)} rows (cell x eval epoch) from {RESULTS_CSV}; {len(everything)} configurations; "
               f"seeds {', '.join(map(str, seeds))}; recipe {', '.join(study['recipe']) or '-'} (pretraining and "
               f"probe); probe {', '.join(study['probe_epochs'])} epochs, "
               f"validation split {', '.join(study['val_split'])} of the probe's train split."
               + _threads_text(rows))
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
    if baselines:
        out += _baseline_lines(everything)
    out += _method_lines(everything)
    out += ["## All SimCLR configurations, by validation accuracy", ""] + _table(entries, chosen) + [""]
    scales = sorted({e["data_scale"] for e in entries})
    if len(scales) > 1 and chosen is not None:
        best = [choose([e for e in entries if e["data_scale"] == s]) for s in scales]
        out += ["## Best configuration per data scale (by validation accuracy)", ""]
        out += _table([b for b in best if b is not None], chosen) + [""]
    if baselines:
        out += ["## Baselines, by validation accuracy", "",
                "| kind | data scale | batch | lr | epochs | eval epoch | seeds | val acc (%) | test acc (%) "
                "| test loss | budget | steps |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in sorted(baselines, key=lambda e: (KINDS.index(kind_of(e)),) + selection_order(e)):
            out.append(f"| {KIND_LABELS[kind_of(e)]} | {_g(e['data_scale'])} | {_g(e['batch_size'])} "
                       f"| {_g(e['learning_rate'])} | {e['epochs']} | {e['eval_epoch']} | {e['n_seeds']} "
                       f"| {_pm(e['val_accuracy_mean'], e['val_accuracy_std'], '.2f')} "
                       f"| {_pm(e['test_accuracy_mean'], e['test_accuracy_std'], '.2f')} "
                       f"| {_pm(e['test_loss_mean'], e['test_loss_std'], '.3f')} | {budget_of(e)} "
                       f"| {_g(e.get('steps'), 'd')} |")
        out.append("")
    out += measures_markdown(everything, rows)
    out += label_axis_markdown(all_rows)
    out += [f"Plots: [{PLOT_SCALE}]({PLOT_SCALE}), [{PLOT_HEATMAP}]({PLOT_HEATMAP})"
            + (f", [{PLOT_LABELS}]({PLOT_LABELS})" if has_label_axis(all_rows) else "")
            + (f", [{PLOT_SCRATCH}]({PLOT_SCRATCH}) (the scratch cells' training loss per step)"
               if any(kind_of(r) == "scratch" for r in all_rows) else "") + ". "
            "Redraw with `python simclr_train.py --report --out_dir <this folder>`.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The few-label axis: every backbone probed at each label fraction, and the scratch baseline
# ---------------------------------------------------------------------------------------------

def has_label_axis(rows: Sequence[Mapping]) -> bool:
    return any(fraction_of(r) != 1.0 or kind_of(r) == "scratch" for r in rows)


def label_axis_points(entries: Sequence[Mapping]) -> dict[tuple, dict[tuple, list[Mapping]]]:
    """{data scale (None: no pretraining subset): {(kind, budget): [entry per label fraction]}}: one configuration
    per arm and data scale, chosen on the all-labels validation accuracy (the only one without a split), and
    every label fraction of that same configuration, so a row never mixes configurations. `scratch` trains on
    each fraction's labels, so each fraction is its own configuration (the best by validation accuracy). Arms
    without a data scale (random, imagenet, scratch) appear under every data scale."""
    scales = sorted({e["data_scale"] for e in entries if e["data_scale"] is not None}) or [None]
    same = ("data_scale", "batch_size", "learning_rate", "epochs", "eval_epoch")
    out: dict = {}
    for scale in scales:
        arms: dict = {}
        for e in entries:
            if e["data_scale"] not in (scale, None):
                continue
            arms.setdefault((kind_of(e), budget_of(e)), {}).setdefault(fraction_of(e), []).append(e)
        chosen_arms = {}
        for arm, by_f in sorted(arms.items(), key=lambda kv: (KINDS.index(kv[0][0]), BUDGETS.index(kv[0][1]))):
            pick = lambda at: choose(at, arm[0]) or (at[0] if len(at) == 1 else None)  # noqa: E731
            if arm[0] == "scratch" or 1.0 not in by_f:
                chosen_arms[arm] = [b for b in (pick(at) for _, at in sorted(by_f.items())) if b is not None]
                continue
            config = pick(by_f[1.0])
            chosen_arms[arm] = [] if config is None else [
                e for f, at in sorted(by_f.items()) for e in at if all(e.get(k) == config.get(k) for k in same)]
        out[scale] = chosen_arms
    return out


def config_label(e: Mapping) -> str:
    """'bs 64, lr 0.125, ep 2@2, 44 steps' (the configuration of a row); '–' for references without training."""
    if e.get("batch_size") is None and not e.get("epochs"):
        return "–"
    return (f"bs {_g(e.get('batch_size'))}, lr {_g(e.get('learning_rate'))}, ep {e['epochs']}@{e['eval_epoch']}, "
            f"{_g(e.get('steps'), 'd')} steps")


def _arm_label(arm: tuple, budgets: set) -> str:
    kind, budget = arm
    return KIND_LABELS[kind] + (f" ({budget} budget)" if len(budgets) > 1 and kind not in BASELINES[1:] else "")


MEASURES = (("test_accuracy", "test acc (%)"), ("aug_test_acc", "augmented test acc (%)"),
            ("knn10_acc", "kNN k=10 (%)"), ("contrastive_acc", "contrastive acc (%)"))


def measures_markdown(entries: Sequence[Mapping], rows: Sequence[Mapping] = ()) -> list[str]:
    """The results.md section that sets every configuration's measures side by side (only when the study
    measured more than test accuracy: test.py --eval_views / --knn, or SimCLR's contrastive accuracy); it
    names the augmented test views of `rows` (the same for every cell, or each one where they differ)."""
    specs = sorted({r["aug_views"] for r in rows if r.get("aug_views")})
    views = "" if not specs else (
        f" Augmented test views, the same for every cell: {specs[0]}." if len(specs) == 1 else
        " The cells were scored on different augmented test views, so their augmented figures do not compare: "
        + "; ".join(f"{', '.join(sorted({KIND_LABELS[kind_of(r)] for r in rows if r.get('aug_views') == s}))}: {s}"
                    for s in specs) + ".")
    shown = [(key, title) for key, title in MEASURES if any(e.get(f"{key}_mean") is not None for e in entries)]
    if len(shown) < 2:
        return []
    out = ["## Every configuration's measures (mean ± std over seeds)", "",
           "test acc: the probe on clean test images; augmented test acc: the same probe on seeded SimCLR views "
           "of every test image (test.py --eval_views); kNN k=10: cosine, majority vote, probe train split as "
           "memory; contrastive acc: the share of the last pretraining epoch's views whose positive ranked first "
           "(chance 1/(2N-1)). See docs/measures.md." + views, "",
           "| kind | data scale | batch | lr | epochs | seeds | " + " | ".join(t for _, t in shown) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(shown)]
    for e in sorted(entries, key=lambda e: (KINDS.index(kind_of(e)), budget_of(e), e["data_scale"] or 0,
                                            _orderable(e.get("batch_size")), _orderable(e.get("learning_rate")))):
        cells = [_pm(e.get(f"{k}_mean"), e.get(f"{k}_std"), ".2f") for k, _ in shown]
        out.append(f"| {KIND_LABELS[kind_of(e)]}{' (steps)' if budget_of(e) == 'steps' else ''} "
                   f"| {_g(e['data_scale'])} | {_g(e['batch_size'])} | {_g(e['learning_rate'])} | {e['epochs']} "
                   f"| {e['n_seeds']} | "
                   + " | ".join(cells) + " |")
    return out + [""]


def label_axis_markdown(rows: Sequence[Mapping]) -> list[str]:
    """The results.md section of the label axis: test accuracy per arm, data scale and label fraction."""
    if not has_label_axis(rows):
        return []
    entries = aggregate(rows)
    fractions = sorted({fraction_of(e) for e in entries})
    budgets = {budget_of(e) for e in entries}
    used = {f: sorted({int(r["labels_used"]) for r in rows if fraction_of(r) == f and r.get("labels_used")})
            for f in fractions}
    counts = "; ".join(f"{f:g}: {', '.join(f'{n:,}' for n in used[f])}" for f in fractions if used[f])
    out = ["## Label efficiency: test accuracy (%) per label fraction", "",
           "Every backbone probed on a class-balanced, seeded subset of the probe's train labels (test.py "
           "--label_fraction; the validation split is drawn first and never labelled); `scratch` is supervised "
           "training from scratch on that labelled subset only (train.py --label_fraction), then probed on it. "
           "One configuration per arm and data scale, chosen on the all-labels validation accuracy, with every "
           "label fraction of that same configuration (scratch: one configuration per fraction, each named); "
           "mean ± std over seeds.", "",
           "Which labels each row read: below every label the probe reads its labelled subset and no other label "
           "(L-BFGS chooses l2 by stratified cross-validation inside it and refits on it alone; the validation "
           "images stay unlabelled), so its figure is what that many labels give; but the *configuration* of a "
           "pretrained arm (its lr, batch, epochs) was chosen with every label, on the validation split, or fixed "
           "by the preset, and the pretraining of a supervised arm reads its own subset's labels. "
           + (f"Labels the probe read (results.csv `labels_used`), by fraction: {counts}." if counts else ""), "",
           "| data scale | arm | configuration | " + " | ".join(f"{f:g}" for f in fractions) + " |",
           "|---|---|---|" + "---|" * len(fractions)]
    for scale, arms in label_axis_points(entries).items():
        for arm, pts in arms.items():
            by_f = {fraction_of(e): e for e in pts}
            cells = [_pm(by_f[f]["test_accuracy_mean"], by_f[f]["test_accuracy_std"], ".2f") if f in by_f else "–"
                     for f in fractions]
            configs = sorted({config_label(e) for e in pts})
            conf = configs[0] if len(configs) == 1 else "; ".join(
                f"{fraction_of(e):g}: {config_label(e)}" for e in pts)
            out.append(f"| {_g(scale)} | {_arm_label(arm, budgets)} | {conf} | " + " | ".join(cells) + " |")
    return out + [""] + comparison_markdown(entries)


COMPARED = (("random", "random init"), ("supervised", "supervised"), ("scratch", "scratch on the labels"))
COMPARED_MEASURES = {"test_accuracy": "probe", "aug_test_acc": "probe, augmented views", "knn10_acc": "kNN k=10"}


def comparisons(entries: Sequence[Mapping]) -> list[dict]:
    """SimCLR (each method arm) against each baseline, per data scale, label fraction and measure (probe test
    accuracy, kNN k=10): {"scale", "arm", "against", "fraction", "measure", "diff", "se", "verdict", "n"}."""
    out = []
    for scale, arms in label_axis_points(entries).items():
        methods = [a for a in arms if a[0] not in BASELINES]
        for arm in methods:
            mine = {fraction_of(e): e for e in arms[arm]}
            for kind, _ in COMPARED:
                other = [a for a in arms if a[0] == kind and (kind != "supervised" or a[1] == arm[1])]
                theirs = {fraction_of(e): e for a in other for e in arms[a]}
                for f in sorted(set(mine) & set(theirs)):
                    for measure in COMPARED_MEASURES:
                        a, b = mine[f], theirs[f]
                        if a.get(f"{measure}_mean") is None or b.get(f"{measure}_mean") is None:
                            continue
                        result = compare(a[f"{measure}_mean"], a[f"{measure}_std"], a["n_seeds"],
                                         b[f"{measure}_mean"], b[f"{measure}_std"], b["n_seeds"])
                        out.append({"scale": scale, "arm": arm, "against": kind, "fraction": f, "measure": measure,
                                    "n": (a["n_seeds"], b["n_seeds"]), **result})
    return out


def comparison_markdown(entries: Sequence[Mapping]) -> list[str]:
    """results.md: each method arm against each baseline, difference ± its standard error and the verdict."""
    rows = comparisons(entries)
    if not rows:
        return []
    budgets = {budget_of(e) for e in entries}
    names = dict(COMPARED)
    out = ["## Lead, level or behind: each method against each baseline", "",
           f"Difference of means (percentage points) ± its standard error; {RULE_TEXT}. Probe: the linear probe's "
           "test accuracy at that label fraction (augmented views: the same probe on the SimCLR views of the test "
           "images); kNN: k=10 with that fraction's labelled images as memory.", "",
           "| data scale | arm | against | labels | measure | seeds | difference (points) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        measure = COMPARED_MEASURES[r["measure"]]
        out.append(f"| {_g(r['scale'])} | {_arm_label(r['arm'], budgets)} | {names[r['against']]} | {r['fraction']:g} "
                   f"| {measure} | {r['n'][0]} vs {r['n'][1]} | {describe(r)} |")
    return out + [""]


def plot_accuracy_vs_label_fraction(entries: Sequence[Mapping], path: Path) -> Path:
    """One panel per data scale: test accuracy (mean ± std over seeds) against the label fraction (log x),
    one line per arm (SimCLR, supervised per budget; random init, ImageNet weights, scratch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = label_axis_points(entries)
    budgets = {budget_of(e) for e in entries}
    colours = COLOURS
    fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 4.2 * len(panels), 4.0), squeeze=False, sharey=True)
    fractions = sorted({fraction_of(e) for e in entries})
    for ax, (scale, arms) in zip(axes[0], panels.items()):
        for arm, pts in arms.items():
            pts = [e for e in pts if e["test_accuracy_mean"] is not None]
            if pts:
                ax.errorbar([fraction_of(e) for e in pts], [e["test_accuracy_mean"] for e in pts],
                            yerr=[e["test_accuracy_std"] or 0.0 for e in pts], marker="o", capsize=3,
                            color=colours[arm[0]], linestyle="--" if arm[1] == "steps" else "-",
                            label=_arm_label(arm, budgets))
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction (of the probe's train split)")
        ax.set_title("all arms" if scale is None else f"pretraining data scale {scale:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Accuracy against the share of labels (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_accuracy_vs_scale(entries: Sequence[Mapping], path: Path) -> Path:
    """Mean test accuracy (± std over seeds) against data scale; a second panel for the augmented test views
    when the study measured them (test.py --eval_views).

    Per budget (solid: epochs, dashed: steps): SimCLR's best configuration per scale by validation
    accuracy (without a validation split: one line per configuration) and supervised pretraining's;
    random init and ImageNet weights as horizontal references with their std as a band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("test_accuracy", "clean test images")]
    if any(e.get("aug_test_acc_mean") is not None for e in entries):
        panels.append(("aug_test_acc", "augmented test views (--eval_views)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (metric, what) in zip(axes[0], panels):
        _scale_panel(ax, entries, metric, what)
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


def _scale_panel(ax, entries: Sequence[Mapping], metric: str, what: str) -> None:
    """One panel of plot_accuracy_vs_scale: `metric` ("test_accuracy" or "aug_test_acc") per data scale."""
    styles = {"epochs": "-", "steps": "--"}
    colours = COLOURS
    budgets = [b for b in BUDGETS if any(budget_of(e) == b and kind_of(e) in METHOD_KINDS + ("supervised",)
                                         for e in entries)]
    names = {"batch_size": "bs", "learning_rate": "lr", "epochs": "ep", "eval_epoch": "@"}

    def draw(pts, label, colour, style):
        pts = sorted((e for e in pts if e.get(f"{metric}_mean") is not None), key=lambda e: e["data_scale"])
        if pts:
            ax.errorbar([e["data_scale"] for e in pts], [e[f"{metric}_mean"] for e in pts],
                        yerr=[e[f"{metric}_std"] or 0.0 for e in pts], marker="o", capsize=3, label=label,
                        color=colour, linestyle=style)

    for budget in budgets:
        tag = f" ({budget} budget)" if len(budgets) > 1 else ""
        simclr = of_kind(entries, "simclr", budget)
        if any(e["val_accuracy_mean"] is not None for e in simclr):
            draw(best_per_scale(entries, "simclr", budget), f"SimCLR, best by val{tag}", colours["simclr"],
                 styles[budget])
        else:  # nothing to choose with: one line per configuration
            varying = [k for k in names if len({e[k] for e in simclr}) > 1] or ["batch_size", "learning_rate"]
            lines: dict[tuple, list[Mapping]] = {}
            for e in simclr:
                lines.setdefault(tuple(e[k] for k in varying), []).append(e)
            for key in sorted(lines, key=lambda k: tuple(_orderable(v) for v in k)):
                label = " ".join(f"{names[k]} {_g(v)}" for k, v in zip(varying, key))
                draw(lines[key], f"SimCLR {label}{tag}", None, styles[budget])
        for kind in METHOD_KINDS[1:]:  # each other method's arm (simclr_train.py --methods)
            draw(best_per_scale(entries, kind, budget), f"{KIND_LABELS[kind]}, best by val{tag}", colours[kind],
                 styles[budget])
        draw(best_per_scale(entries, "supervised", budget), f"supervised, best by val{tag}", colours["supervised"],
             styles[budget])
    for kind in ("random", "imagenet"):
        ref = of_kind(entries, kind)
        if ref and ref[0].get(f"{metric}_mean") is not None:
            mean, std = ref[0][f"{metric}_mean"], ref[0][f"{metric}_std"] or 0.0
            ax.axhline(mean, color=colours[kind], linestyle=":", label=KIND_LABELS[kind])
            if std:
                ax.axhspan(mean - std, mean + std, color=colours[kind], alpha=0.15)
    scales = sorted({e["data_scale"] for e in entries if e["data_scale"] is not None})
    if len(scales) > 1 and scales[-1] / scales[0] >= 4:
        ax.set_xscale("log")
    ax.set_xticks(scales)
    ax.set_xticklabels([f"{s:g}" for s in scales])
    ax.minorticks_off()
    ax.set_xlabel("data scale (fraction of the pretraining set)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Linear probe accuracy on {what}\n(mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_heatmaps(entries: Sequence[Mapping], path: Path) -> Path:
    """One lr x batch-size panel per data scale (and budget) of the SimCLR cells, coloured by mean val
    accuracy (test if none), both printed.

    Where a (scale, batch, lr) has several epochs / eval epochs, the one validation would pick is shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in entries if kind_of(e) == "simclr"]
    use_val = any(e["val_accuracy_mean"] is not None for e in entries)
    colour_key = "val_accuracy_mean" if use_val else "test_accuracy_mean"
    panels = sorted({(BUDGETS.index(budget_of(e)), e["data_scale"]) for e in entries})
    two_budgets = len({b for b, _ in panels}) > 1
    lrs = sorted({e["learning_rate"] for e in entries}, key=_orderable)
    bss = sorted({e["batch_size"] for e in entries}, key=_orderable)
    values = [e[colour_key] for e in entries if e[colour_key] is not None]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    fig, axes = plt.subplots(1, len(panels), figsize=(1.8 + 1.5 * len(bss) * len(panels), 1.4 + 0.8 * len(lrs)),
                             squeeze=False, layout="constrained")
    image = None
    for k, (ax, (budget_index, scale)) in enumerate(zip(axes[0], panels)):
        grid = np.full((len(lrs), len(bss)), np.nan)
        for i, lr in enumerate(lrs):
            for j, bs in enumerate(bss):
                cell = [e for e in entries if (e["data_scale"], e["learning_rate"], e["batch_size"]) == (scale, lr, bs)
                        and BUDGETS.index(budget_of(e)) == budget_index]
                best = (choose(cell) if use_val else None) or (cell[0] if cell else None)
                if best is None or best[colour_key] is None:
                    continue
                grid[i, j] = best[colour_key]
                text = (f"val {best['val_accuracy_mean']:.1f}\n" if best["val_accuracy_mean"] is not None else "")
                text += f"test {best['test_accuracy_mean']:.1f}"
                dark = (best[colour_key] - vmin) / (vmax - vmin) < 0.5  # viridis is dark at the low end
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(bss)), [_g(b) for b in bss])
        ax.set_yticks(range(len(lrs)), [_g(lr) for lr in lrs] if k == 0 else [])
        ax.set_xlabel("batch size")
        if k == 0:
            ax.set_ylabel("learning rate")
        ax.set_title(f"data scale {scale:g}" + (f", {BUDGETS[budget_index]}" if two_budgets else ""), fontsize=10)
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
        entries = aggregate([r for r in rows if fraction_of(r) == 1.0 and kind_of(r) != "scratch"])
        if entries:
            written.append(plot_accuracy_vs_scale(entries, out_dir / PLOT_SCALE))
        if any(kind_of(e) == "simclr" for e in entries):
            written.append(plot_heatmaps(entries, out_dir / PLOT_HEATMAP))
        if has_label_axis(rows):
            written.append(plot_accuracy_vs_label_fraction(aggregate(rows), out_dir / PLOT_LABELS))
        if any(kind_of(r) == "scratch" for r in rows) and plot_scratch_training(out_dir, out_dir / PLOT_SCRATCH):
            written.append(out_dir / PLOT_SCRATCH)
        if plot_neighbours_side_by_side(out_dir, rows, out_dir / PLOT_NEIGHBOURS):
            written.append(out_dir / PLOT_NEIGHBOURS)
    return written


def neighbour_pictures(out_dir: Path, rows: Sequence[Mapping]) -> list[tuple[str, Path]]:
    """(title, neighbours.png) of one backbone per kind, side by side in the report: the lowest seed's, with every
    label, at the largest data scale (test.py --knn draws each; utils/eval/neighbours.py)."""
    found = []
    for kind in ("random", *[k for k in KINDS if k != "random"]):  # random init on the left, the reference
        pool = [r for r in rows if kind_of(r) == kind and fraction_of(r) == 1.0 and r.get("checkpoint")]
        if not pool:
            continue
        row = min(pool, key=lambda r: (int(r["seed"]), -(r["data_scale"] or 0), -int(r["eval_epoch"] or 0)))
        run_dir = Path(out_dir) / Path(row["checkpoint"]).parent  # an absolute path stays itself
        hits = sorted(run_dir.glob(f"eval-*-epoch{int(row['eval_epoch']):04d}/neighbours.png"))
        if hits:
            scale = "" if row["data_scale"] is None else f", data scale {row['data_scale']:g}"
            found.append((f"{KIND_LABELS[kind]}{scale}, seed {row['seed']}", hits[0]))
    return found


def plot_neighbours_side_by_side(out_dir: Path, rows: Sequence[Mapping], path: Path) -> Path | None:
    """The backbones' neighbours.png pictures in one row (random init, SimCLR, supervised, ...); None without two."""
    pictures = neighbour_pictures(out_dir, rows)
    if len(pictures) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [plt.imread(picture) for _, picture in pictures]
    aspect = max(image.shape[0] / image.shape[1] for image in images)  # no empty bands above and below
    fig, axes = plt.subplots(1, len(pictures), figsize=(6.0 * len(pictures), 6.0 * aspect + 0.9), squeeze=False)
    for ax, (title, _), image in zip(axes[0], pictures, images):
        ax.imshow(image)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("The same test images, their nearest train images by each backbone's features "
                 "(green: same label)", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.03)
    _save(fig, path)
    return path


def plot_scratch_training(out_dir: Path, path: Path, title: str | None = None) -> Path | None:
    """Training loss and accuracy against the step of every scratch cell in out_dir/runs, one line each, from
    the metrics.csv its train.py wrote (a row per epoch): whether the scratch baseline, trained on its few labels
    only, ran until its loss flattened, as its epochs promise. None (nothing drawn) without such a cell."""
    from utils.io import read_csv
    from utils.plotting import plot_panels

    histories = {run.name: read_csv(run / "metrics.csv")
                 for run in sorted(Path(out_dir, RUNS).glob("scratch_*")) if (run / "metrics.csv").exists()}
    if not histories:
        return None
    steps = sorted({int(h["step"]) for rows in histories.values() for h in rows})
    series = {key: {name: [next((float(h[key]) for h in rows if int(h["step"]) == s and h.get(key) not in (None, "")),
                                None) for s in steps]
                    for name, rows in histories.items()} for key in ("loss", "train_acc")}
    return plot_panels(path, steps, [("training loss (cross-entropy on its labels)", series["loss"]),
                                     ("training accuracy (%)", series["train_acc"])], xlabel="step",
                       title=title or "The scratch baseline: supervised from scratch on the labelled subset")


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
    from utils.train.losses import nt_xent_loss

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
