"""The training engine: one resumable, DDP-ready loop for every generator component (MONAI engines' shape).

``TrainLoop`` receives an *objective* module (network + loss, whose ``forward`` returns the loss), a
``make_batch(step, generator)`` data source and a ``prepare_batch(batch, device, generator)`` callable that turns
a raw batch into the objective's tensors; it knows nothing of VAEs or UNets (``recipes.py`` assembles those).

Batches that do not depend on the number of processes: ``cfg.batch_size`` is the *global* batch of a step.
Sample ``i`` of step ``k`` draws all of its randomness (which crop, noise, timestep, text dropout) from its own
generator, seeded by (seed, k, i) only (``sample_generator``); process ``r`` of ``W`` takes the contiguous slice
``[r B/W, (r+1) B/W)`` and, with ``grad_accum_steps = A``, splits it into ``A`` micro-batches. ``make_batch``
and ``prepare_batch`` therefore receive one generator per sample of their micro-batch. Every micro-loss is a mean
over equally many samples, so (1/A) x the sum of micro-gradients, averaged over processes by DDP, is the gradient
of the global batch mean that one process would compute, and the logged loss is that global mean. A run started
on one process and resumed on two follows the same curve (up to float rounding of the reordered sums).

Resumability: the checkpoint (``train_state.pt``, written atomically every ``save_every`` steps) holds the
trainable weights, the optimiser and EMA state, the loss history and the world sizes it ran on. Its key covers
what changes the result (training config, data, frozen weights), not how a step is executed (world size,
``grad_accum_steps``, ``grad_checkpointing``, threads, logging), so a run may resume on another number of GPUs.

Multi-GPU is ``torchrun``-style DDP: ``torchrun --nproc-per-node N -m ctrag.cli train ...`` (or ``accelerate
launch``, which sets the same ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables;
ctrag uses none of accelerate's own API) makes every process join one group (NCCL on GPUs, gloo on CPU); the
objective is wrapped in DDP (only trainable parameters are synchronised, ``no_sync`` on the non-final
micro-batches), and rank 0 alone writes checkpoints and logs.

Run log: ``train_log.jsonl`` gets one line every ``log_every`` steps (step, mean loss, lr, samples/s,
seconds/step, peak GPU memory on CUDA or peak RSS on CPU, world size), line-buffered appends; a resumed run
first drops the lines beyond the step it resumes from. ``train_curve.png`` (loss and lr against step) is drawn
when a run call ends, and ``train_log.json`` keeps the whole loss curve and the world-size history.

Progress goes through ``ctrag.utils.progress.ProgressFn``: ``progress("train <component>", step, total)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag.config import config_to_dict
from ctrag.errors import CheckpointMismatchError, ConfigError
from ctrag.generation.config import TrainConfig
from ctrag.generation.run_folder import save_component, save_state_dict
from ctrag.utils.atomic import atomic_path, atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file
from ctrag.utils.hashing import sha256_json
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"
RUN_LOG_FILE = "train_log.jsonl"
CURVE_FILE = "train_curve.png"

Generators = Sequence[torch.Generator]
"""One generator per sample of a micro-batch (``sample_generator(seed, step, i)`` for its global indices i)."""
PrepareBatch = Callable[[Mapping[str, Any], torch.device, Generators], dict[str, Any]]
MakeBatch = Callable[[int, Generators], Mapping[str, Any]]

EXECUTION_FIELDS = ("grad_accum_steps", "grad_checkpointing", "num_threads", "log_every")
"""TrainConfig fields that change how a step is computed, not what: left out of the checkpoint key."""


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, step, rank, stream), never on what ran before."""
    gen = torch.Generator()
    gen.manual_seed(
        (int(seed) * 1_000_003 + int(step) * 9_176 + int(rank) * 104_729 + int(stream) * 7_919) % (2**63 - 1)
    )
    return gen


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator of sample ``index`` of the global batch of ``step``: the same on any number of processes.

    A hash rather than a linear mix of the three numbers, so no (step, index) pair shares another's stream."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(step)}:{int(index)}".encode(), digest_size=8).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest, "little") % (2**63 - 1))
    return gen


def micro_batch_indices(batch_size: int, world_size: int, rank: int, accum_steps: int, micro: int) -> range:
    """Global sample indices of micro-batch ``micro`` on ``rank``: contiguous slices of the global batch."""
    check_batch_split(batch_size, world_size, accum_steps)
    per_rank = batch_size // world_size
    size = per_rank // accum_steps
    start = rank * per_rank + micro * size
    return range(start, start + size)


def check_batch_split(batch_size: int, world_size: int, accum_steps: int) -> None:
    if accum_steps < 1 or batch_size % (world_size * accum_steps):
        raise ConfigError(
            f"batch_size {batch_size} is the global batch of a step and must be divisible by world_size "
            f"{world_size} x grad_accum_steps {accum_steps} = {world_size * accum_steps}; change batch_size, "
            "grad_accum_steps or the number of processes"
        )


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


def all_mean(value: torch.Tensor, dist: DistInfo) -> float:
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


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """Peak memory in MiB so far: CUDA allocations on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # not on Unix
        return None, "rss"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss"  # KiB on Linux


def truncate_run_log(path: Path, step: int) -> None:
    """Keep the lines of ``path`` up to ``step`` (those a resumed run will not write again); a torn last line
    from a killed run is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", step + 1)) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def read_run_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_curve_plot(path: Path, losses: Sequence[float], lrs: Sequence[float], title: str) -> None:
    """Loss (log scale when positive) and learning rate against step, drawn with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = list(range(1, len(losses) + 1))
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ax_loss.plot(steps, losses, lw=1.0)
    if losses and min(losses) > 0:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (global batch mean)")
    ax_loss.set_title(title)
    ax_lr.plot(steps, lrs, lw=1.0, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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

    ``objective(**prepared)`` must return a scalar loss, the mean over its micro-batch's samples (every micro-batch
    has as many samples, so the mean of micro-losses is the global batch mean). ``state_module`` is the module
    whose trainable parameters are checkpointed (the objective itself by default).
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
        check_batch_split(cfg.batch_size, dist.world_size, cfg.grad_accum_steps)
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
        self.world_sizes: list[list[int]] = []
        """[first step, world size] per stretch of the run on one number of processes."""
        self.step = 0
        runner: nn.Module = objective
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if dist.world_size > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None
            )
            runner = self.ddp
        if cfg.compile:
            runner = torch.compile(runner)  # type: ignore[assignment]
        self.runner = runner

    # --- state ----------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    @property
    def run_log_path(self) -> Path:
        return self.out_dir / RUN_LOG_FILE

    def _key(self) -> str:
        train = {k: v for k, v in config_to_dict(self.cfg).items() if k not in EXECUTION_FIELDS}
        return sha256_json({"train": train, **self.run_key})

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
            "world_sizes": torch.tensor(self.world_sizes, dtype=torch.int64).reshape(-1, 2),
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
        sizes = state.get("world_sizes")
        self.world_sizes = [] if sizes is None else [[int(a), int(b)] for a, b in sizes.tolist()]
        return True

    def final_params(self) -> dict[str, torch.Tensor]:
        """Trainable weights to publish: the EMA copy when enabled, else the live ones."""
        return self.ema.state_dict() if self.ema is not None else {k: v.detach() for k, v in self.params.items()}

    # --- one step -------------------------------------------------------------------------------------------
    def _micro_batches(self, step: int) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches of ``step``, each drawn from its samples' own generators."""
        cfg, dist = self.cfg, self.dist
        for micro in range(cfg.grad_accum_steps):
            index = micro_batch_indices(cfg.batch_size, dist.world_size, dist.rank, cfg.grad_accum_steps, micro)
            gens = [sample_generator(cfg.seed, step, i) for i in index]
            yield self.prepare_batch(self.make_batch(step, gens), self.device, gens)

    def _train_step(self, step: int) -> float:
        """Forward/backward over the micro-batches (gradients synchronised on the last one only), one update;
        returns the global batch mean loss."""
        accum = self.cfg.grad_accum_steps
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro, batch in enumerate(self._micro_batches(step)):
            sync = self.ddp is None or micro == accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():  # type: ignore[union-attr]
                with autocast_context(self.device, self.cfg.precision):
                    loss = self.runner(**batch)
                scaled = loss / accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            total += loss.detach().double()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.params)
        return all_mean(total / accum, self.dist)

    # --- loop -----------------------------------------------------------------------------------------------
    def run(self, *, resume: bool = True, stop_after: int | None = None) -> TrainResult:
        """Train until ``total_steps`` (or ``stop_after`` steps in this call, to simulate an interruption)."""
        t0 = time.perf_counter()
        resumed = self.load_state() if resume else False
        start = self.step
        if resumed:
            logger.info("resuming %s at step %d on %d process(es)", self.out_dir, start, self.dist.world_size)
        if not self.world_sizes or self.world_sizes[-1][1] != self.dist.world_size:
            self.world_sizes.append([start, self.dist.world_size])
        end = self.cfg.total_steps if stop_after is None else min(self.cfg.total_steps, start + stop_after)
        self.objective.train()
        report = self.progress if self.dist.is_main else None
        stage = f"train {self.out_dir.name}"
        if report is not None:
            report(stage, start, self.cfg.total_steps)
        run_log = self._open_run_log(start if resumed else 0)
        try:
            window_t, window_step = time.perf_counter(), start
            while self.step < end:
                step = self.step
                value = self._train_step(step)
                if not math.isfinite(value):
                    raise FloatingPointError(f"training diverged at step {step}: loss {value}")
                self.losses.append(value)
                self.step += 1
                if report is not None:
                    report(stage, self.step, self.cfg.total_steps)
                if self.step % max(1, self.cfg.log_every) == 0 or self.step == self.cfg.total_steps:
                    now = time.perf_counter()
                    record = self._log_record(now - window_t, self.step - window_step)
                    window_t, window_step = now, self.step
                    logger.info("%s step %d: loss %.4f", stage, self.step, record["loss"])
                    if run_log is not None:
                        run_log.write(json.dumps(record) + "\n")
                if self.step % self.cfg.save_every == 0 or self.step == end:
                    self.save_state()
        finally:
            if run_log is not None:
                run_log.close()
        if self.dist.is_main and self.losses:
            lrs = [lr_at(s, self.cfg) for s in range(len(self.losses))]
            write_curve_plot(self.out_dir / CURVE_FILE, self.losses, lrs, stage)
        seconds = time.perf_counter() - t0
        info = {
            "world_size": self.dist.world_size,
            "world_sizes": [{"from_step": a, "world_size": b} for a, b in self.world_sizes],
            "grad_accum_steps": self.cfg.grad_accum_steps,
            "grad_checkpointing": self.cfg.grad_checkpointing,
            "device": str(self.device),
        }
        return TrainResult(self.out_dir, self.step, list(self.losses), seconds, start, info)

    def _open_run_log(self, keep_until: int) -> Any:
        """The JSONL run log, opened for line-buffered appends after dropping lines past ``keep_until``."""
        if not self.dist.is_main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        truncate_run_log(self.run_log_path, keep_until)
        return open(self.run_log_path, "a", buffering=1, encoding="utf-8")

    def _log_record(self, seconds: float, steps: int) -> dict[str, Any]:
        recent = self.losses[-max(1, self.cfg.log_every) :]
        per_step = seconds / max(1, steps)
        memory, kind = peak_memory(self.device)
        return {
            "step": self.step,
            "loss": sum(recent) / len(recent),
            "lr": lr_at(self.step - 1, self.cfg),
            "samples_per_s": self.cfg.batch_size / per_step if per_step > 0 else None,
            "seconds_per_step": per_step,
            "peak_memory_mib": None if memory is None else round(memory, 1),
            "memory": kind,
            "world_size": self.dist.world_size,
        }


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
