"""Hybrid report -> case scorer: expected label agreement + sequence-aware text overlap (+ BM25, dense).

Why: the seed paper's premise is that a semantically nearer proxy case gives a better CT. "Nearer" has two
sides that pull apart on CT-RATE: the retrieved report should state the same abnormalities (label agreement)
*and* read like the query (location, size, laterality: text overlap). Lexical and dense retrieval get the
second roughly right and the first poorly; retrieving by predicted labels alone does the opposite. This scorer
adds, per query q and index case c::

    score(q, c) = w_label * E[Jaccard(labels(q), labels(c))]      # labels(q) ~ label model, calibrated
                + w_lcs   * LCS-F1(q, c)                          # ROUGE-L-style token subsequence overlap
                + w_bm25  * BM25(q, c) / max_c BM25(q, c)
                + w_dense * cos(emb(q), emb(c))

- ``E[Jaccard]`` is exact under independent Bernoulli label probabilities p (from the calibrated
  :class:`~ctrag.labels.extractor.LabelExtractor` by default, or the TF-IDF
  :class:`~ctrag.retrieval.label_model.LabelModel`; ``label_model_kind``), sharpened or softened by a
  temperature, against the case's known 0/1 labels (predicted ones where a case has none). Ranking by it is
  the Bayes-optimal choice for label-Jaccard when p is calibrated. Two empty label sets count as Jaccard 1
  (two normal reports agree).
- ``LCS-F1`` is computed for a shortlist only (the union of each component's top ``rerank_k``); other rows
  keep their first-stage order below every shortlisted row, so ``scores`` still ranks every candidate.

The weights are chosen inside :meth:`HybridScorer.fit` on the given (training) cases only, by the cross-fitted
search of :mod:`ctrag.retrieval.hybrid_fit` (patient-level folds; "highest top-1 label-Jaccard whose text overlap
is not worse than the baseline's"). Evaluation data never enters: the scorer sees only the cases it is fitted on
(``fitted_case_ids``).

Per query, the work follows the candidate rows (all of them below the retriever's ``exact_limit``, its FAISS
shortlist above): label patterns are found once per index and expected Jaccard is computed per pattern the
candidates use; BM25 multiplies the candidates' weight rows by the query; the LCS term runs once over the whole
LCS shortlist (:func:`lcs_f1_rows`). ``benchmarks/bench_scorer.py`` measures it against the previous code.

Saved as arrays (``hybrid.npz``) + JSON + the label model and BM25 sub-folders; no pickles.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctrag.config import config_to_dict, from_dict
from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import ConfigError, DataValidationError, IncompatibleIndexError, InvalidInputError
from ctrag.labels.extractor import LabelExtractor, LabelExtractorConfig
from ctrag.retrieval.label_agreement import expected_jaccard_patterns, label_patterns
from ctrag.retrieval.label_model import LabelModel, LabelModelConfig
from ctrag.retrieval.lexical import BM25Config, BM25Scorer, tokens_alnum
from ctrag.utils.hashing import sha256_json
from ctrag.utils.progress import ProgressFn
from ctrag.utils.serialization import read_meta, read_npz, write_json, write_npz

logger = logging.getLogger(__name__)

KIND = "ctrag-hybrid-scorer"
FORMAT_VERSION = 1
#: Rows per float64 block of the dense term (see ``HybridScorer._dense``).
_DENSE_BLOCK = 512
#: Document tokens (bits) per big integer in :func:`lcs_f1_rows` (~1300 CT-RATE reports; masks of 32 KiB each).
_LCS_GROUP_BITS = 1 << 18


# ---------------------------------------------------------------------------------------------------- config


@dataclass
class HybridWeights:
    """Component weights (label weight is the scale; the others are relative to it) and label temperature.

    The defaults are used only when the search is off or impossible; they are what the search chose on the
    shipped CT-RATE train reports (label 1, LCS 2).
    """

    label: float = 1.0
    lcs: float = 2.0
    bm25: float = 0.0
    dense: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("label", "lcs", "bm25", "dense"):
            if getattr(self, name) < 0:
                raise ConfigError(f"HybridWeights: {name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ConfigError(f"HybridWeights: temperature must be > 0, got {self.temperature}")


@dataclass
class HybridGrid:
    """Values tried by the weight search in :meth:`HybridScorer.fit` (label weight fixed at 1)."""

    lcs: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
    bm25: tuple[float, ...] = (0.0, 0.25, 0.5)
    dense: tuple[float, ...] = (0.0, 0.25, 0.5)
    temperature: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("lcs", "bm25", "dense", "temperature"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"HybridGrid: {name} needs at least one value")
            if any(v < 0 for v in values) or (name == "temperature" and any(v <= 0 for v in values)):
                raise ConfigError(f"HybridGrid: {name} values must be {'> 0' if name == 'temperature' else '>= 0'}")


@dataclass
class HybridConfig:
    """The ``hybrid:`` section of a preset (``load_config(HybridConfig, "tiny-cpu", section="hybrid")``).

    ``use_*`` switch components off (ablations). ``search_weights=False`` skips the search and uses
    ``weights`` as given. ``max_tuning_queries`` caps the cross-fitted queries of the search (a seeded sample,
    spread over the folds), which bounds fitting time on large corpora. ``rerank_k``: shortlist size per
    component for the LCS term. ``rouge_reference``: whose top-1 text overlap a setting must not fall below —
    BM25 alone, or the best of BM25, TF-IDF (uni+bigrams) and plain dense retrieval on the same tuning queries.
    ``rouge_confidence_z``: how sure (one-sided z over the tuning queries) the search must be of that.
    ``label_model_kind``: the query-label model — ``"sentence"`` (:class:`~ctrag.labels.extractor.LabelExtractor`,
    sentence-level assertion rules + calibrated regressions, configured by ``label_extractor``) or ``"tfidf"``
    (the earlier negation-marked TF-IDF :class:`~ctrag.retrieval.label_model.LabelModel`, ``label_model``).
    """

    use_labels: bool = True
    use_lcs: bool = True
    use_bm25: bool = True
    use_dense: bool = True
    search_weights: bool = True
    weights: HybridWeights = field(default_factory=HybridWeights)
    grid: HybridGrid = field(default_factory=HybridGrid)
    cv_folds: int = 5
    max_tuning_queries: int | None = 2000
    rerank_k: int = 30
    rouge_reference: Literal["bm25", "best-baseline"] = "best-baseline"
    rouge_confidence_z: float = 1.645
    max_lcs_tokens: int = 2048
    bm25: BM25Config = field(default_factory=BM25Config)
    label_model_kind: Literal["sentence", "tfidf"] = "sentence"
    label_model: LabelModelConfig = field(default_factory=LabelModelConfig)
    label_extractor: LabelExtractorConfig = field(default_factory=LabelExtractorConfig)

    def __post_init__(self) -> None:
        if not (self.use_labels or self.use_lcs or self.use_bm25 or self.use_dense):
            raise ConfigError("HybridConfig: at least one component must be on")
        if self.cv_folds < 2:
            raise ConfigError(f"HybridConfig: cv_folds must be >= 2, got {self.cv_folds}")
        if self.max_tuning_queries is not None and self.max_tuning_queries < self.cv_folds:
            raise ConfigError(
                f"HybridConfig: max_tuning_queries must be >= cv_folds ({self.cv_folds}) or null, "
                f"got {self.max_tuning_queries}"
            )
        if self.rerank_k < 1:
            raise ConfigError(f"HybridConfig: rerank_k must be >= 1, got {self.rerank_k}")
        if self.max_lcs_tokens < 1:
            raise ConfigError(f"HybridConfig: max_lcs_tokens must be >= 1, got {self.max_lcs_tokens}")

    def effective_weights(self, w: HybridWeights) -> HybridWeights:
        """``w`` with switched-off components zeroed."""
        return HybridWeights(
            label=w.label if self.use_labels else 0.0,
            lcs=w.lcs if self.use_lcs else 0.0,
            bm25=w.bm25 if self.use_bm25 else 0.0,
            dense=w.dense if self.use_dense else 0.0,
            temperature=w.temperature,
        )


# ------------------------------------------------------------------------------------------- label models

#: What the scorer needs of a query-label model: ``decision_function`` (logits), ``predict``, ``save``.
QueryLabelModel = LabelModel | LabelExtractor


def fit_label_model(
    texts: Sequence[str], labels: np.ndarray, groups: Sequence[str], config: HybridConfig, seed: int
) -> QueryLabelModel:
    """The query-label model ``config.label_model_kind`` names, fitted on labelled ``texts`` (``groups``: patients)."""
    if config.label_model_kind == "tfidf":
        return LabelModel.fit(texts, labels, config.label_model, seed)
    return LabelExtractor.fit(texts, labels, groups, config.label_extractor, seed)


def load_label_model(folder: Path) -> QueryLabelModel:
    """Whichever label model ``folder`` holds (scorers saved before the sentence extractor hold a LabelModel)."""
    if (folder / "label_extractor.json").is_file():
        return LabelExtractor.load(folder)
    return LabelModel.load(folder)


# ------------------------------------------------------------------------------------------- scoring pieces


def normalise_max(m: np.ndarray) -> np.ndarray:
    """Divide each row by its maximum (rows without a positive score become 0) so BM25 lies in [0, 1]."""
    top = m.max(axis=1, keepdims=True) if m.shape[1] else np.zeros((m.shape[0], 1))
    return np.where(top > 0, m / np.where(top > 0, top, 1.0), 0.0)


def topk_mask(m: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of each row's ``k`` highest entries (every entry when a row has at most ``k``)."""
    mask = np.zeros(m.shape, dtype=bool)
    if m.shape[1] == 0:
        return mask
    if k >= m.shape[1]:
        mask[:] = True
        return mask
    idx = np.argpartition(-m, k - 1, axis=1)[:, :k]
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def lcs_f1_rows(query: Sequence[int], flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """ROUGE-L F1 (``2 * LCS / (len(query) + len(doc))``) of ``query`` with each document ``rows`` of a token table.

    The same numbers as :func:`ctrag.utils.sequences.lcs_f1_many`, computed for all documents at once: the
    bit-parallel LCS (Hyyrö 2004) runs with one bit per *document* position instead of per query position, so the
    documents can share one Python integer, each in its own segment followed by a guard bit that the update masks
    off (a carry out of one segment never reaches the next). One update per query token then advances every
    document together: ~len(query) big-integer steps instead of ~sum(len(doc)) small ones (~3x faster at the
    hybrid scorer's shortlist of 30-90 reports). Document tokens the query lacks can never match and are left out
    of the match masks; the LCS length per segment is its number of zero bits at the end.

    ``flat``/``offsets``: the table's concatenated token ids and row offsets; query ids < 0 match nothing. Rows
    go in groups of at most ``_LCS_GROUP_BITS`` document tokens, which bounds the masks' memory for long row lists.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros(rows.size, dtype=np.float64)
    if len(query) == 0 or rows.size == 0:
        return out
    ends = np.cumsum(offsets[rows + 1] - offsets[rows] + 1)
    start = 0
    while start < rows.size:
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _LCS_GROUP_BITS, "right")))
        out[start:stop] = _lcs_f1_group(query, flat, offsets, rows[start:stop])
        start = stop
    return out


def _lcs_f1_group(query: Sequence[int], flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """:func:`lcs_f1_rows` for one group of rows, all in one big integer."""
    out = np.zeros(rows.size, dtype=np.float64)
    m = len(query)
    q = np.asarray(query, dtype=flat.dtype)  # one dtype for searchsorted (mixed dtypes make it ~10x slower)
    vocab_q = np.unique(q[q >= 0])
    starts = offsets[rows].astype(np.int64)
    lengths = offsets[rows + 1].astype(np.int64) - starts
    n_tok = int(lengths.sum())
    if vocab_q.size == 0 or n_tok == 0:
        return out
    seg_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])  # bit offset of each document's segment
    within = np.arange(n_tok) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    bit = np.repeat(seg_start, lengths) + within  # bit of each document token
    tok = flat[np.repeat(starts, lengths) + within]
    local = np.minimum(np.searchsorted(vocab_q, tok), vocab_q.size - 1)
    hit = vocab_q[local] == tok
    n_bytes = (int(seg_start[-1] + lengths[-1]) + 8) // 8
    # Match masks: one row of bytes per distinct query token (distinct (token, bit) pairs, so a sum is an OR).
    lin = local[hit] * n_bytes + (bit[hit] >> 3)
    counts = np.bincount(lin, weights=np.left_shift(1, bit[hit] & 7), minlength=vocab_q.size * n_bytes)
    byte_rows = counts.astype(np.uint8).reshape(vocab_q.size, n_bytes)
    masks = [int.from_bytes(r.tobytes(), "little") for r in byte_rows]
    full_bytes = np.bincount(bit >> 3, weights=np.left_shift(1, bit & 7), minlength=n_bytes).astype(np.uint8)
    full = int.from_bytes(full_bytes.tobytes(), "little")
    q_local = np.searchsorted(vocab_q, q).tolist()
    v = full
    for idx, known in zip(q_local, (q >= 0).tolist(), strict=True):
        if known:
            u = v & masks[idx]
            v = ((v + u) | (v - u)) & full
    bits = np.unpackbits(np.frombuffer(v.to_bytes(n_bytes, "little"), dtype=np.uint8), bitorder="little")
    ones = np.add.reduceat(bits.astype(np.int64), seg_start)  # a segment's guard bit is always 0
    lcs = lengths - ones
    nonempty = lengths > 0
    out[nonempty] = 2.0 * lcs[nonempty] / (m + lengths[nonempty])
    return out


class _DocViews(Sequence[np.ndarray]):
    """Read-only per-row views of a flat token array (no per-row objects are kept: 10^6 rows stay one array)."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self._flat = flat
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._flat[self._offsets[i] : self._offsets[i + 1]]


class LcsTable:
    """Token-id sequences of documents for LCS-F1 (shared vocabulary; unseen query tokens get id -1).

    Stored as one flat int32 array plus row offsets: per-row Python lists (the former layout) cost ~7 GB at
    10^6 reports and were rebuilt at every load.
    """

    def __init__(self, vocab: dict[str, int], docs: Sequence[np.ndarray], max_tokens: int) -> None:
        lengths = np.asarray([len(d) for d in docs], dtype=np.int64)
        flat = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs]) if len(docs) else np.zeros(0, np.int32)
        self._init(vocab, flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), max_tokens)

    def _init(self, vocab: dict[str, int], flat: np.ndarray, offsets: np.ndarray, max_tokens: int) -> None:
        self.vocab = vocab
        self.flat = np.ascontiguousarray(flat, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.max_tokens = max_tokens
        self.docs: Sequence[np.ndarray] = _DocViews(self.flat, self.offsets)

    @classmethod
    def _from_flat(cls, vocab: dict[str, int], flat: np.ndarray, offsets: np.ndarray, max_tokens: int) -> LcsTable:
        table = cls.__new__(cls)
        table._init(vocab, flat, offsets, max_tokens)
        return table

    @classmethod
    def build(cls, texts: Sequence[str], max_tokens: int) -> LcsTable:
        vocab: dict[str, int] = {}
        ids: list[int] = []
        offsets = [0]
        for t in texts:
            ids.extend(vocab.setdefault(w, len(vocab)) for w in tokens_alnum(t)[:max_tokens])
            offsets.append(len(ids))
        return cls._from_flat(vocab, np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64), max_tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (first ``max_tokens``); a token no document has gets -1 and matches nothing."""
        get = self.vocab.get
        return [get(w, -1) for w in tokens_alnum(text)[: self.max_tokens]]

    def tokens(self, row: int) -> list[int]:
        out: list[int] = self.flat[self.offsets[row] : self.offsets[row + 1]].tolist()
        return out

    def f1(self, query: list[int], rows: np.ndarray) -> np.ndarray:
        return lcs_f1_rows(query, self.flat, self.offsets, np.asarray(rows, dtype=np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"lcs_tokens": self.flat, "lcs_offsets": self.offsets}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], terms: list[str], max_tokens: int) -> LcsTable:
        return cls._from_flat(
            {t: i for i, t in enumerate(terms)}, arrays["lcs_tokens"], arrays["lcs_offsets"], max_tokens
        )


# ------------------------------------------------------------------------------------------------- scorer


class HybridScorer:
    """Scores index rows for report queries; see the module docstring for the formula and the fitting rule."""

    def __init__(
        self,
        *,
        config: HybridConfig,
        weights: HybridWeights,
        label_model: QueryLabelModel | None,
        bm25: BM25Scorer | None,
        embeddings: np.ndarray,
        cand_labels: np.ndarray,
        labels_known: np.ndarray,
        lcs_table: LcsTable,
        case_ids: Sequence[str],
        selection: dict[str, Any] | None = None,
    ) -> None:
        n = len(case_ids)
        if embeddings.ndim != 2 or embeddings.shape[0] != n:
            raise DataValidationError(f"HybridScorer: {embeddings.shape[0]} embeddings for {n} cases")
        if cand_labels.shape != (n, len(CT_RATE_LABELS)) or labels_known.shape != (n,):
            raise DataValidationError("HybridScorer: label arrays do not match the number of cases")
        if len(lcs_table.docs) != n:
            raise DataValidationError("HybridScorer: token table does not match the number of cases")
        if config.use_labels and label_model is None:
            raise DataValidationError("HybridScorer: labels are on but no label model is given")
        if config.use_bm25 and bm25 is None:
            raise DataValidationError("HybridScorer: BM25 is on but no BM25 scorer is given")
        self.config = config
        self.weights = config.effective_weights(weights)
        self.label_model = label_model
        self.bm25 = bm25
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.cand_labels = np.asarray(cand_labels, dtype=np.int8)
        self.labels_known = np.asarray(labels_known, dtype=bool)
        self.lcs_table = lcs_table
        self.case_ids = tuple(case_ids)
        self.selection = dict(selection or {})
        # Per-query work must follow the candidate rows, not the corpus: the distinct label patterns are found
        # once here, so a query computes expected Jaccard only for the patterns its candidates use.
        self._patterns, self._pattern_of = label_patterns(self.cand_labels)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __repr__(self) -> str:
        w = self.weights
        return (
            f"HybridScorer(rows={len(self)}, label={w.label:g}, lcs={w.lcs:g}, bm25={w.bm25:g}, "
            f"dense={w.dense:g}, temperature={w.temperature:g})"
        )

    @property
    def fitted_case_ids(self) -> tuple[str, ...]:
        """Ids of the cases this scorer was fitted on (its rows) — nothing else was seen."""
        return self.case_ids

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        cases: Sequence[Case],
        embeddings: np.ndarray,
        config: HybridConfig | None = None,
        seed: int = 0,
        *,
        progress: ProgressFn | None = None,
    ) -> HybridScorer:
        """Fit on the index rows ``cases`` (row-aligned with L2-normalised ``embeddings``); choose weights inside.

        Cases without labels still become rows (their labels are predicted) but never serve as tuning queries.
        """
        config = config or HybridConfig()
        cases = list(cases)
        emb = np.asarray(embeddings, dtype=np.float32)
        if not cases:
            raise InvalidInputError("HybridScorer.fit: no cases")
        if emb.ndim != 2 or emb.shape[0] != len(cases):
            raise InvalidInputError(f"HybridScorer.fit: {emb.shape} embeddings for {len(cases)} cases")
        if not np.all(np.isfinite(emb)):
            raise InvalidInputError("HybridScorer.fit: embeddings contain NaN or inf")
        texts = [c.report_text for c in cases]
        empty = [c.case_id for c, t in zip(cases, texts, strict=True) if not t.strip()]
        if empty:
            raise InvalidInputError(f"HybridScorer.fit: cases without report text: {empty[:5]}")
        known = np.asarray([c.labels is not None for c in cases], dtype=bool)
        y = np.zeros((len(cases), len(CT_RATE_LABELS)), dtype=np.int8)
        for i, c in enumerate(cases):
            if c.labels is not None:
                y[i] = c.labels
        if config.use_labels and known.sum() < 2:
            raise InvalidInputError(
                "HybridScorer.fit: the label component needs labelled cases (>= 2); "
                "set hybrid.use_labels=false for an unlabelled corpus"
            )
        table = LcsTable.build(texts, config.max_lcs_tokens)

        weights = config.effective_weights(config.weights)
        selection: dict[str, Any] = {"searched": False}
        patients = [c.patient_id for c in cases]
        n_folds = min(config.cv_folds, len(set(p for p, k in zip(patients, known, strict=True) if k)))
        if config.search_weights and n_folds >= 2:
            from ctrag.retrieval.hybrid_fit import FitRows, search_weights  # hybrid_fit builds on this module

            rows = FitRows(texts, emb, y, known, patients, table)
            weights, selection = search_weights(rows, config, seed, n_folds, progress)
        elif config.search_weights:
            logger.warning("HybridScorer.fit: fewer than 2 labelled patients; using the configured weights")

        label_model: QueryLabelModel | None = None
        if config.use_labels:
            rows_known = np.flatnonzero(known)
            label_model = fit_label_model(
                [texts[i] for i in rows_known], y[known], [patients[i] for i in rows_known], config, seed
            )
            if (~known).any():
                y[~known] = label_model.predict([texts[i] for i in np.flatnonzero(~known)])
        bm25 = BM25Scorer.fit(texts, config.bm25) if config.use_bm25 else None
        return cls(
            config=config,
            weights=weights,
            label_model=label_model,
            bm25=bm25,
            embeddings=emb,
            cand_labels=y,
            labels_known=known,
            lcs_table=table,
            case_ids=[c.case_id for c in cases],
            selection=selection,
        )

    # ------------------------------------------------------------------ scoring
    def _rows(self, candidate_rows: np.ndarray | None) -> np.ndarray:
        if candidate_rows is None:
            return np.arange(len(self), dtype=np.int64)
        rows = np.asarray(candidate_rows, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise InvalidInputError(
                f"HybridScorer.scores: candidate rows must be in [0, {len(self)}), got {rows.min()}..{rows.max()}"
            )
        return rows

    def component_scores(
        self, query_texts: Sequence[str], query_embeddings: np.ndarray | None, candidate_rows: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Each switched-on component's (n_queries, n_candidates) first-stage scores (no LCS: see ``scores``).

        The work per query is proportional to the candidate rows (a FAISS shortlist at scale): label patterns,
        BM25 weight rows and vectors are sliced to those rows; only ``candidate_rows=None`` touches every row.
        """
        if isinstance(query_texts, str):
            raise InvalidInputError("HybridScorer.scores: expected a list of query texts, got a single str")
        texts = list(query_texts)
        rows = None if candidate_rows is None else self._rows(candidate_rows)
        out: dict[str, np.ndarray] = {}
        if self.config.use_labels and self.label_model is not None:
            logits = self.label_model.decision_function(texts)
            probs = 1.0 / (1.0 + np.exp(-logits / self.weights.temperature))
            if rows is None:
                used, inverse = np.arange(len(self._patterns)), self._pattern_of
            else:
                used, inverse = np.unique(self._pattern_of[rows], return_inverse=True)
            out["label"] = expected_jaccard_patterns(probs, self._patterns[used])[:, np.asarray(inverse).ravel()]
        if self.config.use_bm25 and self.bm25 is not None:
            out["bm25"] = normalise_max(self.bm25.scores(texts, None, rows))
        if self.config.use_dense:
            if query_embeddings is None:
                raise InvalidInputError("HybridScorer.scores: the dense component needs query embeddings")
            q = np.asarray(query_embeddings, dtype=np.float32)
            if q.ndim == 1:
                q = q[None, :]
            if q.shape != (len(texts), self.dim):
                raise IncompatibleIndexError(
                    f"HybridScorer.scores: query embeddings {q.shape}, expected ({len(texts)}, {self.dim})"
                )
            out["dense"] = self._dense(q.astype(np.float64), rows)
        return out

    def _dense(self, q: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """float64 cosines of ``q`` with ``rows`` (all rows when None), in blocks of ``_DENSE_BLOCK`` rows.

        Blocks keep the float64 copy of the vectors small, and each product below OpenBLAS's threading threshold:
        on shared cores a threaded 1 x 384 x 1266 product (a FAISS shortlist) took ~3 ms instead of ~0.2 ms.
        """
        n = len(self) if rows is None else rows.size
        out = np.empty((q.shape[0], n), dtype=np.float64)
        for start in range(0, n, _DENSE_BLOCK):
            stop = min(n, start + _DENSE_BLOCK)
            block = self.embeddings[start:stop] if rows is None else self.embeddings[rows[start:stop]]
            out[:, start:stop] = q @ block.T.astype(np.float64)
        return out

    def scores(
        self,
        query_texts: list[str],
        query_embeddings: np.ndarray | None,
        candidate_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n_queries, n_candidates) scores over the fitted rows (all when ``candidate_rows`` is None).

        Higher = better. Rows outside a query's LCS shortlist are shifted below every shortlisted row but keep
        their first-stage order, so full rankings stay meaningful (e.g. for "farthest").
        """
        rows = self._rows(candidate_rows)
        comps = self.component_scores(query_texts, query_embeddings, None if candidate_rows is None else rows)
        w = self.weights
        n_q = len(list(query_texts))
        total = np.zeros((n_q, rows.size), dtype=np.float64)
        for name, weight in (("label", w.label), ("bm25", w.bm25), ("dense", w.dense)):
            if weight and name in comps:
                total += weight * comps[name]
        if not (self.config.use_lcs and w.lcs > 0) or rows.size == 0:
            return total
        mask = np.zeros(total.shape, dtype=bool)
        for m in comps.values():
            mask |= topk_mask(m, self.config.rerank_k)
        out = total.copy()
        for r, text in enumerate(query_texts):
            cols = np.flatnonzero(mask[r])
            overlap = self.lcs_table.f1(self.lcs_table.encode(text), rows[cols])
            span = float(total[r].max() - total[r].min()) if rows.size else 0.0
            out[r] = total[r] - (span + w.lcs + 1.0)
            out[r, cols] = total[r, cols] + w.lcs * overlap
        return out

    # ------------------------------------------------------------------ persistence
    def _fingerprint(self) -> str:
        return sha256_json({"ids": list(self.case_ids), "weights": config_to_dict(self.weights)})

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``hybrid.json`` + ``hybrid.npz`` (+ ``label_model/``, ``bm25/``) into ``directory``."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        if self.label_model is not None:
            self.label_model.save(folder / "label_model")
        if self.bm25 is not None:
            self.bm25.save(folder / "bm25")
        write_npz(
            folder / "hybrid.npz",
            {
                "embeddings": self.embeddings,
                "cand_labels": self.cand_labels,
                "labels_known": self.labels_known,
                **self.lcs_table.arrays(),
            },
        )
        terms = sorted(self.lcs_table.vocab, key=self.lcs_table.vocab.__getitem__)
        write_json(
            folder / "hybrid.json",
            {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "fingerprint": self._fingerprint(),
                "config": config_to_dict(self.config),
                "weights": config_to_dict(self.weights),
                "case_ids": list(self.case_ids),
                "labels": list(CT_RATE_LABELS),
                "lcs_terms": terms,
                "selection": self.selection,
            },
        )
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> HybridScorer:
        folder = Path(directory)
        meta = read_meta(folder / "hybrid.json", KIND, FORMAT_VERSION)
        if list(meta.get("labels", [])) != list(CT_RATE_LABELS):
            raise DataValidationError(f"{folder}: scorer was fitted on another label set")
        raw_config = dict(meta["config"])
        # Scorers saved before the sentence extractor existed carry the TF-IDF label model and no kind field.
        raw_config.setdefault("label_model_kind", "tfidf")
        config = from_dict(HybridConfig, raw_config)
        arrays = read_npz(folder / "hybrid.npz")
        scorer = cls(
            config=config,
            weights=from_dict(HybridWeights, meta["weights"]),
            label_model=load_label_model(folder / "label_model") if config.use_labels else None,
            bm25=BM25Scorer.load(folder / "bm25") if config.use_bm25 else None,
            embeddings=arrays["embeddings"],
            cand_labels=arrays["cand_labels"],
            labels_known=arrays["labels_known"],
            lcs_table=LcsTable.from_arrays(arrays, list(meta["lcs_terms"]), config.max_lcs_tokens),
            case_ids=meta["case_ids"],
            selection=meta.get("selection"),
        )
        if scorer._fingerprint() != meta.get("fingerprint"):
            raise DataValidationError(f"{folder}: hybrid scorer files disagree (fingerprint mismatch)")
        return scorer
