"""LCS similarity: hand-computed values and agreement with the textbook dynamic programme."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.utils.sequences import lcs_f1, lcs_f1_many, lcs_length


def _lcs_dp(a: list[int], b: list[int]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_lcs_hand_computed_and_against_dynamic_programme() -> None:
    # "the cat sat on the mat" vs "the mat sat": LCS "the sat" -> 2... or "the mat": also 2.
    a, b = [0, 1, 2, 3, 0, 4], [0, 4, 2]
    assert lcs_length(a, b) == 2
    assert lcs_f1(a, b) == pytest.approx(2 * 2 / 9)
    assert lcs_length([], b) == 0 and lcs_f1([], []) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.integers(0, 6, rng.integers(0, 70)).tolist()
        y = rng.integers(0, 6, rng.integers(0, 70)).tolist()
        assert lcs_length(x, y) == _lcs_dp(x, y)
    docs = [rng.integers(0, 6, n).tolist() for n in (0, 5, 40)]
    query = rng.integers(0, 6, 30).tolist()
    np.testing.assert_allclose(lcs_f1_many(query, docs), [lcs_f1(query, d) for d in docs])
