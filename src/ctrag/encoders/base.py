"""The one interface every encoder implements.

Retrieval compares vectors from different calls, processes and days; that is only sound if (a) every vector is
L2-normalised float32, so inner product = cosine, and (b) vectors from different encoders are never mixed. The
``fingerprint`` identifies an encoder *including its weights and preprocessing*; indexes and caches record it and
refuse to mix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a text-only encoder (ONNX Runtime) must not pay for importing torch
    import torch


class Encoder(ABC):
    """Maps reports and/or CT volumes into one embedding space of size ``dim``."""

    #: Registry name of the architecture (e.g. ``"minilm"``).
    name: str = "encoder"

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding size."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Stable identifier of architecture + weights + preprocessing (hex string or ``name@hash``)."""

    @property
    def supports_text(self) -> bool:
        return True

    @property
    def supports_volume(self) -> bool:
        return False

    @abstractmethod
    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(n, dim) L2-normalised float32 embeddings of ``texts``."""

    def encode_volume(self, volumes: torch.Tensor, batch_size: int = 4) -> np.ndarray:
        """(n, dim) L2-normalised float32 embeddings of preprocessed volumes shaped (n, 1, D, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.name}) has no volume tower")


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation to float32 (zero rows stay zero instead of becoming NaN)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return (arr / np.maximum(norms, eps)).astype(np.float32, copy=False)
