"""SimCLR (Chen et al. 2020): NT-Xent between the projections of two views (utils/train/losses.py).

    method = SimCLR(build_backbone("cifar"), {"proj_hidden_dim": 1024, "proj_dim": 128, "proj_bn": False,
                                              "temperature": 0.5})
    loss, stats = method([x1, x2])   # stats: correct (views whose positive ranked first), z_std
"""
from __future__ import annotations

import torch
from torch import nn

from models.heads import ProjectionHead
from utils.distributed import is_dist_active
from utils.methods.base import Method, embedding_std
from utils.train.losses import gathered_nt_xent_loss, nt_xent_loss


class SimCLR(Method):
    """head = the projection MLP g (checkpoint keys `net.*`, as before the methods package)."""

    def __init__(self, backbone: nn.Module, spec: dict):
        head = ProjectionHead(backbone.feature_dim, spec["proj_hidden_dim"], spec["proj_dim"],
                              batch_norm=spec.get("proj_bn", True))
        super().__init__(backbone, head)
        self.temperature = float(spec.get("temperature") or 0.5)
        self.proj_dim = spec["proj_dim"]

    def training_step(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        # both views in one forward, so BatchNorm sees all 2N images (as before)
        z1, z2 = self.head(self.backbone(torch.cat([x1, x2]))).chunk(2)
        loss_fn = gathered_nt_xent_loss if is_dist_active() else nt_xent_loss
        loss, correct = loss_fn(z1, z2, self.temperature, return_correct=True)
        return loss, {"correct": correct, "z_std": (embedding_std(z1) + embedding_std(z2)) / 2}
