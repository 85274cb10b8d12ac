"""The training engine: one resumable, DDP-ready loop for every generator component (MONAI engines' shape).

``TrainLoop`` receives an *objective* module (network + loss, whose ``forward`` returns the loss), a
``make_batch(step, generator)`` data source and a ``prepare_batch(batch, device, generator)`` callable that turns
a raw batch into the objective's tensors; it knows nothing of VAEs or UNets (``recipes.py`` assembles those).

Resumability: all randomness of step ``k`` comes from generators seeded with (seed, k, rank)
(``step_generator``), and the checkpoint (``train_state.pt``, written atomically every ``save_every`` steps)
holds the trainable weights, the optimiser and EMA state and the loss history. A run stopped after ``k`` steps
and resumed therefore produces the same losses as an uninterrupted run.

Multi-GPU: launched with ``torchrun`` or ``accelerate launch`` (which set ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``), the loop initialises a process group, wraps the objective in DDP (only trainable parameters are
synchronised), draws a different batch per rank, and writes checkpoints from rank 0 only.

Progress goes through ``ctrag.utils.progress.ProgressFn``: ``progress("train <component>", step, total)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag.config import config_to_dict
from ctrag.errors import CheckpointMismatchError, ConfigError
from ctrag.generation.config import TrainConfig
from ctrag.generation.run_folder import save_component, save_state_dict
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file
from ctrag.utils.hashing import sha256_json
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"

PrepareBatch = Callable[[Mapping[str, Any], torch.device, torch.Generator], dict[str, Any]]
MakeBatch = Callable[[int, torch.Generator], Mapping[str, Any]]


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, step, rank, stream), never on what ran before."""
    gen = torch.Generator()
    gen.manual_seed(
        (int(seed) * 1_000_003 + int(step) * 9_176 + int(rank) * 104_729 + int(stream) * 7_919) % (2**63 - 1)
    )
    return gen


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
        progress: ProgressFn | None = None,
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
        t0 = time.perf_counter()
        resumed = self.load_state() if resume else 0
        start = self.step
        if resumed:
            logger.info("resuming %s at step %d", self.out_dir, start)
        end = self.cfg.total_steps if stop_after is None else min(self.cfg.total_steps, start + stop_after)
        self.objective.train()
        report = self.progress if self.dist.is_main else None
        stage = f"train {self.out_dir.name}"
        if report is not None:
            report(stage, start, self.cfg.total_steps)
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
            if report is not None:
                report(stage, self.step, self.cfg.total_steps)
            if self.step % max(1, self.cfg.log_every) == 0:
                recent = self.losses[-self.cfg.log_every :]
                logger.info("%s step %d: loss %.4f", stage, self.step, sum(recent) / len(recent))
            if self.step % self.cfg.save_every == 0 or self.step == end:
                self.save_state()
        seconds = time.perf_counter() - t0
        info = {"world_size": self.dist.world_size, "device": str(self.device)}
        return TrainResult(self.out_dir, self.step, list(self.losses), seconds, start, info)


def publish(
    loop: TrainLoop,
    model: nn.Module,
    component: str,
    model_config: dict[str, Any],
    out: Path,
    meta: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save the final (EMA) weights of ``model`` (a submodule of the loop's objective) as a component folder."""
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


def write_log(out: Path, result: TrainResult, dist: DistInfo) -> None:
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
