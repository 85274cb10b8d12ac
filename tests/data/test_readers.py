"""Readers: layout detection, the folder cases.csv, the CT-CLIP classifier CSVs and a CT-RATE-layout folder."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.ct_rate import (
    CTRateCorpus,
    carve_val_split,
    find_ct_rate_layout,
    needs_rescale,
    patient_of_scan,
    read_ct_rate,
    read_ctclip_classifier,
)
from ctrag.data.folder import KNOWN_COLUMNS, read_folder
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.readers import SkippedCase, detect_layouts, read_csv_rows
from ctrag.data.reports import split_joined_report
from ctrag.errors import InvalidInputError


def test_detect_layouts_in_sample_data(sample_dir: Path) -> None:
    found = {(d.layout, d.path.relative_to(sample_dir).as_posix()) for d in detect_layouts(sample_dir)}
    assert found == {
        ("folder", "ct"),
        ("folder", "ct_rate_nc_sa"),
        ("ctclip-csv", "ct_rate_nc_sa/ct_clip_text_classifier"),
    }


def test_detect_layouts_finds_ct_rate_and_explains_when_nothing_matches(ct_rate_root: Path, tmp_path: Path) -> None:
    assert [(d.layout, d.path) for d in detect_layouts(ct_rate_root)] == [("ct-rate", ct_rate_root)]
    (tmp_path / "notes.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"(?s)no corpus found.*cases\.csv.*radiology_text_reports"):
        detect_layouts(tmp_path)


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


def test_non_utf8_csv_names_file_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_bytes(
        b"case_id,patient_id,split,findings\na,p,train,Nodule in the right lung\n"
        + "b,p,train,Lésion\n".encode("latin-1")
    )
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(InvalidInputError, match=rf"cases.csv: not valid UTF-8 at byte {offset} \(line 3"):
        read_csv_rows(path)


def test_ctclip_classifier_reader(ct_rate_dir: Path) -> None:
    cases = read_ctclip_classifier(ct_rate_dir)
    assert len(cases) == 900 and len({c.case_id for c in cases}) == 900
    with open(ct_rate_dir / "train.csv", encoding="utf-8", newline="") as fh:
        first = next(csv.DictReader(fh))
    with open(ct_rate_dir / "map_train_classifier.csv", encoding="utf-8", newline="") as fh:
        mapping = {r["AccessionNo"]: r["NameinCTRATE"] for r in csv.DictReader(fh)}
    by_id = {c.case_id: c for c in cases}
    case = by_id["ctclip_train_1"]
    assert case.labels == tuple(int(first[n]) for n in CT_RATE_LABELS)
    assert case.extra["ct_rate_volume"] == mapping["train_1"] == "train_17051_a"
    assert case.patient_id == "train_17051" and case.split == "train" and case.report_source == "radiologist"
    assert case.report_impression == "Thoracic CT examination within normal limits."
    unmapped = by_id["ctclip_train_2"]
    assert mapping["train_2"] == "not in CT-RATE"
    assert unmapped.patient_id == "ctclip_train_2" and "ct_rate_volume" not in unmapped.extra
    assert all(c.report_findings for c in cases) and all(c.volume_path is None for c in cases)
    # CT-CLIP splits by accession; the reader keeps every patient in one split
    splits = defaultdict(set)
    for c in cases:
        splits[c.patient_id].add(c.split)
    assert all(len(s) == 1 for s in splits.values())
    moved = {c.case_id: c.extra["ct_rate_volume"] for c in cases if "split_moved_from" in c.extra}
    assert moved and all(patient_of_scan(v) in {"train_6840", "train_17126"} for v in moved.values())
    unmoved = read_ctclip_classifier(ct_rate_dir, patient_level_split=False)
    assert sum(c.split == "val" for c in unmoved) == 100


def test_ct_rate_layout_names_and_errors(ct_rate_root: Path, tmp_path: Path) -> None:
    layout = find_ct_rate_layout(ct_rate_root)
    assert set(layout.volume_dirs) == {"train", "valid"}
    assert layout.reports["valid"].name == "validation_reports.csv"
    assert layout.labels["train"].name == "train_predicted_labels.csv"
    assert layout.metadata["valid"].name == "validation_metadata.csv"
    assert find_ct_rate_layout(ct_rate_root / "dataset").root == layout.root
    with pytest.raises(InvalidInputError, match=r"(?s)not a CT-RATE folder.*train_<patient>_<scan>_<recon>\.nii\.gz"):
        find_ct_rate_layout(tmp_path)


def test_read_ct_rate_cases(ct_rate_root: Path, real_report_rows: list[dict[str, str]]) -> None:
    cases = {c.case_id: c for c in read_ct_rate(ct_rate_root)}
    assert set(cases) == {"train_1_a_1", "train_1_a_2", "train_2_a_1", "valid_1_a_1"}
    assert cases["train_1_a_2"].patient_id == "train_1" and cases["valid_1_a_1"].patient_id == "valid_1"
    assert {c.split for c in cases.values() if c.patient_id.startswith("train")} == {"train"}
    assert cases["valid_1_a_1"].split == "test"  # CT-RATE valid = official held-out set
    expected = split_joined_report(real_report_rows[0]["report_text"])
    assert cases["train_1_a_1"].report_findings == expected.findings
    assert cases["train_1_a_1"].report_impression == expected.impression
    assert cases["train_1_a_1"].labels == tuple(int(real_report_rows[0][n]) for n in CT_RATE_LABELS)
    assert cases["train_1_a_1"].extra["technique"] == "Non-contrast chest CT."
    assert "clinical_information" not in cases["train_1_a_1"].extra  # "Not given." placeholder
    assert cases["train_2_a_1"].extra["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    assert all(Path(c.volume_path or "").is_file() for c in cases.values())
    with_reports = read_ct_rate(ct_rate_root, include_report_only=True)
    report_only = [c for c in with_reports if c.volume_path is None]
    assert [c.case_id for c in report_only] == ["train_3_a_1"]
    corpus = CTRateCorpus(ct_rate_root, split="test")
    assert corpus.case_ids == ["valid_1_a_1"]


def test_missing_report_row_still_yields_a_case(ct_rate_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(ct_rate_root, root)
    reports = root / "dataset" / "radiology_text_reports" / "train_reports.csv"
    lines = reports.read_text(encoding="utf-8").splitlines(keepends=True)
    reports.write_text("".join(line for line in lines if not line.startswith("train_1_a_2")), encoding="utf-8")
    case = next(c for c in read_ct_rate(root) if c.case_id == "train_1_a_2")
    assert case.report_source == "radiologist" and not case.has_report  # ingest reports it as missing


def test_val_fraction_is_patient_level_and_seeded(ct_rate_root: Path) -> None:
    a = read_ct_rate(ct_rate_root, val_fraction=0.5, seed=3)
    b = read_ct_rate(ct_rate_root, val_fraction=0.5, seed=3)
    assert [(c.case_id, c.split) for c in a] == [(c.case_id, c.split) for c in b]
    val_patients = {c.patient_id for c in a if c.split == "val"}
    assert len(val_patients) == 1
    assert all(c.split == "val" for c in a if c.patient_id in val_patients)  # both scans of train_1 move together
    assert [c.split for c in a if c.case_id == "valid_1_a_1"] == ["test"]
    many = [c.evolve(case_id=f"{c.case_id}_{i}", patient_id=f"p{i}") for i, c in enumerate(a * 25)]
    picks = {
        tuple(sorted(c.patient_id for c in carve_val_split(many, 0.2, seed) if c.split == "val")) for seed in range(4)
    }
    assert len(picks) > 1  # the seed matters
    with pytest.raises(InvalidInputError, match="val_fraction"):
        read_ct_rate(ct_rate_root, val_fraction=1.0)


def test_rescale_detection() -> None:
    rescale = {"slope": 1.0, "intercept": -1024.0}
    raw = np.array([0, 24, 3000], dtype=np.uint16)
    hu = np.array([-1000, 0, 1500], dtype=np.int16)
    assert needs_rescale(raw, rescale, "auto")
    assert not needs_rescale(hu, rescale, "auto")  # already HU: never rescaled twice
    assert not needs_rescale(raw, None, "auto")
    assert needs_rescale(hu, rescale, "always") and not needs_rescale(raw, rescale, "never")
    with pytest.raises(InvalidInputError, match="rescale policy"):
        needs_rescale(raw, rescale, "sometimes")
