"""Retrieval strategies: which candidates to return, given their scores.

A strategy is a pure function ``fn(scores, mask, k, rng, *, groups=None, vectors=None, **options) -> rows``:

* ``scores`` (n,) similarity of each candidate to the query (higher = more similar; -inf = not scored),
* ``mask`` (n,) bool, the candidates that passed the filters,
* ``k`` how many to return, ``rng`` a ``numpy.random.Generator`` (the only source of randomness),
* ``groups`` (n,) int patient codes and ``vectors`` (n, dim) embeddings, for strategies that need them,

and returns up to ``k`` positions into those arrays, in rank order. Ties are broken by position, so the result
depends only on the inputs and the generator state. Strategies are registered by name so a config or CLI flag
can pick one; the generation ablation of RAG-Text2CT compares nearest / random / farthest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ctrag.errors import InvalidInputError


class StrategyFn(Protocol):
    def __call__(
        self,
        scores: np.ndarray,
        mask: np.ndarray,
        k: int,
        rng: np.random.Generator,
        *,
        groups: np.ndarray | None = None,
        vectors: np.ndarray | None = None,
        **options: Any,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy and what it needs from the retriever.

    ``pool="top"``: the strategy only ever picks among the best-scoring candidates, so a retriever may hand it
    a shortlist of ``max(shortlist_factor * k, min_shortlist)`` best rows instead of the whole index (found with
    FAISS on large indexes). ``pool="bottom"``: likewise among the worst-scoring ones (farthest; FAISS cannot
    find those, so every candidate is scored). ``pool="all"``: it needs every candidate (random).
    ``pool_option`` names an option that sets the shortlist size explicitly (mmr's ``pool``).
    ``needs_vectors``: the retriever passes the candidates' embeddings as ``vectors``. ``needs_scores=False``:
    the choice ignores scores (random), so a retriever may pass zeros and score only the picked rows.
    """

    name: str
    fn: StrategyFn
    pool: Literal["top", "bottom", "all"] = "all"
    shortlist_factor: int = 1
    min_shortlist: int = 1
    pool_option: str | None = None
    needs_vectors: bool = False
    needs_scores: bool = True
    description: str = ""

    def shortlist_size(self, k: int, options: Mapping[str, Any] | None = None) -> int | None:
        """How many best-scoring candidates suffice for this strategy (None: it needs all of them)."""
        if self.pool == "all":
            return None
        if self.pool_option and options and options.get(self.pool_option) is not None:
            return max(int(options[self.pool_option]), k)
        return max(self.shortlist_factor * k, self.min_shortlist)


_REGISTRY: dict[str, StrategySpec] = {}


def register_strategy(
    name: str,
    fn: StrategyFn | None = None,
    *,
    pool: Literal["top", "bottom", "all"] = "all",
    shortlist_factor: int = 1,
    min_shortlist: int = 1,
    pool_option: str | None = None,
    needs_vectors: bool = False,
    needs_scores: bool = True,
    description: str = "",
    overwrite: bool = False,
) -> Any:
    """Register ``fn`` under ``name``; usable directly or as a decorator (``@register_strategy("name")``).

    Re-registering an existing name is an error unless ``overwrite=True``, so two modules cannot silently
    replace each other's strategy.
    """

    def _register(func: StrategyFn) -> StrategyFn:
        if not name or not isinstance(name, str):
            raise InvalidInputError(f"strategy name must be a non-empty string, got {name!r}")
        if name in _REGISTRY and not overwrite:
            raise InvalidInputError(f"strategy {name!r} is already registered (pass overwrite=True to replace it)")
        if pool not in ("top", "bottom", "all"):
            raise InvalidInputError(f"strategy {name!r}: pool must be 'top', 'bottom' or 'all', got {pool!r}")
        doc = description or (func.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = StrategySpec(
            name, func, pool, shortlist_factor, min_shortlist, pool_option, needs_vectors, needs_scores, doc
        )
        return func

    return _register if fn is None else _register(fn)


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy ``name``; an unknown name raises with the list of known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInputError(f"unknown retrieval strategy {name!r}; known strategies: {list_strategies()}") from None


def list_strategies() -> list[str]:
    return sorted(_REGISTRY)


def apply_strategy(
    name: str,
    scores: np.ndarray,
    mask: np.ndarray | None,
    k: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Validate inputs and run strategy ``name``; returns positions (int64) in rank order."""
    spec = get_strategy(name)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise InvalidInputError(f"scores must be 1-D, got shape {s.shape}")
    m = np.ones(s.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != s.shape:
        raise InvalidInputError(f"mask shape {m.shape} does not match scores shape {s.shape}")
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if groups is not None and np.shape(groups) != s.shape:
        raise InvalidInputError(f"groups shape {np.shape(groups)} does not match scores shape {s.shape}")
    if vectors is not None and len(vectors) != s.shape[0]:
        raise InvalidInputError(f"vectors have {len(vectors)} rows for {s.shape[0]} scores")
    rows = spec.fn(s, m, int(k), rng, groups=groups, vectors=vectors, **dict(options or {}))
    return np.asarray(rows, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- helpers
def _candidates(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask & np.isfinite(scores))


def _reject_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise InvalidInputError(f"strategy {name!r} takes no options, got {sorted(options)}")


def _ranked(cand: np.ndarray, values: np.ndarray, k: int, descending: bool) -> np.ndarray:
    """The ``k`` best of ``cand`` by ``values`` (ties: lower position first), exact and deterministic."""
    key = -values if descending else values
    if cand.size > k:
        kth = np.partition(key, k - 1)[k - 1]
        keep = key <= kth  # keeps every tie at the boundary, so the tie-break below decides
        cand, key = cand[keep], key[keep]
    order = np.lexsort((cand, key))[:k]
    return cand[order]


# ---------------------------------------------------------------------------------------------- strategies
@register_strategy("nearest", pool="top")
def nearest(
    scores: np.ndarray,
    mask: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """The k most similar candidates (RAG-Text2CT's default retrieval, with k = 1)."""
    _reject_options("nearest", options)
    cand = _candidates(scores, mask)
    return _ranked(cand, scores[cand], k, descending=True)


@register_strategy("topk", pool="top")
def topk(
    scores: np.ndarray,
    mask: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """Alias of nearest, named as in papers that pool the top-k retrieved cases."""
    _reject_options("topk", options)
    return nearest(scores, mask, k, rng)


@register_strategy("farthest", pool="bottom")
def farthest(
    scores: np.ndarray,
    mask: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """The k least similar candidates, least similar first (an ablation: deliberately wrong context)."""
    _reject_options("farthest", options)
    cand = _candidates(scores, mask)
    return _ranked(cand, scores[cand], k, descending=False)


@register_strategy("random", needs_scores=False)
def random(
    scores: np.ndarray,
    mask: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """k candidates drawn uniformly without replacement from ``rng`` (an ablation: uninformed context)."""
    _reject_options("random", options)
    cand = _candidates(scores, mask)
    if cand.size == 0:
        return cand
    return rng.choice(cand, size=min(k, cand.size), replace=False)


@register_strategy("mmr", pool="top", shortlist_factor=10, min_shortlist=50, pool_option="pool", needs_vectors=True)
def mmr(
    scores: np.ndarray,
    mask: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    mmr_lambda: float = 0.7,
    pool: int | None = None,
    one_per_patient: bool = True,
) -> np.ndarray:
    """Maximal marginal relevance: relevant but mutually different cases, at most one per patient.

    Each pick maximises ``mmr_lambda * score - (1 - mmr_lambda) * max cosine to the cases already picked``
    (Carbonell & Goldstein, SIGIR 1998), among the ``pool`` best candidates (default ``max(10k, 50)``).
    ``groups`` holds patient codes; a patient already represented is skipped, so two scans of one person never
    both fill the context. Without ``vectors`` the diversity term is zero (patient constraint only).
    """
    if not 0.0 <= mmr_lambda <= 1.0:
        raise InvalidInputError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
    cand = _candidates(scores, mask)
    pool_size = pool if pool is not None else max(10 * k, 50)
    cand = _ranked(cand, scores[cand], pool_size, descending=True)
    if cand.size == 0:
        return cand
    rel = scores[cand]
    if vectors is not None:
        v = np.asarray(vectors[cand], dtype=np.float32)
        sim = v @ v.T
    else:
        sim = np.zeros((cand.size, cand.size), dtype=np.float32)
    avail = np.ones(cand.size, dtype=bool)
    penalty = np.zeros(cand.size, dtype=np.float64)  # max similarity to the picked set (0 while it is empty)
    any_picked = False
    cand_groups = np.asarray(groups)[cand] if (groups is not None and one_per_patient) else None
    picked: list[int] = []
    while len(picked) < k and avail.any():
        value = mmr_lambda * rel - (1.0 - mmr_lambda) * penalty
        value = np.where(avail, value, -np.inf)
        j = int(np.argmax(value))  # first maximum = best-ranked candidate among ties
        picked.append(j)
        avail[j] = False
        if cand_groups is not None:
            avail &= cand_groups != cand_groups[j]
        penalty = sim[j].astype(np.float64) if not any_picked else np.maximum(penalty, sim[j])
        any_picked = True
    return cand[np.asarray(picked, dtype=np.int64)]
