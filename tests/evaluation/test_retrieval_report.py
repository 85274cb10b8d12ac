"""Outputs of the retrieval evaluation: JSON, Markdown (hand-written notes kept), figure, the shared table rows."""

from __future__ import annotations

import json
from pathlib import Path

from ctrag.evaluation.retrieval_eval import RetrievalEvalResult
from ctrag.evaluation.retrieval_report import KEEP_MARKER, render_markdown, summary_rows, write_outputs


def test_write_outputs_and_kept_notes(small_result: RetrievalEvalResult, tmp_path: Path) -> None:
    written = write_outputs(small_result, tmp_path, command="ctrag evaluate retrieval X")
    assert [p.name for p in written] == ["retrieval_eval.json", "retrieval_eval.md", "retrieval_tradeoff.png"]
    payload = json.loads((tmp_path / "retrieval_eval.json").read_text())
    assert payload["command"] == "ctrag evaluate retrieval X" and len(payload["methods"]) == 7
    md = (tmp_path / "retrieval_eval.md").read_text()
    assert "| default | default |" in md and "Per-label hit rate" in md and "a note" in md
    assert render_markdown(small_result).count("\n| ") >= 7
    # hand-written notes after the marker survive a regeneration; nothing else of the old file does
    (tmp_path / "retrieval_eval.md").write_text("stale table\n" + KEEP_MARKER + "\nmy analysis\n")
    write_outputs(small_result, tmp_path)
    md = (tmp_path / "retrieval_eval.md").read_text()
    assert md.endswith(KEEP_MARKER + "\nmy analysis\n") and "stale table" not in md and "| default |" in md


def test_summary_rows_order_and_cis(small_result: RetrievalEvalResult) -> None:
    rows = summary_rows(small_result, ks=(1, 5))
    assert rows[0]["method"] == "default" and rows[-1]["method"] == "label-oracle"
    default = small_result.method("default")
    j1 = default["label_jaccard@1"]
    assert rows[0]["J@1"] == f"{j1['mean']:.3f} [{j1['ci95'][0]:.3f}, {j1['ci95'][1]:.3f}]"
    assert "[" not in rows[0]["J@5"] and "[" not in rows[0]["EM-P@1"]  # CIs only for J@1 and ROUGE-L@1
    assert all("[" not in v for v in summary_rows(small_result, ci=False)[0].values())
    md = render_markdown(small_result, command="ctrag evaluate retrieval X")
    assert "    ctrag evaluate retrieval X" in md and "| " + " | ".join(rows[0].values()) + " |" in md
