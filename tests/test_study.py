"""The study at scale (simclr_train.py): budgets, baselines, damaged results, cells in worker processes
and in submitit jobs.

    python -m pytest tests/test_study.py -q -m "not slow"   # fakes for train.main / test.main
    python -m pytest tests/test_study.py -q                  # + real worker processes and submitit jobs

The fast tests replace train.main / test.main with fakes that parse the real argv and write what the real
scripts write (metrics.csv with its step column, config.json, checkpoints). The slow ones run the real
scripts in separate processes on a 40-image folder dataset at 16 px.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import simclr_train
import test as test_script
import train
from utils import launch, sweep
from utils.errors import UserError, run_cli
from train import training_subset
from utils.io import atomic_write_csv, atomic_write_json, read_csv

ROOT = Path(__file__).resolve().parent.parent
BASE = ["--dataset", "synthetic", "--eval_dataset", "synthetic", "--device", "cpu", "--quiet", "--workers", "0",
        "--test_num_epochs", "2"]


class Fakes:
    """train.main / test.main stand-ins on the synthetic set (2,000 train images, 10 classes)."""

    def __init__(self):
        self.trained: list[object] = []
        self.tested: list[object] = []

    def train_main(self, argv):
        args = train.parse_args(argv)
        run = Path(args.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        assert not (run / "final.pth").exists(), "a finished cell was trained again"
        self.trained.append(args)
        rows = []
        if args.steps is not None or args.epochs:
            spe = sweep.subset_size(2000, 10, args.data_scale) // args.batch_size
            epochs = math.ceil(args.steps / spe) if args.steps else args.epochs
            total = args.steps or epochs * spe
            rows = [{"epoch": e, "step": min(e * spe, total), "loss": 5.0 - 0.01 * e, "lr_first": 0.1, "lr_last": 0.1,
                     "images_per_s": 100.0, "seconds": 1.0} for e in range(1, epochs + 1)]
            atomic_write_csv(run / "metrics.csv", rows, train.METRIC_FIELDS)
        atomic_write_json(run / "config.json", {"args": vars(args), "env": {"threads": args.threads}})
        for e in args.save_at:
            (run / f"epoch_{e:04d}.pth").write_bytes(b"fake")
        (run / "final.pth").write_bytes(b"fake")
        return {"run_dir": str(run), "final": str(run / "final.pth"), "history": rows}

    def test_main(self, argv):
        args = test_script.parse_args(argv)
        self.tested.append(args)
        assert Path(args.model_path).exists()
        h = zlib.crc32(args.model_path.encode())
        return {"test_accuracy": 20 + h % 6000 / 100, "test_loss": 1.5, "val_accuracy": 20 + (h >> 8) % 6000 / 100,
                "val_loss": 1.5, "seconds": {"total": 1.0}}


@pytest.fixture
def fakes(monkeypatch):
    f = Fakes()
    monkeypatch.setattr(train, "main", f.train_main)
    monkeypatch.setattr(test_script, "main", f.test_main)
    return f


@pytest.fixture
def no_imagenet_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


# --- budgets and baselines --------------------------------------------------------------------------

def test_steps_budget_gives_every_scale_the_steps_of_scale_one(tmp_path, fakes, no_imagenet_weights, capsys):
    out = tmp_path / "study"
    res = simclr_train.main([*BASE, "--out_dir", str(out), "--data_scales", "0.05", "0.1", "1.0", "--batch_sizes", "50",
                             "--learning_rates", "0.3", "--epochs", "2", "--eval_at", "1", "--budget", "epochs", "steps",
                             "--baselines", "supervised", "random", "imagenet", "--supervised_args", "--batch_size 25"])
    assert "imagenet baseline skipped: no ImageNet weights at" in capsys.readouterr().out
    rows = read_csv(out / sweep.RESULTS_CSV)
    keys = [(r["kind"], r["budget"], r["data_scale"], r["eval_epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(res["rows"])
    got = {k: (int(r["steps"]), int(r["train_epochs"])) for k, r in zip(keys, rows)}
    # 2,000 images at batch 50: 40 steps per epoch at scale 1.0, so 2 epochs = 80 steps for every scale.
    spe = {"0.05": 2, "0.1": 4, "1.0": 40}
    for scale in ("0.05", "0.1"):
        assert got[("simclr", "steps", scale, "2")] == (80, 80 // spe[scale])
        assert got[("simclr", "steps", scale, "1")] == (40, 40 // spe[scale])  # half the steps: eval at epoch 1
        assert got[("simclr", "epochs", scale, "2")] == (2 * spe[scale], 2)
        # supervised: its own batch (25), never the probe's validation split (10 % of each class: 200 images):
        # 2 epochs of the 1,800 images left at scale 1.0 = 2 x 72 = 144 steps
        assert got[("supervised", "steps", scale, "2")][0] == 144
    # At scale 1.0 both budgets are one run, run once as the epochs cell.
    assert got[("simclr", "epochs", "1.0", "2")] == (80, 2) and ("simclr", "steps", "1.0", "2") not in got
    assert got[("random", "epochs", "", "0")] == (0, 0)
    assert not any(k[0] == "imagenet" for k in got)

    simclr = [a for a in fakes.trained if a.train_type == "simclr" and a.epochs != 0]
    supervised = [a for a in fakes.trained if a.train_type == "supervised"]
    assert {(a.data_scale, a.seed) for a in supervised} == {(a.data_scale, a.seed) for a in simclr}
    assert all(a.label_val_split == 0.1 for a in supervised) and all(a.label_val_split == 0 for a in simclr)
    assert all(a.batch_size == 25 for a in supervised) and all(a.batch_size == 50 for a in simclr)
    assert sorted(a.steps for a in simclr if a.steps) == [80, 80] and all(a.save_at for a in simclr if a.steps)
    randoms = [a for a in fakes.trained if a.epochs == 0]
    assert len(randoms) == 1 and randoms[0].train_type == "simclr" and randoms[0].steps is None

    md = (out / sweep.RESULTS_MD).read_text()
    assert "## SimCLR against the baselines" in md and "random init" in md
    assert "**epochs budget" in md and "**steps budget" in md
    steps_block = md.split("**steps budget")[1].split("\n\n")[1]
    assert [line.split("|")[1].strip() for line in steps_block.splitlines()[2:]] == ["0.05", "0.1", "1"]
    assert (out / sweep.PLOT_SCALE).stat().st_size > 1000


def test_imagenet_baseline_runs_when_the_weights_are_on_disk(tmp_path, fakes, monkeypatch):
    from utils.data.weights import imagenet_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    imagenet_weights_path().parent.mkdir(parents=True)
    imagenet_weights_path().write_bytes(b"weights")
    out = tmp_path / "study"
    res = simclr_train.main([*BASE, "--out_dir", str(out), "--data_scales", "0.05", "--batch_sizes", "50",
                             "--learning_rates", "0.3", "--epochs", "1", "--baselines", "imagenet", "--seeds", "0", "1"])
    imagenet = [a for a in fakes.trained if a.pretrained]
    assert len(imagenet) == 2 and all(a.epochs == 0 and a.train_type == "supervised" for a in imagenet)
    assert sorted(r["kind"] for r in res["rows"]) == ["imagenet", "imagenet", "simclr", "simclr"]
    assert "ImageNet weights" in (out / sweep.RESULTS_MD).read_text()


def test_learning_rate_auto_passes_none_and_records_the_one_used(tmp_path, fakes):
    out = tmp_path / "study"
    res = simclr_train.main([*BASE, "--out_dir", str(out), "--data_scales", "0.05", "--batch_sizes", "50",
                             "--epochs", "1", "--baselines", "none"])  # GRID's lr: auto
    assert len(fakes.trained) == 1 and "--learning_rate" not in " ".join(
        simclr_train.train_argv(simclr_train.parse_args([*BASE, "--data_scales", "0.05"]), res["cells"][0], out))
    assert res["cells"][0].name == "ds0.05_bs50_lrauto_ep1_seed0"
    assert res["rows"][0]["learning_rate"] == fakes.trained[0].learning_rate  # what train.py chose, recorded


# --- bad passthrough flags and damaged results.csv ------------------------------------------------------

def test_passthrough_mistakes_are_one_line_naming_the_flag(tmp_path, capsys):
    argv = [*BASE, "--out_dir", str(tmp_path / "s"), "--baselines", "none", "--dry_run", "--batch_sizes", "50"]
    cases = [(["--train_args", "--temperature '0.2"], "--train_args \"--temperature '0.2\": No closing quotation"),
             (["--test_args", "--no_such_flag 1"], "--test_args was refused by test.py: unrecognized arguments: "
                                                   "--no_such_flag 1"),
             (["--train_args", "--temperature x"], "--train_args was refused by train.py: argument --temperature"),
             (["--baselines", "supervised", "--supervised_args", "--data_scale 0.5"],
              "--supervised_args must not set data_scale")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as info:
            run_cli(simclr_train.cli, [*argv, *extra])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and len(err.splitlines()) == 1 and "simclr_train.py:" not in err, err
        assert err.startswith(f"error: {message}"), err
    assert not (tmp_path / "s").exists()


def test_report_refuses_a_damaged_results_csv_and_keeps_the_good_report(tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    rows = [{"dataset": "synthetic", "data_scale": s, "batch_size": 50, "learning_rate": 0.3, "epochs": 2,
             "eval_epoch": 2, "seed": 0, "eval_dataset": "synthetic", "val_split": 0.1, "probe_epochs": 2,
             "val_accuracy": 50.0 + s, "test_accuracy": 40.0 + s, "test_loss": 1.0, "kind": "simclr",
             "budget": "epochs", "steps": 4} for s in (0.1, 0.5)]
    sweep.write_results_csv(out / sweep.RESULTS_CSV, rows)
    simclr_train.main(["--report", "--out_dir", str(out)])
    good_md = (out / sweep.RESULTS_MD).read_bytes()
    good_csv = (out / sweep.RESULTS_CSV).read_bytes()
    header, first, second = good_csv.decode().splitlines()
    cases = {
        "truncated": (good_csv[: len(header) + len(first) + 12], "row 3 has fewer fields than the header"),
        "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20, "not text"),
        "non-numeric": ("\n".join([header, first.replace(",2,0,", ",two,0,", 1), second]).encode(), "row 2: invalid"),
        "nan accuracy": ("\n".join([header, first, second.replace(",40.5,", ",nan,")]).encode(), "row 3: test_accuracy"),
        "empty": (b"", "it is empty"),
        "header only": (header.encode() + b"\n", "it holds no rows"),
        "foreign": (b"a,b\n1,2\n", "its header lacks dataset"),
    }
    for name, (data, why) in cases.items():
        (out / sweep.RESULTS_CSV).write_bytes(data)
        with pytest.raises(SystemExit) as info:
            run_cli(simclr_train.cli, ["--report", "--out_dir", str(out)])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and len(err.splitlines()) == 1, (name, err)
        assert why in err and "rerun the study without --report to rebuild it" in err, (name, err)
        assert (out / sweep.RESULTS_MD).read_bytes() == good_md, name


# --- dry run: where each cell runs, the wall time of --jobs ---------------------------------------------

def test_dry_run_places_cells_on_devices_and_estimates_the_wall_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "main", lambda argv: pytest.fail("dry run trained"))
    monkeypatch.setattr(sweep, "measure_step_seconds",
                        lambda bs, size, device, cap=None: {"batch": min(bs, cap), "train_s_per_image": 0.1,
                                                            "forward_s_per_image": 0.01})
    argv = [*BASE, "--out_dir", str(tmp_path / "s"), "--dry_run", "--data_scales", "0.1", "0.2", "--learning_rates",
            "0.3", "--batch_sizes", "50", "--epochs", "2", "--test_num_epochs", "5", "--baselines", "none"]
    # 10 %: 200 images x 2 epochs x 0.1 s + 2,500 x 0.01 s = 65 s; 20 %: 105 s (as in test_sweep).
    assert simclr_train.main(argv)["estimate_s"] == pytest.approx(65 + 105)
    capsys.readouterr()
    res = simclr_train.main([*argv, "--jobs", "2", "--devices", "cuda:0", "cuda:1"])
    assert res["estimate_s"] == pytest.approx(105)  # the two cells side by side
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if "_seed0" in line]
    assert lines[0].endswith("cuda:0") and lines[1].endswith("cuda:1")
    assert "total estimate: 1m 45s wall time for 2 cells, 2 at a time on cuda:0, cuda:1" in printed
    assert not (tmp_path / "s").exists()


def test_original_preset_is_the_original_grid_with_both_budgets_and_baselines(no_imagenet_weights):
    args = simclr_train.parse_args(["--preset", "original"])
    assert (args.dataset, args.eval_dataset, args.data_scales, args.batch_sizes, args.epochs, args.eval_at) == (
        "cifar10", "cifar100", [0.1, 0.25, 0.5, 1.0], [256, 512], [250], [50, 100])
    assert args.learning_rates == [None] and args.budget == ["epochs", "steps"]
    assert args.baselines == ["supervised", "random", "imagenet", "scratch"]
    assert args.label_fractions == [0.01, 0.1, 1.0]  # the few-label axis (docs/label-efficiency.md)
    cells = simclr_train.build_cells(args, announce=False)
    scratch = [c for c in cells if c.kind == "scratch"]
    assert [(c.label_fraction, c.epochs, c.batch_size) for c in scratch] == [(0.01, 250, 128), (0.1, 250, 128),
                                                                             (1.0, 250, 128)]
    simclr = [c for c in cells if c.kind == "simclr"]
    assert len(simclr) == 8 + 6  # 4 scales x 2 batches (epochs) + 3 scales x 2 batches (steps; 1.0 shared)
    assert {c.steps for c in simclr if c.budget == "steps"} == {250 * (50_000 // 256), 250 * (50_000 // 512)}
    assert all(c.eval_epochs == (50, 100, 250) for c in simclr)


# --- the --jobs scheduler, with stand-in worker commands ---------------------------------------------

def test_jobs_scheduler_gives_each_worker_a_device_threads_and_reports_failures(tmp_path, monkeypatch, capsys):
    """Each cell's worker gets its slot's device, --threads_per_cell OpenMP threads (not a share of the cores)
    and the parent's pid (to die with it); a failing cell is reported with its log's last line while the
    others finish."""
    out = tmp_path / "study"
    args = simclr_train.parse_args([*BASE, "--out_dir", str(out), "--data_scales", "0.05", "0.1", "--batch_sizes", "50",
                                    "--learning_rates", "0.3", "0.6", "--epochs", "1", "--baselines", "none",
                                    "--jobs", "2", "--devices", "cpu", "cuda:7", "--threads_per_cell", "3"])
    cells = simclr_train.build_cells(args)
    doomed = cells[1].name
    script = ("import json, os, sys; name, device = sys.argv[1], sys.argv[2]; "
              "json.dump({'device': device, 'threads': os.environ['OMP_NUM_THREADS'], "
              f"'parent': os.environ['{launch.PARENT_ENV}']}}, open(sys.argv[3] + '/' + name, 'w')); "
              f"print('boom: disk on fire') if name == '{doomed}' else None; sys.exit(5 if name == '{doomed}' else 0)")
    seen = tmp_path / "seen"
    seen.mkdir()
    failed = launch.run_local_jobs(args, cells, out / simclr_train.LOGS,
                                   lambda cell, device: [sys.executable, "-c", script, cell.name, device, str(seen)])
    assert failed == [doomed]
    printed = capsys.readouterr().out
    assert f"{doomed}: failed (exit 5): boom: disk on fire" in printed
    import os

    got = {p.name: json.loads(p.read_text()) for p in seen.iterdir()}
    assert sorted(got) == sorted(c.name for c in cells)
    assert {g["device"] for g in got.values()} == {"cpu", "cuda:7"}
    assert all(g["threads"] == "3" and g["parent"] == str(os.getpid()) for g in got.values())
    assert got[cells[0].name]["device"] == "cpu" and got[cells[1].name]["device"] == "cuda:7"


def test_slurm_launcher_writes_the_sbatch_options_and_needs_a_cluster(tmp_path, monkeypatch, fakes):
    """--launcher slurm through submitit: partition, time, account, qos and GPUs reach the sbatch script
    (a stand-in `srun` on PATH, submission intercepted); without SLURM it is one line."""
    import submitit

    args = [*BASE, "--out_dir", str(tmp_path / "s"), "--data_scales", "0.05", "--batch_sizes", "50",
            "--learning_rates", "0.3", "--epochs", "1", "--baselines", "none", "--launcher", "slurm",
            "--slurm_partition", "gpu", "--slurm_time", "90", "--slurm_account", "proj", "--slurm_qos", "high",
            "--gpus_per_cell", "2"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="--launcher slurm: .*srun"):
        simclr_train.main(args)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    scripts, commands = [], []

    class DoneJob:
        job_id = "42"

        def done(self):
            return True

        def result(self):
            return None

    def submit(self, fn):
        commands.append(fn.command)
        scripts.append(self._executor._make_submission_file_text("python -m job", "uid"))
        return DoneJob()

    monkeypatch.setattr(submitit.AutoExecutor, "submit", submit)
    res = simclr_train.main(args)
    assert res["failed"] == [] and len(scripts) == 1
    for option in ("--partition=gpu", "--time=90", "--account=proj", "--qos=high", "--gpus-per-node=2",
                   "--cpus-per-task=20", "--ntasks-per-node=1"):
        assert f"#SBATCH {option}" in scripts[0], option
    assert commands[0][-4:] == ["--worker", "ds0.05_bs50_lr0.3_ep1_seed0", "--device", "cuda"]


# --- threads and determinism: the same for every cell however it runs ---------------------------------------

def test_threads_and_determinism_reach_every_call_and_every_row(tmp_path, fakes):
    out = tmp_path / "study"
    argv = [*BASE, "--out_dir", str(out), "--data_scales", "0.05", "--batch_sizes", "50", "--learning_rates", "0.3",
            "--epochs", "1", "--baselines", "random", "--threads_per_cell", "3", "--deterministic"]
    res = simclr_train.main(argv)
    assert len(fakes.trained) == len(fakes.tested) == 2
    assert all(a.threads == 3 and a.deterministic for a in fakes.trained + fakes.tested)
    rows = read_csv(out / sweep.RESULTS_CSV)
    assert [(r["threads"], r["deterministic"]) for r in rows] == [("3", "1")] * 2
    assert all(r["threads"] == 3 and r["deterministic"] == 1 for r in res["rows"])  # typed back
    assert "Cells ran with 3 CPU threads each (deterministic kernels)." in (out / sweep.RESULTS_MD).read_text()
    with pytest.raises(UserError, match=r"other settings \(threads_per_cell: 3 -> 2\)"):
        simclr_train.main([*argv, "--threads_per_cell", "2"])
    with pytest.raises(UserError, match=r"other settings \(deterministic: True -> False\)"):
        simclr_train.main([a for a in argv if a != "--deterministic"])


def test_a_study_json_from_before_the_threads_setting_is_resumed(tmp_path, fakes):
    out = tmp_path / "study"
    argv = [*BASE, "--out_dir", str(out), "--data_scales", "0.05", "--batch_sizes", "50", "--learning_rates", "0.3",
            "--epochs", "1", "--baselines", "none"]
    simclr_train.check_study(out, simclr_train.study_settings(simclr_train.parse_args(argv)), write=True)
    old = json.loads((out / "sweep.json").read_text())
    del old["threads_per_cell"], old["deterministic"]
    atomic_write_json(out / "sweep.json", old)
    assert simclr_train.main(argv)["added"] == 1
    with pytest.raises(UserError, match="other settings .*recipe"):  # the other settings are still compared
        simclr_train.main(argv + ["--recipe", "original"])


def test_threads_given_to_a_cell_elsewhere_are_refused_in_one_line(tmp_path):
    base = [*BASE, "--out_dir", str(tmp_path / "s"), "--data_scales", "0.05", "--batch_sizes", "50",
            "--learning_rates", "0.3", "--epochs", "1", "--baselines", "none"]
    for extra, message in ((["--train_args", "--threads 2"], "--train_args must not set threads: the study sets those "
                            "itself (give --threads_per_cell to this script)"),
                           (["--test_args", "--deterministic"], "--test_args must not set deterministic: the study sets "
                            "those itself (give --deterministic to this script)"),
                           (["--cpus_per_cell", "4"], "--cpus_per_cell reserves cores for submitit jobs")):
        with pytest.raises(UserError) as info:
            simclr_train.main(base + extra)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "s" / sweep.RUNS).exists()


def test_oversubscription_is_one_warning_and_the_dry_run_counts_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch, "available_cores", lambda: 2)
    monkeypatch.setattr(sweep, "measure_step_seconds",
                        lambda bs, size, device, cap=None: {"batch": min(bs, cap), "train_s_per_image": 0.1,
                                                            "forward_s_per_image": 0.01})
    argv = [*BASE, "--out_dir", str(tmp_path / "s"), "--dry_run", "--data_scales", "0.1", "0.2", "--learning_rates",
            "0.3", "--batch_sizes", "50", "--epochs", "2", "--test_num_epochs", "5", "--baselines", "none",
            "--devices", "cpu", "--jobs", "2"]
    # As in the dry-run test above: 65 s and 105 s per cell, side by side; 2 x 2 threads on 2 cores: twice as long.
    assert simclr_train.main(argv)["estimate_s"] == pytest.approx(105)
    assert "warning" not in capsys.readouterr().out
    assert simclr_train.main([*argv, "--threads_per_cell", "2"])["estimate_s"] == pytest.approx(2 * 105)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert warnings == ["warning: --jobs 2 x --threads_per_cell 2 = 4 CPU threads on 2 cores: oversubscribed, so "
                        "slower (the numbers do not change)"]


# --- slow: real processes ---------------------------------------------------------------------------------

def _image_folder(root: Path) -> Path:
    """2 classes, 10 train and 5 test PNGs each, 16 px; its cache built once here, before any worker."""
    from PIL import Image

    from utils.data.datasets import load_split

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 5)):
        for c in range(2):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (16, 16, 3)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    for split in ("train", "test"):
        load_split("folder", split, root, image_size=16)
    return root


def _study_argv(data: Path, out: Path) -> list[str]:
    return ["--dataset", "folder", "--eval_dataset", "folder", "--data_dir", str(data), "--data_scales", "0.5", "1.0",
            "--batch_sizes", "5", "--learning_rates", "0.3", "--epochs", "2", "--eval_at", "1", "--baselines",
            "random", "--test_num_epochs", "2", "--val_split", "0.2", "--train_args", "--image_size 16",
            "--device", "cpu", "--workers", "0", "--quiet", "--out_dir", str(out)]


def _row_keys(out: Path) -> list[tuple]:
    return [(r["kind"], r["budget"], r["data_scale"], r["eval_epoch"], r["steps"], r["train_epochs"])
            for r in read_csv(out / sweep.RESULTS_CSV)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_jobs_2_matches_jobs_1_and_survives_a_sigkill_of_the_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = _image_folder(tmp_path / "images")
    one = tmp_path / "one"
    simclr_train.main(_study_argv(data, one))  # in this process, one cell after another
    expected = _row_keys(one)
    assert len(expected) == 2 * 2 + 1  # 2 SimCLR cells x 2 eval epochs + random init

    two = tmp_path / "two"
    argv = [sys.executable, "simclr_train.py", *_study_argv(data, two), "--jobs", "2"]
    log = tmp_path / "parent.log"
    with open(log, "w") as f:
        parent = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not list((two / sweep.RUNS).glob(f"*/eval-*/{sweep.RECORD}")) and time.monotonic() < deadline:
        assert parent.poll() is None, log.read_text()
        time.sleep(0.2)
    parent.kill()  # SIGKILL mid-study: the workers must not outlive it
    parent.wait()
    workers = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in log.read_text().splitlines() if "(pid " in line]
    assert len(workers) >= 2
    deadline = time.monotonic() + 120
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
    partial = _row_keys(two)
    assert 1 <= len(partial) < len(expected) and len(set(partial)) == len(partial)

    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    final = _row_keys(two)
    assert sorted(final) == sorted(expected) and len(set(final)) == len(final)
    for cell in (two / sweep.RUNS).iterdir():  # at each scale the SimCLR runs end at their step count
        if cell.name.startswith("ds"):
            assert read_csv(cell / "metrics.csv")[-1]["step"] == read_csv(one / sweep.RUNS / cell.name / "metrics.csv")[-1]["step"]


@pytest.mark.slow
def test_submitit_local_jobs_one_killed_and_resubmitted_without_a_duplicate_row(tmp_path, monkeypatch, capsys):
    import submitit  # noqa: F401  (requirements-dev.txt: this test must run, not skip)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(ROOT)
    data = _image_folder(tmp_path / "images")
    out = tmp_path / "study"
    argv = [*_study_argv(data, out), "--epochs", "1", "--eval_at", "--baselines", "none", "--launcher", "submitit_local"]
    # The 1.0 cell (20 images, 4 steps per epoch) is killed at its step 3; the 0.5 one has only 2 steps.
    monkeypatch.setenv(train.TEST_SIGNAL_ENV, "3:KILL")
    first = simclr_train.main(argv)
    out_text = capsys.readouterr().out
    assert out_text.count("submitted as job") == 2
    assert first["failed"] == ["ds1_bs5_lr0.3_ep1_seed0"]
    assert [(r["data_scale"], r["eval_epoch"]) for r in read_csv(out / sweep.RESULTS_CSV)] == [("0.5", "1")]

    monkeypatch.delenv(train.TEST_SIGNAL_ENV)
    second = simclr_train.main(argv)
    out_text = capsys.readouterr().out
    assert out_text.count("submitted as job") == 1 and "ds1_bs5_lr0.3_ep1_seed0: submitted" in out_text
    assert second["failed"] == []
    keys = [(r["data_scale"], r["eval_epoch"]) for r in read_csv(out / sweep.RESULTS_CSV)]
    assert keys == [("0.5", "1"), ("1.0", "1")]
    assert read_csv(out / sweep.RUNS / "ds1_bs5_lr0.3_ep1_seed0" / "metrics.csv")[-1]["step"] == "4"


@pytest.mark.slow
def test_a_cell_gives_the_same_numbers_with_jobs_1_and_jobs_2(tmp_path, monkeypatch):
    """--jobs 1 runs the cells in this process (torch's threads set and restored per cell), --jobs 2 in two
    worker processes started with OMP_NUM_THREADS: both at --threads_per_cell (1), so every loss, accuracy
    and weight is bit-identical. At 2 threads against 1 this study's losses differ from the 6th decimal
    (measured: pretraining loss 2.218132 vs 2.218133), so a cell run with another thread count fails it."""
    import torch

    from utils.checkpoint import load_checkpoint

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(ROOT)
    for module, name in ((train, "plot_panels"), (test_script, "plot_curves"), (sweep, "plot_accuracy_vs_scale"),
                         (sweep, "plot_heatmaps")):  # this process's plots only (a third of its time); not numbers
        monkeypatch.setattr(module, name, lambda *a, **k: None)
    data = _image_folder(tmp_path / "images")
    argv = [*_study_argv(data, tmp_path / "x"), "--epochs", "1", "--eval_at", "--baselines", "none"]
    one, two = tmp_path / "one", tmp_path / "two"
    threads_before = torch.get_num_threads()
    simclr_train.main([*argv, "--out_dir", str(one)])
    assert torch.get_num_threads() == threads_before  # restored after each in-process cell
    assert simclr_train.main([*argv, "--out_dir", str(two), "--jobs", "2"])["failed"] == []

    rows = {d: read_csv(d / sweep.RESULTS_CSV) for d in (one, two)}
    assert len(rows[one]) == 2
    numbers = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "pretrain_loss", "steps", "threads",
               "deterministic")
    for a, b in zip(rows[one], rows[two], strict=True):
        assert {k: a[k] for k in numbers} == {k: b[k] for k in numbers}
        assert a["threads"] == "1" and a["deterministic"] == "0"
    for cell in ("ds0.5_bs5_lr0.3_ep1_seed0", "ds1_bs5_lr0.3_ep1_seed0"):
        runs = [d / sweep.RUNS / cell for d in (one, two)]
        losses = [[r["loss"] for r in read_csv(run / "metrics.csv")] for run in runs]
        assert losses[0] == losses[1] and len(losses[0]) == 1
        configs = [json.loads((run / "config.json").read_text())["env"] for run in runs]
        assert configs[0]["threads"] == configs[1]["threads"] == 1
        reports = [json.loads(next(run.glob("eval-*/eval.json")).read_text()) for run in runs]
        assert reports[0]["runtime"]["threads"] == reports[1]["runtime"]["threads"] == 1
        for key in ("test_loss", "test_accuracy", "val_loss", "val_accuracy"):
            assert reports[0][key] == reports[1][key], key  # full precision, not the CSV's 6 decimals
        assert reports[0]["history"]["train_loss"] == reports[1]["history"]["train_loss"]
        weights = [load_checkpoint(run / "final.pth")["backbone"] for run in runs]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --- issue 26: rows that say what they are; one failing cell does not stop the study ---------------------------

def test_scratch_rows_record_the_data_lr_and_steps_they_trained_with(tmp_path, fakes):
    out = tmp_path / "study"
    res = simclr_train.main([*BASE, "--eval_dataset", "digits", "--out_dir", str(out), "--data_scales", "0.05",
                             "--batch_sizes", "50", "--learning_rates", "0.3", "--epochs", "2", "--baselines", "scratch",
                             "--label_fractions", "0.5", "1.0", "--supervised_args", "--batch_size 25"])
    scratch = [r for r in res["rows"] if r["kind"] == "scratch"]
    assert scratch and all(r["dataset"] == "digits" for r in scratch)  # trained on the probe's data
    runs = [a for a in fakes.trained if a.train_type == "supervised"]
    assert {r["learning_rate"] for r in scratch} == {a.learning_rate for a in runs} and None not in {
        r["learning_rate"] for r in scratch}
    assert all(r["batch_size"] == 25 and r["steps"] > 0 for r in scratch)
    assert all(r["dataset"] == "synthetic" for r in res["rows"] if r["kind"] == "simclr")


def test_a_cell_that_fails_with_jobs_1_is_recorded_and_the_study_goes_on(tmp_path, fakes, monkeypatch, capsys):
    """With --jobs 1 a cell's error (here its probe's loss becomes non-finite) is a failed cell, as with --jobs 2:
    the other cells still run, the study names it and exits 1."""
    from utils.errors import NonFiniteLossError

    real = test_script.main

    def probe(argv):
        if Path(argv[argv.index("--model_path") + 1]).parent.name == "ds0.05_bs50_lr0.3_ep1_seed0":  # the first cell
            raise NonFiniteLossError("probe training loss became nan in epoch 1")
        return real(argv)
    monkeypatch.setattr(test_script, "main", probe)
    out = tmp_path / "study"
    argv = [*BASE, "--out_dir", str(out), "--data_scales", "0.05", "--batch_sizes", "50", "--learning_rates", "0.3",
            "--epochs", "1", "--seeds", "0", "--baselines", "random", "supervised", "--jobs", "1",
            "--supervised_args", "--batch_size 25"]
    res = simclr_train.main(argv)
    assert res["failed"] == ["ds0.05_bs50_lr0.3_ep1_seed0"]
    assert {r["kind"] for r in res["rows"]} == {"supervised", "random"}  # the cells after it ran
    assert "ds0.05_bs50_lr0.3_ep1_seed0: failed: NonFiniteLossError" in capsys.readouterr().out
    assert "NonFiniteLossError" in (out / simclr_train.LOGS / "ds0.05_bs50_lr0.3_ep1_seed0.log").read_text()
    with pytest.raises(SystemExit) as exit_info:
        simclr_train.cli(argv)
    assert exit_info.value.code == 1


def test_every_cell_is_scored_on_the_same_augmented_views(tmp_path, fakes, monkeypatch):
    """Issue 26 item 2: the study resolves one view specification (--test_args' --eval_* flags, else the SimCLR
    arm's own views, else the recipe's) and gives it to every cell, whatever its kind; results.md names it."""
    from utils.eval.measures import view_overrides
    from utils.eval.views import resolve_view_spec
    from utils.recipes import recipe

    real, seen = test_script.main, []

    def probe(argv):  # the fake probe, plus what test.py's --eval_views resolves for a non-SimCLR checkpoint
        result, args = real(argv), test_script.parse_args(argv)
        if args.eval_views:
            spec, _ = resolve_view_spec(None, recipe("tuned", "simclr"), view_overrides(args))
            seen.append(spec)
            result.update(augmented_test_accuracy=50.0, augmented_test_loss=1.0, augmented_test={
                "views_per_image": args.eval_views, "seed": args.eval_view_seed, "spec": dataclasses.asdict(spec)})
        return result
    monkeypatch.setattr(test_script, "main", probe)
    out = tmp_path / "study"
    simclr_train.main([*BASE, "--out_dir", str(out), "--data_scales", "0.05", "--batch_sizes", "50", "--learning_rates",
                       "0.3", "--epochs", "1", "--baselines", "supervised", "random", "--supervised_args",
                       "--batch_size 25", "--train_args", "--crop_min_scale 0.3 --hflip_prob 0 --jitter_strength 0.25",
                       "--test_args", "--eval_views 2 --eval_gray_prob 0.5"])
    assert len(seen) == 3  # SimCLR, supervised, random init
    assert all(spec == seen[0] for spec in seen)
    assert (seen[0].crop_min_scale, seen[0].hflip_prob, seen[0].gray_prob) == (0.3, 0.0, 0.5)  # SimCLR's, the flag's
    assert seen[0].jitter == pytest.approx((0.2, 0.2, 0.2, 0.05))
    assert json.loads((out / "sweep.json").read_text())["eval_views"]["crop_min_scale"] == 0.3
    md = (out / sweep.RESULTS_MD).read_text()
    assert "Augmented test views, the same for every cell: 2 per image (seed 0): crop (0.3, 1), flip 0" in md


def test_the_digits_preset_gives_every_scale_the_same_steps_and_scratch_its_own_epochs(no_imagenet_weights):
    """Issue 25 item 4: --budget steps, so data scales 0.1 and 1 train as many steps as each other (not 4 and 44),
    and the scratch baseline trains --scratch_epochs epochs on its labels (not the study's 2)."""
    from utils.data.datasets import load_split

    args = simclr_train.parse_args(["--preset", "digits"])
    cells = simclr_train.build_cells(args, announce=False)
    labels = load_split("digits", "train").labels
    for kind, val in (("simclr", 0.0), ("supervised", args.val_split)):  # supervised leaves the probe's val out
        steps = {c.data_scale: c.steps for c in cells if c.kind == kind}
        full = len(training_subset(labels, 1.0, 0, 1.0, val))
        assert sorted(steps) == [0.1, 1.0] and set(steps.values()) == {args.epochs[0] * (full // 64)}
    scratch = [c for c in cells if c.kind == "scratch"]
    assert len(scratch) == len(args.seeds) and all(c.label_fraction == 0.1 for c in scratch)
    assert {train.parse_args(simclr_train.train_argv(args, c, "R")).epochs for c in scratch} == {
        simclr_train.DIGITS_SCRATCH_EPOCHS} != {args.epochs[0]}


def test_the_fashion_preset_trains_every_arm_as_the_crossover_benchmark_does(no_imagenet_weights):
    """Issue 25 item 4: --preset fashion_mnist gives both data scales the same steps (one epoch of batch 64 at
    scale 1, past the crossover benchmark's 300-1,000-step crossover), the scratch baseline its own epochs, and each
    arm the settings of benchmarks/fashion_crossover.py, so that the two agree where they meet."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fashion_crossover

    args = simclr_train.parse_args(["--preset", "fashion_mnist"])
    cells = simclr_train.build_cells(args, announce=False)
    steps = {(c.kind, c.data_scale): c.steps for c in cells if c.kind in ("simclr", "supervised")}
    assert steps == {("simclr", 0.1): 60_000 // 64, ("simclr", 1.0): 60_000 // 64,
                     ("supervised", 0.1): 54_000 // 64, ("supervised", 1.0): 54_000 // 64}
    assert min(steps.values()) > 300  # past where the crossover benchmark saw SimCLR reach random init
    bench = fashion_crossover.parse_args([])
    keys = ("batch_size", "learning_rate", "image_size", "schedule", "warmup_epochs", "dataset", "recipe")
    for cell in cells:
        mine = train.parse_args(simclr_train.train_argv(args, cell, "R"))
        theirs = train.parse_args(fashion_crossover.train_argv(bench, cell.kind, 100, 0, 0.1) + ["--run_dir", "R"])
        same = keys if cell.kind != "random" else ("image_size", "dataset", "recipe", "train_type", "epochs")
        assert {k: getattr(mine, k) for k in same} == {k: getattr(theirs, k) for k in same}, cell.kind
        if cell.kind == "scratch":
            assert (mine.epochs, mine.label_fraction) == (simclr_train.FASHION_SCRATCH_EPOCHS, 0.1)
