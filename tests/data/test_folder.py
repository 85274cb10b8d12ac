"""Folder corpora: the shipped ``cases.csv`` files and bad rows of hand-written ones."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ctrag.data.folder import KNOWN_COLUMNS, read_folder
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.readers import SkippedCase
from ctrag.errors import InvalidInputError


def test_sample_folder_corpus(sample_dir: Path) -> None:
    cases = {c.case_id: c for c in read_folder(sample_dir / "ct")}
    assert set(cases) == {
        "lung_pet_ct_dx_A0001",
        "lung_pet_ct_dx_A0002",
        "ts_chest_crop",
        "ts_example_ct",
        "lidc_idri_0314",
    }
    assert {cid for cid, c in cases.items() if c.split == "test"} == {"lidc_idri_0314"}
    for case in cases.values():
        assert case.report_source == "annotation-derived" and case.has_report
        assert case.labels is None  # not CT-RATE labelled
        assert case.volume_path is not None and Path(case.volume_path).is_file()
        assert case.extra["license"]
    assert cases["ts_example_ct"].mask_source == "totalsegmentator-total-fast"
    assert Path(cases["ts_chest_crop"].mask_path or "").is_file()
    # the 30-slice TotalSegmentator CT duplicates voxels of ts_example_ct and is deliberately not a case
    assert not any("ts_example_ct_sm" in (c.volume_path or "") for c in cases.values())
    mask_only = read_folder(sample_dir / "ct_rate_nc_sa")
    assert len(mask_only) == 1 and mask_only[0].volume_path is None and mask_only[0].has_mask
    assert mask_only[0].report_source == "annotation-derived" and mask_only[0].dataset == "ct-rate"


def _write_cases_csv(path: Path, rows: list[dict[str, str]], extra_cols: tuple[str, ...] = ()) -> Path:
    cols = [*KNOWN_COLUMNS, *extra_cols]
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "cases.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, cols)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_folder_reader_collects_bad_rows_or_raises(tmp_path: Path, lowres_chest_ct: Path) -> None:
    good = {
        "case_id": "a",
        "patient_id": "p",
        "split": "train",
        "volume": str(lowres_chest_ct),
        "findings": "Mass.",
        "report_source": "annotation-derived",
    }
    bad_split = {**good, "case_id": "b", "split": "training"}
    no_source = {**good, "case_id": "c", "report_source": ""}
    mask_no_source = {**good, "case_id": "d", "mask": "m.nii.gz"}
    folder = _write_cases_csv(tmp_path / "corpus", [good, bad_split, no_source, mask_no_source])
    errors: list[SkippedCase] = []
    cases = read_folder(folder, errors=errors)
    assert [c.case_id for c in cases] == ["a"]
    reasons = {e.case_id: e.reason for e in errors}
    assert "split must be one of" in reasons["b"]
    assert "report_source is required" in reasons["c"]
    assert "mask_source is required" in reasons["d"]
    assert all(":" in e.source and "cases.csv" in e.source for e in errors)  # file and line
    with pytest.raises(InvalidInputError, match="split must be one of"):
        read_folder(folder)


def test_folder_reader_labels_and_extra_columns(tmp_path: Path) -> None:
    cols = (*CT_RATE_LABELS, "license")
    row = {
        "case_id": "a",
        "patient_id": "p",
        "split": "val",
        "findings": "Nodule.",
        "report_source": "radiologist",
        "license": "CC0",
    }
    labelled = {**row, "case_id": "b", **{n: "1" if i == 3 else "0" for i, n in enumerate(CT_RATE_LABELS)}}
    half = {**row, "case_id": "c", CT_RATE_LABELS[0]: "1"}
    folder = _write_cases_csv(tmp_path / "c", [row, labelled, half], cols)
    errors: list[SkippedCase] = []
    cases = {c.case_id: c for c in read_folder(folder, errors=errors)}
    assert cases["a"].labels is None and cases["a"].extra == {"license": "CC0"}
    assert cases["b"].labels is not None and sum(cases["b"].labels) == 1 and cases["b"].labels[3] == 1
    assert [e.case_id for e in errors] == ["c"] and "must all be 0/1 or all empty" in errors[0].reason
    # a header with only some label columns is a file-level error
    folder2 = _write_cases_csv(tmp_path / "d", [row], (*CT_RATE_LABELS[:5], "license"))
    with pytest.raises(InvalidInputError, match="5 of the 18"):
        read_folder(folder2)
