"""Grid helpers: canonical orientation, mm-sized structuring elements, pooling, hole filling, resampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctrag.segment.grid import (
    CanonicalView,
    block_mean,
    block_repeat,
    ellipsoid_mm,
    fill_holes_axial,
    pooling_factors,
    resample_labels_nearest,
)

AFFINES = {
    "LPS": np.array([[-3.0, 0, 0, 200.0], [0, -3.0, 0, 60.0], [0, 0, 5.0, -600.0], [0, 0, 0, 1]]),
    "RAS": np.diag([2.0, 2.5, 4.0, 1.0]),
    "ASL": np.array([[0, 0, -2.0, 10.0], [3.0, 0, 0, -5.0], [0, 4.0, 0, 7.0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("code", list(AFFINES))
def test_canonical_view_roundtrip_keeps_world_positions(code, rng) -> None:
    affine = AFFINES[code]
    assert "".join(nib.aff2axcodes(affine)) == code
    arr = rng.integers(0, 1000, size=(7, 5, 6)).astype(np.int16)
    view = CanonicalView.of(arr.shape, affine)
    canon = view.to_canonical(arr)
    assert canon.shape == view.shape and "".join(nib.aff2axcodes(view.affine)) == "RAS"
    np.testing.assert_array_equal(view.from_canonical(canon), arr)
    # every value sits at the same world position in both views
    for ijk in [(0, 0, 0), (6, 4, 5), (3, 1, 2)]:
        world = affine[:3, :3] @ ijk + affine[:3, 3]
        cijk = np.linalg.solve(view.affine[:3, :3], world - view.affine[:3, 3]).round().astype(int)
        assert canon[tuple(cijk)] == arr[ijk]
        np.testing.assert_allclose(view.world(cijk)[0], world)


def test_ellipsoid_is_sized_in_millimetres() -> None:
    se = ellipsoid_mm(6.0, (3.0, 3.0, 8.0))
    assert se.shape == (5, 5, 1)  # 2 voxels each way in-plane, flat across 8 mm slices
    assert se[2, 2, 0] and se[0, 2, 0] and not se[0, 0, 0]
    fine = ellipsoid_mm(6.0, (0.75, 0.75, 3.0))
    assert fine.shape == (17, 17, 5)
    assert ellipsoid_mm(1.0, (3.0, 3.0, 3.0)).shape == (1, 1, 1)


def test_pooling_factors() -> None:
    assert pooling_factors((0.75, 0.75, 3.0), 3.0) == (4, 4, 1)
    assert pooling_factors((3.37, 3.37, 5.0), 3.0) == (1, 1, 1)
    assert pooling_factors((1.0, 1.0, 1.0), 0.0) == (1, 1, 1)


def test_block_mean_keeps_geometry() -> None:
    affine = AFFINES["LPS"]
    arr = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    pooled, new_affine = block_mean(arr, affine, (2, 2, 1))
    assert pooled.shape == (3, 2, 3)  # 5 -> edge-padded to 6
    assert pooled[0, 0, 0] == pytest.approx(arr[0:2, 0:2, 0].mean())
    assert pooled[2, 1, 2] == pytest.approx(arr[4, 2:4, 2].mean())  # padded block repeats the edge
    centre = np.mean([affine[:3, :3] @ (i, j, 0) + affine[:3, 3] for i in (0, 1) for j in (0, 1)], axis=0)
    np.testing.assert_allclose(new_affine[:3, 3], centre)
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), (6.0, 6.0, 5.0))
    back = block_repeat(np.ones(pooled.shape, dtype=np.uint8), (2, 2, 1), arr.shape)
    assert back.shape == arr.shape


def test_fill_holes_axial_variants() -> None:
    mask = np.zeros((9, 9, 3), dtype=bool)
    mask[1:8, 1:8, :] = True
    mask[3:6, 3:6, :] = False  # enclosed 3x3 hole in every slice
    mask[0:5, 4, 1] = False  # slice 1: a channel from the hole to the border
    filled = fill_holes_axial(mask)
    assert filled[4, 4, 0] and filled[4, 4, 2] and not filled[4, 4, 1]
    closed = fill_holes_axial(mask, closed_slices=np.array([False, True, False]))
    assert closed[4, 4, 1] and closed[0, 4, 1]  # border treated as body: the channel is inside too
    small_only = fill_holes_axial(mask, max_hole_mm2=4.0, pixel_mm2=1.0)
    assert not small_only[4, 4, 0]  # a 9 mm^2 hole is above the limit


def test_resample_labels_nearest_exact_for_flips_and_shifts(rng) -> None:
    labels = rng.integers(0, 5, size=(6, 7, 4)).astype(np.uint8)
    affine = AFFINES["RAS"]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 5
    flipped_affine = affine @ flip
    out = resample_labels_nearest(labels[::-1].copy(), flipped_affine, labels.shape, affine)
    np.testing.assert_array_equal(out, labels)
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0]  # target grid starts one voxel further along i
    out = resample_labels_nearest(labels, affine, labels.shape, shifted)
    np.testing.assert_array_equal(out[:-1], labels[1:])
    assert not out[-1].any()  # outside the source: background
