"""``ctrag curate``: a label-covering, diverse subset of the train reports (CheXficient-style curation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ctrag.cli._app import app, console
from ctrag.errors import InvalidInputError
from ctrag.utils.atomic import atomic_write_text

DEFAULT_DATA_DIR = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")


@app.command("curate")
def curate_command(
    data: Annotated[
        Path, typer.Argument(help="CT-CLIP classifier folder; its train.csv reports (with 18 labels) are curated.")
    ] = DEFAULT_DATA_DIR,
    fraction: Annotated[float, typer.Option("--fraction", "-f", help="Share of the train reports to keep.")] = 0.25,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the subset (case ids + figures) as JSON.")
    ] = None,
    diversity: Annotated[
        float, typer.Option(help="Weight of k-center report diversity vs label rarity when filling (0..1).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the tie-break order (same seed, same subset).")] = 0,
) -> None:
    """Keep every label the full train set has (rarest first), then fill with diverse, rare-label reports."""
    from ctrag.data.curation import curate, tfidf_embeddings
    from ctrag.data.labels import CT_RATE_LABELS
    from ctrag.labels.ct_rate import TRAIN_SPLIT, read_split

    if not data.exists():
        raise InvalidInputError(f"{data} does not exist; pass a CT-CLIP classifier folder holding train.csv")
    reports = read_split(data, TRAIN_SPLIT)
    result = curate(
        reports.labels, fraction, embeddings=tfidf_embeddings(reports.texts, seed=seed), diversity=diversity, seed=seed
    )
    table = Table(title=f"curated {len(result.indices)} of {result.n_total} train reports ({result.fraction:.1%})")
    for col in ("label", "full", "subset"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for name, full, sub in zip(CT_RATE_LABELS, result.label_counts_full, result.label_counts_subset, strict=True):
        table.add_row(name, str(full), str(sub))
    console.print(table)
    console.print(f"{result.coverage_rows} reports were needed to cover every label; budget {result.budget}")
    if out is not None:
        record = {
            **result.to_dict(),
            "case_ids": [reports.case_ids[i] for i in result.indices],
            "data": str(data),
            "embeddings_kind": "tfidf-svd128",
        }
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        console.print(f"wrote {out}")
