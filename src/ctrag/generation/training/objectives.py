"""Training objectives: the VAE loss and the rectified-flow velocity loss, with their batch preparation.

An objective is a module whose ``forward`` returns the scalar loss (``engine.TrainLoop`` calls it on what its
``prepare_batch`` returns). The preparation functions draw every random tensor of a sample (posterior noise, flow
noise, timestep, dropped text) from that sample's own ``torch.Generator``, which is what makes resumed runs exact
and a step's global batch the same on any number of processes.
Flow timesteps come from ``RectifiedFlowSampler.sample_timesteps``: the same schedule (and resolution shift)
that sampling uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctrag.data.labels import num_labels
from ctrag.generation.config import GeneratorConfig, TrainDiffusionConfig, TrainVAEConfig
from ctrag.generation.controlnet import controlnet_residuals, encode_control, encode_mask
from ctrag.generation.networks import extra_unet_inputs
from ctrag.generation.sampler import RectifiedFlowSampler
from ctrag.generation.training.engine import Generators, PrepareBatch


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


def vae_prepare_batch(config: GeneratorConfig, cfg: TrainVAEConfig, memory_format: torch.memory_format) -> PrepareBatch:
    """Crops to the device, plus the posterior noise ``eps`` of the reparameterised sample."""
    latent_spatial = tuple(s // config.vae.downsample for s in cfg.crop_shape)

    def prepare(batch: Mapping[str, Any], dev: torch.device, gens: Generators) -> dict[str, Any]:
        image = batch["image"]
        eps = torch.stack([torch.randn((config.vae.latent_channels, *latent_spatial), generator=g) for g in gens])
        return {
            "image": image.to(dev, memory_format=memory_format),
            "eps": eps.to(dev, memory_format=memory_format),
        }

    return prepare


def flow_prepare_batch(
    config: GeneratorConfig,
    cfg: TrainDiffusionConfig,
    contexts: torch.Tensor | None,
    has_text: torch.Tensor,
    sampler: RectifiedFlowSampler,
    scale_factor: float,
    with_mask: bool,
    memory_format: torch.memory_format,
) -> PrepareBatch:
    """Latent crops -> (noisy latents, timesteps, velocity target, text context + drop flags, encoded masks)."""
    n_labels = num_labels(config.controlnet.label_set)
    cn = config.controlnet

    def prepare(batch: Mapping[str, Any], dev: torch.device, gens: Generators) -> dict[str, Any]:
        x0 = batch["latents"] * scale_factor
        b = x0.shape[0]
        if len(gens) != b:
            raise ValueError(f"flow batch of {b} samples got {len(gens)} generators")
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
        t = torch.cat([sampler.sample_timesteps(1, g, latent_shape=tuple(x0.shape)) for g in gens])
        x_t = sampler.add_noise(x0, noise, t)
        out: dict[str, Any] = {
            "x_t": x_t.to(dev, memory_format=memory_format),
            "timesteps": t.to(dev),
            "target": sampler.velocity_target(x0, noise).to(dev, memory_format=memory_format),
            "unet_extra": extra_unet_inputs(config.diffusion, b, config.preprocess.spacing, dev),
        }
        if "context" in batch:  # streamed batches carry their own embeddings (no per-corpus table)
            ctx, text = batch["context"], batch["has_text"]
        elif contexts is not None:
            ctx, text = contexts[batch["case_index"]], has_text[batch["case_index"]]
        else:
            ctx = None
        if ctx is not None:
            drop = (torch.cat([torch.rand(1, generator=g) for g in gens]) < cfg.text_dropout) | ~text
            out["context"] = ctx.to(dev)
            out["drop"] = drop.to(dev)
        if with_mask:
            mask_input = encode_mask(
                batch["labels"], n_labels, cn.mask_encoding, pool=cn.mask_pool, bits=cn.binary_bits
            )
            out["mask_input"] = mask_input.to(dev, memory_format=memory_format)
        return out

    return prepare
