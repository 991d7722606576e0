"""A convex linear probe: multinomial logistic regression on cached features, solved by L-BFGS.

The SGD probe (utils/eval/probe.py, the original project's settings) reports what its lr and schedule
make of the features: the original's lr 0.075 is several times above the stability limit of
standardised features (their covariance's top eigenvalue is ~200), so the head oscillates until
the cosine brings the lr down. This probe has no lr: it minimises a convex objective to
convergence,

    mean cross-entropy(W h + b, y) + l2 * ||W||^2      (the bias is not penalised),

with torch.optim.LBFGS (strong-Wolfe line search) on the whole cached training matrix, so its
result depends on the features and on l2 only. The test split is never used to choose. How l2 is
chosen depends on how many labels the probe may read:
- every label: on a validation split held out of the train split, then the head is refit on
  train + val with that l2 (the logistic-regression probes of Kolesnikov et al. 2019 and Radford
  et al. 2021);
- a label budget (--label_fraction < 1, --labels_per_class): by stratified k-fold cross-validation
  inside the labelled subset (`stratified_folds`, k = min(CV_FOLDS, the smallest class's labels)),
  then refit on the subset alone, so no label outside the budget is read (Oliver et al. 2018,
  "Realistic Evaluation of Deep Semi-Supervised Learning Algorithms": no validation set larger than
  the labelled set). Where a class has one label no fold can hold one out while training on that
  class; every l2 then fits its labels perfectly, and the tie rule of `choose_l2` (the most
  regularised) gives the grid's largest value: `DEFAULT_L2_REASON`, recorded in eval.json.
The head is evaluated on the test split once per round of iterations (the curves).

    from utils.eval.lbfgs_probe import fit_lbfgs, choose_l2
    info = fit_lbfgs(linear, lambda: linear(h), y, l2=1e-3)   # linear: nn.Linear, trained in place

The fit runs in float64 (the probe casts the features and the head), so that the gradient
tolerance (1e-5) is reachable; `converged` is reported from the gradient itself.

Run its tests with `python -m pytest tests/test_lbfgs_probe.py -q`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import NonFiniteLossError

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_MAX_ITER = 500
DEFAULT_VAL_SPLIT = 0.1  # what --solver lbfgs holds out when --val_split is not given
ITERS_PER_ROUND = 10  # one history row (train and test metrics) per this many L-BFGS iterations
# torch.optim.LBFGS caps the objective evaluations of one step() call at max_eval, fixed at
# construction to max_iter * 5 // 4; a round whose line searches need more evaluations would end
# early. Each round gets this many evaluations per iteration, so only the iteration budget binds.
EVALS_PER_ITER = 25
HISTORY_SIZE = 20
# Converged means: no gradient entry of the objective above TOLERANCE_GRAD at the end (checked
# after every round by an explicit evaluation, never inferred from how many iterations ran).
# The fit stops without converging when an iteration changes the objective by less than
# TOLERANCE_CHANGE (no further progress in float64) or at max_iter.
TOLERANCE_GRAD = 1e-5  # on the mean cross-entropy; the suboptimality is then below g^2 / (4 l2)
TOLERANCE_CHANGE = 1e-12


def objective(linear: nn.Linear, logits: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, mean cross-entropy): the quantity L-BFGS minimises and its data term."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    ce = F.cross_entropy(logits.to(dtype), y)
    return ce + l2 * linear.weight.to(dtype).pow(2).sum(), ce


def _max_abs_gradient(linear: nn.Linear, loss: torch.Tensor) -> float:
    grads = torch.autograd.grad(loss, list(linear.parameters()))
    return max(g.abs().max().item() for g in grads)


def fit_lbfgs(
    linear: nn.Linear,
    logits_fn: Callable[[], torch.Tensor],
    y: torch.Tensor,
    l2: float,
    max_iter: int = DEFAULT_MAX_ITER,
    on_round: Callable[[int], None] | None = None,
    check_params: Callable[[torch.optim.Optimizer], None] | None = None,
) -> dict:
    """Minimise the objective over `linear`'s weight and bias (in place), from zeros.

    logits_fn() -> logits (N, C) of every training sample (the whole cached matrix through the
    fixed feature normalisation and `linear`); run it in float64 for the gradient tolerance to be
    reachable. on_round(iterations so far) runs after every ITERS_PER_ROUND iterations and
    at the end; check_params(optimizer) may assert what the optimizer holds. Returns iterations,
    objective evaluations, `converged` (the largest gradient entry is <= TOLERANCE_GRAD), why it
    stopped, the final objective and cross-entropy, and the largest gradient entry at the end.
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=ITERS_PER_ROUND,
                                  max_eval=ITERS_PER_ROUND * EVALS_PER_ITER, history_size=HISTORY_SIZE,
                                  tolerance_grad=TOLERANCE_GRAD, tolerance_change=TOLERANCE_CHANGE,
                                  line_search_fn="strong_wolfe")
    if check_params is not None:
        check_params(optimizer)
    group = optimizer.param_groups[0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective(linear, logits_fn(), y, l2)
        loss.backward()
        return loss

    def evaluate() -> tuple[torch.Tensor, torch.Tensor, float]:
        loss, ce = objective(linear, logits_fn(), y, l2)
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(f"the L-BFGS probe's objective became {loss.item()} (l2 {l2:g})")
        return loss, ce, _max_abs_gradient(linear, loss)

    iterations = 0
    loss, ce, max_grad = evaluate()
    stop = "gradient tolerance" if max_grad <= TOLERANCE_GRAD else "max_iter"
    while stop == "max_iter" and iterations < max_iter:
        group["max_iter"] = min(ITERS_PER_ROUND, max_iter - iterations)
        group["max_eval"] = group["max_iter"] * EVALS_PER_ITER
        before = loss.item()
        optimizer.step(closure)
        done = optimizer.state[group["params"][0]].get("n_iter", 0)  # LBFGS keeps its count there
        ran, iterations = done - iterations, done
        loss, ce, max_grad = evaluate()
        if on_round is not None and ran > 0:
            on_round(iterations)
        if max_grad <= TOLERANCE_GRAD:
            stop = "gradient tolerance"
        elif ran < group["max_iter"] and abs(before - loss.item()) <= TOLERANCE_CHANGE * max(1.0, abs(before)):
            stop = "no progress (objective change below tolerance)"
    evals = optimizer.state[group["params"][0]].get("func_evals", 0)
    return {"l2": l2, "iterations": iterations, "evaluations": evals, "converged": max_grad <= TOLERANCE_GRAD,
            "stop": stop, "tolerance_grad": TOLERANCE_GRAD, "objective": loss.item(),
            "train_cross_entropy": ce.item(), "max_abs_gradient": max_grad}


CV_FOLDS = 5  # most folds of the in-budget cross-validation (fewer where a class has fewer labels)
FOLD_STREAM = 3  # second word of the fold generator's seed: its own stream (labels.py uses 2)
DEFAULT_L2_REASON = ("a class has a single label, so no fold can hold one out while training on that class: "
                     "cross-validation is impossible; every l2 fits the labelled images perfectly, and the tie rule "
                     "(the most regularised) gives the grid's largest l2")


def fold_count(y: Sequence[int] | torch.Tensor, folds: int = CV_FOLDS) -> int:
    """How many folds stratified cross-validation on labels y (N,) can use: min(folds, smallest class's count);
    below 2 it cannot be done."""
    counts = torch.bincount(torch.as_tensor(y, dtype=torch.long).cpu())
    counts = counts[counts > 0]
    return int(min(folds, int(counts.min()))) if len(counts) else 0


def stratified_folds(y: Sequence[int] | torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold number (N,) int64 of each sample: within each class a seeded permutation dealt round-robin, so each
    fold holds floor or ceil of count / folds of every class and every class is in every training part."""
    y = torch.as_tensor(y, dtype=torch.long).cpu()
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    out = torch.full((len(y),), -1, dtype=torch.long)
    for cls in torch.unique(y).tolist():
        members = torch.nonzero(y == cls).flatten()
        if len(members) < folds:
            raise ValueError(f"class {cls} has {len(members)} samples, fewer than {folds} folds")
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + FOLD_STREAM * 1_009 + int(cls))
        order = members[torch.randperm(len(members), generator=gen)]
        out[order] = torch.arange(len(order)) % folds
    return out


def choose_l2(grid: Sequence[float], val_accuracy: Sequence[float]) -> float:
    """The l2 of the best validation accuracy; on a tie the largest (the most regularised)."""
    if len(grid) != len(val_accuracy) or not grid:
        raise ValueError("one validation accuracy per l2 value is needed")
    best = max(val_accuracy)
    return max(l2 for l2, acc in zip(grid, val_accuracy) if acc == best)
