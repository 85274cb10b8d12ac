"""ControlNet branch: initialisation from the UNet, the mask input, cached mask features, scaled residuals.

The control branch is MONAI's ``ControlNet`` (or ``ControlNetMaisi``): a trainable copy of the UNet encoder, a
mask encoder of strided convolutions (``controlnet_cond_embedding``) that brings the mask to the latent grid,
and zero-initialised 1x1x1 convolutions on every skip connection and on the bottleneck. Zero initialisation means
the frozen UNet's prediction is unchanged until training moves those convolutions (RAG-Text2CT, Sec. 2.0.4).

Masks are stored as small integer maps; the float input the mask encoder reads (one-hot or MAISI's binary bits)
is built per batch with ``encode_mask``. A one-hot bank of every training mask would cost ``num_labels + 1``
floats per voxel up front, which is what made an earlier experiment run out of memory.

``controlnet_residuals`` runs the same computation as ``ControlNet.forward`` but takes the mask features from
``encode_control`` instead of recomputing them: the mask is identical at every sampling step and in both halves
of classifier-free guidance, so encoding it once removes the most expensive full-resolution part of every step.
A test checks it against ``ControlNet.forward`` bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctrag.errors import CheckpointMismatchError, DataValidationError
from ctrag.generation.config import ControlNetConfig, DiffusionConfig
from ctrag.generation.networks import build_controlnet

logger = logging.getLogger(__name__)

#: Parameters that exist only in the ControlNet (mask encoder and zero convolutions).
CONTROL_ONLY_PREFIXES: tuple[str, ...] = (
    "controlnet_cond_embedding.",
    "controlnet_down_blocks.",
    "controlnet_mid_block.",
)
#: UNet parameters with no counterpart in the ControlNet (decoder half, output head, MAISI spacing embedding).
UNET_ONLY_PREFIXES: tuple[str, ...] = ("up_blocks.", "out.", "spacing_layer.")


@dataclass
class ControlInputs:
    """Mask features on the latent grid, encoded once per generation (or per training batch)."""

    features: torch.Tensor
    class_labels: torch.Tensor | None = None

    def repeat(self, times: int) -> ControlInputs:
        if times == 1:
            return self
        labels = None if self.class_labels is None else torch.cat([self.class_labels] * times, dim=0)
        return ControlInputs(torch.cat([self.features] * times, dim=0), labels)


def encode_mask(
    labels: torch.Tensor, n_labels: int, encoding: str = "onehot", pool: int = 1, bits: int = 8
) -> torch.Tensor:
    """(B, 1, X, Y, Z) integer labels -> float input of the mask encoder, built for this batch only.

    ``onehot``: ``n_labels + 1`` channels (background first), average-pooled by ``pool`` so each coarse voxel
    keeps the fraction of every structure; ``binary``: ``bits`` channels holding the label id in binary, the
    MAISI/RAG-Text2CT encoding (pooling a bit pattern is meaningless, so it uses nearest subsampling).
    """
    if labels.ndim != 5 or labels.shape[1] != 1:
        raise ValueError(f"encode_mask: expected (B, 1, X, Y, Z) labels, got {tuple(labels.shape)}")
    lab = labels.long()
    if encoding == "binary":
        if pool > 1:
            lab = lab[..., ::pool, ::pool, ::pool]
        weights = 2 ** torch.arange(bits, device=lab.device)
        out = (lab.unsqueeze(-1).bitwise_and(weights) != 0).float()  # (B, 1, X, Y, Z, bits)
        return out.squeeze(1).permute(0, 4, 1, 2, 3).contiguous()
    if int(lab.max()) > n_labels or int(lab.min()) < 0:
        raise DataValidationError(f"mask holds ids outside 0..{n_labels} ({int(lab.min())}..{int(lab.max())})")
    onehot = torch.zeros((lab.shape[0], n_labels + 1, *lab.shape[2:]), dtype=torch.float32, device=lab.device)
    onehot.scatter_(1, lab, 1.0)
    if pool > 1:
        onehot = F.avg_pool3d(onehot, kernel_size=pool, stride=pool)
    return onehot


def encode_control(
    controlnet: Any, mask_input: torch.Tensor, class_labels: torch.Tensor | None = None
) -> ControlInputs:
    """Run the mask encoder (strided convolutions) on an encoded mask (see ``encode_mask``)."""
    return ControlInputs(controlnet.controlnet_cond_embedding(mask_input), class_labels)


def controlnet_residuals(
    controlnet: Any,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    control: ControlInputs,
    context: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Skip and bottleneck residuals of ``controlnet`` for noisy latents ``x``, scaled by ``scale``.

    Same operations as MONAI's ``ControlNet.forward`` with the conditioning embedding precomputed.
    """
    from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

    cn = controlnet
    emb = cn.time_embed(get_timestep_embedding(timesteps, cn.block_out_channels[0]).to(dtype=x.dtype))
    if cn.num_class_embeds is not None:
        if control.class_labels is None:
            raise ValueError("this ControlNet is class-conditional; ControlInputs.class_labels is required")
        emb = emb + cn.class_embedding(control.class_labels).to(dtype=x.dtype)
    if control.features.shape[0] != x.shape[0] or control.features.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"control features {tuple(control.features.shape)} do not match the latents {tuple(x.shape)} "
            "(batch and latent grid must agree)"
        )
    h = cn.conv_in(x) + control.features.to(dtype=x.dtype)
    skips: list[torch.Tensor] = [h]
    for block in cn.down_blocks:
        h, res = block(hidden_states=h, temb=emb, context=context)
        skips.extend(res)
    h = cn.middle_block(hidden_states=h, temb=emb, context=context)
    down = [zero_conv(s) * scale for s, zero_conv in zip(skips, cn.controlnet_down_blocks, strict=True)]
    mid = cn.controlnet_mid_block(h) * scale
    return down, mid


def controlnet_from_unet(
    unet: nn.Module, unet_cfg: DiffusionConfig, cn_cfg: ControlNetConfig, num_labels: int
) -> nn.Module:
    """A ControlNet whose encoder starts as an exact copy of ``unet``'s; mask encoder and zero convs are new.

    The copy is checked key by key: every ControlNet parameter must either come from the UNet or be one of the
    control-only modules, every UNet parameter left over must belong to its decoder/head, and shapes must agree.
    Anything else means the two configs describe different encoders and raises ``CheckpointMismatchError``.
    """
    controlnet = build_controlnet(unet_cfg, cn_cfg, num_labels)
    unet_sd = unet.state_dict()
    cn_sd = controlnet.state_dict()
    shared = [k for k in cn_sd if k in unet_sd]
    missing = [k for k in cn_sd if k not in unet_sd]
    leftover = [k for k in unet_sd if k not in cn_sd]
    bad_missing = [k for k in missing if not k.startswith(CONTROL_ONLY_PREFIXES)]
    bad_leftover = [k for k in leftover if not k.startswith(UNET_ONLY_PREFIXES)]
    mismatched = [k for k in shared if cn_sd[k].shape != unet_sd[k].shape]
    # A MAISI UNet with a spacing input feeds [time embedding, spacing embedding] (concatenated, time first) to its
    # res-blocks, the ControlNet only the time embedding: its projections are the UNet's columns for the time part.
    widened = [
        k
        for k in mismatched
        if unet_cfg.include_spacing_input
        and k.endswith("time_emb_proj.weight")
        and cn_sd[k].ndim == 2
        and cn_sd[k].shape[0] == unet_sd[k].shape[0]
        and cn_sd[k].shape[1] < unet_sd[k].shape[1]
    ]
    bad_shape = [k for k in mismatched if k not in widened]
    if bad_missing or bad_leftover or bad_shape:
        raise CheckpointMismatchError(
            "controlnet_from_unet: the UNet does not match the ControlNet encoder: "
            f"ControlNet keys absent from the UNet {bad_missing[:8]}, unexpected UNet keys {bad_leftover[:8]}, "
            f"shape mismatches {bad_shape[:8]}"
        )
    copied = {k: unet_sd[k] for k in shared if k not in widened}
    if not copied:
        raise CheckpointMismatchError("controlnet_from_unet: no parameter names in common with the UNet")
    copied.update({k: unet_sd[k][:, : cn_sd[k].shape[1]] for k in widened})
    controlnet.load_state_dict({**cn_sd, **copied}, strict=True)
    logger.info(
        "ControlNet initialised from the UNet: %d tensors copied (%d of them the time-embedding columns of "
        "spacing-widened time projections), %d new (mask encoder + zero convs), %d UNet decoder tensors not used",
        len(copied),
        len(widened),
        len(missing),
        len(leftover),
    )
    return controlnet.to(next(unet.parameters()).device)
