"""Fixtures for the data-layer tests: a small CT-RATE-layout folder built from real shipped CTs and reports."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.reports import split_joined_report

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
CTCLIP = SAMPLE / "ct_rate_nc_sa" / "ct_clip_text_classifier"

# CT-RATE volume name -> real shipped CT used as its voxels. train_2 is stored as raw values (HU + 1024, uint16)
# the way the first CT-RATE release stored them, with the rescale only in the metadata CSV.
CT_RATE_VOLUMES = {
    "train_1_a_1": "ct/lowres/lung_pet_ct_dx_A0002_ct_128.nii.gz",
    "train_1_a_2": "ct/lowres/ts_chest_crop_ct_3mm.nii.gz",
    "train_2_a_1": "ct/extra/lidc_idri_0314_ct_lowres.nii.gz",
    "valid_1_a_1": "ct/lowres/lung_pet_ct_dx_A0001_ct_128.nii.gz",
}
RAW_VOLUMES = {"train_2_a_1"}


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="session")
def real_report_rows() -> list[dict[str, str]]:
    """Five real CT-RATE reports (CT-CLIP val.csv rows) with their labels."""
    with open(CTCLIP / "val.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))[:5]


def build_ct_rate_folder(root: Path, report_rows: list[dict[str, str]]) -> Path:
    """CT-RATE layout under ``root/dataset`` with real CTs renamed to CT-RATE names and real reports.

    The reports are not the reports of these CTs (no shipped CT has its own report); the folder exercises the
    reader's layout handling only.
    """
    data = root / "dataset"
    names = list(CT_RATE_VOLUMES)
    for name, src in CT_RATE_VOLUMES.items():
        part = "train" if name.startswith("train") else "valid"
        patient = "_".join(name.split("_")[:2])
        scan = "_".join(name.split("_")[:3])
        dest = data / part / patient / scan / f"{name}.nii.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if name in RAW_VOLUMES:
            img = nib.load(str(SAMPLE / src))
            raw = (np.asanyarray(img.dataobj).astype(np.int32) + 1024).astype(np.uint16)
            out = nib.Nifti1Image(raw, img.affine)
            out.set_qform(img.affine, code=1)
            out.set_sform(img.affine, code=1)
            nib.save(out, str(dest))
        else:
            shutil.copyfile(SAMPLE / src, dest)
    # reports: one per volume plus one for a volume that is not on disk (report-only)
    report_names = [*names, "train_3_a_1"]
    rows = []
    for name, row in zip(report_names, report_rows, strict=False):
        sections = split_joined_report(row["report_text"])
        rows.append([f"{name}.nii.gz", "Not given.", "Non-contrast chest CT.", sections.findings, sections.impression])
    _write_csv(
        data / "radiology_text_reports" / "train_reports.csv",
        ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
        [r for r in rows if r[0].startswith("train")],
    )
    _write_csv(
        data / "radiology_text_reports" / "validation_reports.csv",
        ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
        [r for r in rows if r[0].startswith("valid")],
    )
    for part, prefix in (("train", "train"), ("valid", "valid")):
        label_rows = [
            [f"{name}.nii.gz", *(row[label] for label in CT_RATE_LABELS)]
            for name, row in zip(report_names, report_rows, strict=False)
            if name.startswith(prefix)
        ]
        _write_csv(
            data / "multi_abnormality_labels" / f"{part}_predicted_labels.csv",
            ["VolumeName", *CT_RATE_LABELS],
            label_rows,
        )
    for part, prefix in (("train", "train"), ("validation", "valid")):
        meta_rows = []
        for name in names:
            if not name.startswith(prefix):
                continue
            img = nib.load(
                str(
                    data
                    / ("train" if prefix == "train" else "valid")
                    / "_".join(name.split("_")[:2])
                    / "_".join(name.split("_")[:3])
                    / f"{name}.nii.gz"
                )
            )
            zooms = img.header.get_zooms()
            meta_rows.append([f"{name}.nii.gz", f"[{zooms[0]:.6f}, {zooms[1]:.6f}]", f"{zooms[2]:.6f}", 1, -1024])
        _write_csv(
            data / "metadata" / f"{part}_metadata.csv",
            ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"],
            meta_rows,
        )
    return root


@pytest.fixture(scope="session")
def ct_rate_root(tmp_path_factory: pytest.TempPathFactory, real_report_rows: list[dict[str, str]]) -> Path:
    return build_ct_rate_folder(tmp_path_factory.mktemp("ctrate"), real_report_rows)
