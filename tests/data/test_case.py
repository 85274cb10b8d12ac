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


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"case_id": "a"}, r"field\(s\) \['patient_id', 'split'\] missing"),
        ([1, 2], "must be a JSON object, got list"),
        ({"case_id": "a", "patient_id": "p", "split": "train", "shape": [1, "x", 3]}, "case a: malformed field"),
        (
            {"case_id": "a", "patient_id": "p", "split": "train", "colour": "red"},
            r"unknown manifest fields \['colour'\]",
        ),
    ],
)
def test_malformed_records_are_data_errors(record: object, message: str) -> None:
    with pytest.raises(DataValidationError, match=message):
        Case.from_record(record)  # type: ignore[arg-type]


def test_manifest_errors_name_the_line(tmp_path: Path) -> None:
    good = Case("a", "p", "train", report_findings="Mass.", report_source="annotation-derived")
    path = Corpus([good]).save(tmp_path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"case_id": "b", "split": "val"}\n')
    with pytest.raises(DataValidationError, match=r"manifest\.jsonl:2: case b: field\(s\) \['patient_id'\]"):
        Corpus.load(tmp_path)
    with pytest.raises(InvalidInputError, match="no corpus manifest"):
        Corpus.load(tmp_path / "elsewhere")


def test_manifest_read_through_the_one_jsonl_reader(tmp_path: Path) -> None:
    """A hand-edited manifest in another encoding, or with a broken line, is named rather than a traceback."""
    good = Case("a", "p", "train", report_findings="Mass.", report_source="annotation-derived")
    path = Corpus([good]).save(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_bytes(text.encode("utf-8") + '{"case_id": "b", "note": "Lésion"}\n'.encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"manifest\.jsonl: not valid UTF-8 at byte \d+ \(line 2"):
        Corpus.load(tmp_path)
    path.write_text(text + '{"case_id": "b",\n', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"manifest\.jsonl:2: not valid JSON"):
        Corpus.load(tmp_path)
