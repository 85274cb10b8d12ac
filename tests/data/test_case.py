from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.data.case import Case, Corpus
from ctrag.errors import DataValidationError, InvalidInputError


def test_manifest_roundtrip_relative_paths(tmp_path: Path, lowres_chest_ct: Path) -> None:
    case = Case(
        case_id="a2",
        patient_id="Lung_Dx-A0002",
        split="train",
        report_findings="Right hilar mass.",
        report_source="annotation-derived",
        labels=(0,) * 17 + (1,),
        volume_path=str(lowres_chest_ct),
        shape=(128, 128, 30),
        spacing=(2.586, 2.586, 8.0),
    )
    corpus = Corpus([case, Case(case_id="r1", patient_id="p1", split="val", report_findings="Normal.")])
    path = corpus.save(tmp_path / "corpus")
    assert "../" in path.read_text()  # stored relative to the manifest folder
    back = Corpus.load(tmp_path / "corpus")
    assert back.get("a2") == case
    assert back.counts() == {"train": 1, "val": 1, "test": 0}
    assert [c.case_id for c in back.split("val")] == ["r1"]


def test_duplicate_ids_refused() -> None:
    a = Case(case_id="x", patient_id="p", split="train")
    with pytest.raises(DataValidationError, match="duplicate case id 'x'"):
        Corpus([a, a])


def test_bad_split_refused() -> None:
    with pytest.raises(InvalidInputError, match="split must be one of"):
        Case(case_id="x", patient_id="p", split="holdout")
