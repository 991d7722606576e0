"""Losses: NT-Xent, the contrastive loss of SimCLR.

Chen, Kornblith, Norouzi, Hinton (2020), "A Simple Framework for Contrastive Learning of
Visual Representations", eq. (1):

    l(i, j) = -log( exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t) )

with sim the cosine similarity, summed over both orderings of every positive pair and divided
by 2N (Algorithm 1). Each of the 2N anchors has 1 positive and 2N-2 negatives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over a batch of positive pairs.

    Args:
        z1, z2: (N, D) projections of the two views; row i of z1 and row i of z2 are a pair.
            They are L2-normalised here, so any scale is fine.
        temperature: the softmax temperature t (> 0).
    Returns:
        Scalar: the mean over all 2N anchors of the cross-entropy of eq. (1).

    Computed in log-softmax (cross-entropy) form, so large 1/t cannot overflow; the
    similarity matrix is built in float32 even under autocast.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)  # (2N, D)
    logits = z @ z.t() / temperature  # (2N, 2N)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # k != i in the denominator
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])  # anchor i's positive is i+N, and i+N's is i
    return F.cross_entropy(logits, targets)
