"""The default probe converges: against a converged L-BFGS logistic regression on the same features.

For each of 2 seeds and 3 kinds of synthetic checkpoint (random init, supervised, SimCLR; 16 px,
a few steps each), `test.py` with the default recipe's probe must
- start at or below ln C and never go above it (no divergence before learning),
- end on its lowest train loss (the curve falls to its end, as the cosine brings the lr to 0),
- reach, over the 6 checkpoints, at least the mean test accuracy of `test.py --solver lbfgs` (l2
  chosen on a validation split, refit on train + val, that fit converged to its gradient
  tolerance) minus 1 point.
The figures it prints are the ones in docs/recipes.md ("the probe").
"""
from __future__ import annotations

import math

import pytest

import test as test_script
import train

SEEDS = (0, 1)
KINDS = {
    "random init": ["--epochs", "0"],
    "supervised": ["--train_type", "supervised", "--epochs", "2", "--batch_size", "50"],
    "SimCLR": ["--epochs", "2", "--batch_size", "50"],
}


@pytest.mark.slow
@pytest.mark.longest
def test_default_probe_matches_converged_lbfgs(tmp_path, capsys):
    rows = []
    for seed in SEEDS:
        common = ["--dataset", "synthetic", "--device", "cpu", "--quiet", "--seed", str(seed), "--image_size", "16",
                  "--data_scale", "0.25"]
        for kind, flags in KINDS.items():
            run = tmp_path / f"{kind.replace(' ', '-')}-{seed}"
            train.main(common + flags + ["--run_dir", str(run)])
            # both probes read one feature pass (test.py --feature_cache): the same features, half the passes
            probe_args = ["--model_path", str(run / "final.pth"), "--dataset", "synthetic", "--device", "cpu",
                          "--quiet", "--seed", str(seed), "--feature_cache", str(run / "features")]
            sgd = test_script.main(probe_args + ["--run_dir", str(run / "probe")])
            lbfgs = test_script.main(probe_args + ["--run_dir", str(run / "lbfgs"), "--solver", "lbfgs",
                                                   "--lbfgs_max_iter", "2000"])
            info = lbfgs["hyperparameters"]["lbfgs"]
            final = info["final_fit"]  # the reference: the chosen l2 refit on train + val, converged
            assert final["converged"] and final["max_abs_gradient"] <= final["tolerance_grad"], final
            # The other l2 values' fits say honestly whether they converged (the smallest l2 may not in 2,000).
            assert all(f["converged"] == (f["max_abs_gradient"] <= f["tolerance_grad"]) for f in info["selection"])
            losses = sgd["history"]["train_loss"]
            chance = math.log(sgd["dataset"]["num_classes"])
            rows.append((seed, kind, losses[0], max(losses), losses[-1], sgd["test_accuracy"], lbfgs["test_accuracy"],
                         lbfgs["hyperparameters"]["lbfgs"]["l2"]))
            assert max(losses) <= chance + 1e-6, (kind, seed, losses[:5])  # never above chance: no divergence
            assert losses[-1] <= min(losses) + 1e-3, (kind, seed, losses[-5:])  # falls to its end
    with capsys.disabled():
        for seed, kind, first, top, last, acc, ref, l2 in rows:
            print(f"\nseed {seed} {kind}: probe train loss epoch 1 {first:.3f}, max {top:.3f}, last {last:.3f}; "
                  f"test {acc:.2f} % vs L-BFGS {ref:.2f} % (l2 {l2:g})")
    # Over the 6 probes (3 kinds x 2 seeds, 500 test images each: one probe's accuracy has a binomial
    # standard error of about 2 points), the default probe is at least the converged L-BFGS minus 1 point.
    mean_probe = sum(r[5] for r in rows) / len(rows)
    mean_lbfgs = sum(r[6] for r in rows) / len(rows)
    assert mean_probe >= mean_lbfgs - 1.0, (mean_probe, mean_lbfgs, rows)
