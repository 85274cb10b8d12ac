"""Corpus -> embeddings -> :class:`CaseIndex` -> scorer: the one recipe behind ``ctrag index`` and the evaluations.

Why one recipe: the index that ``ctrag index`` saves and the one the retrieval evaluation measures must be built
the same way (same splits, same embedding order, same scorer fit), or the evaluation measures something users
never run. :func:`build_index` is that recipe; :func:`build_text_index` is its first half (no scorer).

Only the chosen splits are embedded (train by default), because an index that feeds generation or evaluation
must not contain held-out cases; :mod:`ctrag.retrieval.guard` checks that again at evaluation time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ctrag.data.case import SPLITS, Case
from ctrag.errors import InvalidInputError
from ctrag.index.case_index import CaseIndex
from ctrag.index.config import IndexConfig
from ctrag.utils.progress import ProgressFn

if TYPE_CHECKING:  # the Encoder base imports torch; keep `import ctrag.index` light
    from ctrag.encoders.base import Encoder
    from ctrag.encoders.cache import EmbeddingCache
    from ctrag.retrieval.hybrid import HybridConfig, HybridScorer

logger = logging.getLogger(__name__)

EMBED_STAGE = "embed reports"
FIT_STAGE = "fit hybrid scorer"
#: Scorers :func:`build_index` can attach: the hybrid report scorer, or none (plain dense cosine).
SCORER_KINDS = ("hybrid", "dense")

TextEmbedFn = Callable[[Sequence[str], "ProgressFn | None"], np.ndarray]
"""``embed(texts, progress) -> (n, dim) float32``: an embedding engine that replaces the in-process step (e.g.
:class:`ctrag.index.ray_embed.RayEmbedder`); the rest of the recipe stays the same for every engine."""


def embed_texts(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    cache: EmbeddingCache | None = None,
) -> np.ndarray:
    """Embed ``texts`` in chunks so long corpora report progress; (n, dim) L2-normalised float32.

    With ``cache`` (keyed by text hash + encoder fingerprint) only texts not embedded before are encoded.
    Progress is reported as ``progress("embed reports", done, total)`` after each chunk.
    """
    from ctrag.encoders.cache import embed_in_chunks  # lazy: the encoders package imports torch

    return embed_in_chunks(encoder, texts, batch_size=batch_size, progress=progress, cache=cache, stage=EMBED_STAGE)


def select_cases(cases: Sequence[Case], splits: Sequence[str]) -> list[Case]:
    """Cases of ``splits`` that have report text (text indexes cannot place report-less cases)."""
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise InvalidInputError(f"splits must be a non-empty subset of {list(SPLITS)}, got {list(splits)}")
    chosen = [c for c in cases if c.split in splits]
    with_text = [c for c in chosen if c.has_report]
    if len(with_text) < len(chosen):
        logger.warning("skipping %d case(s) without report text", len(chosen) - len(with_text))
    if not with_text:
        raise InvalidInputError(f"no cases with report text in split(s) {list(splits)} (of {len(cases)} cases)")
    return with_text


def build_text_index(
    cases: Sequence[Case],
    encoder: Encoder,
    *,
    splits: Sequence[str] = ("train",),
    config: IndexConfig | None = None,
    seed: int = 0,
    encoder_spec: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
    progress: ProgressFn | None = None,
    embed: TextEmbedFn | None = None,
) -> tuple[CaseIndex, np.ndarray]:
    """Embed the reports of ``splits`` and index them; returns the index and the embeddings (for scorers).

    ``embed`` swaps the embedding engine (default: ``encoder`` in this process, through ``cache``); the
    engine must embed with an encoder of the same fingerprint, since ``encoder`` names the index's vectors.
    Stages reported: ``"embed reports"``, then ``"build <kind> index"`` (FAISS insertion).
    """
    chosen = select_cases(cases, splits)
    texts = [c.report_text for c in chosen]
    if embed is None:
        emb = embed_texts(encoder, texts, batch_size=batch_size, progress=progress, cache=cache)
    else:
        if cache is not None:
            raise InvalidInputError("an embedding cache works with the in-process engine only (embed= was given)")
        emb = np.asarray(embed(texts, progress), dtype=np.float32)
        if emb.shape != (len(texts), encoder.dim):
            raise InvalidInputError(
                f"embedding engine returned shape {emb.shape} for {len(texts)} texts (encoder dim {encoder.dim})"
            )
    index = CaseIndex.build(
        emb,
        chosen,
        encoder_fingerprint=encoder.fingerprint,
        encoder_name=encoder.name,
        config=config,
        seed=seed,
        encoder_spec=encoder_spec,
        source={**(source or {}), "splits_requested": list(splits), "modality": "text"},
        progress=progress,
    )
    return index, emb


@dataclass
class BuiltIndex:
    """What :func:`build_index` made: the index (scorer attached), its row embeddings, the scorer and timings."""

    index: CaseIndex
    embeddings: np.ndarray  # (rows, dim), row-aligned with ``index.cases``
    scorer: HybridScorer | None  # None: dense cosine
    timings: dict[str, float] = field(default_factory=dict)  # build_index_seconds, fit_scorer_seconds


def build_index(
    cases: Sequence[Case],
    encoder: Encoder,
    *,
    scorer: Literal["hybrid", "dense"] = "hybrid",
    hybrid_config: HybridConfig | None = None,
    splits: Sequence[str] = ("train",),
    config: IndexConfig | None = None,
    seed: int = 0,
    encoder_spec: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
    progress: ProgressFn | None = None,
    embed: TextEmbedFn | None = None,
) -> BuiltIndex:
    """Embed the reports of ``splits``, index them and attach the scorer: the recipe of ``ctrag index``.

    ``scorer="hybrid"`` fits :class:`~ctrag.retrieval.hybrid.HybridScorer` on the index rows only (with
    ``hybrid_config``, default settings when None) and attaches it as the index's ``"hybrid"`` component;
    ``"dense"`` leaves the index with plain cosine scores. ``embed`` swaps the embedding engine (see
    :func:`build_text_index`). ``seed`` drives index training samples and the
    scorer's weight search alike. Stages reported: those of :func:`build_text_index`, then
    ``"fit hybrid scorer"`` (and the scorer's own ``"hybrid weight search"``).
    """
    if scorer not in SCORER_KINDS:
        raise InvalidInputError(f"scorer must be one of {list(SCORER_KINDS)}, got {scorer!r}")
    t0 = time.perf_counter()
    index, emb = build_text_index(
        cases,
        encoder,
        splits=splits,
        config=config,
        seed=seed,
        encoder_spec=encoder_spec,
        source=source,
        batch_size=batch_size,
        cache=cache,
        progress=progress,
        embed=embed,
    )
    timings = {"build_index_seconds": time.perf_counter() - t0}
    fitted = None
    if scorer == "hybrid":
        # The one upward import of the index package: the recipe attaches a retrieval scorer (lazily, so that
        # `import ctrag.index` stays free of the retrieval stack).
        from ctrag.retrieval.hybrid import HybridScorer

        t0 = time.perf_counter()
        if progress is not None:
            progress(FIT_STAGE, 0, 1)
        fitted = HybridScorer.fit(index.cases, emb, hybrid_config, seed, progress=progress)
        index.attach_component("hybrid", fitted)
        timings["fit_scorer_seconds"] = time.perf_counter() - t0
        if progress is not None:
            progress(FIT_STAGE, 1, 1)
    return BuiltIndex(index, emb, fitted, timings)
