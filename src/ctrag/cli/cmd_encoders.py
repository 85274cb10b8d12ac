"""``ctrag encoders list``: encoder architectures and pretrained weights known to ctrag."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ctrag.cli._app import app, console

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
