"""CT-RATE readers: the shipped CT-CLIP classifier CSVs and a CT-RATE-layout folder built from real shipped CTs."""

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
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.reports import split_joined_report
from ctrag.errors import InvalidInputError


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


def _copy_with_duplicate(ct_rate_root: Path, tmp_path: Path, relative: str, name: str) -> tuple[Path, int, int]:
    """A copy of the CT-RATE folder whose CSV ``relative`` holds the row of ``name`` twice (second copy appended).

    Returns the copy and the file lines of both rows.
    """
    root = tmp_path / "copy"
    shutil.copytree(ct_rate_root, root)
    path = root / "dataset" / relative
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    first = next(i for i, r in enumerate(rows) if r[0] == name)
    with open(path, "a", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerow(rows[first])
    return root, first + 1, len(rows) + 1


@pytest.mark.parametrize(
    "relative",
    [
        "radiology_text_reports/train_reports.csv",
        "multi_abnormality_labels/train_predicted_labels.csv",
        "metadata/train_metadata.csv",
    ],
)
def test_two_rows_for_one_volume_are_refused_naming_both(ct_rate_root: Path, tmp_path: Path, relative: str) -> None:
    """A duplicate VolumeName used to keep the last row silently (the first report vanished)."""
    root, first, second = _copy_with_duplicate(ct_rate_root, tmp_path, relative, "train_1_a_2.nii.gz")
    with pytest.raises(InvalidInputError) as err:
        read_ct_rate(root)
    message = str(err.value)
    assert Path(relative).name in message and "'train_1_a_2.nii.gz' appears in two rows" in message
    assert f"(lines {first} and {second})" in message


def test_two_rows_for_one_accession_in_a_map_are_refused(ct_rate_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "classifier"
    shutil.copytree(ct_rate_dir, folder)
    mapping = folder / "map_val_classifier.csv"
    lines = mapping.read_text(encoding="utf-8").splitlines()
    accession = lines[1].split(",")[0]
    mapping.write_text("\n".join([*lines, f"{accession},train_1_a"]) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=rf"AccessionNo '{accession}' appears in two rows \(lines 2 and"):
        read_ctclip_classifier(folder)


def test_reports_without_volumes_name_the_cli_flag(ct_rate_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "reports_only"
    shutil.copytree(ct_rate_root / "dataset" / "radiology_text_reports", root / "dataset" / "radiology_text_reports")
    with pytest.raises(InvalidInputError, match="no CT-RATE volume folder") as err:
        read_ct_rate(root)
    assert "ctrag ingest --include-report-only" in str(err.value)
    cases = read_ct_rate(root, include_report_only=True)
    assert cases and all(c.volume_path is None and c.has_report for c in cases)


def test_labels_csv_without_every_label_column_is_a_file_error(ct_rate_root: Path, tmp_path: Path) -> None:
    """Used to skip every case of the part, one by one, with "label ... must be 0 or 1, got ''"."""
    root = tmp_path / "copy"
    shutil.copytree(ct_rate_root, root)
    path = root / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv"
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [r[:-1] for r in csv.reader(fh)]  # drop the last label column
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(
        InvalidInputError, match=rf"train_predicted_labels\.csv: missing column\(s\) \['{CT_RATE_LABELS[-1]}'\]"
    ):
        read_ct_rate(root)
