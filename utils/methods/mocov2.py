"""MoCo v2 (Chen, Fan, Girshick, He 2020, arXiv:2003.04297): InfoNCE of queries against an EMA key
encoder's keys and a queue of past keys; here symmetrised over the two views as solo-learn's MoCo V2+.

    method = MoCoV2(build_backbone("cifar"), {"proj_hidden_dim": 2048, "proj_dim": 256, "queue_size": 32768,
                                              "temperature": 0.2, "tau_base": 0.99, "tau_final": 0.999})
    loss, stats = method([x1, x2]); ...optimizer.step()...; method.after_step(step, total_steps)

Loss (MoCo, He et al. 2020, eq. 1; facebookresearch/moco moco/builder.py): for a query q and its key
k+, -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_j exp(q.k_j / T)) over the K queued keys k_j, with q and k
l2-normalised and the keys without gradient; the loss is (l(q1, k2, queue2) + l(q2, k1, queue1)) / 2
(solo-learn solo/methods/mocov2plus.py: one queue per view). After every optimiser step the key
encoder follows the online one (cosine tau) and the step's keys, gathered from every rank, replace the
oldest ones in the queue. A per-query loss: DDP's gradient average is the global batch's gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.methods.base import Method, cpu_state, embedding_std, follow_online, frozen_copy, names_under
from utils.runtime import full_precision
from utils.distributed import all_gather_with_grad


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's MLP head: Linear - ReLU - Linear (MoCo v2 section 2; solo-learn mocov2plus.py)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """q, k: (N, D) l2-normalised queries and their positive keys; queue: (K, D) l2-normalised negatives.
    Returns the batch mean of the cross-entropy of [q.k | q.queue] / T with the positive at column 0."""
    with full_precision(q):
        q, k, queue = q.float(), k.detach().float(), queue.detach().float()
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1) / temperature  # (N, 1 + K)
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCoV2(Method):
    """head = {projector}; target_backbone / target_projector: the key encoder; queue (2, K, D): each view's keys."""

    def __init__(self, backbone: nn.Module, spec: dict):
        head = nn.ModuleDict({"projector": projector(backbone.feature_dim, spec["proj_hidden_dim"], spec["proj_dim"])})
        super().__init__(backbone, head)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(head["projector"])
        self.tau_base, self.tau_final = float(spec["tau_base"]), float(spec["tau_final"])
        self.temperature = float(spec["temperature"])
        self.proj_dim, self.queue_size = spec["proj_dim"], int(spec["queue_size"])
        # random unit keys to start with, as the references do (drawn from the seeded global generator)
        self.register_buffer("queue", F.normalize(torch.randn(2, self.queue_size, self.proj_dim), dim=2))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None

    def training_step(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        z1, z2 = (self.head["projector"](self.backbone(x)) for x in (x1, x2))
        q1, q2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        with torch.no_grad():
            k1, k2 = (F.normalize(self.target_projector(self.target_backbone(x)), dim=1) for x in (x1, x2))
        loss = (moco_loss(q1, k2, self.queue[1], self.temperature)
                + moco_loss(q2, k1, self.queue[0], self.temperature)) / 2
        # every rank's keys, in rank order, enter the queue after the optimiser step (after_step)
        self._pending_keys = all_gather_with_grad(torch.stack([k1, k2], dim=1)).detach()  # (N_global, 2, D)
        return loss, {"z_std": (embedding_std(z1) + embedding_std(z2)) / 2}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        follow_online(self, step, total_steps)
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """keys (B, 2, D) replace the B oldest entries of each view's queue (first in, first out)."""
        batch = keys.shape[0]
        rows = (self.queue_ptr + torch.arange(batch, device=keys.device)) % self.queue_size
        self.queue[:, rows] = keys.transpose(0, 1).to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + batch) % self.queue_size)

    def extra_state(self) -> dict:
        return {"target_backbone": cpu_state(self.target_backbone), "target_projector": cpu_state(self.target_projector),
                "queue": self.queue.detach().cpu().clone(), "queue_ptr": self.queue_ptr.detach().cpu().clone()}

    def load_extra_state(self, state: dict | None) -> None:
        self.target_backbone.load_state_dict(state["target_backbone"])
        self.target_projector.load_state_dict(state["target_projector"])
        self.queue.copy_(state["queue"])
        self.queue_ptr.copy_(state["queue_ptr"])

    def ddp_ignored(self) -> list[str]:
        return names_under(self, ("target_backbone", "target_projector", "queue", "queue_ptr"))
