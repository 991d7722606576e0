"""Supervised pretraining: cross-entropy of a linear classifier on one augmented view.

    method = Supervised(build_backbone("cifar"), {"num_classes": 100})
    loss, stats = method([x], labels)   # stats: correct (predictions equal to the label)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.methods.base import Method


class Supervised(Method):
    """head = nn.Linear(512, classes) (checkpoint keys `weight`, `bias`, as before)."""

    n_views = 1

    def __init__(self, backbone: nn.Module, spec: dict, head: nn.Module | None = None):
        super().__init__(backbone, head if head is not None else nn.Linear(backbone.feature_dim, spec["num_classes"]))

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None):
        logits = self.head(self.backbone(views[0]))
        return F.cross_entropy(logits, labels), {"correct": (logits.argmax(1) == labels).sum()}
