"""The convex L-BFGS probe: its solution checked by optimality and by an independent solver."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.eval.lbfgs_probe import choose_l2, fit_lbfgs, objective


def _problem(n: int = 300, d: int = 12, c: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 1.5
    y = torch.randint(0, c, (n,), generator=g)
    h = centers[y] + torch.randn(n, d, generator=g)
    return h.double(), y  # the probe fits in float64


def _reference_solution(h, y, c, l2, steps=20_000, lr=0.5):
    """Plain full-batch gradient descent on the same convex objective, written out by hand."""
    w = torch.zeros(c, h.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    hd = h.double()
    for _ in range(steps):
        loss = F.cross_entropy(hd @ w.T + b, y) + l2 * (w ** 2).sum()
        gw, gb = torch.autograd.grad(loss, [w, b])
        with torch.no_grad():
            w -= lr * gw
            b -= lr * gb
    return w.detach(), b.detach()


@pytest.mark.parametrize("l2", [1e-2, 1e-1])
def test_lbfgs_matches_gradient_descent_and_is_stationary(l2):
    h, y = _problem()
    linear = nn.Linear(h.shape[1], 4).double()
    info = fit_lbfgs(linear, lambda: linear(h), y, l2, max_iter=500)
    assert info["converged"] and info["max_abs_gradient"] <= info["tolerance_grad"] and info["stop"] == "gradient tolerance"
    w_ref, b_ref = _reference_solution(h, y, 4, l2)
    # The weight is unique (strictly convex in W); the bias only up to a common shift (softmax).
    assert torch.allclose(linear.weight.double(), w_ref, atol=2e-3), (linear.weight.double() - w_ref).abs().max()
    b = linear.bias.detach().double()
    assert torch.allclose(b - b.mean(), b_ref - b_ref.mean(), atol=2e-3)
    ref_obj = F.cross_entropy(h.double() @ w_ref.T + b_ref, y) + l2 * (w_ref ** 2).sum()
    assert abs(info["objective"] - ref_obj.item()) < 1e-5


def test_stronger_l2_gives_smaller_weights_and_objective_counts_it():
    h, y = _problem(seed=1)
    norms = []
    for l2 in (1e-4, 1e-2, 1.0):
        linear = nn.Linear(h.shape[1], 4).double()
        info = fit_lbfgs(linear, lambda: linear(h), y, l2, max_iter=500)
        obj, ce = objective(linear, linear(h), y, l2)
        assert abs(obj.item() - info["objective"]) < 1e-6
        assert abs((obj - ce).item() - l2 * linear.weight.pow(2).sum().item()) < 1e-6
        norms.append(linear.weight.norm().item())
    assert norms[0] > norms[1] > norms[2]


def test_rounds_report_progress_and_max_iter_is_respected():
    h, y = _problem(seed=2)
    linear = nn.Linear(h.shape[1], 4).double()
    seen = []
    info = fit_lbfgs(linear, lambda: linear(h), y, 1e-6, max_iter=25, on_round=seen.append)
    assert info["iterations"] <= 25 and seen and seen[-1] == info["iterations"]
    assert seen == sorted(seen) and all(0 < a < b for a, b in zip(seen, seen[1:]))


def test_fit_starts_from_zeros_so_it_is_repeatable():
    h, y = _problem(seed=3)
    a, b = nn.Linear(h.shape[1], 4).double(), nn.Linear(h.shape[1], 4).double()
    torch.nn.init.normal_(b.weight, std=5.0)  # a different starting point is overwritten
    fit_lbfgs(a, lambda: a(h), y, 1e-2)
    fit_lbfgs(b, lambda: b(h), y, 1e-2)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_choose_l2_uses_the_best_val_accuracy_and_breaks_ties_towards_more_regularisation():
    assert choose_l2([1e-4, 1e-3, 1e-2], [50.0, 61.0, 60.0]) == 1e-3
    assert choose_l2([1e-4, 1e-3, 1e-2], [61.0, 61.0, 60.0]) == 1e-3
    with pytest.raises(ValueError):
        choose_l2([1e-4], [1.0, 2.0])


def _realistic_problem(n: int = 5000, d: int = 512, c: int = 50, seed: int = 0):
    """Standardised anisotropic features: per-dimension scales spanning three decades, as in real backbones."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    centers = torch.randn(c, d, generator=g) * 0.3
    scales = torch.logspace(-2, 1, d, dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    h = ((centers[y].double() + torch.randn(n, d, generator=g, dtype=torch.float64)) * scales) @ mixing
    return (h - h.mean(0)) / h.std(0), y


@pytest.mark.parametrize("l2", [1e-5, 1e-3])
def test_lbfgs_on_a_realistic_problem_reports_convergence_honestly(l2):
    """Either the gradient tolerance is reached, or the fit says it did not converge; never 8 iterations."""
    h, y = _realistic_problem()
    linear = nn.Linear(h.shape[1], 50).double()
    info = fit_lbfgs(linear, lambda: linear(h), y, l2, max_iter=60)
    loss, _ = objective(linear, linear(h), y, l2)
    true_max_grad = max(g.abs().max().item() for g in torch.autograd.grad(loss, list(linear.parameters())))
    assert info["max_abs_gradient"] == pytest.approx(true_max_grad, rel=1e-6)
    assert info["converged"] == (true_max_grad <= info["tolerance_grad"])
    if not info["converged"]:
        assert info["iterations"] == 60 or info["stop"].startswith("no progress"), info
    assert info["iterations"] > 8, info
