"""Schedules: endpoints, monotonicity, multiplier semantics, per-iteration stepping."""
import math

import pytest
import torch

from utils.schedule import cosine_lr, cosine_multiplier, cosine_scheduler


def _run(total, base=0.6, final=1e-3, warmup=0, period=None):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = cosine_scheduler(opt, total, base, final, warmup, period)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_endpoints_are_exact():
    lrs = _run(100)
    assert lrs[0] == pytest.approx(0.6)
    assert lrs[-1] == pytest.approx(1e-3)  # the floor lands on the last step, not after it


def test_real_peak_is_base_lr_not_its_square():
    # The original's LambdaLR returned an absolute lr, giving a peak of 0.6 * 0.6 = 0.36.
    assert max(_run(50)) == pytest.approx(0.6)
    assert cosine_multiplier(0.6, 1e-3, 50)(0) == pytest.approx(1.0)


def test_monotone_non_increasing_after_warmup():
    lrs = _run(200, warmup=20)
    after = lrs[20:]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert lrs[19] == pytest.approx(0.6)
    assert lrs[0] == pytest.approx(0.6 / 20)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:20]))


def test_midpoint_is_closed_form():
    total = 101
    lr = cosine_lr(50, 1.0, 0.0, total)
    assert lr == pytest.approx(0.5)
    assert cosine_lr(25, 1.0, 0.0, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_period_then_hold_at_floor():
    lrs = _run(30, base=0.01, final=0.0, period=10)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[9] == pytest.approx(0.0, abs=1e-12)
    assert all(lr == pytest.approx(0.0, abs=1e-12) for lr in lrs[9:])


def test_single_step_run_uses_base_lr():
    assert _run(1) == [pytest.approx(0.6)]


def test_multistep_matches_its_closed_form_and_milestones_scale_with_the_run():
    from utils.schedule import lr_schedule, make_scheduler, milestone_steps

    spe, epochs = 3, 200
    total = spe * epochs
    marks = milestone_steps([0.3, 0.6, 0.8], total)
    assert marks == [60 * spe, 120 * spe, 160 * spe]  # epochs 61, 121, 161 start the lower lrs
    fn = lr_schedule("multistep", 0.1, total, warmup_steps=spe, milestones=marks, gamma=0.2)
    assert [fn(k) for k in range(spe)] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])  # warmup, never 0
    assert fn(60 * spe - 1) == pytest.approx(0.1) and fn(60 * spe) == pytest.approx(0.02)
    assert fn(120 * spe) == pytest.approx(0.004) and fn(total - 1) == pytest.approx(0.1 * 0.2 ** 3)
    # Through a LambdaLR: the optimizer sees the same values (the lambda returns a multiplier).
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=123.0)
    sched = make_scheduler(opt, fn, 0.1)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([fn(k) for k in range(total)])
    # A 4-epoch run keeps the shape instead of collapsing every milestone onto step 0.
    assert milestone_steps([0.3, 0.6, 0.8], 4 * spe) == [4, 7, 10]


def test_cosine_schedule_reaches_its_floor_only_at_the_last_step():
    from utils.schedule import lr_schedule

    fn = lr_schedule("cosine", 0.06, 100, final_lr=0.0)
    assert fn(0) == pytest.approx(0.06) and fn(99) == 0.0
    assert all(fn(k) > 0 for k in range(99))
