"""Tri-planar PNG of a label mask over its CT, for looking at a segmentation rather than reading numbers.

Slices are taken in the closest-RAS view and drawn in radiological convention (patient left on the image's
right in axial and coronal views), through the centroid of the lungs when there are any, else the volume
centre. matplotlib is imported here only, with the Agg backend, so nothing opens a window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.data.nifti import Volume, check_same_grid
from ctrag.segment.grid import CanonicalView
from ctrag.utils.atomic import atomic_path

COARSE_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (0.95, 0.85, 0.2),  # body
    2: (0.2, 0.5, 1.0),  # lung_left
    3: (0.1, 0.85, 0.3),  # lung_right
    4: (1.0, 0.2, 0.8),  # airway
    5: (1.0, 0.35, 0.1),  # bone
}


TriplanarView = tuple[str, np.ndarray, np.ndarray, float]
"""(plane name, 2-D CT slice, 2-D labels, pixel aspect), rows = the displayed vertical axis."""


def triplanar_views(
    ct: np.ndarray, labels: np.ndarray | None, affine: np.ndarray, centre_labels: tuple[int, ...] = (2, 3)
) -> list[TriplanarView]:
    """Axial, coronal and sagittal slices in the closest-RAS view, radiological convention (patient left on the
    image's right, anterior / superior up), through the centroid of ``centre_labels`` (else the volume centre).

    One function for every tri-planar figure in ctrag, so all of them agree on orientation.
    """
    view = CanonicalView.of(ct.shape, affine)
    img = view.to_canonical(np.asarray(ct, dtype=np.float32))
    lab = np.zeros(img.shape, dtype=np.int32) if labels is None else view.to_canonical(np.asarray(labels))
    lab = lab.astype(np.int32)
    sx, sy, sz = view.spacing
    sel = np.isin(lab, centre_labels)
    centre = np.argwhere(sel).mean(axis=0).round().astype(int) if sel.any() else np.array(lab.shape) // 2
    ci, cj, ck = (int(c) for c in centre)
    return [
        ("axial", img[::-1, :, ck].T, lab[::-1, :, ck].T, sy / sx),
        ("coronal", img[::-1, cj, :].T, lab[::-1, cj, :].T, sz / sx),
        ("sagittal", img[ci, :, :].T, lab[ci, :, :].T, sz / sy),
    ]


def coarse_colormap() -> tuple[Any, int]:
    """A matplotlib colormap indexed by coarse label code (``COARSE_COLOURS``) and its number of entries."""
    from matplotlib.colors import ListedColormap

    n_colours = max(COARSE_COLOURS) + 1
    colours = np.zeros((n_colours, 4))
    for code, rgb in COARSE_COLOURS.items():
        colours[code] = (*rgb, 1.0)
    return ListedColormap(colours), n_colours


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no window ever opens); imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str], *, dpi: int = 80) -> Path:
    """Lay out ``fig``, write it atomically as a PNG at ``path`` and close it; returns the path."""
    fig.tight_layout()
    final = Path(path)
    with atomic_path(final, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return final


def draw_triplanar(
    axes: Sequence[Any],
    ct: Volume,
    mask: Volume | None = None,
    *,
    hu_window: tuple[float, float] = (-1000.0, 600.0),
    alpha: float = 0.35,
    centre_labels: tuple[int, ...] = (2, 3),
    outline_labels: tuple[int, ...] = (1,),
) -> None:
    """Axial, coronal and sagittal views of ``ct`` (with ``mask`` overlaid) on three matplotlib axes.

    ``outline_labels`` (the body, by default) are not filled; the envelope of the whole mask is drawn as a contour
    instead: a filled body would wash out the CT and hide what the generator made of the organs inside it. Pass
    ``outline_labels=()`` to fill every label.
    """
    if mask is not None:
        check_same_grid(mask, ct)
    labels = None if mask is None else np.asarray(mask.array)
    views = triplanar_views(np.asarray(ct.array), labels, ct.affine, centre_labels)
    cmap, n_colours = coarse_colormap()
    for ax, (_, ct2d, lab2d, aspect) in zip(axes, views, strict=True):
        ax.imshow(ct2d, cmap="gray", vmin=hu_window[0], vmax=hu_window[1], origin="lower", aspect=aspect)
        if mask is not None:
            outline = np.isin(lab2d, outline_labels)
            if outline.any():  # the envelope of every label: the body's skin line, not its holes around organs
                colour = COARSE_COLOURS.get(outline_labels[0], (1.0, 1.0, 0.0))
                ax.contour(
                    (lab2d > 0).astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0, origin="lower"
                )
            ax.imshow(
                np.ma.masked_where((lab2d == 0) | outline, lab2d),
                cmap=cmap,
                vmin=0,
                vmax=n_colours - 1,
                alpha=alpha,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
        ax.set_xticks([])
        ax.set_yticks([])


def save_overlay_png(
    path: str | os.PathLike[str],
    ct: Volume,
    mask: Volume,
    *,
    title: str = "",
    hu_window: tuple[float, float] = (-1000.0, 600.0),
    alpha: float = 0.4,
    centre_labels: tuple[int, ...] = (2, 3),
) -> Path:
    """Write axial/coronal/sagittal views of ``mask`` (coarse labels) over ``ct``; returns the PNG path."""
    check_same_grid(mask, ct)
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 4.6))
    draw_triplanar(axes, ct, mask, hu_window=hu_window, alpha=alpha, centre_labels=centre_labels, outline_labels=())
    for ax, name in zip(axes, ("axial", "coronal", "sagittal"), strict=True):
        ax.set_title(name)
    axes[0].set_xlabel("patient R  ←→  patient L")
    if title:
        fig.suptitle(title)
    return save_png(fig, path)
