"""Volume tower on real preprocessed CTs: shapes, input checks and config validation."""

from __future__ import annotations

import pytest
import torch

from ctrag.encoders.volume import VolumeTowerConfig
from ctrag.errors import InvalidInputError

from .conftest import make_tower


def test_tower_shapes_on_a_real_ct(real_ct):
    tower = make_tower()
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
        make_tower()(x)


def test_tower_config_validation():
    with pytest.raises(ValueError, match="same non-zero length"):
        VolumeTowerConfig(channels=(8, 16), strides=(2,))
    with pytest.raises(ValueError, match="divisible by num_groups"):
        VolumeTowerConfig(channels=(8, 12), strides=(2, 2), num_groups=8)
