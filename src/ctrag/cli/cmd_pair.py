"""``ctrag pair``: retrieval-guided pseudo pairs of unpaired train CTs with real train reports (RAFM-style)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ctrag.cli._app import app, console, err_console
from ctrag.errors import InvalidInputError
from ctrag.utils.atomic import atomic_write_text

DEFAULT_REPORTS = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")


@app.command("pair")
def pair_command(
    corpus: Annotated[Path, typer.Argument(help="Corpus manifest (or folder) holding the CTs to pair.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (CTs, pseudo-paired ones marked).")],
    reports: Annotated[
        Path, typer.Option("--reports", help="Reports: a corpus manifest or a CT-CLIP classifier CSV folder.")
    ] = DEFAULT_REPORTS,
    method: Annotated[str, typer.Option("--method", help="mutual | top1 | greedy (one-to-one).")] = "mutual",
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Drop pairs whose cosine similarity is below this.")
    ] = None,
    encoder: Annotated[str, typer.Option("--encoder", help="Text encoder of the caption space.")] = "minilm",
    label_model: Annotated[
        Path | None,
        typer.Option(
            "--label-model", help="Saved label extractor (`ctrag labels --save-model`): score label agreement."
        ),
    ] = None,
) -> None:
    """Pair each train CT with a train report by its annotation-derived caption; only train cases are used."""
    import numpy as np

    from ctrag.data.case import Corpus
    from ctrag.data.ct_rate import read_ctclip_classifier
    from ctrag.data.pseudo_pairs import PseudoPairConfig, ct_caption, label_jaccard, pair_cases, paired_corpus_cases
    from ctrag.encoders.factory import create_encoder

    cfg = PseudoPairConfig(method, threshold)
    cts_all = Corpus.load(corpus)
    if not reports.exists():
        raise InvalidInputError(f"--reports {reports} does not exist (a manifest or a CT-CLIP classifier folder)")
    is_manifest = reports.is_file() or (reports / "manifest.jsonl").is_file()
    rep_all = list(Corpus.load(reports)) if is_manifest else read_ctclip_classifier(reports)
    cts = [c for c in cts_all if c.split == "train"]
    reps = [c for c in rep_all if c.split == "train"]
    enc = create_encoder(encoder)
    result = pair_cases(cts, reps, encode_text=enc.encode_text, space=f"mask-caption:{enc.fingerprint}", config=cfg)
    # non-train CTs are written unchanged so the manifest stays the whole corpus; they are never paired
    paired = {c.case_id: c for c in paired_corpus_cases(cts, reps, result)}
    written = Corpus([paired.get(c.case_id, c) for c in cts_all]).save(out)
    agreement: dict[str, float] = {}
    if label_model is not None and result.pairs:
        from ctrag.labels.extractor import LabelExtractor

        extractor = LabelExtractor.load(label_model)
        by_id = {c.case_id: c for c in cts}
        rep_by_id = {c.case_id: c for c in reps}
        ct_texts = [ct_caption(by_id[p.ct_case_id]) or "" for p in result.pairs]
        ct_labels = extractor.predict(ct_texts)
        rep_labels = np.array([rep_by_id[p.report_case_id].labels or (0,) * 18 for p in result.pairs])
        agreement = dict(
            zip([p.ct_case_id for p in result.pairs], label_jaccard(ct_labels, rep_labels).tolist(), strict=True)
        )
    summary = {
        **result.to_dict(),
        "manifest": str(written),
        "pseudo_pairs": len(result.pairs),
        "not_train_left_out": {"ct": len(cts_all) - len(cts), "reports": len(rep_all) - len(reps)},
        "label_jaccard": agreement,
        "label_jaccard_source": "LabelExtractor on the CT's annotation-derived caption" if agreement else None,
    }
    atomic_write_text(written.with_name(written.stem + ".pairs.json"), json.dumps(summary, indent=2) + "\n")
    table = Table(title=f"pseudo pairs ({cfg.method}) -> {written}")
    for col in ("CT", "report", "score", "rank", "label Jaccard"):
        table.add_column(col)
    for p in result.pairs:
        j = agreement.get(p.ct_case_id)
        table.add_row(p.ct_case_id, p.report_case_id, f"{p.score:.3f}", str(p.rank), "-" if j is None else f"{j:.2f}")
    console.print(table)
    for cid, why in result.unpaired_ct.items():
        err_console.print(f"[yellow]unpaired[/] {cid}: {why}")
    err_console.print(
        "[yellow]note:[/] pseudo-paired reports belong to other studies (report_source=pseudo-paired); "
        "caption-space pairs know anatomy, not image findings."
    )
