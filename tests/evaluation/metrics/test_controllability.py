"""Spatial controllability of a generated CT: Dice of its segmentation against the proxy it was conditioned on.

The real-data checks use the shipped CT with its own TotalSegmentator mask: a CT must agree with its own mask
far better than with the same mask moved by 45 mm (what a generation that ignores its proxy looks like).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.nifti import load_volume
from ctrag.evaluation.metrics.controllability import air_in_body_dice, coarse_dice, control_agreement


def test_coarse_dice_hand_computed() -> None:
    ref = np.zeros((4, 4, 1), dtype=np.uint8)
    ref[:, :2] = 1  # body
    ref[0, 0] = 2  # lung_left
    ref[3, 3] = 3  # lung_right
    seg = ref.copy()
    seg[0, 0] = 3  # the left lung voxel called right: per-side Dice 0, merged lungs still agree
    d = coarse_dice(seg, ref)
    assert d["lung_left"] == 0.0 and d["lung_right"] == pytest.approx(2 * 1 / 3)
    assert d["lungs"] == 1.0 and d["body"] == 1.0
    assert math.isnan(d["airway"]) and math.isnan(d["bone"])  # in neither mask


def test_air_in_body_dice_hand_computed() -> None:
    ref = np.zeros((2, 2, 1), dtype=np.uint8)
    ref[0] = 2  # two lung voxels
    ref[1, 0] = 1  # one soft-tissue body voxel; ref[1, 1] is outside the body
    vol = np.array([[[-800.0], [0.0]], [[-900.0], [-1000.0]]])
    # dark inside the body: (0,0) and (1,0); lungs: (0,0), (0,1) -> Dice 2*1/(2+2)
    assert air_in_body_dice(vol, ref) == pytest.approx(0.5)


def test_control_agreement_prefers_the_ct_s_own_mask(ts_ct_and_mask: tuple[Path, Path]) -> None:
    ct, mask = (load_volume(p) for p in ts_ct_and_mask)
    hu, labels = np.asarray(ct.array), np.asarray(mask.array)
    own = control_agreement(hu, ct.affine, labels, "totalseg")
    moved = control_agreement(hu, ct.affine, np.roll(labels, 15, axis=0), "totalseg")
    assert set(own) == {"body", "lung_left", "lung_right", "airway", "bone", "lungs", "air_in_body"}
    assert own["lungs"] > 0.9 and moved["lungs"] < 0.3
    assert own["air_in_body"] > moved["air_in_body"] + 0.2
