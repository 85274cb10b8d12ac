"""``ctrag evaluate retrieval``: metric functions, the shipped split, baseline figures, the run and the CLI.

The end-to-end runs use an LSA encoder (TF-IDF + truncated SVD of the index reports, a real text embedding that
costs a second) so the tests do not spend a minute embedding with MiniLM on shared cores; the figures in
docs/results/retrieval_eval.md come from the real default (MiniLM) run.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ctrag.encoders.base import Encoder
from ctrag.errors import InvalidInputError, LeakageError
from ctrag.evaluation.retrieval import (
    KEEP_MARKER,
    BootstrapPlan,
    EvalData,
    RetrievalEvalConfig,
    baseline_runs,
    evaluate_retrieval,
    exact_precision_at_k,
    label_jaccard,
    load_ctclip_eval_data,
    mean_jaccard_at_k,
    per_label_hit_rate,
    render_markdown,
    write_outputs,
)
from ctrag.retrieval.hybrid import HybridConfig
from ctrag.retrieval.lexical import TfidfVectors

# ------------------------------------------------------------------------------------------------ metrics


def test_at_k_metrics_hand_computed() -> None:
    q = np.array([[1, 0, 0], [0, 1, 1]])
    r = np.array(
        [
            [[1, 0, 0], [1, 1, 0], [0, 0, 0]],  # query 0: J 1, 1/2, 0 ; exact 1, 0, 0
            [[0, 0, 0], [0, 1, 1], [0, 1, 0]],  # query 1: J 0, 1, 1/2 ; exact 0, 1, 0
        ]
    )
    np.testing.assert_allclose(mean_jaccard_at_k(q, r, 1), [1.0, 0.0])
    np.testing.assert_allclose(mean_jaccard_at_k(q, r, 3), [0.5, 0.5])
    np.testing.assert_allclose(exact_precision_at_k(q, r, 1), [1.0, 0.0])
    np.testing.assert_allclose(exact_precision_at_k(q, r, 2), [0.5, 0.5])
    # label 0: 1 positive query, hit at 1; label 1: query 1, miss at 1, hit at 2; label 2: query 1, hit only at 2
    hit1 = per_label_hit_rate(q, r, 1)
    np.testing.assert_allclose(hit1, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(per_label_hit_rate(q, r, 2), [1.0, 1.0, 1.0])
    no_pos = per_label_hit_rate(np.zeros((2, 3)), r, 1)
    assert np.isnan(no_pos).all()
    with pytest.raises(InvalidInputError, match="retrieved labels"):
        mean_jaccard_at_k(q, r[:1], 1)


def test_bootstrap_plan() -> None:
    plan = BootstrapPlan.make(50, 500, seed=0)
    values = np.random.default_rng(1).random(50)
    lo, hi = plan.ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.3
    assert plan.ci(np.full(50, 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in BootstrapPlan.make(50, 0, 0).ci(values))


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def shipped(ct_rate_dir: Path) -> EvalData:
    return load_ctclip_eval_data(ct_rate_dir)


def test_shipped_split_keeps_patients_apart(shipped: EvalData) -> None:
    assert len(shipped.query_cases) == 100
    assert len(shipped.index_cases) == 797
    assert sorted(shipped.removed_from_index) == ["ctclip_train_471", "ctclip_train_593", "ctclip_train_604"]
    assert not {c.patient_id for c in shipped.index_cases} & {c.patient_id for c in shipped.query_cases}
    assert {c.split for c in shipped.index_cases} == {"train"} and {c.split for c in shipped.query_cases} == {"val"}


class LsaEncoder(Encoder):
    """TF-IDF + truncated SVD fitted on given reports: a cheap, real, deterministic text embedding for tests."""

    name = "lsa-test"

    def __init__(self, fit_texts: Sequence[str], dim: int = 64) -> None:
        from sklearn.decomposition import TruncatedSVD

        self._vectors = TfidfVectors.fit(list(fit_texts))
        self._svd = TruncatedSVD(dim, random_state=0).fit(self._vectors.transform(list(fit_texts)))
        self._dim = dim
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return "lsa-test@0"

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        x = self._svd.transform(self._vectors.transform(list(texts)))
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _j1(run_rows: np.ndarray, data: EvalData) -> float:
    q = np.asarray([c.labels for c in data.query_cases])
    i = np.asarray([c.labels for c in data.index_cases])
    return float(label_jaccard(q, i[run_rows[:, 0]]).mean())


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


@pytest.fixture(scope="module")
def small(shipped: EvalData) -> EvalData:
    return EvalData(shipped.index_cases[:150], shipped.query_cases[:20], ["x"], ["a note"])


@pytest.fixture(scope="module")
def small_result(small: EvalData) -> object:
    enc = LsaEncoder([c.report_text for c in small.index_cases])
    return evaluate_retrieval(
        small,
        enc,
        hybrid_config=HybridConfig(cv_folds=3),
        config=RetrievalEvalConfig(k=5, bootstrap=200, ablations=False),
    )


def test_evaluate_retrieval_runs_the_protocol(small_result: object, tmp_path: Path) -> None:
    from ctrag.evaluation.retrieval import RetrievalEvalResult

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

    written = write_outputs(small_result, tmp_path, command="ctrag evaluate retrieval X")
    assert [p.name for p in written] == ["retrieval_eval.json", "retrieval_eval.md", "retrieval_tradeoff.png"]
    payload = json.loads((tmp_path / "retrieval_eval.json").read_text())
    assert payload["command"] == "ctrag evaluate retrieval X" and len(payload["methods"]) == 7
    md = (tmp_path / "retrieval_eval.md").read_text()
    assert "| default | default |" in md and "Per-label hit rate" in md and "a note" in md
    assert render_markdown(small_result).count("\n| ") >= 7
    # hand-written notes after the marker survive a regeneration; nothing else of the old file does
    (tmp_path / "retrieval_eval.md").write_text("stale table\n" + KEEP_MARKER + "\nmy analysis\n")
    write_outputs(small_result, tmp_path)
    md = (tmp_path / "retrieval_eval.md").read_text()
    assert md.endswith(KEEP_MARKER + "\nmy analysis\n") and "stale table" not in md and "| default |" in md


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


# --------------------------------------------------------------------------------------------------- CLI


def _write_subset(src: Path, dst: Path, n_train: int, n_val: int) -> None:
    dst.mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        for name in (f"{split}.csv", f"map_{split}_classifier.csv"):
            with open(src / name, encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
            with open(dst / name, "w", encoding="utf-8", newline="") as fh:
                csv.writer(fh).writerows(rows[: n + 1])


def test_cli_evaluate_retrieval(ct_rate_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrag.cli import main
    from ctrag.encoders import factory

    data = tmp_path / "data"
    _write_subset(ct_rate_dir, data, 120, 15)
    with open(data / "train.csv", encoding="utf-8", newline="") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)]
    made: list[LsaEncoder] = []

    def fake_create_encoder(name: str, weights: object = None, device: str = "cpu", **kw: object) -> LsaEncoder:
        assert name == "minilm" and device == "cpu"
        made.append(LsaEncoder(texts, dim=32))
        return made[-1]

    monkeypatch.setattr(factory, "create_encoder", fake_create_encoder)
    out = tmp_path / "out"
    code = main(
        ["evaluate", "retrieval", str(data), "--out", str(out), "--config", "tiny-cpu", "--bootstrap", "100",
         "--no-ablations", "--no-progress", "--set", "cv_folds=2", "--set", "grid.lcs=[0.0, 1.0, 2.0]"]
    )  # fmt: skip
    assert code == 0
    payload = json.loads((out / "retrieval_eval.json").read_text())
    assert payload["data"]["index_rows"] == 120 and payload["data"]["queries"] == 15
    assert payload["setup"]["hybrid_config"]["cv_folds"] == 2
    assert payload["setup"]["hybrid_config"]["grid"]["lcs"] == [0.0, 1.0, 2.0]
    assert "--set cv_folds=2" in payload["command"]
    assert (out / "retrieval_eval.md").is_file() and (out / "retrieval_tradeoff.png").stat().st_size > 1000


def test_cli_bad_input(tmp_path: Path) -> None:
    from ctrag.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "retrieval", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert main(["evaluate", "retrieval", str(tmp_path), "--set", "nope=1", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


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
