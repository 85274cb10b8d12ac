"""``ctrag ingest``: corpus folders -> validated manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ctrag.cli._app import app, console, err_console
from ctrag.cli._progress import progress_bar
from ctrag.data.readers import LAYOUTS
from ctrag.data.report_text import MAX_REPORT_BYTES
from ctrag.errors import InvalidInputError


@app.command("ingest")
def ingest_command(
    sources: Annotated[list[Path], typer.Argument(help="Corpus folders (layouts are detected inside each).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for manifest.jsonl and reports.")],
    layout: Annotated[
        str, typer.Option(help=f"Layout of every SOURCE: auto (detect) or one of {', '.join(LAYOUTS)}.")
    ] = "auto",
    allow_skips: Annotated[
        bool, typer.Option("--allow-skips", help="Write the manifest even when some cases fail validation.")
    ] = False,
    val_fraction: Annotated[
        float, typer.Option(help="CT-RATE: fraction of train patients moved to a val split (seeded).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the val split.")] = 0,
    rescale: Annotated[
        str, typer.Option(help="CT-RATE raw values: auto (detect), always or never apply metadata slope/intercept.")
    ] = "auto",
    max_report_bytes: Annotated[
        int, typer.Option(help="Refuse reports larger than this (UTF-8 bytes).")
    ] = MAX_REPORT_BYTES,
    include_report_only: Annotated[
        bool,
        typer.Option(
            "--include-report-only",
            help="CT-RATE: also ingest report rows without a volume (report-only cases; needed when a copy "
            "holds the report CSVs but no volume folders).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Ingest corpus folders into OUT (manifest.jsonl, validation_report.json/.md).

    Exits non-zero when any case is skipped, unless --allow-skips; a failed run never replaces the manifest of a
    previous good run in OUT.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise InvalidInputError(f"--layout must be auto or one of {list(LAYOUTS)}, got {layout!r}")
    from ctrag.data.ingest import REPORT_MD, ingest  # heavy (NIfTI, segmentation checks): only when run

    with progress_bar(progress, title="ingest", detail=True) as bar:
        task = bar.add_task("", total=None)

        def on_case(stage: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=stage)

        result = ingest(
            sources,
            out,
            layout=layout,
            allow_skips=allow_skips,
            val_fraction=val_fraction,
            seed=seed,
            rescale=rescale,
            max_report_bytes=max_report_bytes,
            include_report_only=include_report_only,
            progress=on_case,
        )
    counts = result.report["counts"]
    table = Table(title=f"{len(result.corpus)} case(s) ingested into {out}")
    table.add_column("dataset")
    for split in counts["split"]:
        table.add_column(split, justify="right")
    for dataset, per_split in counts["split_by_dataset"].items():
        table.add_row(dataset, *(str(per_split.get(s, 0)) for s in counts["split"]))
    console.print(table)
    if result.skipped:
        err_console.print(f"[yellow]{len(result.skipped)} case(s) skipped (--allow-skips):[/]")
        for s in result.skipped:
            err_console.print(f"  {s.case_id}: {s.reason}", highlight=False, soft_wrap=True)
    for w in result.warnings:
        err_console.print(f"[yellow]warning[/] {w.case_id}: {w.message}", highlight=False, soft_wrap=True)
    console.print(f"report: {Path(out) / REPORT_MD}")
