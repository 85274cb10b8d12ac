"""How a report method's training executes: device, precision, LoRA, gradient checkpointing, processes.

Why one place: Reg2RG, AdaRAG-CT and DiffVP differ in the examples they build, not in how a step runs. At paper
scale all three fine-tune a LLaMA-class LM (7B in the papers) that only fits with a frozen bf16 base, LoRA adapters,
gradient checkpointing and several GPUs; at the CPU default the tiny decoder trains in full in fp32. This module
holds those choices (:class:`LMRuntime`, the ``runtime`` section of each recipe's config) and the step
(:class:`StepRunner`), so a recipe only says which examples a step sees.

* ``precision: bf16`` runs the forward under ``torch.autocast(bfloat16)``; with LoRA the frozen base is also
  *stored* in bf16 (half the memory). Trained weights (adapters, heads, a fully fine-tuned LM) stay fp32, so
  AdamW never updates bf16 weights.
* ``lora: auto`` trains LoRA adapters (``peft``) on a frozen base when a base LM folder is given and ``peft`` is
  installed, else fine-tunes in full; ``on`` requires it; ``off`` never uses it. The tiny default decoder is
  always trained in full (it starts from random weights).
* Multi-GPU uses the launcher of generation training: ``torchrun --nproc-per-node N -m ctrag.cli train reporter
  ...`` (or ``accelerate launch``). Every process draws the same global batch from the same seeded generator, so
  the recipes' random streams never diverge; process ``r`` of ``W`` scores its contiguous ``B/W`` slice, and DDP
  (``find_unused_parameters``: a step need not touch every region head) averages the gradients. The update is
  that of the mean of the processes' slice losses (each a mean over its slice's target tokens, the usual DDP
  convention), which equals the one-process loss when the slices hold equally many target tokens. Rank 0 alone
  reports progress and writes the model. A one-process run draws and scores exactly as before this module
  existed.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from ctrag.errors import ConfigError, MissingDependencyError
from ctrag.generation.training.engine import DistInfo, all_mean, autocast_context, peak_memory, setup_distributed
from ctrag.reporting.lm import (
    LoRASettings,
    ReportLM,
    TinyDecoderConfig,
    enable_checkpointing,
    load_causal_lm,
    tiny_report_lm,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
LoRAMode = Literal["auto", "on", "off"]
LMPrecision = Literal["fp32", "bf16"]


@dataclass
class LMRuntime:
    """``device``: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun each process takes ``cuda:LOCAL_RANK``);
    ``precision``: ``fp32`` or ``bf16`` autocast; ``lora``: ``auto``/``on``/``off`` for a given base LM;
    ``gradient_checkpointing``: recompute the LM's activations in backward (less memory, ~30 % more time);
    ``grad_clip``: max gradient norm (0 turns clipping off)."""

    device: str = "cpu"
    precision: LMPrecision = "fp32"
    lora: LoRAMode = "auto"
    gradient_checkpointing: bool = False
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"runtime.precision {self.precision!r}: use fp32 or bf16")
        if self.lora not in ("auto", "on", "off"):
            raise ConfigError(f"runtime.lora {self.lora!r}: use auto, on or off")
        if self.grad_clip < 0:
            raise ConfigError("runtime.grad_clip must be >= 0")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"runtime.device {self.device!r}: use cpu, cuda or cuda:N")


def _peft_installed() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def training_lm(
    base_lm: str | None,
    runtime: LMRuntime,
    texts: Sequence[str],
    tiny: TinyDecoderConfig,
    *,
    trainable_tokens: Sequence[str] = (),
) -> tuple[ReportLM, str]:
    """The LM a recipe trains, on the runtime's device, and a line saying how it is fine-tuned.

    ``texts`` (train reports) train the tiny default decoder's tokenizer when no ``base_lm`` is given.
    ``trainable_tokens`` are added to the vocabulary (AdaRAG-CT's ``[RAG]``); under LoRA their embedding rows are
    trained too (peft's ``trainable_token_indices``), the rest of the embedding matrix stays frozen.
    """
    device = setup_distributed(runtime.device)[1]  # under torchrun: this process's GPU, not cuda:0
    if not base_lm:
        if runtime.lora == "on":
            raise ConfigError("runtime.lora=on needs a base LM folder (--lm); the tiny default decoder trains in full")
        lm = tiny_report_lm(texts, tiny)
        if trainable_tokens:
            lm.add_special_tokens(trainable_tokens)
        if runtime.gradient_checkpointing:
            enable_checkpointing(lm.model)
        return lm.to(device), "full (tiny default decoder trained here)"
    use_lora = runtime.lora == "on" or (runtime.lora == "auto" and _peft_installed())
    if runtime.lora == "on" and not _peft_installed():
        raise MissingDependencyError("runtime.lora=on needs the 'peft' package (pip install peft)")
    # A frozen base may be stored in bf16; weights AdamW updates stay fp32.
    dtype = torch.bfloat16 if (use_lora and runtime.precision == "bf16") else torch.float32
    lm = load_causal_lm(base_lm, device=str(device), dtype=dtype, gradient_checkpointing=runtime.gradient_checkpointing)
    ids = lm.add_special_tokens(trainable_tokens) if trainable_tokens else []
    if not use_lora:
        why = "runtime.lora=off" if runtime.lora == "off" else "peft not installed"
        return lm, f"full ({why})"
    from ctrag.reporting.lm import with_lora

    return with_lora(lm, LoRASettings(trainable_token_indices=tuple(ids))), "LoRA on a frozen base"


class _Objective(nn.Module):
    """Lets DDP see a recipe's loss: ``forward(fn)`` runs the closure that calls the model's own loss method."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        return loss_fn()


class StepRunner:
    """AdamW over ``model``'s trainable parameters, one step per call, on one process or under torchrun DDP."""

    def __init__(self, model: nn.Module, runtime: LMRuntime, *, lr: float, weight_decay: float = 0.01) -> None:
        self.runtime = runtime
        self.dist, self.device = setup_distributed(runtime.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model = model.to(self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("nothing to train: the report model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.step_seconds: list[float] = []
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if self.dist.world_size > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                _Objective(model),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def shard(self, batch: Sequence[T]) -> list[T]:
        """This process's contiguous slice of a global batch (all of it on one process)."""
        world, rank = self.dist.world_size, self.dist.rank
        if len(batch) % world:
            raise ConfigError(
                f"a step's batch of {len(batch)} example(s) does not split over {world} processes; choose a "
                f"batch size divisible by {world}"
            )
        size = len(batch) // world
        return list(batch[rank * size : (rank + 1) * size])

    def step(self, loss_fn: Callable[[], torch.Tensor]) -> float:
        """One update from ``loss_fn()`` (this process's slice mean); returns the mean over processes."""
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.runtime.precision):
            loss = self.ddp(loss_fn) if self.ddp is not None else loss_fn()
        loss.float().backward()
        if self.runtime.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.runtime.grad_clip)
        self.optimizer.step()
        value = all_mean(loss.detach().float(), self.dist)  # reading the value waits for the device
        self.step_seconds.append(time.perf_counter() - started)
        return value

    def info(self) -> dict[str, Any]:
        """Execution facts for the training summary (not part of what the model learns)."""
        memory, kind = peak_memory(self.device)
        return {
            "device": str(self.device),
            "precision": self.runtime.precision,
            "gradient_checkpointing": self.runtime.gradient_checkpointing,
            "world_size": self.dist.world_size,
            "trainable_parameters": sum(p.numel() for p in self.params),
            "steps": len(self.step_seconds),
            # The first step pays for allocation and kernel selection; the median of the rest is the step cost.
            "seconds_first_step": round(self.step_seconds[0], 4) if self.step_seconds else None,
            "seconds_per_step_median": (
                round(statistics.median(self.step_seconds[1:]), 4) if len(self.step_seconds) > 1 else None
            ),
            "peak_memory_mib": None if memory is None else round(memory, 1),
            "peak_memory_kind": kind,
        }


__all__ = ["DistInfo", "LMRuntime", "StepRunner", "training_lm"]
