"""The 18-label report classifier, trained on the shipped train.csv and measured on val.csv."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.retrieval.label_model import LabelModel, LabelModelConfig


def _xy(cases: list[Case]) -> tuple[list[str], np.ndarray]:
    return [c.report_text for c in cases], np.asarray([c.labels for c in cases], dtype=np.int8)


@pytest.fixture(scope="module")
def split(ct_rate_dir: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    cases = read_ctclip_classifier(ct_rate_dir, patient_level_split=False)
    return {s: _xy([c for c in cases if c.split == s]) for s in ("train", "val")}


@pytest.fixture(scope="module")
def model(split: dict[str, tuple[list[str], np.ndarray]]) -> LabelModel:
    texts, y = split["train"]
    return LabelModel.fit(texts, y, seed=0)


def test_quality_on_val(model: LabelModel, split: dict[str, tuple[list[str], np.ndarray]]) -> None:
    from sklearn.metrics import f1_score, roc_auc_score

    texts, y = split["val"]
    p = model.predict_proba(texts)
    assert p.shape == (100, 18) and np.all((p >= 0) & (p <= 1))
    auc = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(18) if 0 < y[:, j].sum() < len(y)])
    f1 = f1_score(y, p >= 0.5, average="macro", zero_division=0)
    # Measured: macro AUC 0.979, macro-F1 0.72 (docs/results/retrieval_eval.md); a broken model falls far below.
    assert auc > 0.95
    assert f1 > 0.6
    assert model.labels == CT_RATE_LABELS and model.info["n_train"] == 800


def test_negation_is_understood(model: LabelModel) -> None:
    j = CT_RATE_LABELS.index("Pleural effusion")
    p = model.predict_proba(
        [
            "Pleural effusion-thickening was not detected. No pathological lymph node.",
            "Bilateral pleural effusion is observed, more prominent on the right. No pathological lymph node.",
        ]
    )
    assert p[0, j] < 0.2 < 0.5 < p[1, j]


def test_save_load_is_exact_and_needs_no_sklearn(
    model: LabelModel, split: dict[str, tuple[list[str], np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = split["val"][0][:10]
    folder = model.save(tmp_path / "lm")
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing sklearn now fails
    loaded = LabelModel.load(folder)
    np.testing.assert_array_equal(loaded.predict_proba(texts), model.predict_proba(texts))
    np.testing.assert_array_equal(loaded.predict(texts), model.predict(texts))


def test_single_class_label_gets_its_prior(split: dict[str, tuple[list[str], np.ndarray]]) -> None:
    texts, y = split["train"]
    y = y[:60].copy()
    y[:, 0] = 0  # no positive "Medical material" in this training set
    lm = LabelModel.fit(texts[:60], y, LabelModelConfig(min_df=1))
    p = lm.predict_proba(texts[60:65])
    np.testing.assert_allclose(p[:, 0], 0.5 / 61)


def test_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="shape"):
        LabelModel.fit(["a b c", "d e f"], np.zeros((2, 5)))
    with pytest.raises(InvalidInputError, match="0/1"):
        LabelModel.fit(["a b c", "d e f"], np.full((2, 18), 2))
    with pytest.raises(ConfigError, match="c must be"):
        LabelModelConfig(c=0)


def test_load_refuses_other_components_and_newer_formats(model: LabelModel, tmp_path: Path) -> None:
    import json

    folder = model.save(tmp_path / "lm")
    meta_path = folder / "label_model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": meta["format_version"] + 1}))
    with pytest.raises(DataValidationError, match=r"format \d+ is too new"):
        LabelModel.load(folder)
    meta_path.write_text(json.dumps({**meta, "kind": "ctrag-hybrid-scorer"}))
    with pytest.raises(DataValidationError, match="does not hold a ctrag-label-model"):
        LabelModel.load(folder)
