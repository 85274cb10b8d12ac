"""SigVLP tower: any slice count, rotary positions, padding masks, persistence, preprocessing that keeps depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrag.data.transforms import load_preprocess_config
from ctrag.encoders import create_encoder, list_encoders
from ctrag.encoders.clip import SharedSpaceEncoder, read_tower_info
from ctrag.encoders.preprocess import check_encoder_preprocess, load_prepared, variable_depth_preprocess
from ctrag.encoders.sigvlp import SigVLPConfig, SigVLPTower, apply_rope, rope_angles
from ctrag.errors import CheckpointMismatchError, ConfigError, InvalidInputError, WeightsNotFoundError

from .conftest import SAMPLE

TINY = SigVLPConfig(
    chunk_slices=8, channels=(4, 8), strides=(2, 2), num_groups=4, d_model=16, heads=2, depth=2, head_hidden=32
)


def _tower(seed: int = 0, cfg: SigVLPConfig = TINY) -> SigVLPTower:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SigVLPTower(cfg).eval()


def _volume(depth: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand((1, 1, size, size, depth), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_one_tower_embeds_any_slice_count_into_a_fixed_dim():
    tower = _tower()
    for depth, chunks in ((37, 5), (64, 8), (150, 19)):
        out = tower.encode(_volume(depth))
        assert out.embedding.shape == (1, TINY.embed_dim)
        assert out.chunk_embeddings.shape == (1, chunks, TINY.embed_dim)
        assert torch.isfinite(out.embedding).all()
        assert int(out.slice_mask.sum()) == depth and int(out.chunk_mask.sum()) == chunks


@torch.no_grad()
def test_fewer_slices_than_one_chunk_is_padded_and_masked():
    tower = _tower()
    short = _volume(5)
    out = tower.encode(short)
    assert out.slice_mask.tolist() == [[True] * 5 + [False] * 3] and out.chunk_mask.tolist() == [[True]]
    # the same scan inside a batch padded to 3 chunks: masked chunks change neither attention nor pooling
    long = _volume(24, seed=1)
    batch = torch.cat((torch.nn.functional.pad(short, (0, 19)), long))
    mask = torch.zeros((2, 24), dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    both = tower.encode(batch, mask)
    assert both.chunk_mask.tolist() == [[True, False, False], [True, True, True]]
    torch.testing.assert_close(both.embedding[0], out.embedding[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both.embedding[1], tower.encode(long).embedding[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(InvalidInputError, match="at least one real slice"):
        tower.encode(short, torch.zeros((1, 5), dtype=torch.bool))


def test_rope_scores_depend_only_on_the_offset():
    gen = torch.Generator().manual_seed(0)
    attn = _tower().blocks[0].attn
    tokens = torch.randn((1, 6, TINY.d_model), generator=gen)
    pos = torch.arange(6, dtype=torch.float32)[None]
    base = attn.logits(tokens, pos)
    torch.testing.assert_close(attn.logits(tokens, pos + 7.5), base, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(attn.logits(tokens, pos + 1000.0), base, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(attn.logits(tokens, 2 * pos), base, atol=1e-3)  # a different spacing is different
    # the identity behind it: <R(p) q, R(p') k> = <q, R(p' - p) k>
    q, k = torch.randn((2, 8), generator=gen)
    cos_a, sin_a = rope_angles(torch.tensor([3.0, 10.0]), 8)
    cos_b, sin_b = rope_angles(torch.tensor([0.0, 7.0]), 8)
    lhs = apply_rope(q[None], cos_a[:1], sin_a[:1]) @ apply_rope(k[None], cos_a[1:], sin_a[1:]).t()
    rhs = apply_rope(q[None], cos_b[:1], sin_b[:1]) @ apply_rope(k[None], cos_b[1:], sin_b[1:]).t()
    torch.testing.assert_close(lhs, rhs, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_chunk_order_matters_through_the_positions_only():
    tower = _tower()
    x = _volume(32)
    chunks = x.view(1, 1, 16, 16, 4, 8)
    permuted = chunks[:, :, :, :, [2, 0, 3, 1]].reshape(x.shape)
    a, b = tower.encode(x).embedding, tower.encode(permuted).embedding
    assert (a - b).norm() > 1e-3 * a.norm()
    # with every chunk at the same position the tower is a set function: order no longer changes anything
    same = torch.zeros((1, 4))
    torch.testing.assert_close(
        tower.encode(x, positions=same).embedding,
        tower.encode(permuted, positions=same).embedding,
        atol=1e-5,
        rtol=1e-4,
    )


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="even size"):
        SigVLPConfig(d_model=12, heads=4)
    with pytest.raises(ValueError, match="chunk_slices"):
        SigVLPConfig(chunk_slices=0)
    with pytest.raises(InvalidInputError, match="too small"):
        _tower().encode(torch.rand((1, 1, 4, 16, 20)))


def test_preprocessing_resamples_every_axis_but_keeps_every_slice():
    fixed = load_preprocess_config("tiny-cpu")
    free = variable_depth_preprocess(fixed)
    path = SAMPLE / "ct" / "ts_example_ct_3mm.nii.gz"  # 122 x 101 x 112 at 3 mm
    a, b = load_prepared(path, fixed), load_prepared(path, free)
    assert a.tensor.shape == (1, 64, 64, 32)
    assert b.tensor.shape == (1, 64, 64, 84)  # 112 slices x 3 mm / 4 mm: resampled in z, not cropped
    np.testing.assert_allclose(np.linalg.norm(b.affine[:3, :3], axis=0), [4.0, 4.0, 4.0], atol=1e-6)
    assert check_encoder_preprocess(free, variable_depth=True) is free
    with pytest.raises(ConfigError, match="pad_crop_xy"):
        check_encoder_preprocess(fixed, variable_depth=True)
    with pytest.raises(ConfigError, match="fixed grid"):
        check_encoder_preprocess(free)


def test_save_load_round_trip_is_identical(tmp_path, minilm):
    assert "sigvlp" in list_encoders()
    with pytest.raises(WeightsNotFoundError, match="ctrag train encoder"):
        create_encoder("sigvlp")
    cfg = SigVLPConfig(**{**TINY.to_dict(), "channels": (4, 8), "strides": (2, 2), "embed_dim": minilm.dim})
    free = variable_depth_preprocess(load_preprocess_config("tiny-cpu"))
    spec = {"text_encoder_spec": {"name_or_path": "minilm"}}
    encoder = SharedSpaceEncoder(minilm, _tower(3, cfg), free, name="sigvlp-test", extra=spec)
    folder = encoder.save_pretrained(tmp_path / "enc")
    assert read_tower_info(folder).tower == cfg
    for loaded in (create_encoder(folder), create_encoder("sigvlp", weights=folder, text_encoder=minilm)):
        assert isinstance(loaded, SharedSpaceEncoder) and isinstance(loaded.tower, SigVLPTower)
        assert loaded.fingerprint == encoder.fingerprint and loaded.preprocess == free
        for depth in (5, 37):
            x = _volume(depth, seed=depth)
            np.testing.assert_array_equal(loaded.encode_volume(x), encoder.encode_volume(x))
    other = SharedSpaceEncoder(minilm, _tower(4, cfg), free, name="sigvlp-test")
    assert other.fingerprint != encoder.fingerprint
    with pytest.raises(ConfigError, match="pad_crop_xy"):
        SharedSpaceEncoder(minilm, _tower(3, cfg), load_preprocess_config("tiny-cpu"))
    with pytest.raises(CheckpointMismatchError, match="holds a 'sigvlp' volume tower"):
        create_encoder("ctrag-volume-tiny", weights=folder, text_encoder=minilm)
