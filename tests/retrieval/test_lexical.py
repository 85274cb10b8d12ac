"""Lexical scorers and LCS on the shipped CT-RATE reports, checked against the reference packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.retrieval.lexical import (
    BM25Config,
    BM25Scorer,
    TfidfConfig,
    TfidfScorer,
    tokens_negation,
    tokens_whitespace,
)


@pytest.fixture(scope="module")
def reports(ct_rate_dir: Path) -> tuple[list[str], list[str]]:
    """250 real train reports as documents and 20 real val reports as queries."""
    cases: list[Case] = read_ctclip_classifier(ct_rate_dir, patient_level_split=False)
    docs = [c.report_text for c in cases if c.split == "train"][:250]
    queries = [c.report_text for c in cases if c.split == "val"][:20]
    return docs, queries


def test_bm25_equals_rank_bm25(reports: tuple[list[str], list[str]]) -> None:
    from rank_bm25 import BM25Okapi

    docs, queries = reports
    ours = BM25Scorer.fit(docs).scores(queries)
    ref = BM25Okapi([tokens_whitespace(d) for d in docs])
    expected = np.stack([ref.get_scores(tokens_whitespace(q)) for q in queries])
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


def test_bm25_one_query_and_candidate_rows_equal_the_batch(reports: tuple[list[str], list[str]]) -> None:
    """One query takes the CSR-times-vector path, several the sparse product: the same numbers either way."""
    docs, queries = reports
    scorer = BM25Scorer.fit(docs)
    batch = scorer.scores(queries)
    rows = np.array([249, 3, 3, 100, 0])
    for i, query in enumerate(queries):
        np.testing.assert_array_equal(scorer.scores([query]), batch[i : i + 1])
        np.testing.assert_array_equal(scorer.scores([query], None, rows), batch[i : i + 1, rows])
    assert scorer.scores([], None, rows).shape == (0, rows.size)


def test_bm25_parameters_change_scores(reports: tuple[list[str], list[str]]) -> None:
    docs, queries = reports
    a = BM25Scorer.fit(docs, BM25Config(b=0.75)).scores(queries[:3])
    b = BM25Scorer.fit(docs, BM25Config(b=0.0)).scores(queries[:3])
    assert not np.allclose(a, b)


@pytest.mark.parametrize("ngram_max", [1, 2])
def test_tfidf_equals_sklearn(reports: tuple[list[str], list[str]], ngram_max: int) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs, queries = reports
    ours = TfidfScorer.fit(docs, TfidfConfig(ngram_max=ngram_max)).scores(queries)
    vec = TfidfVectorizer(ngram_range=(1, ngram_max))
    doc_matrix = vec.fit_transform(docs)
    expected = (vec.transform(queries) @ doc_matrix.T).toarray()
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_save_load_round_trip_and_rows(reports: tuple[list[str], list[str]], tmp_path: Path) -> None:
    docs, queries = reports
    rows = np.array([5, 0, 249, 17])
    for scorer, cls in ((BM25Scorer.fit(docs), BM25Scorer), (TfidfScorer.fit(docs), TfidfScorer)):
        folder = scorer.save(tmp_path / scorer.kind)
        assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".npz"]  # arrays + JSON, no pickle
        loaded = cls.load(folder)
        full = scorer.scores(queries)
        np.testing.assert_array_equal(loaded.scores(queries), full)
        np.testing.assert_array_equal(loaded.scores(queries, None, rows), full[:, rows])


def test_errors(reports: tuple[list[str], list[str]], tmp_path: Path) -> None:
    docs, queries = reports
    bm25 = BM25Scorer.fit(docs[:10])
    with pytest.raises(InvalidInputError, match="single str"):
        bm25.scores(queries[0])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"\[0, 10\)"):
        bm25.scores(queries, None, np.array([3, 10]))
    with pytest.raises(InvalidInputError, match="no documents"):
        BM25Scorer.fit([])
    with pytest.raises(ConfigError, match="tokenizer"):
        BM25Config(tokenizer="nope")  # type: ignore[arg-type]
    TfidfScorer.fit(docs[:10]).save(tmp_path / "t")
    with pytest.raises(DataValidationError, match="bm25"):
        BM25Scorer.load(tmp_path / "t")
    with pytest.raises(DataValidationError, match="missing"):
        BM25Scorer.load(tmp_path / "empty")


def test_negation_marks_only_negated_sentences() -> None:
    toks = tokens_negation('No pleural effusion was detected. Nodule in the right lung. " Emphysema')
    assert toks == ["n_no", "n_pleural", "n_effusion", "n_was", "n_detected", "nodule", "in", "the", "right", "lung",
                    "emphysema"]  # fmt: skip
    assert tokens_negation("Pleural effusion-thickening was not detected.")[:2] == ["n_pleural", "n_effusion"]
