"""Library-level ingest: a CT-RATE-layout folder (raw values, metadata), consistency checks, progress."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from ctrag.data.case import Case, Corpus
from ctrag.data.ingest import check_corpus_consistency, check_report, ingest, validate_case
from ctrag.data.nifti import load_volume
from ctrag.errors import DataValidationError


def test_ingest_ct_rate_folder_applies_raw_rescale(ct_rate_root: Path, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    result = ingest([ct_rate_root], tmp_path / "out", progress=lambda s, d, t: calls.append((s, d, t)))
    assert [c[1] for c in calls] == [1, 2, 3, 4] and {c[2] for c in calls} == {4}
    assert {c[0] for c in calls} == {"validate"}  # one stage, ctrag.utils.progress.ProgressFn
    corpus = Corpus.load(tmp_path / "out")
    assert corpus.counts() == {"train": 3, "val": 0, "test": 1}
    raw = corpus.get("train_2_a_1")
    assert raw.extra["rescale_applied"] is True
    # the stored file has no negative value; after the metadata rescale the recorded percentiles are in HU
    assert load_volume(raw.volume_path or "").array.min() >= 0
    assert raw.extra["hu_p1"] <= -990 and raw.extra["hu_p99"] < 1500
    assert corpus.get("train_1_a_1").extra["rescale_applied"] is False  # already HU
    assert corpus.get("valid_1_a_1").labels is not None
    assert result.warnings == [] and result.ok
    report = json.loads((tmp_path / "out" / "validation_report.json").read_text(encoding="utf-8"))
    assert report["sources"] == [{"layout": "ct-rate", "path": str(ct_rate_root)}]


def test_ingest_ct_rate_val_fraction_and_explicit_layout(ct_rate_root: Path, tmp_path: Path) -> None:
    result = ingest([ct_rate_root], tmp_path / "o", layout="ct-rate", val_fraction=0.5, seed=1)
    assert result.corpus.counts()["val"] in (1, 2) and result.corpus.counts()["test"] == 1
    assert len({c.patient_id for c in result.corpus if c.split == "val"}) == 1


def test_metadata_spacing_mismatch_is_a_warning(ct_rate_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ctrate"
    shutil.copytree(ct_rate_root, root)
    meta = root / "dataset" / "metadata" / "validation_metadata.csv"
    rows = list(csv.reader(meta.read_text(encoding="utf-8").splitlines()))
    rows[1][1] = "[0.7, 0.7]"
    with open(meta, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    result = ingest([root], tmp_path / "out")
    assert [w.case_id for w in result.warnings] == ["valid_1_a_1"]
    assert "differs from the metadata CSV spacing" in result.warnings[0].message
    assert "## Warnings" in (tmp_path / "out" / "validation_report.md").read_text(encoding="utf-8")


def test_missing_ct_rate_report_is_skipped_not_dropped(ct_rate_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ctrate"
    shutil.copytree(ct_rate_root, root)
    reports = root / "dataset" / "radiology_text_reports" / "validation_reports.csv"
    reports.write_text(reports.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"valid_1_a_1.*missing report"):
        ingest([root], tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
    result = ingest([root], tmp_path / "out", allow_skips=True)
    assert [s.case_id for s in result.skipped] == ["valid_1_a_1"]
    assert "valid_1_a_1" not in Corpus.load(tmp_path / "out")


def test_consistency_keeps_first_duplicate_and_drops_leaking_patients() -> None:
    def case(cid: str, pid: str, split: str = "train") -> Case:
        return Case(cid, pid, split, report_findings="x", report_source="radiologist", dataset="d")

    kept, skipped = check_corpus_consistency(
        [case("a", "p1"), case("a", "p9"), case("b", "p2"), case("c", "p2", "test"), case("d", "p3")]
    )
    assert [c.case_id for c in kept] == ["a", "d"] and kept[0].patient_id == "p1"
    assert [s.case_id for s in skipped] == ["a", "b", "c"]
    assert "b (train), c (test)" in skipped[1].reason


def test_report_rules() -> None:
    base = Case("c", "p", "train", volume_path="/x.nii.gz")
    check_report(base)  # a CT without text is fine when report_source is none
    with pytest.raises(DataValidationError, match="over the limit of 100 bytes"):
        check_report(base.evolve(report_findings="n" * 101, report_source="radiologist"), max_report_bytes=100)
    with pytest.raises(DataValidationError, match="NUL"):
        check_report(base.evolve(report_findings="a\x00b", report_source="radiologist"))
    with pytest.raises(DataValidationError, match="mask-only case has no report text"):
        check_report(base.evolve(volume_path=None, mask_path="/m.nii.gz"))


def test_validate_case_records_grid_and_labels(sample_dir: Path) -> None:
    case = Case(
        "crop",
        "p",
        "train",
        report_findings="Heart.",
        report_source="annotation-derived",
        volume_path=str(sample_dir / "ct" / "lowres" / "ts_chest_crop_ct_3mm.nii.gz"),
        mask_path=str(sample_dir / "ct" / "lowres" / "ts_chest_crop_ct_3mm_seg_total_subset.nii.gz"),
        mask_source="totalsegmentator-total-subset",
    )
    checked, warnings = validate_case(case)
    assert warnings == []
    assert checked.shape == (60, 63, 82) and checked.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert checked.extra["mask_labels"] == [32, 51, 52, 54, 56, 58]
    assert checked.extra["orientation"] == "LPS" and checked.extra["hu_p1"] < -900
    assert case.extra == {}  # the input case is not modified
