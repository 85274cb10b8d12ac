"""Agreement of the 18 CT-RATE labels between two reports: the one home of label Jaccard.

Why one module: the hybrid scorer ranks by (expected) label Jaccard, the retrieval evaluation measures it, and
``ctrag search`` prints it next to each hit. Had each its own formula, a change of convention in one (how two
normal reports compare) would silently make the printed, the optimised and the measured numbers disagree.

Convention everywhere: labels are 0/1 rows over :data:`~ctrag.data.labels.CT_RATE_LABELS`; two all-zero rows
(two normal reports) have Jaccard ``empty`` = 1 — they agree perfectly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError

#: Jaccard of two empty label sets (two normal reports agree).
EMPTY_JACCARD = 1.0


def label_jaccard(a: npt.ArrayLike, b: npt.ArrayLike, empty: float = EMPTY_JACCARD) -> np.ndarray:
    """Jaccard of 0/1 label vectors along the last axis (numpy broadcasting); two empty sets give ``empty``."""
    x = np.asarray(a).astype(bool)
    y = np.asarray(b).astype(bool)
    inter = np.logical_and(x, y).sum(-1)
    union = np.logical_or(x, y).sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), empty).astype(np.float64)


def label_jaccard_matrix(a: npt.ArrayLike, b: npt.ArrayLike, empty: float = EMPTY_JACCARD) -> np.ndarray:
    """(len(a), len(b)) Jaccard of every pair of 0/1 label rows; two all-zero rows score ``empty``.

    The same numbers as ``label_jaccard(a[:, None], b[None])`` through two matrix products, so a query block
    against a large candidate set never materialises an (n_a, n_b, n_labels) array.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    inter = x @ y.T
    union = x.sum(1)[:, None] + y.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), empty)


def exact_match(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """True where two label vectors (last axis, broadcasting) are identical."""
    return np.all(np.asarray(a).astype(bool) == np.asarray(b).astype(bool), axis=-1)


def label_patterns(cand_labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Distinct 0/1 label rows (sorted, as bool) and each row's index into them.

    Expected Jaccard depends on a candidate only through its label pattern, and a corpus has few of them (a few
    hundred among thousands of CT-RATE reports; at most 2^18), so the hybrid scorer computes this once per index
    and per query only the patterns its candidate rows use.
    """
    y = np.asarray(cand_labels)
    if y.ndim != 2:
        raise InvalidInputError(f"label_patterns: expected a 2-D label matrix, got shape {y.shape}")
    patterns, inverse = np.unique(y.astype(bool), axis=0, return_inverse=True)
    return patterns, np.asarray(inverse, dtype=np.int64).ravel()


def expected_jaccard_patterns(probs: npt.ArrayLike, patterns: np.ndarray, empty: float = EMPTY_JACCARD) -> np.ndarray:
    """(n_queries, n_patterns) E[Jaccard(Q, Y)] against distinct bool label rows ``patterns`` (see below)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    if p.ndim != 2 or patterns.ndim != 2 or p.shape[1] != patterns.shape[1]:
        raise InvalidInputError(f"expected_jaccard: shapes {p.shape} and {patterns.shape} do not fit")
    n_lab = p.shape[1]
    size = patterns.sum(1).astype(np.float64)  # |Y| per pattern
    out = np.empty((p.shape[0], patterns.shape[0]), dtype=np.float64)
    k = np.arange(n_lab + 1, dtype=np.float64)
    denom = size[:, None] + k[None, :]
    inv = np.where(denom > 0, 1.0 / np.maximum(denom, 1.0), 0.0)  # (n_pat, n_lab + 1)
    chunk = max(1, 2_000_000 // max(1, patterns.shape[0] * (n_lab + 1)))
    outside = ~patterns  # labels that only Q can contribute (to B)
    for start in range(0, p.shape[0], chunk):
        pq = p[start : start + chunk]
        e_a = pq @ patterns.T.astype(np.float64)  # (nq, n_pat)
        dist = np.zeros((pq.shape[0], patterns.shape[0], n_lab + 1))
        dist[..., 0] = 1.0
        for j in range(n_lab):
            pe = pq[:, j][:, None] * outside[:, j][None, :]
            nxt = dist * (1.0 - pe)[..., None]
            nxt[..., 1:] += dist[..., :-1] * pe[..., None]
            dist = nxt
        e_inv = (dist * inv[None]).sum(-1)
        out[start : start + chunk] = np.where(size[None, :] > 0, e_a * e_inv, empty * dist[..., 0])
    return out


def expected_jaccard(probs: npt.ArrayLike, cand_labels: npt.ArrayLike, empty: float = EMPTY_JACCARD) -> np.ndarray:
    """E[Jaccard(Q, Y_c)] for Q_i ~ Bernoulli(probs[q, i]) independently, against fixed 0/1 rows Y_c.

    With A = |Q ∩ Y| and B = |Q \\ Y| (independent: they involve disjoint labels), J = A / (|Y| + B), so
    E[J] = E[A] * E[1 / (|Y| + B)]; B's Poisson-binomial law comes from a short dynamic programme over the
    labels outside Y. For |Y| = 0, J is ``empty`` when B = 0 and 0 otherwise. Computed once per distinct label
    pattern among the candidates (a few hundred for thousands of reports), then gathered.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(cand_labels)
    if p.ndim != 2 or y.ndim != 2 or p.shape[1] != y.shape[1]:
        raise InvalidInputError(f"expected_jaccard: shapes {p.shape} and {y.shape} do not fit")
    patterns, inverse = label_patterns(y)
    return expected_jaccard_patterns(p, patterns, empty)[:, inverse]


def label_names(labels: Sequence[int] | npt.ArrayLike | None) -> list[str]:
    """Names of the positive CT-RATE labels of one 0/1 row (``[]`` for ``None``: an unlabelled report)."""
    if labels is None:
        return []
    row = np.asarray(labels).ravel()
    if row.shape != (len(CT_RATE_LABELS),):
        raise InvalidInputError(f"expected {len(CT_RATE_LABELS)} CT-RATE labels, got {row.shape[0]}")
    return [name for name, v in zip(CT_RATE_LABELS, row.tolist(), strict=True) if v]


def pair_jaccard(a: Sequence[int] | npt.ArrayLike | None, b: Sequence[int] | npt.ArrayLike | None) -> float | None:
    """Label Jaccard of two reports' label rows; ``None`` when either report is unlabelled (nothing to compare)."""
    if a is None or b is None:
        return None
    return float(label_jaccard(np.asarray(a).ravel(), np.asarray(b).ravel()))
