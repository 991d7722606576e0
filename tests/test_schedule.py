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


def _cosine_reference(k, base, final, span):
    """The half cosine written from its definition: base at k = 0, final at k = span (one step past the run)."""
    return final + (base - final) * (1 + math.cos(math.pi * min(k, span) / span)) / 2


def test_endpoints_are_exact():
    lrs = _run(100)
    assert lrs[0] == pytest.approx(0.6)
    # The floor is reached one step after the last: the last step still trains above it.
    assert lrs[-1] == pytest.approx(_cosine_reference(99, 0.6, 1e-3, 100)) and lrs[-1] > 1e-3
    assert cosine_lr(100, 0.6, 1e-3, 100) == pytest.approx(1e-3)


def test_four_step_run_never_trains_at_lr_zero():
    # The review's example: with span T-1 a 4-step run at 0.5 trained at 0.5, 0.375, 0.125, 0.0.
    expected = [0.5, 0.25 * (1 + math.cos(math.pi / 4)), 0.25, 0.25 * (1 + math.cos(3 * math.pi / 4))]
    assert _run(4, base=0.5, final=0.0) == pytest.approx(expected)  # 0.5, 0.427, 0.25, 0.073
    assert all(lr > 0 for lr in _run(4, base=0.5, final=0.0))
    # With a warmup the cosine spans the steps after it: 2 warmup steps, then the same four values.
    lrs = _run(6, base=0.5, final=0.0, warmup=2)
    assert lrs == pytest.approx([0.25, 0.5] + expected)


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
    total = 100
    lr = cosine_lr(50, 1.0, 0.0, total)
    assert lr == pytest.approx(0.5)
    assert cosine_lr(25, 1.0, 0.0, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_period_then_hold_at_floor():
    lrs = _run(30, base=0.01, final=0.0, period=10)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[:10] == pytest.approx([_cosine_reference(k, 0.01, 0.0, 10) for k in range(10)])
    assert lrs[9] > 0  # the period's last step still trains; the hold at the floor starts after it
    assert all(lr == pytest.approx(0.0, abs=1e-12) for lr in lrs[10:])


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


def test_cosine_schedule_reaches_its_floor_after_the_last_step():
    from utils.schedule import lr_schedule

    fn = lr_schedule("cosine", 0.06, 100, final_lr=0.0)
    assert fn(0) == pytest.approx(0.06) and fn(100) == 0.0
    assert all(fn(k) > 0 for k in range(100))  # no step of the run trains at lr 0


def _lrs(fn, total):
    return [fn(k) for k in range(total)]


def test_milestones_inside_the_warmup_apply_after_it_one_at_a_time():
    from utils.schedule import lr_schedule, milestone_steps

    # 10 steps, warmup 5, milestones 0.3/0.6/0.8 of the run = steps 3, 6, 8: the warmup covers step 3,
    # which used to apply together with nothing else but at step 5, i.e. the peak never trained after
    # the warmup; with warmup 7 two milestones (3 and 6) applied at once at step 7.
    for warmup in (5, 7):
        marks = milestone_steps([0.3, 0.6, 0.8], 10, warmup)
        assert all(m >= warmup for m in marks) and marks == sorted(set(marks)), marks
        lrs = _lrs(lr_schedule("multistep", 0.1, 10, warmup_steps=warmup, milestones=marks, gamma=0.2), 10)
        assert lrs[warmup] == pytest.approx(0.1)  # the first step after the warmup trains at the peak
        after = lrs[warmup - 1:]
        for a, b in zip(after, after[1:]):  # each step keeps the lr or divides it by gamma once
            assert b == pytest.approx(a) or b == pytest.approx(a * 0.2), after
    # Fractions of the steps after the warmup, in that case: 5 + round(f x 5).
    assert milestone_steps([0.3, 0.6, 0.8], 10, 5) == [5 + round(1.5), 8, 9]
    # A warmup before the first milestone changes nothing (the 200-epoch recipe: 60/120/160 epochs).
    assert milestone_steps([0.3, 0.6, 0.8], 200 * 3, 3) == [180, 360, 480]
