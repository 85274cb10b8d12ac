"""Reference sets for evidence: relevant, mutually different, one case per patient, or none at all.

Why: nearest-neighbour retrieval returns redundant evidence (the contrastive reference-selection work in
``/work/shared/papers/medical-retrieval-abstracts.txt`` balances relevance, embedding diversity and source-level
provenance, and abstains when the evidence is weak). Here:

- **relevance + diversity**: maximal marginal relevance over the retriever's scores and the index vectors
  (:func:`ctrag.retrieval.strategies.mmr`); ``mmr_lambda=1`` is plain relevance order;
- **provenance**: at most one case per patient (a CT-RATE patient's scans are near-duplicates of each other);
- **abstention**: no references when the best score is below a threshold calibrated on the index's own cases —
  a low quantile of their leave-one-patient-out top scores (each indexed case queries the index with its
  patient's cases removed). A query scoring below what almost every real report reaches against the rest of the
  corpus is taken to be unlike every case.

Which score: ``statistic="dense"`` (default) is the best cosine of the query's text vector with the indexed
report vectors; ``"score"`` is the retriever's own score (the hybrid scorer's). Measured on the shipped reports,
the hybrid score separates unrelated text poorly: its label term gives an unrelated text (no finding predicted)
high expected agreement with every normal report, so a cooking recipe scored 0.84 against 53 train reports whose
leave-one-patient-out tops start at 0.86; the dense cosine keeps them far apart (figures in
``docs/results/retrieval_methods.md``). The calibration queries are the indexed reports themselves, which the
hybrid scorer's label model was fitted on, so ``"score"`` tops are somewhat optimistic; dense ones are not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ctrag.errors import InvalidInputError
from ctrag.retrieval.types import CaseFilter, Hit

if TYPE_CHECKING:
    from ctrag.retrieval.retriever import Retriever

#: Calibration queries scored together (bounds the score matrix).
_CHUNK = 64
Statistic = Literal["dense", "score"]
STATISTICS: tuple[str, ...] = ("dense", "score")


def top_statistic(
    retriever: Retriever, q: np.ndarray, texts: list[str], rows: np.ndarray, statistic: Statistic
) -> np.ndarray:
    """(n_queries, len(rows)) scores the abstention rule compares: dense cosines or the retriever's own."""
    if statistic == "dense":
        return np.asarray(retriever.index.exact_scores(q, rows), dtype=np.float64)
    if statistic == "score":
        return np.asarray(retriever._score(q, texts, rows), dtype=np.float64)  # the scores search ranks by
    raise InvalidInputError(f"abstention statistic must be one of {list(STATISTICS)}, got {statistic!r}")


@dataclass(frozen=True)
class AbstentionThreshold:
    """A score below ``threshold`` means "no reference is close enough" (see the module docstring)."""

    threshold: float
    quantile: float
    n_queries: int
    scorer: str
    statistic: str = "dense"
    top_score_quantiles: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def leave_one_patient_out_top_scores(
    retriever: Retriever, filters: CaseFilter = CaseFilter(), statistic: Statistic = "dense"
) -> np.ndarray:
    """Per candidate case (rows passing ``filters``): its best score against the other patients' candidates.

    Each case's stored vector and report text are the query (the vector is what encoding its text gives, so no
    text model runs). With the hybrid scorer the LCS term's shortlist is built with the query's own row in it;
    that row is then dropped, which can only lower the top score of the rest slightly (by pushing one row out of
    the shortlist), i.e. err towards a lower threshold.
    """
    from ctrag.retrieval.filters import candidate_mask

    index = retriever.index
    rows = np.flatnonzero(candidate_mask(index, filters))
    if rows.size < 2:
        raise InvalidInputError(f"abstention calibration needs >= 2 candidate cases, the index has {rows.size}")
    patient = index.arrays.patient[rows]
    if np.unique(patient).size < 2:
        raise InvalidInputError("abstention calibration needs cases of at least 2 patients")
    texts = [index.case(int(r)).report_text for r in rows]
    vecs = np.asarray(index.vectors[rows], dtype=np.float32)
    out = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, _CHUNK):
        stop = min(rows.size, start + _CHUNK)
        s = top_statistic(retriever, vecs[start:stop], texts[start:stop], rows, statistic)
        same = patient[start:stop, None] == patient[None, :]
        out[start:stop] = np.where(same, -np.inf, s).max(axis=1)
    return out


def calibrate_abstention(
    retriever: Retriever, quantile: float = 0.05, filters: CaseFilter = CaseFilter(), statistic: Statistic = "dense"
) -> AbstentionThreshold:
    """The ``quantile`` of the leave-one-patient-out top scores of the index's candidate cases."""
    if not 0.0 <= quantile < 1.0:
        raise InvalidInputError(f"abstention quantile must be in [0, 1), got {quantile}")
    tops = leave_one_patient_out_top_scores(retriever, filters, statistic)
    qs = {f"q{round(q * 100):02d}": float(np.quantile(tops, q)) for q in (0.0, 0.01, 0.05, 0.1, 0.5)}
    return AbstentionThreshold(
        threshold=float(np.quantile(tops, quantile)),
        quantile=float(quantile),
        n_queries=int(tops.size),
        scorer=retriever.scorer_name,
        statistic=statistic,
        top_score_quantiles=qs,
    )


@dataclass(frozen=True)
class ReferenceSet:
    """The references for one query, or none with ``abstained=True`` (``top_score``: the abstention statistic's
    best value when abstention is on, else the best retriever score)."""

    hits: list[Hit]
    abstained: bool
    top_score: float | None
    threshold: float | None
    mmr_lambda: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "abstained": self.abstained,
            "top_score": self.top_score,
            "threshold": self.threshold,
            "mmr_lambda": self.mmr_lambda,
            "case_ids": [h.case_id for h in self.hits],
        }


def select_references(
    retriever: Retriever,
    query: str,
    k: int = 5,
    *,
    mmr_lambda: float = 0.7,
    abstention: AbstentionThreshold | None = None,
    filters: CaseFilter = CaseFilter(),
    query_vector: np.ndarray | None = None,
) -> ReferenceSet:
    """MMR references (one per patient) for ``query``; empty when ``abstention`` says the best is too weak.

    ``query_vector`` replaces encoding ``query`` (its text still feeds a scorer's lexical part; '' for none).
    """
    if query_vector is None:
        hits = retriever.search(query, k=k, strategy="mmr", filters=filters, mmr_lambda=mmr_lambda)
    else:
        vec = np.asarray(query_vector, dtype=np.float32).ravel()
        found = retriever.search_vector(vec, k=k, strategy="mmr", filters=filters, query_texts=[query],
                                        mmr_lambda=mmr_lambda)  # fmt: skip
        hits = list(found)  # type: ignore[arg-type]
    # The first MMR pick has no diversity penalty, so it is the best-scoring candidate and its score the top score.
    top = float(hits[0].score) if hits else None
    if abstention is not None and abstention.statistic != "score" and hits:
        from ctrag.retrieval.filters import candidate_mask

        q = (
            retriever.index.check_queries(retriever.encoder.encode_text([query]))
            if query_vector is None
            else retriever.index.check_queries(np.asarray(query_vector, dtype=np.float32).reshape(1, -1))
        )
        rows = np.flatnonzero(candidate_mask(retriever.index, filters))
        top = float(top_statistic(retriever, q, [query], rows, abstention.statistic).max())  # type: ignore[arg-type]
    if abstention is not None and (top is None or top < abstention.threshold):
        return ReferenceSet([], True, top, abstention.threshold, mmr_lambda)
    return ReferenceSet(hits, False, top, None if abstention is None else abstention.threshold, mmr_lambda)
