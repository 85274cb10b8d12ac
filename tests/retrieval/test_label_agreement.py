"""Label agreement: hand-computed Jaccard, the empty-set convention, the exact expected Jaccard, label names.

One module serves the hybrid scorer (what it optimises), the retrieval evaluation (what it measures) and
``ctrag search`` (what it prints); the tests pin the shared convention (two normal reports agree: Jaccard 1).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.retrieval.label_agreement import (
    exact_match,
    expected_jaccard,
    expected_jaccard_patterns,
    label_jaccard,
    label_jaccard_matrix,
    label_names,
    label_patterns,
    pair_jaccard,
)


def test_label_jaccard_and_empty_convention() -> None:
    a = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    b = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(label_jaccard(a, b), [1 / 3, 1.0, 0.0])
    assert label_jaccard(a[1], b[1], empty=0.0) == 0.0


def test_label_jaccard_matrix_hand_computed() -> None:
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    b = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    expected = np.array([[1 / 3, 0.0, 1.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(label_jaccard_matrix(a, b), expected)
    assert label_jaccard_matrix(a[1:], b[1:2], empty=0.0)[0, 0] == 0.0


def test_matrix_and_broadcast_forms_agree_on_real_labels(ct_rate_dir) -> None:  # type: ignore[no-untyped-def]
    """The pairwise (matrix-product) and elementwise forms give the same numbers on the shipped CT-RATE labels."""
    cases = [c for c in read_ctclip_classifier(ct_rate_dir, patient_level_split=False) if c.labels is not None]
    y = np.asarray([c.labels for c in cases[:120]])
    matrix = label_jaccard_matrix(y[:40], y[40:])
    broadcast = label_jaccard(y[:40, None, :], y[None, 40:, :])
    np.testing.assert_array_equal(matrix, broadcast)
    assert (matrix == 1.0).any() and (matrix < 1.0).any()


def _brute_force_expected_jaccard(p: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for bits in itertools.product((0, 1), repeat=p.size):
        q = np.asarray(bits)
        prob = float(np.prod(np.where(q == 1, p, 1 - p)))
        total += prob * label_jaccard_matrix(q[None], y[None])[0, 0]
    return total


def test_expected_jaccard_equals_enumeration() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((4, 6))
    probs[0] = [0.0, 1.0, 0.5, 0.0, 0.0, 1.0]  # certain and uncertain labels mixed
    cands = np.vstack([np.zeros(6, int), rng.integers(0, 2, (7, 6)), np.ones(6, int), np.zeros(6, int)])
    got = expected_jaccard(probs, cands)
    for i, j in itertools.product(range(probs.shape[0]), range(cands.shape[0])):
        assert got[i, j] == pytest.approx(_brute_force_expected_jaccard(probs[i], cands[j]), abs=1e-12)
    # a certain query is scored by its plain Jaccard
    sure = (rng.random((3, 6)) > 0.5).astype(float)
    np.testing.assert_allclose(expected_jaccard(sure, cands), label_jaccard_matrix(sure, cands))


def test_expected_jaccard_shape_error() -> None:
    with pytest.raises(InvalidInputError, match="do not fit"):
        expected_jaccard(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(InvalidInputError, match="do not fit"):
        expected_jaccard_patterns(np.zeros((2, 3)), np.zeros((4, 5), dtype=bool))
    with pytest.raises(InvalidInputError, match="2-D"):
        label_patterns(np.zeros(5))


def test_label_patterns_once_per_index_then_any_subset(ct_rate_dir: Path) -> None:
    """What the hybrid scorer does: patterns of all rows once, then per query only those a row subset uses."""
    cases = read_ctclip_classifier(ct_rate_dir, patient_level_split=False)
    y = np.asarray([c.labels for c in cases if c.split == "train"], dtype=np.int8)
    patterns, pattern_of = label_patterns(y)
    assert patterns.dtype == bool and len(patterns) < len(y) and np.array_equal(patterns[pattern_of], y.astype(bool))
    probs = np.random.default_rng(0).random((3, y.shape[1]))
    rows = np.sort(np.random.default_rng(1).choice(len(y), 120, replace=False))
    used, inverse = np.unique(pattern_of[rows], return_inverse=True)
    got = expected_jaccard_patterns(probs, patterns[used])[:, inverse]
    np.testing.assert_array_equal(got, expected_jaccard(probs, y[rows]))


def test_exact_match() -> None:
    a = np.array([[1, 0, 1], [0, 0, 0]])
    b = np.array([[1, 0, 1], [0, 1, 0]])
    assert exact_match(a, b).tolist() == [True, False]


def test_label_names_and_pair_jaccard() -> None:
    row = np.zeros(len(CT_RATE_LABELS), dtype=np.int8)
    row[[0, 3]] = 1
    assert label_names(row) == [CT_RATE_LABELS[0], CT_RATE_LABELS[3]]
    assert label_names(None) == []
    other = np.zeros_like(row)
    other[0] = 1
    assert pair_jaccard(row, other) == pytest.approx(0.5)
    assert pair_jaccard(np.zeros_like(row), np.zeros_like(row)) == 1.0
    assert pair_jaccard(row, None) is None
    with pytest.raises(InvalidInputError, match="18 CT-RATE labels"):
        label_names([1, 0])
