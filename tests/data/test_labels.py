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
