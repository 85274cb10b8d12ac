"""``ctrag.generation.networks``: the config's ``arch`` picks MONAI's core or MAISI class for each network, the
networks have the shapes the latent grid needs, the MAISI-only inputs are built (or refused) from the config, and
weight initialisation is a function of the seed alone. Synthetic tensors: these are shape and unit checks."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi
from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet

from ctrag.errors import ConfigError
from ctrag.generation import networks
from ctrag.generation.config import ControlNetConfig, VAEConfig, load_generator_config
from ctrag.generation.networks import (
    build_controlnet,
    build_unet,
    build_vae,
    controlnet_extra_inputs,
    extra_unet_inputs,
    mask_channels,
    seeded_init,
    to_channels_last,
)
from tests.generation.conftest import TINY_UNET

SMALL_VAE = VAEConfig(channels=(8, 16, 16), num_res_blocks=(1, 1, 1), attention_levels=(False, False, False))
MAISI_UNET = dataclasses.replace(
    TINY_UNET, arch="maisi", num_class_embeds=4, include_spacing_input=True, resblock_updown=True
)
CN = ControlNetConfig(mask_pool=2, conditioning_embedding_num_channels=(8,))


def test_the_presets_choose_core_monai_for_tiny_cpu_and_maisi_for_text2ct() -> None:
    tiny, text2ct = load_generator_config("tiny-cpu"), load_generator_config("text2ct-512")
    assert (tiny.vae.arch, tiny.diffusion.arch) == ("monai", "monai")
    assert (text2ct.vae.arch, text2ct.diffusion.arch) == ("maisi", "maisi")


@pytest.mark.parametrize(("arch", "cls"), [("monai", AutoencoderKL), ("maisi", AutoencoderKlMaisi)])
def test_vae_class_follows_arch_and_compresses_by_two_per_level(arch: str, cls: type) -> None:
    vae = build_vae(dataclasses.replace(SMALL_VAE, arch=arch)).eval()
    assert type(vae) is cls
    x = torch.randn(1, 1, 16, 16, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = vae.encode_stage_2_inputs(x)
        back = vae.decode_stage_2_outputs(z)
    assert z.shape == (1, SMALL_VAE.latent_channels, 4, 4, 2)  # 3 levels: 2 downsamplings
    assert back.shape == x.shape


@pytest.mark.parametrize(
    ("cfg", "unet_cls", "cn_cls"),
    [(TINY_UNET, DiffusionModelUNet, ControlNet), (MAISI_UNET, DiffusionModelUNetMaisi, ControlNetMaisi)],
    ids=["monai", "maisi"],
)
def test_unet_and_controlnet_classes_follow_arch_and_keep_the_latent_shape(cfg, unet_cls, cn_cls) -> None:  # type: ignore[no-untyped-def]
    unet = build_unet(cfg).eval()
    cn = build_controlnet(cfg, CN, num_labels=5).eval()
    assert type(unet) is unet_cls and type(cn) is cn_cls
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 8, 8, 4, generator=g), torch.tensor([700.0, 150.0]), torch.randn(2, 1, 24)
    extra = extra_unet_inputs(cfg, 2, (5.0, 5.0, 7.5), "cpu")
    assert set(extra) == ({"class_labels", "spacing_tensor"} if cfg.arch == "maisi" else set())
    with torch.no_grad():
        out = unet(x, t, context=ctx, **extra)
        # the mask encoder's input after ctrag's mask_pool: with one embedding level it stays on the latent grid
        cond = torch.zeros(2, mask_channels(CN, 5), 8, 8, 4)
        down, mid = cn(x, t, controlnet_cond=cond, context=ctx, **controlnet_extra_inputs(extra))
    assert out.shape == x.shape
    assert mid.shape[:2] == (2, cfg.channels[-1]) and len(down) >= len(cfg.channels)


def test_mask_channels_one_per_label_plus_background_or_the_bits_of_an_id() -> None:
    assert mask_channels(ControlNetConfig(), 5) == 6
    assert mask_channels(ControlNetConfig(mask_encoding="binary", binary_bits=8), 117) == 8
    cn = build_controlnet(TINY_UNET, ControlNetConfig(mask_encoding="binary", binary_bits=8, mask_pool=2,
                          conditioning_embedding_num_channels=(8,)), 117)  # fmt: skip
    assert cn.controlnet_cond_embedding.conv_in.conv.in_channels == 8


def test_maisi_only_inputs_are_refused_for_the_core_unet_and_region_inputs_always() -> None:
    with pytest.raises(ConfigError, match="only for arch 'maisi'"):
        build_unet(dataclasses.replace(TINY_UNET, include_spacing_input=True))
    with pytest.raises(ConfigError, match="body-region index inputs"):
        build_unet(dataclasses.replace(MAISI_UNET, include_top_region_index_input=True))


def test_extra_inputs_carry_the_class_label_and_spacing_in_hundredths_of_a_mm() -> None:
    assert extra_unet_inputs(TINY_UNET, 3, None, "cpu") == {}
    extra = extra_unet_inputs(dataclasses.replace(MAISI_UNET, class_label=2), 2, (0.75, 0.75, 1.5), "cpu")
    assert extra["class_labels"].tolist() == [2, 2] and extra["class_labels"].dtype == torch.long
    assert extra["spacing_tensor"].tolist() == [[75.0, 75.0, 150.0]] * 2
    assert set(controlnet_extra_inputs(extra)) == {"class_labels"}  # the ControlNet has no spacing input
    with pytest.raises(ValueError, match="spacing="):
        extra_unet_inputs(MAISI_UNET, 1, None, "cpu")


def test_seeded_init_makes_weights_a_function_of_the_seed_and_leaves_the_global_rng() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    with seeded_init(7):
        a = build_unet(TINY_UNET)
    with seeded_init(7):
        b = build_unet(TINY_UNET)
    with seeded_init(8):
        c = build_unet(TINY_UNET)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_flash_attention_falls_back_to_standard_attention_without_cuda(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = dataclasses.replace(TINY_UNET, use_flash_attention=True)
    with caplog.at_level(logging.INFO, logger=networks.__name__):
        unet = build_unet(cfg)  # MONAI itself refuses flash attention without CUDA
    assert type(unet) is DiffusionModelUNet and "CUDA is unavailable" in caplog.text
    assert (
        networks._unet_common(dataclasses.replace(TINY_UNET, use_flash_attention=False))["use_flash_attention"] is False
    )


def test_to_channels_last_lays_out_every_3d_convolution_ndhwc() -> None:
    unet = to_channels_last(build_unet(TINY_UNET))
    convs = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv3d) and m.weight.shape[2:] != (1, 1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)


def _saved_bytes_and_grads(objective: torch.nn.Module, batch: dict) -> tuple[float, int, dict[str, torch.Tensor]]:  # type: ignore[type-arg]
    """Loss, bytes autograd keeps for the backward pass, and the gradients of one forward/backward."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    objective.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = objective(**batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in objective.named_parameters() if p.grad is not None}
    return float(loss.detach()), saved[0], grads


def test_grad_checkpointing_gives_the_same_loss_and_gradients_with_fewer_saved_activations() -> None:
    from ctrag.generation.training.objectives import FlowObjective

    with seeded_init(0):
        unet, cn = build_unet(TINY_UNET), build_controlnet(TINY_UNET, CN, num_labels=5)
    with torch.no_grad():  # MONAI zero-initialises the zero convs and output projections: give every path weights
        for p in [*unet.parameters(), *cn.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    objective = FlowObjective(unet, torch.zeros(1, 1, 24), False, "l1", controlnet=cn)
    g = torch.Generator().manual_seed(1)
    batch = {
        "x_t": torch.randn(2, 4, 8, 8, 4, generator=g),
        "timesteps": torch.tensor([700.0, 150.0]),
        "target": torch.randn(2, 4, 8, 8, 4, generator=g),
        "context": torch.randn(2, 1, 24, generator=g),
        "drop": torch.tensor([False, True]),
        "mask_input": torch.rand(2, mask_channels(CN, 5), 8, 8, 4, generator=g),
    }
    loss, plain_bytes, plain = _saved_bytes_and_grads(objective, batch)
    n = networks.enable_grad_checkpointing(unet) + networks.enable_grad_checkpointing(cn)
    assert n == 2 + 1 + 2 + 2 + 1  # UNet: 2 down, mid, 2 up; ControlNet: 2 down, mid
    assert set(unet.state_dict()) == set(build_unet(TINY_UNET).state_dict())  # weights and keys untouched
    ck_loss, ck_bytes, ck = _saved_bytes_and_grads(objective, batch)
    assert ck_loss == pytest.approx(loss, rel=1e-6) and set(ck) == set(plain)
    assert sum(float(v.abs().sum()) for v in plain.values()) > 0
    for k, v in plain.items():
        torch.testing.assert_close(ck[k], v, rtol=1e-5, atol=1e-7, msg=k)
    assert ck_bytes < 0.5 * plain_bytes, (ck_bytes, plain_bytes)
    with torch.no_grad():  # sampling (no gradients) runs the blocks as before
        assert float(objective(**batch)) == pytest.approx(loss, rel=1e-6)
    with pytest.raises(ConfigError, match="none of the blocks"):
        networks.enable_grad_checkpointing(torch.nn.Linear(2, 2))
