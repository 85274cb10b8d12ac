"""The top-1 trade-off ceiling: a valid upper bound (checked by enumerating every choice) that is nearly tight."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.evaluation.metrics.tradeoff import lagrangian_choice, top1_ceiling


def _brute_force(g: np.ndarray, f: np.ndarray, floor: float) -> float:
    rows = np.arange(g.shape[0])
    best = -np.inf
    for choice in itertools.product(range(g.shape[1]), repeat=g.shape[0]):
        c = np.asarray(choice)
        if f[rows, c].mean() >= floor - 1e-12:
            best = max(best, float(g[rows, c].mean()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_bound_brackets_the_exact_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.random((5, 4))
    f = rng.random((5, 4))
    # a floor between the floor metric of the gain-greedy choice and the best reachable one: the constraint binds
    greedy = f[np.arange(5), g.argmax(1)].mean()
    floor = float(greedy + 0.5 * (f.max(1).mean() - greedy))
    exact = _brute_force(g, f, floor)
    res = top1_ceiling(g, f, floor)
    assert res.achieved <= exact + 1e-12  # a feasible choice cannot beat the optimum
    assert res.achieved_floor_metric >= floor - 1e-12
    assert exact <= res.bound + 1e-9  # the certified bound holds
    # and it is the linear relaxation: at most one row's gain range (/ n) above the integral optimum
    assert res.bound - exact <= float((g.max(1) - g.min(1)).max()) / g.shape[0] + 1e-9


def test_slack_floor_gives_the_unconstrained_best() -> None:
    g = np.array([[0.9, 0.1], [0.2, 0.8]])
    f = np.array([[0.5, 0.6], [0.4, 0.3]])
    res = top1_ceiling(g, f, floor=0.0)
    assert res.bound == pytest.approx(0.85)
    assert res.achieved == pytest.approx(0.85)
    assert res.multiplier == 0.0


def test_binding_floor_hand_computed() -> None:
    # two queries; meeting mean F >= 0.5 needs query 0 to give up its best gain (1.0 -> 0.5) or query 1 (0.9 -> 0.2)
    g = np.array([[1.0, 0.5], [0.9, 0.2]])
    f = np.array([[0.0, 0.6], [0.4, 1.0]])
    res = top1_ceiling(g, f, floor=0.5)
    assert _brute_force(g, f, 0.5) == pytest.approx(0.7)  # (0.5 + 0.9) / 2, mean F 0.5
    assert res.achieved == pytest.approx(0.7)
    assert 0.7 <= res.bound <= 0.7 + 0.5 / 2 + 1e-9


def test_lagrangian_choice_breaks_ties_toward_the_floor_metric() -> None:
    g = np.array([[0.5, 0.5, 0.1]])
    f = np.array([[0.1, 0.3, 0.9]])
    assert lagrangian_choice(g, f, 0.0).tolist() == [1]
    assert lagrangian_choice(g, f, 10.0).tolist() == [2]


def test_infeasible_floor_and_bad_shapes_are_refused() -> None:
    g = np.zeros((2, 2))
    with pytest.raises(InvalidInputError, match="nothing is feasible"):
        top1_ceiling(g, np.full((2, 2), 0.3), floor=0.5)
    with pytest.raises(InvalidInputError, match="equal non-empty"):
        top1_ceiling(g, np.zeros((2, 3)), floor=0.0)
