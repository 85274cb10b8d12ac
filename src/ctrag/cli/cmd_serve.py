"""``ctrag serve``: the HTTP service and browser viewer over an index, generator weights and a corpus."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from ctrag.cli._app import app, console
from ctrag.cli._shared import DeviceOpt, SetOpt, ThreadsOpt, set_threads
from ctrag.errors import MissingDependencyError


@app.command("serve")
def serve_command(
    index: Annotated[Path, typer.Option("--index", "-i", help="Index folder written by `ctrag index`.")],
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Generator run folder (`ctrag train`); without it: search only.")
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="Corpus folder whose cases the viewer shows (default: the index's)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for job outputs and uploads.")] = Path("ctrag_serve"),
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback unless a token is set).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File whose first line is the access token (else $CTRAG_SERVE_TOKEN); needed beyond loopback.",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", help="Host header to accept (repeat); default: loopback names on loopback."),
    ] = None,
    max_queued: Annotated[int, typer.Option("--max-queued", help="Jobs waiting or running before HTTP 429.")] = 4,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest accepted upload (MiB).")] = 64.0,
    lazy: Annotated[bool, typer.Option("--lazy", help="Load models on the first request, not before listening.")] = (
        False
    ),
    set_: SetOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Serve search, generation jobs with live progress, case files and the NiiVue viewer page over HTTP."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(
            f"ctrag serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'ctrag[serve]'"
        ) from None

    from ctrag.serve.app import create_app
    from ctrag.serve.config import ServeConfig, token_from_env_or_file
    from ctrag.serve.service import CtragService

    set_threads(threads)
    config = ServeConfig(
        index_dir=index,
        weights_dir=weights,
        corpus_dir=corpus,
        out_dir=out,
        host=host,
        port=port,
        token=token_from_env_or_file(token_file),
        allowed_hosts=tuple(allowed_host or ()),
        max_queued=max_queued,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        device=device,
        overrides=tuple(set_ or ()),
    )
    service = CtragService(config)
    if not lazy:
        with console.status("loading the index, text encoder and generator ..."):
            service.load()
        # Case masks are converted to the viewer's labels in the background while the server already answers.
        threading.Thread(target=service.warm_mask_cache, name="ctrag-warm-masks", daemon=True).start()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    console.print(f"[bold]ctrag serve[/] on {url}  (API docs: {url}docs)", highlight=False)
    if config.token is not None:
        console.print(f"open {url}#token=<your token> (the token stays in the page, it is never logged)")
    uvicorn.run(create_app(config, service), host=host, port=port, log_level="warning", access_log=False)
