"""Rectified-flow scheduler contract, batched guidance, determinism, and equality with MONAI's inferer."""

from __future__ import annotations

import json

import pytest
import torch

from ctrag.generation.config import ControlNetConfig, SchedulerConfig
from ctrag.generation.controlnet import CONTROL_ONLY_PREFIXES, controlnet_from_unet, encode_control, encode_mask
from ctrag.generation.networks import build_unet
from ctrag.generation.sampler import GuidanceInputs, RectifiedFlowSampler, sample_latents
from tests.generation.conftest import TINY_UNET


@pytest.fixture(scope="module")
def nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(3)
    unet = build_unet(TINY_UNET).eval()
    for p in unet.out.parameters():
        torch.nn.init.normal_(p, std=0.2)
    cn = controlnet_from_unet(unet, TINY_UNET, ControlNetConfig(conditioning_embedding_num_channels=(8, 16)), 5).eval()
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if name.startswith(CONTROL_ONLY_PREFIXES):
                p.normal_(std=0.05)
    return unet, cn


def _inputs(cn: torch.nn.Module | None = None) -> tuple[torch.Tensor, GuidanceInputs, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 4, 8, 8, 4, generator=g)
    ctx = torch.randn(1, 1, 24, generator=g)
    labels = torch.randint(0, 6, (1, 1, 16, 16, 8), generator=g)
    mask_input = encode_mask(labels, 5)
    control = encode_control(cn, mask_input) if cn is not None else None
    return noise, GuidanceInputs(ctx, torch.zeros_like(ctx), {}, control), mask_input


def test_sampler_config_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sampler = RectifiedFlowSampler(use_timestep_transform=True, sample_method="uniform", base_img_size_numel=4096)
    path = sampler.save_config(tmp_path)
    data = json.loads(path.read_text())
    assert data["_class_name"] == "RectifiedFlowSampler" and data["use_timestep_transform"] is True
    again = RectifiedFlowSampler.from_pretrained(tmp_path)
    assert again.config == sampler.config
    for s in (sampler, again):
        s.set_timesteps(30, latent_shape=(4, 128, 128, 32))
    assert torch.equal(sampler.timesteps, again.timesteps) and len(sampler.timesteps) == 30


def test_step_contract_and_step_sizes() -> None:
    sampler = RectifiedFlowSampler.from_config(SchedulerConfig())
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.step(torch.zeros(1), 1000.0, torch.zeros(1))
    sampler.set_timesteps(4)
    assert [float(t) for t in sampler.timesteps] == [1000.0, 750.0, 500.0, 250.0]
    x = torch.zeros(2)
    for t in sampler.timesteps:  # constant unit velocity integrates to exactly 1 over the whole path
        x = sampler.step(torch.ones(2), t, x).prev_sample
    assert torch.allclose(x, torch.ones(2))


def test_training_draws_depend_only_on_the_generator() -> None:
    sampler = RectifiedFlowSampler.from_config(SchedulerConfig(sample_method="logit-normal"))
    a = sampler.sample_timesteps(64, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # global RNG state must not matter
    b = sampler.sample_timesteps(64, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) < 1000
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([0.0, 1000.0])
    noisy = sampler.add_noise(x0.view(2, 3, 1, 1), noise.view(2, 3, 1, 1), t).view(2, 3)
    assert torch.allclose(noisy[0], x0[0]) and torch.allclose(noisy[1], noise[1])


def test_cfg_one_equals_the_conditional_prediction(nets) -> None:  # type: ignore[no-untyped-def]
    unet, _ = nets
    noise, inputs, _ = _inputs()
    sampler = RectifiedFlowSampler()
    with torch.no_grad():
        guided = sample_latents(unet, sampler, noise, inputs, steps=5, cfg=1.0)
        # reference: the plain conditional Euler integration, written out
        sampler.set_timesteps(5)
        x = noise
        for t in sampler.timesteps:
            v = unet(x, torch.full((1,), float(t)), context=inputs.context)
            x = sampler.step(v, t, x).prev_sample
    assert torch.equal(guided, x)


def test_batched_guidance_equals_separate_passes(nets) -> None:  # type: ignore[no-untyped-def]
    unet, cn = nets
    noise, inputs, _ = _inputs(cn)
    sampler = RectifiedFlowSampler()
    with torch.no_grad():
        batched = sample_latents(unet, sampler, noise, inputs, steps=4, cfg=5.0, controlnet=cn, control_scale=0.8)
        sampler.set_timesteps(4)
        x = noise
        from ctrag.generation.controlnet import controlnet_residuals

        for t in sampler.timesteps:
            tt = torch.full((1,), float(t))
            out = []
            for ctx in (inputs.null_context, inputs.context):
                down, mid = controlnet_residuals(cn, x, tt, inputs.control, context=ctx, scale=0.8)
                out.append(
                    unet(x, tt, context=ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
                )
            v = out[0] + 5.0 * (out[1] - out[0])
            x = sampler.step(v, t, x).prev_sample
    assert torch.allclose(batched, x, atol=1e-5)
    assert float((batched - noise).abs().mean()) > 0.01


def test_same_seed_same_latents_other_seed_differs(nets) -> None:  # type: ignore[no-untyped-def]
    unet, cn = nets
    _, inputs, _ = _inputs(cn)
    runs = []
    for seed in (11, 11, 12):
        noise = torch.randn(1, 4, 8, 8, 4, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            runs.append(sample_latents(unet, RectifiedFlowSampler(), noise, inputs, steps=3, cfg=3.0, controlnet=cn))
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_control_scale_zero_equals_sampling_without_controlnet(nets) -> None:  # type: ignore[no-untyped-def]
    unet, cn = nets
    noise, inputs, _ = _inputs(cn)
    with torch.no_grad():
        none = sample_latents(unet, RectifiedFlowSampler(), noise, inputs, steps=3, cfg=2.0)
        zero = sample_latents(
            unet, RectifiedFlowSampler(), noise, inputs, steps=3, cfg=2.0, controlnet=cn, control_scale=0.0
        )
        one = sample_latents(
            unet, RectifiedFlowSampler(), noise, inputs, steps=3, cfg=2.0, controlnet=cn, control_scale=1.0
        )
    assert torch.equal(none, zero) and not torch.allclose(none, one)


def test_equals_monai_controlnet_inferer(nets) -> None:  # type: ignore[no-untyped-def]
    """Same models, same noise: our loop and MONAI's ControlNetDiffusionInferer agree (zero null embedding).

    5 steps put every time on a whole number (1000, 800, ...), where MONAI's float16 + ``int()`` schedule is exact;
    at other step counts it drifts from the exact one (``test_step_sizes_sum_to_one``)."""
    from monai.inferers import ControlNetDiffusionInferer
    from monai.networks.schedulers import RFlowScheduler

    unet, cn = nets
    noise, inputs, mask_input = _inputs(cn)
    with torch.no_grad():
        ours = sample_latents(unet, RectifiedFlowSampler(), noise, inputs, steps=5, cfg=5.0, controlnet=cn)
        scheduler = RFlowScheduler(use_discrete_timesteps=False, sample_method="logit-normal")
        scheduler.set_timesteps(5)
        theirs = ControlNetDiffusionInferer(scheduler).sample(
            input_noise=noise, diffusion_model=unet, controlnet=cn, cn_cond=mask_input, scheduler=scheduler,
            conditioning=inputs.context, cfg=5.0, cfg_fill_value=0.0, verbose=False,
        )  # fmt: skip
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bf16_autocast_path_runs_and_stays_close(nets) -> None:  # type: ignore[no-untyped-def]
    """The GPU precision option, exercised on the CPU: same loop under bfloat16 autocast."""
    unet, cn = nets
    noise, inputs, _ = _inputs(cn)
    with torch.no_grad():
        ref = sample_latents(unet, RectifiedFlowSampler(), noise, inputs, steps=3, cfg=2.0, controlnet=cn)
        low = sample_latents(
            unet, RectifiedFlowSampler(), noise, inputs, steps=3, cfg=2.0, controlnet=cn, autocast_dtype=torch.bfloat16
        )
    assert low.dtype == torch.float32 and not torch.equal(low, ref)
    assert float((low - ref).abs().mean()) < 0.05 * float(ref.abs().mean()) + 1e-3


# ------------------------------------------------------------------------------------ one schedule (bug 2b)


def _latent_shape(preset: str) -> tuple[int, ...]:
    from ctrag.generation.config import load_generator_config

    cfg = load_generator_config(preset)
    return (cfg.vae.latent_channels, *(s // cfg.vae.downsample for s in cfg.sampler.output_shape))


@pytest.mark.parametrize("preset", ["tiny-cpu", "text2ct-512"])
def test_step_sizes_sum_to_one(preset: str) -> None:
    """30 steps cover the path from noise to data exactly once (MONAI's float16 + int() schedule: ~1.01)."""
    from ctrag.generation.config import load_generator_config

    cfg = load_generator_config(preset)
    sampler = RectifiedFlowSampler.from_config(cfg.sampler.scheduler)
    sampler.set_timesteps(cfg.sampler.steps, latent_shape=_latent_shape(preset))
    assert len(sampler.timesteps) == 30
    x = torch.zeros(1, dtype=torch.float32)
    for t in sampler.timesteps:  # unit velocity: the Euler steps must add up to exactly 1
        x = sampler.step(torch.ones(1), t, x).prev_sample
    assert float(x) == pytest.approx(1.0, abs=1e-6)
    assert float(sampler.step_sizes().sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool((sampler.step_sizes() > 0).all())


def test_training_timesteps_use_the_sampling_transform() -> None:
    """text2ct-512 samples with the resolution shift; training must draw its timesteps through the same shift."""
    from monai.networks.schedulers.rectified_flow import timestep_transform

    from ctrag.generation.config import load_generator_config

    scheduler = load_generator_config("text2ct-512").sampler.scheduler
    assert scheduler.use_timestep_transform
    sampler = RectifiedFlowSampler.from_config(scheduler)
    shape = _latent_shape("text2ct-512")
    drawn = sampler.sample_timesteps(256, torch.Generator().manual_seed(0), latent_shape=(2, *shape))
    raw = torch.rand(256, generator=torch.Generator().manual_seed(0)) * scheduler.num_train_timesteps
    numel = torch.tensor(float(shape[1] * shape[2] * shape[3]))
    expected = timestep_transform(raw, numel, scheduler.base_img_size_numel, 1.0, 1000, 3)
    assert torch.allclose(drawn, expected.float(), atol=1e-3)
    assert float((drawn - raw).abs().max()) > 50  # the shift is real at this latent size
    # the sampling schedule is the same map applied to the uniform grid
    sampler.set_timesteps(30, latent_shape=shape)
    grid = torch.tensor([1000.0 * (1 - i / 30) for i in range(30)])
    assert torch.allclose(sampler.timesteps, sampler.transform_timesteps(grid.double(), shape).float(), atol=1e-3)
    # tiny-cpu has no shift: training and sampling both use the plain times
    tiny = RectifiedFlowSampler.from_config(load_generator_config("tiny-cpu").sampler.scheduler)
    plain = tiny.sample_timesteps(8, torch.Generator().manual_seed(1), latent_shape=(8, 4, 16, 16, 8))
    assert torch.equal(plain, torch.rand(8, generator=torch.Generator().manual_seed(1)) * 1000)
