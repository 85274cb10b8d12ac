"""Multi-label AUC and precision (macro and weighted) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.evaluation.metrics.classification import classification_scores


def test_classification_scores_match_hand_computed_values() -> None:
    y = np.zeros((4, 18), dtype=int)
    p = np.full((4, 18), 0.1)
    y[:, 0] = [0, 0, 1, 1]
    p[:, 0] = [0.1, 0.4, 0.35, 0.8]  # AUC: 3 of 4 positive/negative pairs ordered = 0.75
    y[:, 1] = [0, 0, 0, 1]
    p[:, 1] = [0.2, 0.6, 0.3, 0.7]  # AUC 1.0; thresholded at 0.5: TP 1, FP 1 → precision 0.5
    y[:, 2] = 1  # single class: no AUC, but precision counts (prediction 0.1 < 0.5 → precision 0)
    s = classification_scores(y, p)
    assert s.auc_labels == [CT_RATE_LABELS[0], CT_RATE_LABELS[1]]
    assert s.auc_macro == pytest.approx((0.75 + 1.0) / 2)
    assert s.auc_weighted == pytest.approx((2 * 0.75 + 1 * 1.0) / 3)
    # label 0: predicted positive at 0.8 only → TP 1, precision 1.0; label 1: 0.5; label 2: 0.
    assert s.precision_macro == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert s.precision_weighted == pytest.approx((2 * 1.0 + 1 * 0.5 + 4 * 0.0) / 7)
    with pytest.raises(InvalidInputError):
        classification_scores(y[:, :3], p[:, :3])
