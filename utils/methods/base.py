"""What every pretraining method shares: the Method interface, the EMA target, the collapse measure.

    method = build_method("byol", backbone, spec)        # utils/methods/__init__.py
    loss, stats = method(views, labels)                  # one training step's loss (DDP wraps `method`)
    ...optimizer.step()...
    method.after_step(step, total_steps)                 # EMA target, MoCo's queue

A method is an nn.Module holding the online `backbone` (what the probe evaluates), its trainable
`head` (projector, predictor: checkpoints store `backbone` and `head`), and whatever it updates
outside the optimiser (an EMA target, a queue), which `extra_state()` returns for last.pth so a
resumed run continues bit for bit.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.distributed import all_gather_with_grad
from utils.runtime import LOG

# A collapsed method maps every image to (nearly) one direction: z_std -> 0, while embeddings spread over the
# sphere give about 1/sqrt(d). Below a tenth of that a run says it collapsed: far below the 0.57-1.04 / sqrt(d)
# that freshly initialised networks gave after one tiny synthetic epoch here (d 16, 8 px), far above 0.
COLLAPSE_FRACTION = 0.1


class Method(nn.Module):
    """Backbone + head; forward(views, labels) -> (loss, stats) with stats a dict of detached tensors:
    `correct` (a count, simclr and supervised) and `z_std` (the collapse measure of the step's embeddings)."""

    # views per image the batches must carry (2 for the self-supervised methods, 1 for supervised)
    n_views = 2

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def embedding_dim(self) -> int | None:
        """d of the embeddings whose spread `z_std` measures: a method's `proj_dim` (None: no such measure)."""
        return getattr(self, "proj_dim", None)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None):
        x1, x2 = views
        return self.training_step(x1, x2)

    def training_step(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups: every trainable parameter in one (a group may set fixed_lr)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step `step` (0-based) of `total_steps`, not after a skipped step."""

    def extra_state(self) -> dict | None:
        """What the optimiser does not hold and resuming needs (EMA target, queue); None if nothing."""
        return None

    def load_extra_state(self, state: dict | None) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no extra state, got {sorted(state)}")

    def ddp_ignored(self) -> list[str]:
        """Names of parameters/buffers that DistributedDataParallel must leave alone (kept equal on
        every rank by the method itself: EMA targets, the queue)."""
        return []


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with requires_grad False: the EMA target starts as the online network."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def ema_tau(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """The EMA coefficient after step `step` of `total_steps` (BYOL, Grill et al. 2020, section 3.2):
    tau = final - (final - base) (cos(pi k / K) + 1) / 2, so tau(0) = base and tau(K) = final
    (deepmind-research byol/utils/schedules.py target_ema; solo-learn solo/utils/momentum.py)."""
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / max(total_steps, 1)) + 1) / 2


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau target + (1 - tau) online, parameter by parameter (buffers stay the target's own:
    its BatchNorm statistics come from its own forward passes, as in BYOL and solo-learn)."""
    for p_online, p_target in zip(online.parameters(), target.parameters()):
        p_target.mul_(tau).add_(p_online.detach(), alpha=1 - tau)


@torch.no_grad()
def follow_online(method: nn.Module, step: int, total_steps: int) -> None:
    """The EMA step of BYOL and MoCo: target_backbone and target_projector follow the online backbone and
    head["projector"] with tau = ema_tau(step, total_steps, method.tau_base, method.tau_final)."""
    tau = ema_tau(step, total_steps, method.tau_base, method.tau_final)
    ema_update(method.backbone, method.target_backbone, tau)
    ema_update(method.head["projector"], method.target_projector, tau)


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """The collapse measure: z (N, d) -> the mean over the d dimensions of the std over the batch of
    the l2-normalised rows (a 0-dim float32 tensor). 0 when every row points the same way (collapse);
    about 1/sqrt(d) for rows spread uniformly over the sphere (BYOL's appendix / solo-learn's z_std)."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def collapse_measure(d: int | None, z_std: float, train_type: str, epoch: int) -> dict:
    """metrics.csv's z_std (the epoch's mean of `embedding_std`) and z_std_ref = 1/sqrt(d); nothing when the
    method has no embeddings (d None: supervised). Logs one warning line when z_std < COLLAPSE_FRACTION / sqrt(d)."""
    if d is None:
        return {}
    ref = 1 / math.sqrt(d)
    if z_std < COLLAPSE_FRACTION * ref:
        LOG.warning("warning: %s collapsed at epoch %d: z_std %.4g < %g x 1/sqrt(%d) (every embedding points nearly "
                    "the same way)", train_type, epoch, z_std, COLLAPSE_FRACTION, d)
    return {"z_std": round(z_std, 6), "z_std_ref": round(ref, 6)}


def collapse_panel(history: list[dict]) -> tuple[str, dict]:
    """curves.png's panel: z_std per epoch beside 1/sqrt(d) and the collapse threshold."""
    refs = [row.get("z_std_ref") for row in history]
    return ("collapse: std of l2-normalised z", {
        "z_std": [row.get("z_std") for row in history], "1/sqrt(d)": refs,
        f"collapse threshold ({COLLAPSE_FRACTION:g}/sqrt(d))": [None if r is None else COLLAPSE_FRACTION * r
                                                                 for r in refs]})


def gather(z: torch.Tensor) -> torch.Tensor:
    """(n, d) per rank -> (world_size n, d) in rank order, gradients routed back to their owner
    (utils.distributed.all_gather_with_grad; the identity in a single process). A loss computed
    identically on every rank from the gathered batch then gets, after DDP's gradient average,
    exactly the gradient of that loss on the global batch."""
    return all_gather_with_grad(z)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() as CPU copies (what a checkpoint stores)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def names_under(module: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """Fully qualified names of `module`'s parameters and buffers under the given submodule names."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, _ in named if name.split(".")[0] in prefixes]
