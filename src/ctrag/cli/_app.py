"""The Typer application objects; command modules attach to them on import.

Only the CLI prints or exits. Command modules keep to argument parsing and presentation and call library
functions for the work, so everything the CLI can do is also reachable from Python.
"""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="ctrag",
    help="Retrieval-augmented CT: ingest a corpus, index it, search cases, generate CTs from reports, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(
    help="Train ctrag models on a corpus (encoder, vae, diffusion, controlnet, ...).", no_args_is_help=True
)
evaluate_app = typer.Typer(
    help="Evaluate retrieval, generation or reports; writes tables and JSON.", no_args_is_help=True
)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")

console = Console()
err_console = Console(stderr=True)
