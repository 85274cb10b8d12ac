"""Segment test support: the shipped CTs and their classical masks, computed once per session (about a second each).

Imported as ``testsupport.segment_data``; its fixtures are registered once, in the root ``tests/conftest.py``, so
tests/segment and tests/cli (``ctrag segment``) share one set of masks per session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.nifti import Volume, load_volume
from ctrag.segment import classical_segment

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "ct"

CTS: dict[str, Path] = {
    "A0001": SAMPLE / "lowres" / "lung_pet_ct_dx_A0001_ct_128.nii.gz",
    "A0002": SAMPLE / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz",
    "lidc": SAMPLE / "extra" / "lidc_idri_0314_ct_lowres.nii.gz",
    "cta": SAMPLE / "lowres" / "ts_chest_crop_ct_3mm.nii.gz",
    "ts": SAMPLE / "ts_example_ct_3mm.nii.gz",
    "ts_sm": SAMPLE / "lowres" / "ts_example_ct_sm_3mm.nii.gz",
}
TS_MASKS: dict[str, Path] = {
    "ts": SAMPLE / "ts_example_ct_3mm_seg_total_fast.nii.gz",
    "ts_sm": SAMPLE / "lowres" / "ts_example_ct_sm_3mm_seg_total.nii.gz",
    "cta": SAMPLE / "lowres" / "ts_chest_crop_ct_3mm_seg_total_subset.nii.gz",
}


@pytest.fixture(scope="session")
def cts() -> dict[str, Volume]:
    return {name: load_volume(path) for name, path in CTS.items()}


@pytest.fixture(scope="session")
def classical(cts: dict[str, Volume]) -> dict[str, Volume]:
    """Classical coarse masks of every shipped CT with default settings."""
    return {name: classical_segment(vol) for name, vol in cts.items()}


@pytest.fixture(scope="session")
def ts_masks() -> dict[str, Volume]:
    return {name: load_volume(path) for name, path in TS_MASKS.items()}


class Measures:
    """Small geometric measurements used by the tests (a fixture, since test folders are not packages)."""

    @staticmethod
    def dice(a: np.ndarray, b: np.ndarray) -> float:
        total = int(a.sum()) + int(b.sum())
        return 2.0 * float((a & b).sum()) / total if total else float("nan")

    @staticmethod
    def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Centroid of a boolean mask in world RAS mm (x grows towards the patient's right)."""
        ijk = np.argwhere(mask).mean(axis=0)
        return np.asarray(affine[:3, :3] @ ijk + affine[:3, 3])

    @staticmethod
    def volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
        return float(mask.sum()) * float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0


@pytest.fixture(scope="session")
def measure() -> type[Measures]:
    return Measures
