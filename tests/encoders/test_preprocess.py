"""Encoder input preparation: the project's one preprocessing pipeline applied to real shipped CTs, and the checks
that keep a volume tower's grid fixed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ctrag.data.nifti import load_volume
from ctrag.encoders.preprocess import (
    PreprocessConfig,
    check_encoder_preprocess,
    prepare_volume,
    preprocess_from_dict,
    preprocess_to_dict,
)
from ctrag.errors import ConfigError

from .conftest import PRE, SAMPLE


def test_preprocessed_real_ct_has_grid_range_and_affine(real_ct):
    t = real_ct.tensor
    assert t.shape == (1, 64, 64, 32) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert 0.05 < float((t > 0.45).float().mean()) < 0.95  # body (soft tissue ~0.5) and air both present
    np.testing.assert_allclose(np.linalg.norm(real_ct.affine[:3, :3], axis=0), 4.0, atol=1e-4)
    assert real_ct.affine[0, 0] > 0 and real_ct.affine[1, 1] > 0 and real_ct.affine[2, 2] > 0  # RAS


def test_prepare_volume_matches_load_prepared_and_applies_a_rescale(real_ct):
    ct = load_volume(SAMPLE / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz")
    again = prepare_volume(ct, PRE)
    torch.testing.assert_close(again.tensor, real_ct.tensor)
    np.testing.assert_allclose(again.affine, real_ct.affine)
    # the same CT stored as raw scanner values (HU + 1024), as the first CT-RATE release did, with its rescale
    raw = type(ct)(ct.array.astype(np.float32) + 1024.0, ct.affine, ct.path)
    rescaled = prepare_volume(raw, PRE, rescale={"slope": 1.0, "intercept": -1024.0})
    torch.testing.assert_close(rescaled.tensor, real_ct.tensor, atol=1e-5, rtol=0)
    assert not torch.allclose(prepare_volume(raw, PRE).tensor, real_ct.tensor)


def test_lps_and_ras_storage_give_the_same_tensor(real_ct):
    """The pipeline reorients to RAS, so a CT stored LPS (this one) and its RAS copy prepare identically."""
    ct = load_volume(SAMPLE / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz")
    assert ct.orientation == "LPS"
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = ct.shape[0] - 1, ct.shape[1] - 1
    ras = type(ct)(ct.array[::-1, ::-1, :].copy(), ct.affine @ flip, None)
    assert ras.orientation == "RAS"
    torch.testing.assert_close(prepare_volume(ras, PRE).tensor, real_ct.tensor)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output_range": (-1.0, 1.0)}, "expect output_range"),
        ({"resize_mode": "none"}, "need a fixed grid"),
        ({"size": (4, 64, 32)}, "at least 8 voxels"),
    ],
)
def test_encoder_preprocess_is_checked(change, message):
    assert check_encoder_preprocess(PRE) is PRE
    with pytest.raises(ConfigError, match=message):
        check_encoder_preprocess(replace(PRE, **change))


def test_preprocess_dict_roundtrip():
    data = preprocess_to_dict(PRE)
    assert data["spacing"] == [4.0, 4.0, 4.0] and data["size"] == [64, 64, 32]  # JSON-ready lists
    assert data["hu_window"] == [-1000.0, 1000.0] and data["orientation"] == "RAS"
    assert preprocess_from_dict(data) == PRE
    assert isinstance(preprocess_from_dict(data), PreprocessConfig)
