"""When a difference between two arms is a finding: the two-standard-error rule over seeds.

Each arm of a comparison is run with several seeds (each seed redraws the pretraining subset, the network's
initialisation, the probe's validation split and labelled subset). The difference of two arms' means is called
a *lead* (or *behind*) only where it exceeds two standard errors of that difference, and *level* otherwise:

    se = sqrt(s_a^2 / n_a + s_b^2 / n_b)        (s: the sample standard deviation of an arm's seeds, n: its seeds)

the unpaired (Welch) form, which does not assume that seed k of one arm is correlated with seed k of the other.
With fewer than two seeds in an arm there is no standard deviation and no verdict ("one seed").

    from utils.stats import compare
    compare(85.6, 0.4, 3, 82.6, 0.3, 3)   # {"diff": 3.0, "se": 0.29, "verdict": "lead"}

Run its tests with `python -m pytest tests/test_stats.py -q`.
"""
from __future__ import annotations

import math

RULE_SE = 2.0  # a difference is a finding past this many standard errors
RULE_TEXT = ("a difference of means is a lead (or behind) only past two standard errors of the difference, "
             "se = sqrt(s_a²/n_a + s_b²/n_b) from each arm's seeds (sample s.d.); level otherwise")


def standard_error(std_a: float | None, n_a: int, std_b: float | None, n_b: int) -> float | None:
    """The standard error of mean_a - mean_b from each arm's sample s.d. over its n seeds; None below 2 seeds."""
    if n_a < 2 or n_b < 2 or std_a is None or std_b is None:
        return None
    return math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b)


def verdict(diff: float, se: float | None) -> str:
    """'lead' (diff > 2 se), 'behind' (diff < -2 se), 'level', or 'one seed' where there is no standard error."""
    if se is None:
        return "one seed"
    if diff > RULE_SE * se:
        return "lead"
    if diff < -RULE_SE * se:
        return "behind"
    return "level"


def compare(mean_a: float, std_a: float | None, n_a: int, mean_b: float, std_b: float | None, n_b: int) -> dict:
    """{"diff": mean_a - mean_b, "se": its standard error or None, "verdict": by the two-standard-error rule}."""
    diff = mean_a - mean_b
    se = standard_error(std_a, n_a, std_b, n_b)
    return {"diff": diff, "se": se, "verdict": verdict(diff, se)}


def describe(result: dict, digits: int = 2) -> str:
    """'+2.93 ± 0.41 (lead)': the difference, its standard error and the verdict."""
    se = "" if result["se"] is None else f" ± {result['se']:.{digits}f}"
    return f"{result['diff']:+.{digits}f}{se} ({result['verdict']})"
