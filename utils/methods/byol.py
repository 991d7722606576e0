"""BYOL (Grill et al. 2020, arXiv:2006.07733): an online network predicts an EMA target's projection.

    method = BYOL(build_backbone("cifar"), {"proj_hidden_dim": 4096, "proj_dim": 256, "pred_hidden_dim": 4096,
                                            "tau_base": 0.99, "tau_final": 1.0})
    loss, stats = method([x1, x2]); ...optimizer.step()...; method.after_step(step, total_steps)

Loss (paper eq. 2 and its symmetrisation; google-deepmind/deepmind-research byol/utils/helpers.py
regression_loss): 2 - 2 cos(p1, sg(z2')) + 2 - 2 cos(p2, sg(z1')), each averaged over the batch and the
two directions summed, where p = q(g(f(x))) is the online prediction and z' = g'(f'(x)) the target's
projection. A per-sample loss: under DDP the gradient average is already the global batch's gradient.
After every optimiser step the target follows the online network with tau on a cosine from tau_base
to tau_final (utils.methods.base.ema_tau). The probe evaluates the online backbone, never the target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.methods.base import Method, cpu_state, embedding_std, follow_online, frozen_copy, names_under


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector and predictor: Linear - BN - ReLU - Linear (paper section 3.3)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """p1, p2: (N, D) online predictions of views 1 and 2; t1, t2: (N, D) target projections (no gradient).
    Returns the sum over both directions of the batch mean of 2 - 2 cos(p, sg(t)) (range [0, 8])."""
    return ((2 - 2 * F.cosine_similarity(p1, t2.detach(), dim=1)).mean()
            + (2 - 2 * F.cosine_similarity(p2, t1.detach(), dim=1)).mean())


class BYOL(Method):
    """head = {projector, predictor}; target_backbone / target_projector: the EMA copies (no gradient)."""

    def __init__(self, backbone: nn.Module, spec: dict):
        head = nn.ModuleDict({
            "projector": mlp(backbone.feature_dim, spec["proj_hidden_dim"], spec["proj_dim"]),
            "predictor": mlp(spec["proj_dim"], spec["pred_hidden_dim"], spec["proj_dim"]),
        })
        super().__init__(backbone, head)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(head["projector"])
        self.tau_base, self.tau_final = float(spec["tau_base"]), float(spec["tau_final"])
        self.proj_dim = spec["proj_dim"]

    def training_step(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        # each view its own forward (BatchNorm statistics per view), as the paper's and solo-learn's code
        z1, z2 = (self.head["projector"](self.backbone(x)) for x in (x1, x2))
        p1, p2 = self.head["predictor"](z1), self.head["predictor"](z2)
        with torch.no_grad():
            t1, t2 = (self.target_projector(self.target_backbone(x)) for x in (x1, x2))
        loss = byol_loss(p1, p2, t1, t2)
        return loss, {"z_std": (embedding_std(z1) + embedding_std(z2)) / 2}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        follow_online(self, step, total_steps)

    def extra_state(self) -> dict:
        return {"target_backbone": cpu_state(self.target_backbone), "target_projector": cpu_state(self.target_projector)}

    def load_extra_state(self, state: dict | None) -> None:
        self.target_backbone.load_state_dict(state["target_backbone"])
        self.target_projector.load_state_dict(state["target_projector"])

    def ddp_ignored(self) -> list[str]:
        return names_under(self, ("target_backbone", "target_projector"))
