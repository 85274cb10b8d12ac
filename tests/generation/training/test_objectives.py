"""Objectives: the VAE loss and the rectified-flow velocity loss, and what their batch preparation draws."""

from __future__ import annotations

import torch

from ctrag.generation.config import load_generator_config
from ctrag.generation.networks import build_unet, build_vae
from ctrag.generation.sampler import RectifiedFlowSampler
from ctrag.generation.training.engine import sample_generator
from ctrag.generation.training.objectives import FlowObjective, VAEObjective, flow_prepare_batch, vae_prepare_batch
from tests.generation.conftest import TINY_UNET, tiny_config


def test_vae_loss_is_reconstruction_plus_kl_and_the_edge_term_adds(training_cases) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config()
    torch.manual_seed(0)
    vae = build_vae(cfg.vae)
    image = torch.from_numpy(training_cases[0].image[:32, :32, :16].copy())[None, None]
    batch = vae_prepare_batch(cfg, cfg.train_vae, torch.contiguous_format)({"image": image}, torch.device("cpu"),
                                                                            [sample_generator(0, 0, 0)])  # fmt: skip
    assert batch["eps"].shape == (1, 4, 8, 8, 4)
    with torch.no_grad():
        plain = VAEObjective(vae, 0.0, 0.0, 0.6)(**batch)
        with_kl = VAEObjective(vae, 1.0, 0.0, 0.6)(**batch)
        with_edges = VAEObjective(vae, 0.0, 1.0, 0.6)(**batch)
    assert plain.ndim == 0 and float(with_kl) > float(plain) and float(with_edges) > float(plain)


def test_flow_loss_uses_the_null_embedding_for_dropped_text() -> None:
    torch.manual_seed(1)
    unet = build_unet(TINY_UNET).eval()
    with torch.no_grad():  # MONAI zero-initialises the output and attention projections: give them weights
        for p in unet.parameters():
            p.normal_(std=0.1)
    null = torch.zeros(1, 1, 24)
    objective = FlowObjective(unet, null, learn_null=False, loss="l1")
    g = torch.Generator().manual_seed(0)
    x, target, ctx = (
        torch.randn(2, 4, 8, 8, 4, generator=g),
        torch.randn(2, 4, 8, 8, 4, generator=g),
        torch.randn(2, 1, 24, generator=g),
    )
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        dropped = objective(x, t, target, context=ctx, drop=torch.tensor([True, True]))
        as_null = objective(x, t, target, context=torch.zeros_like(ctx), drop=torch.tensor([False, False]))
        kept = objective(x, t, target, context=ctx, drop=torch.tensor([False, False]))
    assert torch.equal(dropped, as_null) and not torch.equal(dropped, kept)
    mse = FlowObjective(unet, null, learn_null=True, loss="mse")
    assert isinstance(mse.null_embedding, torch.nn.Parameter)


def test_flow_batches_draw_noise_timesteps_and_drops_from_the_sample_generators() -> None:
    cfg = load_generator_config("tiny-cpu")
    tc = cfg.train_diffusion
    sampler = RectifiedFlowSampler.from_config(cfg.sampler.scheduler)
    contexts = torch.randn(3, 1, 384)
    has_text = torch.tensor([True, True, False])
    prepare = flow_prepare_batch(cfg, tc, contexts, has_text, sampler, 2.0, False, torch.contiguous_format)
    batch = {"latents": torch.randn(4, 4, 16, 16, 8), "case_index": torch.tensor([0, 1, 2, 2])}
    a = prepare(batch, torch.device("cpu"), [sample_generator(0, 7, i) for i in range(4)])
    b = prepare(batch, torch.device("cpu"), [sample_generator(0, 7, i) for i in range(4)])
    assert all(torch.equal(a[k], b[k]) for k in ("x_t", "timesteps", "target", "drop"))
    assert bool(a["drop"][2]) and bool(a["drop"][3])  # cases without text always train the null embedding
    assert float(a["timesteps"].min()) >= 0 and float(a["timesteps"].max()) < 1000
    # x_t = (1 - t/T) x0 + (t/T) noise and the target is x0 - noise
    x0 = batch["latents"] * 2.0
    noise = x0 - a["target"]
    w = (a["timesteps"] / 1000).view(-1, 1, 1, 1, 1)
    assert torch.allclose(a["x_t"], (1 - w) * x0 + w * noise, atol=1e-5)
