"""SimSiam (Chen & He 2021, arXiv:2011.10566): a predictor maps one view's projection onto the other's,
with a stop-gradient and no target network.

    method = SimSiam(build_backbone("cifar"), {"proj_hidden_dim": 2048, "proj_dim": 2048, "pred_hidden_dim": 512})
    loss, stats = method([x1, x2])

Loss (paper eq. 3-4; facebookresearch/simsiam simsiam/builder.py, main_simsiam.py):
L = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2, each cosine averaged over the batch (range [-1, 1]).
The projector ends in BatchNorm without affine parameters; the predictor is a 2-layer bottleneck. A
per-sample loss: DDP's gradient average is already the global batch's gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.methods.base import Method, embedding_std


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Three layers, BN after each, ReLU after the first two, the last BN without affine (paper section 4 and
    appendix; solo-learn's CIFAR version). The last Linear has no bias: the BN after it would remove it."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False))


def predictor(dim: int, hidden_dim: int) -> nn.Sequential:
    """h: Linear - BN - ReLU - Linear, dim -> hidden_dim -> dim (the bottleneck of the paper's section 4)."""
    return nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, dim))


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """p1, p2: (N, D) predictions; z1, z2: (N, D) projections (stop-gradient). -(cos(p1, sg z2) + cos(p2, sg z1)) / 2."""
    return -(F.cosine_similarity(p1, z2.detach(), dim=1).mean()
             + F.cosine_similarity(p2, z1.detach(), dim=1).mean()) / 2


class SimSiam(Method):
    """head = {projector, predictor}; nothing outside the optimiser."""

    def __init__(self, backbone: nn.Module, spec: dict):
        head = nn.ModuleDict({"projector": projector(backbone.feature_dim, spec["proj_hidden_dim"], spec["proj_dim"]),
                              "predictor": predictor(spec["proj_dim"], spec["pred_hidden_dim"])})
        super().__init__(backbone, head)
        self.proj_dim = spec["proj_dim"]

    def param_groups(self) -> list[dict]:
        """The predictor at a fixed lr (paper section 4.1, 'Predictor': a constant lr for h works better;
        solo-learn simsiam.py static_lr); the rest follows the schedule."""
        predictor = set(self.head["predictor"].parameters())
        return [{"params": [p for p in self.parameters() if p.requires_grad and p not in predictor]},
                {"params": list(self.head["predictor"].parameters()), "fixed_lr": True}]

    def training_step(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        z1, z2 = (self.head["projector"](self.backbone(x)) for x in (x1, x2))
        p1, p2 = self.head["predictor"](z1), self.head["predictor"](z2)
        return simsiam_loss(p1, p2, z1, z2), {"z_std": (embedding_std(z1) + embedding_std(z2)) / 2}
