"""Tri-planar overlay figures (``ctrag segment --png`` and the evaluation grids): orientation of the views
(radiological convention), the shared drawing code and the written PNG, on the shipped CTs and their masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.labels import as_coarse
from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import DataValidationError
from ctrag.segment.overlay import (
    COARSE_COLOURS,
    coarse_colormap,
    draw_triplanar,
    pyplot,
    save_overlay_png,
    save_png,
    triplanar_views,
)


def test_views_are_centred_on_the_lungs_and_shaped_by_the_grid(cts, classical) -> None:
    ct, mask = cts["A0002"], classical["A0002"]
    views = triplanar_views(ct.array, mask.array, ct.affine)
    assert [v[0] for v in views] == ["axial", "coronal", "sagittal"]
    (_, ax_ct, ax_lab, ax_aspect), (_, co_ct, _, co_aspect), (_, sa_ct, _, sa_aspect) = views
    assert ax_ct.shape == ax_lab.shape == (128, 128) and co_ct.shape == (30, 128) and sa_ct.shape == (30, 128)
    assert ax_aspect == pytest.approx(1.0) and co_aspect == pytest.approx(8.0 / 2.586, rel=1e-3)
    assert sa_aspect == pytest.approx(co_aspect, rel=1e-3)
    assert {2, 3} <= set(np.unique(ax_lab))  # the axial slice goes through both lungs


def test_patient_left_is_on_the_image_right(cts, classical) -> None:
    """Radiological convention, from the affine: left lung (label 2) on the right half of axial and coronal views,
    for this LPS-stored CT as for any other orientation."""
    ct, mask = cts["A0002"], classical["A0002"]
    assert ct.orientation == "LPS"
    for name, _, lab, _ in triplanar_views(ct.array, mask.array, ct.affine)[:2]:
        cols = np.arange(lab.shape[1])
        left = cols[np.any(lab == 2, axis=0)].mean()
        right = cols[np.any(lab == 3, axis=0)].mean()
        assert left > right, name
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = ct.shape[0] - 1, ct.shape[1] - 1
    ras = triplanar_views(ct.array[::-1, ::-1].copy(), mask.array[::-1, ::-1].copy(), ct.affine @ flip)
    lps = triplanar_views(ct.array, mask.array, ct.affine)
    for a, b in zip(ras, lps, strict=True):
        np.testing.assert_array_equal(a[2], b[2])  # same picture whatever the storage order


def test_without_labels_the_volume_centre_is_used(cts) -> None:
    ct = cts["lidc"]
    views = triplanar_views(ct.array, None, ct.affine)
    assert all(not lab.any() for _, _, lab, _ in views)


def test_colormap_has_one_entry_per_coarse_code() -> None:
    cmap, n = coarse_colormap()
    assert n == max(COARSE_COLOURS) + 1 == 6
    np.testing.assert_allclose(cmap(2)[:3], COARSE_COLOURS[2])
    assert cmap(0)[3] == 0.0  # background is transparent


def test_png_is_written_atomically_and_checks_the_grid(tmp_path: Path, cts, classical) -> None:
    out = save_overlay_png(tmp_path / "a2.png", cts["A0002"], classical["A0002"], title="A0002 classical")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a2.png"]  # no temporary file left behind
    other = Volume(classical["A0001"].array, classical["A0001"].affine)
    with pytest.raises(DataValidationError, match="another grid"):
        save_overlay_png(tmp_path / "bad.png", cts["A0002"], other)
    assert not (tmp_path / "bad.png").exists()


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
