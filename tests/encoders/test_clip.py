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


def test_soft_contrastive_targets_rows_sum_to_one_and_respect_unknown_labels():
    from ctrag.encoders.clip import soft_contrastive_targets

    labels = torch.zeros(5, 18, dtype=torch.int64)
    labels[0, [1, 2]] = 1
    labels[1, [1, 2]] = 1  # same set as row 0
    labels[2, [1, 5]] = 1  # Jaccard 1/3 with rows 0 and 1
    labels[3, 7] = 1  # nothing in common with 0-2
    known = torch.tensor([True, True, True, True, False])  # row 4 has no labels (its zeros are not "normal")
    t = soft_contrastive_targets(labels, known)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(5))
    assert float(t[0, 1]) == float(t[0, 0]) == float(t[1, 0])  # identical sets weigh as much as the case itself
    assert float(t[0, 2]) == pytest.approx(float(t[0, 0]) / 3)
    assert float(t[0, 3]) == 0.0 and float(t[3, 3]) == 1.0
    assert torch.equal(t[4], torch.eye(5)[4]) and float(t[:4, 4].sum()) == 0.0  # unlabelled: one-hot both ways
    sharp = soft_contrastive_targets(labels, known, temperature=0.25)
    assert float(sharp[0, 2]) < float(t[0, 2]) and float(sharp[0, 1]) == float(sharp[0, 0])
    with pytest.raises(InvalidInputError, match="temperature"):
        soft_contrastive_targets(labels, known, temperature=0.0)


def test_contrastive_loss_soft_and_masked_variants():
    from ctrag.encoders.clip import metadata_allowed

    g = torch.Generator().manual_seed(0)
    vol = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(math.log(10.0))
    plain, _ = contrastive_loss(vol, txt, scale)
    soft = torch.full((4, 4), 0.25)
    zero, _ = contrastive_loss(vol, txt, scale, soft_targets=soft, soft_weight=0.0)
    assert float(zero) == float(plain)  # weight 0 takes the unchanged code path
    eye, _ = contrastive_loss(vol, txt, scale, soft_targets=torch.eye(4), soft_weight=1.0)
    torch.testing.assert_close(eye, plain)
    mixed, _ = contrastive_loss(vol, txt, scale, soft_targets=soft, soft_weight=0.5)
    assert abs(float(mixed) - float(plain)) > 1e-3
    open_all, _ = contrastive_loss(vol, txt, scale, allowed=torch.ones(4, 4, dtype=torch.bool))
    torch.testing.assert_close(open_all, plain)
    # scanner metadata of the shipped Lung-PET-CT-Dx CTs (TCIA metadata csv): Philips vs SIEMENS; 2 and 3 unknown
    allowed = metadata_allowed([{"scanner": "Philips"}, {"scanner": "SIEMENS"}, {}, {"scanner": None}], ["scanner"])
    assert (
        not bool(allowed[0, 1]) and not bool(allowed[1, 0]) and bool(allowed[0, 2]) and bool(allowed.diagonal().all())
    )
    masked, logits = contrastive_loss(vol, txt, scale, allowed=allowed)
    lp = logits[0, [0, 2, 3]].log_softmax(0)[0]  # row 0 contrasted against columns 0, 2, 3 only
    lp_t = logits[:, 0][[0, 2, 3]].log_softmax(0)[0]
    full_rows = [-logits[i].log_softmax(0)[i] for i in (2, 3)]
    full_cols = [-logits[:, i].log_softmax(0)[i] for i in (2, 3)]
    row1 = -logits[1, [1, 2, 3]].log_softmax(0)[0]
    col1 = -logits[:, 1][[1, 2, 3]].log_softmax(0)[0]
    expect = 0.5 * ((-lp + row1 + sum(full_rows)) / 4 + (-lp_t + col1 + sum(full_cols)) / 4)
    torch.testing.assert_close(masked, expect)
