"""``ctrag labels``: the 18 CT-RATE abnormality probabilities of one report (the sentence-level label extractor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ctrag.cli import _shared
from ctrag.cli._app import app, console
from ctrag.errors import InvalidInputError

if TYPE_CHECKING:
    from ctrag.labels.extractor import LabelExtractor

DEFAULT_TRAIN_DIR = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")


def _model(model: Path | None, train: Path | None, save_model: Path | None, seed: int) -> LabelExtractor:
    from ctrag.labels.ct_rate import fit_on_train
    from ctrag.labels.extractor import LabelExtractor

    if model is not None and train is not None:
        raise InvalidInputError("give --model or --train, not both")
    if model is not None:
        if not (model / "label_extractor.json").is_file():
            raise InvalidInputError(f"--model {model}: not a folder holding label_extractor.json/.npz")
        return LabelExtractor.load(model)
    folder = train if train is not None else DEFAULT_TRAIN_DIR
    if not folder.exists():
        raise InvalidInputError(
            f"no label model: --train {folder} does not exist; pass --model DIR (saved with --save-model) or "
            "--train FOLDER (CT-CLIP classifier CSVs with train.csv)"
        )
    fitted = fit_on_train(folder, seed=seed)
    if save_model is not None:
        fitted.save(save_model)
    return fitted


@app.command("labels")
def labels_command(
    text: Annotated[str | None, typer.Argument(help="Report text (or use --report-file).")] = None,
    report_file: Annotated[Path | None, typer.Option("--report-file", help="UTF-8 text file with the report.")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Saved label extractor folder.")] = None,
    train: Annotated[
        Path | None,
        typer.Option("--train", help=f"Fit on the train.csv of this CT-CLIP classifier folder [{DEFAULT_TRAIN_DIR}]."),
    ] = None,
    save_model: Annotated[
        Path | None, typer.Option("--save-model", help="Write the fitted extractor here (reuse with --model).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the cross-validation folds when fitting.")] = 0,
) -> None:
    """Probability of each of the 18 CT-RATE abnormalities in a report, and the labels over their thresholds.

    Without --model the extractor is fitted on the shipped CT-RATE train reports first (a few seconds).
    """
    from ctrag.data.labels import CT_RATE_LABELS

    if text is not None and report_file is not None:
        raise InvalidInputError("give either TEXT or --report-file, not both")
    if report_file is not None:
        report = _shared.read_report_file(report_file)
    elif text is not None:
        report = _shared.check_report(text, what="the report text")
    else:
        raise InvalidInputError("no report: give report TEXT or --report-file FILE")
    extractor = _model(model, train, save_model, seed)
    probs = extractor.predict_proba([report])[0]
    positive = [n for n, p, t in zip(CT_RATE_LABELS, probs, extractor.thresholds, strict=True) if p >= t]
    if as_json:
        record = {
            "probabilities": {n: round(float(p), 4) for n, p in zip(CT_RATE_LABELS, probs, strict=True)},
            "labels": positive,
            "thresholds": {n: float(t) for n, t in zip(CT_RATE_LABELS, extractor.thresholds, strict=True)},
            "model_fingerprint": extractor.fingerprint(),
        }
        typer.echo(json.dumps(record, indent=1))
        return
    table = Table(title="CT-RATE labels")
    for col in ("label", "probability", "threshold", "present"):
        table.add_column(col)
    for n, p, t in zip(CT_RATE_LABELS, probs, extractor.thresholds, strict=True):
        table.add_row(n, f"{p:.3f}", f"{t:.2f}", "yes" if p >= t else "")
    console.print(table)
    console.print("present: " + (", ".join(positive) if positive else "none (normal for these 18 labels)"))
