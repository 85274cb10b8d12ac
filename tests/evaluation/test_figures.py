"""Evaluation figures: CT grids (one tri-planar row per method) and metric bars built from an ablation summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctrag.data.labels import as_coarse
from ctrag.data.nifti import Volume, load_volume
from ctrag.evaluation.figures import BarSeries, GridRow, bar_series_from_summary, save_ct_grid, save_metric_bars

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_ct_grid_has_one_row_per_entry(ts_ct_and_mask: tuple[Path, Path], tmp_path: Path) -> None:
    ct, seg = (load_volume(p) for p in ts_ct_and_mask)
    mask = Volume(as_coarse(np.asarray(seg.array), "totalseg"), seg.affine)
    one = save_ct_grid(tmp_path / "one.png", [GridRow("real", ct, mask)], title="t")
    three = save_ct_grid(tmp_path / "three.png", [GridRow("a", ct, mask), GridRow("b", ct), GridRow("c", ct, mask)])
    (w1, h1), (w3, h3) = _png_size(one), _png_size(three)
    assert w1 == w3 and h3 > 2.5 * h1 * 0.9
    with pytest.raises(ValueError, match="no rows"):
        save_ct_grid(tmp_path / "none.png", [])


def _summary() -> dict[str, Any]:
    def entry(mean: float, sig: bool = False) -> dict[str, Any]:
        return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "significant": sig}

    return {
        "nearest": {"label": "RAG-Nearest", "metrics": {"dice": entry(0.8), "fid_avg": entry(1.2)}},
        "none": {"label": "Text-only", "metrics": {"fid_avg": entry(0.9, True)}},
    }


def test_bar_series_from_summary_skips_missing_metrics() -> None:
    series = bar_series_from_summary(
        _summary(), [("dice", "Dice", "higher"), ("fid_avg", "FID", "lower"), ("x", "X", "higher")]
    )
    assert [s.metric for s in series] == ["Dice", "FID"]
    dice, fid = series
    assert dice.labels == ["RAG-Nearest"] and fid.labels == ["RAG-Nearest", "Text-only"]
    assert fid.significant == [False, True] and fid.ci_low == pytest.approx([1.1, 0.8])


def test_metric_bars_png_and_no_finite_values(tmp_path: Path) -> None:
    series = bar_series_from_summary(_summary(), [("dice", "Dice", "higher"), ("fid_avg", "FID", "lower")])
    path = save_metric_bars(tmp_path / "bars.png", series, title="mean over seeds")
    assert _png_size(path)[0] > 0
    empty = BarSeries("Dice", "higher", ["a"], [math.nan], [math.nan], [math.nan], [False])
    with pytest.raises(ValueError, match="no finite metric values"):
        save_metric_bars(tmp_path / "none.png", [empty])
