"""Hybrid scorer: exact expected Jaccard, a held-out real-data win over BM25, no leakage, save/load, retriever.

The real-data test holds out a patient-level fifth of the shipped train.csv reports as queries and fits on the
rest. Its dense vectors are LSA embeddings (TF-IDF + truncated SVD fitted on the index rows only): real text
embeddings that cost a second instead of a minute of MiniLM on shared cores. The MiniLM path is covered by the
retriever test below (C's session fixtures) and by ``ctrag evaluate retrieval`` (docs/results).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctrag.config import load_config
from ctrag.data.case import Case
from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.errors import ConfigError, IncompatibleIndexError, InvalidInputError
from ctrag.evaluation.metrics.text import rouge_l
from ctrag.retrieval.hybrid import HybridConfig, HybridScorer, HybridWeights
from ctrag.retrieval.label_agreement import label_jaccard_matrix
from ctrag.retrieval.label_model import LabelModel
from ctrag.retrieval.lexical import BM25Scorer, TfidfScorer, TfidfVectors


def test_config_from_preset_and_errors() -> None:
    cfg = load_config(HybridConfig, "tiny-cpu", section="hybrid")
    assert cfg.rerank_k == 30 and cfg.use_labels
    assert load_config(HybridConfig, "tiny-cpu", ["grid.lcs=[0.5, 1.0]"], section="hybrid").grid.lcs == (0.5, 1.0)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(HybridConfig, {"hybrid": {"rerank": 3}}, section="hybrid")
    with pytest.raises(ConfigError, match="at least one component"):
        HybridConfig(use_labels=False, use_lcs=False, use_bm25=False, use_dense=False)
    with pytest.raises(ConfigError, match="temperature"):
        HybridWeights(temperature=0)


# -------------------------------------------------------------------------------------- real-data fitting


def _lsa(fit_texts: list[str], dim: int = 96) -> Any:
    from sklearn.decomposition import TruncatedSVD

    vectors = TfidfVectors.fit(fit_texts)
    svd = TruncatedSVD(dim, random_state=0).fit(vectors.transform(fit_texts))

    def embed(texts: list[str]) -> np.ndarray:
        x = svd.transform(vectors.transform(texts))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return embed


class _Spy:
    """Records every text handed to a fitting routine."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.calls = 0


@pytest.fixture(scope="module")
def fitted(ct_rate_dir: Path) -> Iterator[dict[str, Any]]:
    cases = read_ctclip_classifier(ct_rate_dir, patient_level_split=False)
    train = [c for c in cases if c.split == "train"]
    val = [c for c in cases if c.split == "val"]
    patients = sorted({c.patient_id for c in train})
    held = set(np.random.default_rng(1).permutation(patients)[: len(patients) // 5])
    index = [c for c in train if c.patient_id not in held]
    queries = [c for c in train if c.patient_id in held]
    embed = _lsa([c.report_text for c in index])

    spy = _Spy()
    originals = {cls: cls.__dict__["fit"] for cls in (LabelModel, BM25Scorer, TfidfScorer, TfidfVectors)}
    mp = pytest.MonkeyPatch()
    for cls, orig in originals.items():

        def wrapped(klass: type, texts: Any, *args: Any, __orig: Any = orig, **kwargs: Any) -> Any:
            spy.seen.update(texts)
            spy.calls += 1
            return __orig.__func__(klass, texts, *args, **kwargs)

        mp.setattr(cls, "fit", classmethod(wrapped))
    scorer = HybridScorer.fit(index, embed([c.report_text for c in index]), HybridConfig(), seed=0)
    calls_after_fit = spy.calls
    q_texts = [c.report_text for c in queries]
    scores = scorer.scores(q_texts, embed(q_texts))
    val_texts = [c.report_text for c in val]
    scorer.scores(val_texts[:10], embed(val_texts[:10]))
    calls_after_scoring = spy.calls
    yield {
        "index": index,
        "queries": queries,
        "val": val,
        "embed": embed,
        "scorer": scorer,
        "scores": scores,
        "spy": spy,
        "calls_after_fit": calls_after_fit,
        "calls_after_scoring": calls_after_scoring,
    }
    mp.undo()


def _labels(cases: list[Case]) -> np.ndarray:
    return np.asarray([c.labels for c in cases], dtype=np.int8)


def test_beats_bm25_on_held_out_train_reports(fitted: dict[str, Any]) -> None:
    index, queries = fitted["index"], fitted["queries"]
    q_texts = [c.report_text for c in queries]
    docs = [c.report_text for c in index]
    top_h = fitted["scores"].argmax(axis=1)
    top_b = BM25Scorer.fit(docs).scores(q_texts).argmax(axis=1)
    top_t = TfidfScorer.fit(docs).scores(q_texts).argmax(axis=1)
    jac = label_jaccard_matrix(_labels(queries), _labels(index))
    rows = np.arange(len(queries))
    j_h, j_b, j_t = jac[rows, top_h].mean(), jac[rows, top_b].mean(), jac[rows, top_t].mean()
    print(f"held-out label-Jaccard@1 hybrid {j_h:.3f} bm25 {j_b:.3f} tfidf {j_t:.3f}")
    r_h, r_b, r_t = (rouge_l(q_texts, [docs[i] for i in top], stem=False).mean() for top in (top_h, top_b, top_t))
    print(f"held-out ROUGE-L@1 hybrid {r_h:.3f} bm25 {r_b:.3f} tfidf {r_t:.3f}")
    # Measured on this split: label-Jaccard 0.60 vs BM25 0.43 / TF-IDF 0.39; ROUGE-L 0.543 vs BM25 0.523 /
    # TF-IDF 0.548 (text overlap on par with TF-IDF here; on val.csv the default beats both, see docs/results).
    assert j_h > j_b + 0.1 and j_h > j_t + 0.1
    assert r_h > r_b
    assert r_h > r_t - 0.02
    sel = fitted["scorer"].selection
    assert sel["searched"] and sel["tuning_queries"] == len(index)


def test_fitting_sees_only_index_rows(fitted: dict[str, Any]) -> None:
    scorer, spy = fitted["scorer"], fitted["spy"]
    index_texts = {c.report_text for c in fitted["index"]}
    assert scorer.fitted_case_ids == tuple(c.case_id for c in fitted["index"])
    assert spy.calls > 5  # cross-fitting refits per fold
    assert spy.seen <= index_texts
    held_only = {c.report_text for c in fitted["queries"] + fitted["val"]} - index_texts
    assert not (spy.seen & held_only)
    assert fitted["calls_after_scoring"] == fitted["calls_after_fit"]  # scoring never refits


def test_save_load_round_trip(fitted: dict[str, Any], tmp_path: Path) -> None:
    scorer: HybridScorer = fitted["scorer"]
    folder = scorer.save(tmp_path / "hybrid")
    assert {p.suffix for p in folder.rglob("*") if p.is_file()} == {".json", ".npz"}
    loaded = HybridScorer.load(folder)
    assert loaded.weights == scorer.weights and loaded.fitted_case_ids == scorer.fitted_case_ids
    q_texts = [c.report_text for c in fitted["queries"]][:40]
    q_emb = fitted["embed"](q_texts)
    np.testing.assert_array_equal(loaded.scores(q_texts, q_emb), scorer.scores(q_texts, q_emb))
    rows = np.array([3, 0, 100, 7])
    assert loaded.scores(q_texts, q_emb, rows).shape == (40, 4)


def test_scores_input_errors(fitted: dict[str, Any]) -> None:
    scorer: HybridScorer = fitted["scorer"]
    text = [fitted["queries"][0].report_text]
    emb = fitted["embed"](text)
    with pytest.raises(IncompatibleIndexError, match="query embeddings"):
        scorer.scores(text, np.zeros((1, 5), np.float32))
    with pytest.raises(InvalidInputError, match="candidate rows"):
        scorer.scores(text, emb, np.array([len(scorer)]))
    with pytest.raises(InvalidInputError, match="single str"):
        scorer.scores(text[0], emb)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="embeddings for"):
        HybridScorer.fit(fitted["index"][:5], emb)


def test_weights_without_search_are_used_as_given(fitted: dict[str, Any]) -> None:
    index = fitted["index"][:120]
    emb = fitted["embed"]([c.report_text for c in index])
    w = HybridWeights(lcs=0.5, bm25=0.25, dense=0.0)
    scorer = HybridScorer.fit(index, emb, HybridConfig(search_weights=False, weights=w))
    assert scorer.weights == w and scorer.selection == {"searched": False}
    off = HybridScorer.fit(index, emb, HybridConfig(search_weights=False, use_labels=False, weights=w))
    assert off.label_model is None and off.weights.label == 0.0
    capped = HybridScorer.fit(index, emb, HybridConfig(cv_folds=2, max_tuning_queries=20, grid=_small_grid()))
    assert capped.selection["tuning_queries"] == 20 and capped.selection["folds"] == 2


def _small_grid() -> Any:
    from ctrag.retrieval.hybrid import HybridGrid

    return HybridGrid(lcs=(0.0, 1.0), bm25=(0.0,), dense=(0.0,))


# ---------------------------------------------------------------------------------- with C's retriever


def test_plugs_into_case_index_and_retriever(
    train_index: Any, test_encoder: Any, all_cases: tuple[Case, ...], tmp_path: Path
) -> None:
    from ctrag.index import CaseIndex
    from ctrag.retrieval.retriever import Retriever

    cases = train_index.cases
    unlabelled = [i for i, c in enumerate(cases) if c.labels is None]
    assert unlabelled  # the two CTs with annotation-derived text
    scorer = HybridScorer.fit(cases, np.asarray(train_index.vectors), HybridConfig(cv_folds=3), seed=0)
    assert not scorer.labels_known[unlabelled].any() and scorer.labels_known.sum() == len(cases) - len(unlabelled)
    index = CaseIndex.build(
        np.asarray(train_index.vectors),
        cases,
        encoder_fingerprint=test_encoder.fingerprint,
        encoder_name=test_encoder.name,
        encoder_spec={"name_or_path": "minilm-test"},
    )
    index.attach_component("hybrid", scorer)
    index.save(tmp_path / "index")
    retriever = Retriever.from_dir(tmp_path / "index", test_encoder)
    assert isinstance(retriever.scorer, HybridScorer) and retriever.scorer.weights == scorer.weights
    queries = [c.report_text for c in all_cases if c.split == "val"][:4]
    hits = retriever.search(queries, k=3)
    direct = scorer.scores(queries, test_encoder.encode_text(queries)).astype(np.float32)  # as the retriever does
    for per_query, row_scores in zip(hits, direct, strict=True):
        assert [train_index.row_of(h.case_id) for h in per_query] == list(np.argsort(-row_scores, kind="stable")[:3])
