"""VICReg (Bardes, Ponce, LeCun 2022, arXiv:2105.04906): invariance, variance and covariance terms.

    method = VICReg(build_backbone("cifar"), {"proj_hidden_dim": 2048, "proj_dim": 2048,
                                              "vicreg_weights": [25.0, 25.0, 1.0]})
    loss, stats = method([x1, x2])

Loss (paper eq. 1-6; facebookresearch/vicreg main_vicreg.py VICReg.forward):
  sim  = MSE(z1, z2) on this rank's pairs (mean over N x D);
  var  = (mean_j relu(1 - sqrt(Var(z1_j) + 1e-4)) + the same for z2) / 2, over the GLOBAL batch;
  cov  = sum_{i != j} Cov(z1)_ij^2 / D + the same for z2, over the GLOBAL batch (unbiased, N - 1);
  L = 25 sim + 25 var + 1 cov.
Under DDP z1 and z2 are gathered with their gradients for var and cov (as the official FullGatherLayer);
sim is a per-sample mean, so DDP's gradient average is the global one. (solo-learn drops the /2 in var.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.methods.barlow_twins import projector
from utils.methods.base import Method, embedding_std, gather
from utils.runtime import full_precision

VAR_EPS = 1e-4  # main_vicreg.py: torch.sqrt(x.var(dim=0) + 0.0001)


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, gather_fn=gather) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z1, z2: (n, D) this rank's embeddings -> (sim, var, cov), unweighted; var and cov over all ranks."""
    with full_precision(z1):
        z1, z2 = z1.float(), z2.float()
        sim = F.mse_loss(z1, z2)
        x, y = gather_fn(z1), gather_fn(z2)
        n, d = x.shape
        x, y = x - x.mean(dim=0), y - y.mean(dim=0)
        std_x, std_y = torch.sqrt(x.var(dim=0) + VAR_EPS), torch.sqrt(y.var(dim=0) + VAR_EPS)
        var = (F.relu(1 - std_x).mean() + F.relu(1 - std_y).mean()) / 2
        cov_x, cov_y = x.t() @ x / (n - 1), y.t() @ y / (n - 1)
        off = ~torch.eye(d, dtype=torch.bool, device=x.device)
        cov = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
        return sim, var, cov


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, weights=(25.0, 25.0, 1.0), gather_fn=gather) -> torch.Tensor:
    """weights (lambda, mu, nu) x (sim, var, cov) of `vicreg_terms`."""
    sim, var, cov = vicreg_terms(z1, z2, gather_fn)
    return weights[0] * sim + weights[1] * var + weights[2] * cov


class VICReg(Method):
    """head = {projector} (the expander, the same 3-layer MLP as Barlow Twins'); nothing outside the optimiser."""

    def __init__(self, backbone: nn.Module, spec: dict):
        head = nn.ModuleDict({"projector": projector(backbone.feature_dim, spec["proj_hidden_dim"], spec["proj_dim"])})
        super().__init__(backbone, head)
        self.weights = tuple(float(w) for w in spec["vicreg_weights"])
        self.proj_dim = spec["proj_dim"]

    def training_step(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        z1, z2 = (self.head["projector"](self.backbone(x)) for x in (x1, x2))
        return vicreg_loss(z1, z2, self.weights), {"z_std": (embedding_std(z1) + embedding_std(z2)) / 2}
