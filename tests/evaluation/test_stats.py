"""Wilcoxon marks a clearly worse method (one-sided, paired by seed) and never an identical one; bootstrap CIs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.evaluation.stats import BootstrapPlan, bootstrap_ci, wilcoxon_worse

REFERENCE_DICE = [0.77, 0.78, 0.76, 0.79, 0.77]


def test_clearly_worse_method_is_marked_both_directions() -> None:
    worse_dice = [d - 0.06 - 0.01 * i for i, d in enumerate(REFERENCE_DICE)]
    res = wilcoxon_worse(REFERENCE_DICE, worse_dice, higher_is_better=True)
    assert res.significant and res.p_value == pytest.approx(1 / 32)  # exact one-sided minimum for n = 5
    assert res.mean_difference < 0
    # HD95: lower is better, so larger values are worse.
    ref_hd = [3.0, 3.1, 2.9, 3.2, 3.0]
    res_hd = wilcoxon_worse(ref_hd, [h + 2.0 + 0.1 * i for i, h in enumerate(ref_hd)], higher_is_better=False)
    assert res_hd.significant


def test_identical_or_better_methods_are_not_marked() -> None:
    same = wilcoxon_worse(REFERENCE_DICE, list(REFERENCE_DICE), higher_is_better=True)
    assert not same.significant and same.p_value == 1.0
    better = wilcoxon_worse(REFERENCE_DICE, [d + 0.05 for d in REFERENCE_DICE], higher_is_better=True)
    assert not better.significant and better.p_value > 0.5
    # Mixed signs: worse on some seeds, better on others.
    mixed = wilcoxon_worse(REFERENCE_DICE, [0.70, 0.80, 0.75, 0.81, 0.76], higher_is_better=True)
    assert not mixed.significant


def test_nan_pairs_are_dropped_and_shapes_checked() -> None:
    res = wilcoxon_worse([1.0, 2.0, float("nan")], [0.5, 1.0, 3.0], higher_is_better=True)
    assert res.n_pairs == 2
    with pytest.raises(InvalidInputError):
        wilcoxon_worse([1.0, 2.0], [1.0], higher_is_better=True)


def test_bootstrap_ci_brackets_the_mean() -> None:
    values = [0.30, 0.31, 0.29, 0.33, 0.30]
    lo, hi = bootstrap_ci(values, n_resamples=2000, seed=0)
    assert min(values) <= lo < float(np.mean(values)) < hi <= max(values)
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values, seed=0)  # seeded
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))


def test_bootstrap_plan() -> None:
    plan = BootstrapPlan.make(50, 500, seed=0)
    values = np.random.default_rng(1).random(50)
    lo, hi = plan.ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.3
    assert plan.ci(np.full(50, 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in BootstrapPlan.make(50, 0, 0).ci(values))


def test_one_bootstrap_matches_scipy_percentile_bootstrap() -> None:
    """``bootstrap_ci`` (built on the plan) gives scipy's percentile interval for the same seed, to rounding."""
    from scipy.stats import bootstrap

    values = np.random.default_rng(3).random(37)
    ref = bootstrap((values,), np.mean, n_resamples=500, method="percentile", rng=np.random.default_rng(5))
    lo, hi = bootstrap_ci(values, n_resamples=500, seed=5)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert (lo, hi) == BootstrapPlan.make(37, 500, 5).ci(values)


def test_bootstrap_plan_is_paired() -> None:
    """One plan resamples the same items for every method, so a constant offset moves both CI ends by it."""
    plan = BootstrapPlan.make(40, 300, seed=2)
    a = np.random.default_rng(0).random(40)
    lo_a, hi_a = plan.ci(a)
    lo_b, hi_b = plan.ci(a + 0.25)
    assert lo_b == pytest.approx(lo_a + 0.25) and hi_b == pytest.approx(hi_a + 0.25)
    assert plan.indices.shape == (300, 40) and plan.indices.max() < 40
