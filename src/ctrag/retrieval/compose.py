"""Composed queries: one score per candidate from several per-modality / per-granularity score vectors.

Why a convex mix: composed vision-language retrieval (the Derm7pt work in
``/work/shared/papers/medical-retrieval-abstracts.txt``) scores a candidate by a convex, domain-weighted sum of a
global and a region-level (local) similarity, so one clinically salient term can be emphasised without the total
leaving the scale of its parts. Here the terms are whatever a query can produce against the index: the report
text's score (``text``: the retriever's scorer), a CT's shared-space similarity to the indexed reports
(``volume``: needs a volume encoder trained against the index's text encoder) and region-level similarities
(``region``: :mod:`ctrag.retrieval.regional`).

Weights are validated, not silently repaired, except for their scale: negatives, NaN/inf and an all-zero mix are
refused; positive weights are **normalised** to sum 1 (so ``text=2,volume=1`` means 2/3 and 1/3) and the
normalised values are what results report. A term with weight 0 is removed: it need not be supplied, and if it
is, its values (even NaN) never reach the total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ctrag.errors import InvalidInputError

Normalise = Literal["none", "minmax", "max"]


@dataclass(frozen=True)
class MixWeights:
    """Normalised, non-negative weights of named score terms (build with :meth:`of` or :meth:`parse`)."""

    weights: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, raw: Mapping[str, float]) -> MixWeights:
        """Validate ``raw`` (name -> weight >= 0, finite, not all 0) and normalise it to sum 1."""
        if not raw:
            raise InvalidInputError("mix weights: give at least one term (e.g. text=0.7,volume=0.3)")
        clean: dict[str, float] = {}
        for name, value in raw.items():
            if not isinstance(name, str) or not name.strip():
                raise InvalidInputError(f"mix weights: term names must be non-empty strings, got {name!r}")
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise InvalidInputError(f"mix weights: weight of {name!r} must be a number, got {value!r}") from None
            if not math.isfinite(v) or v < 0:
                raise InvalidInputError(f"mix weights: weight of {name!r} must be finite and >= 0, got {value!r}")
            clean[name.strip()] = v
        total = sum(clean.values())
        if total <= 0:
            raise InvalidInputError(f"mix weights: at least one weight must be > 0, got {dict(raw)}")
        return cls(tuple((n, v / total) for n, v in clean.items()))

    @classmethod
    def parse(cls, text: str, known: tuple[str, ...] | None = None) -> MixWeights:
        """``"text=0.7,volume=0.3"`` -> weights; names outside ``known`` (when given) are refused."""
        raw: dict[str, float] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise InvalidInputError(f"mix weights: expected NAME=WEIGHT, got {part.strip()!r}")
            if known is not None and name not in known:
                raise InvalidInputError(f"mix weights: unknown term {name!r}; known: {list(known)}")
            if name in raw:
                raise InvalidInputError(f"mix weights: term {name!r} given twice")
            try:
                raw[name] = float(value)
            except ValueError:
                raise InvalidInputError(f"mix weights: weight of {name!r} must be a number, got {value!r}") from None
        return cls.of(raw)

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)

    @property
    def active(self) -> tuple[str, ...]:
        """Terms with a positive weight (the only ones :func:`compose_scores` reads)."""
        return tuple(n for n, w in self.weights if w > 0)


def normalise_scores(values: np.ndarray, how: Normalise) -> np.ndarray:
    """Put one query's scores on a common scale before mixing: ``minmax`` -> [0, 1], ``max`` -> top = 1."""
    v = np.asarray(values, dtype=np.float64)
    if how == "none" or v.size == 0:
        return v
    if how == "max":
        top = float(np.max(v))
        return v / top if top > 0 else np.zeros_like(v)
    if how == "minmax":
        lo, hi = float(np.min(v)), float(np.max(v))
        return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    raise InvalidInputError(f"normalise must be 'none', 'minmax' or 'max', got {how!r}")


def compose_scores(
    terms: Mapping[str, np.ndarray], weights: MixWeights, *, normalise: Normalise = "none"
) -> np.ndarray:
    """``sum_t w_t * norm(s_t)`` over the terms with positive weight (1-D or 2-D score arrays, one shape).

    With ``normalise="minmax"`` each term is rescaled along its last axis first (per query), so the weights mean
    shares of each term's own spread rather than of its raw units.
    """
    active = weights.active
    missing = [t for t in active if t not in terms]
    if missing:
        raise InvalidInputError(f"compose_scores: no scores for term(s) {missing} (have {sorted(terms)})")
    shapes = {np.shape(terms[t]) for t in active}
    if len(shapes) != 1:
        raise InvalidInputError(f"compose_scores: score arrays differ in shape: {sorted(shapes)}")
    w = weights.as_dict()
    total: np.ndarray | None = None
    for t in active:
        arr = np.asarray(terms[t], dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError(f"compose_scores: term {t!r} has NaN or inf scores")
        if normalise != "none":
            arr = np.apply_along_axis(normalise_scores, -1, np.atleast_1d(arr), normalise).reshape(arr.shape)
        part = w[t] * arr
        total = part if total is None else total + part
    assert total is not None  # MixWeights guarantees one positive weight
    return total
