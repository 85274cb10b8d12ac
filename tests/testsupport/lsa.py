"""A cheap, real text encoder for retrieval tests: TF-IDF + truncated SVD (LSA) fitted on given reports.

Shared by tests/evaluation (retrieval evaluation, report) so they do not spend a minute embedding with MiniLM on
shared cores; the figures in docs/results/retrieval_eval.md come from the real default (MiniLM) run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ctrag.encoders.base import Encoder
from ctrag.retrieval.lexical import TfidfVectors


class LsaEncoder(Encoder):
    """TF-IDF + truncated SVD fitted on given reports: a cheap, real, deterministic text embedding for tests."""

    name = "lsa-test"

    def __init__(self, fit_texts: Sequence[str], dim: int = 64) -> None:
        from sklearn.decomposition import TruncatedSVD

        self._vectors = TfidfVectors.fit(list(fit_texts))
        self._svd = TruncatedSVD(dim, random_state=0).fit(self._vectors.transform(list(fit_texts)))
        self._dim = dim
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return "lsa-test@0"

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        x = self._svd.transform(self._vectors.transform(list(texts)))
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
