"""Retrieval metrics at k: how well the labels of retrieved reports agree with the query report's labels.

Pure functions on label arrays: query labels (n, L) and the labels of each query's retrieved reports in rank
order (n, k, L), L = 18 CT-RATE labels. Label Jaccard itself (and its convention: two all-zero label vectors
agree, Jaccard 1) lives in :mod:`ctrag.retrieval.label_agreement`, shared with the scorer that optimises it.
"""

from __future__ import annotations

import numpy as np

from ctrag.errors import InvalidInputError
from ctrag.retrieval.label_agreement import exact_match, label_jaccard


def _check_retrieved(query_labels: np.ndarray, retrieved_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(query_labels)
    r = np.asarray(retrieved_labels)
    if q.ndim != 2 or r.ndim != 3 or r.shape[0] != q.shape[0] or r.shape[2] != q.shape[1]:
        raise InvalidInputError(
            f"expected query labels (n, L) and retrieved labels (n, k, L), got {q.shape} and {r.shape}"
        )
    return q, r


def mean_jaccard_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """Per query: mean label-Jaccard of its top ``k`` retrieved reports (shape (n,))."""
    q, r = _check_retrieved(query_labels, retrieved_labels)
    return label_jaccard(q[:, None, :], r[:, :k, :]).mean(axis=1)


def exact_precision_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """Per query: share of its top ``k`` whose 18 labels equal the query's exactly (shape (n,))."""
    q, r = _check_retrieved(query_labels, retrieved_labels)
    return exact_match(q[:, None, :], r[:, :k, :]).mean(axis=1)


def per_label_hit_rate(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """Per label: among queries with the label, the share whose top ``k`` hold a report with it (NaN: no such query)."""
    q, r = _check_retrieved(query_labels, retrieved_labels)
    hit = r[:, :k, :].astype(bool).any(axis=1)  # (n, L)
    pos = q.astype(bool)
    counts = pos.sum(axis=0)
    hits = np.logical_and(hit, pos).sum(axis=0)
    return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
