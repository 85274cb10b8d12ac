from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctrag.data.labels import totalseg_v2_labels
from ctrag.data.nifti import (
    check_ct_intensity,
    check_label_mask,
    check_same_grid,
    load_volume,
    save_volume,
)
from ctrag.errors import DataValidationError


def test_real_ct_loads_with_affine(lowres_chest_ct: Path) -> None:
    vol = load_volume(lowres_chest_ct)
    assert vol.shape == (128, 128, 30)
    assert vol.orientation == "LPS"
    np.testing.assert_allclose(vol.spacing, (2.586, 2.586, 8.0), atol=1e-3)
    p1, p99 = check_ct_intensity(vol)
    assert p1 < -900 and p99 > 0


def test_save_roundtrip_keeps_affine(tmp_path: Path, lowres_chest_ct: Path) -> None:
    vol = load_volume(lowres_chest_ct)
    out = save_volume(tmp_path / "copy.nii.gz", vol.array, vol.affine, dtype=np.int16)
    back = load_volume(out)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine)
    assert back.meta["qform_code"] == 1 and back.meta["sform_code"] == 1


def test_truncated_gzip_is_refused(tmp_path: Path, lowres_chest_ct: Path) -> None:
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(lowres_chest_ct.read_bytes()[:20_000])
    with pytest.raises(DataValidationError, match="unreadable or truncated"):
        load_volume(bad)


def test_garbage_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "junk.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(DataValidationError, match=r"junk\.nii\.gz"):
        load_volume(bad)


def test_2d_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), str(path))
    with pytest.raises(DataValidationError, match="expected a 3-D volume, got 2-D"):
        load_volume(path)


def test_missing_orientation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "noaff.nii.gz"
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), None)
    img.header["qform_code"] = 0
    img.header["sform_code"] = 0
    nib.save(img, str(path))
    with pytest.raises(DataValidationError, match="no orientation information"):
        load_volume(path)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda a: (a + 1024).clip(0, 4095), "raw stored values"),
        (lambda a: ((a.clip(-160, 240) + 160) / 400 * 255).astype(np.uint8), "windowed 8-bit"),
        (lambda a: (a.clip(-1000, 1000) + 1000) / 2000.0, "look normalised"),
    ],
)
def test_non_hu_intensities_are_named(lowres_chest_ct: Path, transform, message: str) -> None:
    vol = load_volume(lowres_chest_ct)
    with pytest.raises(DataValidationError, match=message):
        check_ct_intensity(vol.with_array(transform(vol.array.astype(np.float32))))


def test_mask_on_other_grid_is_refused(ts_ct_and_mask: tuple[Path, Path]) -> None:
    ct, mask = (load_volume(p) for p in ts_ct_and_mask)
    check_same_grid(mask, ct)  # the shipped pair is on one grid
    shifted = mask.with_array(mask.array)
    shifted.affine[:3, 3] += 3.0
    with pytest.raises(DataValidationError, match="on another grid"):
        check_same_grid(shifted, ct)


def test_mask_labels_checked(ts_ct_and_mask: tuple[Path, Path]) -> None:
    mask = load_volume(ts_ct_and_mask[1])
    allowed = set(totalseg_v2_labels())
    present = check_label_mask(mask, allowed)
    assert len(present) == 41 and set(present) <= allowed
    bad = mask.with_array(np.where(mask.array > 0, 200, 0).astype(np.uint8))
    with pytest.raises(DataValidationError, match=r"unknown label ids \[200\]"):
        check_label_mask(bad, allowed)


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    """A DICOM series folder passed as the CT used to be reported as 'file not found'."""
    series = tmp_path / "series"
    series.mkdir()
    with pytest.raises(DataValidationError, match="is a folder, not a NIfTI file"):
        load_volume(series)
