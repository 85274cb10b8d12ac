"""``ctrag encoders list``: encoder architectures and pretrained weights known to ctrag; ``ctrag encoders
distill-static``: a static token-embedding encoder distilled from the packaged MiniLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ctrag.cli._app import app, console
from ctrag.cli._progress import stage_progress
from ctrag.cli._shared import ProgressOpt, ThreadsOpt, load_corpus, set_threads

encoders_app = typer.Typer(help="Encoder architectures and pretrained weights known to ctrag.", no_args_is_help=True)


app.add_typer(encoders_app, name="encoders")


@encoders_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Registered encoder architectures and their pretrained tags (local files only)."""
    from ctrag.encoders.factory import get_model_config, list_encoders
    from ctrag.encoders.pretrained import list_pretrained_tags

    rows = []
    for name in list_encoders():
        cfg = get_model_config(name)
        rows.append(
            {
                "name": name,
                "type": cfg["type"],
                "dim": cfg.get("embed_dim"),
                "tags": list_pretrained_tags(name),
                "description": cfg.get("description", ""),
            }
        )
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="ctrag encoders")
    for col in ("name", "type", "dim", "pretrained tags", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["type"], str(r["dim"] or "-"), ", ".join(r["tags"]) or "-", r["description"])
    console.print(table)


@encoders_app.command("distill-static")
def distill_static_command(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus folder (manifest.jsonl from `ctrag ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encoder folder to write (replaced atomically).")],
    pca_dims: Annotated[
        int, typer.Option(help="PCA components kept of the token vectors (0 = keep all 384, no PCA).")
    ] = 256,
    sif_a: Annotated[float, typer.Option(help="Frequency-weight constant a: weight = a / (a + p(token)).")] = 1e-3,
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Distil the packaged MiniLM into a static token-embedding encoder (weights from the train split only).

    Use it with `ctrag index CORPUS --encoder minilm-static --weights OUT`; it embeds whole reports without
    torch, at hundreds of reports per second on 2 cores, and has its own fingerprint (a MiniLM index refuses it).
    """
    from ctrag.encoders.static_text import StaticDistillConfig, distill_static_encoder, train_reports

    set_threads(threads)
    cases = list(load_corpus(corpus))
    texts = train_reports(cases)  # refuse a corpus without train reports before loading any model
    config = StaticDistillConfig(pca_dims=pca_dims or None, sif_a=sif_a)
    with stage_progress(progress, "distil") as callback:
        folder = distill_static_encoder(cases, out, config=config, progress=callback)
    table = Table(title=f"static encoder written to {folder}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    from ctrag.encoders.static_text import StaticTextEncoder

    encoder = StaticTextEncoder(folder)
    for key, value in (
        ("train reports", str(len(texts))),
        ("dimension", str(encoder.dim)),
        ("fingerprint", encoder.fingerprint),
        ("source", str(encoder.manifest["source"]["fingerprint"])),
        ("use", f"ctrag index CORPUS --encoder minilm-static --weights {folder}"),
    ):
        table.add_row(key, value)
    console.print(table)
