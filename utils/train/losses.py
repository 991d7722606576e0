"""Losses: NT-Xent, the contrastive loss of SimCLR.

Chen, Kornblith, Norouzi, Hinton (2020), "A Simple Framework for Contrastive Learning of
Visual Representations", eq. (1):

    l(i, j) = -log( exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t) )

with sim the cosine similarity, summed over both orderings of every positive pair and divided
by 2N (Algorithm 1). Each of the 2N anchors has 1 positive and 2N-2 negatives.

With return_correct=True both losses also count the anchors whose positive is the most similar
of their 2N-1 candidates (the contrastive accuracy, read off the same similarity matrix: see
`positive_is_top1`); train.py reports it as metrics.csv's contrastive_acc (docs/measures.md).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from utils.distributed import all_gather_with_grad, get_rank
from utils.runtime import full_precision


def positive_is_top1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Which anchors rank their positive first: logits (A, C) with each anchor's own column at -inf,
    targets (A,) the positive's column -> (A,) bool.

    True when the positive's similarity is strictly greater than every other candidate's, so a
    tie counts as a miss: collapsed projections (all similarities equal) score 0, not a number
    that depends on the order of the candidates. No gradient flows through it.
    """
    with torch.no_grad():
        rows = torch.arange(logits.shape[0], device=logits.device)
        positive = logits[rows, targets]
        others = logits.detach().clone()
        others[rows, targets] = float("-inf")
        return positive > others.max(dim=1).values


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
                 return_correct: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over a batch of positive pairs.

    Args:
        z1, z2: (N, D) projections of the two views; row i of z1 and row i of z2 are a pair.
            They are L2-normalised here, so any scale is fine.
        temperature: the softmax temperature t (> 0).
        return_correct: also return how many of the 2N anchors rank their positive first among
            their 2N-1 candidates (`positive_is_top1`), a 0-dim int64 tensor on z's device.
    Returns:
        Scalar: the mean over all 2N anchors of the cross-entropy of eq. (1); with
        return_correct, (that scalar, the count).

    Computed in log-softmax (cross-entropy) form, so large 1/t cannot overflow; the
    similarity matrix is built in float32 even under autocast.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    with full_precision(z1):  # `.float()` alone would not stop autocast running the matmul in bf16
        z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)  # (2N, D)
        logits = z @ z.t() / temperature  # (2N, 2N)
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))  # k != i in the denominator
        idx = torch.arange(n, device=z.device)
        targets = torch.cat([idx + n, idx])  # anchor i's positive is i+N, and i+N's is i
        loss = F.cross_entropy(logits, targets)
        return (loss, positive_is_top1(logits, targets).sum()) if return_correct else loss


def gathered_nt_xent_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    gather_fn: Callable[[torch.Tensor], torch.Tensor] = all_gather_with_grad,
    return_correct: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over the global batch of all ranks, for this rank's anchors.

    Args:
        z1, z2: (n, D) this rank's projections of the two views (n equal on every rank).
        temperature: the softmax temperature t (> 0).
        gather_fn: concatenates a (n, ...) tensor from every rank along dim 0 in rank order.
            The default carries gradients back to their owner; tests inject faulty ones.
        return_correct: also return how many of this rank's 2n anchors rank their positive
            first among all 2N - 1 global candidates; summed over ranks (train.py's all-reduce)
            it is the count of the single-process loss on the concatenated batch.
    Returns:
        Scalar: the mean over this rank's 2n anchors of eq. (1), each against all 2N - 1
        other global candidates (N = world_size * n). Single process: equals `nt_xent_loss`.
        With return_correct, (that scalar, this rank's count).

    Global layout (as in `nt_xent_loss` on the concatenated batch): z = cat(z1_all, z2_all),
    (2N, D). Rank r's anchors are z1 rows [r*n, (r+1)*n) and z2 rows N + [r*n, (r+1)*n); the
    positive of z1 row g is N + g and vice versa, and each anchor masks its own global column.
    The mean over ranks of this loss is the global loss; as DDP averages gradients over ranks
    and the gather's backward sums them, the parameter gradients equal those of the
    single-process loss on the concatenated batch.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (n, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    if n == 0:
        raise ValueError("gathered_nt_xent_loss needs at least one pair per rank")
    # One collective for both views: (n, 2, D) -> (N, 2, D), rank order kept along dim 0.
    gathered = gather_fn(torch.stack([z1, z2], dim=1))
    if gathered.dim() != 3 or gathered.shape[1:] != (2, z1.shape[1]) or gathered.shape[0] % n:
        raise ValueError(f"gather returned {tuple(gathered.shape)} for a ({n}, 2, {z1.shape[1]}) input")
    big_n = gathered.shape[0]
    world_size = big_n // n
    rank = get_rank() if world_size > 1 else 0
    with full_precision(z1):  # float32 similarities and cross-entropy even under autocast
        loss, logits, targets = _gathered_loss(gathered, n, big_n, world_size, rank, temperature)
        return (loss, positive_is_top1(logits, targets).sum()) if return_correct else loss


def _gathered_loss(gathered: torch.Tensor, n: int, big_n: int, world_size: int, rank: int,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gathered_nt_xent_loss's arithmetic: gathered (N, 2, D) -> (this rank's mean loss, its masked
    logits (2n, 2N), their targets (2n,))."""
    z = F.normalize(torch.cat([gathered[:, 0], gathered[:, 1]], dim=0).float(), dim=1)  # (2N, D)
    local = torch.arange(n, device=z.device) + rank * n  # this rank's rows within each view
    anchor_rows = torch.cat([local, local + big_n])  # (2n,) global indices of the anchors
    anchors = z if world_size == 1 else z.index_select(0, anchor_rows)  # (2n, D)
    logits = anchors @ z.t() / temperature  # (2n, 2N), float32
    self_mask = torch.zeros(2 * n, 2 * big_n, dtype=torch.bool, device=z.device)
    self_mask[torch.arange(2 * n, device=z.device), anchor_rows] = True
    logits = logits.masked_fill(self_mask, float("-inf"))  # k != i in the denominator
    targets = torch.cat([local + big_n, local])  # z1 row g pairs with z2 row g, at column N + g
    return F.cross_entropy(logits, targets), logits, targets
