"""Heads on top of the backbone: SimCLR's projection MLP, classifiers, the probe head.

    from models import PretrainModel, ProjectionHead, build_backbone
    model = PretrainModel(build_backbone("cifar"), ProjectionHead(512, 512, 128))
    h, z = model(x)   # h: (B, 512) features, z: (B, 128) projections
"""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLR projection g(h) = W2 ReLU(BN(W1 h)) or W2 ReLU(W1 h + b1): (B, in_dim) -> (B, out_dim).

    batch_norm=True follows SimCLR's reference implementation (hidden BatchNorm, W1 without
    bias); batch_norm=False is the plain MLP of dkobak/simclr-cifar10 (the tuned recipe). The
    head is dropped before linear evaluation.
    """

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 128, batch_norm: bool = True):
        super().__init__()
        hidden: list[nn.Module] = ([nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim)]
                                   if batch_norm else [nn.Linear(in_dim, hidden_dim)])
        self.net = nn.Sequential(*hidden, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def build_probe_head(in_dim: int, num_classes: int, layers: int = 1, hidden_dim: int | None = None) -> nn.Module:
    """The head trained by linear evaluation: (B, in_dim) -> (B, num_classes) logits.

    layers=1 is the standard protocol (one linear layer). layers=2 stacks two linear layers
    with nothing in between, as the original README describes; it is still a linear map.
    """
    if layers == 1:
        return nn.Linear(in_dim, num_classes)
    if layers == 2:
        hidden = hidden_dim or in_dim
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.Linear(hidden, num_classes))
    raise ValueError(f"layers must be 1 or 2, got {layers}")


class PretrainModel(nn.Module):
    """Backbone + head; forward gives (h, head(h)).

    SimCLR: head is a ProjectionHead and head(h) = z. Supervised: head is nn.Linear and
    head(h) = logits. Checkpoints store `backbone` and `head` state dicts separately, so the
    head is easy to drop for evaluation.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self.head(h)
