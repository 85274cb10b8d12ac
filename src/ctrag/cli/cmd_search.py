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
    text_option: Annotated[
        str | None, typer.Option("--text", help="Report text of a composed query (same as QUERY).")
    ] = None,
    volume: Annotated[
        Path | None, typer.Option("--volume", help="CT (NIfTI) of a composed query; needs --volume-encoder.")
    ] = None,
    volume_encoder: Annotated[
        str | None,
        typer.Option(help="Shared-space encoder folder trained against the index's text encoder (for --volume)."),
    ] = None,
    mix: Annotated[
        str | None,
        typer.Option(help="Weights of the composed score, e.g. text=0.7,volume=0.3 (>= 0; normalised to sum 1)."),
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Two-stage search: rerank the global top --stage1 by this region (e.g. lung).")
    ] = None,
    stage1: Annotated[int, typer.Option(help="Stage-one candidates for --region.")] = 20,
    region_score: Annotated[str, typer.Option(help="Region score for --region: lexical, label or dense.")] = "lexical",
    region_weight: Annotated[float, typer.Option(help="Share of the region score in stage two (0..1).")] = 0.5,
    diverse: Annotated[
        bool, typer.Option("--diverse", help="Reference set: MMR (relevance + diversity), one case per patient.")
    ] = False,
    mmr_lambda: Annotated[float, typer.Option(help="MMR relevance weight for --diverse (1 = nearest).")] = 0.7,
    abstain: Annotated[
        bool,
        typer.Option(
            "--abstain", help="Return nothing when the top score is below a threshold calibrated on the index."
        ),
    ] = False,
    abstain_quantile: Annotated[
        float,
        typer.Option(help="Quantile of the index's leave-one-patient-out top scores used as --abstain threshold."),
    ] = 0.05,
    abstain_on: Annotated[
        str, typer.Option(help="Score --abstain compares: dense (best report-vector cosine) or score (the scorer's).")
    ] = "dense",
) -> None:
    """Find the cases whose reports are most similar to a report (or use another strategy)."""
    methods = volume is not None or region is not None or diverse or abstain or mix is not None
    if text_option is not None:
        if query is not None:
            raise InvalidInputError("give the report text once: QUERY or --text")
        query = text_option
    if methods:
        _search_methods(
            index, query, report_file=report_file, query_case=query_case, corpus=corpus, k=k, split=split,
            scorer=scorer, encoder=encoder, weights=weights, device=device, as_json=as_json, onnx=onnx,
            volume=volume, volume_encoder=volume_encoder, mix=mix, region=region, stage1=stage1,
            region_score=region_score, region_weight=region_weight, diverse=diverse, mmr_lambda=mmr_lambda,
            abstain=abstain, abstain_quantile=abstain_quantile, abstain_on=abstain_on, strategy=strategy,
        )  # fmt: skip
        return
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


def _volume_vector(path: Path, encoder_ref: str | None, index: Any, device: str) -> Any:
    """The shared-space vector of the CT at ``path`` (refused when the encoder does not share the index's space)."""
    from ctrag.encoders.preprocess import load_prepared

    if encoder_ref is None:
        raise InvalidInputError(
            f"--volume needs --volume-encoder: index {index.encoder_name!r} holds report-text vectors only; give a "
            "shared-space encoder folder (`ctrag train encoder`) trained against that text encoder"
        )
    if not path.is_file():
        raise InvalidInputError(f"--volume {path} does not exist")
    enc = _shared.load_encoder(encoder_ref, None, device)
    if not getattr(enc, "supports_volume", False):
        raise InvalidInputError(f"--volume-encoder {encoder_ref}: encoder {enc.name!r} cannot embed CT volumes")
    text_fp = getattr(enc, "text_fingerprint", enc.fingerprint)
    if text_fp != index.encoder_fingerprint:
        raise InvalidInputError(
            f"--volume-encoder {encoder_ref}: its text side ({text_fp}) is not the index's text encoder "
            f"({index.encoder_fingerprint}); CT vectors would not be comparable with the indexed reports"
        )
    prepared = load_prepared(path, enc.preprocess)  # type: ignore[attr-defined]
    return enc.encode_volume(prepared.tensor[None])[0]


def _search_methods(index_dir: Path, query: str | None, **o: Any) -> None:
    """``ctrag search`` with --volume/--mix/--region/--diverse/--abstain (see ctrag.retrieval.composed)."""
    from ctrag.retrieval.compose import MixWeights
    from ctrag.retrieval.composed import TERMS, composed_search
    from ctrag.retrieval.evidence import STATISTICS, calibrate_abstention
    from ctrag.retrieval.regional import REGION_METHODS
    from ctrag.retrieval.retriever import Retriever
    from ctrag.retrieval.types import CaseFilter

    if o["strategy"] != "nearest":
        raise InvalidInputError("--strategy cannot be combined with --volume/--mix/--region/--diverse/--abstain")
    if o["region_score"] not in REGION_METHODS:
        raise InvalidInputError(f"--region-score must be one of {list(REGION_METHODS)}, got {o['region_score']!r}")
    if not 0.0 <= o["mmr_lambda"] <= 1.0:
        raise InvalidInputError(f"--mmr-lambda must be in [0, 1], got {o['mmr_lambda']}")
    if o["scorer"] not in SCORERS:
        raise InvalidInputError(f"--scorer must be one of {list(SCORERS)}, got {o['scorer']!r}")
    text: str | None = None
    if o["query_case"] is not None:
        if query is not None or o["report_file"] is not None:
            raise InvalidInputError("give one query: QUERY, --report-file or --query-case")
        text = _query_case(o["query_case"], o["corpus"]).report_text
    elif query is not None or o["report_file"] is not None:
        text = _read_query(query, o["report_file"])
    if text is None and o["volume"] is None:
        raise InvalidInputError("empty query: give report text (QUERY, --text or --report-file) and/or --volume")
    mix = (
        MixWeights.parse(o["mix"], known=TERMS)
        if o["mix"] is not None
        else MixWeights.of({"text": 1.0 if text else 0.0, "volume": 1.0 if o["volume"] is not None else 0.0})
    )
    device = o["device"]
    enc = _shared.load_encoder(o["encoder"], o["weights"], device) if o["encoder"] else None
    retriever = Retriever.from_dir(
        index_dir,
        enc,
        scorer=o["scorer"],
        encoder_factory=lambda spec: _shared.load_encoder(str(spec.get("name_or_path")), spec.get("weights"), device),
        device=device,
        onnx=o["onnx"],
    )
    if o["query_case"] is not None:
        from ctrag.retrieval.guard import assert_no_leakage

        assert_no_leakage(retriever.index, [_query_case(o["query_case"], o["corpus"])])
    filters = CaseFilter(splits=tuple(split_list(o["split"], ["train"])))
    vec = _volume_vector(o["volume"], o["volume_encoder"], retriever.index, device) if o["volume"] else None
    if o["abstain_on"] not in STATISTICS:
        raise InvalidInputError(f"--abstain-on must be one of {list(STATISTICS)}, got {o['abstain_on']!r}")
    threshold = (
        calibrate_abstention(retriever, o["abstain_quantile"], filters, o["abstain_on"]) if o["abstain"] else None
    )
    result = composed_search(
        retriever, text, volume_vector=vec, mix=mix, k=o["k"], filters=filters, region=o["region"],
        region_method=o["region_score"], stage1=o["stage1"], region_weight=o["region_weight"],
        diverse=o["diverse"], mmr_lambda=o["mmr_lambda"], abstention=threshold,
    )  # fmt: skip
    root = _corpus_root(retriever.index)
    if o["as_json"]:
        payload: dict[str, Any] = {
            "query": text,
            "volume": None if o["volume"] is None else str(o["volume"]),
            "index": str(index_dir),
            "k": o["k"],
            "scorer": retriever.scorer_name,
            "weights": result.weights,
            "method": result.info,
            "abstained": result.abstained,
            "abstention": None if threshold is None else {**threshold.to_dict(), "top_score": result.top_text_score},
            "hits": [{**_hit_record(h, root), "terms": h.details.get("terms", {})} for h in result.hits],
        }
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
        return
    if result.abstained:
        assert threshold is not None
        console.print(
            f"abstained: top score {result.top_text_score:.4f} is below the threshold {threshold.threshold:.4f} "
            f"(quantile {threshold.quantile:g} of {threshold.n_queries} leave-one-patient-out top scores)",
            highlight=False,
        )
        return
    title = f"composed {result.weights}" + (f" · region {o['region']} ({o['region_score']})" if o["region"] else "")
    table = Table(title=title + (" · MMR, one per patient" if o["diverse"] else ""))
    for col in ("rank", "case id", "score", "patient", "report excerpt"):
        table.add_column(col)
    for h in result.hits:
        table.add_row(str(h.rank + 1), h.case_id, f"{h.score:.4f}", h.case.patient_id, _excerpt(h.case.report_text))
    console.print(table)
