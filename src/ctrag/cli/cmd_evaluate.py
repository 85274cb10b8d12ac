"""``ctrag evaluate retrieval|generation|reports``: argument parsing and presentation; the work is in
``ctrag.evaluation``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ctrag.cli import _shared
from ctrag.cli._app import console, evaluate_app
from ctrag.cli._progress import progress_bar, stage_callback, stage_progress
from ctrag.cli._shared import ConfigOpt, ProgressOpt, SetOpt, ThreadsOpt, command_line, set_threads
from ctrag.config import load_config
from ctrag.data.readers import read_text_table
from ctrag.errors import InvalidInputError
from ctrag.evaluation.report_bootstrap import METEOR_PER_REPORT
from ctrag.evaluation.report_metrics import LANGUAGE_METRIC_TITLES
from ctrag.utils.atomic import atomic_write_text

DEFAULT_CTCLIP_DIR = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")
PROTOCOL_NAMES = {
    "coco": "coco (pycocoevalcap BLEU/ROUGE-L/CIDEr on lower-cased alphanumeric tokens, Java METEOR 1.5, "
    "rouge-score ROUGE-1/2)",
    "reg2rg": "reg2rg (Reg2RG's HF evaluate: 13a-token corpus BLEU smooth=True, NLTK METEOR, rouge_score "
    "ROUGE-1/2/L on raw text, pycocoevalcap CIDEr on raw text; corpus METEOR/ROUGE/CIDEr = per-report means)",
    "adarag": "adarag (AdaRAG-CT's text_metrics.py: pycocoevalcap BLEU/ROUGE-L/CIDEr and Java METEOR 1.5 on the "
    "stripped, lower-cased raw text, punctuation left on the words; ROUGE-1/2 are not theirs)",
}


@evaluate_app.command("retrieval")
def evaluate_retrieval_command(
    data: Annotated[
        Path,
        typer.Argument(help="CT-CLIP classifier folder with train.csv (index) and val.csv (queries) + 18 labels."),
    ] = DEFAULT_CTCLIP_DIR,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for retrieval_eval.{json,md} + figure.")] = Path(
        "results"
    ),
    config: Annotated[
        str | None, typer.Option(help="Preset or YAML; its index:, retrieval: and hybrid: sections are used.")
    ] = None,
    index: Annotated[
        Path | None, typer.Option(help="Evaluate this saved index (`ctrag index`) instead of building one.")
    ] = None,
    encoder: Annotated[str, typer.Option(help="Text encoder name or local model folder.")] = "minilm",
    weights: Annotated[str | None, typer.Option(help="Pretrained tag or local weights for the encoder.")] = None,
    cache: Annotated[
        Path | None, typer.Option(help="SQLite embedding cache file (created if missing); speeds up reruns.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a hybrid: setting, e.g. --set rerank_k=50.")
    ] = None,
    k: Annotated[int, typer.Option(help="Reports retrieved per query (metrics at 1 and k).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the random baseline, weight search and bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for 95 % CIs (0: none).")] = 2000,
    ablations: Annotated[bool, typer.Option("--ablations/--no-ablations", help="Also fit ablations.")] = True,
    device: Annotated[str, typer.Option(help="Device for the encoder (cpu, cuda, ...).")] = "cpu",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    gap_corpus: Annotated[
        Path | None,
        typer.Option(
            "--gap-corpus",
            help="Corpus (`ctrag ingest`) whose CT + report cases measure the modality gap of a shared-space "
            "--encoder; writes OUT/modality_gap.json.",
        ),
    ] = None,
) -> None:
    """Label and text agreement of retrieved reports: default retriever vs random, TF-IDF, BM25, MiniLM, oracle."""
    from ctrag.encoders.cache import memo_encoder
    from ctrag.evaluation.retrieval_eval import RetrievalEvalConfig, evaluate_retrieval, load_ctclip_eval_data
    from ctrag.evaluation.retrieval_report import summary_rows, write_outputs
    from ctrag.index import IndexConfig
    from ctrag.retrieval.hybrid import HybridConfig
    from ctrag.retrieval.retriever import RetrievalConfig, Retriever

    eval_cfg = RetrievalEvalConfig(k=k, ks=(1, k) if k > 1 else (1,), bootstrap=bootstrap, seed=seed,
                                   ablations=ablations)  # fmt: skip
    hybrid_cfg = load_config(HybridConfig, config, overrides or [], section="hybrid")
    index_cfg = load_config(IndexConfig, config, section="index")
    retrieval_cfg = load_config(RetrievalConfig, config, section="retrieval")
    dataset = load_ctclip_eval_data(data)
    enc = _shared.load_encoder(encoder, weights, device)
    if gap_corpus is not None and not enc.supports_volume:
        raise InvalidInputError(
            f"--gap-corpus needs an encoder with a volume side (a `ctrag train encoder` folder); {encoder!r} has none"
        )

    with progress_bar(progress) as bar:
        report = stage_callback(bar)

        memo = memo_encoder(enc, cache_path=cache, progress=report)
        loaded_index, scorer = None, None
        if index is not None:
            retriever = Retriever.from_dir(index, memo, config=retrieval_cfg)
            loaded_index, scorer = retriever.index, retriever.scorer
        result = evaluate_retrieval(
            dataset,
            memo,
            index_config=index_cfg,
            hybrid_config=hybrid_cfg,
            retrieval_config=retrieval_cfg,
            config=eval_cfg,
            index=loaded_index,
            scorer=scorer,  # type: ignore[arg-type]
            encoder_spec={"name_or_path": encoder, "weights": weights},
            progress=report,
        )
    argv = ["ctrag", "evaluate", "retrieval", str(data), "--out", str(out), "--k", str(k), "--seed", str(seed)]
    argv += ["--config", config] if config else []
    argv += ["--index", str(index)] if index else []
    argv += ["--encoder", encoder] if encoder != "minilm" else []
    argv += ["--bootstrap", str(bootstrap)] + ([] if ablations else ["--no-ablations"])
    argv += [part for item in overrides or [] for part in ("--set", item)]
    command = " ".join(shlex.quote(a) for a in argv)
    written = write_outputs(result, out, command=command)

    table = Table(
        title=f"report -> case retrieval ({result.data['queries']} queries, {result.data['index_rows']} rows)"
    )
    cols = ("method", "J@1", f"J@{k}", "EM-P@1", "hit@1", "ROUGE-L@1", "fit s")
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in summary_rows(result, eval_cfg.ks, ci=False):
        table.add_row(*(row[c] for c in cols), style="bold" if row["group"] == "default" else None)
    console.print(table)
    for c in result.comparisons:
        lo, hi = c["ci95"]
        console.print(f"default - {c['b']}: {c['metric']} {c['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    if result.label_model:
        lm = result.label_model
        console.print(f"label model on queries: macro-F1 {lm['macro_f1']:.3f}, macro AUC {lm['macro_auc']:.3f}")
    for note in result.setup.get("notes", []):
        console.print(f"[dim]note: {note}[/]")
    if gap_corpus is not None:
        written.append(_modality_gap(enc, gap_corpus, out, command + f" --gap-corpus {shlex.quote(str(gap_corpus))}"))
    elif enc.supports_volume:
        console.print("[dim]note: the encoder has a volume side; add --gap-corpus CORPUS for its modality gap[/]")
    console.print("wrote " + ", ".join(str(p) for p in written))


def _modality_gap(enc: Any, corpus: Path, out: Path, command: str) -> Path:
    from ctrag.data.case import Corpus
    from ctrag.evaluation.modality_gap import encoder_modality_gap

    record = encoder_modality_gap(enc, Corpus.load(corpus))
    gap, recall = record["modality_gap"], record["ct_to_text"]
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(record["pair_sources"].items()))
    console.print(
        f"modality gap on {record['pairs']} CT-text pairs ({kinds}): gap norm {gap['gap_norm']:.3f}, centroid "
        f"cosine distance {gap['centroid_cosine_distance']:.3f}, alignment {gap['alignment']:.3f}, uniformity "
        f"CT {gap['uniformity_a']:.3f} / text {gap['uniformity_b']:.3f}, CT->text recall@1 {recall['recall@1']:.2f}"
    )
    if set(record["pair_sources"]) - {"radiologist"}:
        console.print("[yellow]note:[/] pairs are not all CTs with their own radiologist report (see pair_sources)")
    path = out / "modality_gap.json"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**record, "command": command}, indent=2) + "\n")
    return path


@evaluate_app.command("generation")
def evaluate_generation_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (tables, figures, generated volumes).")],
    config: ConfigOpt = "tiny-cpu",
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus folder (overrides the config).")] = None,
    pipeline: Annotated[Path | None, typer.Option("--pipeline", help="Generator run folder (overrides).")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Retrieval index (train split only).")] = None,
    classifier: Annotated[Path | None, typer.Option("--classifier", help="Classifier folder (overrides).")] = None,
    external: Annotated[
        list[str] | None,
        typer.Option(
            "--external",
            help="Score another method's CTs as an extra row: NAME=CSV with columns case_id, seed, path[, mask] "
            "(paths relative to the CSV; mask: empty = text-only, gt = the case's own mask, or a mask file). "
            "Repeatable.",
        ),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated rows to evaluate: ctrag methods (none, farthest, random, nearest, gt_mask) and/or "
            "--external names. Only external names: no --pipeline needed.",
        ),
    ] = None,
    reference: Annotated[
        str | None, typer.Option("--reference", help="Row the Wilcoxon test compares against (default: config's).")
    ] = None,
    set_: SetOpt = None,
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Run the generation ablation (methods × seeds × held-out reports) and write the paper-layout table.

    Already generated volumes under OUT/generated are reused, so an interrupted run continues where it stopped.
    Other methods' outputs (--external) are scored under the same protocol, marked in the tables.
    """
    from ctrag.data.transforms import PreprocessConfig
    from ctrag.evaluation.external import parse_external_spec
    from ctrag.evaluation.generation_config import METHODS, GenerationEvalConfig
    from ctrag.evaluation.generation_eval import evaluate_generation
    from ctrag.segment import SegmentConfig

    set_threads(threads)
    overrides = list(set_ or [])
    for key, value in (("corpus", corpus), ("pipeline", pipeline), ("index", index), ("classifier", classifier)):
        if value is not None:
            overrides.append(f"{key}={value}")
    specs = [parse_external_spec(item) for item in external or []]
    names = [name for name, _ in specs]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"--external: a name given twice in {names}")
    if methods is not None:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in METHODS and m not in names]
        if unknown or not chosen:
            raise InvalidInputError(
                f"--methods {methods!r}: unknown {unknown}; choose among ctrag's {list(METHODS)} and the "
                f"--external names {names}"
            )
        specs = [(n, p) for n, p in specs if n in chosen]
        overrides.append(f"methods={json.dumps([m for m in chosen if m in METHODS])}")
    overrides += [f"external.{name}={json.dumps(path)}" for name, path in specs]
    if reference is not None:
        overrides.append(f"reference_method={json.dumps(reference)}")
    elif methods is not None:
        # The preset's reference (RAG-Nearest) may not be among the chosen rows: then the first chosen row is.
        preset_ref = load_config(GenerationEvalConfig, config, section="evaluation").reference_method
        if preset_ref not in chosen:
            overrides.append(f"reference_method={json.dumps(chosen[0])}")
    cfg = load_config(GenerationEvalConfig, config, overrides, section="evaluation")
    seg_cfg = load_config(SegmentConfig, config, section="segment")
    space = load_config(PreprocessConfig, config, section="preprocess")
    command = command_line(
        "evaluate",
        "generation",
        "--config",
        config,
        "--out",
        out,
        *[x for o in overrides for x in ("--set", o)],
    )
    with stage_progress(progress, "evaluation") as update:
        paths = evaluate_generation(cfg, out, segment_config=seg_cfg, space=space, command=command, progress=update)
    console.print(paths["markdown"].read_text(encoding="utf-8"), markup=False, highlight=False)
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    for key, entry in record.get("methods", {}).items():
        ext = entry.get("external")
        if not ext:
            continue
        for bad in ext.get("unreadable", []):
            console.print(f"[yellow]warning:[/] {key}: skipped {bad['error']}", highlight=False)
        if ext.get("missing"):
            console.print(
                f"[yellow]warning:[/] {key}: {len(ext['missing'])} (case, seed) pair(s) without a row: "
                f"{', '.join(ext['missing'][:8])}",
                highlight=False,
            )
    console.print(f"[bold]written[/] {', '.join(str(p) for p in paths.values())}")


def load_label_extractor(path: Path) -> Any:
    """A saved 18-label report model: a :class:`ctrag.labels.LabelExtractor` folder (``ctrag labels
    --save-model``) or an older TF-IDF ``ctrag.retrieval.label_model.LabelModel`` folder."""
    if not path.is_dir():
        raise InvalidInputError(f"--label-model {path}: not a folder holding a saved label model")
    if (path / "label_extractor.json").is_file():
        from ctrag.labels.extractor import LabelExtractor

        return LabelExtractor.load(path)
    if (path / "label_model.json").is_file():
        from ctrag.retrieval.label_model import LabelModel

        return LabelModel.load(path)
    raise InvalidInputError(f"--label-model {path}: no label_extractor.json or label_model.json in it")


@evaluate_app.command("reports")
def evaluate_reports_command(
    references: Annotated[Path, typer.Option("--refs", help="Reference reports (.csv or .jsonl).")],
    hypotheses: Annotated[
        list[str],
        typer.Option(
            "--hyps",
            help="Generated reports (.csv or .jsonl). Repeat as NAME=FILE to score several methods (e.g. with and "
            "without --no-rag) on the same references in one table; a bare FILE is named by its stem.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (report_metrics.json / .md).")],
    id_column: Annotated[str, typer.Option("--id-column", help="Column pairing the two files.")] = "id",
    text_column: Annotated[str, typer.Option("--text-column", help="Column holding the report text.")] = "text",
    label_model: Annotated[
        Path | None, typer.Option("--label-model", help="Saved 18-label report model for clinical efficacy.")
    ] = None,
    fit_labels: Annotated[
        Path | None,
        typer.Option("--fit-labels", help="Fit the report label model on this labelled CSV (e.g. CT-RATE train.csv)."),
    ] = None,
    label_val: Annotated[
        Path | None, typer.Option("--label-val", help="Labelled CSV on which to report the label model's quality.")
    ] = None,
    extractor_name: Annotated[
        str,
        typer.Option(
            "--extractor",
            help="Who reads the 18 labels: ctrag (--label-model or --fit-labels) or radbert (CT-RATE's RadBERT "
            "classifier from --radbert-encoder and --radbert-head, comparable with published Clin-F1).",
        ),
    ] = "ctrag",
    radbert_encoder: Annotated[
        Path | None,
        typer.Option("--radbert-encoder", help="Local RadBERT-RoBERTa folder (config, weights, tokenizer)."),
    ] = None,
    radbert_head: Annotated[
        Path | None,
        typer.Option("--radbert-head", help="Checkpoint with classifier.weight/bias (optionally the bert.* weights)."),
    ] = None,
    meteor: Annotated[
        bool, typer.Option("--meteor/--no-meteor", help="Compute METEOR (coco: starts Java; reg2rg: NLTK data).")
    ] = True,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="Metric implementations: coco (pycocoevalcap + METEOR 1.5, default), reg2rg (Reg2RG's HF-evaluate "
            "BLEU, NLTK METEOR, rouge_score; corpus and per-report mean ± sd) or adarag (AdaRAG-CT's pycocoevalcap on "
            "lower-cased raw text). See docs/report_metrics.md.",
        ),
    ] = "coco",
    nltk_data: Annotated[
        Path | None,
        typer.Option(
            "--nltk-data",
            help="nltk_data folder with corpora/wordnet and tokenizers/punkt_tab (reg2rg METEOR; default $NLTK_DATA).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="One threshold for all labels (default: the extractor's own per-label thresholds)."
        ),
    ] = None,
    reference_method: Annotated[
        str | None,
        typer.Option("--reference", help="Method the differences are taken against (default: the first --hyps)."),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples of the reports for 95 % CIs, paired across methods (0: none).")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples.")] = 0,
) -> None:
    """BLEU-1..4, METEOR, ROUGE-1/2/L, CIDEr and clinical efficacy of generated reports against references."""
    from ctrag.evaluation.metric_protocols import PROTOCOLS, load_nltk_data
    from ctrag.evaluation.report_bootstrap import bootstrap_report_metrics
    from ctrag.evaluation.report_metrics import (
        describe_extractor,
        evaluate_reports,
        fit_label_extractor,
        label_extractor_quality,
        labels_from_text,
    )
    from ctrag.utils.jsonable import jsonable

    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"--protocol {protocol!r}: unknown; choose one of {', '.join(PROTOCOLS)}")
    if bootstrap < 0:
        raise InvalidInputError(f"--bootstrap {bootstrap}: give 0 (no CIs) or a positive number of resamples")
    if protocol == "reg2rg" and meteor:
        load_nltk_data(nltk_data)  # fail on missing WordNet/Punkt before any scoring
    refs = read_text_table(references, id_column, text_column)
    methods = _named_hypotheses(hypotheses)
    if reference_method is not None and reference_method not in methods:
        raise InvalidInputError(f"--reference {reference_method!r} is not one of the methods {list(methods)}")
    reference_method = reference_method or next(iter(methods))
    hyps_by_method: dict[str, dict[str, str]] = {}
    for name, path in methods.items():
        hyps = read_text_table(path, id_column, text_column)
        missing = sorted(set(refs) - set(hyps))
        extra = sorted(set(hyps) - set(refs))
        if missing or extra:
            raise InvalidInputError(
                f"{name} ({path}): ids differ from the references: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        hyps_by_method[name] = hyps
    ids = sorted(refs)
    if label_model is not None and fit_labels is not None:
        raise InvalidInputError("give --label-model or --fit-labels, not both")
    if extractor_name not in ("ctrag", "radbert"):
        raise InvalidInputError(f"--extractor {extractor_name!r}: unknown; choose ctrag or radbert")
    if extractor_name == "radbert" and (label_model is not None or fit_labels is not None):
        raise InvalidInputError(
            "--extractor radbert takes --radbert-encoder/--radbert-head, not --label-model/--fit-labels"
        )
    if extractor_name != "radbert" and (radbert_encoder is not None or radbert_head is not None):
        raise InvalidInputError("--radbert-encoder/--radbert-head need --extractor radbert")
    extractor = None
    if extractor_name == "radbert":
        if radbert_encoder is None or radbert_head is None:
            raise InvalidInputError("--extractor radbert needs both --radbert-encoder DIR and --radbert-head FILE")
        from ctrag.labels.radbert import RadBertClassifier

        extractor = RadBertClassifier.load(radbert_encoder, radbert_head)
    elif label_model is not None:
        extractor = load_label_extractor(label_model)
    elif fit_labels is not None:
        extractor = fit_label_extractor(fit_labels)
    quality = label_extractor_quality(extractor, label_val, threshold) if extractor and label_val else None
    if extractor is not None and hasattr(extractor, "truncated_total"):
        extractor.truncated_total = 0  # count the scored references and hypotheses only
    ref_texts = [refs[i] for i in ids]
    ref_labels = labels_from_text(extractor, ref_texts, threshold) if extractor is not None else None
    scores = {
        name: evaluate_reports(
            ref_texts,
            [hyps[i] for i in ids],
            label_extractor=extractor,
            threshold=threshold,
            meteor=meteor,
            protocol=protocol,
            nltk_data=nltk_data,
            reference_labels=ref_labels,
        )
        for name, hyps in hyps_by_method.items()
    }
    uncertainty = bootstrap_report_metrics(
        {name: sc.statistics for name, sc in scores.items() if sc.statistics is not None},
        n_resamples=bootstrap,
        seed=seed,
        reference=reference_method if len(scores) > 1 else None,
    )
    per_method: dict[str, Any] = {}
    for name, sc in scores.items():
        entry = {k: v for k, v in sc.as_dict().items() if k not in ("n_reports", "protocol")}
        entry["hypotheses"] = str(methods[name])
        entry["ci"] = uncertainty["ci"].get(name, {})
        if name in uncertainty["difference"]:
            entry["difference"] = uncertainty["difference"][name]
        per_method[name] = entry
    record = jsonable(
        {
            "n_reports": len(ids),
            "protocol": protocol,
            "references": str(references),
            "reference_method": reference_method,
            "methods": per_method,
            "bootstrap": {k: uncertainty[k] for k in ("n_resamples", "seed", "confidence", "unit", "approximate")}
            | ({"skipped": uncertainty["skipped"]} if "skipped" in uncertainty else {}),
            "label_extractor": describe_extractor(extractor),
            "label_extractor_quality": quality,
            "label_extractor_truncated": getattr(extractor, "truncated_total", None),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report_metrics.json", json.dumps(record, indent=2) + "\n")
    lines = _report_metrics_table(record, label_val, extractor_name == "radbert")
    atomic_write_text(out / "report_metrics.md", "\n".join(lines) + "\n")
    console.print("\n".join(lines), markup=False, highlight=False)


_REPORT_COLUMNS = (
    *LANGUAGE_METRIC_TITLES.items(),
    ("ce_precision_micro", "CE P"),
    ("ce_recall_micro", "CE R"),
    ("ce_f1_micro", "CE F1"),
)


def _named_hypotheses(items: list[str]) -> dict[str, Path]:
    """``NAME=FILE`` or ``FILE`` (named by its stem) per method, in the order given; names must be unique."""
    methods: dict[str, Path] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name and rest and not Path(item).exists():
            label, path = name.strip(), Path(rest)
        else:
            label, path = Path(item).stem, Path(item)
        if not label:
            raise InvalidInputError(f"--hyps {item!r}: empty method name")
        if label in methods:
            raise InvalidInputError(f"--hyps: method name {label!r} given twice; name them NAME=FILE")
        methods[label] = path
    if not methods:
        raise InvalidInputError("--hyps: give at least one file of generated reports")
    return methods


def _metric_value(entry: dict[str, Any], key: str) -> float | None:
    if key.startswith("ce_"):
        ce = entry.get("clinical_efficacy") or {}
        return ce.get(key[3:])
    value = entry.get(key)
    return None if value is None else float(value)


def _report_metrics_table(record: dict[str, Any], label_val: Path | None, radbert: bool) -> list[str]:
    """The Markdown table: one row per method (value [95 % CI]), then each method minus the reference method."""
    methods: dict[str, Any] = record["methods"]
    boot = record["bootstrap"]
    with_ce = any(m.get("clinical_efficacy") for m in methods.values())
    columns = [(k, t) for k, t in _REPORT_COLUMNS if with_ce or not k.startswith("ce_")]
    lines = [
        f"# Report metrics ({record['n_reports']} reports, {len(methods)} method(s), protocol {record['protocol']})",
        "",
        f"Protocol: {PROTOCOL_NAMES[record['protocol']]}",
        "",
    ]
    if "skipped" in boot:
        lines += [f"No confidence intervals: {boot['skipped']}.", ""]
    else:
        lines += [
            f"Cells: corpus value [{boot['confidence']:.0%} percentile bootstrap CI over reports, "
            f"{boot['n_resamples']} resamples, seed {boot['seed']}, the same resamples for every method].",
            "",
        ]

    def cell(entry: dict[str, Any], key: str) -> str:
        value = _metric_value(entry, key)
        if value is None:
            return "n/a"
        lo, hi = entry.get("ci", {}).get(key, (None, None))
        return f"{value:.4f}" if lo is None else f"{value:.4f} [{lo:.4f}, {hi:.4f}]"

    lines += ["| method | " + " | ".join(t for _, t in columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(cell(e, k) for k, _ in columns) + " |" for name, e in methods.items()]
    lines.append("")
    if any(e.get("per_report") for e in methods.values()):
        lines += ["Per-report mean ± sd (np.std), as Reg2RG's tables give them:", ""]
        lang = [(k, t) for k, t in columns if not k.startswith("ce_")]
        lines += ["| method | " + " | ".join(t for _, t in lang) + " |", "|---|" + "---|" * len(lang)]
        for name, e in methods.items():
            per = e.get("per_report") or {}
            cells = ["n/a" if k not in per else f"{per[k]['mean']:.4f} ± {per[k]['sd']:.4f}" for k, _ in lang]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    diffs = {name: e["difference"] for name, e in methods.items() if e.get("difference")}
    if diffs:
        ref = record["reference_method"]
        lines += [
            f"Difference to {ref} (paired bootstrap; * where the CI excludes 0):",
            "",
            "| method | " + " | ".join(f"Δ {t}" for _, t in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name, d in diffs.items():
            cells = []
            for k, _ in columns:
                if k not in d:
                    cells.append("n/a")
                    continue
                lo, hi = d[k]["ci"]
                star = "*" if d[k]["excludes_zero"] else ""
                cells.append(f"{d[k]['value']:+.4f}{star} [{lo:+.4f}, {hi:+.4f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for metric, why in boot.get("approximate", {}).items():
        if not any(metric in (e.get("ci") or {}) or e.get(metric) is not None for e in methods.values()):
            continue
        lines.append(f"- {metric}: {why}")
        per_report = [
            f"{name} [{ci[0]:.4f}, {ci[1]:.4f}]"
            for name, e in methods.items()
            if (ci := (e.get("ci") or {}).get(METEOR_PER_REPORT)) and metric == "meteor"
        ]
        if per_report:
            lines.append(f"  - {METEOR_PER_REPORT} CIs: " + ", ".join(per_report))
    who = record["label_extractor"]
    if who is not None:
        lines += ["", f"Labels read by {who['module']}.{who['name']} (fingerprint {who['fingerprint']}).", ""]
        if radbert:
            lines += [
                "Extractor: CT-RATE RadBERT classifier (RoBERTa encoder, 18-way linear head on the pooled output, "
                "sigmoid >= 0.5, 512 tokens); references + generated reports truncated at 512 tokens: "
                f"{record.get('label_extractor_truncated')}.",
                "",
            ]
    quality = record.get("label_extractor_quality")
    if quality is not None:
        lines += [
            f"Label extractor on {label_val} ({int(quality['n_reports'])} reports): "
            f"macro-F1 {quality['macro_f1']:.3f}, micro-F1 {quality['micro_f1']:.3f}, "
            f"macro-AUC {quality['macro_auc']:.3f}",
            "",
        ]
    notes = {f"{name}: {k}": v for name, e in methods.items() for k, v in (e.get("notes") or {}).items()}
    lines += [f"- {k}: {v}" for k, v in notes.items()]
    return lines
