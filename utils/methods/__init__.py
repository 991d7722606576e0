"""The pretraining methods, one small module each, behind one interface (utils/methods/base.py).

    from utils.methods import build_method, method_spec
    method = build_method("byol", build_backbone("cifar"), method_spec("byol", args))
    loss, stats = method([x1, x2], labels)      # DDP wraps `method`; stats: z_std (and correct)
    method.after_step(step, total_steps)        # after each optimiser step: EMA target, queue

    python train.py --train_type byol --dataset synthetic --epochs 1 --image_size 16 --device cpu

Tests: `python -m pytest tests/test_methods.py -q` (losses against plain references written from the
papers, 2-process gloo runs against one process, EMA schedule, LARS, train.py end to end).
"""
from __future__ import annotations

import argparse

from torch import nn

from utils.cli import positive_float, positive_int, probability, str2bool
from utils.methods.barlow_twins import BarlowTwins
from utils.methods.base import COLLAPSE_FRACTION, Method, collapse_measure, collapse_panel, embedding_std
from utils.methods.byol import BYOL
from utils.methods.mocov2 import MoCoV2
from utils.methods.simclr import SimCLR
from utils.methods.simsiam import SimSiam
from utils.methods.supervised import Supervised
from utils.methods.vicreg import VICReg
from utils.recipes import recipe_help

METHODS: dict[str, type[Method]] = {"simclr": SimCLR, "supervised": Supervised, "byol": BYOL, "mocov2": MoCoV2,
                                    "simsiam": SimSiam, "barlow_twins": BarlowTwins, "vicreg": VICReg}
SELF_SUPERVISED = tuple(name for name in METHODS if name != "supervised")
# The spec keys (train.py flags of the same name) each method is built from; stored in the checkpoint's `model`.
SPEC_KEYS = {
    "simclr": ("proj_hidden_dim", "proj_dim", "proj_bn", "temperature"),
    "supervised": (),
    "byol": ("proj_hidden_dim", "proj_dim", "pred_hidden_dim", "tau_base", "tau_final"),
    "mocov2": ("proj_hidden_dim", "proj_dim", "temperature", "queue_size", "tau_base", "tau_final"),
    "simsiam": ("proj_hidden_dim", "proj_dim", "pred_hidden_dim"),
    "barlow_twins": ("proj_hidden_dim", "proj_dim", "barlow_lambda", "scale_loss"),
    "vicreg": ("proj_hidden_dim", "proj_dim", "vicreg_weights"),
}

# train.py flags defined here (method_parser), each named as its recipe key (utils/recipes.py)
METHOD_FLAGS = ("pred_hidden_dim", "tau_base", "tau_final", "queue_size", "barlow_lambda", "scale_loss",
                "vicreg_weights", "lars_eta", "lars_clip_lr")

__all__ = ["COLLAPSE_FRACTION", "METHODS", "METHOD_FLAGS", "SELF_SUPERVISED", "SPEC_KEYS", "Method", "build_method",
           "collapse_measure", "collapse_panel", "embedding_std", "method_parser", "method_spec"]


def build_method(name: str, backbone: nn.Module, spec: dict, head: nn.Module | None = None) -> Method:
    """The method `name` around `backbone`, its heads sized by `spec` (keys SPEC_KEYS[name]; supervised:
    num_classes). `head`: supervised only, a classifier to use instead of a new one (ImageNet's)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    if head is not None:
        return METHODS[name](backbone, spec, head=head)
    return METHODS[name](backbone, spec)


def method_spec(name: str, args: argparse.Namespace) -> dict:
    """{key: args.key} for the keys method `name` is built from."""
    return {key: getattr(args, key) for key in SPEC_KEYS[name]}


def method_parser() -> argparse.ArgumentParser:
    """train.py's flags of the methods beside SimCLR (defaults from --recipe, by --train_type)."""
    p = argparse.ArgumentParser(add_help=False)
    by_type = "%(default).0s"
    g = p.add_argument_group("methods beside SimCLR (defaults from --recipe, by --train_type; utils/methods/)")
    g.add_argument("--pred_hidden_dim", type=positive_int, default=None,
                   help="BYOL / SimSiam predictor hidden width" + recipe_help("pred_hidden_dim", ("byol", "simsiam"))
                   + by_type)
    g.add_argument("--tau_base", type=probability, default=None,
                   help="BYOL / MoCo v2: EMA coefficient of the target at the first step, rising on a cosine to "
                        "--tau_final at the last" + recipe_help("tau_base", ("byol", "mocov2")) + by_type)
    g.add_argument("--tau_final", type=probability, default=None,
                   help="BYOL / MoCo v2: EMA coefficient at the last step" + recipe_help("tau_final", ("byol", "mocov2"))
                   + by_type)
    g.add_argument("--queue_size", type=positive_int, default=None,
                   help="MoCo v2: keys kept as negatives per view (>= the global batch)"
                   + recipe_help("queue_size", ("mocov2",)) + by_type)
    g.add_argument("--barlow_lambda", type=positive_float, default=None,
                   help="Barlow Twins: weight of the off-diagonal terms" + recipe_help("barlow_lambda", ("barlow_twins",))
                   + by_type)
    g.add_argument("--scale_loss", type=positive_float, default=None,
                   help="Barlow Twins: factor on the whole loss" + recipe_help("scale_loss", ("barlow_twins",)) + by_type)
    g.add_argument("--vicreg_weights", type=positive_float, nargs=3, default=None, metavar=("SIM", "VAR", "COV"),
                   help="VICReg: weights of the invariance, variance and covariance terms"
                   + recipe_help("vicreg_weights", ("vicreg",)) + by_type)
    g.add_argument("--lars_eta", type=positive_float, default=None,
                   help="--optimizer lars: trust coefficient eta" + recipe_help("lars_eta", SELF_SUPERVISED) + by_type)
    g.add_argument("--lars_clip_lr", type=str2bool, default=None,
                   help="--optimizer lars: cap each layer's lr at the global lr (solo-learn's clip_lr)"
                   + recipe_help("lars_clip_lr", SELF_SUPERVISED) + by_type)
    return p
