from __future__ import annotations

import numpy as np

from ctrag.data.labels import ANATOMY_GROUPS, CT_RATE_LABELS, to_coarse, totalseg_v2_labels


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
    from ctrag.data.labels import COARSE_LABELS, left_right_partner, left_right_table

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
