"""``ctrag evaluate retrieval``: the shipped split, baseline figures and the run (its CLI is tested in
tests/cli/test_cmd_evaluate.py).

The end-to-end runs use an LSA encoder (``testsupport.lsa``: TF-IDF + truncated SVD of the index reports, a
real text embedding that costs a second) so the tests do not spend a minute embedding with MiniLM on shared
cores; the figures in docs/results/retrieval_eval.md come from the real default (MiniLM) run. Metrics at k are
tested in tests/evaluation/metrics/test_retrieval.py, the outputs in test_retrieval_report.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from testsupport.lsa import LsaEncoder

from ctrag.errors import LeakageError
from ctrag.evaluation.retrieval_eval import (
    EvalData,
    RetrievalEvalConfig,
    RetrievalEvalResult,
    baseline_runs,
    evaluate_retrieval,
    rank_rows,
    split_by_patient,
)
from ctrag.retrieval.hybrid import HybridConfig
from ctrag.retrieval.label_agreement import label_jaccard

# ----------------------------------------------------------------------------------------------- real data


def test_shipped_split_keeps_patients_apart(shipped: EvalData) -> None:
    assert len(shipped.query_cases) == 100
    assert len(shipped.index_cases) == 797
    assert sorted(shipped.removed_from_index) == ["ctclip_train_471", "ctclip_train_593", "ctclip_train_604"]
    assert not {c.patient_id for c in shipped.index_cases} & {c.patient_id for c in shipped.query_cases}
    assert {c.split for c in shipped.index_cases} == {"train"} and {c.split for c in shipped.query_cases} == {"val"}


def _j1(run_rows: np.ndarray, data: EvalData) -> float:
    q = np.asarray([c.labels for c in data.query_cases])
    i = np.asarray([c.labels for c in data.index_cases])
    return float(label_jaccard(q, i[run_rows[:, 0]]).mean())


def test_rank_rows_is_stable_on_ties() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(rank_rows(scores, 3), [[1, 0, 2], [0, 1, 2]])


def test_split_by_patient_removes_shared_patients_from_the_index(shipped: EvalData) -> None:
    query = shipped.query_cases[0]
    moved = shipped.index_cases[1].evolve(patient_id=query.patient_id)
    data = split_by_patient([shipped.index_cases[0], moved, shipped.index_cases[2]], [query])
    assert [c.case_id for c in data.index_cases] == [shipped.index_cases[0].case_id, shipped.index_cases[2].case_id]
    assert data.removed_from_index == [moved.case_id] and query.patient_id in data.notes[0]
    assert split_by_patient(shipped.index_cases[:3], [query]).notes == []


def test_baselines_reproduce_the_issue_figures(shipped: EvalData) -> None:
    """Issue (val.csv, top-1 label-Jaccard): random 0.15, TF-IDF 0.39, BM25 0.47, label oracle 0.85."""
    enc = LsaEncoder([c.report_text for c in shipped.index_cases])
    runs = baseline_runs(
        shipped.index_cases,
        shipped.query_cases,
        enc.encode_text([c.report_text for c in shipped.index_cases]),
        enc.encode_text([c.report_text for c in shipped.query_cases]),
        k=5,
        seed=0,
    )
    j1 = {r.name: _j1(r.top_rows, shipped) for r in runs}
    assert j1["random"] == pytest.approx(0.15, abs=0.03)
    assert j1["tfidf"] == pytest.approx(0.39, abs=0.02)
    assert j1["bm25"] == pytest.approx(0.47, abs=0.02)
    assert j1["label-oracle"] == pytest.approx(0.85, abs=0.02)
    assert j1["tfidf-unigram"] > j1["tfidf"] + 0.05  # why TF-IDF's figure depends on its n-gram setting
    assert all(r.top_rows.shape == (100, 5) for r in runs)


def test_evaluate_retrieval_runs_the_protocol(small_result: RetrievalEvalResult) -> None:
    assert isinstance(small_result, RetrievalEvalResult)
    names = [m["name"] for m in small_result.methods]
    assert names == ["default", "random", "tfidf", "tfidf-unigram", "bm25", "minilm", "label-oracle"]
    default = small_result.method("default")
    for key in ("label_jaccard@1", "label_jaccard@5", "exact_match_precision@1", "rouge_l@1", "rouge_2@1"):
        entry = default[key]
        assert 0.0 <= entry["mean"] <= 1.0 and entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
    assert len(default["per_label_hit_rate@1"]) == 18 and len(default["top1_case_ids"]) == 20
    oracle = small_result.method("label-oracle")
    assert oracle["label_jaccard@1"]["mean"] >= max(m["label_jaccard@1"]["mean"] for m in small_result.methods)
    assert default["weights"]["label"] == 1.0 and default["selection"]["searched"]
    assert small_result.data["index_rows"] == 150 and small_result.data["queries"] == 20
    assert small_result.label_model is not None and 0.5 < small_result.label_model["macro_auc"] <= 1.0
    assert {c["b"] for c in small_result.comparisons} == {"bm25", "tfidf", "minilm"}


def test_leakage_is_refused(small: EvalData) -> None:
    leaky_query = small.query_cases[0].evolve(patient_id=small.index_cases[3].patient_id)
    data = EvalData(small.index_cases[:40], [leaky_query, *small.query_cases[1:3]])
    enc = LsaEncoder([c.report_text for c in data.index_cases], dim=16)
    with pytest.raises(LeakageError, match="patient"):
        evaluate_retrieval(
            data,
            enc,
            hybrid_config=HybridConfig(search_weights=False),
            config=RetrievalEvalConfig(bootstrap=0, ablations=False),
        )


def test_saved_index_mode_drops_overlapping_queries(small: EvalData) -> None:
    from ctrag.index import CaseIndex
    from ctrag.retrieval.hybrid import HybridScorer

    rows = small.index_cases[:60]
    enc = LsaEncoder([c.report_text for c in rows], dim=24)
    emb = enc.encode_text([c.report_text for c in rows])
    index = CaseIndex.build(emb, rows, encoder_fingerprint=enc.fingerprint, encoder_name=enc.name)
    scorer = HybridScorer.fit(rows, emb, HybridConfig(search_weights=False))
    moved = small.query_cases[0].evolve(patient_id=rows[5].patient_id)  # e.g. moved by a patient-level ingest
    data = EvalData(small.index_cases, [moved, *small.query_cases[1:6]], ["ignored"], ["ignored note"])
    result = evaluate_retrieval(
        data, enc, index=index, scorer=scorer, config=RetrievalEvalConfig(bootstrap=0, ablations=False)
    )
    assert result.data["queries"] == 5 and result.data["index_rows"] == 60
    assert result.data["removed_from_index"] == []
    notes = " ".join(result.setup["notes"])
    assert moved.case_id in notes and "ignored note" not in notes
    assert result.method("default")["weights"] == {
        "label": 1.0, "lcs": 2.0, "bm25": 0.0, "dense": 0.0, "temperature": 1.0
    }  # fmt: skip
