"""``segment_volume`` / ``segment_file`` / ``check_ct_volume`` / ``totalseg_to_coarse`` on the shipped CTs and the
real TotalSegmentator masks shipped with them (the TotalSegmentator backend itself is in ``test_totalseg.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.labels import COARSE_LABELS
from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import DataValidationError
from ctrag.segment import SegmentConfig, check_ct_volume, segment_file, segment_volume, totalseg_to_coarse


def test_classical_is_the_default_backend_and_keeps_the_grid(cts, classical) -> None:
    ct = cts["A0002"]
    labels = segment_volume(ct)
    np.testing.assert_array_equal(labels.array, classical["A0002"].array)
    assert labels.array.shape == ct.shape and labels.array.dtype == np.uint8
    np.testing.assert_allclose(labels.affine, ct.affine)
    assert labels.meta["method"] == "classical"


def test_segment_file_writes_the_mask_on_the_ct_grid(tmp_path: Path, cts, classical) -> None:
    ct = cts["lidc"]
    out = tmp_path / "lidc_mask.nii.gz"
    labels = segment_file(ct.path or "", out)
    assert labels.path == str(out)
    written = load_volume(out)
    np.testing.assert_array_equal(written.array, classical["lidc"].array)
    np.testing.assert_allclose(written.affine, ct.affine)
    assert written.meta["stored_dtype"] == "uint8"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda ct: Volume(ct.array[:, :, 10], ct.affine, "slice"), "expected a 3-D CT volume"),
        (lambda ct: Volume(ct.array[:, :, :1], ct.affine, "one"), "degenerate shape"),
        (lambda ct: Volume((ct.array + 1024.0) / 4096.0, ct.affine, "norm"), "look normalised"),
    ],
)
def test_what_is_not_a_ct_is_refused(cts, make, message: str) -> None:
    bad = make(cts["A0002"])
    with pytest.raises(DataValidationError, match=message):
        check_ct_volume(bad)
    with pytest.raises(DataValidationError, match=message):
        segment_volume(bad)


def test_intensity_check_can_be_switched_off_but_not_the_3d_check(cts) -> None:
    ct = cts["A0002"]
    shifted = Volume(ct.array.astype(np.float32) + 1024.0, ct.affine, "raw")  # raw scanner values, no negatives
    with pytest.raises(DataValidationError, match="no negative values"):
        segment_volume(shifted)
    assert segment_volume(shifted, SegmentConfig(check_intensity=False)).array.shape == ct.shape
    with pytest.raises(DataValidationError, match="expected a 3-D CT"):
        segment_volume(Volume(ct.array[:, :, 10], ct.affine, "slice"), SegmentConfig(check_intensity=False))


def test_totalseg_to_coarse_on_the_real_mask(cts, ts_masks, classical, measure) -> None:
    ct, total = cts["ts_sm"], ts_masks["ts_sm"]
    coarse = totalseg_to_coarse(total, ct)
    assert coarse.meta["labels"] == "coarse" and coarse.meta["converted_from"] == "total"
    assert set(np.unique(coarse.array)) <= {0, *COARSE_LABELS}
    # every TotalSegmentator voxel is body; the rest of the body comes from the CT
    assert np.all(coarse.array[total.array > 0] > 0)
    assert measure.dice(coarse.array > 0, classical["ts_sm"].array > 0) > 0.99
    for label in (2, 3):  # lungs agree with the classical segmenter
        assert measure.dice(coarse.array == label, classical["ts_sm"].array == label) > 0.92
    without_ct = totalseg_to_coarse(total)
    np.testing.assert_array_equal(without_ct.array > 0, total.array > 0)  # no CT: body = labelled voxels
    with pytest.raises(DataValidationError, match="another grid"):
        totalseg_to_coarse(total, cts["A0002"])
