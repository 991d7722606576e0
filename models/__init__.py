"""ResNet-18 backbones, the heads put on top of them, and loading a trained backbone.

    from models import load_backbone
    backbone, preprocess = load_backbone("checkpoints/<run>/final.pth")   # see models/pretrained.py

This package imports only torch and torchvision (and PIL, torchvision's image library), never utils/.
"""
from models.builder import TRAIN_TYPES, build_model
from models.checkpoint import CheckpointError
from models.heads import PretrainModel, ProjectionHead, build_probe_head
from models.pretrained import eval_preprocess, load_backbone
from models.resnet import FEATURE_DIM, build_backbone

__all__ = ["FEATURE_DIM", "TRAIN_TYPES", "CheckpointError", "build_model", "PretrainModel", "ProjectionHead",
           "build_backbone", "build_probe_head", "eval_preprocess", "load_backbone"]
