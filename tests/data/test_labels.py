from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.labels import (
    ANATOMY_GROUPS,
    COARSE_LABELS,
    CT_RATE_LABELS,
    as_coarse,
    check_labels,
    convert_labels,
    source_space,
    to_coarse,
    totalseg_v2_labels,
)
from ctrag.data.nifti import load_volume
from ctrag.errors import DataValidationError

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
CTRATE_MASK = SAMPLE / "ct_rate_nc_sa" / "ragtext2ct_ctrate_chest_mask_total.nii.gz"


def test_vocabularies() -> None:
    assert len(CT_RATE_LABELS) == 18 and CT_RATE_LABELS[0] == "Medical material"
    table = totalseg_v2_labels()
    assert len(table) == 117 and table[5] == "liver" and table[52] == "aorta"


def test_groups_are_disjoint_and_cover_thorax() -> None:
    seen: dict[int, str] = {}
    for group, ids in ANATOMY_GROUPS.items():
        for i in ids:
            assert i not in seen, f"label {i} in {seen.get(i)} and {group}"
            seen[i] = group
    assert set(seen) == set(totalseg_v2_labels())
    assert ANATOMY_GROUPS["lung_right"] == (12, 13, 14)


def test_to_coarse() -> None:
    mask = np.array([[[0, 10, 13, 16, 32, 5]]], dtype=np.uint8)
    assert to_coarse(mask).tolist() == [[[0, 2, 3, 4, 5, 1]]]


def test_left_right_table_pairs_every_mirrored_structure() -> None:
    from ctrag.data.labels import left_right_partner, left_right_table

    ts = totalseg_v2_labels()
    ids = {name: code for code, name in ts.items()}
    table = left_right_table(ts)
    pairs = [("rib_left_1", "rib_right_1"), ("kidney_left", "kidney_right")]
    pairs += [("lung_upper_lobe_left", "lung_upper_lobe_right"), ("clavicula_left", "clavicula_right")]
    for left, right in pairs:
        assert table[ids[left]] == ids[right] and table[ids[right]] == ids[left]
    for unpaired in ("heart", "aorta", "lung_middle_lobe_right", "atrial_appendage_left", "liver"):
        assert table[ids[unpaired]] == ids[unpaired]
    assert np.array_equal(table[table], np.arange(len(table)))  # mirroring twice is the identity
    coarse = left_right_table(COARSE_LABELS)
    assert coarse.tolist() == [0, 1, 3, 2, 4, 5]
    assert left_right_partner("rib_right_12") == "rib_left_12" and left_right_partner("sternum") == "sternum"


# ------------------------------------------------------------------------------------- label sets of label maps


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
