"""How well a generated CT follows its proxy: segment it, compare with the mask it was conditioned on.

This is RAG-Text2CT's spatial-controllability measure (Dice between a segmentation of the generated volume and
the conditioning mask) with ``ctrag.segment``'s classical segmenter in place of TotalSegmentator, on the coarse
structures it can find. ``lungs`` merges left and right so a swapped side still counts as lung.

The classical segmenter only calls air "lung" when a closed body wall surrounds it; blurry low-resolution
generations often have dark lungs behind a wall with gaps, which it then counts as outside air. ``air_in_body``
is therefore reported beside it, labelled as what it is: Dice between the generated voxels darker than
``air_hu`` inside the proxy's body outline and the proxy's lungs (a threshold measure, not a segmentation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctrag.data.labels import COARSE_LABELS, as_coarse
from ctrag.data.nifti import Volume


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def coarse_dice(segmented: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice per coarse structure (NaN where neither mask has it) plus merged ``lungs``."""
    out = {}
    for code, name in COARSE_LABELS.items():
        out[name] = (
            _dice(segmented == code, reference == code) if name != "body" else _dice(segmented > 0, reference > 0)
        )
    out["lungs"] = _dice(np.isin(segmented, (2, 3)), np.isin(reference, (2, 3)))
    return out


def segment_generated(volume: np.ndarray, affine: np.ndarray, segment_config: Any | None = None) -> np.ndarray:
    """Coarse labels of a generated volume (HU) from the classical segmenter."""
    from ctrag.generation.proxy import segment_ct

    vol = Volume(array=np.asarray(volume, dtype=np.float32), affine=affine)
    return np.asarray(segment_ct(vol, segment_config, check_intensity=False).array)


def air_in_body_dice(volume: np.ndarray, reference: np.ndarray, air_hu: float = -400.0) -> float:
    """Dice of (generated HU < ``air_hu`` inside the reference body outline) vs the reference lungs."""
    inside = reference > 0
    return _dice((np.asarray(volume) < air_hu) & inside, np.isin(reference, (2, 3)))


def control_agreement(
    volume: np.ndarray,
    affine: np.ndarray,
    proxy: np.ndarray,
    label_set: str = "coarse",
    segment_config: Any | None = None,
) -> dict[str, float]:
    """Dice between the segmentation of ``volume`` and ``proxy`` (converted to coarse labels), plus the
    threshold measure ``air_in_body`` (see the module docstring)."""
    reference = as_coarse(proxy, label_set)
    out = coarse_dice(segment_generated(volume, affine, segment_config), reference)
    out["air_in_body"] = air_in_body_dice(volume, reference)
    return out
