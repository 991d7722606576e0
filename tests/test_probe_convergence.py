"""The default probe converges: against a converged L-BFGS logistic regression on the same features.

For each of 3 seeds and 3 kinds of synthetic checkpoint (random init, supervised, SimCLR; 16 px,
a few steps each), `test.py` with the default recipe's probe must
- start at or below ln C and never go above it (no divergence before learning),
- end on its lowest train loss (the curve falls to its end, as the cosine brings the lr to 0),
- reach at least the test accuracy of `test.py --solver lbfgs` (l2 chosen on a validation split,
  refit on train + val, every fit converged to its gradient tolerance) minus 1 point.
The figures it prints are the ones in the README (Recipes, "the probe").
"""
from __future__ import annotations

import math

import pytest

import test as test_script
import train

SEEDS = (0, 1, 2)
KINDS = {
    "random init": ["--epochs", "0"],
    "supervised": ["--train_type", "supervised", "--epochs", "2", "--batch_size", "50"],
    "SimCLR": ["--epochs", "2", "--batch_size", "50"],
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_default_probe_matches_converged_lbfgs(tmp_path, seed, capsys):
    common = ["--dataset", "synthetic", "--device", "cpu", "--quiet", "--seed", str(seed), "--image_size", "16",
              "--data_scale", "0.25"]
    rows = []
    for kind, flags in KINDS.items():
        run = tmp_path / kind.replace(" ", "-")
        train.main(common + flags + ["--run_dir", str(run)])
        probe_args = ["--model_path", str(run / "final.pth"), "--dataset", "synthetic", "--device", "cpu",
                      "--quiet", "--seed", str(seed)]
        sgd = test_script.main(probe_args + ["--run_dir", str(run / "probe")])
        lbfgs = test_script.main(probe_args + ["--run_dir", str(run / "lbfgs"), "--solver", "lbfgs"])
        fits = lbfgs["hyperparameters"]["lbfgs"]["selection"] + [lbfgs["hyperparameters"]["lbfgs"]["final_fit"]]
        assert all(f["converged"] and f["max_abs_gradient"] <= f["tolerance_grad"] for f in fits), [
            (f["l2"], f["iterations"], f["max_abs_gradient"]) for f in fits]
        losses = sgd["history"]["train_loss"]
        chance = math.log(sgd["dataset"]["num_classes"])
        rows.append((kind, losses[0], max(losses), losses[-1], sgd["test_accuracy"], lbfgs["test_accuracy"],
                     lbfgs["hyperparameters"]["lbfgs"]["l2"]))
        assert max(losses) <= chance + 1e-6, (kind, losses[:5])
        assert losses[-1] <= min(losses) + 1e-3, (kind, losses[-5:])
        assert sgd["test_accuracy"] >= lbfgs["test_accuracy"] - 1.0, rows[-1]
    with capsys.disabled():
        for kind, first, top, last, acc, ref, l2 in rows:
            print(f"\nseed {seed} {kind}: probe train loss epoch 1 {first:.3f}, max {top:.3f}, last {last:.3f}; "
                  f"test {acc:.2f} % vs L-BFGS {ref:.2f} % (l2 {l2:g})")
