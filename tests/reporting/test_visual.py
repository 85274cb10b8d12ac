"""Visual front end on the shipped TotalSegmentator CTA crop (heart, aorta, T12) and its mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import DataValidationError
from ctrag.reporting.sentences import REGIONS
from ctrag.reporting.visual import REGION_LABELS, GeometryEncoder, VisualConfig, VisualFrontEnd, region_masks

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "ct" / "lowres"


@pytest.fixture(scope="module")
def chest_crop() -> tuple[Volume, Volume]:
    return load_volume(SAMPLE / "ts_chest_crop_ct_3mm.nii.gz"), load_volume(
        SAMPLE / "ts_chest_crop_ct_3mm_seg_total_subset.nii.gz"
    )


@pytest.fixture(scope="module")
def front_end() -> VisualFrontEnd:
    return VisualFrontEnd(VisualConfig(size=(32, 32, 32), patch_size=(16, 16, 16), geometry_size=(8, 8, 8)))


def test_every_region_has_a_documented_source() -> None:
    assert list(REGION_LABELS) == list(REGIONS)
    sourced = {r for r, v in REGION_LABELS.items() if v["totalseg"] or v["coarse"] or v["derived"]}
    assert set(REGIONS) - sourced == {"breast"}  # no TotalSegmentator or coarse class is a breast


def test_texture_ignores_voxels_outside_the_region(
    chest_crop: tuple[Volume, Volume], front_end: VisualFrontEnd
) -> None:
    ct, mask = chest_crop
    base = front_end.extract(ct, mask)
    heart = REGIONS.index("heart")
    assert bool(base.present[heart]) and base.mask_source == "given" and base.label_set == "totalseg"
    heart_mask = region_masks(np.asarray(mask.array), "totalseg", ["heart"])[0]
    changed = np.asarray(ct.array).astype(np.int16).copy()
    rng = np.random.default_rng(0)
    noise = rng.integers(-300, 300, size=changed.shape).astype(np.int16)
    changed[~heart_mask] = np.clip(changed[~heart_mask] + noise[~heart_mask], -1024, 3000)
    other = front_end.extract(ct.with_array(changed), mask)
    assert torch.equal(other.texture[heart], base.texture[heart])
    med = REGIONS.index("mediastinum")  # the aorta's voxels did change: its texture must move
    assert not torch.allclose(other.texture[med], base.texture[med])
    assert not torch.allclose(other.global_vector, base.global_vector)


def test_empty_regions_are_flagged_not_fatal(chest_crop: tuple[Volume, Volume], front_end: VisualFrontEnd) -> None:
    ct, mask = chest_crop
    feats = front_end.extract(ct, mask)
    assert "breast" in feats.missing_regions and "lung" in feats.missing_regions
    for r in feats.missing_regions:
        i = REGIONS.index(r)
        assert float(feats.texture[i].abs().sum()) == 0.0 and float(feats.geometry[i].sum()) == 0.0
    assert any("breast" in n for n in feats.notes)
    assert feats.geometry.shape == (len(REGIONS), 1, 8, 8, 8)
    assert 0.0 < float(feats.geometry[REGIONS.index("heart")].max()) <= 1.0


def test_same_world_in_another_voxel_order_gives_the_same_features(
    chest_crop: tuple[Volume, Volume], front_end: VisualFrontEnd
) -> None:
    """Storing the CT with its first axis reversed (and the affine saying so) is the same image: no mirroring."""
    ct, mask = chest_crop
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, ct.shape[0] - 1
    ct2 = Volume(np.ascontiguousarray(np.asarray(ct.array)[::-1]), ct.affine @ flip)
    mask2 = Volume(np.ascontiguousarray(np.asarray(mask.array)[::-1]), mask.affine @ flip)
    a, b = front_end.extract(ct, mask), front_end.extract(ct2, mask2)
    torch.testing.assert_close(a.geometry, b.geometry)
    torch.testing.assert_close(a.global_vector, b.global_vector, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.texture, b.texture, atol=1e-4, rtol=1e-4)


def test_mask_from_the_segmenter_is_recorded(chest_crop: tuple[Volume, Volume], front_end: VisualFrontEnd) -> None:
    feats = front_end.extract(chest_crop[0])
    assert feats.mask_source == "segmenter:classical" and feats.label_set == "coarse"
    assert "heart" in feats.missing_regions  # the classical segmenter has no heart class


def test_mask_on_another_grid_is_refused(chest_crop: tuple[Volume, Volume], front_end: VisualFrontEnd) -> None:
    ct, mask = chest_crop
    with pytest.raises(DataValidationError):
        front_end.extract(ct, Volume(np.asarray(mask.array)[:-1], mask.affine))


def test_geometry_encoder_shapes() -> None:
    enc = GeometryEncoder(12)
    assert enc(torch.zeros(3, 1, 8, 8, 8)).shape == (3, 12)
