"""Learning-rate schedules as pure functions of the iteration, wrapped in LambdaLR.

A LambdaLR multiplies the optimizer's base lr by what its function returns, so the function
returns a *multiplier* (the original project returned an absolute lr and got 0.6 x 0.6).

    sched = cosine_scheduler(optimizer, total_steps=1000, base_lr=0.6, final_lr=1e-3)
    for step in range(1000): ...; optimizer.step(); sched.step()   # stepped per iteration

Two shapes, both with an optional linear warmup: a cosine to a floor (SimCLR, the probes) and
a step decay by `gamma` at milestones given as fractions of the run (the supervised recipe of
weiaicunzai/pytorch-cifar100: x0.2 at epochs 60/120/160 of 200). `lr_schedule` picks one by name.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from utils.runtime import LOG


def cosine_lr(
    step: int,
    base_lr: float,
    final_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    period_steps: int | None = None,
) -> float:
    """Absolute lr at iteration `step` (0-based).

    Linear warmup from base_lr/warmup_steps to base_lr over the first `warmup_steps`, then a
    half cosine from base_lr to final_lr over the `period_steps` steps after the warmup (by
    default the rest of the run, total_steps - warmup_steps), then final_lr. The cosine reaches
    final_lr one step *after* the period's last step, so with final_lr 0 every step of the run
    still updates (a 4-step run at 0.5 trains at 0.5, 0.427, 0.25, 0.073), as the per-epoch
    CosineAnnealingLR(T_max=epochs) of the sources never trains an epoch at 0.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = period_steps if period_steps is not None else total_steps - warmup_steps
    if span <= 0:
        return final_lr
    progress = min(1.0, (step - warmup_steps) / span)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_multiplier(
    base_lr: float, final_lr: float, total_steps: int, warmup_steps: int = 0, period_steps: int | None = None
) -> Callable[[int], float]:
    """The LambdaLR function: step -> cosine_lr(step) / base_lr."""
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")

    def multiplier(step: int) -> float:
        return cosine_lr(step, base_lr, final_lr, total_steps, warmup_steps, period_steps) / base_lr

    return multiplier


def cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    base_lr: float,
    final_lr: float,
    warmup_steps: int = 0,
    period_steps: int | None = None,
) -> LambdaLR:
    """A LambdaLR following `cosine_lr`; `base_lr` must be the optimizer's lr."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr
        group["initial_lr"] = base_lr
    return LambdaLR(optimizer, cosine_multiplier(base_lr, final_lr, total_steps, warmup_steps, period_steps))


def milestone_steps(fractions: Sequence[float], total_steps: int, warmup_steps: int = 0) -> list[int]:
    """Steps at which a step decay applies: round(f x total_steps) for each fraction f of the run.

    Fractions keep the shape of a schedule at any length: 0.3/0.6/0.8 of 200 epochs start the
    lower lrs with epochs 61, 121 and 161 (the source's MultiStepLR.step(epoch) starts them one
    epoch earlier, with epochs 60, 120 and 160).

    A warmup that covers a milestone would apply it, and every other milestone it covers, at
    once when it ends. In that case (short runs) the fractions are taken of the steps after
    the warmup instead: warmup_steps + round(f x (total_steps - warmup_steps)). And no two
    milestones share a step (rounding in a run of a few steps could put them there): each is at
    least one step after the one before. So the decays come one at a time, in order, after the
    peak; one that lands at or past the run's end never applies (as a fraction of 1 never does).
    """
    steps = [round(f * total_steps) for f in fractions]
    if any(m < warmup_steps for m in steps):
        steps = [warmup_steps + round(f * (total_steps - warmup_steps)) for f in fractions]
    for i in range(1, len(steps)):
        steps[i] = max(steps[i], steps[i - 1] + 1)
    return steps


def multistep_lr(step: int, base_lr: float, milestones: Sequence[int], gamma: float, warmup_steps: int = 0) -> float:
    """Absolute lr at iteration `step`: linear warmup, then base_lr x gamma^(milestones passed)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * gamma ** sum(step >= m for m in milestones)


SCHEDULE_KINDS = ("cosine", "multistep")


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int, cap: float | None = None) -> int:
    """The warmup's length in steps: warmup_epochs of steps_per_epoch, at most `cap` x total_steps when a cap
    is given (a recipe's warmup_max_fraction). One that covers the whole run, where the lr would rise to the
    last step and never decay, is said in one warning line."""
    steps = round(warmup_epochs * steps_per_epoch)
    if cap:
        steps = min(steps, round(cap * total_steps))
    if steps >= total_steps > 0:
        LOG.warning("warning: the warmup (%d steps, --warmup_epochs %g) covers the whole run of %d steps: the lr "
                    "rises to the last step and never decays; give a shorter --warmup_epochs", steps, warmup_epochs,
                    total_steps)
    return steps


def lr_schedule(
    kind: str,
    base_lr: float,
    total_steps: int,
    final_lr: float = 0.0,
    warmup_steps: int = 0,
    period_steps: int | None = None,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """step -> absolute lr for a schedule named `kind` ("cosine" or "multistep")."""
    if kind == "cosine":
        return lambda step: cosine_lr(step, base_lr, final_lr, total_steps, warmup_steps, period_steps)
    if kind == "multistep":
        steps = list(milestones)
        return lambda step: multistep_lr(step, base_lr, steps, gamma, warmup_steps)
    raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got {kind!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, lr_fn: Callable[[int], float], base_lr: float) -> LambdaLR:
    """A LambdaLR following lr_fn (step -> absolute lr); it returns lr_fn(step) / base_lr, a multiplier.
    A param group marked `fixed_lr` stays at base_lr throughout (SimSiam's predictor); a group with `lr_scale` s
    runs at s x that lr (train.py --lr_1d_scale)."""
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0)
        group["initial_lr"] = group["lr"]
    scheduled = lambda step: lr_fn(step) / base_lr  # noqa: E731
    fixed = lambda step: 1.0  # noqa: E731
    return LambdaLR(optimizer, [fixed if group.get("fixed_lr") else scheduled for group in optimizer.param_groups])
