"""ResNet-18 backbones and the heads put on top of them."""
from models.builder import TRAIN_TYPES, build_model
from models.heads import PretrainModel, ProjectionHead, build_probe_head
from models.resnet import FEATURE_DIM, build_backbone

__all__ = ["FEATURE_DIM", "TRAIN_TYPES", "build_model", "PretrainModel", "ProjectionHead", "build_backbone", "build_probe_head"]
