"""VAE decoding of latents, patch-wise for volumes too large to decode at once.

A 512x512x128 CT decodes from a 4x128x128x32 latent; the full-resolution decoder activations of that volume do
not fit most GPUs. MONAI's ``SlidingWindowInferer`` runs the decoder on overlapping latent patches and blends
the (4x larger) outputs with Gaussian weights, as MAISI and RAG-Text2CT do (80^3 image patches, overlap 0.4).
Latents that fit a single patch are decoded directly, which is exact and faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class LatentDecoder(nn.Module):
    """``z -> image``: undo the latent scaling, then run the VAE decoder (the predictor a sliding window calls)."""

    def __init__(self, vae: nn.Module, scale_factor: float) -> None:
        super().__init__()
        self.vae: Any = vae
        self.scale_factor = float(scale_factor)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_stage_2_outputs(z / self.scale_factor)


def decode_latents(
    vae: nn.Module,
    latents: torch.Tensor,
    scale_factor: float,
    *,
    downsample: int,
    roi: Sequence[int] = (80, 80, 80),
    overlap: float = 0.4,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    progress: bool = False,
    output_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode ``latents`` (B, C, x, y, z) to images (B, 1, x*f, y*f, z*f) with f = ``downsample``.

    ``roi`` is the patch size in *image* voxels; it is converted to latent voxels (``roi // f``).
    """
    decoder = LatentDecoder(vae, scale_factor)
    latent_roi = tuple(max(1, int(r) // downsample) for r in roi)
    if math.prod(latents.shape[2:]) <= math.prod(latent_roi) and all(
        s <= r for s, r in zip(latents.shape[2:], latent_roi, strict=True)
    ):
        out = decoder(latents)
        return out if output_device is None else out.to(output_device)
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(
        roi_size=latent_roi,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode=mode,
        progress=progress,
        sw_device=latents.device,
        device=torch.device(output_device) if output_device is not None else latents.device,
    )
    out = inferer(latents, decoder)
    assert isinstance(out, torch.Tensor)
    return out
