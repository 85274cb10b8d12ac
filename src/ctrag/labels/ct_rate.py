"""Fitting and measuring the label extractor on the CT-CLIP text-classifier CSVs (CT-RATE reports + 18 labels).

Why its own module: the split rule lives here once. The extractor is fitted on the ``train`` split only and
measured on ``val`` only; train reports of patients who also have val reports are left out (:func:`read_split`),
so no val patient's report trains the model. The model
records a hash of the training case ids, which the tests compare with the val ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError, LeakageError
from ctrag.labels.extractor import LabelExtractor, LabelExtractorConfig, expected_calibration_error
from ctrag.utils.hashing import sha256_json

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class LabelledReports:
    """Row-aligned report texts, 0/1 labels (n, 18), patient ids and case ids of one split."""

    split: str
    texts: list[str]
    labels: np.ndarray
    patients: list[str]
    case_ids: list[str]


def read_split(folder: str | os.PathLike[str], split: str) -> LabelledReports:
    """The labelled reports of ``split`` in a CT-CLIP classifier folder (train.csv / val.csv).

    The training split loses the reports of patients who also have reports in another split (2 patients, 3 train
    reports in the shipped CSVs), so val.csv stays whole (100 reports) and shares no patient with training — the
    same rule as the retrieval evaluation's index.
    """
    all_cases = read_ctclip_classifier(folder, patient_level_split=False)
    cases = [c for c in all_cases if c.split == split and c.labels is not None]
    if split == TRAIN_SPLIT:
        elsewhere = {c.patient_id for c in all_cases if c.split != TRAIN_SPLIT}
        cases = [c for c in cases if c.patient_id not in elsewhere]
    if not cases:
        raise InvalidInputError(f"{folder}: no labelled {split!r} reports")
    return LabelledReports(
        split=split,
        texts=[c.report_text for c in cases],
        labels=np.asarray([c.labels for c in cases], dtype=np.int8),
        patients=[c.patient_id for c in cases],
        case_ids=[c.case_id for c in cases],
    )


def fit_on_train(
    folder: str | os.PathLike[str], config: LabelExtractorConfig | None = None, seed: int = 0
) -> LabelExtractor:
    """The extractor fitted on the ``train`` reports of ``folder`` (patient-level CV folds inside)."""
    data = read_split(folder, TRAIN_SPLIT)
    model = LabelExtractor.fit(data.texts, data.labels, data.patients, config, seed)
    model.info.update(
        {
            "train_split": TRAIN_SPLIT,
            "train_case_ids_sha256": sha256_json(sorted(data.case_ids)),
            "train_patients_sha256": sha256_json(sorted(set(data.patients))),
        }
    )
    return model


def check_not_trained_on(model: LabelExtractor, data: LabelledReports) -> None:
    """Refuse to measure ``model`` on reports it may have been fitted on (its training split or patients)."""
    if data.split == model.info.get("train_split"):
        raise LeakageError(f"the label extractor was fitted on the {data.split!r} split; measure it on another")
    if model.info.get("train_patients_sha256") is None:
        return
    if sha256_json(sorted(set(data.patients))) == model.info["train_patients_sha256"]:
        raise LeakageError("the evaluation reports come from the label extractor's training patients")


def evaluate(model: LabelExtractor, data: LabelledReports) -> dict[str, Any]:
    """Per-label precision / recall / F1 (at the model's thresholds) and AUC, macro-F1, Brier score and ECE."""
    from sklearn.metrics import roc_auc_score

    check_not_trained_on(model, data)
    p = model.predict_proba(data.texts)
    pred = p >= model.thresholds[None, :]
    y = data.labels.astype(bool)
    per_label: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(CT_RATE_LABELS):
        tp = int((pred[:, j] & y[:, j]).sum())
        fp = int((pred[:, j] & ~y[:, j]).sum())
        fn = int((~pred[:, j] & y[:, j]).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
        auc = float(roc_auc_score(y[:, j], p[:, j])) if 0 < y[:, j].sum() < len(y) else None
        per_label[name] = {
            "positives": int(y[:, j].sum()),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "f1": f1,
            "auc": auc,
            "threshold": float(model.thresholds[j]),
        }
    f1s = [v["f1"] for v in per_label.values()]
    aucs = [v["auc"] for v in per_label.values() if v["auc"] is not None]
    tp_all = int((pred & y).sum())
    micro = 2 * tp_all / max(1, int(pred.sum() + y.sum()))
    return {
        "split": data.split,
        "n_reports": len(data.texts),
        "macro_f1": float(np.mean(f1s)),
        "micro_f1": float(micro),
        "min_f1": float(np.min(f1s)),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "brier": float(np.mean((p - data.labels) ** 2)),
        "ece": expected_calibration_error(data.labels, p),
        "per_label": per_label,
    }
