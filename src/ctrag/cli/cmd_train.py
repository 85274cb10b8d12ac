"""``ctrag train encoder|vae|diffusion|controlnet|classifier``.

Generator trainings write into one run folder (``--out``): ``vae/``, ``unet/``, ``controlnet/``, ``sampler/`` and a
``pipeline.json`` naming them, which ``ctrag generate --weights RUN`` loads. Each command resumes from the
last checkpoint in its component folder unless ``--no-resume`` is given.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ctrag.cli._app import console, err_console, train_app
from ctrag.cli._progress import stage_progress
from ctrag.cli._shared import (
    ConfigOpt,
    CorpusOpt,
    DeviceOpt,
    ProgressOpt,
    SetOpt,
    ThreadsOpt,
    command_line,
    load_corpus,
    set_threads,
)
from ctrag.config import load_config
from ctrag.errors import InvalidInputError

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder (shared by the three training commands).")]


ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the last checkpoint.")]


StopOpt = Annotated[
    int | None, typer.Option("--stop-after", hidden=True, help="Stop after N steps (simulates an interruption).")
]


MaskFromOpt = Annotated[
    str,
    typer.Option(
        "--mask-from",
        help="Label maps for training: segment (ctrag.segment on each CT), case (the corpus masks), case-or-segment.",
    ),
]


def _setup(config: str, overrides: list[str] | None, section: str, device: str | None, threads: int | None) -> Any:
    import torch

    from ctrag.generation.config import load_generator_config

    items = list(overrides or [])
    if device is not None:
        items.append(f"{section}.device={device}")
    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    cfg = load_generator_config(config, items)
    train_cfg = getattr(cfg, section)
    if threads is None and train_cfg.num_threads > 0:
        torch.set_num_threads(train_cfg.num_threads)
    return cfg


def _report(kind: str, result: Any, out: Path, started: float) -> None:
    losses = result.losses
    first = sum(losses[:10]) / max(1, len(losses[:10]))
    last = sum(losses[-10:]) / max(1, len(losses[-10:]))
    status = "done" if result.info.get("complete", True) else "stopped"
    console.print(
        f"[bold]{kind}[/]: {status} at step {result.steps} (resumed from {result.resumed_from}); "
        f"loss {first:.4f} -> {last:.4f}; {time.perf_counter() - started:.1f} s; run folder {out}"
    )


def _encoder(config: str, device: str, overrides: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    from ctrag.generation.run_folder import create_text_encoder, encoder_spec_from_config

    spec = encoder_spec_from_config(config, overrides or [])
    return create_text_encoder(spec, device), spec


@train_app.command("encoder")
def train_encoder_command(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus folder (manifest.jsonl from `ctrag ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: checkpoint, trained encoder, summary.")],
    config: Annotated[str, typer.Option("--config", "-c", help="Preset name or YAML file.")] = "tiny-cpu",
    epochs: Annotated[int | None, typer.Option(help="Total epochs (overrides encoder.train.epochs).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda (default: from config).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from OUT/checkpoint.pt.")] = True,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override an encoder field, e.g. --set train.lr=5e-4.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train the volume tower CLIP-style against frozen report embeddings on cases with a CT and a report."""
    from ctrag.config import load_config
    from ctrag.data.case import Corpus
    from ctrag.encoders.config import EncoderConfig
    from ctrag.encoders.train import load_preprocess_section, train_encoder

    items = list(overrides or [])
    if epochs is not None:
        items.append(f"train.epochs={epochs}")
    if device is not None:
        items.append(f"train.device={device}")
    cfg = load_config(EncoderConfig, config, items, section="encoder")
    preprocess = load_preprocess_section(config)
    cases = Corpus.load(corpus)
    with stage_progress(progress, "encoder") as update:
        result = train_encoder(cases, out, cfg, preprocess, resume=resume, progress=update)

    table = Table(title=f"encoder trained -> {out}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("pairs (CT + text)", str(int(result.retrieval_after["n"])))
    table.add_row("text sources", ", ".join(f"{k}: {v}" for k, v in sorted(result.report_sources.items())))
    table.add_row("epochs (resumed from)", f"{result.epochs_done} ({result.resumed_from_epoch})")
    if result.epoch_losses:
        table.add_row("loss first -> last epoch", f"{result.epoch_losses[0]:.4f} -> {result.epoch_losses[-1]:.4f}")
    if result.epoch_chunk_losses:
        first, last = result.epoch_chunk_losses[0], result.epoch_chunk_losses[-1]
        table.add_row("chunk-alignment loss first -> last", f"{first:.4f} -> {last:.4f}")
    before = result.retrieval_before or {}
    table.add_row(
        "train top-1 before -> after (chance)",
        f"{before.get('top1', float('nan')):.2f} -> {result.retrieval_after['top1']:.2f} "
        f"({result.retrieval_after['chance_top1']:.2f})",
    )
    table.add_row("fingerprint", result.fingerprint)
    console.print(table)
    if result.report_sources.get("pseudo-paired"):
        err_console.print(
            f"[yellow]note:[/] {result.report_sources['pseudo-paired']} training pair(s) are retrieval pseudo pairs "
            "(`ctrag pair`): the report belongs to another study."
        )
    if result.report_sources.get("annotation-derived"):
        err_console.print(
            "[yellow]note:[/] training texts include annotation-derived captions (not radiologist reports); "
            "train-set retrieval shows the code path works, not that the encoder generalises."
        )


@train_app.command("vae")
def train_vae_command(
    corpus: CorpusOpt,
    out: OutOpt,
    config: ConfigOpt = "tiny-cpu",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    resume: ResumeOpt = True,
    progress: ProgressOpt = True,
    stop_after: StopOpt = None,
) -> None:
    """Train the VAE on random crops of the corpus's training CTs (writes OUT/vae)."""
    from ctrag.generation.training import train_vae

    started = time.perf_counter()
    cfg = _setup(config, set_, "train_vae", device, threads)
    with stage_progress(progress, "vae") as update:
        result = train_vae(load_corpus(corpus), cfg, out, progress=update, resume=resume, stop_after=stop_after)
    result.info["complete"] = result.steps == cfg.train_vae.total_steps
    _report("vae", result, out, started)


@train_app.command("diffusion")
def train_diffusion_command(
    corpus: CorpusOpt,
    out: OutOpt,
    config: ConfigOpt = "tiny-cpu",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    mask_from: MaskFromOpt = "segment",
    resume: ResumeOpt = True,
    progress: ProgressOpt = True,
    stop_after: StopOpt = None,
) -> None:
    """Train the text-conditioned diffusion UNet on latents of the frozen VAE in OUT (writes OUT/unet)."""
    _train_flow("diffusion", corpus, out, config, set_, device, threads, mask_from, resume, progress, stop_after)


@train_app.command("controlnet")
def train_controlnet_command(
    corpus: CorpusOpt,
    out: OutOpt,
    config: ConfigOpt = "tiny-cpu",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    mask_from: MaskFromOpt = "segment",
    resume: ResumeOpt = True,
    progress: ProgressOpt = True,
    stop_after: StopOpt = None,
) -> None:
    """Train the ControlNet on (CT, mask) pairs with the VAE and UNet in OUT frozen (writes OUT/controlnet)."""
    _train_flow("controlnet", corpus, out, config, set_, device, threads, mask_from, resume, progress, stop_after)


def _train_flow(
    part: str,
    corpus: Path,
    out: Path,
    config: str,
    overrides: list[str] | None,
    device: str | None,
    threads: int | None,
    mask_from: str,
    resume: bool,
    progress: bool,
    stop_after: int | None,
) -> None:
    """The two latent-flow trainings (UNet, ControlNet) take the same inputs; only the recipe differs."""
    from ctrag.generation.training import train_controlnet, train_diffusion

    started = time.perf_counter()
    section = f"train_{part}"
    cfg = _setup(config, overrides, section, device, threads)
    train_cfg = getattr(cfg, section)
    encoder, spec = _encoder(config, train_cfg.device, overrides) if cfg.diffusion.with_conditioning else (None, None)
    recipe: Any = train_diffusion if part == "diffusion" else train_controlnet
    extra = {"encoder_spec": spec} if part == "diffusion" else {}
    with stage_progress(progress, part) as update:
        result = recipe(
            load_corpus(corpus),
            cfg,
            out,
            encoder=encoder,
            mask_from=mask_from,
            progress=update,
            resume=resume,
            stop_after=stop_after,
            **extra,
        )
    result.info["complete"] = result.steps == train_cfg.total_steps
    _report(part, result, out, started)


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
    from ctrag.data.heldout import held_out_set
    from ctrag.data.transforms import PreprocessConfig
    from ctrag.evaluation.classifier import ClassifierConfig, train_from_corpus

    set_threads(threads)
    cfg = load_config(ClassifierConfig, config, set_ or [], section="classifier")
    cases = Corpus.load(corpus)
    with stage_progress(progress, "classifier") as update:
        held_out = held_out_set(config, set_ or [])
        space = load_config(PreprocessConfig, config, section="preprocess")  # the preset's one image space
        clf = train_from_corpus(
            cases, cfg, split=split, label_file=labels, progress=update, held_out=held_out, space=space
        )
    clf.metadata["command"] = command_line("train", "classifier", "--corpus", corpus, "--out", out, "--config", config)
    folder = clf.save(out)
    meta = clf.metadata
    console.print(
        f"[bold]classifier[/] written to {folder}: {meta['n_train']} CT(s), label sources {meta['label_sources']}, "
        f"final training loss {meta['final_train_loss']:.4f}"
    )


#: Report methods that ``ctrag train reporter`` can train so far (issue 13).
REPORTER_METHODS = ("reg2rg", "adarag", "diffvp")


def _report_cases(path: Path) -> list[Any]:
    """A corpus manifest folder/file, a folder with ``cases.csv``, or the CT-CLIP classifier CSV folder."""
    from ctrag.data.case import MANIFEST_NAME, Corpus

    if (path / MANIFEST_NAME).is_file() or path.is_file():
        return list(Corpus.load(path))
    if (path / "cases.csv").is_file():
        from ctrag.data.folder import read_folder

        return read_folder(path)
    if (path / "train.csv").is_file():
        from ctrag.data.ct_rate import read_ctclip_classifier

        return read_ctclip_classifier(path)
    raise InvalidInputError(f"{path}: no manifest.jsonl, cases.csv or CT-CLIP train.csv found")


@train_app.command("reporter")
def train_reporter_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder (reg2rg.json, lm/, heads).")],
    method: Annotated[str, typer.Option("--method", help="Report method to train: reg2rg, adarag or diffvp.")] = (
        "reg2rg"
    ),
    cases: Annotated[
        Path,
        typer.Option(
            "--cases",
            help="CT cases with text: corpus manifest (e.g. pseudo pairs from `ctrag pair`) or "
            "a folder with cases.csv.",
        ),
    ] = Path("sample_data/ct"),
    text_reports: Annotated[
        Path | None,
        typer.Option("--text-reports", help="Report-only cases for the tokenizer and text warm-up (train split)."),
    ] = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier"),
    lm: Annotated[
        Path | None, typer.Option("--lm", help="Base causal LM folder (HF or ctrag); default: tiny GPT-2 trained here.")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Paired (CT, text) steps.")] = 100,
    text_steps: Annotated[
        int,
        typer.Option("--text-steps", help="Text warm-up steps (adarag: before NLL scoring, rag_placement=uncertain)."),
    ] = 200,
    max_text_cases: Annotated[int | None, typer.Option("--max-text-cases", help="Cap on warm-up reports.")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML with a reg2rg_train section.")] = None,
    pairing: Annotated[str, typer.Option("--pairing", help="diffvp: random (paper) or nearest normal reference.")] = (
        "random"
    ),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    concepts: Annotated[
        bool | None,
        typer.Option(
            "--concepts/--no-concepts",
            help="18-label predictions as named concepts in the prompt (adarag: off by default, diffvp: its "
            "diagnostic anchor, on by default; reg2rg has none). Saved with the model; `ctrag report` follows it.",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or cuda:N (torchrun: each process its LOCAL_RANK GPU).")
    ] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 or bf16 (autocast).")] = None,
    lora: Annotated[
        str | None, typer.Option("--lora", help="auto (LoRA on a given --lm when peft is installed), on or off.")
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="LM activations.")
    ] = None,
    set_: SetOpt = None,
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train a report generator on train-split data only: Reg2RG (region tokens + region-report alignment),
    AdaRAG-CT ([RAG] token with region-indexed sentence retrieval) or DiffVP (difference to a normal reference).

    Several GPUs: `torchrun --nproc-per-node N -m ctrag.cli train reporter --device cuda ...`; rank 0 writes."""
    from ctrag.reporting.reg2rg import save_reg2rg
    from ctrag.reporting.training.reg2rg import Reg2RGTrainConfig, train_reg2rg

    if method not in REPORTER_METHODS:
        raise InvalidInputError(f"--method {method!r}: trainable report methods are {', '.join(REPORTER_METHODS)}")
    set_threads(threads)
    runtime = {"device": device, "precision": precision, "lora": lora}
    # Quoted: YAML would read a bare `on`/`off` as a boolean.
    set_ = [*(set_ or []), *(f"runtime.{k}='{v}'" for k, v in runtime.items() if v is not None)]
    if gradient_checkpointing is not None:
        set_.append(f"runtime.gradient_checkpointing={str(gradient_checkpointing).lower()}")
    items = [*set_, f"steps={steps}", f"text_steps={text_steps}", f"seed={seed}"]
    if max_text_cases is not None:
        items.append(f"max_text_cases={max_text_cases}")
    all_cases = _report_cases(cases)
    pair_cases = [c for c in all_cases if c.split == "train" and c.has_volume and c.has_report]
    held = sorted(c.case_id for c in all_cases if c.split != "train")
    texts = [c for c in _report_cases(text_reports) if c.split == "train"] if text_reports else []
    if lm is not None and not lm.exists():
        raise InvalidInputError(f"--lm {lm} does not exist (ctrag never downloads models)")
    if concepts is not None and method == "reg2rg":
        raise InvalidInputError("--concepts/--no-concepts: reg2rg has no concept prompt (adarag and diffvp have)")
    if method in ("adarag", "diffvp"):
        sets = [*set_, f"seed={seed}"]
        if concepts is not None:  # adarag: the concept prompt; diffvp: its diagnostic anchor (the same text)
            sets.append(f"model.{'concepts' if method == 'adarag' else 'anchor'}.enabled={str(concepts).lower()}")
        _train_lm_reporter(method, out, pair_cases, texts, lm, config, sets, steps, text_steps, max_text_cases,
                           pairing)  # fmt: skip
        return
    cfg = load_config(Reg2RGTrainConfig, config, items, section="reg2rg_train")
    started = time.perf_counter()
    with stage_progress(progress, "reporter") as update:
        model, summary = train_reg2rg(pair_cases, texts, cfg, base_lm=str(lm) if lm else None, progress=update)
    summary["held_out_cases_not_read"] = held
    summary["command"] = command_line("train", "reporter", "--method", method, "--out", out, "--cases", cases)
    if not _is_main_process():
        return
    save_reg2rg(model, out, summary)
    console.print(
        f"[bold]reporter[/] ({method}) written to {out}: {summary['n_pairs']} CT pair(s) "
        f"{summary['report_sources']}, {summary['text_cases']} warm-up report(s); "
        f"{time.perf_counter() - started:.1f} s"
    )
    if summary.get("note"):
        err_console.print(f"note: {summary['note']}")


def _is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a plain run) writes the model; the other ranks only train."""
    return int(os.environ.get("RANK", "0")) == 0


def _train_lm_reporter(
    method: str,
    out: Path,
    pair_cases: list[Any],
    texts: list[Any],
    lm: Path | None,
    config: str | None,
    sets: list[str],
    steps: int,
    text_steps: int,
    max_text_cases: int | None,
    pairing: str,
) -> None:
    """AdaRAG-CT (trained on report text of the train split) or DiffVP (CT pairs + text warm-up); ``--config`` /
    ``--set`` fill the ``adarag_train`` / ``diffvp_train`` section."""
    started = time.perf_counter()
    base = str(lm) if lm else None
    if method == "adarag":
        from ctrag.reporting.training.adarag import AdaRAGTrainConfig, save_adarag, train_adarag

        items = [*sets, f"steps={steps}", f"warmup_steps={text_steps}"]
        items += [f"max_cases={max_text_cases}"] if max_text_cases is not None else []
        acfg = load_config(AdaRAGTrainConfig, config, items, section="adarag_train")
        model, bank, summary = train_adarag([*pair_cases, *texts], acfg, base_lm=base)
        if not _is_main_process():
            return
        save_adarag(model, bank, summary, out)
    else:
        from ctrag.reporting.training.diffvp import DiffVPTrainConfig, save_diffvp, train_diffvp

        items = [*sets, f"steps={steps}", f"text_steps={text_steps}", f"model.pairing={pairing}"]
        dcfg = load_config(DiffVPTrainConfig, config, items, section="diffvp_train")
        dmodel, refs, summary = train_diffvp(pair_cases, texts[:max_text_cases], dcfg, base_lm=base)
        if not _is_main_process():
            return
        save_diffvp(dmodel, refs, summary, out)
    console.print(f"[bold]reporter[/] ({method}) written to {out}; {time.perf_counter() - started:.1f} s")
