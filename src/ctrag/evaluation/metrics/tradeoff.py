"""How high can top-1 label agreement go while top-1 text overlap stays above a floor? A certified ceiling.

Why: issue 14 asks for a report -> report retriever with top-1 label-Jaccard >= 0.70 *and* ROUGE-L >= 0.55. Both
measures are properties of the one report each query retrieves, so for a fixed corpus and query set there is a
best any retriever can do — even one that knows every query's true labels. Whether a goal is reachable at all is
then a computation, not a matter of trying more scorers.

The problem: choose one candidate c(q) per query to maximise mean_q G[q, c(q)] subject to
mean_q F[q, c(q)] >= floor (G: gain, e.g. true label-Jaccard; F: floor metric, e.g. ROUGE-L). By weak duality,
for every lambda >= 0 and every feasible choice,

    mean G <= mean G + lambda * (mean F - floor) <= mean_q max_c (G[q, c] + lambda * (F[q, c] - floor)) = U(lambda),

so each U(lambda) is a valid upper bound; the smallest over lambda (U is convex, piecewise linear) is reported. It
is the value of the problem's linear relaxation, so it exceeds the best integral choice by at most about one
query's range of G divided by the number of queries. The Lagrangian choices (argmax of G + lambda F per query) give
feasible selections from below, so the true optimum is bracketed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ctrag.errors import InvalidInputError


@dataclass(frozen=True)
class TradeoffCeiling:
    """Bracket of the best mean gain at a floor: ``achieved`` (a feasible choice) <= optimum <= ``bound``."""

    floor: float
    bound: float  # min over lambda of U(lambda): no choice of one candidate per query does better
    multiplier: float  # the lambda that gave ``bound``
    achieved: float  # mean gain of the best feasible Lagrangian choice found
    achieved_floor_metric: float  # its mean floor metric (>= floor)


def lagrangian_choice(gain: npt.ArrayLike, floor_metric: npt.ArrayLike, multiplier: float) -> np.ndarray:
    """Column per row maximising ``gain + multiplier * floor_metric`` (ties: higher floor metric, then lower column)."""
    g, f = _check(gain, floor_metric)
    score = g + multiplier * f
    best = score.max(axis=1, keepdims=True)
    tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    return np.asarray(np.where(tied, f, -np.inf).argmax(axis=1))


def _check(gain: npt.ArrayLike, floor_metric: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(gain, dtype=np.float64)
    f = np.asarray(floor_metric, dtype=np.float64)
    if g.ndim != 2 or g.shape != f.shape or g.shape[0] == 0 or g.shape[1] == 0:
        raise InvalidInputError(
            f"tradeoff: gain and floor metric must be equal non-empty (n, m), got {g.shape}, {f.shape}"
        )
    if not (np.isfinite(g).all() and np.isfinite(f).all()):
        raise InvalidInputError("tradeoff: gain and floor metric must be finite")
    return g, f


def top1_ceiling(
    gain: npt.ArrayLike, floor_metric: npt.ArrayLike, floor: float, *, n_multipliers: int = 4001
) -> TradeoffCeiling:
    """Certified ceiling of mean ``gain`` over one-per-row choices whose mean ``floor_metric`` is >= ``floor``.

    ``gain``/``floor_metric``: (n_queries, n_candidates). Raises when even the row-wise best floor metric misses the
    floor (no choice is feasible). Multipliers are scanned on a grid from 0 up to the largest useful one (where
    the floor term dominates every gain difference), then refined around the best; any multiplier's U is a valid
    bound, so the grid only affects how tight it is.
    """
    g, f = _check(gain, floor_metric)
    if f.max(axis=1).mean() < floor - 1e-12:
        raise InvalidInputError(
            f"tradeoff: floor {floor:g} is above the best reachable mean ({f.max(axis=1).mean():.4f}); "
            "nothing is feasible"
        )
    spread_g = float(g.max() - g.min())
    gaps = np.diff(np.unique(f))
    min_gap = float(gaps.min()) if gaps.size else 1.0
    lam_max = max(1.0, 2.0 * spread_g / max(min_gap, 1e-9))

    def upper(lam: float) -> float:
        return float((g + lam * (f - floor)).max(axis=1).mean())

    grid = np.concatenate([[0.0], np.geomspace(1e-4, lam_max, max(2, n_multipliers - 1))])
    values = np.asarray([upper(lam) for lam in grid])
    i = int(values.argmin())
    lo, hi = grid[max(0, i - 1)], grid[min(grid.size - 1, i + 1)]
    fine = np.linspace(lo, hi, 201)
    fine_values = np.asarray([upper(lam) for lam in fine])
    j = int(fine_values.argmin())
    lam_star, bound = (
        (float(fine[j]), float(fine_values[j])) if fine_values[j] < values[i] else (float(grid[i]), float(values[i]))
    )

    rows = np.arange(g.shape[0])
    best_gain, best_f = -np.inf, float("nan")
    for lam in np.concatenate([grid, fine]):
        top = lagrangian_choice(g, f, float(lam))
        mean_f = float(f[rows, top].mean())
        mean_g = float(g[rows, top].mean())
        if mean_f >= floor - 1e-12 and mean_g > best_gain:
            best_gain, best_f = mean_g, mean_f
    return TradeoffCeiling(float(floor), bound, lam_star, float(best_gain), best_f)
