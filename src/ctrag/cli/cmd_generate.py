"""``ctrag generate`` (report -> CT with its proxy, provenance and figure) and ``ctrag import-weights``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ctrag.cli._app import app, console
from ctrag.cli._progress import stage_progress
from ctrag.cli._shared import ConfigOpt, DeviceOpt, ProgressOpt, SetOpt, ThreadsOpt, check_report, read_report_file
from ctrag.errors import InvalidInputError


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
        report = read_report_file(report_file)
    assert report is not None
    report = check_report(report, what="--report")
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
    with stage_progress(progress, "generate") as update:
        result = pipe(
            report,
            strategy=strategy if mask is None else "none",
            mask=mask,
            mask_labels=mask_labels,
            seed=seed,
            steps=steps,
            cfg=cfg,
            control_scale=control_scale,
            progress=update,
        )
    result.timings["load"] = load_s
    text_only = None
    if baseline and result.mask is not None:
        text_only = pipe(report, strategy="none", seed=seed, steps=steps, cfg=cfg, grid=result.affine)
        text_only.mask, text_only.mask_source = result.mask, "none (proxy shown for comparison only)"
    extra: dict[str, Any] = {}
    if dice and result.mask is not None:
        from ctrag.evaluation.metrics.controllability import control_agreement

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
    from ctrag.generation.run_folder import encoder_spec_from_config, import_external_weights

    cfg = load_generator_config(config, list(set_ or []))
    spec = encoder_spec_from_config(config, list(set_ or [])) if cfg.diffusion.with_conditioning else None
    path = import_external_weights(
        cfg, out, vae=vae, unet=unet, controlnet=controlnet, scale_factor=scale_factor, encoder_spec=spec
    )
    console.print(f"[bold]imported[/] weights into {path.parent} (config {config})")
