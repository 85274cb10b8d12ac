"""Training of the VAE, the text-conditioned UNet and the ControlNet, resumable and DDP-ready.

Shape (MONAI engines): one generic loop, ``TrainLoop``, receives an *objective* module (network + loss, whose
``forward`` returns the loss), a ``make_batch(step, generator)`` data source and a ``prepare_batch(batch,
device, generator)`` callable that turns a raw batch into the objective's tensors (noise, timesteps, one-hot
masks, dropped text...). The three ``train_*`` functions only assemble those pieces; the pipeline never imports
this module.

Resumability: all randomness of step ``k`` comes from generators seeded with (seed, k, rank), and the
checkpoint (``train_state.pt``, written atomically every ``save_every`` steps) holds the trainable weights, the
optimiser and EMA state and the loss history. A run stopped after ``k`` steps and resumed therefore produces
the same losses as an uninterrupted run.

Multi-GPU: launched with ``torchrun`` or ``accelerate launch`` (which set ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``), the loop initialises a process group, wraps the objective in DDP (only trainable parameters
are synchronised), draws a different batch per rank, and writes checkpoints from rank 0 only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctrag.config import config_to_dict
from ctrag.data.case import Case, Corpus
from ctrag.errors import CheckpointMismatchError, ConfigError, InvalidInputError
from ctrag.generation.config import GeneratorConfig, TrainConfig, TrainDiffusionConfig
from ctrag.generation.controlnet import controlnet_from_unet, controlnet_residuals, encode_control
from ctrag.generation.data import (
    CropSampler,
    LatentBank,
    TrainingCase,
    build_latent_bank,
    load_training_cases,
    step_generator,
)
from ctrag.generation.masks import encode_mask, num_labels
from ctrag.generation.networks import build_unet, build_vae, extra_unet_inputs, seeded_init, to_channels_last
from ctrag.generation.pipeline_io import (
    CONTROLNET_DIR,
    UNET_DIR,
    VAE_DIR,
    encoder_record,
    load_unet_component,
    load_vae_component,
    read_pipeline_index,
    unet_meta,
    update_pipeline_index,
)
from ctrag.generation.sampler import RectifiedFlowSampler
from ctrag.generation.weights import component_hash, save_component, save_state_dict
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file
from ctrag.utils.hashing import sha256_json

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"

PrepareBatch = Callable[[Mapping[str, Any], torch.device, torch.Generator], dict[str, Any]]
MakeBatch = Callable[[int, torch.Generator], Mapping[str, Any]]


# ------------------------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun/accelerate (``WORLD_SIZE > 1``); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        logger.info("DDP: rank %d of %d on %s (%s)", rank, world, dev, backend)
    return DistInfo(rank, world, local), dev


def _all_mean(value: torch.Tensor, dist: DistInfo) -> float:
    if dist.world_size > 1:
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
        value /= dist.world_size
    return float(value.detach())


# ------------------------------------------------------------------------------------------------ helpers


class EMA:
    """Exponential moving average of a module's trainable parameters (shadow copies on the same device)."""

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor]) -> None:
        for k, v in params.items():
            self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise CheckpointMismatchError("EMA state does not match the trainable parameters")
        for k, v in state.items():
            self.shadow[k].copy_(v)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up, then constant or cosine decay to a floor."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_fraction
    return cfg.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def autocast_context(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _named_trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p for k, p in module.named_parameters() if p.requires_grad}


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    resumed_from: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class TrainLoop:
    """AdamW over an objective's trainable parameters, with resumable atomic checkpoints.

    ``objective(**prepared)`` must return a scalar loss. ``state_module`` is the module whose trainable
    parameters are checkpointed (the objective itself by default).
    """

    def __init__(
        self,
        objective: nn.Module,
        cfg: TrainConfig,
        out_dir: str | os.PathLike[str],
        make_batch: MakeBatch,
        prepare_batch: PrepareBatch,
        *,
        device: torch.device,
        dist: DistInfo = DistInfo(),
        progress: bool = False,
        run_key: Mapping[str, Any] | None = None,
    ) -> None:
        self.objective = objective
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.make_batch = make_batch
        self.prepare_batch = prepare_batch
        self.device = device
        self.dist = dist
        self.progress = progress
        self.run_key = dict(run_key or {})
        self.params = _named_trainable(objective)
        if not self.params:
            raise ConfigError("nothing to train: the objective has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.betas[0], cfg.betas[1])
        )
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda") if (device.type == "cuda" and cfg.precision == "fp16") else None
        self.losses: list[float] = []
        self.step = 0
        runner: nn.Module = objective
        if dist.world_size > 1:
            runner = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            runner = torch.compile(runner)  # type: ignore[assignment]
        self.runner = runner

    # --- state ----------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    def _key(self) -> str:
        return sha256_json({"train": config_to_dict(self.cfg), **self.run_key})

    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        state = {
            "step": self.step,
            "key": self._key(),
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else {k: v.cpu() for k, v in self.ema.state_dict().items()},
            "losses": torch.tensor(self.losses, dtype=torch.float64),
        }
        save_state_dict(state, self.state_path)

    def load_state(self) -> bool:
        if not self.state_path.is_file():
            return False
        state = load_checkpoint_file(self.state_path)
        if state.get("key") != self._key():
            raise CheckpointMismatchError(
                f"{self.state_path} belongs to a run with other settings (training config, data or frozen weights "
                "changed); use a new --out folder or pass --no-resume to start over"
            )
        params = state["params"]
        if set(params) != set(self.params):
            raise CheckpointMismatchError(f"{self.state_path}: trainable parameters differ from the model's")
        with torch.no_grad():
            for k, v in params.items():
                self.params[k].copy_(v.to(self.params[k].device))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict({k: v.to(self.device) for k, v in state["ema"].items()})
        self.losses = [float(x) for x in state["losses"].tolist()]
        self.step = int(state["step"])
        return True

    def final_params(self) -> dict[str, torch.Tensor]:
        """Trainable weights to publish: the EMA copy when enabled, else the live ones."""
        return self.ema.state_dict() if self.ema is not None else {k: v.detach() for k, v in self.params.items()}

    # --- loop -----------------------------------------------------------------------------------------------
    def run(self, *, resume: bool = True, stop_after: int | None = None) -> TrainResult:
        """Train until ``total_steps`` (or ``stop_after`` steps in this call, to simulate an interruption)."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        resumed = self.load_state() if resume else 0
        start = self.step
        if resumed:
            logger.info("resuming %s at step %d", self.out_dir, start)
        end = self.cfg.total_steps if stop_after is None else min(self.cfg.total_steps, start + stop_after)
        self.objective.train()
        bar = tqdm(
            total=self.cfg.total_steps,
            initial=start,
            desc=f"train {self.out_dir.name}",
            disable=not (self.progress and self.dist.is_main),
            leave=False,
        )
        try:
            while self.step < end:
                step = self.step
                gen = step_generator(self.cfg.seed, step, self.dist.rank)
                raw = self.make_batch(step, gen)
                batch = self.prepare_batch(raw, self.device, gen)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(step, self.cfg)
                with autocast_context(self.device, self.cfg.precision):
                    loss = self.runner(**batch)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                else:
                    loss.backward()
                if self.cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.params)
                value = _all_mean(loss, self.dist)
                if not math.isfinite(value):
                    raise FloatingPointError(f"training diverged at step {step}: loss {value}")
                self.losses.append(value)
                self.step += 1
                bar.update(1)
                if self.step % max(1, self.cfg.log_every) == 0:
                    recent = self.losses[-self.cfg.log_every :]
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
                if self.step % self.cfg.save_every == 0 or self.step == end:
                    self.save_state()
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        info = {"world_size": self.dist.world_size, "device": str(self.device)}
        return TrainResult(self.out_dir, self.step, list(self.losses), seconds, start, info)


# ------------------------------------------------------------------------------------------------ objectives


class VAEObjective(nn.Module):
    """L1 reconstruction (+ optional bone-weighted L1) + KL, with the posterior sample drawn from given noise."""

    def __init__(self, vae: nn.Module, kl_weight: float, edge_weight: float, edge_level: float) -> None:
        super().__init__()
        self.vae: Any = vae
        self.kl_weight = kl_weight
        self.edge_weight = edge_weight
        self.edge_level = edge_level

    def forward(self, image: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        z_mu, z_sigma = self.vae.encode(image)
        z = z_mu + eps * z_sigma
        recon = self.vae.decode(z)
        err = (recon.float() - image).abs()
        loss = err.mean()
        if self.edge_weight > 0:
            loss = loss + self.edge_weight * (err * (image > self.edge_level)).mean()
        kl = 0.5 * (z_mu.float().pow(2) + z_sigma.float().pow(2) - torch.log(z_sigma.float().pow(2) + 1e-8) - 1)
        return loss + self.kl_weight * kl.sum(dim=(1, 2, 3, 4)).mean()


class FlowObjective(nn.Module):
    """Rectified-flow velocity loss of a UNet, optionally steered by a ControlNet (then the UNet is frozen).

    ``null_embedding`` (a parameter when learned, a zero buffer otherwise) replaces the context of dropped
    samples, so the unconditional branch of classifier-free guidance is trained on the same data.
    """

    def __init__(
        self,
        unet: nn.Module,
        null_embedding: torch.Tensor,
        learn_null: bool,
        loss: str = "l1",
        controlnet: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.loss = loss
        if learn_null:
            self.null_embedding = nn.Parameter(null_embedding.clone())
        else:
            self.register_buffer("null_embedding", null_embedding.clone())

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        target: torch.Tensor,
        context: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        unet_extra: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        extra: dict[str, Any] = dict(unet_extra or {})
        ctx = None
        if context is not None:
            null = self.null_embedding.to(context.dtype).expand_as(context)
            ctx = torch.where(drop.view(-1, 1, 1), null, context) if drop is not None else context
        if self.controlnet is not None:
            if mask_input is None:
                raise ValueError("ControlNet training needs mask_input")
            control = encode_control(self.controlnet, mask_input, extra.get("class_labels"))
            down, mid = controlnet_residuals(self.controlnet, x_t, timesteps, control, context=ctx)
            extra["down_block_additional_residuals"] = down
            extra["mid_block_additional_residual"] = mid
        pred = self.unet(x_t, timesteps, context=ctx, **extra).float()
        if self.loss == "l1":
            return F.l1_loss(pred, target)
        return F.mse_loss(pred, target)


# ------------------------------------------------------------------------------------------------ assembly


def _corpus_key(cases: Sequence[TrainingCase]) -> list[str]:
    return [c.case_id for c in cases]


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise InvalidInputError(f"--out {run_dir} exists and is not a folder")


def _prepare_device(cfg: TrainConfig) -> tuple[DistInfo, torch.device]:
    return setup_distributed(cfg.device)


def train_vae(
    corpus: Corpus | Sequence[Case] | None,
    config: GeneratorConfig,
    run_dir: str | os.PathLike[str],
    *,
    cases: list[TrainingCase] | None = None,
    progress: bool = False,
    resume: bool = True,
    stop_after: int | None = None,
    prepare_batch: PrepareBatch | None = None,
) -> TrainResult:
    """Train the VAE on random crops of the training CTs; writes ``run_dir/vae``."""
    cfg = config.train_vae
    run = Path(run_dir)
    _check_run_dir(run)
    dist, device = _prepare_device(cfg)
    if cases is None:
        if corpus is None:
            raise InvalidInputError("train_vae needs a corpus or preloaded cases")
        cases = load_training_cases(
            corpus, config.vae.image, splits=cfg.splits, min_shape=cfg.crop_shape, held_out=config.held_out
        )
    config.held_out.check_case_ids([c.case_id for c in cases], "the VAE")
    crops = CropSampler(cases, cfg.crop_shape, cfg.flip_prob)
    with seeded_init(cfg.seed):
        vae = build_vae(config.vae).to(device)
    if cfg.channels_last:
        vae = to_channels_last(vae)
    objective = VAEObjective(vae, cfg.kl_weight, cfg.edge_weight, _unit(cfg.edge_hu, config))
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    latent_spatial = tuple(s // config.vae.downsample for s in cfg.crop_shape)

    def make_batch(step: int, gen: torch.Generator) -> Mapping[str, Any]:
        return crops.sample(cfg.batch_size, gen)

    def default_prepare(batch: Mapping[str, Any], dev: torch.device, gen: torch.Generator) -> dict[str, Any]:
        image = batch["image"]
        eps = torch.randn((image.shape[0], config.vae.latent_channels, *latent_spatial), generator=gen)
        return {
            "image": image.to(dev, memory_format=memory_format),
            "eps": eps.to(dev, memory_format=memory_format),
        }

    out = run / VAE_DIR
    loop = TrainLoop(
        objective,
        cfg,
        out,
        make_batch,
        prepare_batch or default_prepare,
        device=device,
        dist=dist,
        progress=progress,
        run_key={"vae": config_to_dict(config.vae), "cases": _corpus_key(cases)},
    )
    result = loop.run(resume=resume, stop_after=stop_after)
    result.info["flip"] = flip_record(cfg, None, False)
    if dist.is_main and result.steps == cfg.total_steps:
        _publish(loop, vae, objective, "vae", config_to_dict(config.vae), out, {"train": config_to_dict(cfg)})
        update_pipeline_index(run, config)
    _write_log(out, result, dist)
    return result


def _unit(hu: float, config: GeneratorConfig) -> float:
    img = config.vae.image
    return (hu - img.hu_min) / (img.hu_max - img.hu_min)


def _publish(
    loop: TrainLoop,
    model: nn.Module,
    objective: nn.Module,
    component: str,
    model_config: dict[str, Any],
    out: Path,
    meta: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save the final (EMA) weights of ``model`` (a submodule of ``objective``) as a component folder."""
    final = loop.final_params()
    with torch.no_grad():
        backup = {k: v.detach().clone() for k, v in loop.params.items()}
        for k, v in final.items():
            loop.params[k].copy_(v)
        try:
            tensors = dict(extra_tensors or {})
            if "null_embedding" in final:
                tensors["null_embedding"] = final["null_embedding"].detach().cpu()
            save_component(out, component, model, model_config, meta, tensors or None)
        finally:
            for k, v in backup.items():
                loop.params[k].copy_(v)


def flip_record(cfg: TrainConfig, label_set: str | None, text_conditioned: bool) -> dict[str, Any]:
    """What left-right flipping did to a run, for its log: a mirrored CT has heart and aorta on the wrong side
    and its left/right labels swapped, while the report text keeps its laterality words."""
    if cfg.flip_prob <= 0:
        return {"prob": 0.0}
    note = "left-right flips mirror the CT (heart and aorta change sides)"
    if label_set is not None:
        note += f" and swap the left/right labels of the {label_set!r} masks"
    if text_conditioned:
        note += "; laterality words in the report text (left/right) no longer match the flipped samples"
    logger.warning("flip_prob %.2f: %s", cfg.flip_prob, note)
    return {"prob": cfg.flip_prob, "labels_swapped": label_set, "note": note}


def _write_log(out: Path, result: TrainResult, dist: DistInfo) -> None:
    if not dist.is_main:
        return
    payload = {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "seconds_this_run": round(result.seconds, 3),
        "losses": result.losses,
        **result.info,
    }
    atomic_write_text(out / LOG_FILE, json.dumps(payload, indent=1) + "\n")


# --- latent banks (shared by UNet and ControlNet training) ------------------------------------------------


def _bank(
    run: Path,
    vae: nn.Module,
    vae_dir: Path,
    cases: list[TrainingCase],
    cfg: TrainConfig,
    n: int,
    label_key: Mapping[str, Any],
    device: torch.device,
    progress: bool,
) -> LatentBank:
    """Encode (or reuse from ``run/cache``) a bank of latent crops with their label crops."""
    key = sha256_json(
        {
            "vae": component_hash(vae_dir),
            "crop": list(cfg.crop_shape),
            "n": n,
            "seed": cfg.seed,
            "flip": cfg.flip_prob,
            "cases": _corpus_key(cases),
            **label_key,
        }
    )[:16]
    cache = run / "cache" / f"latent_bank_{key}.pt"
    if cache.is_file():
        data = load_checkpoint_file(cache)
        logger.info("latent bank: reusing %s", cache)
        return LatentBank(data["latents"], data["case_index"], data.get("labels"))
    crops = CropSampler(cases, cfg.crop_shape, cfg.flip_prob, label_set=label_key.get("label_set"))
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="encode latent bank", disable=not progress, leave=False)
    bank = build_latent_bank(vae, crops, n, cfg.seed, device=device, progress=lambda d, t: bar.update(d - bar.n))
    bar.close()
    payload: dict[str, Any] = {"latents": bank.latents, "case_index": bank.case_index}
    if bank.labels is not None:
        payload["labels"] = bank.labels
    save_state_dict(payload, cache)
    return bank


def _contexts(cases: list[TrainingCase], dim: int | None) -> torch.Tensor | None:
    """(n_cases, 1, D) text embeddings; cases without text get zeros and are always trained as 'dropped'."""
    if dim is None:
        return None
    out = torch.zeros(len(cases), 1, dim)
    for i, c in enumerate(cases):
        if c.context is not None:
            if c.context.shape[-1] != dim:
                raise ConfigError(
                    f"text embedding size {c.context.shape[-1]} differs from diffusion.cross_attention_dim {dim}"
                )
            out[i, 0] = torch.from_numpy(c.context)
    return out


def _flow_prepare(
    config: GeneratorConfig,
    cfg: Any,
    bank: LatentBank,
    contexts: torch.Tensor | None,
    has_text: torch.Tensor,
    sampler: RectifiedFlowSampler,
    scale_factor: float,
    with_mask: bool,
    memory_format: torch.memory_format,
) -> tuple[MakeBatch, PrepareBatch]:
    n_labels = num_labels(config.controlnet.label_set)
    cn = config.controlnet

    def make_batch(step: int, gen: torch.Generator) -> Mapping[str, Any]:
        idx = torch.randint(0, len(bank), (cfg.batch_size,), generator=gen)
        batch: dict[str, Any] = {"latents": bank.latents[idx], "case_index": bank.case_index[idx]}
        if with_mask:
            if bank.labels is None:
                raise InvalidInputError("ControlNet training needs label maps for the training crops")
            batch["labels"] = bank.labels[idx]
        return batch

    def prepare(batch: Mapping[str, Any], dev: torch.device, gen: torch.Generator) -> dict[str, Any]:
        x0 = batch["latents"] * scale_factor
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen)
        t = sampler.sample_timesteps(b, gen, latent_shape=tuple(x0.shape))
        x_t = sampler.add_noise(x0, noise, t)
        out: dict[str, Any] = {
            "x_t": x_t.to(dev, memory_format=memory_format),
            "timesteps": t.to(dev),
            "target": sampler.velocity_target(x0, noise).to(dev, memory_format=memory_format),
            "unet_extra": extra_unet_inputs(config.diffusion, b, config.vae.image.spacing, dev),
        }
        if contexts is not None:
            ci = batch["case_index"]
            drop = (torch.rand(b, generator=gen) < cfg.text_dropout) | ~has_text[ci]
            out["context"] = contexts[ci].to(dev)
            out["drop"] = drop.to(dev)
        if with_mask:
            mask_input = encode_mask(
                batch["labels"], n_labels, cn.mask_encoding, pool=cn.mask_pool, bits=cn.binary_bits
            )
            out["mask_input"] = mask_input.to(dev, memory_format=memory_format)
        return out

    return make_batch, prepare


def _load_flow_cases(
    corpus: Corpus | Sequence[Case] | None,
    config: GeneratorConfig,
    cfg: Any,
    encoder: Any | None,
    mask_from: str,
    segment_config: Any | None,
) -> list[TrainingCase]:
    if corpus is None:
        raise InvalidInputError("training needs a corpus or preloaded cases")
    return load_training_cases(
        corpus,
        config.vae.image,
        splits=cfg.splits,
        min_shape=cfg.crop_shape,
        label_set=config.controlnet.label_set,
        mask_from=mask_from,  # type: ignore[arg-type]
        encoder=encoder if config.diffusion.with_conditioning else None,
        segment_config=segment_config,
        held_out=config.held_out,
    )


def _flow_data(
    run: Path,
    vae: nn.Module,
    cases: list[TrainingCase],
    config: GeneratorConfig,
    cfg: TrainDiffusionConfig,
    mask_from: str,
    device: torch.device,
    progress: bool,
) -> tuple[LatentBank, int | None, torch.Tensor | None, torch.Tensor]:
    """What both latent-flow trainings sample from: the latent crop bank of the frozen VAE, the text-embedding
    width (None without conditioning), per-case text contexts and which cases have text."""
    label_key = {"label_set": config.controlnet.label_set, "mask_from": mask_from}
    bank = _bank(run, vae, run / VAE_DIR, cases, cfg, cfg.bank_crops, label_key, device, progress)
    dim = config.diffusion.cross_attention_dim if config.diffusion.with_conditioning else None
    has_text = torch.tensor([c.context is not None for c in cases])
    return bank, dim, _contexts(cases, dim), has_text


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
    progress: bool = False,
    resume: bool = True,
    stop_after: int | None = None,
    prepare_batch: PrepareBatch | None = None,
) -> TrainResult:
    """Train the text-conditioned UNet on latent crops from the frozen VAE in ``run_dir/vae``."""
    cfg = config.train_diffusion
    run = Path(run_dir)
    dist, device = _prepare_device(cfg)
    vae, _ = load_vae_component(run / VAE_DIR, config, device)
    if cases is None:
        cases = _load_flow_cases(corpus, config, cfg, encoder, mask_from, segment_config)
    config.held_out.check_case_ids([c.case_id for c in cases], "the diffusion UNet")
    show = progress and dist.is_main
    bank, dim, contexts, has_text = _flow_data(run, vae, cases, config, cfg, mask_from, device, show)
    scale_factor = float(1.0 / bank.latents.std().clamp_min(1e-6))
    logger.info("latent scale factor %.4f (1 / std of %d latent crops)", scale_factor, len(bank))
    with seeded_init(cfg.seed):
        unet = build_unet(config.diffusion).to(device)
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        unet = to_channels_last(unet)
    null = torch.zeros(1, 1, dim or 1)
    objective = FlowObjective(unet, null, config.diffusion.null_embedding == "learned", cfg.loss).to(device)
    sampler = RectifiedFlowSampler.from_config(config.sampler.scheduler)
    make_batch, default_prepare = _flow_prepare(
        config, cfg, bank, contexts, has_text, sampler, scale_factor, False, memory_format
    )
    out = run / UNET_DIR
    loop = TrainLoop(
        objective,
        cfg,
        out,
        make_batch,
        prepare_batch or default_prepare,
        device=device,
        dist=dist,
        progress=progress,
        run_key={
            "diffusion": config_to_dict(config.diffusion),
            "scheduler": config_to_dict(config.sampler.scheduler),
            "vae": component_hash(run / VAE_DIR),
            "cases": _corpus_key(cases),
        },
    )
    result = loop.run(resume=resume, stop_after=stop_after)
    result.info["scale_factor"] = scale_factor
    result.info["flip"] = flip_record(cfg, None, dim is not None)
    result.info["text_cases"] = [c.case_id for c in cases if c.context is not None]
    if dist.is_main and result.steps == cfg.total_steps:
        meta = unet_meta(scale_factor, config, cfg, text_cases=result.info["text_cases"])
        _publish(loop, unet, objective, "unet", config_to_dict(config.diffusion), out, meta)
        sampler.save_config(run / "sampler")
        record = encoder_record(encoder, encoder_spec) if encoder is not None else None
        update_pipeline_index(run, config, encoder=record)
    _write_log(out, result, dist)
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
    progress: bool = False,
    resume: bool = True,
    stop_after: int | None = None,
    prepare_batch: PrepareBatch | None = None,
) -> TrainResult:
    """Train the ControlNet on (CT, mask) crops; VAE and UNet (from ``run_dir``) stay frozen."""
    cfg = config.train_controlnet
    run = Path(run_dir)
    dist, device = _prepare_device(cfg)
    vae, _ = load_vae_component(run / VAE_DIR, config, device)
    unet, null, scale_factor, _ = load_unet_component(run / UNET_DIR, config, device)
    for p in unet.parameters():
        p.requires_grad_(False)
    unet.eval()
    _check_same_encoder(run, encoder)
    if cases is None:
        cases = _load_flow_cases(corpus, config, cfg, encoder, mask_from, segment_config)
    config.held_out.check_case_ids([c.case_id for c in cases], "the ControlNet")
    if any(c.labels is None for c in cases):
        raise InvalidInputError("ControlNet training needs a label map for every training case")
    show = progress and dist.is_main
    bank, _, contexts, has_text = _flow_data(run, vae, cases, config, cfg, mask_from, device, show)
    del vae
    with seeded_init(cfg.seed):
        controlnet = controlnet_from_unet(
            unet, config.diffusion, config.controlnet, num_labels(config.controlnet.label_set)
        )
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    controlnet = controlnet.to(device)
    if cfg.channels_last:
        controlnet, unet = to_channels_last(controlnet), to_channels_last(unet)
    objective = FlowObjective(unet, null, False, cfg.loss, controlnet=controlnet).to(device)
    sampler = RectifiedFlowSampler.from_config(config.sampler.scheduler)
    make_batch, default_prepare = _flow_prepare(
        config, cfg, bank, contexts, has_text, sampler, scale_factor, True, memory_format
    )
    out = run / CONTROLNET_DIR
    loop = TrainLoop(
        objective,
        cfg,
        out,
        make_batch,
        prepare_batch or default_prepare,
        device=device,
        dist=dist,
        progress=progress,
        run_key={
            "controlnet": config_to_dict(config.controlnet),
            "unet": component_hash(run / UNET_DIR),
            "vae": component_hash(run / VAE_DIR),
            "cases": _corpus_key(cases),
            "mask_from": mask_from,
        },
    )
    result = loop.run(resume=resume, stop_after=stop_after)
    result.info["mask_origins"] = {c.case_id: c.mask_origin for c in cases}
    result.info["flip"] = flip_record(cfg, config.controlnet.label_set, config.diffusion.with_conditioning)
    if dist.is_main and result.steps == cfg.total_steps:
        meta = {
            "label_set": config.controlnet.label_set,
            "num_labels": num_labels(config.controlnet.label_set),
            "unet": config_to_dict(config.diffusion),
            "mask_from": mask_from,
            "train": config_to_dict(cfg),
        }
        _publish(loop, controlnet, objective, "controlnet", config_to_dict(config.controlnet), out, meta)
        update_pipeline_index(run, config)
    _write_log(out, result, dist)
    return result


def _check_same_encoder(run: Path, encoder: Any | None) -> None:
    """The ControlNet must see the embeddings the frozen UNet was trained with."""
    recorded = (read_pipeline_index(run).get("encoder") or {}).get("fingerprint")
    given = getattr(encoder, "fingerprint", None)
    if recorded and given and recorded != given:
        raise CheckpointMismatchError(
            f"the UNet in {run} was trained with text encoder {recorded}, but {given} was given"
        )
