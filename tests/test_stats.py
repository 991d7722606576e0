"""utils/stats.py: the two-standard-error rule, against the closed form and numpy's sample standard deviations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from utils.stats import compare, describe, standard_error, verdict


def test_standard_error_is_the_welch_form_of_the_seeds_sample_deviations():
    a, b = np.array([85.1, 85.9, 84.8]), np.array([82.6, 82.2, 83.1])
    got = compare(a.mean(), a.std(ddof=1), 3, b.mean(), b.std(ddof=1), 3)
    want = math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3)
    assert got["se"] == pytest.approx(want) and got["diff"] == pytest.approx(a.mean() - b.mean())
    assert got["verdict"] == "lead" and describe(got).endswith("(lead)") and describe(got).startswith("+")


@pytest.mark.parametrize("diff, se, want", [(1.01, 0.5, "lead"), (1.0, 0.5, "level"), (0.99, 0.5, "level"),
                                            (-0.99, 0.5, "level"), (-1.01, 0.5, "behind"), (3.0, None, "one seed")])
def test_a_difference_is_a_finding_only_past_two_standard_errors(diff, se, want):
    assert verdict(diff, se) == want


def test_one_seed_has_no_standard_error():
    assert standard_error(0.4, 1, 0.3, 3) is None and standard_error(None, 3, 0.3, 3) is None
    assert compare(84.0, None, 1, 82.0, None, 1) == {"diff": 2.0, "se": None, "verdict": "one seed"}
    assert describe(compare(84.0, None, 1, 82.0, None, 1)) == "+2.00 (one seed)"
