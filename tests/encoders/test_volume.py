"""Volume tower on real preprocessed CTs, the shared-space encoder, and the contrastive loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctrag.data.transforms import PreprocessConfig
from ctrag.encoders.clip import SharedSpaceEncoder, VolumeTextCLIP, contrastive_loss
from ctrag.encoders.preprocess import load_prepared
from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError

PRE = PreprocessConfig(spacing=(4.0, 4.0, 4.0), size=(64, 64, 32))
SMALL = VolumeTowerConfig(channels=(8, 16, 32), strides=(2, 2, 2), subunits=1, num_groups=4, head_hidden=64,
                          embed_dim=384)  # fmt: skip


@pytest.fixture(scope="module")
def real_ct(lowres_chest_ct):
    prepared = load_prepared(lowres_chest_ct, PRE)
    return prepared


def _tower(seed=0, cfg=SMALL):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VolumeTower(cfg).eval()


def test_preprocessed_real_ct_has_grid_range_and_affine(real_ct):
    t = real_ct.tensor
    assert t.shape == (1, 64, 64, 32) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert 0.05 < float((t > 0.45).float().mean()) < 0.95  # body (soft tissue ~0.5) and air both present
    np.testing.assert_allclose(np.linalg.norm(real_ct.affine[:3, :3], axis=0), 4.0, atol=1e-4)
    assert real_ct.affine[0, 0] > 0 and real_ct.affine[1, 1] > 0 and real_ct.affine[2, 2] > 0  # RAS


def test_tower_shapes_on_a_real_ct(real_ct):
    tower = _tower()
    batch = torch.stack([real_ct.tensor, real_ct.tensor.flip(2)])
    with torch.no_grad():
        feats = tower.features(batch)
        out = tower(batch)
    assert feats.shape == (2, 64) and out.shape == (2, 384)
    assert torch.isfinite(out).all() and not torch.allclose(out[0], out[1])
    # pooling makes the tower size-agnostic: a crop gives a vector of the same size
    with torch.no_grad():
        assert tower(real_ct.tensor[None, :, 4:60, 8:56, 2:30]).shape == (1, 384)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(1, 64, 64, 32), r"expected volumes shaped \(n, 1, D, H, W\)"),
        (torch.zeros(1, 1, 64, 64, 4), "too small"),
        (torch.full((1, 1, 16, 16, 16), -1000.0), "not raw Hounsfield units"),
        (torch.zeros(1, 1, 16, 16, 16, dtype=torch.int16), "floating point"),
    ],
)
def test_bad_volume_batches_are_explained(x, message):
    with pytest.raises(InvalidInputError, match=message):
        _tower()(x)


def test_tower_config_validation():
    with pytest.raises(ValueError, match="same non-zero length"):
        VolumeTowerConfig(channels=(8, 16), strides=(2,))
    with pytest.raises(ValueError, match="divisible by num_groups"):
        VolumeTowerConfig(channels=(8, 12), strides=(2, 2), num_groups=8)


def test_shared_space_encoder_roundtrip(tmp_path, minilm, real_ct):
    enc = SharedSpaceEncoder(minilm, _tower(), PRE)
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
    SharedSpaceEncoder(minilm, _tower(), PRE).save_pretrained(tmp_path / "enc")
    with pytest.raises(CheckpointMismatchError, match="trained against text encoder"):
        SharedSpaceEncoder.from_pretrained(tmp_path / "enc", minilm_chunk)
    with pytest.raises(CheckpointMismatchError, match="embeds into 32 dims"):
        SharedSpaceEncoder(
            minilm, _tower(cfg=VolumeTowerConfig(channels=(8,), strides=(2,), num_groups=4, embed_dim=32)), PRE
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
