"""``ctrag sentences``: a report split into sentences, each with its Reg2RG regions and abnormal flag."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ctrag.cli import _shared
from ctrag.cli._app import app


@app.command("sentences")
def sentences_command(
    report_file: Annotated[
        Path, typer.Option("--report-file", help="UTF-8 text file with the report (findings, then impression).")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help='Print [{"text", "regions", "abnormal"}, ...] as JSON.')
    ] = False,
) -> None:
    """Split a report into sentences and tag each with its regions (RadGenome-ChestCT / Reg2RG) and normal/abnormal."""
    from ctrag.reporting.sentences import tag_report_text

    text = _shared.read_report_file(report_file)
    tagged = tag_report_text(text)
    if as_json:
        sys.stdout.write(json.dumps([t.to_dict() for t in tagged], ensure_ascii=False, indent=2) + "\n")
        return
    for t in tagged:
        regions = ", ".join(t.regions) if t.regions else "-"
        flag = "abnormal" if t.abnormal else "normal"
        sys.stdout.write(f"[{regions}] ({flag}) {t.text}\n")
