"""Tri-planar drawing shared by ``ctrag segment --png`` and the evaluation grids, on a real CT and its mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import DataValidationError
from ctrag.generation.masks import as_coarse
from ctrag.segment.overlay import draw_triplanar, pyplot, save_overlay_png, save_png


@pytest.fixture(scope="module")
def ct_and_mask(ts_ct_and_mask: tuple[Path, Path]) -> tuple[Volume, Volume]:
    ct, seg = (load_volume(p) for p in ts_ct_and_mask)
    return ct, Volume(as_coarse(np.asarray(seg.array), "totalseg"), seg.affine)


def test_draw_triplanar_outlines_the_body_and_fills_the_organs(ct_and_mask: tuple[Volume, Volume]) -> None:
    ct, mask = ct_and_mask
    fig, axes = pyplot().subplots(2, 3)
    draw_triplanar(axes[0], ct, mask)  # default: the body (label 1) as a contour, organs filled
    draw_triplanar(axes[1], ct, mask, outline_labels=())  # every label filled
    outlined = [len(ax.collections) for ax in axes[0]]
    filled = [len(ax.collections) for ax in axes[1]]
    assert all(n > 0 for n in outlined) and filled == [0, 0, 0]
    assert all(len(ax.images) == 2 for ax in axes.flat)  # the CT and the label overlay
    pyplot().close(fig)


def test_save_overlay_png_and_grid_mismatch(ct_and_mask: tuple[Volume, Volume], tmp_path: Path) -> None:
    ct, mask = ct_and_mask
    path = save_overlay_png(tmp_path / "o.png", ct, mask, title="real mask")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    moved = np.array(mask.affine, dtype=np.float64)
    moved[0, 3] += 5.0
    shifted = Volume(np.asarray(mask.array), moved)
    with pytest.raises(DataValidationError):
        save_overlay_png(tmp_path / "bad.png", ct, shifted)
    fig, _ = pyplot().subplots(1, 1)
    assert save_png(fig, tmp_path / "blank.png", dpi=40).stat().st_size > 0
