"""Tests of simclr_train.py and utils/sweep.py: grid, resume, results table, selection, report, dry run.

    python -m pytest tests/test_sweep.py -q            # all (the two slow ones train tiny networks)
    python -m pytest tests/test_sweep.py -q -m "not slow"

Fast tests replace train.main / test.main with fakes that parse the real argv (so the sweep's
command lines are checked by the real parsers) and write what the real scripts write. The slow
tests run the real scripts on a shrunken synthetic dataset (200 train / 50 test images) at 16 px.
"""
from __future__ import annotations

import math

import csv
import os
import signal
import zlib
from pathlib import Path

import numpy as np
import pytest

import simclr_train
import test as test_script
import train
from utils import sweep
from utils.errors import UserError
from utils.io import atomic_write_csv, read_csv

OUTPUTS = (sweep.RESULTS_CSV, sweep.RESULTS_MD, sweep.PLOT_SCALE, sweep.PLOT_HEATMAP)


# --- fakes and fixtures --------------------------------------------------------------------------

class FakeScripts:
    """train.main / test.main stand-ins: parse the real argv, write the files the real ones write."""

    def __init__(self):
        self.trained: list[str] = []
        self.evaluated: list[str] = []

    def train_main(self, argv):
        args = train.parse_args(argv)
        run = Path(args.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        assert not (run / "final.pth").exists(), "a finished cell was trained again"
        self.trained.append(run.name)
        rows = [{"epoch": e, "loss": round(6.0 - 0.1 * e - args.learning_rate, 6), "lr_first": args.learning_rate,
                 "lr_last": args.learning_rate, "images_per_s": 100.0 + e, "seconds": 2.0 * e}
                for e in range(1, args.epochs + 1)]
        atomic_write_csv(run / "metrics.csv", rows, train.METRIC_FIELDS)
        for e in args.save_at:
            (run / f"epoch_{e:04d}.pth").write_bytes(b"fake")
        (run / "final.pth").write_bytes(b"fake")
        return {"run_dir": str(run), "final": str(run / "final.pth"), "history": rows}

    def test_main(self, argv):
        args = test_script.parse_args(argv)
        ckpt = Path(args.model_path)
        assert ckpt.exists(), ckpt
        self.evaluated.append(f"{ckpt.parent.name}/{ckpt.name}")
        h = zlib.crc32(f"{ckpt.parent.name}/{ckpt.name}".encode())
        return {"test_accuracy": 20 + h % 6000 / 100, "test_loss": 1 + h % 97 / 100,
                "val_accuracy": 20 + (h >> 8) % 6000 / 100, "val_loss": 1 + (h >> 8) % 97 / 100,
                "seconds": {"total": 1.5}, "device": "cpu", "protocol": "linear"}


@pytest.fixture
def fakes(monkeypatch):
    f = FakeScripts()
    monkeypatch.setattr(train, "main", f.train_main)
    monkeypatch.setattr(test_script, "main", f.test_main)
    return f


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, oversubscribed 2-core machine each BatchNorm call was measured at
    ~95 ms with 2 threads (barrier waits) and 0.2 ms with 1; results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_synthetic(monkeypatch):
    """Shrink the built-in synthetic dataset (read at call time) to 200 train / 50 test images."""
    from utils.data import synthetic

    monkeypatch.setattr(synthetic, "SYNTHETIC_TRAIN", 200)
    monkeypatch.setattr(synthetic, "SYNTHETIC_TEST", 50)


def fail(*args, **kwargs):
    raise AssertionError("must not be called on a rerun of a finished sweep")


def snapshot(out: Path) -> dict:
    return {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in OUTPUTS}


FAST = ["--preset", "demo", "--device", "cpu", "--quiet", "--workers", "0", "--baselines", "none"]


def make_rows(values: dict[tuple, list[tuple[float, float]]]) -> list[dict]:
    """Rows from {(data_scale, batch, lr): [(val, test) per seed]}."""
    rows = []
    for (scale, bs, lr), per_seed in values.items():
        for seed, (val, tst) in enumerate(per_seed):
            rows.append({"dataset": "synthetic", "data_scale": scale, "batch_size": bs, "learning_rate": lr,
                         "epochs": 3, "eval_epoch": 3, "seed": seed, "eval_dataset": "synthetic", "val_split": 0.1,
                         "probe_epochs": 5, "val_accuracy": val, "val_loss": 1.0, "test_accuracy": tst,
                         "test_loss": 2.0 - tst / 100, "pretrain_loss": 4.0, "pretrain_seconds": 10.0 + seed,
                         "images_per_s": 50.0, "eval_seconds": 3.0, "device": "cpu",
                         "checkpoint": f"runs/x{seed}/final.pth", "kind": "simclr", "budget": "epochs",
                         "steps": 3 * 10, "train_epochs": 3, "recipe": "tuned", "threads": 1,
                         "deterministic": 0})
    return rows


# --- grid and flags ------------------------------------------------------------------------------

def test_grid_flags_override_grid(monkeypatch):
    args = simclr_train.parse_args([])
    assert [getattr(args, k) for k in sweep.GRID_KEYS] == [simclr_train.GRID[k] for k in sweep.GRID_KEYS]
    assert (args.dataset, args.eval_dataset, args.val_split) == ("cifar10", "cifar100", 0.1)

    args = simclr_train.parse_args(["--data_scales", "0.3", "0.7", "--learning_rates", "0.05", "--seed", "4", "5"])
    assert args.data_scales == [0.3, 0.7] and args.learning_rates == [0.05] and args.seeds == [4, 5]
    assert args.batch_sizes == simclr_train.GRID["batch_sizes"] and args.epochs == simclr_train.GRID["epochs"]

    monkeypatch.setitem(simclr_train.GRID, "batch_sizes", [64])  # editing GRID in the file changes the default
    assert simclr_train.parse_args([]).batch_sizes == [64]

    demo = simclr_train.PRESETS["demo"]
    args = simclr_train.parse_args(["--preset", "demo", "--epochs", "1", "--learning_rates", "0.1"])
    assert args.epochs == [1] and args.learning_rates == [0.1]  # flags beat the preset
    assert args.data_scales == demo["data_scales"] and args.dataset == "synthetic"
    assert args.eval_dataset == "synthetic" and args.test_num_epochs == 500 and args.recipe == "tuned"  # the probe's

    cells = sweep.expand_grid({k: getattr(args, k) for k in sweep.GRID_KEYS}, [])
    assert len(cells) == len(demo["data_scales"]) * len(demo["batch_sizes"]) * len(demo["seeds"])


def test_expand_grid_order_and_eval_epochs():
    grid = {"data_scales": [0.1, 0.5], "batch_sizes": [32], "learning_rates": [0.3, 0.6], "epochs": [10, 30],
            "seeds": [1, 0]}
    cells = sweep.expand_grid(grid, eval_at=[5, 20, 30, 50])
    assert len(cells) == 2 * 1 * 2 * 2 * 2 and len({c.name for c in cells}) == len(cells)
    assert [c.seed for c in cells[:8]] == [1] * 8  # seeds outermost: a whole pass before replicates
    assert {c.eval_epochs for c in cells if c.epochs == 10} == {(5, 10)}
    assert {c.eval_epochs for c in cells if c.epochs == 30} == {(5, 20, 30)}
    assert cells[0].name == "ds0.1_bs32_lr0.3_ep10_seed1"
    assert sweep.subset_size(2000, 10, 0.05) == 100 and sweep.subset_size(2000, 10, 1.0) == 2000


def test_bad_grid_values_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data_scales"):
        simclr_train.parse_args(["--data_scales", "0", "--out_dir", str(tmp_path)])
    with pytest.raises(UserError, match="larger than"):  # 5 % of synthetic is 100 images
        simclr_train.main([*FAST, "--data_scales", "0.05", "--batch_sizes", "128", "--out_dir", str(tmp_path)])


# --- aggregation and selection ---------------------------------------------------------------------

def test_aggregate_mean_std_over_seeds_matches_numpy():
    vals = {(0.1, 64, 0.3): [(50.0, 40.0), (52.5, 41.0), (49.0, 45.5)], (0.5, 64, 0.3): [(61.0, 60.0), (63.0, 58.0)],
            (0.5, 128, 0.6): [(30.0, 31.0)]}
    entries = {(e["data_scale"], e["batch_size"], e["learning_rate"]): e for e in sweep.aggregate(make_rows(vals))}
    for key, per_seed in vals.items():
        v, t = np.array(per_seed).T
        e = entries[key]
        assert e["n_seeds"] == len(per_seed)
        assert e["val_accuracy_mean"] == pytest.approx(v.mean()) and e["test_accuracy_mean"] == pytest.approx(t.mean())
        if len(per_seed) > 1:
            assert e["val_accuracy_std"] == pytest.approx(np.std(v, ddof=1))
            assert e["test_accuracy_std"] == pytest.approx(np.std(t, ddof=1))
        else:
            assert e["val_accuracy_std"] is None
    md = sweep.results_markdown(make_rows(vals))
    assert f"{np.mean([50.0, 52.5, 49.0]):.2f} ± {np.std([50.0, 52.5, 49.0], ddof=1):.2f}" in md


def test_selection_uses_validation_never_test():
    # A has the best validation accuracy and the worst test accuracy; B the reverse.
    vals = {(0.1, 64, 0.3): [(70.0, 10.0), (71.0, 12.0)], (0.5, 64, 0.3): [(40.0, 90.0), (42.0, 95.0)],
            (0.5, 128, 0.3): [(55.0, 80.0), (56.0, 85.0)]}
    chosen = sweep.choose(sweep.aggregate(make_rows(vals)))
    assert (chosen["data_scale"], chosen["batch_size"]) == (0.1, 64)
    md = sweep.results_markdown(make_rows(vals))
    table = [line for line in md.splitlines() if line.startswith("| ") and "data scale" not in line]
    assert table[0].startswith("| ★ | 0.1 | 64 |") and [l.split("|")[2].strip() for l in table[:3]] == ["0.1", "0.5", "0.5"]
    assert [l.split("|")[3].strip() for l in table[:3]] == ["64", "128", "64"]  # sorted by val, not test
    assert sum("★" in line for line in table[:3]) == 1
    assert "**Chosen (★):** data scale 0.1, batch 64" in md

    no_val = make_rows(vals)
    for row in no_val:
        row["val_accuracy"] = None
    assert sweep.choose(sweep.aggregate(no_val)) is None  # no validation split: nothing is chosen from test
    assert "**Chosen:** none" in sweep.results_markdown(no_val)


# --- the sweep with fake scripts: report, rerun, passthrough, study settings, dry run -------------

def test_report_reproduces_results_md_from_csv_alone(tmp_path, fakes):
    out = tmp_path / "sw"
    res = simclr_train.main([*FAST, "--out_dir", str(out), "--seeds", "0", "1", "--batch_sizes", "20", "50",
                             "--epochs", "3", "--eval_at", "1"])
    assert len(res["rows"]) == 2 * 2 * 2 * 2 * 2  # seeds x scales x batches x lrs x eval epochs
    md = (out / sweep.RESULTS_MD).read_bytes()
    assert "±" in md.decode()
    for name in (sweep.RESULTS_MD, sweep.PLOT_SCALE, sweep.PLOT_HEATMAP):
        (out / name).unlink()
    import shutil

    shutil.rmtree(out / sweep.RUNS)  # nothing but results.csv is left to read from
    rep = simclr_train.main(["--report", "--out_dir", str(out)])
    assert (out / sweep.RESULTS_MD).read_bytes() == md
    assert (out / sweep.PLOT_SCALE).stat().st_size > 1000 and (out / sweep.PLOT_HEATMAP).stat().st_size > 1000
    assert rep["chosen"] == res["chosen"]


def test_rerun_skips_finished_cells_and_changes_nothing(tmp_path, fakes, monkeypatch):
    out = tmp_path / "sw"
    argv = [*FAST, "--out_dir", str(out), "--epochs", "2", "--eval_at", "1"]
    first = simclr_train.main(argv)
    assert len(fakes.trained) == 4 and len(fakes.evaluated) == 8 and first["added"] == 8
    rows = read_csv(out / sweep.RESULTS_CSV)
    assert len({(r["data_scale"], r["learning_rate"], r["eval_epoch"]) for r in rows}) == len(rows) == 8
    # Values reach the CSV intact: pretraining time up to the eval epoch, checkpoint relative to out_dir.
    r = next(r for r in rows if r["data_scale"] == "0.1" and r["learning_rate"] == "0.3" and r["eval_epoch"] == "1")
    assert float(r["pretrain_seconds"]) == 2.0 and float(r["images_per_s"]) == 101.0
    assert r["checkpoint"] == "runs/ds0.1_bs50_lr0.3_ep2_seed0/epoch_0001.pth" and (out / r["checkpoint"]).exists()
    assert float(r["test_accuracy"]) == pytest.approx(fakes.test_main(
        ["--model_path", str(out / r["checkpoint"]), "--dataset", "synthetic"])["test_accuracy"], abs=1e-4)

    before = snapshot(out)
    monkeypatch.setattr(train, "main", fail)
    monkeypatch.setattr(test_script, "main", fail)
    again = simclr_train.main(argv)
    assert snapshot(out) == before  # same bytes, not even rewritten
    assert again["rows"] == first["rows"] and again["added"] == 0


def test_growing_the_grid_trains_only_new_cells(tmp_path, fakes):
    out = tmp_path / "sw"
    simclr_train.main([*FAST, "--out_dir", str(out), "--epochs", "2", "--learning_rates", "0.3"])
    assert len(fakes.trained) == 2
    res = simclr_train.main([*FAST, "--out_dir", str(out), "--epochs", "2", "--learning_rates", "0.3", "0.6"])
    assert len(fakes.trained) == 4 and all("lr0.6" in name for name in fakes.trained[2:])
    assert len(res["rows"]) == 4


def test_eval_at_missing_checkpoint_is_reported_not_faked(tmp_path, fakes, capsys):
    out = tmp_path / "sw"
    simclr_train.main([*FAST, "--out_dir", str(out), "--epochs", "3", "--data_scales", "0.1", "--learning_rates", "0.3"])
    res = simclr_train.main([*FAST, "--out_dir", str(out), "--epochs", "3", "--data_scales", "0.1",
                             "--learning_rates", "0.3", "--eval_at", "2"])
    assert "no epoch_0002.pth" in capsys.readouterr().out
    assert [r["eval_epoch"] for r in res["rows"]] == [3] and len(fakes.trained) == 1


def test_passthrough_args_reach_the_scripts_and_sweep_flags_are_protected(tmp_path, fakes, monkeypatch):
    seen = []
    real_train = fakes.train_main
    monkeypatch.setattr(train, "main", lambda argv: (seen.append(train.parse_args(argv)), real_train(argv))[1])
    out = tmp_path / "sw"
    simclr_train.main([*FAST, "--out_dir", str(out), "--data_scales", "0.1", "--learning_rates", "0.3",
                       "--train_args", "--temperature 0.2 --warmup_epochs 1", "--test_args", "--weight_decay 1e-4"])
    assert seen[0].temperature == 0.2 and seen[0].warmup_epochs == 1.0 and seen[0].data_scale == 0.1
    for bad, match in [(["--train_args", "--data_scale 0.5"], "data_scale"), (["--train_args", "--lr 1"], "learning_rate"),
                       (["--test_args", "--finetune"], "finetune"), (["--test_args", "--val_split 0"], "val_split"),
                       (["--train_args", "--no_such_flag"], "refused")]:
        with pytest.raises(UserError, match=match):
            simclr_train.main([*FAST, "--out_dir", str(tmp_path / "other"), *bad])


def test_diverged_cell_is_recorded_and_skipped(tmp_path, fakes, monkeypatch, capsys):
    from utils.errors import NonFiniteLossError

    real_train = fakes.train_main

    def diverge_at_high_lr(argv):
        if train.parse_args(argv).learning_rate > 0.5:
            raise NonFiniteLossError("non-finite loss at epoch 1, step 1")
        return real_train(argv)

    monkeypatch.setattr(train, "main", diverge_at_high_lr)
    out = tmp_path / "sw"
    argv = [*FAST, "--out_dir", str(out), "--data_scales", "0.1"]
    res = simclr_train.main(argv)
    assert [r["learning_rate"] for r in res["rows"]] == [0.3]  # the diverged cell has no row
    assert (out / sweep.RUNS / "ds0.1_bs50_lr0.6_ep2_seed0" / simclr_train.FAILED).exists()
    monkeypatch.setattr(train, "main", fail)
    capsys.readouterr()
    assert len(simclr_train.main(argv)["rows"]) == 1
    assert "pretraining diverged" in capsys.readouterr().out


def test_other_study_settings_in_the_same_out_dir_are_refused(tmp_path, fakes):
    out = tmp_path / "sw"
    simclr_train.main([*FAST, "--out_dir", str(out), "--data_scales", "0.1", "--learning_rates", "0.3"])
    with pytest.raises(UserError, match="test_num_epochs"):
        simclr_train.main([*FAST, "--out_dir", str(out), "--data_scales", "0.1", "--learning_rates", "0.3",
                           "--test_num_epochs", "7"])


def test_dry_run_estimates_from_measured_step_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "main", fail)
    monkeypatch.setattr(test_script, "main", fail)
    monkeypatch.setattr(sweep, "measure_step_seconds",
                        lambda bs, size, device, cap=None: {"batch": min(bs, cap), "train_s_per_image": 0.1,
                                                            "forward_s_per_image": 0.01})
    out = tmp_path / "sw"
    res = simclr_train.main([*FAST, "--out_dir", str(out), "--dry_run", "--data_scales", "0.1", "0.2",
                             "--learning_rates", "0.3", "--batch_sizes", "50", "--epochs", "2"])
    # Synthetic: 2,000 train / 500 test. 10 % = 200 images x 2 epochs x 0.1 s + 2,500 x 0.01 s = 65 s;
    # 20 % = 400 x 2 x 0.1 + 25 = 105 s.
    assert res["estimate_s"] == pytest.approx(65 + 105)
    printed = capsys.readouterr().out
    assert "ds0.1_bs50_lr0.3_ep2_seed0" in printed and "ds0.2_bs50_lr0.3_ep2_seed0" in printed
    assert "total estimate: 2m 50s" in printed
    assert not out.exists()


def test_dry_run_measures_at_the_image_size_the_cells_train_at(tmp_path, monkeypatch):
    """--train_args "--image_size 16" is the size every cell trains at: the step is timed there, not at the
    dataset's default (the Fashion-MNIST preset was estimated at 28 px, 3x its 16 px cost)."""
    sizes = []

    def measure(bs, size, device, cap=None):
        sizes.append(size)
        return {"batch": min(bs, cap), "train_s_per_image": 0.1, "forward_s_per_image": 0.01}

    monkeypatch.setattr(sweep, "measure_step_seconds", measure)
    simclr_train.main([*FAST, "--out_dir", str(tmp_path / "a"), "--dry_run", "--data_scales", "0.1"])
    simclr_train.main([*FAST, "--out_dir", str(tmp_path / "b"), "--dry_run", "--data_scales", "0.1",
                       "--train_args", "--image_size 16"])
    default = simclr_train.DATASETS["synthetic"].default_image_size or 64
    assert default != 16 and sizes == [default, 16]


def test_measure_step_seconds_runs_on_cpu():
    t = sweep.measure_step_seconds(64, 8, "cpu", cap=1)  # 8 px, one image (two views): quick on CPU
    assert t["batch"] == 1 and 0 < t["forward_s_per_image"] and 0 < t["train_s_per_image"] < 60


def test_results_csv_columns(tmp_path):
    rows = make_rows({(0.5, 64, 0.3): [(50.0, 40.0)], (0.1, 64, 0.3): [(51.0, 41.0)]})
    path = tmp_path / "results.csv"
    assert sweep.write_results_csv(path, rows) is True and sweep.write_results_csv(path, rows) is False
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert header == sweep.RESULT_FIELDS
    back = sweep.read_results(path)
    first = sorted(rows, key=lambda r: r["data_scale"])[0]
    assert [r["data_scale"] for r in back] == [0.1, 0.5] and back[0] == {**dict.fromkeys(sweep.RESULT_FIELDS), **first, "label_fraction": 1.0}
    # A results.csv from before the label axis (no label_fraction column) reads as every label.
    old = tmp_path / "old.csv"
    drop = sweep.RESULT_FIELDS.index("label_fraction")
    old.write_text("\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != drop)
                             for line in path.read_text().splitlines()) + "\n")
    assert "label_fraction" not in old.read_text() and [r["label_fraction"] for r in sweep.read_results(old)] == [1.0, 1.0]


# --- slow: the real train.py and test.py -----------------------------------------------------------

@pytest.mark.slow
def test_demo_end_to_end_then_rerun_changes_nothing(tmp_path, tiny_synthetic, monkeypatch):
    out = tmp_path / "demo"
    argv = [*FAST, "--out_dir", str(out), "--data_scales", "0.05", "0.1", "--batch_sizes", "10",
            "--learning_rates", "0.3", "--epochs", "1", "--test_num_epochs", "2", "--train_args", "--image_size 16"]
    res = simclr_train.main(argv)
    for name in (*OUTPUTS, "sweep.json"):
        assert (out / name).exists(), name
    rows = read_csv(out / sweep.RESULTS_CSV)
    assert [(r["data_scale"], r["eval_epoch"]) for r in rows] == [("0.05", "1"), ("0.1", "1")]
    for r in rows:
        assert 0 <= float(r["test_accuracy"]) <= 100 and 0 <= float(r["val_accuracy"]) <= 100
        assert float(r["pretrain_seconds"]) > 0 and float(r["images_per_s"]) > 0 and r["device"] == "cpu"
        assert (out / r["checkpoint"]).name == "final.pth" and (out / r["checkpoint"]).exists()
        eval_json = (out / r["checkpoint"]).parent / "eval-synthetic-epoch0001" / "eval.json"
        assert eval_json.exists()  # test.py's own report sits beside the sweep's record
    assert "★" in (out / sweep.RESULTS_MD).read_text() and res["chosen"] is not None

    before = snapshot(out)
    monkeypatch.setattr(train, "main", fail)
    monkeypatch.setattr(test_script, "main", fail)
    simclr_train.main(argv)
    assert snapshot(out) == before


@pytest.mark.slow
def test_interrupted_cell_resumes_with_one_row_per_cell_and_eval_epoch(tmp_path, tiny_synthetic, monkeypatch, capsys):
    """A 2x2 grid is interrupted (SIGINT, as Ctrl-C) in the second cell's pretraining, then rerun."""
    monkeypatch.setattr(test_script, "main", FakeScripts().test_main)  # real pretraining, fake probe
    trained = []
    real = train.main

    def spy(argv):
        trained.append(Path(train.parse_args(argv).run_dir).name)
        return real(argv)

    monkeypatch.setattr(train, "main", spy)
    second = "ds0.05_bs10_lr0.6_ep2_seed0"
    real_write = train.write_metrics

    def interrupt_after_first_epoch(run_dir, history, args):
        real_write(run_dir, history, args)
        if Path(run_dir).name == second and len(history) == 1 and not hasattr(interrupt_after_first_epoch, "done"):
            interrupt_after_first_epoch.done = True
            os.kill(os.getpid(), signal.SIGINT)  # train.py's handler saves last.pth after the next step

    monkeypatch.setattr(train, "write_metrics", interrupt_after_first_epoch)
    out = tmp_path / "sw"
    argv = [*FAST, "--out_dir", str(out), "--data_scales", "0.05", "0.1", "--batch_sizes", "10",
            "--learning_rates", "0.3", "0.6", "--epochs", "2", "--eval_at", "1", "--train_args", "--image_size 16"]
    with pytest.raises(train.Interrupted):
        simclr_train.main(argv)
    rows = read_csv(out / sweep.RESULTS_CSV)  # consistent: the first cell's two rows, nothing half-written
    assert [(r["learning_rate"], r["eval_epoch"]) for r in rows] == [("0.3", "1"), ("0.3", "2")]
    cell2 = out / sweep.RUNS / second
    assert (cell2 / "last.pth").exists() and not (cell2 / "final.pth").exists()
    epoch1 = read_csv(cell2 / "metrics.csv")[0]

    trained.clear()
    capsys.readouterr()
    res = simclr_train.main(argv)
    assert trained == [second, "ds0.1_bs10_lr0.3_ep2_seed0", "ds0.1_bs10_lr0.6_ep2_seed0"]  # cell 1 not retrained
    assert "(resuming from last.pth)" in capsys.readouterr().out
    assert read_csv(cell2 / "metrics.csv")[0] == epoch1  # epoch 1 kept, not recomputed
    rows = read_csv(out / sweep.RESULTS_CSV)
    keys = [(r["data_scale"], r["learning_rate"], r["eval_epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 and len(res["rows"]) == 8



def test_command_line_user_error_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "simclr_train.py"), "--report", "--out_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --report: no {tmp_path / 'results.csv'}; run the sweep first"]


def test_rows_carry_the_measures_and_results_md_sets_them_side_by_side(tmp_path):
    """make_row copies the evaluation's augmented-view accuracy and kNN and the last epoch's contrastive accuracy;
    results.md shows each configuration's mean ± std of them; the plot gets its augmented-views panel."""
    cell = sweep.Cell(data_scale=1.0, batch_size=64, learning_rate=0.1, epochs=2, seed=0, eval_epochs=(2,))
    history = [{"epoch": 1, "step": 5, "loss": 4.0, "images_per_s": 10, "seconds": 1.0, "contrastive_acc": 5.0},
               {"epoch": 2, "step": 10, "loss": 3.5, "images_per_s": 10, "seconds": 1.0, "contrastive_acc": "12.5"}]
    evaluation = {"test_accuracy": 90.0, "test_loss": 0.3, "augmented_test_accuracy": 61.23456,
                  "augmented_test_loss": 1.5, "knn10_accuracy": 88.0, "knn200_accuracy": 80.0}
    study = {"dataset": "digits", "eval_dataset": "digits", "val_split": 0.1, "test_num_epochs": 5}
    row = sweep.make_row(cell, 2, history, evaluation, study, "cpu", "runs/x/final.pth")
    assert (row["aug_test_acc"], row["aug_test_loss"], row["knn10_acc"], row["knn200_acc"], row["contrastive_acc"]) \
        == (61.2346, 1.5, 88.0, 80.0, 12.5)
    bare = sweep.make_row(cell, 2, [{**h, "contrastive_acc": ""} for h in history],
                          {"test_accuracy": 90.0, "test_loss": 0.3}, study, "cpu", "runs/x/final.pth")
    assert all(bare[k] is None for k in ("aug_test_acc", "knn10_acc", "contrastive_acc"))

    rows = make_rows({(1.0, 64, 0.1): [(95.0, 90.0), (97.0, 92.0)]})
    for r, aug in zip(rows, (60.0, 64.0)):
        r.update(aug_test_acc=aug, knn10_acc=88.0, contrastive_acc=12.0)
    md = sweep.results_markdown([sweep.parse_row({k: "" if v is None else str(v) for k, v in r.items()})
                                 for r in rows])
    section = md.split("## Every configuration's measures", 1)[1]
    assert "| augmented test acc (%) |" in section and "| 91.00 ± 1.41 | 62.00 ± 2.83 | 88.00 ± 0.00 |" in section
    assert "## Every configuration's measures" not in sweep.results_markdown(make_rows({(1.0, 64, 0.1): [(95.0, 90.0)]}))
    import matplotlib.image
    path = sweep.plot_accuracy_vs_scale(sweep.aggregate(rows), tmp_path / "p.png")
    wide = matplotlib.image.imread(path).shape[1]
    narrow = matplotlib.image.imread(sweep.plot_accuracy_vs_scale(sweep.aggregate(make_rows(
        {(1.0, 64, 0.1): [(95.0, 90.0)]})), tmp_path / "q.png")).shape[1]
    assert wide > 1.8 * narrow  # two panels: clean and augmented test views


def test_features_are_measured_once_per_checkpoint_with_every_label(tmp_path):
    """--test_args' measures of the features (augmented views, kNN) reach the probe with every label only: a
    probe with fewer labels of the same checkpoint gets the rest of --test_args and no measure flag."""
    args = simclr_train.parse_args(["--dataset", "synthetic", "--eval_dataset", "synthetic", "--label_fractions",
                                    "0.1", "1.0", "--data_scales", "1.0", "--batch_sizes", "64", "--test_args",
                                    "--eval_views 2 --knn --eval_crop_min_scale=0.3 --eval_hflip_prob 0 --test_learning_rate 0.01",
                                    "--out_dir", str(tmp_path)])
    cell = simclr_train.build_cells(args, announce=False)[0]
    full = simclr_train.test_argv(args, cell, tmp_path / "c.pth", tmp_path / "e", label_fraction=1.0)
    few = simclr_train.test_argv(args, cell, tmp_path / "c.pth", tmp_path / "e", label_fraction=0.1)
    given = ["--eval_views", "2", "--knn", "--eval_crop_min_scale=0.3", "--eval_hflip_prob", "0",
             "--test_learning_rate", "0.01"]
    # then the study's one view specification, every field explicit (simclr_train.eval_view_flags)
    assert full[-8 - 12:-12] == given and full[-12:] == simclr_train.eval_view_flags(args)
    assert few[-2:] == ["--test_learning_rate", "0.01"] and not any(t.startswith(("--eval_", "--knn")) for t in few)
    assert test_script.parse_args(few).eval_views == 0 and test_script.parse_args(full).eval_views == 2


def test_probes_below_every_label_are_the_converged_lbfgs_fit_unless_asked(tmp_path):
    """The recipe's Adam probe runs 500 epochs: with 1 % of the labels that is 500 steps, short of converging
    (docs/evaluation.md); the study's probes below every label are L-BFGS fits, l2 chosen inside the budget."""
    def argv(*extra):
        args = simclr_train.parse_args(["--dataset", "synthetic", "--eval_dataset", "synthetic", "--label_fractions",
                                        "0.1", "1.0", "--data_scales", "1.0", "--batch_sizes", "64", "--out_dir",
                                        str(tmp_path), *extra])
        cell = simclr_train.build_cells(args, announce=False)[0]
        return [test_script.parse_args(simclr_train.test_argv(args, cell, tmp_path / "c.pth", tmp_path / "e",
                                                              label_fraction=f)) for f in (0.1, 1.0)]
    few, full = argv()
    assert few.solver == "lbfgs" and few.val_split == 0.1 and full.solver == "sgd"
    few, full = argv("--few_label_probe", "sgd")
    assert few.solver == "sgd" and full.solver == "sgd"


def test_one_configuration_per_row_of_the_label_axis():
    """Issue 26 item 3: the configuration is chosen once per (kind, data scale) on the all-labels validation
    accuracy, and every label fraction is reported for that configuration, even where another configuration
    has the better validation accuracy at a smaller fraction."""
    rows = []
    # (lr, label fraction) -> (val, test) for two seeds: lr 0.125 wins with every label, lr 0.5 with 10 %
    for (lr, fraction), (val, test) in {(0.125, 1.0): (90.0, 88.0), (0.5, 1.0): (80.0, 79.0),
                                        (0.125, 0.1): (60.0, 61.0), (0.5, 0.1): (70.0, 72.0)}.items():
        for row in make_rows({(1.0, 64, lr): [(val, test), (val, test)]}):
            rows.append({**row, "label_fraction": fraction})
    points = sweep.label_axis_points(sweep.aggregate(rows))
    chosen = points[1.0][("simclr", "epochs")]
    assert [(e["label_fraction"], e["learning_rate"]) for e in chosen] == [(0.1, 0.125), (1.0, 0.125)]
    line = next(line for line in sweep.label_axis_markdown(rows) if line.startswith("| 1 | SimCLR"))
    assert "lr 0.125" in line and "61.00" in line and "72.00" not in line


def test_each_method_is_lead_level_or_behind_each_baseline_by_two_standard_errors():
    """results.md's verdicts: SimCLR against random init, per label fraction, from the seeds' sample deviations
    (the closed form of utils/stats.py); a gap inside two standard errors is level, and the rows read their
    labels_used into the table's text."""
    rows = []
    for fraction, simclr, random in ((1.0, (85.0, 86.0, 87.0), (80.0, 80.5, 81.0)),
                                     (0.1, (70.0, 74.0, 72.0), (71.0, 69.0, 70.0))):
        for row, acc, ref in zip(make_rows({(1.0, 64, 0.1): [(90.0, a) for a in simclr]}), simclr, random):
            rows.append({**row, "label_fraction": fraction, "labels_used": 100 if fraction < 1 else 1000})
            rows.append({**row, "kind": "random", "data_scale": None, "batch_size": None, "learning_rate": None,
                         "epochs": 0, "eval_epoch": 0, "steps": 0, "test_accuracy": ref, "val_accuracy": 85.0,
                         "label_fraction": fraction, "labels_used": 100 if fraction < 1 else 1000})
    got = {(c["fraction"], c["against"]): c for c in sweep.comparisons(sweep.aggregate(rows))}
    full, few = got[(1.0, "random")], got[(0.1, "random")]
    assert full["diff"] == pytest.approx(5.5) and full["se"] == pytest.approx(math.sqrt(1.0 / 3 + 0.25 / 3))
    assert full["verdict"] == "lead" and few["verdict"] == "level" and few["diff"] == pytest.approx(2.0)
    md = "\n".join(sweep.label_axis_markdown(rows))
    assert "| 1 | SimCLR | random init | 0.1 | probe | 3 vs 3 | +2.00 ± 1.29 (level) |" in md
    assert "+5.50 ± 0.65 (lead)" in md and "by fraction: 0.1: 100; 1: 1,000" in md


def test_methods_are_arms_of_the_same_grid_with_one_row_per_method_and_cell(tmp_path, fakes, monkeypatch):
    """--methods: every method trains on the grid's data scales, batches, epochs and seeds (SimCLR with the
    grid's lrs, the others with their recipe's lr), is probed alike, and has its row, table column and line."""
    from utils.methods import SELF_SUPERVISED

    assert sweep.METHOD_KINDS == SELF_SUPERVISED
    labels = []
    real_panel = sweep._scale_panel

    def panel(ax, *args, **kwargs):
        real_panel(ax, *args, **kwargs)
        labels.extend(ax.get_legend_handles_labels()[1])

    monkeypatch.setattr(sweep, "_scale_panel", panel)
    out = tmp_path / "sw"
    methods = ["simclr", "byol", "simsiam", "barlow_twins", "vicreg", "mocov2"]
    res = simclr_train.main([*FAST, "--out_dir", str(out), "--methods", *methods, "--data_scales", "0.05", "0.1",
                             "--learning_rates", "0.3"])
    rows = res["rows"]
    kinds = [r["kind"] for r in rows]
    assert sorted(set(kinds)) == sorted(methods) and kinds.count("simclr") == 2  # 2 scales x 1 lr
    for m in methods[1:]:
        mine = [r for r in rows if r["kind"] == m]
        assert sorted(r["data_scale"] for r in mine) == [0.05, 0.1]  # one row per cell
        assert all(r["batch_size"] == 50 and f"{m}_ds" in r["checkpoint"] and "lrauto" in r["checkpoint"] for r in mine)
    assert sorted(fakes.trained) == sorted(r["checkpoint"].split("/")[1] for r in rows)
    md = (out / sweep.RESULTS_MD).read_text()
    assert "## The self-supervised methods, test accuracy (%) per data scale" in md
    assert "| data scale | SimCLR | BYOL | MoCo v2 | SimSiam | Barlow Twins | VICReg |" in md
    for m in methods:
        assert any(label.startswith(sweep.KIND_LABELS[m]) for label in labels), (m, labels)


def test_scratch_training_plot_draws_each_scratch_cells_loss_per_step(tmp_path, monkeypatch):
    """One line per scratch cell (its metrics.csv, a row per epoch), at the steps its rows name; other cells and
    a scratch folder without metrics.csv (not started) are left out."""
    import utils.plotting

    runs = tmp_path / sweep.RUNS
    for name, rows in {"scratch_lf0.1_bs64_ep3_seed0": [(10, 2.0, 30.0), (20, 1.0, 70.0), (30, 0.5, 90.0)],
                       "scratch_lf0.1_bs64_ep3_seed1": [(10, 2.2, 25.0), (20, 1.1, 65.0)],
                       "ds1_bs64_lr0.1_ep1_seed0": [(10, 5.0, None)]}.items():
        (runs / name).mkdir(parents=True)
        lines = ["epoch,step,loss,train_acc"] + [f"{i},{s},{l},{'' if a is None else a}"
                                                 for i, (s, l, a) in enumerate(rows, 1)]
        (runs / name / "metrics.csv").write_text("\n".join(lines) + "\n")
    (runs / "scratch_lf0.01_bs64_ep3_seed0").mkdir()
    seen = {}
    monkeypatch.setattr(utils.plotting, "plot_panels", lambda path, x, panels, **kw: seen.update(x=x, panels=panels))
    sweep.plot_scratch_training(tmp_path, tmp_path / sweep.PLOT_SCRATCH)
    assert seen["x"] == [10, 20, 30]
    (_, loss), (_, acc) = seen["panels"]
    assert loss == {"scratch_lf0.1_bs64_ep3_seed0": [2.0, 1.0, 0.5], "scratch_lf0.1_bs64_ep3_seed1": [2.2, 1.1, None]}
    assert acc["scratch_lf0.1_bs64_ep3_seed0"] == [30.0, 70.0, 90.0]
    assert sweep.plot_scratch_training(tmp_path / "elsewhere", tmp_path / "none.png") is None  # no scratch cell
