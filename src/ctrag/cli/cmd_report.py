"""``ctrag report``: a report for a CT (or, for evaluation, for a given report) from retrieved training cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ctrag.cli import _shared
from ctrag.cli._app import app
from ctrag.errors import InvalidInputError

#: Report methods of issue 13.
BUILT_METHODS = ("retrieval", "adarag", "diffvp", "reg2rg")
PLANNED_METHODS: tuple[str, ...] = ()


def _check_method(method: str) -> None:
    if method in BUILT_METHODS:
        return
    if method in PLANNED_METHODS:
        raise InvalidInputError(f"--method {method} is not built yet; available: {', '.join(BUILT_METHODS)}")
    raise InvalidInputError(f"unknown --method {method!r}; available: {', '.join(BUILT_METHODS)}")


@app.command("report")
def report_command(
    volume: Annotated[Path | None, typer.Argument(help="CT volume (NIfTI, HU) to report on.")] = None,
    index: Annotated[Path | None, typer.Option("--index", "-i", help="Index folder written by `ctrag index`.")] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Anatomy mask on the CT's grid (TotalSegmentator 'total' labels).")
    ] = None,
    query_report: Annotated[
        Path | None,
        typer.Option("--query-report", help="Query with this report text instead of a CT (text-to-text retrieval)."),
    ] = None,
    method: Annotated[str, typer.Option("--method", help="retrieval, adarag, diffvp or reg2rg.")] = "retrieval",
    lm: Annotated[
        Path | None,
        typer.Option("--lm", help="adarag/diffvp/reg2rg: model folder written by `ctrag train reporter`."),
    ] = None,
    regions: Annotated[
        list[str] | None, typer.Option("--region", help="reg2rg: region to write (repeatable; default all ten).")
    ] = None,
    no_rag: Annotated[bool, typer.Option("--no-rag", help="adarag: never retrieve.")] = False,
    oracle: Annotated[
        bool, typer.Option("--oracle", help="adarag: contexts from --query-report (own report).")
    ] = False,
    top_k: Annotated[int | None, typer.Option("--top-k", help="adarag: sentences per retrieval.")] = None,
    max_retrievals: Annotated[int | None, typer.Option("--max-retrievals", help="adarag: cap on retrievals.")] = None,
    pairing: Annotated[str, typer.Option("--pairing", help="diffvp: random or nearest reference.")] = "random",
    seed: Annotated[int, typer.Option("--seed", help="diffvp: seed of random pairing.")] = 0,
    concepts: Annotated[
        bool | None,
        typer.Option(
            "--concepts/--no-concepts",
            help="adarag/diffvp: expect a model trained with (or without) concept prompts; a mismatch is refused. "
            "Default: the model's own setting.",
        ),
    ] = None,
    classifier: Annotated[
        Path | None,
        typer.Option(
            "--classifier",
            help="adarag with concepts: 18-label CT classifier folder (`ctrag train classifier`) whose "
            "predictions become the concept prompt.",
        ),
    ] = None,
    compose: Annotated[
        bool,
        typer.Option("--compose/--nearest", help="Compose region paragraphs from several cases, or copy the nearest."),
    ] = True,
    source_cases: Annotated[int, typer.Option("--source-cases", help="Nearest training cases to compose from.")] = 10,
    per_region: Annotated[int, typer.Option("--per-region", help="Sentences per region paragraph.")] = 3,
    mmr_lambda: Annotated[float, typer.Option("--mmr-lambda", help="MMR relevance weight (1 = no diversity).")] = 0.7,
    device: Annotated[str, typer.Option(help="Device for the encoders.")] = "cpu",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (report, sentences with sources, query).")
    ] = False,
) -> None:
    """Write a report from retrieved training reports, each sentence with its source case."""
    from ctrag.reporting.retrieval_reporter import (
        Mode,
        RetrievalReportConfig,
        RetrievalReporter,
        load_query_volume,
    )

    _check_method(method)
    if method not in ("adarag", "diffvp") and (concepts is not None or classifier is not None):
        raise InvalidInputError("--concepts/--no-concepts and --classifier go with --method adarag or diffvp")
    if method == "reg2rg":
        _reg2rg(volume, mask, lm, regions, query_report, as_json, device)
        return
    if method in ("adarag", "diffvp"):
        _lm_method(method, volume, mask, lm, query_report, no_rag, oracle, top_k, max_retrievals, pairing, seed, device,
                   as_json, concepts, classifier)  # fmt: skip
        return
    if (volume is None) == (query_report is None):
        raise InvalidInputError("give one query: a CT VOLUME or --query-report FILE")
    if mask is not None and volume is None:
        raise InvalidInputError("--mask goes with a CT VOLUME")
    if index is None:
        raise InvalidInputError("--index DIR is required (an index written by `ctrag index`)")
    cfg = RetrievalReportConfig(source_cases=source_cases, per_region=per_region, mmr_lambda=mmr_lambda)
    mode: Mode = "compose" if compose else "nearest"
    text = _shared.read_report_file(query_report, option="--query-report") if query_report is not None else None
    vol, msk = load_query_volume(volume, mask) if volume is not None else (None, None)
    reporter = RetrievalReporter.from_dir(
        index,
        cfg,
        device=device,
        encoder_factory=lambda spec: _shared.load_encoder(str(spec.get("name_or_path")), spec.get("weights"), device),
    )
    if vol is not None:
        result = reporter.report_for_volume(vol, msk, mode=mode)
    else:
        assert text is not None
        result = reporter.report_for_text(text, mode=mode)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return
    out = sys.stdout
    for note in result.query.notes:
        out.write(f"note: {note}\n")
    out.write(f"\n{result.text}\n\nSources ({result.mode}):\n")
    for s in result.sentences:
        where = s.region or s.section
        out.write(f"  [{where}] {s.case_id} ({s.split}, score {s.score:.3f}): {s.text}\n")


def _reg2rg(
    volume: Path | None,
    mask: Path | None,
    lm: Path | None,
    regions: list[str] | None,
    query_report: Path | None,
    as_json: bool,
    device: str,
) -> None:
    from ctrag.reporting.reg2rg import Reg2RGReporter
    from ctrag.reporting.retrieval_reporter import load_query_volume

    if volume is None or query_report is not None:
        raise InvalidInputError("--method reg2rg reports on a CT VOLUME (it is image-to-text; no --query-report)")
    if lm is None:
        raise InvalidInputError("--method reg2rg needs --lm DIR (a folder from `ctrag train reporter --method reg2rg`)")
    vol, msk = load_query_volume(volume, mask)
    reporter = Reg2RGReporter.from_pretrained(lm, device=device)
    result = reporter.report(vol, msk, regions=regions or None)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return
    out = sys.stdout
    for note in [*result.visual.get("notes", []), *result.notes]:
        out.write(f"note: {note}\n")
    out.write(f"mask source: {result.visual.get('mask_source')}\n\n{result.text}\n")


def _lm_method(
    method: str,
    volume: Path | None,
    mask: Path | None,
    lm: Path | None,
    query_report: Path | None,
    no_rag: bool,
    oracle: bool,
    top_k: int | None,
    max_retrievals: int | None,
    pairing: str,
    seed: int,
    device: str,
    as_json: bool = True,
    concepts: bool | None = None,
    classifier: Path | None = None,
) -> None:
    """AdaRAG-CT / DiffVP on a CT; ``--query-report`` is only the case's own report for ``--oracle``."""
    import random

    from ctrag.reporting.retrieval_reporter import load_query_volume

    if lm is None:
        raise InvalidInputError(f"--method {method} needs --lm DIR (a folder from `ctrag train reporter`)")
    if volume is None:
        raise InvalidInputError(f"--method {method} reports on a CT VOLUME")
    if oracle and no_rag:
        raise InvalidInputError("--oracle and --no-rag exclude each other")
    if oracle and query_report is None:
        raise InvalidInputError("--oracle takes its contexts from the case's own report: give it as --query-report")
    vol, msk = load_query_volume(volume, mask)
    if method == "adarag":
        from ctrag.reporting.adarag import AdaRAGModel

        model, bank = AdaRAGModel.load(lm, device=device)
        enabled = model.cfg.concepts.enabled
        _check_concepts(method, lm, enabled, concepts)
        if enabled and classifier is None:
            raise InvalidInputError(
                f"{lm} was trained with concept prompts (--concepts): give --classifier DIR (a folder from "
                "`ctrag train classifier`) for the CT's 18-label predictions"
            )
        if not enabled and classifier is not None:
            raise InvalidInputError(f"{lm} was trained without concept prompts; --classifier would not be used")
        probs = None
        if classifier is not None:
            from ctrag.evaluation.classifier import ClinicalClassifier

            if not classifier.exists():
                raise InvalidInputError(f"--classifier {classifier} does not exist")
            probs = ClinicalClassifier.load(classifier, device=device).predict_proba([vol])[0]
        tokens = None
        notes: list[str] = []
        if model.visual is not None:
            feats = model.visual.extract(vol, msk)
            tokens, notes = feats.global_tokens, list(feats.notes)
        own = _shared.read_report_file(query_report, option="--query-report") if query_report else None
        rep = model.generate(
            bank,
            visual=tokens,
            mode="oracle" if oracle else ("no_rag" if no_rag else "adaptive"),
            own_report=own,
            top_k=top_k,
            max_retrievals=max_retrievals,
            concept_probs=probs,
        )
        rep.notes = notes + rep.notes
        result = rep.to_dict()
    else:
        from ctrag.reporting.diffvp import DiffVPModel, choose_pairing, pick_stored_reference

        dmodel, refs = DiffVPModel.load(lm, device=device)
        _check_concepts(method, lm, dmodel.cfg.anchor.enabled, concepts)
        if classifier is not None:
            raise InvalidInputError("--classifier: DiffVP predicts its diagnostic anchor with its own head")
        feats = dmodel.visual.extract(vol, msk)
        i, ref = pick_stored_reference(refs, feats, choose_pairing(pairing), random.Random(seed))
        result = dmodel.report((feats.global_tokens.float(), feats.texture.float()), ref)
        result.update(
            reference={"case_id": refs["case_ids"][i], "split": refs.get("split"), "pairing": pairing},
            notes=list(feats.notes),
            mask_source=feats.mask_source,
        )
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
        return
    _print_lm_result(result)


def _check_concepts(method: str, lm: Path, trained_with: bool, asked: bool | None) -> None:
    """A prompt the model was not trained on is refused rather than silently changed."""
    if asked is None or asked == trained_with:
        return
    how = "with" if trained_with else "without"
    raise InvalidInputError(
        f"{lm} was trained {how} concept prompts; --{'' if asked else 'no-'}concepts does not match (retrain with "
        f"`ctrag train reporter --method {method} --{'' if asked else 'no-'}concepts`, or drop the option)"
    )


def _print_lm_result(result: dict[str, Any]) -> None:
    """The text view of an AdaRAG-CT / DiffVP result: notes, the report, then where its extra text came from."""
    out = sys.stdout
    for note in result.get("notes", []):
        out.write(f"note: {note}\n")
    if result["method"] == "adarag":
        out.write(f"mode: {result['mode']}\n")
        if result.get("concepts"):
            out.write(f"concepts (classifier): {result['concepts'].strip()}\n")
        out.write(f"\n{result['report']}\n\n")
        rets = result.get("retrievals", [])
        out.write(f"Retrievals ({len(rets)}):\n" if rets else "Retrievals: none\n")
        for n, r in enumerate(rets, 1):
            out.write(f"  {n}. [{', '.join(r['regions'])}] after: {r['partial'] or '(report start)'}\n")
            for h in r["sentences"]:
                out.write(f"     {h['case_id']} ({h['region']}, score {h['score']:.3f}): {h['text']}\n")
        return
    ref = result["reference"]
    out.write(f"mask source: {result.get('mask_source')}\n\n{result['report']}\n\n")
    out.write(f"Normal reference: {ref['case_id']} ({ref.get('split')} pool, {ref['pairing']} pairing)\n")
    anchor = result["anchor"].strip().removesuffix("Report:").strip()
    out.write(f"Anchor: {anchor or 'off (trained with --no-concepts)'}\n")
