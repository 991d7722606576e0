"""Build the pretraining model from a plain-dict spec (the one stored in checkpoints).

    spec = {"train_type": "simclr", "stem": "cifar", "proj_hidden_dim": 1024, "proj_dim": 128, "proj_bn": False}
    model = build_model(spec)
"""
from __future__ import annotations

import torch
from torch import nn

from models.heads import PretrainModel, ProjectionHead
from models.resnet import build_backbone

TRAIN_TYPES = ("simclr", "supervised")


def build_model(spec: dict, weights: dict[str, torch.Tensor] | None = None) -> PretrainModel:
    """PretrainModel from spec keys train_type, stem, num_classes (supervised), proj_hidden_dim, proj_dim,
    proj_bn (a BatchNorm in the projection MLP; True when absent, as in checkpoints written before it).

    `weights`: a torchvision ResNet-18 state dict loaded into the backbone (ImageNet stem only),
    e.g. utils.data.weights.load_imagenet_state_dict().
    """
    backbone = build_backbone(spec["stem"], weights=weights)
    if spec["train_type"] == "simclr":
        head: nn.Module = ProjectionHead(backbone.feature_dim, spec["proj_hidden_dim"], spec["proj_dim"],
                                          batch_norm=spec.get("proj_bn", True))
    elif spec["train_type"] == "supervised":
        head = nn.Linear(backbone.feature_dim, spec["num_classes"])
    else:
        raise ValueError(f"train_type must be one of {TRAIN_TYPES}, got {spec['train_type']!r}")
    return PretrainModel(backbone, head)
