"""CT-CLIP loader with tiny weights built here in the *upstream* key layout (CT-CLIP + transformer_maskgit names).

The layout below is written out independently of ``ctrag.encoders.ctvit``'s mapping tables, so a wrong rename in
the loader fails these tests. (A numerical comparison against the upstream modules themselves was done once by
hand; it needs packages that are not dependencies of ctrag.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

from ctrag.data.nifti import load_volume
from ctrag.encoders import create_encoder
from ctrag.encoders.ct_clip import CTCLIPEncoder, CTCLIPTextConfig, ct_clip_preprocess
from ctrag.encoders.ctvit import CTViTConfig
from ctrag.errors import CheckpointMismatchError, InvalidInputError

from .conftest import VISION, upstream_ctvit_state, write_tiny_bert

LATENT = 10


def build_checkpoint(folder: Path, *, with_vision: bool = True, seed: int = 0) -> tuple[Path, Path, dict]:
    """tiny CXR-BERT stand-in folder + a CT-CLIP-layout checkpoint file."""
    gen = torch.Generator().manual_seed(seed)
    text_dir = folder / "cxr-bert"
    bert, _ = write_tiny_bert(text_dir, hidden=32)
    state: dict[str, torch.Tensor] = {f"text_transformer.{k}": v for k, v in bert.state_dict().items()}
    state["text_transformer.embeddings.position_ids"] = torch.arange(64)[None]  # older transformers kept it
    state["to_text_latent.weight"] = torch.randn(LATENT, 32, generator=gen)
    state["to_text_latent_extra.weight"] = torch.randn(LATENT, 32, generator=gen)
    state["temperature"] = torch.tensor(1.0)
    if with_vision:
        state |= {f"visual_transformer.{k}": v for k, v in upstream_ctvit_state(VISION, gen).items()}
        state["to_visual_latent.weight"] = torch.randn(LATENT, VISION.pooled_features, generator=gen) * 0.05
        state["to_visual_latent_extra.weight"] = torch.randn(LATENT, VISION.pooled_features, generator=gen)
    ckpt = folder / "ct_clip_tiny.pt"
    torch.save(state, ckpt)
    return ckpt, text_dir, state


def make_encoder(ckpt: Path, text_dir: Path, **kw) -> CTCLIPEncoder:
    return CTCLIPEncoder(
        ckpt, text_dir, text_cfg=CTCLIPTextConfig(hidden_size=32, max_length=64, latent_dim=LATENT),
        vision_cfg=VISION, **kw,
    )  # fmt: skip


@pytest.fixture()
def tiny_ct_clip(tmp_path):
    ckpt, text_dir, state = build_checkpoint(tmp_path)
    return make_encoder(ckpt, text_dir), state, text_dir


def test_text_latents_are_cls_times_projection(tiny_ct_clip):
    enc, state, text_dir = tiny_ct_clip
    from transformers import AutoTokenizer, BertModel

    texts = ["the left lung mass is present.", "no (pleural) effusion."]
    got = enc.encode_text(texts)
    bert = BertModel.from_pretrained(str(text_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(text_dir))
    with torch.no_grad():
        cleaned = [t.replace("(", "").replace(")", "") for t in texts]  # CT-CLIP strips parentheses and quotes
        batch = tok(cleaned, return_tensors="pt", padding="max_length", max_length=64)
        cls = bert(**batch).last_hidden_state[:, 0]
        want = torch.nn.functional.normalize(cls @ state["to_text_latent.weight"].t(), dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert enc.dim == LATENT and enc.supports_volume


def test_volume_path_shapes_codebook_and_layout(tiny_ct_clip):
    enc, state, _ = tiny_ct_clip
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, VISION.frames, VISION.image_size, VISION.image_size, generator=gen) * 2 - 1
    lat = enc.encode_volume(x, batch_size=1)
    assert lat.shape == (2, LATENT) and lat.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(lat, axis=1), 1.0, atol=1e-5)
    assert float(lat[0] @ lat[1]) < 0.999
    np.testing.assert_allclose(enc.encode_volume(x, batch_size=2), lat, atol=1e-6)
    assert enc.vision is not None
    with torch.no_grad():
        tokens = enc.vision(x)  # quantised grid: every token is a *stored* codebook row
        codebook = state["visual_transformer.vq._codebook.embed"][0]
        exact = (tokens.reshape(-1, 1, VISION.dim) == codebook[None]).all(dim=-1)
        assert torch.all(exact.sum(dim=1) >= 1)
        assert tokens.shape == (2, *VISION.grid, VISION.dim)
        # patch layout follows the upstream einops pattern
        flat = rearrange(x, "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", pt=4, p1=6, p2=6)
        v = enc.vision
        want = v.patch_norm_out(v.patch_proj(v.patch_norm_in(flat)))
        torch.testing.assert_close(v.patchify(x), want)
        pooled = v.pooled(x)
        torch.testing.assert_close(pooled, tokens.mean(dim=1).reshape(2, -1))
        manual = torch.nn.functional.normalize(pooled @ state["to_visual_latent.weight"].t(), dim=-1)
    np.testing.assert_allclose(lat, manual.numpy(), atol=1e-5)


def test_dropped_keys_are_exactly_the_unused_parts(tiny_ct_clip):
    enc, _, _ = tiny_ct_clip
    dropped = set(enc.dropped_keys)
    assert "pooler.dense.weight" in dropped and "embeddings.position_ids" in dropped
    assert {"temperature", "to_text_latent_extra.weight", "to_visual_latent_extra.weight"} <= dropped
    assert any(k.startswith("dec_spatial_transformer.") for k in dropped)
    assert "vq._codebook.cluster_size" in dropped and "to_pixels.0.weight" in dropped
    assert not any("to_q" in k or "dsconv" in k for k in dropped if k.startswith("enc_"))


def test_unknown_missing_and_misshaped_keys_fail(tmp_path):
    ckpt, text_dir, state = build_checkpoint(tmp_path)
    for name, mutate, message in (
        ("extra_top", lambda s: s.update({"logit_bias": torch.zeros(1)}), "unrecognised keys"),
        ("extra_vis", lambda s: s.update({"visual_transformer.mystery.weight": torch.zeros(1)}), "unrecognised keys"),
        ("miss_vis", lambda s: s.pop("visual_transformer.enc_temporal_transformer.layers.0.1.to_q.weight"),
         "missing keys"),
        ("miss_txt", lambda s: s.pop("text_transformer.encoder.layer.1.output.dense.weight"), "missing"),
        ("null_kv", lambda s: s.update({"visual_transformer.enc_spatial_transformer.layers.0.1.null_kv":
                                        torch.zeros(2, 4, 8)}), "null key/values"),
        ("proj", lambda s: s.update({"to_visual_latent.weight": torch.zeros(LATENT, 7)}), r"shape \(10, 7\)"),
    ):  # fmt: skip
        bad = dict(state)
        mutate(bad)
        path = tmp_path / f"{name}.pt"
        torch.save(bad, path)
        with pytest.raises(CheckpointMismatchError, match=message):
            make_encoder(path, text_dir)
    other = CTViTConfig(**{**VISION.__dict__, "dim": 24, "heads": 2})
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        CTCLIPEncoder(
            ckpt,
            text_dir,
            text_cfg=CTCLIPTextConfig(hidden_size=32, max_length=64, latent_dim=LATENT),
            vision_cfg=other,
        )


def test_text_only_checkpoint_explains_missing_volume_tower(tmp_path):
    ckpt, text_dir, _ = build_checkpoint(tmp_path, with_vision=False)
    enc = make_encoder(ckpt, text_dir)
    assert not enc.supports_volume and enc.encode_text(["no effusion."]).shape == (1, LATENT)
    with pytest.raises(InvalidInputError, match="no volume tower loaded"):
        enc.encode_volume(torch.zeros(1, 1, 8, 24, 24))


def test_volume_range_is_checked(tiny_ct_clip):
    enc, _, _ = tiny_ct_clip
    with pytest.raises(InvalidInputError, match="outside"):
        enc.encode_volume(torch.full((1, 1, 8, 24, 24), 500.0))
    with pytest.raises(ValueError, match="expected"):
        enc.vision(torch.zeros(1, 1, 8, 24, 30))


def test_factory_builds_ct_clip_from_an_architecture_file(tmp_path):
    ckpt, text_dir, _ = build_checkpoint(tmp_path)
    arch = json.loads((Path(__file__).parents[2] / "src/ctrag/encoders/model_configs/ct-clip.json").read_text())
    arch["embed_dim"] = LATENT
    arch["text"].update(hidden_size=32, max_length=64)
    arch["vision"] = {**{k: v for k, v in VISION.__dict__.items()}, "load": True}
    arch_file = tmp_path / "ct-clip-tiny.json"
    arch_file.write_text(json.dumps(arch))
    enc = create_encoder(arch_file, weights=ckpt, text_model=text_dir)
    assert enc.dim == LATENT and enc.supports_volume and enc.fingerprint.startswith("ct-clip-tiny@")
    text_only = create_encoder(arch_file, weights=tmp_path, text_model=text_dir, load_volume_tower=False)
    assert not text_only.supports_volume and text_only.fingerprint != enc.fingerprint
    np.testing.assert_allclose(text_only.encode_text(["no effusion."]), enc.encode_text(["no effusion."]), atol=1e-6)


def test_ct_clip_preprocess_on_a_real_ct(lowres_chest_ct):
    vol = load_volume(lowres_chest_ct)
    # a coarser grid than CT-CLIP's 480x480x240 keeps the test light; the steps are the same
    t = ct_clip_preprocess(vol.array, vol.spacing, target_spacing_ijk=(3.0, 3.0, 6.0), grid_ijk=(96, 96, 48))
    assert t.shape == (1, 48, 96, 96) and t.dtype == torch.float32
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    assert float((t > -0.5).float().mean()) > 0.1  # soft tissue present
    # 30 slices at 8 mm -> 40 slices at 6 mm: padded to 48 with -1 at both ends (4 + 4)
    assert torch.all(t[0, :4] == -1.0) and torch.all(t[0, -4:] == -1.0) and not torch.all(t[0, 4] == -1.0)
