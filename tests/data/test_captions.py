"""Annotation-derived captions: the sample cases.csv text is exactly what the annotations produce."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from ctrag.data.captions import caption_from_mask, caption_tumour_box, lung_extent_z
from ctrag.data.nifti import load_volume
from ctrag.data.reports import parse_report


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return {r["case_id"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def ct_rows(sample_dir: Path) -> dict[str, dict[str, str]]:
    return _rows(sample_dir / "ct" / "cases.csv")


@pytest.mark.parametrize(("case", "side", "zone"), [("A0001", "left", "upper"), ("A0002", "right", "middle")])
def test_tumour_box_caption_matches_csv(
    sample_dir: Path, ct_rows: dict[str, dict[str, str]], case: str, side: str, zone: str
) -> None:
    box = json.loads((sample_dir / "ct" / f"lung_pet_ct_dx_{case}_bbox.json").read_text(encoding="utf-8"))
    ct = load_volume(sample_dir / "ct" / "lowres" / f"lung_pet_ct_dx_{case}_ct_128.nii.gz")
    cap = caption_tumour_box(box, ct)
    row = ct_rows[f"lung_pet_ct_dx_{case}"]
    assert (cap.findings, cap.impression) == (row["findings"], row["impression"])
    # side agrees with the README (A0001 left paravertebral, A0002 right hilar); pathology from the annotations
    assert cap.facts["side"] == side and cap.facts["lung_zone"] == zone
    assert cap.facts["pathology"] == "adenocarcinoma"
    vox, spacing = box["bbox_3d_voxel"], box["spacing_mm"]
    assert cap.facts["box_size_mm"][2] == round((vox["k_max"] - vox["k_min"] + 1) * spacing[2])
    # the tumour centre lies inside the lung craniocaudal extent measured on the CT
    z_lo, z_hi = lung_extent_z(ct)
    assert z_lo < cap.facts["box_centre_ras_mm"][2] < z_hi
    assert parse_report(cap.findings, cap.impression).abnormal_organs == ("lung",)


def test_mask_captions_match_csv(sample_dir: Path, ct_rows: dict[str, dict[str, str]]) -> None:
    ct_dir = sample_dir / "ct"
    crop = caption_from_mask(
        load_volume(ct_dir / "lowres" / "ts_chest_crop_ct_3mm_seg_total_subset.nii.gz"),
        load_volume(ct_dir / "lowres" / "ts_chest_crop_ct_3mm.nii.gz"),
    )
    assert (crop.findings, crop.impression) == (
        ct_rows["ts_chest_crop"]["findings"],
        ct_rows["ts_chest_crop"]["impression"],
    )
    assert crop.facts["cropped_field_of_view"] and crop.facts["aorta_median_hu"] > 150  # CTA crop
    assert crop.findings.startswith("Contrast-enhanced")
    example = caption_from_mask(
        load_volume(ct_dir / "ts_example_ct_3mm_seg_total_fast.nii.gz"),
        load_volume(ct_dir / "ts_example_ct_3mm.nii.gz"),
    )
    assert (example.findings, example.impression) == (
        ct_rows["ts_example_ct"]["findings"],
        ct_rows["ts_example_ct"]["impression"],
    )
    assert example.facts["region"] == "lower chest (lung bases), abdomen and pelvis"
    assert "vertebrae T11 to S1" in example.findings
    mask_only = caption_from_mask(
        load_volume(sample_dir / "ct_rate_nc_sa" / "ragtext2ct_ctrate_chest_mask_total.nii.gz")
    )
    row = _rows(sample_dir / "ct_rate_nc_sa" / "cases.csv")["ctrate_mask_ragtext2ct"]
    assert (mask_only.findings, mask_only.impression) == (row["findings"], row["impression"])
    assert "both lungs (all five lobes)" in mask_only.findings and "not available" in mask_only.findings


def test_captions_never_assert_normality(sample_dir: Path, ct_rows: dict[str, dict[str, str]]) -> None:
    """Missing annotations are not negative findings: no caption says "no ..." or "normal"."""
    rows = [*ct_rows.values(), *_rows(sample_dir / "ct_rate_nc_sa" / "cases.csv").values()]
    for row in rows:
        text = f"{row['findings']} {row['impression']}".lower()
        assert not re.search(r"\b(no|not|normal|unremarkable|without)\b", text.replace("not available", "")), row[
            "case_id"
        ]
        assert row["report_source"] == "annotation-derived"
