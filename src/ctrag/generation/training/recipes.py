"""The three generator trainings (VAE, text-conditioned UNet, ControlNet), each written into one run folder.

A recipe only assembles pieces: training cases in the image space (``data.py``), a network and its objective
(``objectives.py``), a ``make_batch``/``prepare_batch`` pair, and the resumable loop (``engine.py``). It then
publishes the component folder (EMA weights when enabled) and refreshes ``pipeline.json`` (``run_folder.py``).
The pipeline never imports this package.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag.config import config_to_dict
from ctrag.data.case import Case, Corpus
from ctrag.data.labels import num_labels
from ctrag.errors import CheckpointMismatchError, InvalidInputError
from ctrag.generation.config import GeneratorConfig, TrainConfig, TrainDiffusionConfig
from ctrag.generation.controlnet import controlnet_from_unet
from ctrag.generation.networks import (
    build_unet,
    build_vae,
    enable_grad_checkpointing,
    seeded_init,
    to_channels_last,
)
from ctrag.generation.run_folder import (
    CONTROLNET_DIR,
    SAMPLER_DIR,
    UNET_DIR,
    VAE_DIR,
    component_hash,
    encoder_record,
    load_unet_component,
    load_vae_component,
    read_pipeline_index,
    unet_meta,
    update_pipeline_index,
    vae_meta,
)
from ctrag.generation.sampler import RectifiedFlowSampler
from ctrag.generation.training.data import (
    CropSampler,
    LatentBank,
    TrainingCase,
    bank_batches,
    flip_record,
    latent_bank,
    load_training_cases,
    text_contexts,
)
from ctrag.generation.training.engine import (
    Generators,
    MakeBatch,
    PrepareBatch,
    TrainLoop,
    TrainResult,
    publish,
    setup_distributed,
    write_log,
)
from ctrag.generation.training.latent_cache import (
    BuildReport,
    LatentCache,
    build_latent_cache,
    cache_config,
    case_sources,
    corpus_sources,
    make_cache_key,
)
from ctrag.generation.training.objectives import FlowObjective, VAEObjective, flow_prepare_batch, vae_prepare_batch
from ctrag.generation.training.streaming import BatchSplit, CropDrawer, LatentCropDataset, StreamingBatches
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

CACHE_DIR = "latent_cache"


def train_vae(
    corpus: Corpus | Sequence[Case] | None,
    config: GeneratorConfig,
    run_dir: str | os.PathLike[str],
    *,
    cases: list[TrainingCase] | None = None,
    progress: ProgressFn | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    prepare_batch: PrepareBatch | None = None,
) -> TrainResult:
    """Train the VAE on random crops of the training CTs; writes ``run_dir/vae``."""
    cfg = config.train_vae
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise InvalidInputError(f"--out {run} exists and is not a folder")
    _, device = setup_distributed(cfg.device)
    if cases is None:
        if corpus is None:
            raise InvalidInputError("train_vae needs a corpus or preloaded cases")
        cases = load_training_cases(
            corpus, config.preprocess, splits=cfg.splits, min_shape=cfg.crop_shape, held_out=config.held_out
        )
    config.held_out.check_case_ids([c.case_id for c in cases], "the VAE")
    crops = CropSampler(cases, cfg.crop_shape, cfg.flip_prob)
    with seeded_init(cfg.seed):
        vae = build_vae(config.vae).to(device)
    if cfg.channels_last:
        vae = to_channels_last(vae)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(vae)
    lo, hi = config.preprocess.hu_window
    objective = VAEObjective(vae, cfg.kl_weight, cfg.edge_weight, (cfg.edge_hu - lo) / (hi - lo))

    def make_batch(step: int, gens: Generators) -> Mapping[str, Any]:
        return crops.sample_each(gens)

    prepare = prepare_batch or vae_prepare_batch(config, cfg, _memory_format(cfg))
    run_key = {"vae": config_to_dict(config.vae), "cases": [c.case_id for c in cases]}
    loop, result = _run(objective, cfg, run / VAE_DIR, make_batch, prepare, progress, run_key, resume, stop_after)
    result.info["flip"] = flip_record(cfg, None, False)
    if loop.dist.is_main and result.steps == cfg.total_steps:
        publish(loop, vae, "vae", config_to_dict(config.vae), run / VAE_DIR, vae_meta(config, cfg))
        update_pipeline_index(run, config)
    write_log(run / VAE_DIR, result, loop.dist)
    return result


def train_diffusion(
    corpus: Corpus | Sequence[Case] | None,
    config: GeneratorConfig,
    run_dir: str | os.PathLike[str],
    *,
    encoder: Any | None = None,
    encoder_spec: dict[str, Any] | None = None,
    cases: list[TrainingCase] | None = None,
    mask_from: str = "segment",
    segment_config: Any | None = None,
    progress: ProgressFn | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    prepare_batch: PrepareBatch | None = None,
) -> TrainResult:
    """Train the text-conditioned UNet on latent crops from the frozen VAE in ``run_dir/vae``."""
    cfg = config.train_diffusion
    run = Path(run_dir)
    dist, device = setup_distributed(cfg.device)
    vae, _ = load_vae_component(run / VAE_DIR, config, device)
    cases = _flow_cases(corpus, cases, config, cfg, encoder, mask_from, segment_config, "the diffusion UNet")
    report = progress if dist.is_main else None
    bank, dim, contexts, has_text = _flow_data(run, vae, cases, config, cfg, mask_from, device, report)
    scale_factor = float(1.0 / bank.latents.std().clamp_min(1e-6))
    logger.info("latent scale factor %.4f (1 / std of %d latent crops)", scale_factor, len(bank))
    with seeded_init(cfg.seed):
        unet = build_unet(config.diffusion).to(device)
    if cfg.channels_last:
        unet = to_channels_last(unet)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(unet)
    null = torch.zeros(1, 1, dim or 1)
    objective = FlowObjective(unet, null, config.diffusion.null_embedding == "learned", cfg.loss).to(device)
    run_key = {
        "diffusion": config_to_dict(config.diffusion),
        "scheduler": config_to_dict(config.sampler.scheduler),
        "vae": component_hash(run / VAE_DIR),
        "cases": [c.case_id for c in cases],
    }
    flow = _FlowData(bank, contexts, has_text, scale_factor, with_mask=False)
    loop, result, sampler = _run_flow(
        objective, config, cfg, flow, run / UNET_DIR, run_key, progress, prepare_batch, resume, stop_after
    )
    result.info["scale_factor"] = scale_factor
    result.info["flip"] = flip_record(cfg, None, dim is not None)
    result.info["text_cases"] = [c.case_id for c in cases if c.context is not None]
    if dist.is_main and result.steps == cfg.total_steps:
        meta = unet_meta(scale_factor, config, cfg, text_cases=result.info["text_cases"])
        publish(loop, unet, "unet", config_to_dict(config.diffusion), run / UNET_DIR, meta)
        sampler.save_config(run / SAMPLER_DIR)
        record = encoder_record(encoder, encoder_spec) if encoder is not None else None
        update_pipeline_index(run, config, encoder=record)
    write_log(run / UNET_DIR, result, dist)
    return result


def train_controlnet(
    corpus: Corpus | Sequence[Case] | None,
    config: GeneratorConfig,
    run_dir: str | os.PathLike[str],
    *,
    encoder: Any | None = None,
    cases: list[TrainingCase] | None = None,
    mask_from: str = "segment",
    segment_config: Any | None = None,
    progress: ProgressFn | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    prepare_batch: PrepareBatch | None = None,
) -> TrainResult:
    """Train the ControlNet on (CT, mask) crops; VAE and UNet (from ``run_dir``) stay frozen."""
    cfg = config.train_controlnet
    run = Path(run_dir)
    dist, device = setup_distributed(cfg.device)
    vae, _ = load_vae_component(run / VAE_DIR, config, device)
    unet, null, scale_factor, _ = load_unet_component(run / UNET_DIR, config, device)
    for p in unet.parameters():
        p.requires_grad_(False)
    unet.eval()
    _check_same_encoder(run, encoder)
    report = progress if dist.is_main else None
    stream: StreamingBatches | None = None
    if cfg.data.source == "cache":
        stream, cache, build = _controlnet_stream(
            run, vae, corpus, cases, config, encoder, mask_from, segment_config, device, report
        )
        case_ids, data_key = [e.case_id for e in cache.entries], cache.content_key
        mask_origins = cache.mask_origins
        flow = _FlowData(None, None, torch.zeros(0, dtype=torch.bool), scale_factor, True, batches=stream)
    else:
        cases = _flow_cases(corpus, cases, config, cfg, encoder, mask_from, segment_config, "the ControlNet")
        if any(c.labels is None for c in cases):
            raise InvalidInputError("ControlNet training needs a label map for every training case")
        bank, _, contexts, has_text = _flow_data(run, vae, cases, config, cfg, mask_from, device, report)
        case_ids, data_key = [c.case_id for c in cases], None
        mask_origins = {c.case_id: c.mask_origin for c in cases}
        flow = _FlowData(bank, contexts, has_text, scale_factor, with_mask=True)
    del vae
    label_set = config.controlnet.label_set
    with seeded_init(cfg.seed):
        controlnet = controlnet_from_unet(unet, config.diffusion, config.controlnet, num_labels(label_set))
    controlnet = controlnet.to(device)
    if cfg.channels_last:
        controlnet, unet = to_channels_last(controlnet), to_channels_last(unet)
    if cfg.grad_checkpointing:  # the frozen UNet too: the loss's gradient flows back through its up blocks
        enable_grad_checkpointing(controlnet)
        enable_grad_checkpointing(unet)
    objective = FlowObjective(unet, null, False, cfg.loss, controlnet=controlnet).to(device)
    run_key = {
        "controlnet": config_to_dict(config.controlnet),
        "unet": component_hash(run / UNET_DIR),
        "vae": component_hash(run / VAE_DIR),
        "cases": case_ids,
        "mask_from": mask_from,
    }
    if data_key is not None:
        run_key["latent_cache"] = data_key
    out = run / CONTROLNET_DIR
    try:
        loop, result, _ = _run_flow(
            objective, config, cfg, flow, out, run_key, progress, prepare_batch, resume, stop_after
        )
    finally:
        if stream is not None:
            stream.close()
    result.info["mask_origins"] = mask_origins
    if stream is not None:
        result.info["latent_cache"] = {
            "dir": str(cache.root),
            "cases": len(cache),
            "shards_built": build.built,
            "shards_reused": build.reused,
            "skipped": build.skipped,
            "sampling": cfg.data.sampling,
            "num_workers": cfg.data.num_workers,
        }
    result.info["flip"] = flip_record(cfg, label_set, config.diffusion.with_conditioning)
    if dist.is_main and result.steps == cfg.total_steps:
        meta = {
            "label_set": label_set,
            "num_labels": num_labels(label_set),
            "unet": config_to_dict(config.diffusion),
            "mask_from": mask_from,
            "train": config_to_dict(cfg),
        }
        publish(loop, controlnet, "controlnet", config_to_dict(config.controlnet), out, meta)
        update_pipeline_index(run, config)
    write_log(out, result, dist)
    return result


# ------------------------------------------------------------------------------------------------ shared steps


def _memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last_3d if cfg.channels_last else torch.contiguous_format


def _run(
    objective: nn.Module,
    cfg: TrainConfig,
    out: Path,
    make_batch: MakeBatch,
    prepare: PrepareBatch,
    progress: ProgressFn | None,
    run_key: Mapping[str, Any],
    resume: bool,
    stop_after: int | None,
) -> tuple[TrainLoop, TrainResult]:
    """The loop of one component: on this process's device and rank, resumed from ``out`` unless told not to."""
    dist, device = setup_distributed(cfg.device)
    loop = TrainLoop(
        objective, cfg, out, make_batch, prepare, device=device, dist=dist, progress=progress, run_key=run_key
    )
    return loop, loop.run(resume=resume, stop_after=stop_after)


@dataclass
class _FlowData:
    """What a latent-flow training draws its batches from: the in-memory bank, or ``batches`` (streamed)."""

    bank: LatentBank | None
    contexts: torch.Tensor | None
    has_text: torch.Tensor
    scale_factor: float
    with_mask: bool
    batches: MakeBatch | None = None


def _run_flow(
    objective: nn.Module,
    config: GeneratorConfig,
    cfg: TrainDiffusionConfig,
    flow: _FlowData,
    out: Path,
    run_key: Mapping[str, Any],
    progress: ProgressFn | None,
    prepare_batch: PrepareBatch | None,
    resume: bool,
    stop_after: int | None,
) -> tuple[TrainLoop, TrainResult, RectifiedFlowSampler]:
    """The loop of a latent-flow training: bank batches, flow-loss preparation with the preset's schedule."""
    sampler = RectifiedFlowSampler.from_config(config.sampler.scheduler)
    if flow.batches is not None:
        make_batch = flow.batches
    else:
        assert flow.bank is not None
        make_batch = bank_batches(flow.bank, flow.with_mask)
    prepare = prepare_batch or flow_prepare_batch(
        config, cfg, flow.contexts, flow.has_text, sampler, flow.scale_factor, flow.with_mask, _memory_format(cfg)
    )
    loop, result = _run(objective, cfg, out, make_batch, prepare, progress, run_key, resume, stop_after)
    return loop, result, sampler


def _flow_cases(
    corpus: Corpus | Sequence[Case] | None,
    cases: list[TrainingCase] | None,
    config: GeneratorConfig,
    cfg: TrainDiffusionConfig,
    encoder: Any | None,
    mask_from: str,
    segment_config: Any | None,
    what: str,
) -> list[TrainingCase]:
    """The latent-flow trainings' cases (with label maps and text embeddings), never held-out ones."""
    if cases is None:
        if corpus is None:
            raise InvalidInputError("training needs a corpus or preloaded cases")
        cases = load_training_cases(
            corpus,
            config.preprocess,
            splits=cfg.splits,
            min_shape=cfg.crop_shape,
            label_set=config.controlnet.label_set,
            mask_from=mask_from,  # type: ignore[arg-type]
            encoder=encoder if config.diffusion.with_conditioning else None,
            segment_config=segment_config,
            held_out=config.held_out,
        )
    config.held_out.check_case_ids([c.case_id for c in cases], what)
    return cases


def _flow_data(
    run: Path,
    vae: nn.Module,
    cases: list[TrainingCase],
    config: GeneratorConfig,
    cfg: TrainDiffusionConfig,
    mask_from: str,
    device: torch.device,
    progress: ProgressFn | None,
) -> tuple[LatentBank, int | None, torch.Tensor | None, torch.Tensor]:
    """What both latent-flow trainings sample from: the latent crop bank of the frozen VAE, the text-embedding
    width (None without conditioning), per-case text contexts and which cases have text."""
    label_key = {"label_set": config.controlnet.label_set, "mask_from": mask_from}
    bank = latent_bank(run, vae, run / VAE_DIR, cases, cfg, cfg.bank_crops, label_key, device, progress)
    dim = config.diffusion.cross_attention_dim if config.diffusion.with_conditioning else None
    has_text = torch.tensor([c.context is not None for c in cases])
    return bank, dim, text_contexts(cases, dim), has_text


def _controlnet_stream(
    run: Path,
    vae: nn.Module,
    corpus: Corpus | Sequence[Case] | None,
    cases: list[TrainingCase] | None,
    config: GeneratorConfig,
    encoder: Any | None,
    mask_from: str,
    segment_config: Any | None,
    device: torch.device,
    progress: ProgressFn | None,
) -> tuple[StreamingBatches, LatentCache, BuildReport]:
    """Build (or finish) the latent cache of the training split, then stream ControlNet batches from it."""
    cfg = config.train_controlnet
    label_set = config.controlnet.label_set
    text = config.diffusion.with_conditioning
    settings = cache_config(config.preprocess, cfg.crop_shape, label_set, mask_from, config.vae.downsample,
                            segment_config)  # fmt: skip
    key = make_cache_key(component_hash(run / VAE_DIR), encoder if text else None, settings)
    if cases is not None:
        sources = case_sources(cases)
    elif corpus is not None:
        sources = corpus_sources(
            corpus, config.preprocess, splits=cfg.splits, min_shape=cfg.crop_shape, label_set=label_set,
            mask_from=mask_from, segment_config=segment_config, held_out=config.held_out, with_text=text,  # type: ignore[arg-type]
        )  # fmt: skip
    else:
        raise InvalidInputError("training needs a corpus or preloaded cases")
    config.held_out.check_case_ids([s.case_id for s in sources], "the ControlNet")
    root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run / CACHE_DIR
    dim = config.diffusion.cross_attention_dim if text else None
    build = BuildReport()
    dist, _ = setup_distributed(cfg.device)
    if dist.is_main:
        build = build_latent_cache(root, sources, vae, key, settings, shard_cases=cfg.data.shard_cases,
                                   encoder=encoder if text else None, text_dim=dim, device=device,
                                   progress=progress)  # fmt: skip
    if dist.world_size > 1:
        torch.distributed.barrier()
    cache = LatentCache(root, key)
    drawer = CropDrawer(cache, cfg.crop_shape, sampling=cfg.data.sampling,
                        bank_crops=cfg.bank_crops, seed=cfg.seed)  # fmt: skip
    dataset = LatentCropDataset(cache, drawer.latent_crop, with_text=text)
    split = BatchSplit(cfg.batch_size, dist.world_size, dist.rank, cfg.grad_accum_steps)
    stream = StreamingBatches(dataset, drawer, seed=cfg.seed, total_steps=cfg.total_steps, split=split,
                              num_workers=cfg.data.num_workers)  # fmt: skip
    return stream, cache, build


def _check_same_encoder(run: Path, encoder: Any | None) -> None:
    """The ControlNet must see the embeddings the frozen UNet was trained with."""
    recorded = (read_pipeline_index(run).get("encoder") or {}).get("fingerprint")
    given = getattr(encoder, "fingerprint", None)
    if recorded and given and recorded != given:
        raise CheckpointMismatchError(
            f"the UNet in {run} was trained with text encoder {recorded}, but {given} was given"
        )
