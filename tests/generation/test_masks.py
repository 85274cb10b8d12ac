"""Label sets, conversion of real TotalSegmentator masks, per-batch encodings, nearest-neighbour resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrag.data.labels import COARSE_LABELS, totalseg_v2_labels
from ctrag.data.nifti import load_volume
from ctrag.errors import DataValidationError
from ctrag.generation.config import ImageSpaceConfig
from ctrag.generation.imagespace import grid_affine, labels_to_grid
from ctrag.generation.masks import (
    as_coarse,
    check_labels,
    convert_labels,
    encode_mask,
    flip_left_right,
    source_space,
)
from tests.generation.conftest import SAMPLE

CTRATE_MASK = SAMPLE / "ct_rate_nc_sa" / "ragtext2ct_ctrate_chest_mask_total.nii.gz"


def test_onehot_is_built_per_batch_and_pooled() -> None:
    labels = torch.tensor([0, 1, 2, 5] * 16).reshape(1, 1, 4, 4, 4)
    onehot = encode_mask(labels, 5)
    assert onehot.shape == (1, 6, 4, 4, 4) and onehot.dtype == torch.float32
    assert torch.equal(onehot.argmax(1, keepdim=True), labels)
    pooled = encode_mask(labels, 5, pool=2)
    assert pooled.shape == (1, 6, 2, 2, 2)
    assert torch.allclose(pooled.sum(1), torch.ones(1, 2, 2, 2))  # fractions of each structure per coarse voxel


def test_binary_encoding_matches_maisi_bits() -> None:
    labels = torch.tensor([0, 1, 2, 3, 117, 255, 6, 9]).reshape(1, 1, 2, 2, 2)
    bits = encode_mask(labels, 117, "binary", bits=8)
    assert bits.shape == (1, 8, 2, 2, 2)
    weights = (2 ** torch.arange(8)).view(1, 8, 1, 1, 1).float()
    assert torch.equal((bits * weights).sum(1, keepdim=True).long(), labels)


def test_onehot_refuses_ids_outside_the_label_set() -> None:
    with pytest.raises(DataValidationError, match=r"outside 0\.\.5"):
        encode_mask(torch.full((1, 1, 2, 2, 2), 7), 5)


def test_real_totalsegmentator_mask_converts_to_coarse() -> None:
    mask = load_volume(SAMPLE / "ct_rate_nc_sa" / "lowres" / "ragtext2ct_ctrate_chest_mask_total_128.nii.gz")
    assert source_space("totalsegmentator-total") == "totalseg"
    coarse = convert_labels(mask.array, "totalseg", "coarse")
    names = {v: k for k, v in COARSE_LABELS.items()}
    ts = {v: k for k, v in totalseg_v2_labels().items()}
    # every left-lung-lobe voxel becomes lung_left, every trachea voxel airway, and the body encloses them all
    left = np.isin(mask.array, [ts["lung_upper_lobe_left"], ts["lung_lower_lobe_left"]])
    assert left.sum() > 1000 and np.all(coarse[left] == names["lung_left"])
    assert np.all(coarse[mask.array == ts["trachea"]] == names["airway"])
    assert np.all(coarse[mask.array > 0] > 0)
    body_only = (coarse == names["body"]).sum()
    assert body_only > (mask.array > 0).sum() * 0.1  # the outline adds tissue between organs
    assert set(np.unique(coarse).tolist()) <= {0, *COARSE_LABELS}


def test_groups_label_set_and_back_to_coarse() -> None:
    mask = load_volume(SAMPLE / "ct" / "lowres" / "ts_example_ct_sm_3mm_seg_total.nii.gz")
    groups = convert_labels(mask.array, "totalseg", "groups")
    coarse = as_coarse(groups, "groups")
    direct = convert_labels(mask.array, "totalseg", "coarse")
    lungs = np.isin(direct, (2, 3))
    assert lungs.any() and np.array_equal(coarse[lungs], direct[lungs])


def test_coarse_mask_cannot_drive_a_totalseg_controlnet() -> None:
    with pytest.raises(DataValidationError, match="cannot drive"):
        convert_labels(np.ones((4, 4, 4), np.uint8), "coarse", "totalseg")


def test_unknown_labels_and_bad_masks_are_refused() -> None:
    bad = np.zeros((4, 4, 4), np.uint8)
    bad[0, 0, 0] = 9
    with pytest.raises(DataValidationError, match=r"unknown label ids \[9\]"):
        check_labels(bad, "coarse", "user.nii.gz")
    with pytest.raises(DataValidationError, match="must be 3-D"):
        check_labels(np.zeros((4, 4)), "coarse")
    with pytest.raises(DataValidationError, match="integer labels"):
        check_labels(np.full((2, 2, 2), 0.5), "coarse")
    with pytest.raises(DataValidationError, match=r"unknown label ids \[118\]"):
        check_labels(np.array([[[0, 118]]]).repeat(2, 0), "totalseg")
    assert check_labels(np.array([[[0, 117]]]).repeat(2, 0), "totalseg") == [117]


def test_flip_swaps_left_and_right_structures() -> None:
    labels = torch.zeros(1, 1, 4, 2, 2, dtype=torch.uint8)
    labels[0, 0, 0] = 2  # lung_left on the first column
    labels[0, 0, 3] = 5  # bone on the last
    flipped = flip_left_right(labels, "coarse", axis=2)
    assert torch.all(flipped[0, 0, 3] == 3) and torch.all(flipped[0, 0, 0] == 5)
    ts = {v: k for k, v in totalseg_v2_labels().items()}
    t = torch.tensor([ts["kidney_left"], ts["liver"]]).view(1, 1, 2, 1, 1)
    assert flip_left_right(t, "totalseg", axis=2).flatten().tolist() == [ts["liver"], ts["kidney_right"]]


def test_mask_on_another_grid_is_resampled_nearest_and_keeps_labels() -> None:
    """The full-resolution CT-RATE mask (512x512x128, 0.75 mm) onto a 5 mm RAS grid: no new label appears."""
    mask = load_volume(CTRATE_MASK)
    src_labels = set(np.unique(mask.array).tolist())
    space = ImageSpaceConfig()
    lo = mask.affine[:3, :3] @ (np.array(mask.shape) / 2.0) + mask.affine[:3, 3]
    affine = grid_affine(lo, (64, 64, 32), space.spacing, "RAS")
    out = labels_to_grid(mask, (64, 64, 32), affine)
    assert out.dtype == mask.array.dtype and out.shape == (64, 64, 32)
    out_labels = set(np.unique(out).tolist())
    assert out_labels <= src_labels and len(out_labels) > 20
    # a voxel's label is the source label at the nearest source voxel of its world position
    ijk = np.array([40, 30, 16])
    world = affine[:3, :3] @ ijk + affine[:3, 3]
    src = np.rint(np.linalg.solve(mask.affine[:3, :3], world - mask.affine[:3, 3])).astype(int)
    assert out[tuple(ijk)] == mask.array[tuple(src)]
