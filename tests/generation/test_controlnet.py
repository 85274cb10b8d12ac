"""ControlNet: copy from the UNet, zero-init invariance, control scale, cached mask features."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ctrag.errors import CheckpointMismatchError, DataValidationError
from ctrag.generation.config import ControlNetConfig, DiffusionConfig
from ctrag.generation.controlnet import (
    CONTROL_ONLY_PREFIXES,
    controlnet_from_unet,
    controlnet_residuals,
    encode_control,
    encode_mask,
)
from ctrag.generation.networks import build_unet, extra_unet_inputs
from tests.generation.conftest import TINY_UNET

MAISI_UNET = dataclasses.replace(
    TINY_UNET, arch="maisi", num_class_embeds=4, include_spacing_input=True, resblock_updown=True
)
CN = ControlNetConfig(mask_pool=2, conditioning_embedding_num_channels=(8,))


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, 4, generator=g)
    t = torch.tensor([700.0, 150.0][:batch])
    ctx = torch.randn(batch, 1, 24, generator=g)
    labels = torch.randint(0, 6, (batch, 1, 16, 16, 8), generator=g)
    return x, t, ctx, labels


def _randomised_unet(cfg: DiffusionConfig) -> torch.nn.Module:
    torch.manual_seed(1)
    unet = build_unet(cfg).eval()
    # MONAI zero-initialises the output convolution: a fresh UNet predicts exactly 0 whatever its input, so any
    # "the ControlNet changes nothing" test would pass trivially. Give the head real weights first.
    for p in unet.out.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return unet


@pytest.mark.parametrize("cfg", [TINY_UNET, MAISI_UNET], ids=["monai", "maisi"])
def test_controlnet_from_unet_copies_encoder_exactly(cfg: DiffusionConfig) -> None:
    unet = _randomised_unet(cfg)
    cn = controlnet_from_unet(unet, cfg, CN, num_labels=5)
    unet_sd, cn_sd = unet.state_dict(), cn.state_dict()
    shared = [k for k in cn_sd if k in unet_sd and cn_sd[k].shape == unet_sd[k].shape]
    widened = [k for k in cn_sd if k in unet_sd and cn_sd[k].shape != unet_sd[k].shape]
    new = [k for k in cn_sd if k not in unet_sd]
    assert shared and all(torch.equal(cn_sd[k], unet_sd[k]) for k in shared)
    # only MAISI's spacing-widened time projections may differ in shape (they cannot be copied)
    assert all(k.endswith("time_emb_proj.weight") for k in widened) and (bool(widened) == cfg.include_spacing_input)
    assert new and all(k.startswith(CONTROL_ONLY_PREFIXES) for k in new)
    # the zero convolutions on every skip and on the bottleneck start at exactly zero
    zero_keys = [k for k in new if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block."))]
    assert len(zero_keys) == 2 * (len(cn.controlnet_down_blocks) + 1)  # weight + bias per skip and bottleneck
    assert all(float(cn_sd[k].abs().max()) == 0.0 for k in zero_keys)


def test_controlnet_from_unet_refuses_another_encoder() -> None:
    unet = _randomised_unet(TINY_UNET)
    other = DiffusionConfig(
        channels=(16, 64), attention_levels=(False, True), num_res_blocks=(1, 1), num_head_channels=(0, 16),
        norm_num_groups=8, cross_attention_dim=24,
    )  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        controlnet_from_unet(unet, other, CN, num_labels=5)


@pytest.mark.parametrize("cfg", [TINY_UNET, MAISI_UNET], ids=["monai", "maisi"])
def test_zero_initialised_controlnet_leaves_unet_output_bit_identical(cfg: DiffusionConfig) -> None:
    unet = _randomised_unet(cfg)
    cn = controlnet_from_unet(unet, cfg, CN, num_labels=5).eval()
    x, t, ctx, labels = _inputs()
    extra = extra_unet_inputs(cfg, 2, (5.0, 5.0, 7.5), "cpu")
    with torch.no_grad():
        plain = unet(x, t, context=ctx, **extra)
        control = encode_control(cn, encode_mask(labels, 5, pool=2), extra.get("class_labels"))
        down, mid = controlnet_residuals(cn, x, t, control, context=ctx)
        guided = unet(
            x, t, context=ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid, **extra
        )
    assert float(plain.abs().max()) > 0.01  # the head is not the zero layer any more
    assert torch.equal(plain, guided)


def _trained_like_controlnet(cfg: DiffusionConfig = TINY_UNET) -> tuple[torch.nn.Module, torch.nn.Module]:
    unet = _randomised_unet(cfg)
    cn = controlnet_from_unet(unet, cfg, CN, num_labels=5).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if name.startswith(CONTROL_ONLY_PREFIXES):
                p.normal_(std=0.05)
    return unet, cn


def test_control_scale_zero_equals_no_control_and_scale_matters() -> None:
    unet, cn = _trained_like_controlnet()
    x, t, ctx, labels = _inputs()
    with torch.no_grad():
        control = encode_control(cn, encode_mask(labels, 5, pool=2))
        plain = unet(x, t, context=ctx)
        outs = {}
        for scale in (0.0, 1.0):
            down, mid = controlnet_residuals(cn, x, t, control, context=ctx, scale=scale)
            outs[scale] = unet(
                x, t, context=ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid
            )
    assert torch.equal(outs[0.0], plain)
    assert float((outs[1.0] - plain).abs().max()) > 1e-3


@pytest.mark.parametrize("cfg", [TINY_UNET, MAISI_UNET], ids=["monai", "maisi"])
def test_cached_mask_features_match_monai_forward(cfg: DiffusionConfig) -> None:
    _, cn = _trained_like_controlnet(cfg)
    x, t, ctx, labels = _inputs()
    mask_input = encode_mask(labels, 5, pool=2)
    labels_cls = extra_unet_inputs(cfg, 2, None if not cfg.include_spacing_input else (1, 1, 1), "cpu").get(
        "class_labels"
    )
    with torch.no_grad():
        ref_down, ref_mid = cn(x, t, mask_input, conditioning_scale=0.7, context=ctx, class_labels=labels_cls)
        control = encode_control(cn, mask_input, labels_cls)
        down, mid = controlnet_residuals(cn, x, t, control, context=ctx, scale=0.7)
    assert all(torch.equal(a, b) for a, b in zip(ref_down, down, strict=True))
    assert torch.equal(ref_mid, mid)


def test_residuals_reject_features_on_another_grid() -> None:
    _, cn = _trained_like_controlnet()
    x, t, ctx, labels = _inputs()
    control = encode_control(cn, encode_mask(labels[..., :8, :8, :4], 5, pool=2))  # half-size mask
    with pytest.raises(ValueError, match="latent grid"):
        controlnet_residuals(cn, x, t, control, context=ctx)


def test_maisi_controlnet_mirrors_every_encoder_parameter_time_projections_included() -> None:
    """Bug 2g: the spacing-widened ``time_emb_proj`` weights were re-initialised instead of copied."""
    unet = _randomised_unet(MAISI_UNET)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(std=0.1)  # every UNet parameter random, so a fresh ControlNet tensor cannot match by chance
    cn = controlnet_from_unet(unet, MAISI_UNET, CN, num_labels=5)
    unet_sd, cn_sd = unet.state_dict(), cn.state_dict()
    shared = [k for k in cn_sd if k in unet_sd]
    projections = [k for k in shared if "time_emb_proj" in k]
    assert projections and any(cn_sd[k].shape != unet_sd[k].shape for k in projections)
    for k in shared:
        expected = unet_sd[k] if cn_sd[k].shape == unet_sd[k].shape else unet_sd[k][:, : cn_sd[k].shape[1]]
        assert torch.equal(cn_sd[k], expected), k
    # with the spacing embedding's contribution removed, a res-block's time projection is the UNet's
    block = "down_blocks.0.resnets.0.time_emb_proj"
    temb = torch.randn(2, cn_sd[f"{block}.weight"].shape[1])
    wide = torch.cat([temb, torch.zeros(2, unet_sd[f"{block}.weight"].shape[1] - temb.shape[1])], dim=1)
    assert torch.allclose(cn.get_submodule(block)(temb), unet.get_submodule(block)(wide))


# ------------------------------------------------------------------------------------------------ mask input


def test_onehot_is_built_per_batch_and_pooled() -> None:
    labels = torch.tensor([0, 1, 2, 5] * 16).reshape(1, 1, 4, 4, 4)
    onehot = encode_mask(labels, 5)
    assert onehot.shape == (1, 6, 4, 4, 4) and onehot.dtype == torch.float32
    assert torch.equal(onehot.argmax(1, keepdim=True), labels)
    pooled = encode_mask(labels, 5, pool=2)
    assert pooled.shape == (1, 6, 2, 2, 2)
    assert torch.allclose(pooled.sum(1), torch.ones(1, 2, 2, 2))  # fractions of each structure per coarse voxel


def test_binary_encoding_matches_maisi_bits() -> None:
    labels = torch.tensor([0, 1, 2, 3, 117, 255, 6, 9]).reshape(1, 1, 2, 2, 2)
    bits = encode_mask(labels, 117, "binary", bits=8)
    assert bits.shape == (1, 8, 2, 2, 2)
    weights = (2 ** torch.arange(8)).view(1, 8, 1, 1, 1).float()
    assert torch.equal((bits * weights).sum(1, keepdim=True).long(), labels)


def test_onehot_refuses_ids_outside_the_label_set() -> None:
    with pytest.raises(DataValidationError, match=r"outside 0\.\.5"):
        encode_mask(torch.full((1, 1, 2, 2, 2), 7), 5)
