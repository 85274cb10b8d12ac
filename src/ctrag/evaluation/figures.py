"""Figures of an evaluation: CT grids with proxy overlays, and metric bar charts with confidence intervals.

A single tri-planar overlay of one CT is ``ctrag.segment.overlay.save_overlay_png`` (whole figure, used by
``ctrag generate``); this module needs the same view *inside* a larger grid (one row per method or per report),
so it draws onto given axes with the same conventions and colours: closest-RAS view
(:class:`ctrag.segment.grid.CanonicalView`), radiological display (patient left on the image's right), slices
through the lungs' centre when the mask has lungs. matplotlib runs with the Agg backend and is imported here only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.data.nifti import Volume, check_same_grid
from ctrag.utils.atomic import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@dataclass
class GridRow:
    """One row of a CT grid: a title, a CT in HU and an optional coarse-label mask on the same grid."""

    title: str
    ct: Volume
    mask: Volume | None = None


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
    instead: a filled body would wash out the CT and hide what the generator made of the organs inside it.
    """
    from ctrag.segment.overlay import COARSE_COLOURS, coarse_colormap, triplanar_views

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


def save_ct_grid(path: str | os.PathLike[str], rows: Sequence[GridRow], *, title: str = "") -> Path:
    """A PNG with one tri-planar row per entry (e.g. one per method, same report and seed)."""
    if not rows:
        raise ValueError("save_ct_grid: no rows to draw")
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        draw_triplanar(axes[r], row.ct, row.mask)
        axes[r][0].set_ylabel(row.title, fontsize=9)
    for c, name in enumerate(("axial", "coronal", "sagittal")):
        axes[0][c].set_title(name)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    final = Path(path)
    with atomic_path(final, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return final


@dataclass
class BarSeries:
    """Per-method means and CIs of one metric."""

    metric: str
    better: str  # "higher" or "lower"
    labels: list[str]
    means: list[float]
    ci_low: list[float]
    ci_high: list[float]
    significant: list[bool]


def save_metric_bars(path: str | os.PathLike[str], series: Sequence[BarSeries], *, title: str = "") -> Path:
    """One bar chart per metric (methods on the x axis, bootstrap CI whiskers, ``*`` over significant bars)."""
    usable = [s for s in series if any(math.isfinite(m) for m in s.means)]
    if not usable:
        raise ValueError("save_metric_bars: no finite metric values to plot")
    plt = _pyplot()
    cols = min(3, len(usable))
    nrows = math.ceil(len(usable) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.4 * nrows), squeeze=False)
    for ax, s in zip(axes.flat, usable, strict=False):
        x = np.arange(len(s.labels))
        means = np.array([m if math.isfinite(m) else 0.0 for m in s.means])
        lo = np.array([m - lo if math.isfinite(lo) else 0.0 for m, lo in zip(means, s.ci_low, strict=True)])
        hi = np.array([hi - m if math.isfinite(hi) else 0.0 for m, hi in zip(means, s.ci_high, strict=True)])
        ax.bar(x, means, color="#4c72b0", yerr=np.vstack([np.maximum(lo, 0), np.maximum(hi, 0)]), capsize=3)
        for xi, (m, sig, h) in enumerate(zip(means, s.significant, hi, strict=True)):
            if sig:
                ax.text(xi, m + max(h, 0) * 1.05, "*", ha="center", va="bottom", fontsize=12, color="#c44e52")
        ax.set_xticks(x)
        ax.set_xticklabels(s.labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{s.metric} ({'↑' if s.better == 'higher' else '↓'})", fontsize=9)
    for ax in list(axes.flat)[len(usable) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    final = Path(path)
    with atomic_path(final, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return final


def bar_series_from_summary(
    summary: Mapping[str, Mapping[str, Any]], metrics: Sequence[tuple[str, str, str]]
) -> list[BarSeries]:
    """Build ``BarSeries`` from the ablation summary ({method: {label, metrics: {key: {...}}}})."""
    out = []
    for key, name, better in metrics:
        labels, means, lo, hi, sig = [], [], [], [], []
        for entry in summary.values():
            m = entry["metrics"].get(key)
            if m is None:
                continue
            labels.append(entry["label"])
            means.append(float(m["mean"]))
            lo.append(float(m["ci_low"]))
            hi.append(float(m["ci_high"]))
            sig.append(bool(m.get("significant", False)))
        if labels:
            out.append(BarSeries(name, better, labels, means, lo, hi, sig))
    return out
