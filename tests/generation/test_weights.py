"""Loading MAISI / Text2CT-style checkpoints and ctrag component folders, strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctrag.config import config_to_dict
from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.generation.config import ControlNetConfig, DiffusionConfig, VAEConfig
from ctrag.generation.networks import build_controlnet, build_unet, build_vae
from ctrag.generation.weights import (
    load_component,
    load_external_weights,
    map_state_dict,
    save_component,
)

# Same structure as the Text2CT / RAG-Text2CT configs (MAISI classes, spacing + modality inputs, resblock up/down,
# cross-attention), at a size a unit test can build in a second.
MAISI_UNET = DiffusionConfig(
    arch="maisi",
    channels=(16, 32, 32),
    attention_levels=(False, True, True),
    num_res_blocks=(1, 1, 1),
    num_head_channels=(0, 16, 16),
    norm_num_groups=8,
    cross_attention_dim=24,
    num_class_embeds=8,
    include_spacing_input=True,
    resblock_updown=True,
)
MAISI_VAE = VAEConfig(arch="maisi", channels=(8, 16, 16), num_res_blocks=(1, 1, 1), norm_num_groups=8, num_splits=2)
MAISI_CN = ControlNetConfig(mask_encoding="binary", binary_bits=8, conditioning_embedding_num_channels=(8, 16, 16))


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename MONAI-core keys to the older MONAI Generative attention names, as legacy checkpoints store them."""
    out = {}
    for k, v in state.items():
        k2 = k.replace(".attn.to_q.", ".to_q.").replace(".attn.to_k.", ".to_k.").replace(".attn.to_v.", ".to_v.")
        k2 = k2.replace(".attn.out_proj.", ".proj_attn.")
        if "transformer_blocks" in k2:
            k2 = k2.replace(".out_proj.", ".to_out.0.")
        out[k2] = v
    return out


def test_text2ct_style_unet_checkpoint_loads_with_key_mapping(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_unet(MAISI_UNET)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(std=0.02)
    # DDP prefix + container dict + metadata, the way MAISI/Text2CT training scripts save diffusion checkpoints
    ckpt = {
        "unet_state_dict": {f"module.{k}": v for k, v in _legacy_names(source.state_dict()).items()},
        "scale_factor": torch.tensor(1.2345),
        "epoch": 273,
    }
    path = tmp_path / "diff_unet_ckpt.pt"
    torch.save(ckpt, path)
    target = build_unet(MAISI_UNET)
    meta = load_external_weights(target, path)
    assert meta["scale_factor"] == pytest.approx(1.2345) and meta["epoch"] == 273
    for (k, a), (k2, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_maisi_vae_and_controlnet_checkpoints_load(tmp_path: Path) -> None:
    torch.manual_seed(1)
    for name, make, container in (
        ("vae", lambda: build_vae(MAISI_VAE), None),
        ("controlnet", lambda: build_controlnet(MAISI_UNET, MAISI_CN, 117), "controlnet_state_dict"),
    ):
        source = make()
        with torch.no_grad():
            for p in source.parameters():
                p.normal_(std=0.02)
        state = {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}
        torch.save(state if container is None else {container: state}, tmp_path / f"{name}.pt")
        target = make()
        load_external_weights(target, tmp_path / f"{name}.pt")
        assert all(
            torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
        )


def test_missing_unexpected_and_shape_mismatched_keys_are_errors(tmp_path: Path) -> None:
    source = build_unet(MAISI_UNET).state_dict()
    cases = {
        "missing": {k: v for i, (k, v) in enumerate(source.items()) if i != 3},
        "unexpected": {**source, "extra_head.weight": torch.zeros(3)},
        "shape": {k: (v[:1] if k.endswith("conv_in.conv.weight") else v) for k, v in source.items()},
    }
    for what, state in cases.items():
        torch.save({"unet_state_dict": state}, tmp_path / f"{what}.pt")
        with pytest.raises(CheckpointMismatchError, match="does not fit"):
            load_external_weights(build_unet(MAISI_UNET), tmp_path / f"{what}.pt")


def test_pickled_objects_are_refused_and_missing_files_named(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "pickle.pt"  # training scripts sometimes pickle their argparse namespace into checkpoints
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointMismatchError, match="weights_only"):
        load_external_weights(build_vae(MAISI_VAE), path)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_external_weights(build_vae(MAISI_VAE), tmp_path / "nope.pt")


def test_map_state_dict_keeps_unknown_keys_for_the_strict_check() -> None:
    mapped = map_state_dict(
        {"module.a.attn.to_q.weight": torch.zeros(1), "module.junk": torch.zeros(1)}, ["a.attn.to_q.weight"]
    )
    assert set(mapped) == {"a.attn.to_q.weight", "junk"}


def test_component_from_another_config_is_refused(tmp_path: Path) -> None:
    cfg = VAEConfig()
    vae = build_vae(cfg)
    save_component(tmp_path / "vae", "vae", vae, config_to_dict(cfg))
    stored = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert stored["component"] == "vae" and stored["config"]["channels"] == [8, 16, 32]
    load_component(tmp_path / "vae", "vae", build_vae(cfg), config_to_dict(cfg))  # same config: fine
    other = VAEConfig(channels=(8, 16, 16))
    with pytest.raises(CheckpointMismatchError, match=r"channels\[2\]|channels: checkpoint"):
        load_component(tmp_path / "vae", "vae", build_vae(other), config_to_dict(other))
    with pytest.raises(CheckpointMismatchError, match="holds a 'vae' component"):
        load_component(tmp_path / "vae", "unet", build_vae(cfg), None)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_component(tmp_path / "missing", "vae", build_vae(cfg), None)
