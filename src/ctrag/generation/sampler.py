"""Rectified-flow scheduler with the diffusers contract, and the guided sampling loop.

``RectifiedFlowSampler`` wraps MONAI's ``RFlowScheduler``: its constructor arguments are its config (written to
``sampler.json``), ``set_timesteps(n)`` prepares the schedule and ``step(velocity, t, sample)`` returns a
``SamplerStepOutput`` with ``prev_sample``. Training-time helpers (``sample_timesteps``, ``add_noise``,
``velocity_target``) take an explicit ``torch.Generator``; MONAI's own timestep sampler draws from the global
RNG, which would make training runs impossible to resume bit-for-bit.

``sample_latents`` is the loop: per step one batched UNet pass for the unconditional and conditional halves of
classifier-free guidance, one ControlNet pass whose mask features were encoded once before the loop (they do not
depend on the step), guidance ``v_u + cfg * (v_c - v_u)``, then the scheduler step. With ``cfg == 1`` only the
conditional half runs (identical result, half the work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag.errors import WeightsNotFoundError
from ctrag.generation.config import SchedulerConfig
from ctrag.generation.controlnet import ControlInputs, controlnet_residuals
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

SAMPLING_STAGE = "sampling"
"""The ``ProgressFn`` stage the denoising loop reports under (``progress("sampling", step, steps)``)."""

SAMPLER_CONFIG_NAME = "sampler.json"


@dataclass
class SamplerStepOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class RectifiedFlowSampler:
    """MONAI ``RFlowScheduler`` behind ``set_timesteps`` / ``step``, with a JSON config."""

    config_name = SAMPLER_CONFIG_NAME

    def __init__(self, **kwargs: Any) -> None:
        self.config = SchedulerConfig(**kwargs)
        from monai.networks.schedulers import RFlowScheduler

        c = self.config
        self.scheduler = RFlowScheduler(
            num_train_timesteps=c.num_train_timesteps,
            use_discrete_timesteps=c.use_discrete_timesteps,
            sample_method=c.sample_method,
            loc=c.loc,
            scale=c.scale,
            use_timestep_transform=c.use_timestep_transform,
            transform_scale=c.transform_scale,
            steps_offset=c.steps_offset,
            base_img_size_numel=c.base_img_size_numel,
            spatial_dim=c.spatial_dim,
        )
        self.timesteps: torch.Tensor = torch.empty(0)
        self._times: torch.Tensor = torch.empty(0, dtype=torch.float64)
        self._next: dict[float, int] = {}

    # --- config ----------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: SchedulerConfig | Mapping[str, Any]) -> RectifiedFlowSampler:
        data = dataclasses.asdict(config) if isinstance(config, SchedulerConfig) else dict(config)
        data.pop("_class_name", None)
        return cls(**data)

    def save_config(self, directory: str | os.PathLike[str]) -> Path:
        out = Path(directory) / self.config_name
        payload = {"_class_name": type(self).__name__, **dataclasses.asdict(self.config)}
        atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> RectifiedFlowSampler:
        file = Path(directory) / cls.config_name
        if not file.is_file():
            raise WeightsNotFoundError(f"no {cls.config_name} in {directory}")
        return cls.from_config(json.loads(file.read_text(encoding="utf-8")))

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    # --- the one schedule ----------------------------------------------------------------------------------
    def transform_timesteps(self, t: torch.Tensor, latent_shape: tuple[int, ...] | None) -> torch.Tensor:
        """The resolution-dependent timestep shift (MONAI's ``timestep_transform``) when the config enables it.

        Training and sampling both go through here, so a UNet trained with ``use_timestep_transform`` sees the
        same (shifted) timesteps it is later sampled with. ``latent_shape`` ends with the latent's spatial size.
        """
        c = self.config
        if not c.use_timestep_transform:
            return t
        if latent_shape is None:
            raise ValueError("use_timestep_transform needs the latent shape (its spatial size sets the shift)")
        from monai.networks.schedulers.rectified_flow import timestep_transform

        numel = float(math.prod(int(s) for s in latent_shape[-c.spatial_dim :]))
        return timestep_transform(
            t.double(),
            input_img_size_numel=torch.tensor(numel, dtype=torch.float64),
            base_img_size_numel=c.base_img_size_numel,
            scale=c.transform_scale,
            num_train_timesteps=c.num_train_timesteps,
            spatial_dim=c.spatial_dim,
        ).to(t.dtype)

    def schedule(self, num_inference_steps: int, latent_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """``num_inference_steps + 1`` float64 times from T (noise) down to 0 (data), transformed as in training.

        MONAI's ``set_timesteps`` stores these in float16 and its ``step`` truncates the next one with ``int()``,
        so its 30 step sizes sum to about 1.01; here they are kept exact and the last one ends at 0.
        """
        c = self.config
        if not 1 <= num_inference_steps <= c.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in 1..{c.num_train_timesteps}, got {num_inference_steps}")
        steps = torch.arange(num_inference_steps + 1, dtype=torch.float64)
        t = (1.0 - steps / num_inference_steps) * c.num_train_timesteps
        if c.use_discrete_timesteps:
            t = t.round()
        return self.transform_timesteps(t, latent_shape)

    # --- inference -------------------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        latent_shape: tuple[int, ...] | None = None,
    ) -> None:
        """Prepare ``num_inference_steps`` timesteps from noise (t = T) towards data (t = 0)."""
        times = self.schedule(num_inference_steps, latent_shape)
        self._times = times
        self.timesteps = (times[:-1] + self.config.steps_offset).to(torch.float32).to(device)
        self._next = {float(t): i for i, t in enumerate(self.timesteps)}

    def step_sizes(self) -> torch.Tensor:
        """The fraction of the path each step covers, ``(t_i - t_{i+1}) / T`` (they sum to 1)."""
        return (self._times[:-1] - self._times[1:]) / self.config.num_train_timesteps

    def next_timestep(self, timestep: float | torch.Tensor) -> float:
        return float(self._times[self._next[float(timestep)] + 1])

    def step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor
    ) -> SamplerStepOutput:
        """Euler step along the predicted velocity from ``timestep`` to the next time of the schedule."""
        if not self._next:
            raise RuntimeError("call set_timesteps() before step()")
        i = self._next[float(timestep)]
        t, t_next = float(self._times[i]), float(self._times[i + 1])
        dt = (t - t_next) / self.config.num_train_timesteps
        prev = sample + model_output * dt
        x0 = sample + model_output * (t / self.config.num_train_timesteps)
        return SamplerStepOutput(prev_sample=prev, pred_original_sample=x0)

    # --- training --------------------------------------------------------------------------------------------
    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        latent_shape: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Training timesteps in [0, T) from the configured distribution, drawn from ``generator``, then
        transformed exactly as ``schedule`` transforms the sampling times (``latent_shape``: the training latent)."""
        c = self.config
        if c.sample_method == "uniform":
            u = torch.rand(batch, generator=generator)
        else:
            u = torch.sigmoid(c.loc + c.scale * torch.randn(batch, generator=generator))
        t = u * c.num_train_timesteps
        if c.use_discrete_timesteps:
            t = t.long().float()
        return self.transform_timesteps(t, latent_shape).to(device)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t/T) x_0 + (t/T) noise (MONAI's convention: t = T is pure noise)."""
        return self.scheduler.add_noise(original, noise, timesteps)

    @staticmethod
    def velocity_target(original: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity the network learns: d x_t / d(-t) = x_0 - noise."""
        return original - noise


# ----------------------------------------------------------------------------------------------- guided loop


@dataclass
class GuidanceInputs:
    """What stays fixed over the loop: text contexts, extra UNet inputs, cached control features."""

    context: torch.Tensor | None
    """(B, 1, D) report embeddings, or None for an unconditional UNet."""
    null_context: torch.Tensor | None
    """(B, 1, D) unconditional context (zeros or learned)."""
    unet_extra: dict[str, torch.Tensor]
    control: ControlInputs | None = None


def _expand_extra(extra: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat([v] * times, dim=0) for k, v in extra.items()} if times > 1 else extra


def sample_latents(
    unet: nn.Module,
    sampler: RectifiedFlowSampler,
    noise: torch.Tensor,
    inputs: GuidanceInputs,
    *,
    steps: int,
    cfg: float,
    controlnet: nn.Module | None = None,
    control_scale: float = 1.0,
    control_window: tuple[float, float] = (0.0, 1.0),
    autocast_dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    stage: str = SAMPLING_STAGE,
    residual_fn: Callable[..., tuple[list[torch.Tensor], torch.Tensor]] = controlnet_residuals,
) -> torch.Tensor:
    """Integrate the rectified flow from ``noise`` to a clean latent under text and control guidance.

    ``residual_fn`` computes the ControlNet residuals (``controlnet_residuals``, or a ``torch.compile``-d copy of
    it: the ControlNet is driven through its submodules, so compiling the module itself would not apply).
    """
    device = noise.device
    sampler.set_timesteps(steps, device=device, latent_shape=tuple(noise.shape))
    if inputs.context is None:
        halves: list[torch.Tensor | None] = [None]
    elif cfg == 1.0:
        halves = [inputs.context]
    elif cfg == 0.0:
        halves = [inputs.null_context]
    else:
        halves = [inputs.null_context, inputs.context]
    guided = len(halves) == 2
    times = len(halves)
    context = None if halves[0] is None else torch.cat([h for h in halves if h is not None], dim=0)
    extra = _expand_extra(inputs.unet_extra, times)
    use_control = controlnet is not None and inputs.control is not None and control_scale != 0.0
    control = inputs.control.repeat(times) if use_control and inputs.control is not None else None
    latents = noise
    n = len(sampler.timesteps)
    autocast: Any = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    for i, t in enumerate(sampler.timesteps):
        x = torch.cat([latents] * times, dim=0) if times > 1 else latents
        tt = torch.full((x.shape[0],), float(t), device=device)
        with autocast:
            kwargs: dict[str, Any] = dict(extra)
            frac = i / n
            if control is not None and controlnet is not None and control_window[0] <= frac <= control_window[1]:
                down, mid = residual_fn(controlnet, x, tt, control, context=context, scale=control_scale)
                kwargs["down_block_additional_residuals"] = down
                kwargs["mid_block_additional_residual"] = mid
            v = unet(x, tt, context=context, **kwargs)
        v = v.float()
        if guided:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + cfg * (v_cond - v_uncond)
        latents = sampler.step(v, t, latents).prev_sample
        if progress is not None:
            progress(stage, i + 1, n)
    return latents
