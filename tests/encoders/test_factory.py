"""create_encoder / registry / pretrained tags: the happy paths and every error message a user can hit."""

from __future__ import annotations

import pytest

from ctrag.encoders import create_encoder, get_model_config, list_encoders, list_pretrained
from ctrag.encoders.pretrained import resolve_pretrained
from ctrag.errors import ConfigError, InvalidInputError, WeightsNotFoundError

from .conftest import write_tiny_bert


def test_registry_lists_shipped_architectures():
    names = list_encoders()
    assert {"minilm", "hf-text", "ct-clip", "ctrag-volume-tiny", "ctrag-volume-base"} <= set(names)
    cfg = get_model_config("ct-clip")
    assert cfg["type"] == "ct-clip" and cfg["vision"]["patch_size"] == 20 and cfg["embed_dim"] == 512
    cfg["embed_dim"] = 0  # a copy: the registry itself cannot be changed by callers
    assert get_model_config("ct-clip")["embed_dim"] == 512
    assert ("minilm", "packaged") in list_pretrained() and ("ct-clip", "ct-rate-v2") in list_pretrained()


def test_unknown_encoder_lists_known_ones():
    with pytest.raises(InvalidInputError, match=r"unknown encoder 'clip-xl'; known encoders: \[.*'minilm'"):
        create_encoder("clip-xl")


def test_unknown_setting_lists_accepted_ones():
    with pytest.raises(InvalidInputError, match=r"unknown setting\(s\) \['pooling'\]; accepted: .*long_text"):
        create_encoder("minilm", pooling="cls")


def test_default_minilm_comes_from_verified_package(minilm):
    paths = resolve_pretrained("minilm", "packaged")
    assert (paths["model"] / "model.safetensors").is_file()
    assert create_encoder("minilm", weights="packaged").fingerprint == minilm.fingerprint


def test_local_folder_forms(minilm):
    folder = resolve_pretrained("minilm", "packaged")["model"]
    for spec in (str(folder), f"local-dir:{folder}"):
        enc = create_encoder(spec)
        assert enc.dim == 384
        # same weights + settings as the registered default -> same vectors
        cos = (enc.encode_text(["pleural effusion"]) @ minilm.encode_text(["pleural effusion"]).T)[0, 0]
        assert abs(float(cos) - 1) < 1e-5
    with pytest.raises(InvalidInputError, match="cannot be combined"):
        create_encoder(str(folder), weights="packaged")


def test_local_dir_detects_plain_hf_folder(tiny_bert_dir):
    enc = create_encoder(f"local-dir:{tiny_bert_dir}", pooling="cls")
    assert enc.dim == 32 and enc.encode_text(["left lung mass."]).shape == (1, 32)


def test_missing_paths_raise_weights_not_found_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(WeightsNotFoundError, match=str(missing)):
        create_encoder("hf-text", weights=missing)
    with pytest.raises(WeightsNotFoundError, match="has no default weights"):
        create_encoder("hf-text")
    with pytest.raises(WeightsNotFoundError, match=r"not a model folder"):
        create_encoder(f"local-dir:{tmp_path}")
    with pytest.raises(WeightsNotFoundError, match="no shipped weights"):
        create_encoder("ctrag-volume-tiny")


def test_ct_clip_tag_names_the_expected_local_path(tmp_path):
    expected = tmp_path / "ct-clip" / "CT-CLIP_v2.pt"
    with pytest.raises(WeightsNotFoundError) as info:
        create_encoder("ct-clip", weights_dir=tmp_path)
    assert str(expected) in str(info.value) and "never downloads" in str(info.value)


def test_architecture_json_file_and_bad_type(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "telepathy"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="'type' must be one of"):
        get_model_config(bad)
    with pytest.raises(InvalidInputError, match="not found"):
        get_model_config(tmp_path / "missing.json")


def test_hf_folder_without_weights_is_reported(tmp_path):
    write_tiny_bert(tmp_path / "cfg-only", save_weights=False)
    with pytest.raises(OSError):
        create_encoder("hf-text", weights=tmp_path / "cfg-only")
