"""Concept prompts (CEMRAG, issue 13 item 7): the 18 CT-RATE label predictions as named concepts in a prompt.

Why text and not a vector: a named concept ("pleural effusion: likely") is readable by any causal LM without a
trained projection, so every report method (AdaRAG-CT, DiffVP, Reg2RG) can switch it on with one flag and the
prompt stays inspectable. ``concept_prompt`` is deterministic (fixed label order, fixed wording, fixed rounding),
so equal predictions give byte-equal prompts. Reg2RG can use it the same way: build the text with
``concept_prompt(probs)`` and put it as a text piece before the report prompt when ``ConceptConfig.enabled``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import ConfigError, InvalidInputError


@dataclass(frozen=True)
class ConceptConfig:
    """``threshold``: probability from which a label is named as present; ``uncertain``: lower bound of the
    "possible" band; ``list_absent``: also name the absent labels (longer prompt, explicit negatives)."""

    enabled: bool = True
    threshold: float = 0.5
    uncertain: float = 0.3
    list_absent: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.uncertain <= self.threshold < 1.0:
            raise ConfigError("ConceptConfig: need 0 < uncertain <= threshold < 1")


def concept_prompt(
    probabilities: Sequence[float] | np.ndarray,
    config: ConceptConfig | None = None,
    labels: Sequence[str] = CT_RATE_LABELS,
) -> str:
    """``"Concepts: A (present); B (possible). "`` from per-label probabilities; ``""`` when switched off."""
    cfg = config or ConceptConfig()
    if not cfg.enabled:
        return ""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.shape[0] != len(labels):
        raise InvalidInputError(f"concept prompt: {p.shape[0]} probabilities for {len(labels)} labels")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InvalidInputError("concept prompt: probabilities must lie in [0, 1]")
    parts = []
    for name, v in zip(labels, p.tolist(), strict=True):
        if v >= cfg.threshold:
            parts.append(f"{name.lower()} (present)")
        elif v >= cfg.uncertain:
            parts.append(f"{name.lower()} (possible)")
        elif cfg.list_absent:
            parts.append(f"{name.lower()} (absent)")
    return "Concepts: " + ("; ".join(parts) if parts else "no abnormal finding") + ". "


def labels_as_probabilities(labels: Sequence[int]) -> np.ndarray:
    """0/1 labels (e.g. a case's CT-RATE labels) as probabilities, for training prompts and oracle runs."""
    return np.asarray([float(bool(v)) for v in labels], dtype=np.float64)
