"""``ctrag train classifier``, ``ctrag evaluate generation`` and ``ctrag evaluate reports``.

Argument parsing and presentation only; the work is in ``ctrag.evaluation``.
"""

from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ctrag.cli._app import console, err_console, evaluate_app, train_app
from ctrag.config import load_config
from ctrag.errors import InvalidInputError

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Preset name or YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field of the command's config section, e.g. --set seeds=[0,1]."),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch CPU threads (default: torch's choice).")]


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise InvalidInputError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _command(*parts: Any) -> str:
    return "ctrag " + " ".join(shlex.quote(str(p)) for p in parts if p is not None and p != "")


@contextmanager
def _bar(enabled: bool, description: str) -> Iterator[Any]:
    """A rich progress bar driven by ``update(stage, done, total)``; a no-op callback when disabled."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"{description}: {stage}", total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield update


@train_app.command("classifier")
def train_classifier_command(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus folder (from `ctrag ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (classifier.pt + classifier.json).")],
    config: ConfigOpt = "tiny-cpu",
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="CSV: case_id, the 18 CT-RATE label columns, label_source (optional)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split to train on.")] = "train",
    set_: SetOpt = None,
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train the CT-Net-like 18-label classifier used for clinical consistency (and as FID backbone)."""
    from ctrag.data.case import Corpus
    from ctrag.evaluation.classifier import ClassifierConfig, train_from_corpus

    _set_threads(threads)
    cfg = load_config(ClassifierConfig, config, set_ or [], section="classifier")
    cases = Corpus.load(corpus)
    with _bar(progress, "classifier") as update:

        def on_epoch(epoch: int, total: int, loss: float) -> None:
            if update is not None:
                update("epochs", epoch, total)

        clf = train_from_corpus(cases, cfg, split=split, label_file=labels, progress=on_epoch)
    clf.metadata["command"] = _command("train", "classifier", "--corpus", corpus, "--out", out, "--config", config)
    folder = clf.save(out)
    meta = clf.metadata
    console.print(
        f"[bold]classifier[/] written to {folder}: {meta['n_train']} CT(s), label sources {meta['label_sources']}, "
        f"final training loss {meta['final_train_loss']:.4f}"
    )


@evaluate_app.command("generation")
def evaluate_generation_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (tables, figures, generated volumes).")],
    config: ConfigOpt = "tiny-cpu",
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus folder (overrides the config).")] = None,
    pipeline: Annotated[Path | None, typer.Option("--pipeline", help="Generator run folder (overrides).")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Retrieval index (train split only).")] = None,
    classifier: Annotated[Path | None, typer.Option("--classifier", help="Classifier folder (overrides).")] = None,
    set_: SetOpt = None,
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Run the generation ablation (methods × seeds × held-out reports) and write the paper-layout table.

    Already generated volumes under OUT/generated are reused, so an interrupted run continues where it stopped.
    """
    from ctrag.evaluation.ablation import GenerationEvalConfig
    from ctrag.evaluation.generation_eval import evaluate_generation
    from ctrag.segment import SegmentConfig

    _set_threads(threads)
    overrides = list(set_ or [])
    for key, value in (("corpus", corpus), ("pipeline", pipeline), ("index", index), ("classifier", classifier)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(GenerationEvalConfig, config, overrides, section="evaluation")
    seg_cfg = load_config(SegmentConfig, config, section="segment")
    command = _command(
        "evaluate",
        "generation",
        "--config",
        config,
        "--out",
        out,
        *[x for o in overrides for x in ("--set", o)],
    )
    with _bar(progress, "evaluation") as update:
        paths = evaluate_generation(cfg, out, segment_config=seg_cfg, command=command, progress=update)
    console.print(paths["markdown"].read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"[bold]written[/] {', '.join(str(p) for p in paths.values())}")


def _read_texts(path: Path, id_column: str, text_column: str) -> dict[str, str]:
    if not path.is_file():
        raise InvalidInputError(f"{path}: file not found")
    rows: list[dict[str, Any]]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise InvalidInputError(f"{path}: expected a .csv or .jsonl file")
    out: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        if id_column not in row or text_column not in row:
            raise InvalidInputError(f"{path}: row {n} lacks the {id_column!r} or {text_column!r} column")
        out[str(row[id_column])] = str(row[text_column])
    return out


def load_label_extractor(path: Path) -> Any:
    """A saved 18-label report model (``ctrag.retrieval.label_model.LabelModel``)."""
    from ctrag.retrieval.label_model import LabelModel

    if not path.is_dir():
        raise InvalidInputError(f"--label-model {path}: not a folder holding label_model.json/.npz")
    return LabelModel.load(path)


@evaluate_app.command("reports")
def evaluate_reports_command(
    references: Annotated[Path, typer.Option("--refs", help="Reference reports (.csv or .jsonl).")],
    hypotheses: Annotated[Path, typer.Option("--hyps", help="Generated reports (.csv or .jsonl).")],
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
    meteor: Annotated[bool, typer.Option("--meteor/--no-meteor", help="Compute METEOR (starts Java).")] = True,
    threshold: Annotated[float, typer.Option("--threshold", help="Label probability threshold.")] = 0.5,
) -> None:
    """BLEU-1..4, METEOR, ROUGE-1/2/L, CIDEr and clinical efficacy of generated reports against references."""
    from ctrag.evaluation.ablation import jsonable
    from ctrag.evaluation.report_metrics import evaluate_reports, fit_label_extractor, label_extractor_quality
    from ctrag.utils.atomic import atomic_write_text

    refs = _read_texts(references, id_column, text_column)
    hyps = _read_texts(hypotheses, id_column, text_column)
    missing = sorted(set(refs) - set(hyps))
    extra = sorted(set(hyps) - set(refs))
    if missing or extra:
        raise InvalidInputError(f"ids differ between the files: missing {missing[:5]}, unexpected {extra[:5]}")
    ids = sorted(refs)
    if label_model is not None and fit_labels is not None:
        raise InvalidInputError("give --label-model or --fit-labels, not both")
    extractor = None
    if label_model is not None:
        extractor = load_label_extractor(label_model)
    elif fit_labels is not None:
        extractor = fit_label_extractor(fit_labels)
    quality = label_extractor_quality(extractor, label_val, threshold) if extractor and label_val else None
    scores = evaluate_reports(
        [refs[i] for i in ids], [hyps[i] for i in ids], label_extractor=extractor, threshold=threshold, meteor=meteor
    )
    record = jsonable({**scores.as_dict(), "label_extractor_quality": quality})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report_metrics.json", json.dumps(record, indent=2) + "\n")
    names = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_1", "rouge_2", "rouge_l", "cider")
    header = "| " + " | ".join(n.upper().replace("_", "-") for n in names) + " |"
    values = "| " + " | ".join("n/a" if record[n] is None else f"{record[n]:.4f}" for n in names) + " |"
    lines = [f"# Report metrics ({len(ids)} reports)", "", header, "|" + "---|" * len(names), values, ""]
    if record.get("clinical_efficacy"):
        ce = record["clinical_efficacy"]
        lines += ["Clinical efficacy: " + ", ".join(f"{k} {v:.4f}" for k, v in ce.items() if v is not None), ""]
    if quality is not None:
        lines += [
            f"Label extractor on {label_val} ({int(quality['n_reports'])} reports): "
            f"macro-F1 {quality['macro_f1']:.3f}, micro-F1 {quality['micro_f1']:.3f}, "
            f"macro-AUC {quality['macro_auc']:.3f}",
            "",
        ]
    lines += [f"- {k}: {v}" for k, v in record.get("notes", {}).items()]
    atomic_write_text(out / "report_metrics.md", "\n".join(lines) + "\n")
    console.print("\n".join(lines), markup=False, highlight=False)
