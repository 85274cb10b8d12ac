"""Dice / HD95 on a real TotalSegmentator mask: identity, hand-computed shifts, MONAI and scipy cross-checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctrag.data.labels import COARSE_LABELS, to_coarse
from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import DataValidationError
from ctrag.evaluation.metrics.segmentation import dice_per_label, hd95_per_label, spatial_agreement


@pytest.fixture(scope="module")
def coarse_mask(ts_ct_and_mask: tuple[Path, Path]) -> Volume:
    """Real TotalSegmentator "total" mask (122x101x30, 3 mm) folded into the coarse labels."""
    mask = load_volume(ts_ct_and_mask[1])
    return mask.with_array(to_coarse(np.asarray(mask.array)))


def _shift(arr: np.ndarray, s: int, axis: int) -> np.ndarray:
    out = np.zeros_like(arr)
    src = [slice(None)] * arr.ndim
    dst = [slice(None)] * arr.ndim
    src[axis], dst[axis] = slice(0, arr.shape[axis] - s), slice(s, None)
    out[tuple(dst)] = arr[tuple(src)]
    return out


def test_identical_masks_score_perfectly(coarse_mask: Volume) -> None:
    present = sorted(int(v) for v in np.unique(coarse_mask.array) if v)
    assert len(present) >= 3  # lungs, bone, body at least: a real multi-label case
    res = spatial_agreement(coarse_mask, coarse_mask)
    assert res.dice_mean == pytest.approx(1.0)
    assert res.hd95_mean == pytest.approx(0.0)
    assert res.missing == []


def test_box_shift_matches_hand_computed_dice_and_hd95() -> None:
    """A 10x8x6 box shifted by 2 voxels along i: Dice = (10-2)/10; HD95 at 2 mm spacing = 2 * 2 mm."""
    a = np.zeros((20, 20, 20), dtype=np.uint8)
    a[4:14, 5:13, 7:13] = 2
    b = _shift(a, 2, axis=0)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    res = spatial_agreement(Volume(b, affine), Volume(a, affine))
    assert res.dice["lung_left"] == pytest.approx(0.8)
    assert res.hd95["lung_left"] == pytest.approx(4.0)
    assert math.isnan(res.dice["body"])  # not in the reference: reported as NaN, not averaged
    assert res.dice_mean == pytest.approx(0.8)


def test_shifted_real_mask_dice_equals_voxel_count(coarse_mask: Volume) -> None:
    ref = np.asarray(coarse_mask.array)
    pred = _shift(ref, 3, axis=1)
    res = spatial_agreement(coarse_mask.with_array(pred), coarse_mask)
    for lab, name in COARSE_LABELS.items():
        a, b = pred == lab, ref == lab
        if not b.any():
            assert math.isnan(res.dice[name])
            continue
        assert res.dice[name] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    assert 0.0 < res.dice_mean < 1.0


def _hd95_scipy(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Independent HD95: surface voxels by erosion, EDT in mm, 95th percentile of both directed distances."""

    def edges(m: np.ndarray) -> np.ndarray:
        return m & ~ndimage.binary_erosion(m)

    ep, er = edges(pred), edges(ref)
    d_to_r = ndimage.distance_transform_edt(~er, sampling=spacing)[ep]
    d_to_p = ndimage.distance_transform_edt(~ep, sampling=spacing)[er]
    return float(max(np.percentile(d_to_r, 95), np.percentile(d_to_p, 95)))


def test_hd95_matches_monai_and_an_independent_computation(coarse_mask: Volume) -> None:
    from monai.metrics import compute_hausdorff_distance

    ref = np.asarray(coarse_mask.array)
    pred = _shift(_shift(ref, 2, axis=0), 1, axis=2)
    spacing = (0.8, 1.5, 3.0)  # anisotropic on purpose: spacing must reach the distance transform
    labels = [2, 3, 5]
    ours = hd95_per_label(pred, ref, labels, spacing)
    for lab in labels:
        p = torch.from_numpy(pred == lab)[None, None].float()
        r = torch.from_numpy(ref == lab)[None, None].float()
        monai_value = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing))
        assert ours[lab] == pytest.approx(monai_value, rel=1e-6)
        assert ours[lab] == pytest.approx(_hd95_scipy(pred == lab, ref == lab, spacing), rel=1e-6)
    assert dice_per_label(ref, ref, labels) == {2: 1.0, 3: 1.0, 5: 1.0}


def test_missing_structure_is_penalised_not_dropped(coarse_mask: Volume) -> None:
    pred = np.asarray(coarse_mask.array).copy()
    pred[pred == 3] = 1  # right lung not found
    res = spatial_agreement(coarse_mask.with_array(pred), coarse_mask)
    assert res.missing == ["lung_right"]
    assert res.dice["lung_right"] == 0.0
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(coarse_mask.shape, coarse_mask.spacing, strict=True)))
    assert res.hd95["lung_right"] == pytest.approx(diag)
    assert res.dice_mean < 1.0


def test_masks_on_different_grids_are_refused(coarse_mask: Volume) -> None:
    moved = Volume(np.asarray(coarse_mask.array), coarse_mask.affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(DataValidationError, match="another grid"):
        spatial_agreement(moved, coarse_mask)
