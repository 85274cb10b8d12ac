"""Generator presets load as typed configs; inconsistent settings fail with messages naming the fields."""

from __future__ import annotations

import pytest

from ctrag.errors import ConfigError
from ctrag.generation.config import latent_shape, load_generator_config


def test_presets_describe_the_intended_models() -> None:
    tiny = load_generator_config("tiny-cpu")
    assert latent_shape(tiny, tiny.sampler.output_shape) == (4, 16, 16, 8)
    assert tiny.preprocess.spacing == (4.0, 4.0, 4.0) and tiny.diffusion.cross_attention_dim == 384
    paper = load_generator_config("text2ct-512")
    # RAG-Text2CT backbone: 4 latent channels, 4x compression (latent 4x128x128x32), UNet channels 64..512
    assert latent_shape(paper, paper.sampler.output_shape) == (4, 128, 128, 32)
    assert paper.diffusion.channels == (64, 128, 256, 512) and paper.diffusion.arch == "maisi"
    assert (paper.sampler.steps, paper.sampler.cfg, paper.sampler.control_scale) == (30, 5.0, 1.0)
    assert paper.sampler.sw_roi == (80, 80, 80) and paper.sampler.sw_overlap == pytest.approx(0.4)
    assert paper.train_controlnet.lr == pytest.approx(1e-5) and paper.train_controlnet.text_dropout == pytest.approx(
        0.1
    )
    # RAG-Text2CT trains the ControlNet 50 epochs, global batch 4 over 2 GPUs (2 per GPU), mixed precision
    tc = paper.train_controlnet
    assert (tc.epochs, tc.batch_size, tc.precision, tc.grad_checkpointing) == (50, 4, "bf16", True)
    assert tc.batch_size // (2 * tc.grad_accum_steps) == 2 and tc.steps_per_epoch == -(-27_514 // 4)  # ceil


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("diffusion.in_channels=8", "latent_channels"),
        ("controlnet.mask_pool=1", "VAE compression"),
        ("sampler.output_shape=[60,64,32]", "divisible by 16"),
        ("diffusion.cross_attention_dim=null", "with_conditioning"),
        ("sampler.control_start=0.8", "control_start"),
        ("train_vae.splits=[test]", "test"),
        ("preprocess.spacing=[0,4,4]", "spacing"),
        ("train_vae.learning_rate=1.0", "unknown key"),
    ],
)
def test_inconsistent_settings_are_refused(override: str, message: str) -> None:
    overrides = [override, "sampler.control_end=0.5"] if "control_start" in override else [override]
    with pytest.raises(ConfigError, match=message):
        load_generator_config("tiny-cpu", overrides)
