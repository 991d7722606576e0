"""Run lengths follow the split actually trained on (issue 26 item 1), and supervised pretraining never trains
on the probe's validation images (item 4). Pure counting: no data is read, no network is trained.

    python -m pytest tests/test_splits.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import simclr_train
import train
from utils.data.datasets import stratified_split, stratified_subset
from utils.recipes import recipe
from train import training_subset
from utils.data.splits import split_size

# STL-10 (the dataset's README): 5,000 labelled train images (500 per class), 100,000 unlabelled, 8,000 test.
STL10_TRAIN, STL10_UNLABELLED = 5_000, 100_000


def stl10_like_labels() -> np.ndarray:
    """train+unlabeled as utils/data/stl10.py lays it out: 500 per class, then 100,000 images labelled -1."""
    return np.concatenate([np.repeat(np.arange(10), 500), np.full(STL10_UNLABELLED, -1)])


def test_split_sizes_count_the_unlabelled_images():
    assert split_size("stl10", "train") == STL10_TRAIN
    assert split_size("stl10", "train+unlabeled") == STL10_TRAIN + STL10_UNLABELLED
    assert split_size("cifar10", "train") == 50_000 and split_size("folder", "train") is None


def test_a_steps_run_on_stl10_counts_its_epochs_on_train_plus_unlabeled_and_takes_the_short_run_lr():
    args = train.parse_args(["--dataset", "stl10", "--steps", "5000", "--batch_size", "512"])
    epochs = 5000 * 512 / (STL10_TRAIN + STL10_UNLABELLED)  # 24.4 epochs, not 512
    assert train.run_epochs(args) == pytest.approx(epochs)
    short = recipe("tuned", "simclr")["short_run"]
    assert epochs < short["below_epochs"]
    assert args.learning_rate == pytest.approx(short["lr"] * 512 / short["lr_batch"])
    # supervised reads the labelled train split only
    sup = train.parse_args(["--dataset", "stl10", "--train_type", "supervised", "--steps", "100", "--batch_size", "50"])
    assert train.run_epochs(sup) == pytest.approx(100 * 50 / STL10_TRAIN)


def test_the_stl10_steps_budget_and_its_eval_checkpoints_follow_each_arms_own_split():
    args = simclr_train.parse_args(["--dataset", "stl10", "--eval_dataset", "stl10", "--data_scales", "0.5", "1.0",
                                    "--batch_sizes", "512", "--epochs", "100", "--eval_at", "50", "--budget", "steps",
                                    "--baselines", "supervised", "--supervised_args", "--batch_size 128"])
    cells = {(c.kind, c.data_scale): c for c in simclr_train.build_cells(args, announce=False)}
    simclr_full = STL10_TRAIN + STL10_UNLABELLED
    supervised_full = STL10_TRAIN - 10 * round(0.1 * 500)  # the probe's validation split (10 % per class) left out
    for kind, full, batch in (("simclr", simclr_full, 512), ("supervised", supervised_full, 128)):
        for scale in (0.5, 1.0):
            cell = cells[(kind, scale)]
            assert cell.steps == 100 * (full // batch)
            assert cell.steps_per_epoch == round(scale * full) // batch
            run_epochs = math.ceil(cell.steps / cell.steps_per_epoch)  # what train.py's run_length gives
            save_at = train.parse_args(simclr_train.train_argv(args, cell, "R")).save_at
            assert save_at == [cell.checkpoint_epoch(50)] and save_at[0] <= run_epochs  # the checkpoint is reached


def test_a_data_scale_subset_of_train_plus_unlabeled_is_nested_and_counted_exactly():
    labels = stl10_like_labels()
    half, tenth = training_subset(labels, 0.5, seed=3), training_subset(labels, 0.1, seed=3)
    assert len(half) == 2_500 + 50_000 and len(tenth) == 500 + 10_000
    assert np.isin(tenth, half).all()
    assert np.array_equal(np.bincount(labels[half][labels[half] >= 0]), np.full(10, 250))


def test_supervised_pretraining_on_the_probes_data_leaves_its_validation_split_out():
    labels = np.repeat(np.arange(10), 200)
    for scale in (0.3, 1.0):
        idx = training_subset(labels, scale, seed=1, val_split=0.1)
        val = stratified_split(labels, 0.1, 1)[1]  # what test.py --val_split 0.1 --seed 1 validates on
        assert not np.isin(idx, val).any()
        assert len(idx) == 10 * round(scale * 180)
    # without a probe split: the plain data-scale subset, as before
    assert np.array_equal(training_subset(labels, 0.3, seed=1), stratified_subset(labels, 0.3, 1))
