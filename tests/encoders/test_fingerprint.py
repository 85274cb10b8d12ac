"""Fingerprints change with weights and settings, not with paths or processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from ctrag.encoders import create_encoder
from ctrag.encoders.fingerprint import hash_weight_files, make_fingerprint
from ctrag.errors import WeightsNotFoundError

from .conftest import write_tiny_bert


def test_minilm_fingerprint_is_stable_across_processes(minilm):
    code = (
        "import os; os.environ['HF_HUB_OFFLINE']='1';"
        "from ctrag.encoders import create_encoder; print(create_encoder('minilm').fingerprint)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == minilm.fingerprint
    assert minilm.fingerprint.startswith("minilm@")


def test_settings_change_the_fingerprint(minilm, minilm_chunk):
    assert minilm.fingerprint != minilm_chunk.fingerprint
    shorter = create_encoder("minilm", max_seq_length=128)
    assert shorter.fingerprint not in (minilm.fingerprint, minilm_chunk.fingerprint)


def test_same_weights_elsewhere_same_fingerprint_changed_weights_differ(tmp_path):
    a_dir, b_dir, c_dir = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_tiny_bert(a_dir, seed=0)
    shutil.copytree(a_dir, b_dir)
    write_tiny_bert(c_dir, seed=1)  # same architecture and tokenizer, other weights
    fa = create_encoder("hf-text", weights=a_dir).fingerprint
    assert create_encoder("hf-text", weights=b_dir).fingerprint == fa
    assert create_encoder("hf-text", weights=c_dir).fingerprint != fa
    assert create_encoder("hf-text", weights=a_dir, pooling="cls").fingerprint != fa


def test_documentation_files_do_not_count(tmp_path):
    write_tiny_bert(tmp_path / "m")
    before = hash_weight_files([tmp_path / "m"])
    (tmp_path / "m" / "README.md").write_text("model card edited", encoding="utf-8")
    assert hash_weight_files([tmp_path / "m"]) == before
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({**json.loads((tmp_path / "m" / "config.json").read_text()), "hidden_dropout_prob": 0.2})
    )
    assert hash_weight_files([tmp_path / "m"]) != before


def test_make_fingerprint_depends_on_every_part():
    base = make_fingerprint("x", {"a": 1}, {"w": "00"})
    assert base == make_fingerprint("x", {"a": 1}, {"w": "00"})
    assert (
        len(
            {
                base,
                make_fingerprint("y", {"a": 1}, {"w": "00"}),
                make_fingerprint("x", {"a": 2}, {"w": "00"}),
                make_fingerprint("x", {"a": 1}, {"w": "01"}),
            }
        )
        == 4
    )


def test_missing_weights_cannot_be_fingerprinted(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        hash_weight_files([tmp_path / "nope"])


def test_tower_fingerprint_follows_weights(minilm):
    from ctrag.data.transforms import PreprocessConfig
    from ctrag.encoders.clip import SharedSpaceEncoder
    from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig

    cfg = VolumeTowerConfig(channels=(8, 16), strides=(2, 2), num_groups=4, head_hidden=32, embed_dim=384)
    tower = VolumeTower(cfg)
    pre = PreprocessConfig(spacing=(4.0, 4.0, 4.0), size=(64, 64, 32))
    enc = SharedSpaceEncoder(minilm, tower, pre)
    fp = enc.fingerprint
    assert SharedSpaceEncoder(minilm, tower, pre).fingerprint == fp
    with torch.no_grad():
        next(tower.parameters()).add_(1e-3)
    assert SharedSpaceEncoder(minilm, tower, pre).fingerprint != fp
    other_pre = PreprocessConfig(spacing=(5.0, 5.0, 5.0), size=(64, 64, 32))
    assert (
        SharedSpaceEncoder(minilm, tower, other_pre).fingerprint != SharedSpaceEncoder(minilm, tower, pre).fingerprint
    )
