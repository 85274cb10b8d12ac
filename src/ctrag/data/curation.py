"""Training-set curation: a subset of labelled reports that keeps label coverage and report diversity.

Why: CheXficient (issue 14, abstract 5) pretrains on 22.7 % of its image-report pairs by prioritising
informative, under-represented samples, and matches the full-data model. The same idea here, for the train
reports with their 18 CT-RATE labels:

1. **coverage first, rarest labels first**: while some label present in the full set has no selected report,
   take the report that carries the most inverse-frequency weight of still-uncovered labels; a label seen once
   in the full set is therefore always kept;
2. **then fill the budget** with the report maximising a mix of (a) k-center diversity: its cosine distance to
   the nearest selected report in an embedding space, and (b) rarity gain: the inverse-frequency weight of its
   labels, discounted by how many selected reports already carry each label. ``diversity`` sets the mix.

Ties are broken by a seeded random order, so one seed always gives the same subset. The budget is
``ceil(fraction * n)``, raised to what coverage needs when that is larger (the result says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctrag.errors import InvalidInputError


@dataclass(frozen=True)
class CurationResult:
    """Selected row indices (in selection order) and what the selection covers."""

    indices: list[int]
    n_total: int
    budget: int
    coverage_rows: int
    label_counts_full: list[int]
    label_counts_subset: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return len(self.indices) / self.n_total

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_total": self.n_total,
            "n_selected": len(self.indices),
            "fraction": self.fraction,
            "budget": self.budget,
            "coverage_rows": self.coverage_rows,
            "label_counts_full": self.label_counts_full,
            "label_counts_subset": self.label_counts_subset,
            "indices": self.indices,
            **self.info,
        }


def _check(labels: Any, embeddings: Any, fraction: float, diversity: float) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.asarray(labels)
    if y.ndim != 2 or len(y) == 0:
        raise InvalidInputError(f"curate: labels must be a non-empty (n, L) 0/1 array, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise InvalidInputError("curate: labels must be 0/1")
    if not 0.0 < fraction <= 1.0:
        raise InvalidInputError(f"curate: fraction must be in (0, 1], got {fraction}")
    if not 0.0 <= diversity <= 1.0:
        raise InvalidInputError(f"curate: diversity must be in [0, 1], got {diversity}")
    emb = None
    if embeddings is not None:
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or len(emb) != len(y):
            raise InvalidInputError(f"curate: embeddings must be ({len(y)}, d), got shape {emb.shape}")
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return y.astype(bool), emb


def curate(
    labels: Any,
    fraction: float,
    *,
    embeddings: Any | None = None,
    diversity: float = 0.5,
    seed: int = 0,
) -> CurationResult:
    """Pick ``ceil(fraction * n)`` rows of ``labels`` (n, L) covering every label the full set has.

    ``embeddings`` (n, d), e.g. report vectors, drive the diversity term; without them only rarity counts.
    """
    y, emb = _check(labels, embeddings, fraction, diversity)
    n = len(y)
    budget = max(1, math.ceil(fraction * n))
    rng = np.random.default_rng(seed)
    jitter = rng.random(n) * 1e-9  # seeded tie-break, far below any real score difference
    counts = y.sum(axis=0)
    weight = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    chosen = np.zeros(n, dtype=bool)
    order: list[int] = []

    # 1. coverage, rarest labels first
    uncovered = counts > 0
    while uncovered.any():
        gain = (y & uncovered[None, :]).astype(np.float64) @ weight + jitter
        gain[chosen] = -np.inf
        pick = int(np.argmax(gain))
        chosen[pick] = True
        order.append(pick)
        uncovered &= ~y[pick]
    coverage_rows = len(order)

    # 2. fill: k-center distance mixed with discounted rarity
    if emb is not None:
        min_dist = np.full(n, 2.0)
        for i in order:
            min_dist = np.minimum(min_dist, 1.0 - emb @ emb[i])
    while len(order) < budget:
        selected_counts = y[chosen].sum(axis=0)
        rarity = y.astype(np.float64) @ (weight / (1.0 + selected_counts))
        top_r = rarity[~chosen].max()
        score = (1.0 - diversity) * (rarity / top_r if top_r > 0 else rarity)
        if emb is not None:
            top_d = min_dist[~chosen].max()
            score = score + diversity * (min_dist / top_d if top_d > 0 else min_dist)
        score = score + jitter
        score[chosen] = -np.inf
        pick = int(np.argmax(score))
        chosen[pick] = True
        order.append(pick)
        if emb is not None:
            min_dist = np.minimum(min_dist, 1.0 - emb @ emb[pick])

    return CurationResult(
        indices=order,
        n_total=n,
        budget=budget,
        coverage_rows=coverage_rows,
        label_counts_full=[int(c) for c in counts],
        label_counts_subset=[int(c) for c in y[order].sum(axis=0)],
        info={"seed": seed, "diversity": diversity, "requested_fraction": fraction, "embeddings": emb is not None},
    )


def random_subset(n: int, size: int, seed: int = 0) -> list[int]:
    """The baseline a curated subset is compared with: ``size`` rows drawn uniformly (seeded)."""
    if not 0 < size <= n:
        raise InvalidInputError(f"random_subset: size must be in 1..{n}, got {size}")
    return [int(i) for i in np.random.default_rng(seed).choice(n, size, replace=False)]


def tfidf_embeddings(texts: list[str], dims: int = 128, seed: int = 0) -> np.ndarray:
    """Cheap report vectors for the diversity term: TF-IDF reduced by truncated SVD, L2-normalised."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(texts) < 2:
        raise InvalidInputError("tfidf_embeddings: need at least 2 texts")
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=1).fit_transform(texts)
    k = max(1, min(dims, tfidf.shape[1] - 1, len(texts) - 1))
    reduced = TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf)
    return reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)


__all__ = ["CurationResult", "curate", "random_subset", "tfidf_embeddings"]
