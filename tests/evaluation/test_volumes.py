"""Evaluation volume preparation: one spacing and one field of view for real and generated CTs alike."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.data.nifti import Volume
from ctrag.data.transforms import PreprocessConfig, load_preprocess_config
from ctrag.evaluation.volumes import evaluation_grid, evaluation_spacing, prepare_volume

TINY = load_preprocess_config("tiny-cpu")  # 4 mm, 64 x 64 x 32: a 256 x 256 x 128 mm field of view
SHAPE = (64, 64, 32)


def _body_width_mm(hu: np.ndarray, spacing: float, axis: int = 0) -> float:
    """Extent of the body (HU > -500) through the centre of the volume along ``axis``, in mm."""
    centre = [s // 2 for s in hu.shape]
    line = np.take(np.take(hu, centre[2], axis=2), centre[1 if axis == 0 else 0], axis=1 if axis == 0 else 0)
    inside = np.flatnonzero(line > -500)
    return float(inside[-1] - inside[0] + 1) * spacing


def test_two_real_cts_of_different_spacing_cover_the_same_physical_extent(real_volumes) -> None:  # type: ignore[no-untyped-def]
    """Bug 2d: resizing by voxel count put a 431 mm and a 331 mm field of view on one array at two scales."""
    a, b = real_volumes["A0001"], real_volumes["A0002"]  # 3.37 x 3.37 x 5 mm vs 2.59 x 2.59 x 8 mm
    assert not np.allclose(a.spacing, b.spacing)
    shape96 = (96, 96, 96)  # over the default (Text2CT) 384 mm field of view: 4 mm voxels
    spacing = evaluation_spacing(shape96)
    assert spacing == pytest.approx((4.0, 4.0, 4.0))
    grids = [evaluation_grid(v, shape96) for v in (a, b)]
    for shape, affine in grids:  # same voxel size and the same extent in mm for both
        assert shape == shape96 and np.allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing)
    prepared = [prepare_volume(v, shape96) for v in (a, b)]
    assert all(p.shape == shape96 and p.dtype == np.float32 for p in prepared)
    assert all(float(p.min()) >= 0.0 and float(p.max()) <= 1.0 for p in prepared)
    # a body that is W mm wide in the file is W mm wide in the prepared array (within a voxel or two)
    for vol, arr in zip((a, b), prepared, strict=True):
        from ctrag.evaluation.volumes import to_ras

        ras = to_ras(vol)
        true_width = _body_width_mm(np.asarray(ras.array, dtype=np.float32), float(ras.spacing[0]))
        prepared_width = _body_width_mm(arr * 2000.0 - 1000.0, spacing[0])
        assert 100 < true_width < 384  # inside the field of view, so it is not cropped
        assert prepared_width == pytest.approx(true_width, abs=2 * spacing[0] + ras.spacing[0])


def test_a_volume_already_on_the_grid_passes_unchanged_and_a_crop_keeps_its_place(real_volumes) -> None:  # type: ignore[no-untyped-def]
    """A generated-like volume at 4 mm on 64x64x32 is the evaluation grid itself; a half-height crop of a scan
    stays at its physical place (padded with air), it is not stretched to fill the array."""
    from ctrag.data import transforms

    ct = real_volumes["A0001"]
    shape, affine = evaluation_grid(ct, SHAPE, TINY)
    on_grid = transforms.resample_ct(ct, shape, affine).array
    generated = Volume(array=on_grid, affine=affine)
    assert np.allclose(prepare_volume(generated, SHAPE, space=TINY), (np.clip(on_grid, -1000, 1000) + 1000) / 2000)
    half = Volume(array=np.asarray(generated.array)[:, :, 8:24], affine=affine @ np.diag([1, 1, 1, 1.0]))
    half.affine[:3, 3] = affine[:3, :3] @ np.array([0, 0, 8]) + affine[:3, 3]
    prepared_half = prepare_volume(half, SHAPE, space=TINY)
    full = prepare_volume(generated, SHAPE, space=TINY)
    assert np.abs(prepared_half[:, :, 9:23] - full[:, :, 9:23]).mean() < 0.01  # same anatomy at the same place
    assert float(prepared_half[:, :, :7].max()) == 0.0 and float(prepared_half[:, :, 25:].max()) == 0.0  # air


def test_default_space_is_the_text2ct_field_of_view() -> None:
    assert evaluation_spacing((256, 256, 128)) == pytest.approx((1.5, 1.5, 3.0))
    assert evaluation_spacing((512, 512, 128), PreprocessConfig()) == pytest.approx((0.75, 0.75, 3.0))
    with pytest.raises(ValueError, match="3 positive"):
        evaluation_spacing((0, 4, 4))
