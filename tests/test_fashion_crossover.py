"""benchmarks/fashion_crossover.py without training anything: the argv it gives train.py / test.py, the order of
its networks, and the report it draws from finished runs (eval.json and metrics.csv written here)."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import test as test_script
import train

SPEC = importlib.util.spec_from_file_location("fashion_crossover",
                                              Path(__file__).resolve().parents[1] / "benchmarks" / "fashion_crossover.py")
fc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fc)


def test_every_arm_gets_the_same_batch_and_schedule_shape_and_the_probes_their_solver(tmp_path):
    args = fc.parse_args(["--steps", "100", "300"])
    sim = train.parse_args(fc.train_argv(args, "simclr", 300, 0))
    sup = train.parse_args(fc.train_argv(args, "supervised", 300, 0))
    scratch = train.parse_args(fc.train_argv(args, "scratch", None, 0, 0.01))
    assert sim.steps == sup.steps == 300 and sim.batch_size == sup.batch_size == scratch.batch_size == 64
    assert sup.schedule == scratch.schedule == "cosine" and sup.warmup_epochs == 0
    assert scratch.label_fraction == 0.01 and scratch.label_val_split == fc.VAL_SPLIT and scratch.epochs == 100
    assert train.parse_args(fc.train_argv(args, "random", 0, 0)).epochs == 0
    assert sup.label_val_split == fc.VAL_SPLIT  # supervised pretraining never sees the probe's validation images
    few = test_script.parse_args(fc.test_argv(args, tmp_path / "c.pth", tmp_path / "f", tmp_path / "e", 0, 0.01, "lbfgs"))
    full = test_script.parse_args(fc.test_argv(args, tmp_path / "c.pth", tmp_path / "f", tmp_path / "e", 0, 1.0, "adam"))
    assert few.solver == "lbfgs" and few.label_fraction == 0.01 and few.val_split == fc.VAL_SPLIT and few.knn
    assert full.solver == "sgd" and full.label_fraction is None and full.feature_cache == str(tmp_path / "f")
    assert fc.solvers_at(0.1) == ("lbfgs", "adam") and fc.solvers_at(1.0) == ("adam",)
    names = [fc.name_of(*net) for net in fc.backbones(args)]
    assert names[:2] == ["simclr-s300-seed0", "supervised-s300-seed0"] and names[-1] == "random-s0-seed0"
    assert [fc.name_of(*n) for n in fc.backbones(fc.parse_args(["--arms", "random"]))] == ["random-s0-seed0"]


def _finished(out: Path, name: str, evals: dict, loss: float | None) -> None:
    """A run folder and its evals as train.py / test.py leave them (only the fields the report reads)."""
    run = out / "runs" / name
    run.mkdir(parents=True)
    if loss is not None:
        with open(run / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "step", "loss", "seconds"])
            w.writeheader()
            w.writerow({"epoch": 1, "step": 300, "loss": loss, "seconds": 12.5})
    for (solver, frac), acc in evals.items():
        d = out / "evals" / name / f"{solver}-f{frac:g}"
        d.mkdir(parents=True)
        lbfgs = ({"l2": 1e-3, "selection": [{"l2": 1e-3, "cv_acc": acc - 1}], "final_fit": {
            "train_cross_entropy": 0.4, "max_abs_gradient": 2e-5}, "chosen_by": "5-fold stratified cross-validation"}
                 if solver == "lbfgs" else None)
        (d / "eval.json").write_text(json.dumps({
            "test_accuracy": acc, "test_loss": 0.5, "num_labelled": 540, "labels_used": 540, "knn10_accuracy": acc - 5,
            **({"cv_accuracy": acc - 1} if lbfgs else {}),
            "history": {"train_loss": [0.9, 0.5]}, "hyperparameters": {"lbfgs": lbfgs} if lbfgs else {},
            "seconds": {"total": 3.0}}))


def test_the_report_reads_finished_runs_and_draws_them(tmp_path):
    _finished(tmp_path, "random-s0-seed0", {("lbfgs", 0.01): 82.35, ("adam", 0.01): 77.03, ("adam", 1.0): 86.09}, None)
    _finished(tmp_path, "simclr-s300-seed0", {("lbfgs", 0.01): 76.53, ("adam", 1.0): 83.47}, 3.858)
    args = fc.parse_args(["--out", str(tmp_path), "--steps", "100", "300", "--report"])
    rows = fc.collect(args, tmp_path)
    got = {(r["arm"], r["steps"], r["solver"], r["label_fraction"]): r["test_accuracy"] for r in rows}
    assert got == {("simclr", 300, "lbfgs", 0.01): 76.53, ("simclr", 300, "adam", 1.0): 83.47,
                   ("random", 0, "lbfgs", 0.01): 82.35, ("random", 0, "adam", 0.01): 77.03,
                   ("random", 0, "adam", 1.0): 86.09}  # simclr-s100 is not finished: no row
    lb = next(r for r in rows if r["arm"] == "simclr" and r["solver"] == "lbfgs")
    assert lb["cv_accuracy"] == 75.53 and lb["val_accuracy"] is None and lb["labels_used"] == lb["num_labelled"] == 540
    assert lb["chosen_by"].startswith("5-fold") and lb["probe_max_grad"] == 2e-5 and lb["pretrain_loss_last"] == 3.858
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 5
    fc.write_report(rows, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| simclr | 300 | 0 | 76.53 |  |  |  | 3.858 |" in md and "| random | 0 | 0 | 77.03 |  | 86.09 | 81.09 |" in md
    assert (tmp_path / "crossover.png").stat().st_size > 10_000


def test_the_report_finds_every_seed_on_disk_and_averages_them(tmp_path):
    """A second seed, trained by another invocation (--seeds 1), joins the report without being named again:
    per-seed rows, a mean-over-seeds table (± the standard deviation between seeds), and both seeds in the picture."""
    _finished(tmp_path, "random-s0-seed0", {("lbfgs", 0.1): 82.64, ("adam", 1.0): 86.09}, None)
    _finished(tmp_path, "random-s0-seed1", {("lbfgs", 0.1): 82.00, ("adam", 1.0): 86.51}, None)
    _finished(tmp_path, "simclr-s1000-seed0", {("lbfgs", 0.1): 84.47}, 3.48)
    _finished(tmp_path, "simclr-s1000-seed1", {("lbfgs", 0.1): 83.53}, 3.50)
    (tmp_path / "runs" / "simclr-s3000-seed0").mkdir()  # still training: no row
    rows = fc.collect(fc.parse_args(["--out", str(tmp_path), "--report"]), tmp_path)
    assert sorted((r["arm"], r["seed"], r["solver"]) for r in rows) == [
        ("random", 0, "adam"), ("random", 0, "lbfgs"), ("random", 1, "adam"), ("random", 1, "lbfgs"),
        ("simclr", 0, "lbfgs"), ("simclr", 1, "lbfgs")]
    fc.write_report(rows, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| simclr | 1000 | 0, 1 |  | 84.00 ± 0.66 (n=2) |  |  |" in md
    assert "| random | 0 | 0, 1 |  | 82.32 ± 0.45 (n=2) |  |  |" in md
    assert "| random | 0 | 0, 1 |  |  | 86.30 ± 0.30 (n=2) | 81.30 ± 0.30 (n=2) |" in md  # the Adam table, kNN
    assert (tmp_path / "crossover.png").stat().st_size > 10_000


def test_simclr_args_reach_the_simclr_arm_only_and_win_over_its_own_flags(tmp_path):
    args = fc.parse_args(["--simclr_args", "--crop_min_scale 0.3 --learning_rate 0.5", "--out", str(tmp_path)])
    sim = train.parse_args(fc.train_argv(args, "simclr", 1000, 0))
    sup = train.parse_args(fc.train_argv(args, "supervised", 1000, 0))
    default = train.parse_args(fc.train_argv(fc.parse_args([]), "simclr", 1000, 0))
    assert sim.crop_min_scale == 0.3 and sim.learning_rate == 0.5 and sim.steps == 1000
    assert default.learning_rate == 0.125 and default.crop_min_scale != 0.3
    assert sup.learning_rate == 0.05 and sup.crop_min_scale != 0.3


def test_one_out_folder_holds_the_runs_of_one_set_of_simclr_args(tmp_path):
    """A finished run is never retrained, so a second variant in the same folder would be reported as the first."""
    variant = tmp_path / "chase"
    fc.check_variant(fc.parse_args(["--simclr_args", "--crop_min_scale  0.3"]), variant.mkdir() or variant)
    assert (variant / "simclr_args.txt").read_text() == "--crop_min_scale 0.3\n"
    fc.check_variant(fc.parse_args(["--simclr_args", "--crop_min_scale 0.3"]), variant)  # the same flags resume
    (variant / "runs" / "simclr-s1000-seed0").mkdir(parents=True)
    for other in (["--simclr_args", "--crop_min_scale 0.5"], []):
        try:
            fc.check_variant(fc.parse_args(other), variant)
        except fc.UserError as exc:
            assert "another --out" in str(exc)
        else:
            raise AssertionError(f"{other} was let into a folder of --crop_min_scale 0.3 runs")
    default = tmp_path / "default"
    (default / "runs" / "simclr-s1000-seed0").mkdir(parents=True)  # runs from before the record existed
    fc.check_variant(fc.parse_args([]), default)
    try:
        fc.check_variant(fc.parse_args(["--simclr_args", "--learning_rate 0.5"]), default)
    except fc.UserError as exc:
        assert "default recipe" in str(exc)
    else:
        raise AssertionError("a variant was let into a folder of default-recipe runs")
    assert not (default / "simclr_args.txt").exists()


def test_a_chase_folders_report_names_its_simclr_args(tmp_path):
    fc.check_variant(fc.parse_args(["--simclr_args", "--learning_rate 0.5"]), tmp_path)
    _finished(tmp_path, "simclr-s300-seed0", {("lbfgs", 0.01): 76.53, ("adam", 1.0): 83.47}, 3.858)
    args = fc.parse_args(["--out", str(tmp_path), "--report"])
    fc.write_report(fc.collect(args, tmp_path), tmp_path)
    assert '`--simclr_args "--learning_rate 0.5"`' in (tmp_path / "results.md").read_text()


def test_the_supervised_arm_leaves_the_probes_validation_images_out(tmp_path):
    """The images supervised pretraining trains on and the probe's validation split are disjoint, for the seed both
    use; a run of an earlier version that trained on them is refused, not reused."""
    import numpy as np
    from utils.data.datasets import stratified_split
    from utils.data.subsets import training_subset

    args = fc.parse_args([])
    sup = train.parse_args(fc.train_argv(args, "supervised", 1000, 3))
    labels = np.repeat(np.arange(10), 600)
    classes = [str(c) for c in range(10)]
    trained = training_subset(labels, sup.data_scale, sup.seed, sup.label_fraction, sup.label_val_split, classes)
    val = stratified_split(labels, fc.VAL_SPLIT, 3, classes=classes)[1]
    assert len(val) == 600 and len(trained) == 5400 and not set(trained) & set(val)
    old = tmp_path / "runs" / "supervised-s1000-seed0"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"args": {"label_val_split": 0.0}}))
    try:
        fc.check_no_leak(old, "supervised")
    except fc.UserError as exc:
        assert "validation" in str(exc)
    else:
        raise AssertionError("a supervised run that trained on the validation images was reused")
    (old / "config.json").write_text(json.dumps({"args": {"label_val_split": fc.VAL_SPLIT}}))
    fc.check_no_leak(old, "supervised")
