"""The shared text/volume space: contrastive loss, the CLIP training module and ``SharedSpaceEncoder``
(save/load, refusal of another text encoder), on a real preprocessed CT and real MiniLM vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctrag.encoders.clip import SharedSpaceEncoder, VolumeTextCLIP, contrastive_loss, read_tower_info
from ctrag.encoders.volume import VolumeTowerConfig
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError

from .conftest import PRE, SMALL, make_tower


def test_shared_space_encoder_roundtrip(tmp_path, minilm, real_ct):
    enc = SharedSpaceEncoder(minilm, make_tower(), PRE)
    assert enc.dim == 384 and enc.supports_volume and enc.supports_text
    vol = enc.encode_volume(real_ct.tensor[None])
    assert vol.shape == (1, 384) and vol.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vol, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(enc.encode_text(["left lung mass"]), minilm.encode_text(["left lung mass"]))
    enc.save_pretrained(tmp_path / "enc")
    loaded = SharedSpaceEncoder.from_pretrained(tmp_path / "enc", minilm)
    assert loaded.fingerprint == enc.fingerprint
    np.testing.assert_allclose(loaded.encode_volume(real_ct.tensor[None]), vol, atol=1e-6)


def test_shared_space_refuses_other_text_encoder(tmp_path, minilm, minilm_chunk):
    SharedSpaceEncoder(minilm, make_tower(), PRE).save_pretrained(tmp_path / "enc")
    with pytest.raises(CheckpointMismatchError, match="trained against text encoder"):
        SharedSpaceEncoder.from_pretrained(tmp_path / "enc", minilm_chunk)
    with pytest.raises(CheckpointMismatchError, match="embeds into 32 dims"):
        SharedSpaceEncoder(
            minilm, make_tower(cfg=VolumeTowerConfig(channels=(8,), strides=(2,), num_groups=4, embed_dim=32)), PRE
        )
    with pytest.raises(WeightsNotFoundError, match=r"lacks encoder_config\.json"):
        SharedSpaceEncoder.from_pretrained(tmp_path, minilm)


def test_contrastive_loss_properties():
    gen = torch.Generator().manual_seed(0)
    txt = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    aligned, logits = contrastive_loss(txt.clone(), txt, scale)
    shuffled, _ = contrastive_loss(txt[torch.tensor([1, 2, 3, 4, 5, 0])], txt, scale)
    assert logits.shape == (6, 6) and aligned < 0.1 < shuffled
    # uniform similarities -> log(n)
    flat, _ = contrastive_loss(torch.ones(4, 3) / math.sqrt(3), torch.ones(4, 3) / math.sqrt(3), torch.tensor(0.0))
    assert abs(float(flat) - math.log(4)) < 1e-5
    # rows sharing an id are all positives (target 1/2 each); checked against the formula written out here
    vol = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    ids = torch.tensor([0, 0, 1, 2])
    got, logits = contrastive_loss(vol, txt[:4], torch.tensor(2.0), ids)
    target = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    v2t = -(target * logits.log_softmax(1)).sum(1).mean()
    t2v = -(target * logits.t().log_softmax(1)).sum(1).mean()
    assert abs(float(got) - float(0.5 * (v2t + t2v))) < 1e-6
    plain, _ = contrastive_loss(vol, txt[:4], torch.tensor(2.0))
    assert abs(float(plain) - float(got)) > 1e-4
    with pytest.raises(InvalidInputError, match="at least 2 pairs"):
        contrastive_loss(txt[:1], txt[:1], scale)


def test_clip_module_gradients_reach_tower_and_temperature(real_ct, minilm):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VolumeTextCLIP(SMALL)
    vols = torch.stack([real_ct.tensor, real_ct.tensor.flip(1)])
    txt = torch.from_numpy(minilm.encode_text(["left lung mass", "normal chest"]))
    loss, logits, emb = model(vols, txt)
    loss.backward()
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad.abs()) > 0
    assert all(p.grad is not None for p in model.tower.parameters() if p.requires_grad)
    assert emb.shape == (2, 384) and logits.shape == (2, 2)


def test_tower_info_records_what_the_tower_needs(tmp_path, minilm):
    """``encoder_config.json`` carries tower, preprocessing and the text encoder it was trained against."""
    enc = SharedSpaceEncoder(minilm, make_tower(), PRE)
    enc.save_pretrained(tmp_path / "enc")
    info = read_tower_info(tmp_path / "enc")
    assert info.tower == SMALL and info.preprocess == PRE
    assert info.text_encoder["fingerprint"] == minilm.fingerprint and info.text_encoder["name"] == minilm.name
    (tmp_path / "enc" / "volume_tower.pt").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"lacks volume_tower\.pt"):
        read_tower_info(tmp_path / "enc")


def test_fingerprint_follows_tower_weights_and_text_encoder(minilm, minilm_chunk):
    a = SharedSpaceEncoder(minilm, make_tower(seed=0), PRE)
    assert a.fingerprint == SharedSpaceEncoder(minilm, make_tower(seed=0), PRE).fingerprint
    assert a.fingerprint != SharedSpaceEncoder(minilm, make_tower(seed=1), PRE).fingerprint
    assert a.fingerprint != SharedSpaceEncoder(minilm_chunk, make_tower(seed=0), PRE).fingerprint
    assert a.text_fingerprint == minilm.fingerprint


def test_contrastive_loss_refuses_mismatched_batches():
    a = torch.nn.functional.normalize(torch.ones(3, 4), dim=-1)
    with pytest.raises(InvalidInputError, match=r"shapes \(3, 4\) vs \(2, 4\)"):
        contrastive_loss(a, a[:2], torch.tensor(1.0))
