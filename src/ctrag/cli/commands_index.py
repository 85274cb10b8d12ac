"""``ctrag index`` (corpus -> saved case index) and ``ctrag search`` (report text -> ranked cases)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ctrag.cli._app import app, console, err_console
from ctrag.cli._progress import progress_bar
from ctrag.config import load_config
from ctrag.errors import InvalidInputError

if TYPE_CHECKING:
    from ctrag.data.case import Case
    from ctrag.encoders.base import Encoder
    from ctrag.retrieval.types import Hit

DEFAULT_ENCODER = "minilm"
#: ``--scorer auto`` means hybrid when ``ctrag.retrieval.hybrid`` is installed, else dense. Set this to "dense"
#: (or "hybrid") to pin the default.
DEFAULT_SCORER = "auto"
SCORERS = ("auto", "hybrid", "dense")
EXCERPT_CHARS = 90


def _create_encoder(name_or_path: str, weights: str | None, device: str) -> Encoder:
    """The encoder factory, imported lazily (tests replace this function with a small adapter)."""
    from ctrag.encoders.factory import create_encoder

    made: Any = create_encoder(name_or_path, weights=weights, device=device)
    return made[0] if isinstance(made, tuple) else made


def hybrid_available() -> bool:
    return importlib.util.find_spec("ctrag.retrieval.hybrid") is not None


def _resolve_scorer(choice: str) -> str:
    if choice not in SCORERS:
        raise InvalidInputError(f"--scorer must be one of {list(SCORERS)}, got {choice!r}")
    if choice == "auto":
        return "hybrid" if hybrid_available() else "dense"
    if choice == "hybrid" and not hybrid_available():
        raise InvalidInputError("--scorer hybrid needs ctrag.retrieval.hybrid, which is not installed; use dense")
    return choice


def _fit_hybrid(cases: Sequence[Any], embeddings: Any, config_source: str | None, seed: int) -> Any:
    """Fit the hybrid scorer (contract: ``HybridScorer.fit(cases, embeddings, config, seed)``)."""
    from ctrag.retrieval import hybrid

    config = None
    config_cls = getattr(hybrid, "HybridConfig", None)
    if config_cls is not None:
        config = load_config(config_cls, config_source, section="hybrid")
    return hybrid.HybridScorer.fit(cases, embeddings, config, seed)


def _split_list(values: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Repeated options and comma lists both work: ``--splits train --splits val`` or ``--splits train,val``."""
    out = [part.strip() for v in (values or []) for part in v.split(",") if part.strip()]
    return out or list(default)


@app.command("index")
def index_command(
    corpus_dir: Annotated[Path, typer.Argument(help="Corpus folder (manifest.jsonl written by `ctrag ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write (replaced atomically).")],
    kind: Annotated[str | None, typer.Option(help="FAISS structure: flat (exact, default), hnsw or ivfpq.")] = None,
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
) -> None:
    """Embed the reports of a corpus (train split by default) and save a searchable case index."""
    from ctrag.data.case import Corpus
    from ctrag.index import IndexConfig, build_text_index

    chosen_splits = _split_list(splits, ["train"])
    overrides = [f"kind={kind}"] if kind is not None else []
    index_cfg = load_config(IndexConfig, config, overrides, section="index")
    scorer_kind = _resolve_scorer(scorer)
    corpus = Corpus.load(corpus_dir)
    enc = _create_encoder(encoder, weights, device)
    embedding_cache = None
    if cache is not None:
        from ctrag.encoders.cache import EmbeddingCache

        embedding_cache = EmbeddingCache(cache)
    with progress_bar(progress) as bar:
        embed_task = bar.add_task("embed reports", total=None)
        add_task = bar.add_task(f"build {index_cfg.kind} index", total=None, visible=False)
        index, emb = build_text_index(
            list(corpus),
            enc,
            splits=chosen_splits,
            config=index_cfg,
            seed=seed,
            encoder_spec={"name_or_path": encoder, "weights": weights},
            source={"corpus": str(Path(corpus_dir).resolve())},
            batch_size=batch_size,
            cache=embedding_cache,
            embed_progress=lambda done, total: bar.update(embed_task, completed=done, total=total),
            index_progress=lambda done, total: bar.update(add_task, completed=done, total=total, visible=True),
        )
        if scorer_kind == "hybrid":
            fit_task = bar.add_task("fit hybrid scorer", total=None)
            index.attach_component("hybrid", _fit_hybrid(index.cases, emb, config, seed))
            bar.update(fit_task, total=1, completed=1)
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
        ("version", version.name),
    ):
        table.add_row(key, value)
    console.print(table)


def _read_query(query: str | None, report_file: Path | None) -> str:
    if query is not None and report_file is not None:
        raise InvalidInputError("give either QUERY or --report-file, not both")
    if report_file is not None:
        if not report_file.is_file():
            raise InvalidInputError(f"--report-file {report_file} does not exist")
        try:
            query = report_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"--report-file {report_file}: cannot read it as UTF-8 text ({exc})") from exc
    if query is None or not query.strip():
        raise InvalidInputError("empty query: give report text (QUERY argument or --report-file FILE)")
    return query


def _hit_record(hit: Hit) -> dict[str, Any]:
    from ctrag.data.labels import CT_RATE_LABELS

    case = hit.case
    return {
        "rank": hit.rank,
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "split": case.split,
        "score": round(hit.score, 6),
        "dense_score": round(float(hit.details.get("dense_score", hit.score)), 6),
        "strategy": hit.strategy,
        "scorer": hit.details.get("scorer"),
        "report_source": case.report_source,
        "report_text": case.report_text,
        "labels": None
        if case.labels is None
        else [name for name, v in zip(CT_RATE_LABELS, case.labels, strict=True) if v],
        "volume_path": case.volume_path,
        "mask_path": case.mask_path,
        "dataset": case.dataset,
    }


def _query_case(case_id: str, corpus: Path | None) -> Case:
    from ctrag.data.case import Corpus

    if corpus is None:
        raise InvalidInputError("--query-case needs --corpus (the corpus folder that holds the case)")
    try:
        case = Corpus.load(corpus).get(case_id)
    except KeyError:
        raise InvalidInputError(f"--query-case: no case {case_id!r} in corpus {corpus}") from None
    if not case.has_report:
        raise InvalidInputError(f"--query-case: case {case_id!r} has no report text to search with")
    return case


def _label_names(case: Case) -> list[str]:
    from ctrag.data.labels import CT_RATE_LABELS

    if case.labels is None:
        return []
    return [name for name, v in zip(CT_RATE_LABELS, case.labels, strict=True) if v]


def _label_jaccard(query: Case, hit: Case) -> str:
    """Agreement of the 18 CT-RATE labels (two label-free reports agree fully); '—' where either is unlabelled."""
    if query.labels is None or hit.labels is None:
        return "—"
    a, b = set(_label_names(query)), set(_label_names(hit))
    return f"{(len(a & b) / len(a | b)) if (a or b) else 1.0:.2f}"


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


@app.command("search")
def search_command(
    index: Annotated[Path, typer.Option("--index", "-i", help="Index folder written by `ctrag index`.")],
    query: Annotated[str | None, typer.Argument(help="Report text to search with.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Number of cases to return.")] = 5,
    strategy: Annotated[str, typer.Option(help="nearest, topk, mmr, farthest or random.")] = "nearest",
    seed: Annotated[int, typer.Option(help="Seed for the random strategy.")] = 0,
    has_mask: Annotated[bool, typer.Option("--has-mask", help="Only cases with a segmentation mask.")] = False,
    has_volume: Annotated[bool, typer.Option("--has-volume", help="Only cases with a CT volume.")] = False,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Only cases carrying this CT-RATE label (repeat: all).")
    ] = None,
    any_label: Annotated[
        list[str] | None, typer.Option("--any-label", help="Only cases carrying at least one of these labels.")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Splits to return (repeat or comma-separate). Default: train.")
    ] = None,
    report_file: Annotated[
        Path | None, typer.Option("--report-file", help="Read the query report from this UTF-8 text file.")
    ] = None,
    scorer: Annotated[str, typer.Option(help="auto (scorer stored with the index, if any), hybrid or dense.")] = "auto",
    encoder: Annotated[
        str | None, typer.Option(help="Override the encoder recorded in the index (must have its fingerprint).")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="Weights for --encoder.")] = None,
    device: Annotated[str, typer.Option(help="Device for the encoder.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    query_case: Annotated[
        str | None,
        typer.Option(
            "--query-case",
            help="Search with the report of this corpus case (needs --corpus); it must not be in the index.",
        ),
    ] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus folder holding --query-case.")] = None,
) -> None:
    """Find the cases whose reports are most similar to a report (or use another strategy)."""
    from ctrag.retrieval.retriever import Retriever
    from ctrag.retrieval.strategies import get_strategy
    from ctrag.retrieval.types import CaseFilter

    query_source = _query_case(query_case, corpus) if query_case is not None else None
    if query_source is not None:
        if query is not None or report_file is not None:
            raise InvalidInputError("give one query: QUERY, --report-file or --query-case")
        text = query_source.report_text
    else:
        if corpus is not None:
            raise InvalidInputError("--corpus is only used with --query-case")
        text = _read_query(query, report_file)
    get_strategy(strategy)  # unknown names fail before any model loads
    if scorer not in SCORERS:
        raise InvalidInputError(f"--scorer must be one of {list(SCORERS)}, got {scorer!r}")
    filters = CaseFilter(
        splits=tuple(_split_list(split, ["train"])),
        has_mask=True if has_mask else None,
        has_volume=True if has_volume else None,
        labels_all=tuple(label or ()),
        labels_any=tuple(any_label or ()),
    )
    enc = _create_encoder(encoder, weights, device) if encoder else None
    retriever = Retriever.from_dir(
        index,
        enc,
        scorer=scorer,  # type: ignore[arg-type]
        encoder_factory=lambda spec: _create_encoder(str(spec.get("name_or_path")), spec.get("weights"), device),
    )
    if query_source is not None:
        from ctrag.retrieval.guard import assert_no_leakage

        assert_no_leakage(retriever.index, [query_source])
    hits = retriever.search(text, k=k, strategy=strategy, filters=filters, seed=seed)
    if as_json:
        payload = {
            "query": text,
            "index": str(index),
            "k": k,
            "strategy": strategy,
            "seed": seed,
            "scorer": retriever.scorer_name,
            "filters": {
                "splits": list(filters.splits or ()),
                "has_mask": filters.has_mask,
                "has_volume": filters.has_volume,
                "labels": label or [],
            },
            "hits": [_hit_record(h) for h in hits],
        }
        if query_source is not None:
            payload["query_case"] = query_source.case_id
            payload["query_labels"] = _label_names(query_source)
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
        return
    if not hits:
        err_console.print(
            f"no case in {index} passes the filters (index splits: {list(retriever.index.splits)})", highlight=False
        )
        return
    if query_source is not None:
        console.print(
            f"[bold]query[/] {query_source.case_id} ({query_source.split}): {_excerpt(text)}\n"
            f"[bold]query labels[/] {', '.join(_label_names(query_source)) or 'none (normal)'}",
            highlight=False,
        )
    table = Table(title=f"{strategy} k={k} · {retriever.scorer_name} scores · {len(retriever.index)} indexed cases")
    for col, kw in (
        ("rank", {"justify": "right"}),
        ("case id", {}),
        ("score", {"justify": "right"}),
        ("split", {}),
        ("report excerpt", {"overflow": "fold"}),
        ("mask", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)  # type: ignore[arg-type]
    if query_source is not None:
        table.add_column("label Jaccard", justify="right")
    for h in hits:
        row = [
            str(h.rank + 1),
            h.case_id,
            f"{h.score:.4f}",
            h.case.split,
            _excerpt(h.case.report_text),
            h.case.mask_path or "—",
        ]
        if query_source is not None:
            row.append(_label_jaccard(query_source, h.case))
        table.add_row(*row)
    console.print(table)
