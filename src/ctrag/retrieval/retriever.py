"""``Retriever``: query text or vectors -> scored candidates -> strategy -> ranked :class:`Hit` lists.

The steps, for every query:

1. **candidates**: rows passing the :class:`CaseFilter` (train split by default);
2. **scores**: exact cosine from the stored vectors, or an optional *scorer* (e.g. the hybrid dense + BM25 +
   label scorer) over the same rows. When there are more candidates than ``exact_limit`` and the strategy only
   needs the best ones (nearest, topk, mmr), FAISS first shortlists rows by dense similarity and only those
   are scored; strategies that need every candidate (farthest, random) always score all of them exactly;
3. **strategy**: a registered pure function picks up to ``k`` rows with a seeded ``numpy.random.Generator``.

A scorer is any object with ``scores(query_texts, query_embeddings, candidate_rows=None) -> (n_queries,
n_candidates)`` over index rows (all rows when ``candidate_rows`` is None). One stored with the index (a
component folder named in ``index.json``) is loaded by :meth:`Retriever.from_dir`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

import numpy as np

from ctrag.data.case import Case
from ctrag.errors import ConfigError, IncompatibleIndexError, InvalidInputError
from ctrag.index.case_index import CaseIndex
from ctrag.retrieval.filters import candidate_mask
from ctrag.retrieval.guard import assert_no_leakage
from ctrag.retrieval.strategies import StrategySpec, apply_strategy, get_strategy
from ctrag.retrieval.types import CaseFilter, Hit

if TYPE_CHECKING:  # the Encoder base imports torch; keep this module light until an encoder is needed
    from ctrag.encoders.base import Encoder

logger = logging.getLogger(__name__)

#: Queries scored together (bounds the queries x candidates score matrix).
_QUERY_CHUNK = 64
#: Rows whose float32 score is this close to a cut are re-scored in float64 before cutting (float32 dot
#: products of unit vectors are off by at most ~d * 6e-8, i.e. ~2e-5 for 384-d).
_REFINE_MARGIN = 1e-4


class Scorer(Protocol):
    """What the retriever needs from a non-dense scorer (the contract of ``ctrag.retrieval.hybrid``)."""

    def scores(
        self, query_texts: list[str], query_embeddings: np.ndarray, candidate_rows: np.ndarray | None = None
    ) -> np.ndarray: ...


ScorerLoader = Callable[[Path], Scorer]
EncoderFactory = Callable[[Mapping[str, Any]], "Encoder"]


@dataclass
class RetrievalConfig:
    """The ``retrieval:`` section of a preset.

    ``exact_limit``: up to this many candidates every one is scored (exact, no FAISS); above it, strategies
    that only need the best rows get a FAISS shortlist of at least ``shortlist`` rows (more when filters
    exclude many rows), re-scored exactly or by the scorer. ``scorer``: ``auto`` uses a scorer stored with the
    index when there is one, ``dense`` never does, ``hybrid`` requires one.
    """

    k: int = 5
    strategy: str = "nearest"
    shortlist: int = 1000
    exact_limit: int = 200_000
    mmr_lambda: float = 0.7
    scorer: Literal["auto", "dense", "hybrid"] = "auto"

    def __post_init__(self) -> None:
        for name in ("k", "shortlist", "exact_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RetrievalConfig: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ConfigError(f"RetrievalConfig: mmr_lambda must be in [0, 1], got {self.mmr_lambda}")


def _load_hybrid(path: Path) -> Scorer:
    from ctrag.retrieval.hybrid import HybridScorer  # helper module; imported only when an index stores one

    scorer: Scorer = HybridScorer.load(path)
    return scorer


def default_scorer_loaders() -> dict[str, ScorerLoader]:
    """Component name (in ``index.json``) -> function loading that scorer from its folder."""
    return {"hybrid": _load_hybrid}


def load_encoder(spec: Mapping[str, Any], device: str = "cpu") -> Encoder:
    """Recreate an index's encoder from the ``encoder.spec`` recorded at build time (via the encoder factory)."""
    name = spec.get("name_or_path")
    if not name:
        raise InvalidInputError(
            "the index does not record how to recreate its encoder (encoder.spec.name_or_path); pass an encoder"
        )
    from ctrag.encoders.factory import create_encoder

    made = create_encoder(str(name), weights=spec.get("weights"), device=device)
    encoder = made[0] if isinstance(made, tuple) else made  # the factory may return (encoder, preprocess)
    return encoder


def _query_key(item: str | np.ndarray) -> int:
    """Stable 63-bit key of a query, so random picks depend on (seed, query) but not on batch position."""
    data = item.encode("utf-8") if isinstance(item, str) else np.ascontiguousarray(item, dtype=np.float32).tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1


class Retriever:
    """Searches a :class:`CaseIndex` with text (through ``encoder``) or vectors, optionally via a scorer."""

    def __init__(
        self,
        index: CaseIndex,
        encoder: Encoder | None = None,
        scorer: Scorer | None = None,
        *,
        config: RetrievalConfig | None = None,
        encoder_factory: EncoderFactory | None = None,
        scorer_name: str | None = None,
        onnx_encoder_dir: Path | None = None,
    ) -> None:
        self.index = index
        self.scorer = scorer
        fitted = getattr(scorer, "fitted_case_ids", None)
        if fitted is not None and tuple(fitted) != tuple(index.case_ids):
            raise IncompatibleIndexError(
                f"scorer {scorer_name or type(scorer).__name__} was fitted on {len(tuple(fitted))} cases that are not "
                f"the index's {len(index)} rows in order; refit it on this index's cases"
            )
        self.scorer_name = scorer_name or (type(scorer).__name__ if scorer is not None else "dense")
        self.config = config or RetrievalConfig()
        self._encoder_factory = encoder_factory
        self._onnx_encoder_dir = onnx_encoder_dir
        self._encoder: Encoder | None = None
        if encoder is not None:
            self._check_encoder(encoder)
            self._encoder = encoder

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(
        cls,
        index_dir: str | os.PathLike[str],
        encoder: Encoder | None = None,
        *,
        scorer: Literal["auto", "dense", "hybrid"] | None = None,
        config: RetrievalConfig | None = None,
        scorer_loaders: Mapping[str, ScorerLoader] | None = None,
        encoder_factory: EncoderFactory | None = None,
        device: str = "cpu",
        onnx: bool = True,
    ) -> Retriever:
        """Load the index in ``index_dir`` and the scorer stored with it.

        Without ``encoder``, text queries create one on first use, so vector-only use never loads a text model:
        the ONNX export of the index's encoder stored with the index (``ctrag index`` writes it; same vectors,
        same fingerprint, no torch import) when ``onnx`` is true and ONNX Runtime is installed, else one built from
        the recorded encoder spec (``encoder_factory``, default :func:`load_encoder`).
        """
        config = config or RetrievalConfig()
        choice = scorer or config.scorer
        if choice not in ("auto", "dense", "hybrid"):
            raise InvalidInputError(f"scorer must be 'auto', 'dense' or 'hybrid', got {choice!r}")
        index = CaseIndex.load(
            index_dir,
            expected_fingerprint=encoder.fingerprint if encoder is not None else None,
            expected_dim=encoder.dim if encoder is not None else None,
        )
        loaders = dict(default_scorer_loaders() if scorer_loaders is None else scorer_loaders)
        loaded: Scorer | None = None
        name: str | None = None
        if choice != "dense":
            wanted = ["hybrid"] if choice == "hybrid" else [n for n in index.component_names if n in loaders]
            for comp in wanted:
                folder = index.component_dir(comp)
                if folder is None:
                    raise InvalidInputError(
                        f"index {index_dir} has no {comp!r} scorer (components: {list(index.component_names)}); "
                        f"rebuild it with `ctrag index ... --scorer {comp}` or search with --scorer dense"
                    )
                if comp not in loaders:
                    raise InvalidInputError(f"no loader for scorer component {comp!r}; known: {sorted(loaders)}")
                loaded, name = loaders[comp](folder), comp
                break
        factory = encoder_factory or (lambda spec: load_encoder(spec, device=device))
        onnx_dir = None
        if onnx and device == "cpu":
            from ctrag.encoders.onnx_text import ONNX_COMPONENT

            onnx_dir = index.component_dir(ONNX_COMPONENT)
        return cls(
            index, encoder, loaded, config=config, encoder_factory=factory, scorer_name=name, onnx_encoder_dir=onnx_dir
        )

    def _check_encoder(self, encoder: Encoder) -> None:
        if encoder.fingerprint != self.index.encoder_fingerprint:
            raise IncompatibleIndexError(
                f"encoder {encoder.name!r} has fingerprint {encoder.fingerprint}, but the index was built with "
                f"{self.index.encoder_name!r} (fingerprint {self.index.encoder_fingerprint})"
            )
        if encoder.dim != self.index.dim:
            raise IncompatibleIndexError(f"encoder dimension {encoder.dim} != index dimension {self.index.dim}")

    @property
    def encoder(self) -> Encoder:
        """The query encoder (created from the index's encoder spec on first use when none was given)."""
        if self._encoder is None:
            encoder = self._onnx_encoder()
            if encoder is None and self._encoder_factory is None:
                raise InvalidInputError("this retriever has no text encoder; use search_vector or pass an encoder")
            if encoder is None:
                assert self._encoder_factory is not None
                encoder = self._encoder_factory(self.index.encoder_spec)
            self._check_encoder(encoder)
            self._encoder = encoder
        return self._encoder

    def _onnx_encoder(self) -> Encoder | None:
        """The index's stored ONNX text encoder, or None (none stored, or ONNX Runtime missing: the caller falls
        back to building the recorded encoder, which gives the same vectors, only slower to start)."""
        if self._onnx_encoder_dir is None:
            return None
        from ctrag.encoders.onnx_text import OnnxTextEncoder
        from ctrag.errors import MissingDependencyError

        try:
            return OnnxTextEncoder(self._onnx_encoder_dir)
        except MissingDependencyError as exc:
            logger.info("not using the ONNX text encoder stored with the index: %s", exc)
            return None

    # ------------------------------------------------------------------ public search API
    @overload
    def search(
        self,
        query: str,
        k: int = ...,
        strategy: str = ...,
        filters: CaseFilter = ...,
        seed: int = ...,
        **strategy_options: Any,
    ) -> list[Hit]: ...
    @overload
    def search(
        self,
        query: Sequence[str],
        k: int = ...,
        strategy: str = ...,
        filters: CaseFilter = ...,
        seed: int = ...,
        **strategy_options: Any,
    ) -> list[list[Hit]]: ...
    def search(
        self,
        query: str | Sequence[str],
        k: int = 5,
        strategy: str = "nearest",
        filters: CaseFilter = CaseFilter(),
        seed: int = 0,
        **strategy_options: Any,
    ) -> list[Hit] | list[list[Hit]]:
        """Search with report text; a single string gives a list of hits, a list of strings a list per query."""
        single = isinstance(query, str)
        texts = [query] if isinstance(query, str) else list(query)
        if not texts:
            raise InvalidInputError("no query given (empty list)")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"query {i} is empty; give report text to search with")
        self._validate(k, strategy, filters, seed)
        q = self.index.check_queries(self.encoder.encode_text(texts))
        results = self._run(q, texts, k, strategy, filters, seed, strategy_options)
        return results[0] if single else results

    def search_vector(
        self,
        vectors: np.ndarray,
        k: int = 5,
        strategy: str = "nearest",
        filters: CaseFilter = CaseFilter(),
        seed: int = 0,
        query_texts: Sequence[str] | None = None,
        **strategy_options: Any,
    ) -> list[Hit] | list[list[Hit]]:
        """Search with precomputed query embeddings (a CT volume's, or cached text ones).

        A 1-D vector gives a list of hits, a 2-D array a list per row. ``query_texts`` go to a scorer's lexical
        part; without them it sees empty strings (dense + label parts only).
        """
        arr = np.asarray(vectors, dtype=np.float32)
        single = arr.ndim == 1
        q = self.index.check_queries(arr)
        texts = list(query_texts) if query_texts is not None else [""] * q.shape[0]
        if len(texts) != q.shape[0]:
            raise InvalidInputError(f"{len(texts)} query texts for {q.shape[0]} query vectors")
        self._validate(k, strategy, filters, seed)
        results = self._run(q, texts, k, strategy, filters, seed, strategy_options, keys=list(q))
        return results[0] if single else results

    def search_cases(
        self,
        cases: Sequence[Case],
        k: int = 5,
        strategy: str = "nearest",
        filters: CaseFilter = CaseFilter(),
        seed: int = 0,
        *,
        eval_split: str | Sequence[str] | None = None,
        **strategy_options: Any,
    ) -> list[list[Hit]]:
        """Evaluation entry point: search with the reports of held-out ``cases`` after the leakage guard.

        Raises :class:`~ctrag.errors.LeakageError` if the index holds any query case, any query patient, or
        the evaluated split (``eval_split`` and the query cases' own splits).
        """
        if not cases:
            raise InvalidInputError("search_cases: no query cases")
        assert_no_leakage(self.index, cases, eval_split=eval_split)
        missing = [c.case_id for c in cases if not c.has_report]
        if missing:
            raise InvalidInputError(f"search_cases: cases without report text cannot query: {missing[:5]}")
        return self.search([c.report_text for c in cases], k, strategy, filters, seed, **strategy_options)

    # ------------------------------------------------------------------ internals
    def _validate(self, k: int, strategy: str, filters: CaseFilter, seed: int) -> StrategySpec:
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(filters, CaseFilter):
            raise InvalidInputError(f"filters must be a CaseFilter, got {type(filters).__name__}")
        return get_strategy(strategy)

    def _score(self, q: np.ndarray, texts: list[str], rows: np.ndarray) -> np.ndarray:
        """(n_queries, len(rows)) scores of ``rows`` for queries ``q``: scorer's if any, else exact cosine."""
        if self.scorer is None:
            return self.index.exact_scores(q, rows)
        all_rows = rows.size == len(self.index) and bool(np.all(rows == np.arange(len(self.index))))
        out = np.asarray(self.scorer.scores(texts, q, None if all_rows else rows), dtype=np.float64)
        if out.shape != (q.shape[0], rows.size):
            raise IncompatibleIndexError(
                f"scorer {self.scorer_name!r} returned scores of shape {out.shape}, expected "
                f"{(q.shape[0], rows.size)}; was it fitted on this index's cases?"
            )
        return out

    def _shortlist(self, q: np.ndarray, mask: np.ndarray, n_candidates: int, needed: int) -> list[np.ndarray | None]:
        """Per query: FAISS rows that pass ``mask`` (>= ``needed`` of them), or None to fall back to all."""
        frac = n_candidates / len(self.index)
        # Re-scoring ~1000 rows exactly costs well under a millisecond and recovers what the approximate
        # structures rank wrongly (IVF-PQ recall@1 0.24 raw -> 0.97 with a 32-row re-score at 10^6, see
        # benchmarks/bench_index.py), so dense search shortlists generously too.
        want = max(needed, self.config.shortlist)
        n_search = min(len(self.index), math.ceil(want / max(frac, 1e-9) * 1.25) + 16)
        _, rows = self.index.search(q, n_search)
        out: list[np.ndarray | None] = []
        for r in rows:
            r = r[r >= 0]
            r = np.sort(r[mask[r]])
            enough = r.size >= min(needed, n_candidates)
            out.append(r if enough else None)
        return out

    def _run(
        self,
        q: np.ndarray,
        texts: list[str],
        k: int,
        strategy: str,
        filters: CaseFilter,
        seed: int,
        options: Mapping[str, Any],
        keys: Sequence[str | np.ndarray] | None = None,
    ) -> list[list[Hit]]:
        spec = get_strategy(strategy)
        opts = dict(options)
        if strategy == "mmr":
            opts.setdefault("mmr_lambda", self.config.mmr_lambda)
        mask = candidate_mask(self.index, filters)
        cand_rows = np.flatnonzero(mask)
        if cand_rows.size == 0:
            logger.warning("no candidates pass the filter %s (index splits %s)", filters, list(self.index.splits))
            return [[] for _ in texts]
        needed = spec.shortlist_size(k, opts)
        use_faiss = spec.pool == "top" and needed is not None and cand_rows.size > self.config.exact_limit
        patient = self.index.arrays.patient
        results: list[list[Hit]] = []
        for start in range(0, q.shape[0], _QUERY_CHUNK):  # bounds the (queries x candidates) score matrix
            qc, tc = q[start : start + _QUERY_CHUNK], texts[start : start + _QUERY_CHUNK]
            shortlists: list[np.ndarray | None] = [None] * qc.shape[0]
            if use_faiss:
                assert needed is not None
                shortlists = self._shortlist(qc, mask, cand_rows.size, needed)
            full = None
            if spec.needs_scores and any(s is None for s in shortlists):
                full = self._score(qc, tc, cand_rows)
            for i in range(qc.shape[0]):
                sl = shortlists[i]
                if sl is not None:
                    rows, scores = sl, self._score(qc[i : i + 1], tc[i : i + 1], sl)[0]
                elif full is not None:
                    rows, scores = cand_rows, full[i]
                else:  # the strategy ignores scores: score only what it picks
                    rows, scores = cand_rows, np.zeros(cand_rows.size)
                if needed is not None:
                    rows, scores = self._narrow(qc[i], rows, scores, needed, spec.pool)
                key = keys[start + i] if keys is not None else tc[i]
                rng = np.random.default_rng([int(seed), _query_key(key)])
                vectors = np.asarray(self.index.vectors[rows]) if spec.needs_vectors else None
                picked = apply_strategy(
                    strategy, scores, None, k, rng, groups=patient[rows], vectors=vectors, options=opts
                )
                rows_picked = rows[picked]
                picked_scores = scores[picked] if spec.needs_scores else self._picked_scores(qc[i], tc[i], rows_picked)
                results.append(self._hits(qc[i], rows_picked, picked_scores, strategy))
        return results

    def _picked_scores(self, q: np.ndarray, text: str, rows: np.ndarray) -> np.ndarray:
        if rows.size == 0:
            return np.zeros(0)
        if self.scorer is None:
            return self.index.exact_scores(q, rows, precise=True)[0]
        return self._score(q[None, :], [text], rows)[0]

    def _narrow(
        self, q: np.ndarray, rows: np.ndarray, scores: np.ndarray, needed: int, end: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep the ``needed`` best (``end="top"``) or worst (``"bottom"``) rows; dense scores become float64.

        Dense scores arrive as float32 GEMM output, whose rounding depends on how the work was split. Rows
        within ``_REFINE_MARGIN`` of the cut are re-scored in float64 before the final cut, so the rows and
        order a strategy sees are the same for batched or single queries and for full scans or shortlists.
        """
        sign = 1.0 if end == "top" else -1.0
        key = sign * scores.astype(np.float64)
        if self.scorer is None:
            if rows.size > needed:
                kth = np.partition(key, rows.size - needed)[rows.size - needed]  # needed-th best
                keep = np.flatnonzero(key >= kth - _REFINE_MARGIN)
                rows = rows[keep]
            scores = self.index.exact_scores(q, rows, precise=True)[0]
            key = sign * scores
        if rows.size > needed:
            keep = np.sort(apply_strategy("nearest", key, None, needed, np.random.default_rng(0)))
            rows, scores = rows[keep], scores[keep]
        return rows, scores

    def _hits(self, q: np.ndarray, rows: np.ndarray, scores: np.ndarray, strategy: str) -> list[Hit]:
        dense = np.asarray(self.index.vectors[rows]) @ q if self.scorer is not None else scores
        return [
            Hit(
                case=self.index.case(int(row)),
                score=float(score),
                rank=rank,
                strategy=strategy,
                details={
                    "row": int(row),
                    "scorer": self.scorer_name,
                    "dense_score": float(d),
                    "index_kind": self.index.kind,
                },
            )
            for rank, (row, score, d) in enumerate(zip(rows, scores, dense, strict=True))
        ]
