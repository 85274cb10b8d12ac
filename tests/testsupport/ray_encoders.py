"""Picklable encoder builders for the Ray engine's tests (tests/index/test_ray_embed.py, tests/cli/test_cmd_index.py).

A Ray worker builds its encoder itself from a zero-argument callable it receives pickled, so the builders are
module-level classes here; the workers import this module through ``PYTHONPATH`` (set by the tests before the
cluster starts, see :func:`worker_env`).

The real encoders need no builder here (:class:`ctrag.index.ray_embed.EncoderSpec` rebuilds them through the
factory). :class:`LsaBuilder` builds a TF-IDF + SVD encoder fitted on given real reports (imports in a second
instead of sentence-transformers' ten), optionally sleeping per shard so that a test can kill a job half-way,
with a ``tag`` that makes "another encoder" (another fingerprint) for refusal tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctrag.encoders.base import Encoder
from testsupport.lsa import LsaEncoder

TESTS = Path(__file__).resolve().parents[1]


def worker_env() -> dict[str, str]:
    """Environment for a Ray cluster whose workers must import ``testsupport`` and the worktree's ``ctrag``."""
    src = TESTS.parent / "src"
    parts = [str(TESTS), str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    path = os.pathsep.join(dict.fromkeys(parts))
    return {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class TaggedLsa(LsaEncoder):
    """:class:`LsaEncoder` with a fingerprint tag and an optional pause per call (to stand in for a slow encoder)."""

    def __init__(self, fit_texts: Sequence[str], tag: str = "", delay: float = 0.0, dim: int = 32) -> None:
        super().__init__(fit_texts, dim=dim)
        self._tag, self._delay = tag, delay

    @property
    def fingerprint(self) -> str:
        return f"lsa-test@{self._tag or 0}"

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        time.sleep(self._delay)
        return super().encode_text(texts, batch_size)


@dataclass(frozen=True)
class LsaBuilder:
    fit_texts: tuple[str, ...]
    tag: str = ""
    delay: float = 0.0
    dim: int = 32

    def __call__(self) -> Encoder:
        return TaggedLsa(self.fit_texts, self.tag, self.delay, self.dim)
