"""``ctrag evaluate ...`` commands: argument parsing and presentation only; the work is in ``ctrag.evaluation``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TaskID
from rich.table import Table

from ctrag.cli._app import app, console, err_console, evaluate_app, train_app  # noqa: F401
from ctrag.cli._progress import progress_bar
from ctrag.config import load_config

DEFAULT_CTCLIP_DIR = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")


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
) -> None:
    """Label and text agreement of retrieved reports: default retriever vs random, TF-IDF, BM25, MiniLM, oracle."""
    from ctrag.encoders.factory import create_encoder
    from ctrag.evaluation.retrieval import (
        RetrievalEvalConfig,
        evaluate_retrieval,
        load_ctclip_eval_data,
        memo_encoder,
        summary_rows,
        write_outputs,
    )
    from ctrag.index import IndexConfig
    from ctrag.retrieval.hybrid import HybridConfig
    from ctrag.retrieval.retriever import RetrievalConfig, Retriever

    eval_cfg = RetrievalEvalConfig(k=k, ks=(1, k) if k > 1 else (1,), bootstrap=bootstrap, seed=seed,
                                   ablations=ablations)  # fmt: skip
    hybrid_cfg = load_config(HybridConfig, config, overrides or [], section="hybrid")
    index_cfg = load_config(IndexConfig, config, section="index")
    retrieval_cfg = load_config(RetrievalConfig, config, section="retrieval")
    dataset = load_ctclip_eval_data(data)
    made = create_encoder(encoder, weights=weights, device=device)
    enc = made[0] if isinstance(made, tuple) else made

    with progress_bar(progress) as bar:
        tasks: dict[str, TaskID] = {}

        def report(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

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
    console.print("wrote " + ", ".join(str(p) for p in written))
