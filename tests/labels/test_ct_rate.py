"""Train/val separation of the label extractor fitted on the CT-CLIP classifier CSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.errors import LeakageError
from ctrag.labels.ct_rate import evaluate, read_split
from ctrag.labels.extractor import LabelExtractor
from ctrag.utils.hashing import sha256_json


def test_fitted_on_train_only_and_no_val_patient(extractor: LabelExtractor, ct_rate_dir: Path) -> None:
    train, val = read_split(ct_rate_dir, "train"), read_split(ct_rate_dir, "val")
    assert not set(train.patients) & set(val.patients)
    assert not set(train.case_ids) & set(val.case_ids)
    assert extractor.info["train_split"] == "train"
    assert extractor.info["n_train"] == len(train.texts)
    assert extractor.info["train_case_ids_sha256"] == sha256_json(sorted(train.case_ids))


def test_refuses_to_measure_on_its_training_reports(extractor: LabelExtractor, ct_rate_dir: Path) -> None:
    with pytest.raises(LeakageError, match="fitted on the 'train' split"):
        evaluate(extractor, read_split(ct_rate_dir, "train"))
