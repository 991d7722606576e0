"""Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): the cross-correlation of the two views'
batch-normalised embeddings is pushed towards the identity.

    method = BarlowTwins(build_backbone("cifar"), {"proj_hidden_dim": 2048, "proj_dim": 2048, "barlow_lambda": 0.0051,
                                                   "scale_loss": 0.1})
    loss, stats = method([x1, x2])

Loss (paper eq. 1; facebookresearch/barlowtwins main.py): C = BN(z1)^T BN(z2) / N over the GLOBAL batch,
L = scale x (sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2), BN without affine, biased batch variance,
eps 1e-5. Under DDP the embeddings are gathered with their gradients and every rank computes the same
global loss; DDP's gradient average is then exactly the global loss's gradient. (A raw all_reduce of C,
as the official code and solo-learn do, carries no gradient across ranks and scales the gradient by
1 / world size: lightly #1977.)
"""
from __future__ import annotations

import torch
from torch import nn

from utils.methods.base import Method, embedding_std, gather
from utils.runtime import full_precision

BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default, which the official code's BatchNorm1d(affine=False) uses


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear - BN - ReLU - Linear - BN - ReLU - Linear (paper section 2; solo-learn barlow_twins.py)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def batch_normalise(z: torch.Tensor) -> torch.Tensor:
    """(N, D) -> each column minus its mean over the batch, over sqrt(biased variance + eps) (BN, no affine)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + BN_EPS)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """(N, D) x 2 -> C (D, D): the batch-normalised embeddings' cross-correlation over the N samples."""
    return batch_normalise(z1).t() @ batch_normalise(z2) / z1.shape[0]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, scale: float = 1.0,
                      gather_fn=gather) -> torch.Tensor:
    """z1, z2: (n, D) this rank's embeddings of the two views. Returns
    scale x (sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2) with C (D, D) the cross-correlation over all
    ranks' N samples; the same value on every rank."""
    with full_precision(z1):
        z1, z2 = gather_fn(z1).float(), gather_fn(z2).float()
        c = cross_correlation(z1, z2)  # (D, D)
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return scale * (on_diag + lambd * off_diag)


class BarlowTwins(Method):
    """head = {projector}; nothing outside the optimiser."""

    def __init__(self, backbone: nn.Module, spec: dict):
        head = nn.ModuleDict({"projector": projector(backbone.feature_dim, spec["proj_hidden_dim"], spec["proj_dim"])})
        super().__init__(backbone, head)
        self.lambd, self.scale = float(spec["barlow_lambda"]), float(spec["scale_loss"])
        self.proj_dim = spec["proj_dim"]

    def training_step(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        z1, z2 = (self.head["projector"](self.backbone(x)) for x in (x1, x2))
        loss = barlow_twins_loss(z1, z2, self.lambd, self.scale)
        return loss, {"z_std": (embedding_std(z1) + embedding_std(z2)) / 2}
