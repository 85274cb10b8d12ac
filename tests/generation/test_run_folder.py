"""Run folders: strict loading of MAISI / Text2CT-style checkpoints and ctrag component folders, and the text
encoder a run records. The import of external weights into a run folder that generates goes through ``ctrag
import-weights`` and is tested in tests/cli/test_cmd_generate.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctrag.config import config_to_dict
from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.generation.config import ControlNetConfig, DiffusionConfig, VAEConfig, load_generator_config
from ctrag.generation.networks import build_controlnet, build_unet, build_vae
from ctrag.generation.run_folder import (
    load_component,
    load_external_weights,
    load_vae_component,
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


# ---------------------------------------------------------------------------------------------- text encoder spec


@pytest.mark.parametrize("preset", ["tiny-cpu", "text2ct-512"])
def test_encoder_spec_reads_the_encoder_section_schema(preset: str) -> None:
    """Bug 2a: the spec came from keys the ``encoder`` schema does not have, so every preset fell back to MiniLM."""
    from ctrag.config import load_config
    from ctrag.encoders.config import EncoderConfig
    from ctrag.generation.run_folder import encoder_spec_from_config

    section = load_config(EncoderConfig, preset, section="encoder")
    spec = encoder_spec_from_config(preset)
    assert spec["name_or_path"] == section.text and spec["weights"] == section.text_weights
    assert spec["long_text"] == section.long_text
    other = encoder_spec_from_config({"encoder": {"text": "hf-text", "text_weights": "/models/bert"}})
    assert other["name_or_path"] == "hf-text" and other["weights"] == "/models/bert"


def test_text2ct_preset_names_a_768d_text_space(tmp_path: Path) -> None:
    """text2ct-512's UNet reads 768-d report embeddings: its encoder section builds a 768-d encoder (here a tiny
    local BERT with hidden size 768 in place of CXR-BERT), and the MiniLM default it used to get does not fit."""
    from ctrag.generation.config import load_generator_config
    from ctrag.generation.run_folder import create_text_encoder, encoder_spec_from_config
    from tests.encoders.conftest import write_tiny_bert

    dim = load_generator_config("text2ct-512").diffusion.cross_attention_dim
    assert dim == 768
    write_tiny_bert(tmp_path / "bert", hidden=768, layers=1)
    spec = encoder_spec_from_config("text2ct-512", [f"encoder.text_weights={tmp_path / 'bert'}"])
    assert spec["name_or_path"] == "hf-text"
    encoder = create_text_encoder(spec, "cpu")
    assert encoder.dim == dim and encoder.encode_text(["No pleural effusion."]).shape == (1, dim)
    tiny = encoder_spec_from_config("tiny-cpu")
    assert tiny["name_or_path"] == "minilm"
    assert load_generator_config("tiny-cpu").diffusion.cross_attention_dim == 384


def test_vae_from_another_image_space_is_refused_and_old_folders_still_load(tmp_path: Path, trained_run: Path) -> None:
    """The VAE records the image space (preprocess section) it was trained in; another spacing or HU window is
    refused, and folders written when the image space lived in ``vae.image`` are still read."""
    import shutil

    cfg = load_generator_config("tiny-cpu")
    load_vae_component(trained_run / "vae", cfg, "cpu")
    stored = json.loads((trained_run / "vae" / "config.json").read_text())
    assert stored["image_space"]["spacing"] == [4.0, 4.0, 4.0]
    assert stored["image_space"]["hu_window"] == [-1000.0, 1000.0]
    other = load_generator_config("tiny-cpu", ["preprocess.spacing=[3,3,3]"])
    with pytest.raises(CheckpointMismatchError, match="image space"):
        load_vae_component(trained_run / "vae", other, "cpu")
    legacy = tmp_path / "vae"
    shutil.copytree(trained_run / "vae", legacy)
    old = dict(stored)
    old.pop("image_space")
    old["config"] = {**stored["config"], "image": {"spacing": [4.0, 4.0, 4.0], "hu_min": -1000.0, "hu_max": 1000.0}}
    (legacy / "config.json").write_text(json.dumps(old))
    load_vae_component(legacy, cfg, "cpu")
    with pytest.raises(CheckpointMismatchError, match="image space"):
        load_vae_component(legacy, load_generator_config("tiny-cpu", ["preprocess.hu_window=[-1000,500]"]), "cpu")
    legacy_config = load_generator_config({"vae": {**config_to_dict(cfg.vae), "image": {"spacing": [5.0, 5.0, 5.0]}}})
    assert legacy_config.preprocess.spacing == (5.0, 5.0, 5.0)


def test_an_imported_run_takes_its_encoder_weights_at_load_time(tmp_path: Path) -> None:
    """import-weights records hf-text by name; ``--set encoder.text_weights=DIR`` supplies the local folder."""
    from ctrag.generation.run_folder import recorded_encoder_spec

    record = {"name_or_path": "hf-text", "weights": None, "fingerprint": None}
    spec = recorded_encoder_spec(record, ["encoder.text_weights=/models/cxr-bert", "sampler.steps=3"])
    assert spec == {"name_or_path": "hf-text", "weights": "/models/cxr-bert", "fingerprint": None}
    assert recorded_encoder_spec(record, ["encoder.long_text=chunk-mean"])["long_text"] == "chunk-mean"
    assert recorded_encoder_spec(record) == record
