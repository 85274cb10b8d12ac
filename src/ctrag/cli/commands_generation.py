"""``ctrag train vae|diffusion|controlnet`` and ``ctrag generate``.

Training commands write into one run folder (``--out``): ``vae/``, ``unet/``, ``controlnet/``, ``sampler/`` and a
``pipeline.json`` naming them, which ``ctrag generate --weights RUN`` loads. Each command resumes from the
last checkpoint in its component folder unless ``--no-resume`` is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ctrag.cli._app import app, console, train_app
from ctrag.errors import InvalidInputError

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Preset name (tiny-cpu, text2ct-512) or YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field, e.g. --set train_vae.steps_per_epoch=50 (repeatable)."),
]
CorpusOpt = Annotated[Path, typer.Option("--corpus", help="Corpus folder (manifest.jsonl from `ctrag ingest`).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder (shared by the three training commands).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: from the config).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch CPU threads (default: torch's choice).")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the last checkpoint.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
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


def _load_corpus(corpus: Path) -> Any:
    from ctrag.data.case import Corpus

    return Corpus.load(corpus)


def _report(kind: str, result: Any, out: Path, started: float) -> None:
    losses = result.losses
    first = sum(losses[:10]) / max(1, len(losses[:10]))
    last = sum(losses[-10:]) / max(1, len(losses[-10:]))
    status = "done" if result.info.get("complete", True) else "stopped"
    console.print(
        f"[bold]{kind}[/]: {status} at step {result.steps} (resumed from {result.resumed_from}); "
        f"loss {first:.4f} -> {last:.4f}; {time.perf_counter() - started:.1f} s; run folder {out}"
    )


def _encoder(config: str, device: str) -> tuple[Any, dict[str, Any]]:
    from ctrag.generation.pipeline import create_text_encoder, encoder_spec_from_config

    spec = encoder_spec_from_config(config)
    return create_text_encoder(spec, device), spec


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
    from ctrag.generation.train import train_vae

    started = time.perf_counter()
    cfg = _setup(config, set_, "train_vae", device, threads)
    result = train_vae(_load_corpus(corpus), cfg, out, progress=progress, resume=resume, stop_after=stop_after)
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
    from ctrag.generation.train import train_diffusion

    started = time.perf_counter()
    cfg = _setup(config, set_, "train_diffusion", device, threads)
    encoder, spec = _encoder(config, cfg.train_diffusion.device) if cfg.diffusion.with_conditioning else (None, None)
    result = train_diffusion(
        _load_corpus(corpus),
        cfg,
        out,
        encoder=encoder,
        encoder_spec=spec,
        mask_from=mask_from,
        progress=progress,
        resume=resume,
        stop_after=stop_after,
    )
    result.info["complete"] = result.steps == cfg.train_diffusion.total_steps
    _report("diffusion", result, out, started)


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
    from ctrag.generation.train import train_controlnet

    started = time.perf_counter()
    cfg = _setup(config, set_, "train_controlnet", device, threads)
    encoder, _ = _encoder(config, cfg.train_controlnet.device) if cfg.diffusion.with_conditioning else (None, None)
    result = train_controlnet(
        _load_corpus(corpus),
        cfg,
        out,
        encoder=encoder,
        mask_from=mask_from,
        progress=progress,
        resume=resume,
        stop_after=stop_after,
    )
    result.info["complete"] = result.steps == cfg.train_controlnet.total_steps
    _report("controlnet", result, out, started)


@app.command("generate")
def generate_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output CT (.nii.gz); provenance JSON and PNG go beside it.")
    ],
    weights: Annotated[Path, typer.Option("--weights", help="Run folder from `ctrag train` (holds pipeline.json).")],
    report: Annotated[str | None, typer.Option("--report", help="Report text.")] = None,
    report_file: Annotated[Path | None, typer.Option("--report-file", help="File holding the report text.")] = None,
    index: Annotated[
        Path | None, typer.Option("--index", help="Retrieval index (train split, from `ctrag index`).")
    ] = None,
    strategy: Annotated[
        str, typer.Option("--strategy", help="Proxy retrieval: nearest, random, farthest, or none (text only).")
    ] = "nearest",
    mask: Annotated[Path | None, typer.Option("--mask", help="Label mask (NIfTI) to use instead of retrieval.")] = None,
    mask_labels: Annotated[
        str, typer.Option("--mask-labels", help="Vocabulary of --mask: auto, coarse or totalseg.")
    ] = "auto",
    control_scale: Annotated[float | None, typer.Option("--control-scale", help="ControlNet residual scale.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps (default from config: 30).")] = None,
    cfg: Annotated[float | None, typer.Option("--cfg", help="Classifier-free guidance scale (default 5.0).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial noise (and random retrieval).")] = 0,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Check the weights against this preset/YAML.")
    ] = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Write a tri-planar PNG with the proxy overlaid.")] = True,
    dice: Annotated[
        bool, typer.Option("--dice", help="Segment the result and report Dice against the proxy mask.")
    ] = False,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also write the text-only baseline (same seed, no ControlNet) as OUT_text_only.nii.gz, on the "
            "same grid, for comparison (and its Dice against the same proxy with --dice).",
        ),
    ] = False,
    progress: ProgressOpt = True,
) -> None:
    """Generate a CT from a report: retrieve a proxy anatomy, sample with ControlNet guidance, write NIfTI."""
    import torch

    from ctrag.generation.output import output_paths, save_result
    from ctrag.generation.pipeline import GenerationPipeline

    if (report is None) == (report_file is None):
        raise InvalidInputError("give exactly one of --report TEXT or --report-file FILE")
    if report_file is not None:
        if not report_file.is_file():
            raise InvalidInputError(f"--report-file {report_file} not found")
        report = report_file.read_text(encoding="utf-8")
    assert report is not None
    if not report.strip():
        raise InvalidInputError("the report is empty")
    output_paths(out)  # validate the name before loading models
    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    overrides = list(set_ or [])
    if device is not None:
        overrides.append(f"sampler.device={device}")
    started = time.perf_counter()
    if config is not None:
        pipe = GenerationPipeline.from_config(config, weights, overrides=overrides, index_dir=index, device=device)
    else:
        pipe = GenerationPipeline.from_pretrained(weights, overrides=overrides, index_dir=index, device=device)
    load_s = time.perf_counter() - started
    result = pipe(
        report,
        strategy=strategy if mask is None else "none",
        mask=mask,
        mask_labels=mask_labels,
        seed=seed,
        steps=steps,
        cfg=cfg,
        control_scale=control_scale,
        progress=progress,
    )
    result.timings["load"] = load_s
    text_only = None
    if baseline and result.mask is not None:
        text_only = pipe(report, strategy="none", seed=seed, steps=steps, cfg=cfg, grid=result.affine)
        text_only.mask, text_only.mask_source = result.mask, "none (proxy shown for comparison only)"
    extra: dict[str, Any] = {}
    if dice and result.mask is not None:
        from ctrag.generation.evaluate import control_agreement

        extra["dice_vs_proxy"] = control_agreement(result.volume, result.affine, result.mask, result.label_set)
        if text_only is not None:
            extra["dice_vs_proxy_text_only"] = control_agreement(
                text_only.volume, text_only.affine, result.mask, result.label_set
            )
    paths = save_result(result, out, png=png, extra_provenance=extra)
    if text_only is not None:
        stem = paths["volume"].name.removesuffix(".gz").removesuffix(".nii")
        base_out = paths["volume"].with_name(f"{stem}_text_only.nii.gz")
        save_result(text_only, base_out, png=png, extra_provenance={"baseline_of": str(paths["volume"])})
        console.print(f"[bold]text-only baseline[/] {base_out}")
    hit = result.retrieved[0] if result.retrieved else None
    proxy = f"{hit['case_id']} (score {hit['score']:.3f})" if hit else result.mask_source
    console.print(
        f"[bold]generated[/] {paths['volume']} {result.volume.shape} at "
        f"{tuple(round(s, 2) for s in result.spacing)} mm;"
        f" proxy {proxy}; seed {result.seed}; {result.timings['total']:.1f} s (+{load_s:.1f} s load)"
    )
    for key, values in extra.items():
        shown = {k: round(v, 3) for k, v in values.items()}
        console.print(f"{key}: {json.dumps(shown)}", highlight=False, soft_wrap=True)


@app.command("import-weights")
def import_weights_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write (loadable by ctrag generate).")],
    vae: Annotated[Path, typer.Option("--vae", help="Autoencoder checkpoint (MAISI / Text2CT .pt).")],
    unet: Annotated[Path, typer.Option("--unet", help="Diffusion UNet checkpoint (holds scale_factor).")],
    controlnet: Annotated[Path | None, typer.Option("--controlnet", help="ControlNet checkpoint.")] = None,
    config: ConfigOpt = "text2ct-512",
    set_: SetOpt = None,
    scale_factor: Annotated[
        float | None, typer.Option("--scale-factor", help="Latent scale factor if the UNet file lacks it.")
    ] = None,
) -> None:
    """Load MAISI / Text2CT / RAG-Text2CT weights from local files into a ctrag run folder (strict key checks)."""
    from ctrag.generation.config import load_generator_config
    from ctrag.generation.pipeline import encoder_spec_from_config
    from ctrag.generation.pipeline_io import import_external_weights

    cfg = load_generator_config(config, list(set_ or []))
    spec = encoder_spec_from_config(config) if cfg.diffusion.with_conditioning else None
    path = import_external_weights(
        cfg, out, vae=vae, unet=unet, controlnet=controlnet, scale_factor=scale_factor, encoder_spec=spec
    )
    console.print(f"[bold]imported[/] weights into {path.parent} (config {config})")
