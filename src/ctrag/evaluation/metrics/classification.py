"""Multi-label AUC and precision (macro and weighted), as in RAG-Text2CT's clinical-consistency table.

Computed with scikit-learn on the labels that can be scored: AUC needs both classes among the evaluated cases,
and precision is averaged over labels with at least one positive case (weighted = by that support). Labels left
out are listed, so a table built from a handful of cases says how many of the 18 labels its numbers rest on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError


@dataclass
class ClassificationScores:
    auc_macro: float
    auc_weighted: float
    precision_macro: float
    precision_weighted: float
    n_cases: int
    auc_labels: list[str] = field(default_factory=list)
    precision_labels: list[str] = field(default_factory=list)
    per_label_auc: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def classification_scores(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    *,
    threshold: float = 0.5,
    label_names: Sequence[str] = CT_RATE_LABELS,
) -> ClassificationScores:
    """Macro/weighted AUC and precision of probabilities ``y_prob`` against 0/1 ``y_true`` (both (N, L))."""
    from sklearn.metrics import precision_score, roc_auc_score

    yt = np.asarray(y_true)
    yp = np.asarray(y_prob, dtype=np.float64)
    if yt.shape != yp.shape or yt.ndim != 2 or yt.shape[1] != len(label_names):
        raise InvalidInputError(
            f"classification: y_true {yt.shape} and y_prob {yp.shape} must be (N, {len(label_names)})"
        )
    if not np.isin(yt, (0, 1)).all():
        raise InvalidInputError("classification: y_true must be 0/1")
    yt = yt.astype(int)
    pos = yt.sum(0)
    auc_cols = [i for i in range(yt.shape[1]) if 0 < pos[i] < yt.shape[0]]
    prec_cols = [i for i in range(yt.shape[1]) if pos[i] > 0]
    nan = float("nan")
    auc_macro = auc_weighted = nan
    per_label: dict[str, float] = {}
    if auc_cols:
        sub_t, sub_p = yt[:, auc_cols], yp[:, auc_cols]
        auc_macro = float(roc_auc_score(sub_t, sub_p, average="macro"))
        auc_weighted = float(roc_auc_score(sub_t, sub_p, average="weighted"))
        per = roc_auc_score(sub_t, sub_p, average=None)
        per_label = {label_names[c]: float(v) for c, v in zip(auc_cols, np.atleast_1d(per), strict=True)}
    prec_macro = prec_weighted = nan
    if prec_cols:
        pred = (yp[:, prec_cols] >= threshold).astype(int)
        prec_macro = float(precision_score(yt[:, prec_cols], pred, average="macro", zero_division=0))
        prec_weighted = float(precision_score(yt[:, prec_cols], pred, average="weighted", zero_division=0))
    return ClassificationScores(
        auc_macro=auc_macro,
        auc_weighted=auc_weighted,
        precision_macro=prec_macro,
        precision_weighted=prec_weighted,
        n_cases=int(yt.shape[0]),
        auc_labels=[label_names[c] for c in auc_cols],
        precision_labels=[label_names[c] for c in prec_cols],
        per_label_auc=per_label,
    )
