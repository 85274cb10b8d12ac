"""CTViT, CT-CLIP's volume tower: config arithmetic, strict loading of upstream key names, and encoder shapes.

A tiny CTViT (``VISION``) with an upstream-named state dict stands in for the released weights (they are not
shipped); the full CT-CLIP path on top of it is in ``test_ct_clip.py``.
"""

from __future__ import annotations

import re

import pytest
import torch

from ctrag.encoders.ctvit import CTVIT_UNUSED_PATTERNS, CTViTConfig, CTViTEncoder, load_ctvit_state, map_ctvit_keys
from ctrag.errors import CheckpointMismatchError

from .conftest import VISION, upstream_ctvit_state


def test_released_config_arithmetic() -> None:
    released = CTViTConfig()
    assert released.grid == (24, 24, 24)
    assert released.pooled_features == 24 * 24 * 512 == 294_912  # CT-CLIP's dim_image
    assert released.ff_inner == int(4.0 * 2 / 3 * 512)
    assert VISION.grid == (2, 4, 4) and VISION.pooled_features == 4 * 4 * 16
    with pytest.raises(ValueError, match="must divide evenly"):
        CTViTConfig(image_size=25, patch_size=6)
    with pytest.raises(ValueError, match="must divide evenly"):
        CTViTConfig(frames=9, temporal_patch_size=4)


def test_upstream_state_loads_strictly_and_drops_only_unused_parts() -> None:
    upstream = upstream_ctvit_state(VISION, torch.Generator().manual_seed(0))
    model = CTViTEncoder(VISION)
    dropped = load_ctvit_state(model, upstream)
    assert dropped and all(
        any(re.fullmatch(p, k) for p in CTVIT_UNUSED_PATTERNS) or k.endswith("null_kv") for k in dropped
    )
    torch.testing.assert_close(model.codebook, upstream["vq._codebook.embed"][0])
    torch.testing.assert_close(model.patch_proj.weight, upstream["to_patch_emb.2.weight"])
    ours, _, unknown = map_ctvit_keys(upstream)
    assert unknown == [] and set(ours) == set(model.state_dict())


def test_forward_shapes_and_input_check() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CTViTEncoder(VISION).eval()
        load_ctvit_state(model, upstream_ctvit_state(VISION, torch.Generator().manual_seed(1)))
        x = torch.rand(2, 1, VISION.frames, VISION.image_size, VISION.image_size) * 2 - 1
    with torch.no_grad():
        tokens = model(x)
        pooled = model.pooled(x)
    assert tokens.shape == (2, *VISION.grid, VISION.dim)
    assert pooled.shape == (2, VISION.pooled_features)
    with pytest.raises(ValueError, match=r"expected \(b, 1, 8, 24, 24\)"):
        model(torch.zeros(1, 1, 8, 24, 30))


def test_codebook_shape_is_checked() -> None:
    upstream = upstream_ctvit_state(VISION, torch.Generator().manual_seed(0))
    upstream["vq._codebook.embed"] = upstream["vq._codebook.embed"][0]
    with pytest.raises(CheckpointMismatchError, match="expected one codebook"):
        map_ctvit_keys(upstream)


def test_map_reports_unknown_keys_without_raising():
    ours, dropped, unknown = map_ctvit_keys({"foo.bar": torch.zeros(1), "to_pixels.0.weight": torch.zeros(1)})
    assert ours == {} and dropped == ["to_pixels.0.weight"] and unknown == ["foo.bar"]
    model = CTViTEncoder(VISION)
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_ctvit_state(model, {})
