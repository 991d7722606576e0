"""LARS (You, Gitman, Ginsburg 2017, arXiv:1708.03888): SGD with momentum whose step for each weight
tensor is scaled by a trust ratio. torch ships none; this is the variant solo-learn's recipes use
(vturrisi/solo-learn @ 9187ea39, solo/utils/lars.py), written from its definition:

    local_lr = eta ||w|| / (||g|| + wd ||w|| + eps)          (paper eq. 6)
    clip_lr:  local_lr = min(local_lr / lr, 1)                (the step is then at most the global lr's)
    d = local_lr (g + wd w);  v = momentum v + d;  w = w - lr v

Tensors with one dimension (biases, BatchNorm weights) are excluded when exclude_1d is set: they take
a plain momentum step on g, without weight decay or trust ratio (solo-learn's exclude_bias_n_norm), as
does any tensor whose ||w|| or ||g|| is 0.

    optimizer = LARS(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-4, eta=0.02, clip_lr=True)
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """LARS over SGD with (heavy-ball) momentum; the momentum buffer starts as the first step's d."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 eps: float = 1e-8, clip_lr: bool = True, exclude_1d: bool = True):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0; got {lr}, {momentum}, "
                             f"{weight_decay}, {eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                                      clip_lr=clip_lr, exclude_1d=exclude_1d))

    @staticmethod
    def trust_ratio(w: torch.Tensor, g: torch.Tensor, group: dict) -> torch.Tensor | None:
        """The factor on g + wd w for this tensor, or None when it takes a plain step (excluded, or a zero norm)."""
        if group["exclude_1d"] and w.ndim == 1:
            return None
        w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
        if w_norm == 0 or g_norm == 0:
            return None
        ratio = group["eta"] * w_norm / (g_norm + group["weight_decay"] * w_norm + group["eps"])
        if group["clip_lr"]:
            ratio = torch.clamp(ratio / group["lr"], max=1.0)
        return ratio

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                d = w.grad
                ratio = self.trust_ratio(w, d, group)
                if ratio is not None:
                    d = (d + group["weight_decay"] * w) * ratio
                if group["momentum"]:
                    state = self.state[w]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                    d = state["momentum_buffer"]
                w.add_(d, alpha=-group["lr"])
        return loss


# train.py's --lars_eta / --lars_clip_lr when the recipe has none (simclr, supervised): solo-learn's CIFAR values
# (scripts/pretrain/cifar/{byol,barlow,vicreg}.yaml optimizer.kwargs eta 0.02, clip_lr True @ 9187ea39).
LARS_DEFAULTS = {"lars_eta": 0.02, "lars_clip_lr": True}
