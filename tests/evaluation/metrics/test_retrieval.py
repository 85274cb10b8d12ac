"""Retrieval metrics at k (mean label-Jaccard, exact-match precision, per-label hit rate), hand-computed."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.evaluation.metrics.retrieval import exact_precision_at_k, mean_jaccard_at_k, per_label_hit_rate


def test_at_k_metrics_hand_computed() -> None:
    q = np.array([[1, 0, 0], [0, 1, 1]])
    r = np.array(
        [
            [[1, 0, 0], [1, 1, 0], [0, 0, 0]],  # query 0: J 1, 1/2, 0 ; exact 1, 0, 0
            [[0, 0, 0], [0, 1, 1], [0, 1, 0]],  # query 1: J 0, 1, 1/2 ; exact 0, 1, 0
        ]
    )
    np.testing.assert_allclose(mean_jaccard_at_k(q, r, 1), [1.0, 0.0])
    np.testing.assert_allclose(mean_jaccard_at_k(q, r, 3), [0.5, 0.5])
    np.testing.assert_allclose(exact_precision_at_k(q, r, 1), [1.0, 0.0])
    np.testing.assert_allclose(exact_precision_at_k(q, r, 2), [0.5, 0.5])
    # label 0: 1 positive query, hit at 1; label 1: query 1, miss at 1, hit at 2; label 2: query 1, hit only at 2
    hit1 = per_label_hit_rate(q, r, 1)
    np.testing.assert_allclose(hit1, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(per_label_hit_rate(q, r, 2), [1.0, 1.0, 1.0])
    no_pos = per_label_hit_rate(np.zeros((2, 3)), r, 1)
    assert np.isnan(no_pos).all()
    with pytest.raises(InvalidInputError, match="retrieved labels"):
        mean_jaccard_at_k(q, r[:1], 1)
