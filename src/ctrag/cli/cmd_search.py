"""``ctrag search``: report text or a held-out case -> ranked training cases."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ctrag.cli import _shared
from ctrag.cli._app import app, console, err_console
from ctrag.cli._shared import SCORERS, split_list
from ctrag.errors import InvalidInputError

if TYPE_CHECKING:
    from ctrag.data.case import Case
    from ctrag.retrieval.types import Hit


EXCERPT_CHARS = 90


def _read_query(query: str | None, report_file: Path | None) -> str:
    if query is not None and report_file is not None:
        raise InvalidInputError("give either QUERY or --report-file, not both")
    if report_file is not None:
        return _shared.read_report_file(report_file)
    if query is None or not query.strip():
        raise InvalidInputError("empty query: give report text (QUERY argument or --report-file FILE)")
    return _shared.check_report(query, what="the query")


def _corpus_root(index: Any) -> Path | None:
    """The corpus folder an index was built from (``ctrag index`` records it), or None when unknown."""
    folder = (getattr(index, "source", None) or {}).get("corpus")
    return Path(folder) if folder else None


def _relative_path(path: str | None, corpus_root: Path | None) -> str | None:
    """``path`` relative to the corpus folder, as the manifest stores it; unchanged when no root is known."""
    if path is None or corpus_root is None:
        return path
    try:
        return os.path.relpath(path, corpus_root)
    except ValueError:  # another drive (Windows): no relative form exists
        return path


def _hit_record(hit: Hit, corpus_root: Path | None = None) -> dict[str, Any]:
    """One hit as JSON; volume and mask paths relative to ``corpus_root`` (no absolute paths of this machine)."""
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
        "volume_path": _relative_path(case.volume_path, corpus_root),
        "mask_path": _relative_path(case.mask_path, corpus_root),
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
    from ctrag.retrieval.label_agreement import label_names

    return label_names(case.labels)


def _label_jaccard(query: Case, hit: Case) -> str:
    """Agreement of the 18 CT-RATE labels (two label-free reports agree fully); '—' where either is unlabelled."""
    from ctrag.retrieval.label_agreement import pair_jaccard

    value = pair_jaccard(query.labels, hit.labels)
    return "—" if value is None else f"{value:.2f}"


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
    onnx: Annotated[
        bool,
        typer.Option("--onnx/--no-onnx", help="Embed the query with the index's stored ONNX encoder when it has one."),
    ] = True,
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
        splits=tuple(split_list(split, ["train"])),
        has_mask=True if has_mask else None,
        has_volume=True if has_volume else None,
        labels_all=tuple(label or ()),
        labels_any=tuple(any_label or ()),
    )
    enc = _shared.load_encoder(encoder, weights, device) if encoder else None
    retriever = Retriever.from_dir(
        index,
        enc,
        scorer=scorer,  # type: ignore[arg-type]
        encoder_factory=lambda spec: _shared.load_encoder(str(spec.get("name_or_path")), spec.get("weights"), device),
        device=device,
        onnx=onnx,
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
            "corpus": None if _corpus_root(retriever.index) is None else str(_corpus_root(retriever.index)),
            "hits": [_hit_record(h, _corpus_root(retriever.index)) for h in hits],
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
            _relative_path(h.case.mask_path, _corpus_root(retriever.index)) or "—",
        ]
        if query_source is not None:
            row.append(_label_jaccard(query_source, h.case))
        table.add_row(*row)
    console.print(table)
