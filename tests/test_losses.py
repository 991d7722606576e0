"""NT-Xent against a naive loop written from SimCLR's Algorithm 1, and closed forms."""
import math

import pytest
import torch

import torch.nn.functional as F

from utils.train.losses import gathered_nt_xent_loss, nt_xent_loss


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Algorithm 1 of Chen et al. (2020), literally: loops over pairs, float64."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2

    def sim(u, v):
        return torch.dot(u, v) / (u.norm() * v.norm())

    def ell(i, j):
        num = torch.exp(sim(z[i], z[j]) / t)
        den = sum(torch.exp(sim(z[i], z[k]) / t) for k in range(n2) if k != i)
        return -torch.log(num / den)

    total = sum(ell(k, k + n) + ell(k + n, k) for k in range(n))
    return total / n2


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 8, 0.5), (7, 4, 0.1), (4, 16, 1.0)])
def test_matches_algorithm_1(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(naive_nt_xent(z1, z2, t).item(), rel=1e-5)


def test_gradient_matches_reference():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ref = naive_nt_xent(z1, z2, 0.5)
    ga = torch.autograd.grad(ref, (z1, z2))
    ours = nt_xent_loss(z1, z2, 0.5)
    gb = torch.autograd.grad(ours, (z1, z2))
    for a, b in zip(ga, gb):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


@pytest.mark.parametrize("n,t", [(1, 0.5), (4, 0.5), (8, 0.1)])
def test_orthogonal_identical_pairs_closed_form(n, t):
    # z1 = z2 = one-hot rows: the positive has similarity 1, all 2N-2 negatives 0, so
    # loss = -log(e^{1/t} / (e^{1/t} + (2N-2))) = log(1 + (2N-2) e^{-1/t}).
    z = torch.eye(n, 16)[:n]
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_opposite_pairs_closed_form():
    # Two pairs on one axis: z1 = [e, -e], z2 = [e, -e]. Anchor e: positive e (sim 1), negatives
    # -e (sim -1) twice... computed by hand for t = 1: -log(e / (e + 2 e^{-1})).
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    expected = -math.log(math.e / (math.e + 2 * math.exp(-1)))
    assert nt_xent_loss(e, e.clone(), 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_scale_invariant_and_symmetric():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    base = nt_xent_loss(z1, z2)
    assert nt_xent_loss(3 * z1, 0.1 * z2).item() == pytest.approx(base.item(), rel=1e-5)
    assert nt_xent_loss(z2, z1).item() == pytest.approx(base.item(), rel=1e-5)


def test_stable_at_low_temperature():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    loss = nt_xent_loss(z1, z2, temperature=0.005)  # exp(1/t) = exp(200) overflows float32
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(naive_nt_xent(z1, z2, 0.005).item(), rel=1e-4)


def test_rejects_bad_shapes_and_temperature():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0)


def test_nt_xent_is_float32_under_bf16_autocast():
    """autocast would run z @ z.T in bf16 (logits quantised to ~2^-8 / t); the loss must not change."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(64, 128, generator=g), torch.randn(64, 128, generator=g)
    exact = nt_xent_loss(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = nt_xent_loss(z1, z2, 0.1)
        gathered = gathered_nt_xent_loss(z1, z2, 0.1, gather_fn=lambda t: t)
        # What the loss computed before: `.float()` inside autocast, the matmul still in bf16.
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        bf16_logits = z @ z.t() / 0.1
    assert bf16_logits.dtype == torch.bfloat16  # autocast is really active for the matmul
    assert mixed.dtype == gathered.dtype == torch.float32
    assert torch.allclose(mixed, exact, atol=1e-6, rtol=0) and torch.allclose(gathered, exact, atol=1e-6, rtol=0)
    naive = F.cross_entropy(bf16_logits.float().masked_fill(torch.eye(128, dtype=torch.bool), float("-inf")),
                            torch.cat([torch.arange(64) + 64, torch.arange(64)]))
    assert (naive - exact).abs() > 1e-4  # the check above would catch a bf16 similarity matrix


# ----------------------------------------------------------------------------------------------
# Contrastive accuracy: the share of the 2N views whose positive is the most similar candidate.

def naive_contrastive_correct(z1: torch.Tensor, z2: torch.Tensor) -> int:
    """From the definition, with two loops in float64: view i is counted when the cosine with its
    positive is strictly greater than with each of the other 2N - 2 candidates (a tie is a miss)."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2

    def cos(u, v):
        return (torch.dot(u, v) / (u.norm() * v.norm())).item()

    correct = 0
    for i in range(n2):
        positive = (i + n) % n2
        if all(cos(z[i], z[positive]) > cos(z[i], z[k]) for k in range(n2) if k not in (i, positive)):
            correct += 1
    return correct


@pytest.mark.parametrize("n,d,seed", [(2, 3, 0), (6, 4, 1), (9, 2, 2), (16, 8, 3)])
def test_contrastive_correct_matches_naive_loop(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g)
    z2 = z1 + 0.8 * torch.randn(n, d, generator=g)  # related views: neither all right nor all wrong
    loss, correct = nt_xent_loss(z1, z2, 0.5, return_correct=True)
    assert correct.dtype == torch.int64 and correct.dim() == 0
    assert correct.item() == naive_contrastive_correct(z1, z2)
    assert loss.item() == nt_xent_loss(z1, z2, 0.5).item()  # the loss is the same with or without
    single = gathered_nt_xent_loss(z1, z2, 0.5, gather_fn=lambda x: x, return_correct=True)
    assert single[1].item() == correct.item() and single[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_contrastive_correct_known_cases_and_ties():
    eye = torch.eye(3)
    assert nt_xent_loss(eye, eye * 5.0, 0.5, return_correct=True)[1].item() == 6  # identical pairs: all 6
    same = torch.ones(4, 3)
    assert nt_xent_loss(same, same, 0.5, return_correct=True)[1].item() == 0  # collapse: all ties, all missed
    z2 = eye.clone()
    z2[0] = eye[1]  # pair 0's second view now equals pair 1's views
    # z1[0]=e0 ties at cosine 0 with everything: miss; z2[0]=e1 prefers e1 over its positive e0: miss;
    # both views of pair 1 tie between their positive and z2[0]: miss; pair 2 is untouched: 2 of 6.
    assert nt_xent_loss(eye, z2, 0.5, return_correct=True)[1].item() == 2 == naive_contrastive_correct(eye, z2)


def test_contrastive_correct_has_no_gradient_and_works_under_autocast():
    z1 = torch.randn(5, 4, requires_grad=True)
    z2 = torch.randn(5, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, correct = nt_xent_loss(z1, z2, 0.5, return_correct=True)
    assert not correct.requires_grad and loss.requires_grad
    assert correct.item() == naive_contrastive_correct(z1.detach(), z2.detach())
