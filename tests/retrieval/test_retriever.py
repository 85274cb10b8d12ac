"""Retriever on real report embeddings: text/vector queries, filters, seeds, the FAISS shortlist path and the
scorer hook (tested with a small keyword scorer that follows the hybrid scorer's contract)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.encoders.base import Encoder
from ctrag.errors import IncompatibleIndexError, InvalidInputError
from ctrag.index import CaseIndex
from ctrag.retrieval.retriever import RetrievalConfig, Retriever
from ctrag.retrieval.types import CaseFilter
from tests.cli.conftest import corpus_dir, real_index_dir  # noqa: F401  (fixtures: a real `ctrag index` folder)

EFFUSION_QUERY = "Bilateral pleural effusion with passive atelectasis in both lower lobes."


class KeywordScorer:
    """Dense cosine + ``weight`` x word-overlap (Jaccard): the hybrid scorer's contract in miniature."""

    def __init__(self, words: list[set[str]], embeddings: np.ndarray, weight: float) -> None:
        self.words, self.embeddings, self.weight = words, embeddings, weight
        self.calls: list[np.ndarray | None] = []

    @staticmethod
    def _tokens(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", text.lower()))

    @classmethod
    def fit(cls, cases: Sequence[Case], embeddings: np.ndarray, config: Any = None, seed: int = 0) -> KeywordScorer:
        return cls([cls._tokens(c.report_text) for c in cases], np.asarray(embeddings), weight=0.5)

    def scores(
        self, query_texts: list[str], query_embeddings: np.ndarray, candidate_rows: np.ndarray | None = None
    ) -> np.ndarray:
        self.calls.append(None if candidate_rows is None else np.asarray(candidate_rows).copy())
        rows = np.arange(len(self.words)) if candidate_rows is None else np.asarray(candidate_rows)
        dense = query_embeddings @ self.embeddings[rows].T
        lexical = np.array(
            [
                [len(q & self.words[r]) / max(1, len(q | self.words[r])) for r in rows]
                for q in (self._tokens(t) for t in query_texts)
            ]
        )
        return dense + self.weight * lexical

    def save(self, directory: str | os.PathLike[str]) -> None:
        Path(directory).mkdir(parents=True)
        payload = {"weight": self.weight, "words": [sorted(w) for w in self.words]}
        (Path(directory) / "keywords.json").write_text(json.dumps(payload))
        np.save(Path(directory) / "embeddings.npy", self.embeddings)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> KeywordScorer:
        payload = json.loads((Path(directory) / "keywords.json").read_text())
        emb = np.load(Path(directory) / "embeddings.npy")
        return cls([set(w) for w in payload["words"]], emb, payload["weight"])


class RenamedEncoder(Encoder):
    """The same vectors under another fingerprint: stands in for a different encoder."""

    name = "other"

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def fingerprint(self) -> str:
        return "other@ffffffffffffffff"

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        return self.inner.encode_text(texts, batch_size)


@pytest.fixture(scope="module")
def mixed_index(all_cases, all_embeddings, test_encoder) -> CaseIndex:  # type: ignore[no-untyped-def]
    return CaseIndex.build(
        all_embeddings, list(all_cases), encoder_fingerprint=test_encoder.fingerprint, encoder_name=test_encoder.name
    )


def test_text_search_returns_ranked_train_hits(mixed_index: CaseIndex, test_encoder) -> None:  # type: ignore[no-untyped-def]
    retriever = Retriever(mixed_index, test_encoder)
    hits = retriever.search(EFFUSION_QUERY, k=5)
    assert [h.rank for h in hits] == [0, 1, 2, 3, 4]
    assert all(h.case.split == "train" for h in hits)  # default filter: train only, though val is indexed
    q = test_encoder.encode_text([EFFUSION_QUERY])
    exact = mixed_index.exact_scores(q)[0]
    train_rows = [i for i, c in enumerate(mixed_index.cases) if c.split == "train"]
    best = sorted(train_rows, key=lambda r: -exact[r])[:5]
    assert [h.details["row"] for h in hits] == best
    np.testing.assert_allclose([h.score for h in hits], exact[best], rtol=1e-5)
    assert hits[0].details["scorer"] == "dense" and hits[0].strategy == "nearest"
    with_val = retriever.search(EFFUSION_QUERY, k=100, filters=CaseFilter(splits=None))
    assert len(with_val) == len(mixed_index) and {h.case.split for h in with_val} == {"train", "val"}


def test_batch_equals_single_and_seeds_are_deterministic(train_index: CaseIndex, test_encoder) -> None:  # type: ignore[no-untyped-def]
    retriever = Retriever(train_index, test_encoder)
    queries = [EFFUSION_QUERY, "Emphysematous changes in both upper lobes. No nodule."]
    for strategy in ("nearest", "farthest", "random", "mmr"):
        batch = retriever.search(queries, k=3, strategy=strategy, seed=3)
        for query, per_query in zip(queries, batch, strict=True):
            single = retriever.search(query, k=3, strategy=strategy, seed=3)
            assert [h.case_id for h in single] == [h.case_id for h in per_query], strategy
    first = [h.case_id for h in retriever.search(EFFUSION_QUERY, k=4, strategy="random", seed=1)]
    assert first == [h.case_id for h in retriever.search(EFFUSION_QUERY, k=4, strategy="random", seed=1)]
    draws = {
        tuple(h.case_id for h in retriever.search(EFFUSION_QUERY, k=4, strategy="random", seed=s)) for s in range(6)
    }
    assert len(draws) > 3  # different seeds, different draws
    # random picks without scoring every candidate, then reports the picked cases' true similarity.
    q = test_encoder.encode_text([EFFUSION_QUERY])
    picked = retriever.search(EFFUSION_QUERY, k=4, strategy="random", seed=1)
    rows = [h.details["row"] for h in picked]
    np.testing.assert_allclose([h.score for h in picked], train_index.exact_scores(q, np.array(rows))[0], rtol=1e-5)
    far = retriever.search(EFFUSION_QUERY, k=2, strategy="farthest")
    near = retriever.search(EFFUSION_QUERY, k=2, strategy="nearest")
    assert far[0].score < far[1].score < near[1].score < near[0].score


def test_filters_and_mmr_through_the_retriever(train_index: CaseIndex, test_encoder) -> None:  # type: ignore[no-untyped-def]
    retriever = Retriever(train_index, test_encoder)
    masked = retriever.search(EFFUSION_QUERY, k=5, filters=CaseFilter(has_mask=True))
    assert {h.case_id for h in masked} == {"ts_example_sm", "ts_chest_crop"}  # only two cases have masks
    labelled = retriever.search(EFFUSION_QUERY, k=3, filters=CaseFilter(labels_all=("Pleural effusion",)))
    col = CT_RATE_LABELS.index("Pleural effusion")
    assert labelled and all(h.case.labels[col] == 1 for h in labelled)  # type: ignore[index]
    query = train_index.case(train_index.row_of("train_175")).report_text
    near = retriever.search(query, k=3)
    diverse = retriever.search(query, k=3, strategy="mmr")
    assert [h.case_id for h in near[:2]] == ["train_175", "train_742"]  # two scans of one patient
    assert len({h.case.patient_id for h in diverse}) == 3 and diverse[0].case_id == "train_175"
    excluded = retriever.search(query, k=3, filters=CaseFilter(exclude_patients=frozenset({"train_17294"})))
    assert not {"train_175", "train_742"} & {h.case_id for h in excluded}
    assert retriever.search(query, k=3, filters=CaseFilter(splits=("test",))) == []


def test_faiss_shortlist_path_matches_exact_path(test_encoder, support_module) -> None:  # type: ignore[no-untyped-def]
    """With exact_limit below the corpus size, nearest/mmr go through a FAISS shortlist; flat gives the same."""
    cases, emb = support_module.train_part()
    small = RetrievalConfig(exact_limit=5, shortlist=8)
    for kind in ("flat", "hnsw"):
        from ctrag.index import IndexConfig

        index = CaseIndex.build(
            emb,
            cases,
            encoder_fingerprint=test_encoder.fingerprint,
            encoder_name=test_encoder.name,
            config=IndexConfig(kind=kind, threads=1),  # type: ignore[arg-type]
        )
        exact, shortlisted = Retriever(index, test_encoder), Retriever(index, test_encoder, config=small)
        filters = [CaseFilter(), CaseFilter(labels_any=("Emphysema", "Lung nodule")), CaseFilter(has_mask=True)]
        for flt in filters:
            for strategy in ("nearest", "mmr", "farthest"):
                a = exact.search_vector(emb[:6], k=4, strategy=strategy, filters=flt)
                b = shortlisted.search_vector(emb[:6], k=4, strategy=strategy, filters=flt)
                assert [[h.case_id for h in q] for q in a] == [[h.case_id for h in q] for q in b], (kind, strategy)


def test_search_vector_shapes_and_errors(train_index: CaseIndex, all_embeddings: np.ndarray) -> None:
    retriever = Retriever(train_index)  # no encoder: vectors only
    one = retriever.search_vector(all_embeddings[-1], k=2)
    many = retriever.search_vector(all_embeddings[-3:], k=2)
    assert (
        isinstance(one[0].case_id, str) and len(many) == 3 and [h.case_id for h in many[-1]] == [h.case_id for h in one]
    )
    with pytest.raises(InvalidInputError, match="no text encoder"):
        retriever.search("text", k=1)
    with pytest.raises(InvalidInputError, match="2 query texts for 3 query vectors"):
        retriever.search_vector(all_embeddings[-3:], query_texts=["a", "b"])
    with pytest.raises(InvalidInputError, match="k must be a positive integer"):
        retriever.search_vector(all_embeddings[-1], k=0)
    with pytest.raises(InvalidInputError, match="unknown retrieval strategy"):
        retriever.search_vector(all_embeddings[-1], strategy="closest")


def test_empty_query_and_other_encoder_are_refused(train_index: CaseIndex, test_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    retriever = Retriever(train_index, test_encoder)
    for bad in ("", "   \n", []):
        with pytest.raises(InvalidInputError):
            retriever.search(bad)  # type: ignore[arg-type]
    other = RenamedEncoder(test_encoder)
    with pytest.raises(IncompatibleIndexError, match=r"other@ffffffffffffffff.*minilm-test@"):
        Retriever(train_index, other)
    train_index.save(tmp_path / "idx")
    with pytest.raises(IncompatibleIndexError, match="other@ffffffffffffffff"):
        Retriever.from_dir(tmp_path / "idx", other)
    # Lazily created encoder (from the spec recorded at build time) is checked too.
    lazy = Retriever.from_dir(tmp_path / "idx", encoder_factory=lambda spec: other)
    with pytest.raises(IncompatibleIndexError):
        lazy.search("text")
    made: list[dict[str, Any]] = []
    ok = Retriever.from_dir(tmp_path / "idx", encoder_factory=lambda spec: made.append(dict(spec)) or test_encoder)
    assert ok.search(EFFUSION_QUERY, k=1) and made == [{"name_or_path": "minilm-test"}]


def test_scorer_hook_in_memory_and_from_dir(train_index: CaseIndex, test_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scorer = KeywordScorer.fit(train_index.cases, np.asarray(train_index.vectors))
    retriever = Retriever(train_index, test_encoder, scorer, scorer_name="keywords")
    hits = retriever.search(EFFUSION_QUERY, k=5, filters=CaseFilter(has_mask=None))
    q = test_encoder.encode_text([EFFUSION_QUERY])
    expected = scorer.scores([EFFUSION_QUERY], q)[0]
    best = np.argsort(-expected, kind="stable")[:5]
    assert [h.details["row"] for h in hits] == best.tolist()
    np.testing.assert_allclose([h.score for h in hits], expected[best], rtol=1e-5)
    dense = train_index.exact_scores(q)[0]
    np.testing.assert_allclose([h.details["dense_score"] for h in hits], dense[best], rtol=1e-5)
    assert all(h.score > h.details["dense_score"] for h in hits)  # the lexical part really contributed
    # Filters reach the scorer as candidate rows.
    scorer.calls.clear()
    retriever.search(EFFUSION_QUERY, k=1, filters=CaseFilter(has_mask=True))
    assert [train_index.case(r).case_id for r in scorer.calls[-1]] == ["ts_example_sm", "ts_chest_crop"]  # type: ignore[union-attr]

    # Stored beside the index as component "hybrid", loaded by from_dir through a loader.
    train_index.attach_component("hybrid", scorer)
    try:
        version = train_index.save(tmp_path / "idx")
    finally:
        train_index._components.pop("hybrid")  # the session fixture stays scorer-free
        train_index._component_dirs.pop("hybrid", None)
    meta = json.loads((version / "index.json").read_text())
    assert meta["components"] == {"hybrid": "hybrid/"} and (version / "hybrid" / "keywords.json").is_file()
    loaders = {"hybrid": KeywordScorer.load}
    loaded = Retriever.from_dir(tmp_path / "idx", test_encoder, scorer_loaders=loaders)
    assert loaded.scorer_name == "hybrid" and isinstance(loaded.scorer, KeywordScorer)
    again = loaded.search(EFFUSION_QUERY, k=5, filters=CaseFilter(has_mask=None))
    assert [h.case_id for h in again] == [h.case_id for h in hits] and again[0].details["scorer"] == "hybrid"
    dense_only = Retriever.from_dir(tmp_path / "idx", test_encoder, scorer="dense", scorer_loaders=loaders)
    assert dense_only.scorer is None
    # Re-saving a loaded index carries the component folder along.
    CaseIndex.load(tmp_path / "idx").save(tmp_path / "copy")
    assert Retriever.from_dir(tmp_path / "copy", test_encoder, scorer_loaders=loaders).scorer is not None


def test_scorer_errors(train_index: CaseIndex, test_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train_index.save(tmp_path / "idx")
    with pytest.raises(InvalidInputError, match="has no 'hybrid' scorer"):
        Retriever.from_dir(tmp_path / "idx", test_encoder, scorer="hybrid", scorer_loaders={})
    assert Retriever.from_dir(tmp_path / "idx", test_encoder).scorer is None  # auto: none stored, dense

    class Truncating(KeywordScorer):
        def scores(self, query_texts, query_embeddings, candidate_rows=None):  # type: ignore[no-untyped-def]
            return super().scores(query_texts, query_embeddings, candidate_rows)[:, :-1]

    bad = Truncating.fit(train_index.cases, np.asarray(train_index.vectors))
    with pytest.raises(IncompatibleIndexError, match="returned scores of shape"):
        Retriever(train_index, test_encoder, bad).search(EFFUSION_QUERY, k=1)

    class Misaligned(KeywordScorer):
        """Declares the cases it was fitted on, like the hybrid scorer does; here in another order."""

        fitted_case_ids = tuple(reversed(train_index.case_ids))

    misaligned = Misaligned.fit(train_index.cases, np.asarray(train_index.vectors))
    with pytest.raises(IncompatibleIndexError, match="not the index's 55 rows in order"):
        Retriever(train_index, test_encoder, misaligned)


def test_scorer_on_the_shortlist_path(train_index: CaseIndex, test_encoder) -> None:  # type: ignore[no-untyped-def]
    """Above exact_limit the scorer only re-scores a FAISS shortlist of >= `shortlist` rows."""
    scorer = KeywordScorer.fit(train_index.cases, np.asarray(train_index.vectors))
    config = RetrievalConfig(exact_limit=10, shortlist=20)
    hits = Retriever(train_index, test_encoder, scorer, config=config).search(EFFUSION_QUERY, k=3)
    rows = scorer.calls[-1]
    assert rows is not None and 20 <= rows.size < len(train_index)
    q = test_encoder.encode_text([EFFUSION_QUERY])
    dense_top = set(np.argsort(-train_index.exact_scores(q)[0])[:20].tolist())
    assert dense_top <= set(rows.tolist())  # the shortlist is the dense top-N
    full = scorer.scores([EFFUSION_QUERY], q, rows)[0]
    assert [h.details["row"] for h in hits] == rows[np.argsort(-full, kind="stable")[:3]].tolist()


def test_stored_onnx_encoder_is_preferred_and_gives_the_recorded_encoders_hits(  # type: ignore[no-untyped-def]
    real_index_dir: Path,  # noqa: F811
    monkeypatch,
) -> None:
    """An index from `ctrag index` stores its encoder as ONNX: `from_dir` uses it (no torch), `onnx=False` or a
    missing ONNX Runtime falls back to building the recorded encoder, with the same hits either way."""
    from ctrag.encoders import onnx_text
    from ctrag.errors import MissingDependencyError

    query = "Bilateral pleural effusion with atelectasis."
    onnx = Retriever.from_dir(real_index_dir)
    assert type(onnx.encoder).__name__ == "OnnxTextEncoder"
    built = Retriever.from_dir(real_index_dir, onnx=False)
    assert type(built.encoder).__name__ != "OnnxTextEncoder"
    assert onnx.encoder.fingerprint == built.encoder.fingerprint == built.index.encoder_fingerprint
    a, b = onnx.search(query, k=4), built.search(query, k=4)
    assert [h.case_id for h in a] == [h.case_id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)

    def missing(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise MissingDependencyError("onnxruntime is not installed")

    monkeypatch.setattr(onnx_text, "OnnxTextEncoder", missing)
    fallback = Retriever.from_dir(real_index_dir)
    assert type(fallback.encoder).__name__ != "OnnxTextEncoder"
    assert [h.case_id for h in fallback.search(query, k=4)] == [h.case_id for h in a]
