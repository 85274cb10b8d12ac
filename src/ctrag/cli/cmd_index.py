"""``ctrag index``: corpus -> saved case index (embeddings, FAISS, scorer)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ctrag.cli import _shared
from ctrag.cli._app import app, console, err_console
from ctrag.cli._progress import progress_bar, stage_callback
from ctrag.cli._shared import DEFAULT_ENCODER, DEFAULT_SCORER, SCORERS, split_list
from ctrag.config import load_config
from ctrag.errors import InvalidInputError

ONNX_CHECK_REPORTS = 64
"""Indexed reports the ONNX export is checked on (vectors must match the torch encoder's)."""


def _attach_onnx_encoder(index: Any, encoder: Any, scratch: str) -> str:
    """Export the encoder to ONNX into ``scratch`` and attach it to ``index``; what searches will run, in words.

    An encoder that cannot be exported (not a mean-pooling transformer, exporter packages missing, vectors that
    differ) leaves the index as it was: searches then build the recorded encoder, which is only slower to start.
    """
    from ctrag.encoders.onnx_text import MIN_EXPORT_COSINE, ONNX_COMPONENT, can_export, export_text_encoder
    from ctrag.errors import CtragError

    if not can_export(encoder):
        from ctrag.encoders.static_text import StaticTextEncoder

        if isinstance(getattr(encoder, "inner", encoder), StaticTextEncoder):
            return "static token table (numpy; no torch, no ONNX needed)"
        return f"built from the encoder spec ({getattr(encoder, 'name', 'this encoder')} has no ONNX export)"
    texts = [case.report_text for case in index.cases if case.report_text.strip()][:ONNX_CHECK_REPORTS]
    try:
        export = export_text_encoder(encoder, texts, scratch)
    except (CtragError, ImportError) as exc:
        err_console.print(f"[yellow]warning[/] no ONNX query encoder stored: {exc}", highlight=False)
        return "torch (ONNX export failed)"
    index.attach_component(ONNX_COMPONENT, export)
    return f"ONNX Runtime (min cosine {export.min_cosine:.6f} >= {MIN_EXPORT_COSINE} on {len(texts)} reports)"


def _resolve_scorer(choice: str) -> str:
    if choice not in SCORERS:
        raise InvalidInputError(f"--scorer must be one of {list(SCORERS)}, got {choice!r}")
    return "hybrid" if choice == "auto" else choice


@app.command("index")
def index_command(
    corpus_dir: Annotated[Path, typer.Argument(help="Corpus folder (manifest.jsonl written by `ctrag ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write (replaced atomically).")],
    kind: Annotated[str | None, typer.Option(help="FAISS structure: flat (exact, default), hnsw or ivfpq.")] = None,
    on_disk: Annotated[
        bool,
        typer.Option(
            "--on-disk",
            help="With --kind ivfpq: keep the inverted lists in index.ivfdata, memory-mapped when searching, and "
            "build them shard by shard (for corpora larger than memory; see docs/scale.md).",
        ),
    ] = False,
    encoder: Annotated[
        str, typer.Option(help="Encoder name or local model folder (see `ctrag.encoders.factory`).")
    ] = DEFAULT_ENCODER,
    weights: Annotated[str | None, typer.Option(help="Pretrained tag or local weights path for the encoder.")] = None,
    splits: Annotated[
        list[str] | None, typer.Option("--splits", help="Splits to index (repeat or comma-separate). Default: train.")
    ] = None,
    scorer: Annotated[
        str, typer.Option(help="auto (hybrid when available), hybrid (dense + BM25 + labels) or dense.")
    ] = DEFAULT_SCORER,
    config: Annotated[
        str | None, typer.Option(help="Preset name or YAML file; its index: (and hybrid:) sections are used.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for index training samples and the scorer.")] = 0,
    device: Annotated[str, typer.Option(help="Device for the encoder (cpu, cuda, cuda:1, ...).")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Reports embedded per batch.")] = 64,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    cache: Annotated[
        Path | None,
        typer.Option(help="SQLite embedding cache (text hash + encoder fingerprint); re-runs embed only new reports."),
    ] = None,
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx/--no-onnx",
            help="Store the text encoder exported to ONNX beside the index (checked to give the same vectors), so "
            "searches start without importing torch.",
        ),
    ] = True,
    # --- embedding engine (ctrag.index.ray_embed; docs/scale.md "Embedding on a Ray cluster") ---
    engine: Annotated[str, typer.Option(help="Embedding engine: local (this process) or ray (sharded, resumable).")] = (
        "local"
    ),
    workers: Annotated[int | None, typer.Option(help="Ray workers (default: 2 local, all CPUs of a cluster).")] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join a running Ray cluster (auto or HOST:PORT); default: start a local one.")
    ] = None,
    shard_size: Annotated[int | None, typer.Option(help="Reports per Ray shard (default 512).")] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Ray shard folder, reused by reruns (default: <out>.work).")
    ] = None,
) -> None:
    """Embed the reports of a corpus (train split by default) and save a searchable case index."""
    from ctrag.data.case import Corpus
    from ctrag.index import IndexConfig, build_index
    from ctrag.retrieval.hybrid import HybridConfig

    chosen_splits = split_list(splits, ["train"])
    overrides = [f"kind={kind}"] if kind is not None else []
    if on_disk:
        overrides.append("ivfpq.on_disk=true")
    index_cfg = load_config(IndexConfig, config, overrides, section="index")
    if index_cfg.ivfpq.on_disk and index_cfg.kind != "ivfpq":
        raise InvalidInputError(f"--on-disk applies to --kind ivfpq (the index kind here is {index_cfg.kind!r})")
    scorer_kind = _resolve_scorer(scorer)
    hybrid_cfg = load_config(HybridConfig, config, section="hybrid") if scorer_kind == "hybrid" else None
    corpus = Corpus.load(corpus_dir)
    enc = _shared.load_encoder(encoder, weights, device)
    from ctrag.index.ray_embed import EncoderSpec, engine_from_options

    embed = engine_from_options(
        engine, enc, EncoderSpec(encoder, weights, device), out=out, work_dir=work_dir, workers=workers,
        address=ray_address, shard_size=shard_size, batch_size=batch_size, cache=cache,
    )  # fmt: skip
    embedding_cache = None
    if cache is not None:
        from ctrag.encoders.cache import EmbeddingCache

        embedding_cache = EmbeddingCache(cache)
    with progress_bar(progress) as bar:
        built = build_index(
            list(corpus),
            enc,
            scorer="hybrid" if scorer_kind == "hybrid" else "dense",
            hybrid_config=hybrid_cfg,
            splits=chosen_splits,
            config=index_cfg,
            seed=seed,
            encoder_spec={"name_or_path": encoder, "weights": weights},
            source={"corpus": str(Path(corpus_dir).resolve())},
            batch_size=batch_size,
            cache=embedding_cache,
            progress=stage_callback(bar),
            embed=embed,
        )
    index = built.index
    with tempfile.TemporaryDirectory(prefix="ctrag-onnx-") as scratch:
        query_encoder = _attach_onnx_encoder(index, enc, scratch) if onnx else "torch (--no-onnx)"
        version = index.save(out)
    table = Table(title=f"index written to {out}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in (
        ("cases", str(len(index))),
        ("splits", ", ".join(f"{s} ({n})" for s, n in index.split_counts().items())),
        ("kind", index.kind),
        ("dimension", str(index.dim)),
        ("encoder", f"{index.encoder_name} ({index.encoder_fingerprint})"),
        ("scorer", scorer_kind),
        ("query encoder", query_encoder),
        ("version", version.name),
        *([("engine", embed.summary())] if embed is not None else []),
    ):
        table.add_row(key, value)
    console.print(table)
