"""Modality-gap diagnostic for a shared embedding space (text vectors vs CT vectors).

Why: contrastive training can leave the two modalities in separate regions of the shared space (Liang et al.
2022, "Mind the Gap", arXiv:2203.02053; shown for medical image-text alignment in the modality-gap abstract of
issue 14). A CT query then scores every report through an offset common to all of them, and cosine rankings of
the two sides are hard to compare. The figures here say how large that offset is and whether matched pairs sit
close together:

- **gap vector**: centroid of modality A minus centroid of modality B, and its Euclidean norm;
- **centroid cosine distance**: 1 - cosine of the two centroids (0 when they point the same way);
- **alignment**: mean squared distance of matched pairs (row i of A with row i of B), Wang & Isola 2020
  (arXiv:2005.10242) with alpha = 2; only when both sets have the same rows;
- **uniformity**: log of the mean of exp(-2 ||x - y||^2) over distinct pairs within one modality (Wang & Isola,
  t = 2); lower is more spread out.

The vectors are used as given (no re-normalisation unless asked), so a constant shift of one set shows up as a
gap of exactly that shift's norm. :func:`centre_modalities` is the post-hoc correction: subtract each modality's
own centroid (and re-normalise), which removes the gap vector by construction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ctrag.errors import InvalidInputError

if TYPE_CHECKING:
    from ctrag.data.case import Case
    from ctrag.encoders.base import Encoder

#: Uniformity uses every distinct pair up to this many rows; larger sets are subsampled (seeded) to bound cost.
MAX_UNIFORMITY_ROWS = 2000


@dataclass(frozen=True)
class ModalityGap:
    """Figures of one (A, B) pair of embedding sets; ``alignment`` is None when the rows are not matched."""

    n_a: int
    n_b: int
    dim: int
    gap_norm: float
    centroid_cosine_distance: float
    alignment: float | None
    uniformity_a: float
    uniformity_b: float
    gap_vector: tuple[float, ...]

    def to_dict(self, with_vector: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_vector:
            out.pop("gap_vector")
        return out


def _as_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(f"modality_gap: {name} must be a non-empty (n, d) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"modality_gap: {name} contains NaN or infinite values")
    return arr


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def uniformity(x: Any, t: float = 2.0, *, seed: int = 0) -> float:
    """log mean exp(-t ||x_i - x_j||^2) over distinct pairs i < j (Wang & Isola); 0.0 for a single row."""
    arr = _as_matrix(x, "x")
    if len(arr) > MAX_UNIFORMITY_ROWS:
        rows = np.random.default_rng(seed).choice(len(arr), MAX_UNIFORMITY_ROWS, replace=False)
        arr = arr[np.sort(rows)]
    n = len(arr)
    if n < 2:
        return 0.0
    sq = (arr**2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * arr @ arr.T, 0.0)
    iu = np.triu_indices(n, k=1)
    vals = -t * d2[iu]
    top = vals.max()
    return float(top + np.log(np.mean(np.exp(vals - top))))


def modality_gap(a: Any, b: Any, *, normalise: bool = False, seed: int = 0) -> ModalityGap:
    """The diagnostic for modality A (e.g. CT vectors) against modality B (e.g. report vectors).

    ``normalise=True`` L2-normalises rows first (for raw tower outputs); encoders in ctrag already return unit
    vectors, so the default measures what the index scores.
    """
    x, y = _as_matrix(a, "a"), _as_matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise InvalidInputError(f"modality_gap: dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    if normalise:
        x, y = _normalise(x), _normalise(y)
    ca, cb = x.mean(axis=0), y.mean(axis=0)
    gap = ca - cb
    na, nb = np.linalg.norm(ca), np.linalg.norm(cb)
    cos = float(ca @ cb / (na * nb)) if na > 1e-12 and nb > 1e-12 else 0.0
    alignment = float(((x - y) ** 2).sum(axis=1).mean()) if x.shape == y.shape else None
    return ModalityGap(
        n_a=len(x),
        n_b=len(y),
        dim=x.shape[1],
        gap_norm=float(np.linalg.norm(gap)),
        centroid_cosine_distance=1.0 - cos,
        alignment=alignment,
        uniformity_a=uniformity(x, seed=seed),
        uniformity_b=uniformity(y, seed=seed),
        gap_vector=tuple(float(v) for v in gap),
    )


def centre_modalities(a: Any, b: Any, *, renormalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each set minus its own centroid (then back to unit length): the centroid-gap removal correction.

    Why both sides: subtracting only one centroid would move that modality onto the other's origin offset,
    while centring both puts the two clouds around the same point whatever their original offsets.
    """
    x, y = _as_matrix(a, "a"), _as_matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise InvalidInputError(f"centre_modalities: dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    if renormalise:
        x, y = _normalise(x), _normalise(y)
    return x.astype(np.float32), y.astype(np.float32)


def paired_recall(a: Any, b: Any, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """A -> B recall@k of matched rows by cosine (row i of A should find row i of B)."""
    x, y = _normalise(_as_matrix(a, "a")), _normalise(_as_matrix(b, "b"))
    if x.shape != y.shape:
        raise InvalidInputError(f"paired_recall: A and B must be row-matched, got {x.shape} vs {y.shape}")
    sims = x @ y.T
    own = np.diagonal(sims)
    ranks = (sims > own[:, None]).sum(axis=1) + 1
    out = {f"recall@{k}": float((ranks <= k).mean()) for k in ks}
    out["mean_rank"] = float(ranks.mean())
    out["n"] = float(len(x))
    return out


def encoder_modality_gap(encoder: Encoder, cases: Sequence[Case]) -> dict[str, Any]:
    """The diagnostic of a shared-space encoder on the cases that have both a CT and a report.

    What the pairs are is part of the answer (``pair_sources``): in the shipped data every CT's text is an
    annotation-derived caption, not its radiologist report, and figures on such pairs must say so.
    """
    from ctrag.encoders.preprocess import load_prepared

    if not encoder.supports_volume:
        raise InvalidInputError(
            f"encoder {encoder.name!r} has no volume side; the modality gap needs a shared-space encoder "
            "(a folder written by `ctrag train encoder`)"
        )
    pairs = [c for c in cases if c.has_volume and c.has_report]
    if len(pairs) < 2:
        raise InvalidInputError(f"modality gap: need at least 2 cases with a CT and a report, found {len(pairs)}")
    preprocess = getattr(encoder, "preprocess", None)
    if preprocess is None:
        raise InvalidInputError(f"encoder {encoder.name!r} does not say how to preprocess a CT")
    vols = []
    for case in pairs:
        assert case.volume_path is not None
        rescale = case.extra.get("rescale") if case.extra.get("rescale_applied") else None
        prepared = load_prepared(case.volume_path, preprocess, rescale=rescale)
        vols.append(encoder.encode_volume(prepared.tensor[None])[0])
    ct = np.stack(vols)
    text = encoder.encode_text([c.report_text for c in pairs])
    gap = modality_gap(ct, text)
    ks = tuple(k for k in (1, 5) if k <= len(pairs))
    return {
        "pairs": len(pairs),
        "pair_sources": dict(Counter(c.report_source for c in pairs)),
        "case_ids": [c.case_id for c in pairs],
        "modality_gap": gap.to_dict(),
        "ct_to_text": paired_recall(ct, text, ks=ks),
        "encoder": {"name": encoder.name, "fingerprint": encoder.fingerprint},
    }


__all__ = ["ModalityGap", "centre_modalities", "encoder_modality_gap", "modality_gap", "paired_recall", "uniformity"]
