"""Classical segmenter on the shipped real CTs: agreement with TotalSegmentator and anatomical sanity.

Floors were measured on these files (see the numbers in comments) and sit a few points below, so a regression
breaks them while re-runs do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ctrag.data.labels import COARSE_LABELS, to_coarse
from ctrag.data.nifti import Volume
from ctrag.segment import ClassicalConfig, classical_masks, classical_segment
from ctrag.segment.grid import block_mean, block_repeat

BODY, LUNG_L, LUNG_R, AIRWAY, BONE = 1, 2, 3, 4, 5
CHESTS = ("A0001", "A0002", "lidc")
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "ct"

# Dice of classical vs TotalSegmentator grouped to the coarse set. Measured: ts = 0.953 / 0.957 / 0.771,
# ts_sm = 0.959 / 0.968 / 0.677 (TotalSegmentator's bone includes costal cartilage, ~100 HU, out of reach of HU).
DICE_FLOORS = {
    "ts": {LUNG_L: 0.92, LUNG_R: 0.92, BONE: 0.73},
    "ts_sm": {LUNG_L: 0.92, LUNG_R: 0.93, BONE: 0.63},
}


def test_output_is_coarse_labels_on_input_grid(cts, classical) -> None:
    for name, vol in cts.items():
        mask = classical[name]
        assert mask.shape == vol.shape and mask.array.dtype == np.uint8
        np.testing.assert_allclose(mask.affine, vol.affine)
        assert set(np.unique(mask.array).tolist()) <= {0, *COARSE_LABELS}
        assert mask.meta["method"] == "classical" and mask.meta["label_names"] == COARSE_LABELS


@pytest.mark.parametrize("case", ["ts", "ts_sm"])
def test_agrees_with_totalsegmentator(case, cts, classical, ts_masks, measure) -> None:
    ours = classical[case].array
    reference = to_coarse(ts_masks[case].array, body=ours > 0)
    for label, floor in DICE_FLOORS[case].items():
        score = measure.dice(ours == label, reference == label)
        assert score >= floor, f"{case} {COARSE_LABELS[label]}: Dice {score:.3f} < {floor}"
    # Abdomen + lung bases: no trachea in the field of view, and no bowel gas passed off as lung or airway.
    assert not (ours == AIRWAY).any()
    pockets, _ = ndi.label((cts[case].array < -900) & (ours > 0))
    near_lung = ndi.binary_dilation(np.isin(reference, (LUNG_L, LUNG_R)), iterations=2)
    lung_pockets = np.unique(pockets[near_lung & (pockets > 0)])
    gas = (pockets > 0) & ~np.isin(pockets, lung_pockets)
    assert gas.sum() > 1000  # stomach/colon gas far from TotalSegmentator's lungs is there ...
    assert not np.isin(ours[gas], (LUNG_L, LUNG_R)).any()  # ... and none of it is called lung


@pytest.mark.parametrize("case", CHESTS)
def test_chest_anatomy_is_plausible(case, classical, measure) -> None:
    mask = classical[case]
    lab, aff = mask.array, mask.affine
    left, right, airway, bone = lab == LUNG_L, lab == LUNG_R, lab == AIRWAY, lab == BONE
    # Both lungs, each of plausible size (measured 930-3210 mL; LIDC-0314's right upper lung is not aerated).
    for lung in (left, right):
        assert 600.0 <= measure.volume_ml(lung, aff) <= 4500.0
    # Patient left is the smaller RAS x (x grows towards the patient's right); the shipped chests are LPS.
    x_left = measure.world_centroid(left, aff)[0]
    x_right = measure.world_centroid(right, aff)[0]
    assert x_right - x_left > 80.0
    # The body contains the lungs: no lung voxel borders the outside air.
    assert not (ndi.binary_dilation(left | right) & (lab == 0)).any()
    # Bone: spine + ribs, several hundred mL, spread across both sides.
    assert measure.volume_ml(bone, aff) > 400.0
    bone_x = np.array([aff[0, :3] @ ijk + aff[0, 3] for ijk in np.argwhere(bone)[::50]])
    assert (bone_x < x_left).any() and (bone_x > x_right).any()
    # Airway: a trachea of plausible volume between the lungs, its top above the lungs' centre and apex level.
    assert 4.0 <= measure.volume_ml(airway, aff) <= 60.0
    centre_airway = measure.world_centroid(airway, aff)
    centre_lungs = measure.world_centroid(left | right, aff)
    assert x_left < centre_airway[0] < x_right
    assert centre_airway[2] > centre_lungs[2]
    airway_top = max(aff[2, :3] @ ijk + aff[2, 3] for ijk in np.argwhere(airway))
    lung_top = max(aff[2, :3] @ ijk + aff[2, 3] for ijk in np.argwhere(left | right))
    assert airway_top >= lung_top


@pytest.mark.parametrize(("case", "side"), [("A0001", LUNG_L), ("A0002", LUNG_R)])
def test_tumour_neither_explodes_nor_erases_the_lung(case, side, cts, classical) -> None:
    """A0001: left paravertebral mass; A0002: right hilar mass (boxes from the TCIA annotations)."""
    box = json.loads((SAMPLE / f"lung_pet_ct_dx_{case}_bbox.json").read_text())["bbox_3d_voxel_lowres_128"]
    sel = tuple(slice(box[f"{a}_min"], box[f"{a}_max"] + 1) for a in "ijk")
    hu, lab = cts[case].array[sel], classical[case].array[sel]
    soft, aerated = hu > -300, hu < -400
    assert soft.sum() > 1000 and aerated.sum() > 1000
    assert np.mean(lab[soft] == side) < 0.15  # the mass is not swallowed by the lung (measured 1% / 5%)
    assert np.mean(lab[aerated] == side) > 0.9  # the lung around it is still there, on the right side
    other = LUNG_R if side == LUNG_L else LUNG_L
    assert not (lab == other).any()


def test_cta_crop_partial_field_of_view(cts, classical, ts_masks, measure) -> None:
    """Heart/aorta crop: lungs cut by the crop edge are still lungs; contrast blood is not bone."""
    lab, ref, aff = classical["cta"].array, ts_masks["cta"].array, cts["cta"].affine
    left, right = lab == LUNG_L, lab == LUNG_R
    assert measure.volume_ml(left, aff) > 500 and measure.volume_ml(right, aff) > 500
    assert measure.world_centroid(left, aff)[0] < measure.world_centroid(right, aff)[0]
    heart, aorta, t12 = ref == 51, ref == 52, ref == 32
    assert np.isin(lab[heart | aorta], (LUNG_L, LUNG_R)).mean() < 0.01
    assert np.mean(lab[heart] == BONE) < 0.1  # measured 0.04
    assert np.mean(lab[aorta] == BONE) < 0.3  # measured 0.18 (descending aorta partly)
    assert np.mean(lab[t12] == BONE) > 0.6  # measured 0.74
    assert classical["cta"].meta["bone"]["blood_pools_removed_ml"] > 300


def test_non_contrast_bone_is_not_removed_as_blood(classical) -> None:
    for case in ("A0001", "A0002", "lidc", "ts"):
        assert classical[case].meta["bone"]["blood_pools_removed_ml"] == 0.0


def test_same_patient_in_ras_and_lps_gives_same_labels(cts, classical) -> None:
    """Storage order must not matter: reorient A0002 (LPS) to RAS by flipping i and j and fixing the affine."""
    vol = cts["A0002"]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = vol.shape[0] - 1, vol.shape[1] - 1
    ras = Volume(array=vol.array[::-1, ::-1, :].copy(), affine=vol.affine @ flip)
    assert ras.orientation == "RAS"
    np.testing.assert_allclose(ras.affine @ [0, 0, 3, 1], vol.affine @ [127, 127, 3, 1])  # same voxel, same place
    labels = classical_segment(ras).array[::-1, ::-1, :]
    np.testing.assert_array_equal(labels, classical["A0002"].array)


def test_left_right_comes_from_the_affine_not_the_index(cts, classical) -> None:
    """Same voxels, world x mirrored in the affine: the patient is mirrored, so left and right lung swap.

    A segmenter that took "left" from the array index would return identical labels here.
    """
    vol = cts["ts_sm"]
    mirrored = Volume(array=vol.array, affine=np.diag([-1.0, 1.0, 1.0, 1.0]) @ vol.affine)
    assert mirrored.orientation == "LAS"
    lab = classical_segment(mirrored).array
    ref = classical["ts_sm"].array
    np.testing.assert_array_equal(lab == LUNG_L, ref == LUNG_R)
    np.testing.assert_array_equal(lab == LUNG_R, ref == LUNG_L)
    np.testing.assert_array_equal(np.isin(lab, (LUNG_L, LUNG_R)), np.isin(ref, (LUNG_L, LUNG_R)))


def test_fine_grid_is_pooled_and_labels_repeated_back(cts, classical) -> None:
    """A CT at half the spacing is segmented on the pooled grid: same labels, repeated onto the fine grid."""
    vol = cts["A0002"]
    fine_affine = vol.affine.copy()
    fine_affine[:3, :2] /= 2.0
    fine_affine[:3, 3] -= vol.affine[:3, :2] @ [0.25, 0.25]
    fine = Volume(array=np.repeat(np.repeat(vol.array, 2, axis=0), 2, axis=1), affine=fine_affine)
    out = classical_segment(fine)
    assert out.shape == fine.shape and out.meta["pooling_factors"] == [2, 2, 1]
    np.testing.assert_array_equal(out.array, block_repeat(classical["A0002"].array, (2, 2, 1), fine.shape))


@pytest.mark.parametrize("case", ["A0001", "cta"])
def test_robust_to_coarser_voxels(case, cts, classical, measure) -> None:
    """Pooled to 6-7 mm in-plane and 6-10 mm slices, lungs still agree with the native result (measured >= 0.94)."""
    vol = cts[case]
    pooled, affine = block_mean(vol.array, vol.affine, (2, 2, 2))
    coarse = classical_segment(Volume(array=pooled, affine=affine), ClassicalConfig(working_spacing_mm=0.0))
    back = block_repeat(coarse.array, (2, 2, 2), vol.shape)
    for label in (LUNG_L, LUNG_R):
        assert measure.dice(back == label, classical[case].array == label) > 0.9
    assert (coarse.array == AIRWAY).any()


def test_deterministic_and_reports_what_it_found(cts) -> None:
    first = classical_masks(cts["lidc"])
    second = classical_masks(cts["lidc"])
    np.testing.assert_array_equal(first.label_array(), second.label_array())
    assert first.info["airway"]["found"] and first.info["airway"]["carina_k"] is not None
    assert first.info["midline_from"] == "airway"
    assert set(first.info["volumes_ml"]) == set(COARSE_LABELS.values())


def test_refuses_empty_volume() -> None:
    from ctrag.errors import DataValidationError

    air = Volume(array=np.full((20, 20, 10), -1000, dtype=np.int16), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(DataValidationError, match="contains no body"):
        classical_segment(air)
