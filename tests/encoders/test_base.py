"""The encoder interface: normalisation every vector goes through, and the default of text-only encoders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from ctrag.encoders.base import Encoder, l2_normalise


class _Constant(Encoder):
    """A text-only encoder with fixed (unnormalised) output, to exercise the base class defaults."""

    name = "constant"

    @property
    def dim(self) -> int:
        return 3

    @property
    def fingerprint(self) -> str:
        return "constant@0"

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        return l2_normalise(np.tile([3.0, 4.0, 0.0], (len(texts), 1)))


def test_l2_normalise_rows_to_float32_and_keeps_zero_rows() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(l2_normalise(np.array([0.0, 2.0])), [[0.0, 1.0]])  # a vector becomes one row


def test_real_minilm_vectors_are_unchanged_by_normalising(minilm) -> None:
    emb = minilm.encode_text(["Bilateral pleural effusion."])
    np.testing.assert_allclose(l2_normalise(emb), emb, atol=1e-6)


def test_text_only_encoders_say_so() -> None:
    enc = _Constant()
    assert enc.supports_text and not enc.supports_volume
    np.testing.assert_allclose(enc.encode_text(["a", "b"]), [[0.6, 0.8, 0.0]] * 2, atol=1e-7)
    with pytest.raises(NotImplementedError, match=r"_Constant \(constant\) has no volume tower"):
        enc.encode_volume(torch.zeros(1, 1, 8, 8, 8))
