"""Significance and uncertainty for tables over seeds: paired Wilcoxon signed-rank test and bootstrap CIs.

RAG-Text2CT marks with ``*`` the methods "statistically significantly inferior" to the proposed one by a paired
Wilcoxon signed-rank test across 5 seeds (p < 0.05). "Inferior" is a one-sided question, and with 5 pairs it
has to be: the smallest two-sided exact p-value for n = 5 is 2/32 = 0.0625, so a two-sided test could never
mark anything; the one-sided exact minimum is 1/32 = 0.031. Pairs are matched by seed.

Bootstrap CIs are percentile intervals of the mean, from one implementation: :class:`BootstrapPlan` draws the
resampled indices once (numpy ``default_rng(seed).integers``, the same draws ``scipy.stats.bootstrap`` makes),
so several methods measured on the same items share resamples (a paired bootstrap: their differences get CIs
too). The retrieval evaluation resamples queries; the generation tables resample seeds with
:func:`bootstrap_ci`, which builds a plan per call. With 5 seeds the intervals are wide and coarse; they say
how much a number moved between seeds, not more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctrag.errors import InvalidInputError


@dataclass(frozen=True)
class WilcoxonResult:
    p_value: float
    significant: bool
    n_pairs: int
    statistic: float
    mean_difference: float  # other - reference, in the metric's own units


def wilcoxon_worse(
    reference: Sequence[float],
    other: Sequence[float],
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
) -> WilcoxonResult:
    """One-sided paired test that ``other`` is worse than ``reference`` (pairs in the same order, e.g. by seed).

    NaN pairs are dropped. When every difference is zero (identical methods) the p-value is 1 and nothing is
    marked; scipy's exact distribution is used whenever it applies (small n, no ties/zeros).
    """
    from scipy.stats import wilcoxon

    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    if ref.shape != oth.shape or ref.ndim != 1:
        raise InvalidInputError(f"wilcoxon: paired 1-D sequences needed, got {ref.shape} and {oth.shape}")
    keep = np.isfinite(ref) & np.isfinite(oth)
    ref, oth = ref[keep], oth[keep]
    n = int(ref.size)
    diff = oth - ref
    mean_diff = float(diff.mean()) if n else float("nan")
    if n == 0 or np.all(diff == 0):
        return WilcoxonResult(1.0, False, n, float("nan"), mean_diff)
    alternative = "less" if higher_is_better else "greater"
    res = wilcoxon(oth, ref, alternative=alternative, zero_method="wilcox")
    p = float(res.pvalue)
    if math.isnan(p):
        p = 1.0
    return WilcoxonResult(p, p < alpha, n, float(res.statistic), mean_diff)


@dataclass(frozen=True)
class BootstrapPlan:
    """One set of resampled item indices shared by every method (paired bootstrap)."""

    indices: np.ndarray  # (n_resamples, n)
    confidence: float

    @classmethod
    def make(cls, n: int, n_resamples: int, seed: int, confidence: float = 0.95) -> BootstrapPlan:
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, n, size=(max(n_resamples, 0), n)), confidence)

    def ci(self, values: np.ndarray) -> tuple[float, float]:
        """Percentile CI of the mean of ``values`` (NaN when there are no resamples)."""
        v = np.asarray(values, dtype=np.float64)
        if self.indices.shape[0] == 0 or v.size < 2:
            return (math.nan, math.nan)
        means = v[self.indices].mean(axis=1)
        alpha = (1.0 - self.confidence) / 2.0
        lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
        return (float(lo), float(hi))


def bootstrap_ci(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; ``(nan, nan)`` for fewer than 2 finite values, exact for constants."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2:
        return (float("nan"), float("nan"))
    if np.all(arr == arr[0]):
        return (float(arr[0]), float(arr[0]))
    return BootstrapPlan.make(arr.size, n_resamples, seed, confidence).ci(arr)
