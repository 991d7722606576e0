"""The few-label axis: labelled subsets (balanced, nested, seeded, never validation images), test.py's
--label_fraction / --labels_per_class (eval.json fields, exit 2), the semi-supervised fine-tune and the
feature cache.

    python -m pytest tests/test_labels.py -q
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import test as test_script
from tests.test_test_script import cut_synthetic, make_checkpoint
from utils.data.datasets import indices_sha256, load_split, stratified_split
from utils.data.labels import labelled_subset, per_class_counts
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 100, 30


def balanced_labels(num_classes: int = 10, per_class: int = 50, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


# --- the subset rule, against naive references ----------------------------------------------------

@pytest.mark.parametrize("fraction", [0.01, 0.03, 0.1, 0.25, 0.37, 0.5, 0.9])
def test_balanced_counts_differ_by_at_most_one_and_total_is_the_fraction(fraction):
    labels = balanced_labels(10, 50)
    val = stratified_split(labels, 0.1, seed=0)[1]
    idx = labelled_subset(labels, 10, seed=0, fraction=fraction, exclude=val)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.min() >= 1
    candidates = len(labels) - len(val)
    assert counts.sum() == max(10, round(fraction * candidates))  # at least one label per class
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)


def test_subsets_are_nested_across_fractions_and_labels_per_class():
    labels = balanced_labels(10, 60)
    val = stratified_split(labels, 0.2, seed=3)[1]
    subsets = [set(labelled_subset(labels, 10, seed=3, fraction=f, exclude=val)) for f in (0.01, 0.1, 0.5, 1.0)]
    for small, big in zip(subsets, subsets[1:]):
        assert small <= big and len(small) < len(big)
    one, five = (set(labelled_subset(labels, 10, seed=3, per_class=n, exclude=val)) for n in (1, 5))
    assert one <= five <= subsets[1 + 1]  # 5 per class lies inside the 50 % subset (24 per class)
    assert subsets[-1] == set(range(len(labels))) - set(val)  # 100 %: every non-validation image


def test_validation_images_never_labelled_and_seed_decides():
    labels = balanced_labels(5, 40)
    for seed in range(4):
        val = stratified_split(labels, 0.25, seed=seed)[1]
        for f in (0.05, 0.3, 1.0):
            assert not set(labelled_subset(labels, 5, seed=seed, fraction=f, exclude=val)) & set(val)
    a = labelled_subset(labels, 5, seed=0, fraction=0.1)
    assert np.array_equal(a, labelled_subset(labels, 5, seed=0, fraction=0.1))
    assert not np.array_equal(a, labelled_subset(labels, 5, seed=1, fraction=0.1))


def test_imbalanced_classes_are_capped_and_remainder_goes_by_seeded_order():
    available = np.array([100, 100, 100, 2])
    counts = per_class_counts(available, seed=0, fraction=0.1)  # T = round(0.1 * 302) = 30 -> 8,8,7,7 capped
    assert sorted(counts[:3].tolist() + [8 if counts[3] == 2 else 7]) in ([7, 7, 8, 8], [7, 8, 8, 8])
    assert counts[3] == 2 and counts.sum() <= 30
    # Monotone in the fraction for one seed: what makes the subsets nested.
    grid = np.linspace(0.001, 1, 200)
    rows = np.array([per_class_counts(available, 7, fraction=f) for f in grid])
    assert np.all(np.diff(rows, axis=0) >= 0)


def test_refusals_are_one_line_user_errors():
    labels = np.array([0] * 5 + [1] * 5 + [2] * 2)
    with pytest.raises(UserError, match="more than class c2 has .2 train images"):
        labelled_subset(labels, 3, seed=0, per_class=3, classes=["c0", "c1", "c2"])
    # A class with no image outside the validation split (here: the whole class is excluded).
    with pytest.raises(UserError, match="at least one label per class.*c2"):
        labelled_subset(labels, 3, seed=0, fraction=0.5, exclude=np.array([10, 11]), classes=["c0", "c1", "c2"])
    with pytest.raises(UserError, match="no train image"):  # a class of the class list absent from train
        labelled_subset(labels, 4, seed=0, fraction=1.0)


# --- test.py end to end -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("labels") / "final.pth", image_size=8)


@pytest.fixture
def small_synthetic(monkeypatch):
    cut_synthetic(monkeypatch, N_TRAIN, N_TEST)


def evaluate(ckpt: Path, run_dir: Path, *extra: str) -> dict:
    return test_script.main(["--model_path", str(ckpt), "--dataset", "synthetic", "--device", "cpu", "--quiet",
                             "--test_num_epochs", "3", "--run_dir", str(run_dir), *extra])


def test_eval_json_records_the_subset_and_the_cache_serves_every_fraction(ckpt, small_synthetic, tmp_path):
    cache = tmp_path / "cache"
    report = evaluate(ckpt, tmp_path / "f", "--label_fraction", "0.2", "--val_split", "0.2", "--seed", "4",
                      "--feature_cache", str(cache))
    labels = load_split("synthetic", "train").labels[:N_TRAIN]
    val = stratified_split(labels, 0.2, seed=4)[1]
    want = labelled_subset(labels, 10, seed=4, fraction=0.2, exclude=val)
    saved = json.loads((tmp_path / "f" / "eval.json").read_text())
    assert saved["label_fraction"] == 0.2 and saved["labels_per_class"] is None
    assert saved["label_counts"] == np.bincount(labels[want], minlength=10).tolist()
    assert saved["labelled_subset_sha256"] == indices_sha256(want) == report["labelled_subset_sha256"]
    assert saved["dataset"]["num_train"] == len(want) and saved["dataset"]["num_test"] == N_TEST  # test unchanged
    assert "% of the labels" in saved["labels"] and saved["feature_cache"]["hit"] is False
    # Another subset (labels per class, another seed and split) of the same checkpoint: read from the cache.
    per_class = evaluate(ckpt, tmp_path / "n", "--labels_per_class", "2", "--feature_cache", str(cache))
    assert per_class["label_counts"] == [2] * 10 and per_class["label_fraction"] == 1.0
    assert per_class["feature_cache"]["hit"] is True and len(list(cache.glob("*.pt"))) == 1
    # Without the cache: the same subset, and features of the subset alone equal the whole split's rows
    # up to the rounding of batched convolutions.
    plain = evaluate(ckpt, tmp_path / "p", "--labels_per_class", "2")
    assert plain["labelled_subset_sha256"] == per_class["labelled_subset_sha256"] and "feature_cache" not in plain
    assert plain["test_loss"] == pytest.approx(per_class["test_loss"], rel=1e-4, abs=1e-5)


def test_semi_supervised_finetune_takes_its_recipe(ckpt, small_synthetic, tmp_path):
    report = evaluate(ckpt, tmp_path / "ft", "--finetune", "--label_fraction", "0.1", "--test_num_epochs", "1",
                      "--batch_size", "8")
    hp = report["hyperparameters"]
    assert hp["optimizer"] == "nesterov" and hp["weight_decay"] == 0.0 and hp["momentum"] == 0.9
    assert hp["stages"][0]["lr"] == pytest.approx(0.05 * 8 / 256) and hp["head_init"] == "zeros"
    assert "B.5" in hp["recipe_source"] and report["label_counts"] == [1] * 10
    cfg = test_script.probe_config(test_script.parse_args(["--model_path", "x", "--finetune", "--label_fraction",
                                                           "0.01"]), None)
    assert cfg.epochs == 60 and cfg.batch_size == 256 and cfg.stages[0].lr == pytest.approx(0.05)
    cfg = test_script.probe_config(test_script.parse_args(["--model_path", "x", "--finetune", "--label_fraction",
                                                           "0.1"]), None)
    assert cfg.epochs == 30


def test_refused_in_one_line_exit_2(ckpt, tmp_path):
    with pytest.raises(SystemExit) as stop:
        test_script.parse_args(["--model_path", "x", "--label_fraction", "0.5", "--labels_per_class", "2"])
    assert stop.value.code == 2
    proc = subprocess.run([sys.executable, "test.py", "--model_path", str(ckpt), "--dataset", "synthetic",
                           "--device", "cpu", "--run_dir", str(tmp_path / "r"), "--labels_per_class", "100000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--labels_per_class 100000 is more than class" in lines[0] and not (tmp_path / "r").exists()


# --- the study's label axis, end to end (real train.py / test.py, tiny) ---------------------------

@pytest.mark.slow
def test_demo_study_with_label_fractions(tmp_path, monkeypatch):
    import simclr_train
    from utils import sweep
    from utils.data import synthetic

    monkeypatch.setattr(synthetic, "SYNTHETIC_TRAIN", 200)
    monkeypatch.setattr(synthetic, "SYNTHETIC_TEST", 20)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no ImageNet weights
    out = tmp_path / "study"
    result = simclr_train.main([
        "--dataset", "synthetic", "--eval_dataset", "synthetic", "--device", "cpu", "--quiet", "--workers", "0",
        "--data_scales", "1.0", "--batch_sizes", "20", "--learning_rates", "0.3", "--epochs", "1", "--seeds", "0",
        "--baselines", "supervised", "random", "scratch", "--supervised_args", "--batch_size 10",
        "--label_fractions", "0.1", "1.0", "--val_split", "0.2", "--test_num_epochs", "2",
        "--train_args", "--image_size 8", "--out_dir", str(out)])
    rows = sweep.read_results(out / sweep.RESULTS_CSV)
    got = sorted((r["kind"], r["label_fraction"]) for r in rows)
    # scratch at every label of the pretraining data itself is the supervised cell at data scale 1: not run twice
    assert got == sorted([(k, f) for k in ("simclr", "supervised", "random") for f in (0.1, 1.0)] + [("scratch", 0.1)])
    assert result["added"] == 7 and (out / sweep.PLOT_LABELS).stat().st_size > 0
    assert (out / sweep.PLOT_SCRATCH).stat().st_size > 0  # the scratch cell's training loss, for its convergence
    md = (out / sweep.RESULTS_MD).read_text()
    assert "## Label efficiency" in md and "supervised from scratch on the labels" in md
    # Every fraction of a checkpoint was probed on the features of one pass (then the cache was removed).
    evals = [json.loads(p.read_text()) for p in (out / "runs").glob("ds1_*/eval-*/eval.json")]
    assert sorted(e["feature_cache"]["hit"] for e in evals) == [False, True]
    assert not list((out / "runs").glob("*/features/*.pt"))
    scratch = json.loads((out / "runs" / "scratch_lf0.1_bs10_ep1_seed0" / "config.json").read_text())["args"]
    assert scratch["label_fraction"] == 0.1 and scratch["label_val_split"] == 0.2 and scratch["dataset"] == "synthetic"
