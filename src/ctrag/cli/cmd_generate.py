"""``ctrag generate`` (report -> CT with its proxy, provenance and figure) and ``ctrag import-weights``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ctrag.cli._app import app, console
from ctrag.cli._progress import stage_progress
from ctrag.cli._shared import ConfigOpt, DeviceOpt, ProgressOpt, SetOpt, ThreadsOpt, check_report, read_report_file
from ctrag.errors import InvalidInputError

if TYPE_CHECKING:
    from ctrag.generation.batch import ReportRequest
    from ctrag.generation.pipeline import GenerationPipeline


@app.command("generate")
def generate_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output CT (.nii.gz); provenance JSON and PNG go beside it. With --reports-csv: a folder that "
            "receives OUT/<id>/ct.nii.gz per report.",
        ),
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
    reports_csv: Annotated[
        Path | None,
        typer.Option(
            "--reports-csv",
            help="CSV of many reports (columns --id-column, --text-column, optional 'seed'); finished outputs "
            "under --out are skipped, so an interrupted run resumes.",
        ),
    ] = None,
    id_column: Annotated[str, typer.Option("--id-column", help="--reports-csv: the id column.")] = "id",
    text_column: Annotated[
        str, typer.Option("--text-column", help="--reports-csv: the report text column.")
    ] = "report_text",
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="--reports-csv: reports sampled together in one batch.")
    ] = 4,
    shard: Annotated[
        str | None, typer.Option("--shard", help="--reports-csv: i/n takes every n-th report from the i-th (0-based).")
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Generate a CT from a report: retrieve a proxy anatomy, sample with ControlNet guidance, write NIfTI."""

    from ctrag.generation.output import output_paths, save_result

    if reports_csv is not None:
        if report is not None or report_file is not None or mask is not None or baseline or dice:
            raise InvalidInputError("--reports-csv takes no --report/--report-file/--mask/--baseline/--dice")
        from ctrag.generation.batch import parse_shard, read_report_table

        requests = read_report_table(reports_csv, base_seed=seed, id_column=id_column, text_column=text_column)
        shard_ix = parse_shard(shard)
        if batch_size < 1:
            raise InvalidInputError(f"--batch-size must be >= 1, got {batch_size}")
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"--out {out} exists and is not a folder (--reports-csv writes one per report)")
        _set_threads(threads)
        pipe = _load_pipeline(weights, config, set_, device, index)
        _generate_many(pipe, requests, out, batch_size, strategy, steps, cfg, control_scale, png, shard_ix, progress)
        return
    if (report is None) == (report_file is None):
        raise InvalidInputError("give exactly one of --report TEXT or --report-file FILE")
    if report_file is not None:
        report = read_report_file(report_file)
    assert report is not None
    report = check_report(report, what="--report")
    output_paths(out)  # validate the name before loading models
    _set_threads(threads)
    started = time.perf_counter()
    pipe = _load_pipeline(weights, config, set_, device, index)
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


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _load_pipeline(
    weights: Path, config: str | None, set_: list[str] | None, device: str | None, index: Path | None
) -> GenerationPipeline:
    from ctrag.generation.pipeline import GenerationPipeline

    overrides = list(set_ or [])
    if device is not None:
        overrides.append(f"sampler.device={device}")
    if config is not None:
        return GenerationPipeline.from_config(config, weights, overrides=overrides, index_dir=index, device=device)
    return GenerationPipeline.from_pretrained(weights, overrides=overrides, index_dir=index, device=device)


def _generate_many(
    pipe: GenerationPipeline,
    requests: list[ReportRequest],
    out: Path,
    batch_size: int,
    strategy: str,
    steps: int | None,
    cfg: float | None,
    control_scale: float | None,
    png: bool,
    shard: tuple[int, int],
    progress: bool,
) -> None:
    from ctrag.generation.batch import generate_reports

    started = time.perf_counter()
    with stage_progress(progress, "generate") as update:
        summary = generate_reports(
            pipe, requests, out, batch_size=batch_size, strategy=strategy, steps=steps, cfg=cfg,
            control_scale=control_scale, png=png, shard=shard, progress=update,
        )  # fmt: skip
    console.print(
        f"[bold]generated[/] {len(summary.written)} CT(s) under {out}, skipped {len(summary.skipped)} already "
        f"done, {len(summary.failed)} failed; {time.perf_counter() - started:.1f} s"
    )
    for rid, why in summary.failed.items():
        console.print(f"[red]failed[/] {rid}: {why}", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)


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
