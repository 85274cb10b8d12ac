"""FLOPs of the text2ct-512 networks (no weights, meta device): the basis of docs/scale.md's GPU-hour estimates.

    python benchmarks/flops_text2ct512.py

Prints TFLOP (multiply-add = 2 FLOPs, ``torch.utils.flop_counter``) for one UNet + ControlNet forward on a
4x128x128x32 latent, one ControlNet training step (batch 1, UNet frozen, L1 loss, backward), one VAE decode window
of 80^3 voxels (latent 20^3, the preset's ``num_splits``) and one VAE encode of a 128^3 crop. ``vae.norm_float16``
is off and the encode uses ``num_splits`` 1 because the meta device cannot run those paths.
"""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from ctrag.generation.config import load_generator_config
from ctrag.generation.networks import build_controlnet, build_unet, build_vae, mask_channels

N_LABELS = 117  # TotalSegmentator "total" classes, the preset's label set


def tflop(fn) -> float:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def main() -> None:
    cfg = load_generator_config("text2ct-512", ["vae.norm_float16=false"])
    enc_cfg = load_generator_config("text2ct-512", ["vae.norm_float16=false", "vae.num_splits=1"])
    with torch.device("meta"):
        unet = build_unet(cfg.diffusion)
        cn = build_controlnet(cfg.diffusion, cfg.controlnet, N_LABELS)
        vae, vae_enc = build_vae(cfg.vae), build_vae(enc_cfg.vae)
        x = torch.randn(1, 4, 128, 128, 32)
        t = torch.ones(1)
        ctx = torch.randn(1, 1, 768)
        cls = torch.ones(1, dtype=torch.long)
        spacing = torch.tensor([[75.0, 75.0, 300.0]])
        cond = torch.randn(1, mask_channels(cfg.controlnet, N_LABELS), 512, 512, 128)
    for p in unet.parameters():
        p.requires_grad_(False)

    def control() -> tuple:  # type: ignore[type-arg]
        return cn(x=x, timesteps=t, controlnet_cond=cond, context=ctx, class_labels=cls)

    def forward() -> torch.Tensor:
        down, mid = control()
        return unet(
            x=x,
            timesteps=t,
            context=ctx,
            class_labels=cls,
            spacing_tensor=spacing,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )

    def train_step() -> None:
        forward().float().abs().mean().backward()

    with torch.no_grad():
        figures = {
            "unet_controlnet_forward": tflop(forward),
            "controlnet_forward": tflop(control),
        }
    figures["controlnet_train_step_batch1"] = tflop(train_step)
    with torch.no_grad():
        figures["vae_decode_window_80"] = tflop(lambda: vae.decode(torch.randn(1, 4, 20, 20, 20, device="meta")))
        figures["vae_encode_128"] = tflop(lambda: vae_enc.encode(torch.randn(1, 1, 128, 128, 128, device="meta")))
    print(json.dumps({"tflop": {k: round(v, 3) for k, v in figures.items()}}, indent=2))


if __name__ == "__main__":
    main()
