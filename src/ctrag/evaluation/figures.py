"""Figures of an evaluation: CT grids with proxy overlays, and metric bar charts with confidence intervals.

A single tri-planar overlay of one CT is ``ctrag.segment.overlay.save_overlay_png`` (whole figure, used by
``ctrag segment``); this module puts the same view (``ctrag.segment.overlay.draw_triplanar``) *inside* a larger
grid (one row per method or per report), with the same conventions and colours: closest-RAS view
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

from ctrag.data.nifti import Volume
from ctrag.segment.overlay import draw_triplanar, pyplot, save_png

__all__ = ["BarSeries", "GridRow", "bar_series_from_summary", "draw_triplanar", "save_ct_grid", "save_metric_bars"]


@dataclass
class GridRow:
    """One row of a CT grid: a title, a CT in HU and an optional coarse-label mask on the same grid."""

    title: str
    ct: Volume
    mask: Volume | None = None


def save_ct_grid(path: str | os.PathLike[str], rows: Sequence[GridRow], *, title: str = "") -> Path:
    """A PNG with one tri-planar row per entry (e.g. one per method, same report and seed)."""
    if not rows:
        raise ValueError("save_ct_grid: no rows to draw")
    fig, axes = pyplot().subplots(len(rows), 3, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        draw_triplanar(axes[r], row.ct, row.mask)
        axes[r][0].set_ylabel(row.title, fontsize=9)
    for c, name in enumerate(("axial", "coronal", "sagittal")):
        axes[0][c].set_title(name)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


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
    cols = min(3, len(usable))
    nrows = math.ceil(len(usable) / cols)
    fig, axes = pyplot().subplots(nrows, cols, figsize=(4.6 * cols, 3.4 * nrows), squeeze=False)
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
    return save_png(fig, path)


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
