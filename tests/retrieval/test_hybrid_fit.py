"""Cross-fitted weight search: patient-level folds, the grid, and the selection rule on shipped CT-RATE reports.

Dense vectors are LSA embeddings (TF-IDF + truncated SVD of the fitted rows): real text embeddings that cost
far less than MiniLM on shared cores. The end-to-end effect of the search (beating BM25 on held-out reports) is
checked through ``HybridScorer.fit`` in tests/retrieval/test_hybrid.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.errors import ConfigError
from ctrag.retrieval.hybrid import HybridConfig, HybridGrid, HybridWeights, LcsTable
from ctrag.retrieval.hybrid_fit import STAGE, FitRows, grid_settings, patient_folds, search_weights
from ctrag.retrieval.lexical import TfidfVectors


def test_patient_folds_keep_patients_whole_and_are_seeded() -> None:
    patients = ["p3", "p1", "p2", "p1", "p4", "p3", "p5", "p2"]
    folds = patient_folds(patients, 2, seed=0)
    for p in set(patients):
        assert len({int(f) for f, q in zip(folds, patients, strict=True) if q == p}) == 1
    assert set(folds.tolist()) == {0, 1}
    np.testing.assert_array_equal(folds, patient_folds(patients, 2, seed=0))
    assert any(not np.array_equal(folds, patient_folds(patients, 2, seed=s)) for s in range(1, 6))


def test_grid_settings_skip_switched_off_components_and_duplicates() -> None:
    cfg = HybridConfig(use_bm25=False, grid=HybridGrid(lcs=(0.0, 1.0, 1.0), bm25=(0.0, 0.5), dense=(0.0, 0.25)))
    settings = grid_settings(cfg)
    assert len(settings) == 4  # lcs {0, 1} x dense {0, 0.25}; bm25 off; the repeated 1.0 counted once
    assert all(w.bm25 == 0.0 and w.label == 1.0 for w in settings)
    no_labels = HybridConfig(use_labels=False, grid=HybridGrid(lcs=(0.0, 1.0), bm25=(0.0,), dense=(0.0,)))
    assert [w.lcs for w in grid_settings(no_labels)] == [1.0]  # the all-zero setting is dropped
    with pytest.raises(ConfigError, match="no setting with a non-zero weight"):
        grid_settings(HybridConfig(use_labels=False, grid=HybridGrid(lcs=(0.0,), bm25=(0.0,), dense=(0.0,))))


def _fit_rows(ct_rate_dir: Path, n: int) -> FitRows:
    cases = [c for c in read_ctclip_classifier(ct_rate_dir, patient_level_split=False) if c.split == "train"][:n]
    texts = [c.report_text for c in cases]
    from sklearn.decomposition import TruncatedSVD

    vectors = TfidfVectors.fit(texts)
    x = TruncatedSVD(48, random_state=0).fit_transform(vectors.transform(texts))
    emb = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = np.asarray([c.labels for c in cases], dtype=np.int8)
    known = np.ones(len(cases), dtype=bool)
    return FitRows(texts, emb, labels, known, [c.patient_id for c in cases], LcsTable.build(texts, 2048))


def test_search_weights_follows_its_rule(ct_rate_dir: Path) -> None:
    rows = _fit_rows(ct_rate_dir, 160)
    cfg = HybridConfig(grid=HybridGrid(lcs=(0.0, 1.0, 2.0), bm25=(0.0, 0.5), dense=(0.0,)), max_tuning_queries=None)
    calls: list[tuple[str, int, int]] = []
    weights, sel = search_weights(rows, cfg, seed=0, n_folds=3, progress=lambda *a: calls.append(a))
    assert calls[0] == (STAGE, 0, 3) and calls[-1] == (STAGE, 3, 3)
    assert sel["searched"] and sel["folds"] == 3 and sel["tuning_queries"] == 160
    assert len(sel["grid"]) == 6 and set(sel["baselines"]) == {"bm25", "tfidf", "dense"}
    assert sel["reference"] == max(sel["baselines"], key=lambda n: sel["baselines"][n]["lcs_f1"])
    admissible = [r for r in sel["grid"] if r["admissible"]]
    pool = admissible or sel["grid"]
    key = "label_jaccard" if admissible else "lcs_f1"
    assert sel["chosen"][key] == max(r[key] for r in pool)
    assert isinstance(weights, HybridWeights) and sel["chosen"]["weights"]["lcs"] == weights.lcs
    for r in admissible:  # admissible: text overlap not credibly below the reference's
        assert r["lcs_f1_minus_reference"] - cfg.rouge_confidence_z * r["lcs_f1_minus_reference_se"] >= 0
    again, sel2 = search_weights(rows, cfg, seed=0, n_folds=3)
    assert again == weights and sel2["grid"] == sel["grid"]


def test_search_weights_caps_tuning_queries_and_skips_unlabelled(ct_rate_dir: Path) -> None:
    rows = _fit_rows(ct_rate_dir, 120)
    rows.known[:60] = False  # unlabelled rows stay candidates but never query
    cfg = HybridConfig(
        grid=HybridGrid(lcs=(1.0,), bm25=(0.0,), dense=(0.0,)), rouge_reference="bm25", max_tuning_queries=30
    )
    _, sel = search_weights(rows, cfg, seed=1, n_folds=2)
    assert sel["tuning_queries"] == 30 and set(sel["baselines"]) == {"bm25"}
    rows.known[:] = False
    w, none = search_weights(rows, cfg, seed=1, n_folds=2)
    assert none == {"searched": False} and w == cfg.effective_weights(cfg.weights)
