"""Ablation tables: the committed tiny-cpu result rendered again, and the header naming its feature extractor.

The tiny run scores FID with the random-feature fallback (``random-fallback-…`` fingerprints); a reader of the
table alone must see that, not only a reader of the notes (issue 9, bug 2e).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctrag.evaluation.ablation import AblationResult
from ctrag.evaluation.tables import render_csv, render_markdown

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "results" / "generation_ablation_tiny" / "results.json"


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return json.loads(COMMITTED.read_text(encoding="utf-8"))


def _result(payload: dict[str, Any], **provenance: Any) -> AblationResult:
    return AblationResult(
        config=payload["config"],
        methods=payload["methods"],
        real=payload["real"],
        per_seed=payload["per_seed"],
        per_case=[],
        notes=payload["notes"],
        provenance={**payload["provenance"], **provenance},
    )


def _header(md: str, title: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"## {title}"))


def _table_rows(md: str, title: str) -> list[str]:
    """The ``|`` lines of the table under the ``## title`` heading."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append(line)
    return rows


def test_table_header_names_the_feature_extractor(committed: dict[str, Any]) -> None:
    fid = committed["provenance"]["fid"]
    assert fid["extractor_2d"].startswith("random-fallback")  # what the shipped tiny run used
    md = render_markdown(_result(committed))
    header = _header(md, "Table 1: image fidelity")
    assert fid["extractor_2d"] in header and fid["extractor_3d"] in header
    assert "random-feature fallback" in header  # said where the numbers are, not only in the notes
    # the header is the only change: the FID rows render as in the committed results.md
    committed_md = COMMITTED.with_name("results.md").read_text(encoding="utf-8")
    rows = _table_rows(md, "Table 1: image fidelity")
    assert len(rows) == 2 + len(committed["methods"]) and rows == _table_rows(committed_md, "Table 1: image fidelity")


def test_trained_extractor_header_has_no_fallback_warning(committed: dict[str, Any]) -> None:
    fid = {"extractor_2d": "ctnet-slice@abc123", "extractor_3d": None, "volume_shape": "64x64x32"}
    header = _header(render_markdown(_result(committed, fid=fid)), "Table 1: image fidelity")
    assert "ctnet-slice@abc123" in header and "3-D none" in header and "fallback" not in header
    no_fid = _header(render_markdown(_result(committed, fid=None)), "Table 1: image fidelity")
    assert "not computed" in no_fid


def test_csv_keeps_one_row_per_method(committed: dict[str, Any]) -> None:
    lines = render_csv(_result(committed)).splitlines()
    assert lines[0].startswith("method,label,") and len(lines) == 1 + 1 + len(committed["methods"])
