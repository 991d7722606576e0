"""The SimCLR data-scale study: SimCLR against supervised pretraining and reference backbones, at every
data scale, under an epochs or an equal-steps budget; cells in parallel on one machine or on SLURM.

    python simclr_train.py --preset demo                  # quick start: offline, CPU, about 2 minutes
    python simclr_train.py --preset original --jobs 8     # the original's study, one cell per GPU of a node
    python simclr_train.py --preset original --launcher slurm --slurm_partition gpu   # one SLURM job per cell
    python simclr_train.py --dry_run --preset original --jobs 8   # the cells, where they run, a wall-time estimate
    python simclr_train.py --report --out_dir sweeps/demo # redraw results.md and the plots from results.csv
    python simclr_train.py --preset demo --methods simclr byol simsiam barlow_twins vicreg mocov2   # the methods

Cells: the SimCLR grid (data scale x batch size x learning rate x epochs x seed; GRID in utils/presets.py, or the
flags) under each --budget; with --methods, each other self-supervised method on the same data scales, batch
sizes, epochs and seeds at its own recipe's lr (docs/methods.md); and the --baselines: `supervised` (supervised pretraining on the same
seeded subset at each data scale, train.py's supervised recipe), `random` (the backbone at init)
and `imagenet` (torchvision's ImageNet weights; skipped with one line when they are not on disk).
Each cell is pretrained by train.main into OUT/runs/<cell>/ and linear-evaluated by test.main into
OUT/runs/<cell>/eval-<dataset>-epochNNNN/, at its last epoch and at every --eval_at epoch below it
(checkpoints the same run keeps via train.py --save_at). This script has no loop of its own.

Budgets: `epochs` gives every cell its --epochs over its own subset (a smaller subset gets fewer
steps); `steps` gives every cell of a batch size the steps --epochs take at data scale 1.0
(train.py --steps: the same schedule horizon whatever the data scale; --epochs and --eval_at then
count epochs at scale 1.0). At scale 1.0 the two budgets are the same run, run once.

Parallel: --jobs N runs N cells at once, each in its own process (`simclr_train.py ... --worker
CELL`, its output in OUT/logs/CELL.log) with its own device from --devices (default: every visible
GPU, else the CPU). --launcher slurm submits each cell as a SLURM job with submitit (pip install
submitit); --launcher submitit_local runs the same jobs on this machine (how the SLURM path is tested).
Every cell computes with --threads_per_cell CPU threads (default 1) however it is run, so its numbers do
not depend on --jobs, --devices or the launcher; on CPU, --jobs = cores / --threads_per_cell uses the
machine. --deterministic is forwarded to every cell (docs/reproducibility.md says what both promise).

Resume: rerun the same command. Finished (cell, eval epoch) pairs are read back from their
record.json and skipped; an interrupted pretraining resumes from its last.pth. results.csv is
rebuilt from the records after every finished evaluation, under a lock and atomically, so it holds
exactly one row per (cell, eval epoch) however the cells finish; a killed study loses nothing
finished. The study settings (datasets, probe epochs, --val_split, passthrough args) are kept in
OUT/sweep.json and a rerun with other settings is refused; the grid itself may grow.

Selection: by the probe's validation accuracy (--val_split of the probe's train split), mean over
seeds; the test split is reported, never used to choose.

Label fractions (docs/label-efficiency.md): --label_fractions 0.01 0.1 1.0 probes every backbone cell at
each share of the probe's train labels (test.py --label_fraction on the same checkpoint, features cached
once per checkpoint) and adds the `scratch` baseline: supervised training from scratch on that labelled
subset only (train.py --label_fraction, the supervised recipe, the same fraction and seed; --scratch_epochs
long, so that it can converge on its few labels), probed on it. The label-efficiency table takes one
configuration per arm and data scale, chosen on the all-labels validation accuracy, at every fraction.

Augmented test views (--test_args "--eval_views K"): one view specification for every cell, whatever its
kind (study_view_spec), kept in sweep.json and stated in results.md.

Outputs in OUT: results.csv (one row per cell, eval epoch and label fraction; kind, budget and step count on each),
results.md (SimCLR against the baselines per data scale and budget; every configuration by validation
accuracy, the chosen one marked; mean ± std over seeds; the label-efficiency table), accuracy_vs_data_scale.png,
heatmap_lr_batch.png, accuracy_vs_label_fraction.png (with --label_fractions).

Passthrough: --train_args "..." is appended to every train.py call (baselines included),
--supervised_args "..." to the supervised baseline's only (e.g. "--batch_size 64"), --test_args "..."
to every test.py call, e.g. --train_args "--temperature 0.2 --warmup_epochs 10". Flags the study sets
itself (dataset, scale, lr, epochs, seed, run_dir, ...) are refused there.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import test
import train
from utils import launch, sweep
from utils.cli import HelpFormatter, common_parser, fraction, positive_int, thread_count
from utils.data.registry import DATASET_CHOICES, DATASETS, canonical_dataset, dataset_sizes
from utils.errors import NonFiniteLossError, UserError, run_cli
from utils.io import atomic_write_json, read_csv
from utils.runtime import resolve_device, run_settings
from utils.recipes import DEFAULT_RECIPE, RECIPE_NAMES, recipe
from utils.presets import (DIGITS_LR, DIGITS_SCRATCH_EPOCHS, DIGITS_VIEWS, FASHION_LR,  # noqa: F401 (tests, docs)
                           FASHION_SCRATCH_EPOCHS, GRID, PRESETS)

SCRIPT = Path(__file__).resolve()
TRAIN_SCRIPT = SCRIPT.parent / "train.py"

# GRID and PRESETS (with the provenance of every preset value) live in utils/presets.py
FEATURE_CACHE = "features"  # OUT/runs/<cell>/features/: test.py --feature_cache, removed once a checkpoint is done
FAILED = "failed.json"  # a cell whose pretraining diverged; skipped on rerun until deleted
TRAIN_RECORD = "sweep_train.json"  # the device a cell was pretrained on
LOGS = "logs"  # OUT/logs/<cell>.log: a worker's output (--jobs > 1, submitit)
RESULTS_LOCK = ".results.lock"  # held while results.csv / results.md are rebuilt
LOCK_WAIT_S = 600  # a worker waits this long for a run folder still held by a dying predecessor
LATER_SETTINGS = ("threads_per_cell", "deterministic", "eval_views")  # study settings older sweep.json files do not hold


def study_view_spec(args: argparse.Namespace) -> dict | None:
    """The one view specification of the augmented test views (test.py --eval_views) for every cell of the study,
    whatever its kind: each field from --test_args' --eval_* flags when given, else the SimCLR arm's own views
    (its train.py settings: what SimCLR learns to be invariant to), else the recipe's; None without --eval_views.
    Passed to every cell as explicit flags (eval_view_flags), so a supervised, random-init or scratch
    checkpoint is scored on the same views as a SimCLR one (test.py alone would take a SimCLR checkpoint's views
    from its config and the others' from the recipe)."""
    if getattr(args, "_view_spec", False) is not False:
        return args._view_spec
    from utils.eval.measures import view_overrides
    from utils.eval.views import SPEC_FIELDS, resolve_view_spec

    spec = None
    probe = _parse_for(test.parse_args, ["--model_path", "x.pth", *args.test_args_list], "--test_args")
    if probe.eval_views > 0:
        simclr = train_flags(args)
        own = {"train_type": "simclr", **{name: getattr(simclr, name) for name in SPEC_FIELDS}}
        try:
            resolved = resolve_view_spec(own, recipe(args.recipe, "simclr"), view_overrides(probe))[0]
        except ValueError as exc:
            raise UserError(f"--test_args --eval_views: {exc}") from None
        spec = {"views_per_image": probe.eval_views, "seed": probe.eval_view_seed,
                **{name: list(v) if isinstance(v := getattr(resolved, name), tuple) else v for name in SPEC_FIELDS}}
    args._view_spec = spec
    return spec


def eval_view_flags(args: argparse.Namespace) -> list[str]:
    """study_view_spec as test.py's --eval_* flags (every field given, so no cell resolves its own)."""
    spec = study_view_spec(args)
    if spec is None:
        return []
    jitter = spec["jitter"]
    strength = round(jitter[0] / 0.8, 10)  # test.py's --eval_jitter_strength s: (0.8 s, 0.8 s, 0.8 s, 0.2 s)
    if any(abs(j - k * strength) > 1e-9 for j, k in zip(jitter, (0.8, 0.8, 0.8, 0.2))):
        raise UserError(f"the SimCLR views' colour jitter {jitter} is not of the form (0.8 s, 0.8 s, 0.8 s, 0.2 s) "
                        "that test.py --eval_jitter_strength takes; give --jitter_strength in --train_args")
    return ["--eval_crop_min_scale", repr(spec["crop_min_scale"]), "--eval_hflip_prob", repr(spec["hflip_prob"]),
            "--eval_jitter_strength", repr(strength), "--eval_jitter_prob", repr(spec["jitter_prob"]),
            "--eval_gray_prob", repr(spec["gray_prob"]), "--eval_blur_prob", repr(spec["blur_prob"])]


def common_passthrough(args: argparse.Namespace) -> list[str]:
    """Flags of this script forwarded unchanged to every train.py and test.py call (study-wide settings:
    the recipe, the CPU threads of a cell, determinism)."""
    return ["--recipe", args.recipe, "--threads", str(args.threads_per_cell)] + (
        ["--deterministic"] if args.deterministic else [])


def _glue_passthrough(argv: list[str]) -> list[str]:
    """'--train_args --flag' -> '--train_args=--flag': argparse would read a lone '--flag' value as an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--train_args", "--test_args", "--supervised_args") and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def learning_rate(value: str) -> float | None:
    """A peak lr > 0, or 'auto' (None): train.py's own."""
    if value.strip().lower() == "auto":
        return None
    try:
        lr = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {value!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (or auto), got {value!r}")
    return lr


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = _glue_passthrough(list(sys.argv[1:] if argv is None else argv))
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS))
    preset = pre.parse_known_args(argv)[0].preset
    # conflict_handler="resolve": --seed of the shared parent becomes an alias of --seeds here.
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, parents=[common_parser()],
                                conflict_handler="resolve")
    grid = p.add_argument_group("grid (each flag replaces that line of GRID; a preset replaces the defaults)")
    shown = lambda key: f"[GRID: {' '.join('auto' if v is None else str(v) for v in GRID[key])}]%(default).0s"  # noqa: E731
    grid.add_argument("--data_scales", type=float, nargs="+", help="fractions of the pretraining set " + shown("data_scales"))
    grid.add_argument("--batch_sizes", type=positive_int, nargs="+", help="SimCLR batch sizes " + shown("batch_sizes"))
    grid.add_argument("--learning_rates", type=learning_rate, nargs="+",
                      help="peak SimCLR lrs; auto: train.py's own rule " + shown("learning_rates"))
    grid.add_argument("--epochs", type=positive_int, nargs="+",
                      help="pretraining epochs (at data scale 1.0 under --budget steps) " + shown("epochs"))
    grid.add_argument("--seeds", "--seed", type=int, nargs="+", help="seeds (subset, init, order, probe split) " + shown("seeds"))
    s = p.add_argument_group("study")
    s.add_argument("--dataset", default="cifar10", choices=DATASET_CHOICES, help="pretraining data")
    s.add_argument("--eval_dataset", default="cifar100", choices=test.EVAL_DATASETS, help="linear-probe data")
    s.add_argument("--budget", nargs="+", choices=sweep.BUDGETS, default=["epochs"],
                   help="epochs: --epochs over each cell's own subset; steps: every cell of a batch size gets the "
                        "steps --epochs take at data scale 1.0 (equal compute across scales); give both for both")
    s.add_argument("--baselines", nargs="*", choices=[*sweep.BASELINES, "none"], default=None,
                   help="reference cells probed like the SimCLR ones: supervised pretraining on the same subsets, "
                        "the random-init backbone, torchvision's ImageNet weights (skipped when not on disk), "
                        "scratch (supervised from scratch on the labelled subset of each --label_fractions value); "
                        "none: no baseline [all; scratch only with a label fraction below 1]%(default).0s")
    s.add_argument("--methods", nargs="+", choices=sweep.METHOD_KINDS, default=["simclr"],
                   help="the self-supervised arms, each on the same grid, budget and probe: SimCLR with the grid's "
                        "lrs, the others with their own recipe's lr at each batch size (docs/methods.md)")
    s.add_argument("--label_fractions", type=fraction, nargs="+", default=[1.0],
                   help="shares of the probe's train labels: every backbone is probed at each (test.py "
                        "--label_fraction, features cached per checkpoint), and scratch trains on each")
    s.add_argument("--scratch_epochs", type=positive_int, default=None,
                   help="epochs of the scratch baseline over its labelled subset, e.g. enough for its training loss "
                        "to converge on those few labels [the grid's --epochs]%(default).0s")
    s.add_argument("--recipe", default=DEFAULT_RECIPE, choices=RECIPE_NAMES,
                   help="the recipe of every train.py and test.py call (SimCLR, supervised baseline, probe); "
                        "the SimCLR lr follows its batch rule unless --learning_rates gives one")
    s.add_argument("--test_num_epochs", type=positive_int, default=None,
                   help="linear-probe epochs [the recipe's probe: 500]%(default).0s")
    s.add_argument("--val_split", type=float, default=0.1,
                   help="fraction of the probe's train split held out for selection (0: nothing is chosen)")
    s.add_argument("--few_label_probe", choices=["lbfgs", "sgd"], default="lbfgs",
                   help="the probe below every label: lbfgs (test.py --solver lbfgs: converged logistic regression, "
                        "l2 chosen on --val_split) or sgd (the recipe's Adam probe, whose 500 epochs are few steps "
                        "on few labels: 500 at 1 %% of Fashion-MNIST, 7 points under a converged fit; "
                        "docs/evaluation.md)")
    s.add_argument("--eval_at", type=positive_int, nargs="*", default=[],
                   help="also evaluate the checkpoints of these epochs (each cell's last epoch always is)")
    s.add_argument("--train_args", default="", help="extra train.py flags for every cell, one quoted string")
    s.add_argument("--supervised_args", default="",
                   help="extra train.py flags for the supervised baseline only, e.g. \"--batch_size 64\"")
    s.add_argument("--test_args", default="", help="extra test.py flags for every evaluation, one quoted string")
    o = p.add_argument_group("run")
    o.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a ready-made study (demo: the quick start; original: the original's grid, both budgets)")
    o.add_argument("--out_dir", default=None, help="sweep folder [sweeps/simclr-<dataset>-<eval_dataset>]%(default).0s")
    o.add_argument("--dry_run", action="store_true",
                   help="print the cells, where they would run and a wall-time estimate from a measured step; train nothing")
    o.add_argument("--report", action="store_true", help="only redraw results.md and the plots from OUT/results.csv")
    o.add_argument("--quiet", action="store_true", help="pass --quiet to train.py and test.py")
    x = p.add_argument_group("parallel and cluster")
    x.add_argument("--jobs", type=positive_int, default=1,
                   help="cells run at once, each in its own process (1: one after another in this process); either "
                        "way a failing cell is reported, the others run and the study exits 1")
    x.add_argument("--devices", nargs="+", default=None,
                   help="devices handed out to the cells, one each [every visible GPU; else cpu]%(default).0s")
    x.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit_local"],
                   help="local: this machine; slurm: one SLURM job per cell (submitit); submitit_local: those jobs "
                        "on this machine")
    x.add_argument("--gpus_per_cell", type=positive_int, default=1,
                   help="GPUs per cell; above 1 a cell's pretraining runs under torchrun (DDP)")
    x.add_argument("--slurm_partition", default=None, help="SLURM partition")
    x.add_argument("--slurm_time", type=positive_int, default=24 * 60, help="SLURM time limit per cell, minutes")
    x.add_argument("--slurm_account", default=None, help="SLURM account (sbatch --account)")
    x.add_argument("--slurm_qos", default=None, help="SLURM quality of service (sbatch --qos)")
    x.add_argument("--threads_per_cell", type=thread_count, default=1,
                   help="intra-op CPU threads of every cell (train.py / test.py --threads), whatever --jobs, "
                        "--devices or --launcher: a cell's numbers depend on it (on CPU, --jobs x this <= cores "
                        "avoids oversubscription)")
    x.add_argument("--deterministic", action="store_true",
                   help="train.py / test.py --deterministic for every cell (deterministic kernels; recorded in "
                        "results.csv)")
    x.add_argument("--cpus_per_cell", type=positive_int, default=None,
                   help="submitit jobs: CPU cores reserved per job (sbatch --cpus-per-task) [max(--threads_per_cell, "
                        "10 per GPU) on SLURM; --threads_per_cell with submitit_local]%(default).0s")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one cell (by name) and exit
    if preset:
        p.set_defaults(**PRESETS[preset])
    args = p.parse_args(argv)
    args.argv = [a for a in argv]
    if args.test_num_epochs is None:
        args.test_num_epochs = recipe(args.recipe, "probe")["epochs"]
    for key in sweep.GRID_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, list(GRID[key]))
    args.dataset, args.eval_dataset = canonical_dataset(args.dataset), canonical_dataset(args.eval_dataset)
    args.out_dir = Path(args.out_dir or f"sweeps/simclr-{args.dataset}-{args.eval_dataset}")
    args.budget = [b for b in sweep.BUDGETS if b in args.budget]
    args.label_fractions = sorted(set(args.label_fractions))
    args.methods = [m for m in sweep.METHOD_KINDS if m in args.methods]
    if args.baselines is None:
        args.baselines = [b for b in sweep.BASELINES if b != "scratch" or min(args.label_fractions) < 1]
    args.baselines = [b for b in sweep.BASELINES if b in args.baselines]
    if any(not (0 < v <= 1) for v in args.data_scales):
        raise UserError(f"--data_scales must be in (0, 1], got {args.data_scales}")
    if not 0 <= args.val_split < 1:
        raise UserError(f"--val_split must be in [0, 1), got {args.val_split}")
    if args.cpus_per_cell and args.launcher == "local":
        raise UserError("--cpus_per_cell reserves cores for submitit jobs (--launcher slurm / submitit_local); "
                        "on this machine a cell's CPU threads are --threads_per_cell")
    for flag in ("train_args", "supervised_args", "test_args"):
        try:
            setattr(args, f"{flag}_list", shlex.split(getattr(args, flag)))
        except ValueError as exc:
            raise UserError(f"--{flag} {getattr(args, flag)!r}: {exc} (quote it as in a shell)") from None
    return args


def study_settings(args: argparse.Namespace) -> dict:
    """What every row of one out_dir must share (kept in sweep.json)."""
    settings = {"dataset": args.dataset, "eval_dataset": args.eval_dataset, "recipe": args.recipe,
                "test_num_epochs": args.test_num_epochs, "threads_per_cell": args.threads_per_cell,
                "deterministic": args.deterministic,
                "val_split": args.val_split, "train_args": args.train_args_list, "test_args": args.test_args_list}
    if args.supervised_args_list:
        settings["supervised_args"] = args.supervised_args_list
    settings["eval_views"] = study_view_spec(args)  # the augmented test views of every cell (None: not measured)
    return settings


def check_study(out_dir: Path, settings: dict, write: bool) -> None:
    path = out_dir / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        # A sweep.json from before threads_per_cell / deterministic existed says nothing about them (its rows
        # have an empty threads column): not a difference.
        diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items()
                 if old.get(k, v if k in LATER_SETTINGS else None) != v]
        diffs += [f"{k}: {old[k]!r} -> None" for k in old if k not in settings]
        if diffs:
            raise UserError(f"{out_dir} holds a study made with other settings ({'; '.join(diffs)}); "
                            "use the same flags or another --out_dir")
    elif write:
        atomic_write_json(path, settings)


# --- the cells and their command lines ---------------------------------------------------------------

def excludes_probe_val(args: argparse.Namespace, kind: str) -> bool:
    """Supervised pretraining on the probe's own train split never sees the probe's validation images (their
    labels would make val_accuracy a training figure): train.py --label_val_split leaves them out."""
    return kind == "supervised" and args.eval_dataset == args.dataset and args.val_split > 0


def train_flags(args: argparse.Namespace, kind: str = "simclr") -> argparse.Namespace:
    """train.py's flags for a cell of `kind`, as the study passes them (--train_args, and --supervised_args for
    supervised cells); a flag train.py refuses is one line naming the study's option."""
    extra = args.supervised_args_list if kind == "supervised" else []
    argv = ["--train_type", kind, "--dataset", args.dataset, *common_passthrough(args), *args.train_args_list, *extra]
    return _parse_for(train.parse_args, argv, "--supervised_args" if extra else "--train_args")


def pretraining_split(args: argparse.Namespace, kind: str) -> str:
    """The split a cell of `kind` trains on (train.py's training_split: SimCLR on STL-10 reads train+unlabeled)."""
    return train.training_split(train_flags(args, kind))


def subset_sizes(args: argparse.Namespace, kind: str = "simclr"):
    """data_scale -> images a cell of `kind` trains on: the seeded subset of the split it reads (exact: counted
    on labels with the split's class counts for a class-balanced set, else on its labels), less the probe's
    validation images where train.py leaves them out (excludes_probe_val)."""
    from utils.data.splits import balanced_labels

    split, info = pretraining_split(args, kind), DATASETS[args.dataset]
    labels = balanced_labels(args.dataset, split, info.num_classes) if info.balanced else None
    if labels is None:
        from utils.data.datasets import load_split
        from utils.data.folder import list_folder

        if args.dataset == "folder":
            labels = list_folder(args.data_dir, "train")[1]  # file names only: nothing is decoded
        else:  # an unbalanced built-in set (digits, mnist): its labels, read once
            labels = load_split(args.dataset, split, args.data_dir).labels
    val = args.val_split if excludes_probe_val(args, kind) else 0.0
    counted: dict[float, int] = {}

    def size(scale: float) -> int:
        if scale not in counted:  # the count does not depend on the seed (per-class counts are fixed)
            counted[scale] = len(train.training_subset(labels, scale, 0, 1.0, val))
        return counted[scale]
    return size


def kind_sizes(args: argparse.Namespace):
    """(data_scale, kind) -> images a cell of that kind trains on (subset_sizes, built once per kind)."""
    by_kind: dict = {}

    def sizes(scale: float, kind: str) -> int:
        if kind not in by_kind:
            by_kind[kind] = subset_sizes(args, kind)
        return by_kind[kind](scale)
    return sizes


def imagenet_weights_missing() -> Path | None:
    from utils.data.weights import imagenet_weights_path

    path = imagenet_weights_path()
    return None if path.is_file() else path


def scratch_fractions(args: argparse.Namespace, baselines: list[str], announce: bool) -> list[float]:
    """The label fractions the scratch baseline trains at. With every label of the pretraining data itself
    (--eval_dataset = --dataset) it would train on the images of the supervised baseline at data scale 1 (the
    same recipe, the train split less the probe's validation split), so that one stands for it and it is not
    run (at the study's budget, not --scratch_epochs)."""
    fractions = list(args.label_fractions)
    if (canonical_dataset(args.eval_dataset) == canonical_dataset(args.dataset) and "supervised" in baselines
            and 1.0 in args.data_scales and 1.0 in fractions):
        fractions.remove(1.0)
        if announce and "scratch" in baselines:
            print("scratch baseline at every label: the supervised baseline at data scale 1 trains on those labels "
                  "(same images, the study's budget), so it is not run twice", flush=True)
    return fractions


def build_cells(args: argparse.Namespace, announce: bool = True) -> list[sweep.Cell]:
    """Every cell of the study, in run order: the SimCLR grid per budget, then the baselines."""
    baselines = list(args.baselines)
    if "imagenet" in baselines and (missing := imagenet_weights_missing()) is not None:
        baselines.remove("imagenet")
        if announce:
            print(f"imagenet baseline skipped: no ImageNet weights at {missing} (offline); place "
                  f"{missing.name} there to include it", flush=True)
    needs_sizes = "steps" in args.budget or dataset_sizes(args.dataset) is not None
    sizes = kind_sizes(args) if needs_sizes else None
    sup_batch = None
    if "supervised" in baselines:
        probe = ["--train_type", "supervised", *common_passthrough(args), *args.train_args_list, *args.supervised_args_list]
        sup_batch = _parse_for(train.parse_args, probe, "--supervised_args").batch_size
    if "scratch" in baselines and sup_batch is None:
        probe = ["--train_type", "supervised", *common_passthrough(args), *args.train_args_list, *args.supervised_args_list]
        sup_batch = _parse_for(train.parse_args, probe, "--supervised_args").batch_size
    cells = sweep.study_cells({k: getattr(args, k) for k in sweep.GRID_KEYS}, args.eval_at, args.budget, baselines,
                              sizes, sup_batch, scratch_fractions(args, baselines, announce), args.scratch_epochs,
                              args.methods)
    if sizes is not None:
        for cell in cells:
            if cell.data_scale is None:
                continue
            n = sizes(cell.data_scale, cell.kind)
            if cell.batch_size > n:
                what = "--supervised_args --batch_size" if cell.kind == "supervised" else "--batch_sizes"
                raise UserError(f"batch size {cell.batch_size} is larger than the {n} images of {args.dataset} at "
                                f"data scale {cell.data_scale:g}; lower {what} or drop that scale from --data_scales")
    return cells


def train_argv(args: argparse.Namespace, cell: sweep.Cell, run_dir: Path, device: str | None = None) -> list[str]:
    """train.py's argv for one cell: the kind, the data, the budget, the shared and passthrough flags."""
    common = ["--dataset", args.dataset, "--seed", str(cell.seed), "--run_dir", str(run_dir),
              "--device", device or args.device, "--data_dir", args.data_dir, "--workers", str(args.workers),
              *common_passthrough(args)] + (["--quiet"] if args.quiet else [])
    if cell.kind == "random":
        return ["--train_type", "simclr", "--epochs", "0", *common, *args.train_args_list]
    if cell.kind == "imagenet":
        return ["--train_type", "supervised", "--pretrained", "true", "--epochs", "0", *common, *args.train_args_list]
    if cell.kind == "scratch":  # the probe's labelled subset of the evaluation data, the supervised recipe
        return ["--train_type", "supervised", "--epochs", str(cell.epochs), *common, "--dataset", args.eval_dataset,
                "--label_fraction", repr(cell.label_fraction), "--label_val_split", repr(args.val_split),
                *args.train_args_list, *args.supervised_args_list]
    length = ["--epochs", str(cell.epochs)] if cell.budget == "epochs" else ["--steps", str(cell.steps)]
    keep = sorted({cell.checkpoint_epoch(e) for e in cell.eval_epochs if e < cell.epochs}
                  - {cell.checkpoint_epoch(cell.epochs)})
    data = ["--data_scale", repr(cell.data_scale), *length] + (["--save_at", *map(str, keep)] if keep else [])
    if cell.kind == "supervised":  # batch and lr from the supervised recipe and --supervised_args
        val = ["--label_val_split", repr(args.val_split)] if excludes_probe_val(args, cell.kind) else []
        return ["--train_type", "supervised", *data, *val, *common, *args.train_args_list, *args.supervised_args_list]
    lr = [] if cell.learning_rate is None else ["--learning_rate", repr(cell.learning_rate)]
    return ["--train_type", cell.kind, "--batch_size", str(cell.batch_size), *lr, *data, *common, *args.train_args_list]


def test_argv(args: argparse.Namespace, cell: sweep.Cell, ckpt: Path, eval_dir: Path, device: str | None = None,
              label_fraction: float = 1.0) -> list[str]:
    labels = [] if label_fraction == 1 else ["--label_fraction", repr(label_fraction)]
    if label_fraction < 1 and args.few_label_probe == "lbfgs":
        labels += ["--solver", "lbfgs"]
    if len(cell_fractions(args, cell)) > 1:  # one pass through the backbone serves every fraction
        labels += ["--feature_cache", str(eval_dir.parent / FEATURE_CACHE)]
    return (["--model_path", str(ckpt), "--dataset", args.eval_dataset, "--test_num_epochs", str(args.test_num_epochs),
             "--val_split", repr(args.val_split), "--run_dir", str(eval_dir), "--seed", str(cell.seed),
             "--device", device or args.device, "--data_dir", args.data_dir, "--workers", str(args.workers),
             *common_passthrough(args), *labels] + (["--quiet"] if args.quiet else [])
            + (args.test_args_list + eval_view_flags(args) if label_fraction == 1
               else without_measures(args.test_args_list)))


MEASURE_FLAGS = ("--eval_views", "--eval_view_seed", "--eval_crop_min_scale", "--eval_hflip_prob", "--eval_jitter_strength",
                 "--eval_jitter_prob", "--eval_gray_prob", "--eval_blur_prob")


def without_measures(argv: list[str]) -> list[str]:
    """--test_args less the measures of the features (--eval_views and its view flags, --knn): the study takes
    them once per checkpoint, with every label; a probe with fewer labels reports its accuracy only."""
    out, skip = [], False
    for token in argv:
        name = token.split("=", 1)[0]
        if skip:
            skip = False
        elif name == "--knn":
            continue
        elif name in MEASURE_FLAGS:
            skip = "=" not in token
        else:
            out.append(token)
    return out


def cell_fractions(args: argparse.Namespace, cell: sweep.Cell) -> list[float]:
    """The label fractions a cell is probed at: its own for scratch, every --label_fractions value otherwise."""
    return [cell.label_fraction] if cell.kind == "scratch" else list(args.label_fractions)


def evaluations(args: argparse.Namespace, cell: sweep.Cell) -> list[tuple[int, float]]:
    """(eval epoch, label fraction) pairs of a cell, epochs outermost (a checkpoint's fractions share a cache)."""
    return [(e, f) for e in cell.eval_epochs for f in cell_fractions(args, cell)]


def _parse_for(parse, argv: list[str], flag: str) -> argparse.Namespace:
    """Run a script's parser on argv; its complaint becomes one line naming `flag` (not this script)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        why = lines[-1].split("error: ", 1)[-1] if lines else "refused"
        raise UserError(f"{flag} was refused by {parse.__module__}.py: {why}") from None
    except UserError as exc:
        raise UserError(f"{flag} was refused by {parse.__module__}.py: {exc}") from None


def _study_flags(clash: list[str]) -> str:
    """' (give --threads_per_cell to this script)' for passthrough flags the study has its own flag for."""
    own = [f"--{'threads_per_cell' if k == 'threads' else k}" for k in clash if k in ("threads", "deterministic")]
    return f" (give {' and '.join(own)} to this script)" if own else ""


def check_passthrough(args: argparse.Namespace, cells: list[sweep.Cell], out_dir: Path) -> None:
    """Parse the real argv of one cell of each kind with train.py's and test.py's parsers; refuse flags
    that override what the study sets."""
    firsts = {}
    for cell in cells:
        firsts.setdefault((cell.kind, cell.budget), cell)
    for (kind, budget), cell in firsts.items():
        run_dir = out_dir / sweep.RUNS / cell.name
        want = {"dataset": args.dataset, "seed": cell.seed, "run_dir": str(run_dir), "overwrite": False,
                "threads": args.threads_per_cell, "deterministic": args.deterministic}
        if kind in ("random", "imagenet"):
            want.update(epochs=0, steps=None, pretrained=kind == "imagenet")
        elif kind == "scratch":
            want.update(dataset=args.eval_dataset, train_type="supervised", data_scale=1.0, epochs=cell.epochs,
                        steps=None, label_fraction=cell.label_fraction, label_val_split=args.val_split)
        else:
            want.update(train_type=kind, data_scale=cell.data_scale, batch_size=cell.batch_size,
                        label_fraction=1.0, label_val_split=args.val_split if excludes_probe_val(args, kind) else 0.0,
                        save_at=sorted({cell.checkpoint_epoch(e) for e in cell.eval_epochs if e < cell.epochs}
                                       - {cell.checkpoint_epoch(cell.epochs)}),
                        epochs=cell.epochs if budget == "epochs" else None,
                        steps=cell.steps if budget == "steps" else None)
            if kind in sweep.METHOD_KINDS:  # the grid's lr, or (auto) train.py's own, never one from --train_args
                bare = argparse.Namespace(**{**vars(args), "train_args_list": []})
                want["learning_rate"] = (cell.learning_rate if cell.learning_rate is not None
                                         else train.parse_args(train_argv(bare, cell, run_dir)).learning_rate)
        flag = "--supervised_args" if kind in ("supervised", "scratch") and args.supervised_args_list else "--train_args"
        parsed = vars(_parse_for(train.parse_args, train_argv(args, cell, run_dir), flag))
        clash = [k for k, v in want.items() if parsed.get(k) != v]
        if clash:
            raise UserError(f"{flag} must not set {', '.join(clash)}: the study sets those itself{_study_flags(clash)}")
    cell = cells[0]
    want = {"model_path": str(out_dir / "x.pth"), "dataset": args.eval_dataset, "test_num_epochs": args.test_num_epochs,
            "val_split": args.val_split, "run_dir": str(out_dir / "eval"), "seed": cell.seed, "finetune": False,
            "label_fraction": None, "labels_per_class": None,
            "threads": args.threads_per_cell, "deterministic": args.deterministic}
    parsed = vars(_parse_for(test.parse_args, test_argv(args, cell, out_dir / "x.pth", out_dir / "eval"), "--test_args"))
    clash = [k for k, v in want.items() if parsed.get(k) != v]
    if clash:
        raise UserError(f"--test_args must not set {', '.join(clash)}: the study sets those itself{_study_flags(clash)}")


# --- one cell: pretrain (or resume, or skip), then evaluate its missing eval epochs -------------------

def describe_device(name: str) -> str:
    import torch

    device = resolve_device(name)
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def eval_dir(run_dir: Path, args: argparse.Namespace, epoch: int, label_fraction: float = 1.0) -> Path:
    tail = "" if label_fraction == 1 else f"-labels{label_fraction:g}"
    return run_dir / f"eval-{args.eval_dataset}-epoch{epoch:04d}{tail}"


def collect_rows(out_dir: Path) -> list[dict]:
    """Every finished (cell, eval epoch) of this out_dir, from its record.json."""
    return [json.loads(p.read_text(encoding="utf-8"))["row"]
            for p in sorted((out_dir / sweep.RUNS).glob(f"*/eval-*/{sweep.RECORD}"))]


@contextlib.contextmanager
def results_lock(out_dir: Path):
    """An exclusive lock on OUT/.results.lock (flock): one process at a time rebuilds results.csv / .md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / RESULTS_LOCK, "a") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(out_dir: Path, plots: bool = False) -> list[dict]:
    """Rebuild results.csv from every record (one row per cell and eval epoch) and results.md, under the lock."""
    with results_lock(out_dir):
        found = collect_rows(out_dir)
        if not found:
            return []
        sweep.write_results_csv(out_dir / sweep.RESULTS_CSV, found)
        rows = sweep.read_results(out_dir / sweep.RESULTS_CSV)
        plots_missing = not all((out_dir / n).exists() for n in (sweep.PLOT_SCALE, sweep.PLOT_HEATMAP))
        sweep.write_report(out_dir, rows, plots=plots or plots_missing)
        return rows


def wait_for_run_dir(run_dir: Path) -> None:
    """Take the run folder's lock, waiting while a previous process (a killed study's worker finishing its
    last step, a duplicate SLURM job) still holds it. train.main then finds the lock already ours."""
    from utils.train.rundir import lock_run_dir

    if not run_dir.is_dir():
        return
    deadline, said = time.monotonic() + LOCK_WAIT_S, False
    while True:
        try:
            lock_run_dir(run_dir)
            return
        except UserError:
            if time.monotonic() > deadline:
                raise
            if not said:
                print(f"waiting for the process still holding {run_dir}", flush=True)
                said = True
            time.sleep(1.0)


def run_train(args: argparse.Namespace, argv: list[str], gpus: int) -> None:
    """train.main in this process, or under torchrun with `gpus` processes (DDP) for a multi-GPU cell."""
    if gpus <= 1:
        train.main(argv)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
           str(TRAIN_SCRIPT), *argv]
    rc = subprocess.call(cmd)
    if rc == 3:
        raise NonFiniteLossError(f"non-finite loss (torchrun train.py exit 3; see {argv[argv.index('--run_dir') + 1]})")
    if rc in (130, 143):
        raise train.Interrupted(f"torchrun train.py stopped (exit {rc})", rc - 128)
    if rc != 0:
        raise UserError(f"torchrun train.py failed with exit code {rc}")


def run_cell(args: argparse.Namespace, cell: sweep.Cell, out_dir: Path, tag: str, device: str | None = None) -> int:
    """Pretrain (or resume, or skip) one cell, then evaluate its missing eval epochs; returns rows added."""
    device = device or args.device
    run_dir = out_dir / sweep.RUNS / cell.name
    todo = [(e, f) for e, f in evaluations(args, cell) if not (eval_dir(run_dir, args, e, f) / sweep.RECORD).exists()]
    if not todo:
        print(f"{tag} {cell.name}: done, read back from its records", flush=True)
        return 0
    if (run_dir / FAILED).exists():
        print(f"{tag} {cell.name}: skipped, its pretraining diverged ({run_dir / FAILED}; delete it to retry)", flush=True)
        return 0
    if not (run_dir / "final.pth").exists():
        wait_for_run_dir(run_dir)
        if (run_dir / "final.pth").exists():  # a predecessor finished it meanwhile
            from utils.train.rundir import unlock_run_dir

            unlock_run_dir(run_dir)
    if not (run_dir / "final.pth").exists():
        resuming = (run_dir / "last.pth").exists()
        print(f"{tag} {cell.name}: pretraining{' (resuming from last.pth)' if resuming else ''}", flush=True)
        argv = train_argv(args, cell, run_dir, device)
        try:
            run_train(args, argv, args.gpus_per_cell if cell.epochs else 1)
        except NonFiniteLossError as exc:
            atomic_write_json(run_dir / FAILED, {"error": str(exc), "train_argv": argv})
            print(f"{tag} {cell.name}: pretraining diverged, cell skipped: {exc}", flush=True)
            return 0
        atomic_write_json(run_dir / TRAIN_RECORD, {"device": describe_device(device), "train_argv": argv})
    history = read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    record = run_dir / TRAIN_RECORD
    trained_on = json.loads(record.read_text())["device"] if record.exists() else describe_device(device)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    used, ran = config.get("args", {}), config.get("env", {})
    added = 0
    for epoch, label_fraction in todo:
        final = epoch == cell.epochs
        ckpt = run_dir / ("final.pth" if final else f"epoch_{cell.checkpoint_epoch(epoch):04d}.pth")
        if not ckpt.exists():
            print(f"{tag} {cell.name}: no {ckpt.name} (pretrained without --eval_at {epoch}); not evaluated", flush=True)
            continue
        labels = "" if label_fraction == 1 else f", {label_fraction:g} of the labels"
        print(f"{tag} {cell.name}: linear probe on {args.eval_dataset}{labels}, checkpoint of epoch {epoch}", flush=True)
        edir = eval_dir(run_dir, args, epoch, label_fraction)
        argv = test_argv(args, cell, ckpt, edir, device, label_fraction)
        evaluation = test.main(argv)
        trained = cell.kind not in ("random", "imagenet")  # the lr and batch the run used
        row = sweep.make_row(cell, epoch, history, evaluation, study_settings(args), trained_on,
                             ckpt.relative_to(out_dir).as_posix(),
                             learning_rate=used.get("learning_rate") if trained else None,
                             batch_size=used.get("batch_size") if trained else None,
                             label_fraction=label_fraction,
                             threads=ran.get("threads", evaluation.get("runtime", {}).get("threads")),
                             deterministic=used.get("deterministic", args.deterministic))
        atomic_write_json(edir / sweep.RECORD, {"row": row, "test_argv": argv})
        if all((eval_dir(run_dir, args, epoch, f) / sweep.RECORD).exists() for f in cell_fractions(args, cell)):
            shutil.rmtree(run_dir / FEATURE_CACHE, ignore_errors=True)  # this checkpoint's fractions are done
        publish(out_dir)  # after every row: a kill loses no finished evaluation
        added += 1
    return added


# --- many cells: one after another here, N worker processes, or submitit jobs ----------------------

def pending_cells(args: argparse.Namespace, cells: list[sweep.Cell], out_dir: Path) -> list[sweep.Cell]:
    def unfinished(cell):
        run_dir = out_dir / sweep.RUNS / cell.name
        return not (run_dir / FAILED).exists() and any(
            not (eval_dir(run_dir, args, e, f) / sweep.RECORD).exists() for e, f in evaluations(args, cell))
    return [c for c in cells if unfinished(c)]


def run_here(args: argparse.Namespace, cells: list[sweep.Cell], out_dir: Path) -> list[str]:
    """--jobs 1: the cells one after another in this process; returns the cells that failed. A cell's error
    (e.g. a probe whose loss became non-finite) is recorded as with --jobs N, its traceback in
    OUT/logs/<cell>.log, and the remaining cells run; an interruption (Ctrl-C, SIGTERM) stops the study."""
    failed = []
    for i, cell in enumerate(cells, 1):
        try:
            run_cell(args, cell, out_dir, f"[{i}/{len(cells)}]")
        except (train.Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001  (the cell's own error: reported, the others go on)
            failed.append(cell.name)
            log = out_dir / LOGS / f"{cell.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as f:
                traceback.print_exc(file=f)
            print(f"{cell.name}: failed: {type(exc).__name__}: {exc} (traceback in {log})", flush=True)
    return failed


def run_worker(args: argparse.Namespace, out_dir: Path) -> dict:
    launch.die_with_parent()
    cell = next((c for c in build_cells(args, announce=False) if c.name == args.worker), None)
    if cell is None:
        raise UserError(f"--worker: no cell {args.worker} in this study")
    added = run_cell(args, cell, out_dir, f"[{cell.name}]", args.device)
    return {"out_dir": str(out_dir), "cell": cell, "added": added}


# --- dry run, report, main ------------------------------------------------------------------------------

def dry_run(args: argparse.Namespace, cells: list[sweep.Cell], out_dir: Path) -> float | None:
    """Print each cell's status, where it would run and its estimated cost from a measured step time;
    returns the estimated wall time (seconds) of the whole study with --jobs cells at once."""
    places = launch.slots(args) if args.launcher == "local" else [{"device": args.device, "where": f"{args.launcher} job"}]
    wanted = places[0]["device"] if args.launcher == "local" else args.device
    try:
        device = resolve_device(wanted)
    except UserError:  # planning for another machine (a GPU node, from a login node): measure what is here
        device = resolve_device("auto")
        print(f"{wanted} is not on this machine: the step time is measured on {device}", flush=True)
    image_size = train_flags(args).image_size or DATASETS[args.dataset].default_image_size or 64
    pre, post = dataset_sizes(args.dataset), dataset_sizes(args.eval_dataset)
    sizes = kind_sizes(args) if pre is not None or "steps" in args.budget else None
    trained = [c for c in cells if c.kind in sweep.METHOD_KINDS + ("supervised",)]
    cap = sweep.MEASURE_CAP.get(device.type, max([c.batch_size for c in trained] or [1]))
    with run_settings(args.threads_per_cell, args.deterministic):  # measured as a cell runs
        measured = {b: sweep.measure_step_seconds(b, image_size, device, cap)
                    for b in sorted({min(c.batch_size, cap) for c in trained} or {min(16, cap)})}
    for t in measured.values():
        print(f"measured on {device}: SimCLR step {t['train_s_per_image'] * t['batch']:.3f} s for {t['batch']} images "
              f"(two views) = {1 / t['train_s_per_image']:.1f} images/s; feature pass "
              f"{1 / t['forward_s_per_image']:.1f} images/s", flush=True)
    forward = next(iter(measured.values()))["forward_s_per_image"]
    if any(c.kind == "imagenet" for c in cells):  # its probe runs at 224 px through the ImageNet stem
        with run_settings(args.threads_per_cell, args.deterministic):
            forward_224 = sweep.measure_step_seconds(1, 224, device, 1)["forward_s_per_image"]
    free_at = [0.0] * len(places)
    total_known, work = True, 0.0
    print(f"{'#':>3}  {'cell':<48} {'eval epochs':<12} {'status':<22} {'images':>7} {'steps':>7} {'estimate':>9}  where")
    for i, cell in enumerate(cells, 1):
        run_dir = out_dir / sweep.RUNS / cell.name
        todo = [e for e, f in evaluations(args, cell) if not (eval_dir(run_dir, args, e, f) / sweep.RECORD).exists()]
        history = read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
        n = sizes(cell.data_scale, cell.kind) if sizes is not None and cell.data_scale is not None else None
        if cell.kind == "scratch" and post is not None:  # the labelled subset of the probe's train split
            n = max(1, round(cell.label_fraction * post[0] * (1 - args.val_split)))
        total_steps = (cell.steps if cell.budget == "steps" else cell.epochs * (n // cell.batch_size)) \
            if n is not None and cell.epochs else (0 if not cell.epochs else None)
        done_steps = int(history[-1].get("step") or 0) if history else 0
        if (run_dir / "final.pth").exists():
            done_steps = total_steps or 0
        status = ("done" if not todo else "diverged" if (run_dir / FAILED).exists()
                  else "evaluate" if total_steps is not None and done_steps >= total_steps
                  else f"resume after step {done_steps}" if done_steps else "new")
        seconds = None
        if status in ("done", "diverged"):
            seconds = 0.0
        elif total_steps is not None and post is not None:
            per_image = measured[min(cell.batch_size, cap)]["train_s_per_image"] if cell.epochs else 0.0
            if cell.kind in ("supervised", "scratch"):
                per_image /= 2  # one view instead of two
            # one feature pass per checkpoint: its label fractions share the cached features
            probe = len(set(todo)) * sum(post) * (forward_224 if cell.kind == "imagenet" else forward)
            seconds = (total_steps - done_steps) * (cell.batch_size or 0) * per_image + probe
            if wanted == "cpu" and args.launcher == "local":  # the cells at once share the cores
                seconds *= max(1.0, len(places) * args.threads_per_cell / launch.available_cores())
        total_known = total_known and seconds is not None
        slot = min(range(len(places)), key=lambda k: free_at[k])
        if args.launcher == "local":
            free_at[slot] += seconds or 0.0
        work += seconds or 0.0
        evals = ",".join(map(str, cell.eval_epochs)) + ("" if cell_fractions(args, cell) == [1.0] else " @ labels "
                                                         + ",".join(f"{f:g}" for f in cell_fractions(args, cell)))
        print(f"{i:>3}  {cell.name:<48} {evals:<12} {status:<22} "
              f"{n if n is not None else '–':>7} {total_steps if total_steps is not None else '?':>7} "
              f"{sweep.format_seconds(seconds):>9}  {places[slot]['where']}")
    wall = max(free_at) if args.launcher == "local" else None
    if not total_known:
        print(f"total estimate: unknown (dataset size unknown) for {len(cells)} cells", flush=True)
        return None
    if args.launcher == "local":
        print(f"total estimate: {sweep.format_seconds(wall)} wall time for {len(cells)} cells, {len(places)} at a time "
              f"on {', '.join(sorted({p['where'] for p in places}))} ({sweep.format_seconds(work)} of cell time; model "
              f"steps and probe feature passes only: augmentation, data loading and probe head training not "
              f"included)", flush=True)
        return wall
    print(f"total estimate: {sweep.format_seconds(work)} of cell time in {len(cells)} {args.launcher} jobs (wall time: "
          f"the longest job plus queueing)", flush=True)
    return work


def report(args: argparse.Namespace, out_dir: Path) -> dict:
    """--report: results.md and the plots from results.csv alone; a damaged file is refused, naming the row,
    and never replaces a good report by an empty one."""
    csv_path = out_dir / sweep.RESULTS_CSV
    if not csv_path.exists():
        raise UserError(f"--report: no {csv_path}; run the sweep first")
    try:
        rows = sweep.read_results(csv_path)
    except (ValueError, OSError) as exc:
        raise UserError(f"--report: cannot use {csv_path}: {exc}; rerun the study without --report to rebuild it "
                        "from the cells' records (nothing was rewritten)") from None
    for path in sweep.write_report(out_dir, rows, plots=True) or [out_dir / sweep.RESULTS_MD]:
        print(f"wrote {path}")
    return {"out_dir": str(out_dir), "rows": rows, "chosen": sweep.choose(sweep.aggregate(rows))}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out_dir = args.out_dir
    if args.report:
        return report(args, out_dir)
    if args.worker:
        return run_worker(args, out_dir)
    cells = build_cells(args)
    if not cells:
        raise UserError("no cells: give the grid, or --baselines")
    check_passthrough(args, cells, out_dir)
    check_study(out_dir, study_settings(args), write=not args.dry_run)
    launch.warn_oversubscription(args)
    n_arms = sum(c.kind in args.methods for c in cells)
    arms = ", ".join(sweep.KIND_LABELS[m] for m in args.methods)
    arms = f"self-supervised: {arms};" if len(args.methods) > 1 else f"{arms},"
    print(f"{len(cells)} cells ({n_arms} {arms} {len(cells) - n_arms} baselines: "
          f"{', '.join(sorted({c.kind for c in cells if c.kind not in args.methods})) or 'none'}): data scales "
          f"{args.data_scales}, batch sizes {args.batch_sizes}, lrs {['auto' if v is None else v for v in args.learning_rates]}, "
          f"epochs {args.epochs}, budget {' and '.join(args.budget)}, seeds {args.seeds}, eval at {args.eval_at or 'the end'}; "
          f"{args.dataset} -> linear probe on {args.eval_dataset}; out_dir {out_dir}", flush=True)
    if args.dry_run:
        return {"out_dir": str(out_dir), "cells": cells, "estimate_s": dry_run(args, cells, out_dir)}

    failed: list[str] = []
    before = len(collect_rows(out_dir))
    def command(cell: sweep.Cell, device: str) -> list[str]:
        return [sys.executable, str(SCRIPT), *args.argv, "--worker", cell.name, "--device", device]

    if args.launcher != "local":
        failed = launch.run_submitit(args, pending_cells(args, cells, out_dir), out_dir, command)
    elif args.jobs > 1:
        for place in launch.slots(args):
            resolve_device(place["device"] if place["device"] != "cuda" else place["where"].split("+")[0])
        failed = launch.run_local_jobs(args, pending_cells(args, cells, out_dir), out_dir / LOGS, command,
                                       on_interrupt=lambda: publish(out_dir))
    else:
        failed = run_here(args, cells, out_dir)
    found = collect_rows(out_dir)
    added = len(found) - before
    rows = publish(out_dir, plots=bool(added))
    chosen = sweep.choose(sweep.aggregate(rows))
    print(f"{len(rows)} rows in {out_dir / sweep.RESULTS_CSV} ({added} new); table in {out_dir / sweep.RESULTS_MD}",
          flush=True)
    if chosen is not None:
        print(f"chosen by validation accuracy: {sweep.config_text(chosen)}: val {chosen['val_accuracy_mean']:.2f} %, "
              f"test {chosen['test_accuracy_mean']:.2f} %", flush=True)
    if failed:
        print(f"{len(failed)} cells failed: {', '.join(failed)}; their logs are in {out_dir / LOGS}; rerun the same "
              "command to retry them", file=sys.stderr, flush=True)
    return {"out_dir": str(out_dir), "rows": rows, "chosen": chosen, "cells": cells, "added": added, "failed": failed}


def cli(argv: list[str] | None = None) -> None:
    """Command-line entry: an interrupted pretraining (last.pth saved) exits 128 + signum, like train.py;
    failed cells exit 1 after the others have finished."""
    try:
        result = main(argv)
    except train.Interrupted as exc:
        print(f"interrupted: {exc}\nsweep: results.csv holds every finished evaluation; rerun the same command to "
              "resume the sweep", file=sys.stderr, flush=True)
        raise SystemExit(128 + getattr(exc, "signum", 2)) from None
    if result.get("failed"):
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(cli)
