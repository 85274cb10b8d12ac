"""``ctrag train encoder`` (contrastive volume<->report training) and ``ctrag encoders list``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ctrag.cli._app import app, console, err_console, evaluate_app, train_app  # noqa: F401

encoders_app = typer.Typer(help="Encoder architectures and pretrained weights known to ctrag.", no_args_is_help=True)
app.add_typer(encoders_app, name="encoders")


@train_app.command("encoder")
def train_encoder_command(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus folder (manifest.jsonl from `ctrag ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: checkpoint, trained encoder, summary.")],
    config: Annotated[str, typer.Option("--config", "-c", help="Preset name or YAML file.")] = "tiny-cpu",
    epochs: Annotated[int | None, typer.Option(help="Total epochs (overrides encoder.train.epochs).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda (default: from config).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from OUT/checkpoint.pt.")] = True,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override an encoder field, e.g. --set train.lr=5e-4.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train the volume tower CLIP-style against frozen report embeddings on cases with a CT and a report."""
    from ctrag.config import load_config
    from ctrag.data.case import Corpus
    from ctrag.encoders.config import EncoderConfig
    from ctrag.encoders.train import load_preprocess_section, train_encoder

    items = list(overrides or [])
    if epochs is not None:
        items.append(f"train.epochs={epochs}")
    if device is not None:
        items.append(f"train.device={device}")
    cfg = load_config(EncoderConfig, config, items, section="encoder")
    preprocess = load_preprocess_section(config)
    cases = Corpus.load(corpus)
    result = train_encoder(cases, out, cfg, preprocess, resume=resume, progress=progress)

    table = Table(title=f"encoder trained -> {out}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("pairs (CT + text)", str(int(result.retrieval_after["n"])))
    table.add_row("text sources", ", ".join(f"{k}: {v}" for k, v in sorted(result.report_sources.items())))
    table.add_row("epochs (resumed from)", f"{result.epochs_done} ({result.resumed_from_epoch})")
    if result.epoch_losses:
        table.add_row("loss first -> last epoch", f"{result.epoch_losses[0]:.4f} -> {result.epoch_losses[-1]:.4f}")
    before = result.retrieval_before or {}
    table.add_row(
        "train top-1 before -> after (chance)",
        f"{before.get('top1', float('nan')):.2f} -> {result.retrieval_after['top1']:.2f} "
        f"({result.retrieval_after['chance_top1']:.2f})",
    )
    table.add_row("fingerprint", result.fingerprint)
    console.print(table)
    if result.report_sources.get("annotation-derived"):
        err_console.print(
            "[yellow]note:[/] training texts include annotation-derived captions (not radiologist reports); "
            "train-set retrieval shows the code path works, not that the encoder generalises."
        )


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
