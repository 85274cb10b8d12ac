"""The index recipe: only the requested splits are embedded, progress per stage, and the scorer the CLI attaches.

Real CT-RATE reports and the packaged MiniLM (session fixtures of tests/testsupport/index_data.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.encoders.cache import EmbeddingCache
from ctrag.errors import InvalidInputError
from ctrag.index import build_index, build_text_index, embed_texts
from ctrag.index.build import EMBED_STAGE, FIT_STAGE
from ctrag.retrieval.hybrid import HybridConfig, HybridGrid, HybridScorer


def test_build_text_index_takes_train_split_only(all_cases: tuple[Case, ...], test_encoder) -> None:  # type: ignore[no-untyped-def]
    no_text = Case(case_id="no_report", patient_id="x", split="train")
    val = [c for c in all_cases if c.split == "val"][:2]
    calls: list[tuple[str, int, int]] = []
    index, emb = build_text_index(
        [*all_cases[:20], *val, no_text], test_encoder, progress=lambda *a: calls.append(a), batch_size=8
    )
    seen = [(d, t) for stage, d, t in calls if stage == EMBED_STAGE]
    n_train = 20
    assert index.splits == ("train",) and len(index) == n_train and "no_report" not in index
    assert emb.shape == (n_train, 384) and seen[-1] == (n_train, n_train) and len(seen) == -(-n_train // 8)
    assert calls[-1] == ("build flat index", n_train, n_train)
    assert index.source["splits_requested"] == ["train"]
    with pytest.raises(InvalidInputError, match="splits must be a non-empty subset"):
        build_text_index(list(all_cases), test_encoder, splits=["holdout"])
    with pytest.raises(InvalidInputError, match="no cases with report text"):
        build_text_index([no_text], test_encoder)


class _Counting:
    """Wraps an encoder and counts the texts it is asked to embed."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.texts = inner, 0
        self.name, self.dim, self.fingerprint = inner.name, inner.dim, inner.fingerprint

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.encode_text(list(texts), batch_size=batch_size)


def test_embed_texts_with_cache_embeds_new_texts_only(all_cases: tuple[Case, ...], test_encoder) -> None:  # type: ignore[no-untyped-def]
    texts = [c.report_text for c in all_cases[:12]]
    enc = _Counting(test_encoder)
    cache = EmbeddingCache(":memory:")
    first = embed_texts(enc, texts[:8], batch_size=4, cache=cache)  # type: ignore[arg-type]
    both = embed_texts(enc, texts, batch_size=4, cache=cache)  # type: ignore[arg-type]
    cache.close()
    assert enc.texts == 12
    np.testing.assert_allclose(both[:8], first, atol=1e-6)
    np.testing.assert_allclose(both, test_encoder.encode_text(texts), atol=1e-6)
    with pytest.raises(InvalidInputError, match="batch_size"):
        embed_texts(test_encoder, texts, batch_size=0)


def _small_hybrid() -> HybridConfig:
    return HybridConfig(cv_folds=2, grid=HybridGrid(lcs=(0.0, 1.0), bm25=(0.0, 0.5), dense=(0.0,)))


def test_build_index_attaches_the_hybrid_scorer_fitted_on_its_rows(all_cases: tuple[Case, ...], test_encoder) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[str, int, int]] = []
    built = build_index(
        list(all_cases), test_encoder, hybrid_config=_small_hybrid(), seed=3, progress=lambda *a: calls.append(a)
    )
    index = built.index
    assert index.splits == ("train",) and index.component("hybrid") is built.scorer
    assert built.scorer is not None and built.scorer.fitted_case_ids == tuple(c.case_id for c in index.cases)
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == [EMBED_STAGE, "build flat index", FIT_STAGE, "hybrid weight search"]
    assert calls[-1] == (FIT_STAGE, 1, 1)
    assert set(built.timings) == {"build_index_seconds", "fit_scorer_seconds"}
    # the recipe is exactly "index the train reports, fit the scorer on those rows with the same seed"
    manual_index, emb = build_text_index(list(all_cases), test_encoder, seed=3)
    np.testing.assert_array_equal(built.embeddings, emb)
    manual = HybridScorer.fit(manual_index.cases, emb, _small_hybrid(), 3)
    assert manual.weights == built.scorer.weights and manual.selection == built.scorer.selection


def test_build_index_dense_and_bad_scorer(all_cases: tuple[Case, ...], test_encoder) -> None:  # type: ignore[no-untyped-def]
    built = build_index(list(all_cases[:20]), test_encoder, scorer="dense")
    assert built.scorer is None and built.index.component_names == () and "fit_scorer_seconds" not in built.timings
    with pytest.raises(InvalidInputError, match="scorer must be one of"):
        build_index(list(all_cases[:20]), test_encoder, scorer="bm25")  # type: ignore[arg-type]
