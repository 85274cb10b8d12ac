"""The hybrid scorer's per-query path as it was before the latency work (issue 11, item 3): the benchmark baseline.

A verbatim copy of the scoring code of ``HybridScorer.scores`` / ``component_scores``, ``BM25Scorer.scores``,
``LabelModel.decision_function``, ``expected_jaccard`` and ``LcsTable.f1`` at commit 9152b9e, rewired to read the
fitted state (weights, label model coefficients, BM25 weight matrix, vectors, labels, token sequences) of a current
:class:`~ctrag.retrieval.hybrid.HybridScorer`, so old and new score the very same fitted scorer in one process.
Only ``benchmarks/bench_scorer.py`` uses it; nothing here is part of the library.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ctrag.retrieval.hybrid import HybridScorer, normalise_max, topk_mask
from ctrag.utils.sequences import lcs_f1_many


def old_expected_jaccard(probs: np.ndarray, cand_labels: np.ndarray, empty: float = 1.0) -> np.ndarray:
    """``label_agreement.expected_jaccard`` before the change (unique label patterns of the given rows per call)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(cand_labels)
    patterns, inverse = np.unique(y.astype(bool), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    n_lab = p.shape[1]
    size = patterns.sum(1).astype(np.float64)
    out = np.empty((p.shape[0], patterns.shape[0]), dtype=np.float64)
    k = np.arange(n_lab + 1, dtype=np.float64)
    denom = size[:, None] + k[None, :]
    inv = np.where(denom > 0, 1.0 / np.maximum(denom, 1.0), 0.0)
    chunk = max(1, 2_000_000 // max(1, patterns.shape[0] * (n_lab + 1)))
    outside = ~patterns
    for start in range(0, p.shape[0], chunk):
        pq = p[start : start + chunk]
        e_a = pq @ patterns.T.astype(np.float64)
        dist = np.zeros((pq.shape[0], patterns.shape[0], n_lab + 1))
        dist[..., 0] = 1.0
        for j in range(n_lab):
            pe = pq[:, j][:, None] * outside[:, j][None, :]
            nxt = dist * (1.0 - pe)[..., None]
            nxt[..., 1:] += dist[..., :-1] * pe[..., None]
            dist = nxt
        e_inv = (dist * inv[None]).sum(-1)
        out[start : start + chunk] = np.where(size[None, :] > 0, e_a * e_inv, empty * dist[..., 0])
    return out[:, inverse]


class BaselineScorer:
    """Today's (pre-change) per-query scoring over the fitted state of ``scorer``.

    ``token_lists`` may be given to share the per-row Python token lists between replicated rows (the 1 M-row
    synthetic benchmark: the old ``LcsTable`` kept one Python list per row, ~7 GB at 10^6 reports); the scoring
    work per query is the same either way.
    """

    def __init__(self, scorer: HybridScorer, token_lists: Sequence[list[int]] | None = None) -> None:
        self.s = scorer
        table = scorer.lcs_table
        self.lists = token_lists if token_lists is not None else [table.tokens(i) for i in range(len(scorer))]

    def _lcs_f1(self, query: list[int], rows: np.ndarray) -> np.ndarray:
        return lcs_f1_many(query, [self.lists[int(r)] for r in rows])

    def _bm25(self, texts: list[str], rows: np.ndarray) -> np.ndarray:
        bm25 = self.s.bm25
        assert bm25 is not None
        w = bm25.weights[rows]
        q = bm25.query_matrix(texts)
        return np.asarray((q @ w.T).toarray(), dtype=np.float64)

    def _logits(self, texts: list[str]) -> np.ndarray:
        lm = self.s.label_model
        assert lm is not None
        x = lm.vectors.transform(texts)
        return np.asarray(x @ lm.coef.T, dtype=np.float64) + lm.intercept[None, :]

    def component_scores(
        self, query_texts: list[str], query_embeddings: np.ndarray, rows: np.ndarray
    ) -> dict[str, np.ndarray]:
        s = self.s
        texts = list(query_texts)
        out: dict[str, np.ndarray] = {}
        if s.config.use_labels and s.label_model is not None:
            logits = self._logits(texts)
            probs = 1.0 / (1.0 + np.exp(-logits / s.weights.temperature))
            out["label"] = old_expected_jaccard(probs, s.cand_labels[rows])
        if s.config.use_bm25 and s.bm25 is not None:
            out["bm25"] = normalise_max(self._bm25(texts, rows))
        if s.config.use_dense:
            q = np.asarray(query_embeddings, dtype=np.float32)
            if q.ndim == 1:
                q = q[None, :]
            out["dense"] = np.asarray(q.astype(np.float64) @ s.embeddings[rows].T.astype(np.float64))
        return out

    def scores(
        self, query_texts: list[str], query_embeddings: np.ndarray, candidate_rows: np.ndarray | None = None
    ) -> np.ndarray:
        s = self.s
        rows = (
            np.arange(len(s), dtype=np.int64)
            if candidate_rows is None
            else np.asarray(candidate_rows, dtype=np.int64).ravel()
        )
        comps = self.component_scores(query_texts, query_embeddings, rows)
        w = s.weights
        n_q = len(list(query_texts))
        total = np.zeros((n_q, rows.size), dtype=np.float64)
        for name, weight in (("label", w.label), ("bm25", w.bm25), ("dense", w.dense)):
            if weight and name in comps:
                total += weight * comps[name]
        if not (s.config.use_lcs and w.lcs > 0) or rows.size == 0:
            return total
        mask = np.zeros(total.shape, dtype=bool)
        for m in comps.values():
            mask |= topk_mask(m, s.config.rerank_k)
        out = total.copy()
        for r, text in enumerate(query_texts):
            cols = np.flatnonzero(mask[r])
            overlap = self._lcs_f1(s.lcs_table.encode(text), rows[cols])
            span = float(total[r].max() - total[r].min()) if rows.size else 0.0
            out[r] = total[r] - (span + w.lcs + 1.0)
            out[r, cols] = total[r, cols] + w.lcs * overlap
        return out
