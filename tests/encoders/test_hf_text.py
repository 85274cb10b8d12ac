"""Hugging Face text loader from a local folder, with a tiny 2-layer BERT written by the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ctrag.encoders import create_encoder
from ctrag.errors import CheckpointMismatchError, InvalidInputError

from .conftest import write_tiny_bert

TEXTS = ["the left lung mass is present.", "no pleural effusion.", "normal heart, no nodule in the chest ct."]


def _manual(folder, texts, pooling, proj=None):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding at all
            enc = tok([t], return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            v = h[0] if pooling == "cls" else h.mean(0)
            if proj is not None:
                v = proj(v)
            out.append(torch.nn.functional.normalize(v, dim=0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_matches_a_manual_forward(tiny_bert_dir, pooling):
    enc = create_encoder("hf-text", weights=tiny_bert_dir, pooling=pooling, batch_size=2)
    got = enc.encode_text(TEXTS)
    np.testing.assert_allclose(got, _manual(tiny_bert_dir, TEXTS, pooling), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_mean_and_cls_pooling_differ(tiny_bert_dir):
    a = create_encoder("hf-text", weights=tiny_bert_dir, pooling="mean").encode_text(TEXTS)
    b = create_encoder("hf-text", weights=tiny_bert_dir, pooling="cls").encode_text(TEXTS)
    assert np.max(np.abs(a - b)) > 1e-2


def test_projection_is_loaded_strictly(tiny_bert_dir, tmp_path):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 32, generator=gen)
    good = tmp_path / "proj.safetensors"
    save_file({"weight": weight}, str(good))
    enc = create_encoder("hf-text", weights=tiny_bert_dir, projection_path=good)
    assert enc.dim == 16
    proj = torch.nn.Linear(32, 16, bias=False)
    proj.weight.data.copy_(weight)
    np.testing.assert_allclose(enc.encode_text(TEXTS), _manual(tiny_bert_dir, TEXTS, "mean", proj), atol=1e-5)

    extra = tmp_path / "extra.safetensors"
    save_file({"weight": weight, "bias": torch.zeros(16)}, str(extra))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \['bias'\]"):
        create_encoder("hf-text", weights=tiny_bert_dir, projection_path=extra)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.randn(16, 31)}, wrong)
    with pytest.raises(CheckpointMismatchError, match=r"shape \(16, 31\)"):
        create_encoder("hf-text", weights=tiny_bert_dir, projection_path=wrong)
    with pytest.raises(CheckpointMismatchError, match="maps to 16 dims, the config says 8"):
        create_encoder("hf-text", weights=tiny_bert_dir, projection_path=good, projection_dim=8)
    with pytest.raises(InvalidInputError, match="without projection_path"):
        create_encoder("hf-text", weights=tiny_bert_dir, projection_dim=8)


def test_bad_pooling_is_rejected(tiny_bert_dir):
    with pytest.raises(InvalidInputError, match="pooling must be"):
        create_encoder("hf-text", weights=tiny_bert_dir, pooling="max")


def test_chunk_mean_with_a_small_window(tmp_path):
    write_tiny_bert(tmp_path / "m")
    long = "the left lung mass is present. no pleural effusion. normal heart. no nodule in the chest ct. " * 3
    trunc = create_encoder("hf-text", weights=tmp_path / "m", max_length=16)
    chunk = create_encoder("hf-text", weights=tmp_path / "m", max_length=16, long_text="chunk-mean")
    assert trunc.max_tokens == 14
    a, b = trunc.encode_text([long, "no effusion."]), chunk.encode_text([long, "no effusion."])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)  # fits the window: identical
    assert float(a[0] @ b[0]) < 0.9999  # did not fit: windows averaged
