"""Corpus -> embeddings -> :class:`CaseIndex`: the library side of ``ctrag index``.

Only the chosen splits are embedded (train by default), because an index that feeds generation or evaluation
must not contain held-out cases; :mod:`ctrag.retrieval.guard` checks that again at evaluation time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ctrag.data.case import SPLITS, Case
from ctrag.errors import InvalidInputError
from ctrag.index.case_index import CaseIndex
from ctrag.index.config import IndexConfig
from ctrag.index.faiss_backend import ProgressFn

if TYPE_CHECKING:  # the Encoder base imports torch; keep `import ctrag.index` light
    from ctrag.encoders.base import Encoder
    from ctrag.encoders.cache import EmbeddingCache

logger = logging.getLogger(__name__)


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
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    if cache is not None:
        from ctrag.encoders.cache import encode_text_cached
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        if cache is not None:
            emb = encode_text_cached(encoder, chunk, cache, batch_size=batch_size)
        else:
            emb = np.asarray(encoder.encode_text(chunk, batch_size=batch_size), dtype=np.float32)
        if emb.shape != (len(chunk), encoder.dim):
            raise InvalidInputError(
                f"encoder {encoder.name} returned shape {emb.shape} for {len(chunk)} texts (dim {encoder.dim})"
            )
        out[start : start + len(chunk)] = emb
        if progress is not None:
            progress(start + len(chunk), len(texts))
    return out


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
    embed_progress: ProgressFn | None = None,
    index_progress: ProgressFn | None = None,
) -> tuple[CaseIndex, np.ndarray]:
    """Embed the reports of ``splits`` and index them; returns the index and the embeddings (for scorers)."""
    chosen = select_cases(cases, splits)
    texts = [c.report_text for c in chosen]
    emb = embed_texts(encoder, texts, batch_size=batch_size, progress=embed_progress, cache=cache)
    index = CaseIndex.build(
        emb,
        chosen,
        encoder_fingerprint=encoder.fingerprint,
        encoder_name=encoder.name,
        config=config,
        seed=seed,
        encoder_spec=encoder_spec,
        source={**(source or {}), "splits_requested": list(splits), "modality": "text"},
        progress=index_progress,
    )
    return index, emb
