"""One entry point for anatomy masks: ``segment_volume(volume, config)``.

The backend is a configuration choice (``SegmentConfig.method``), so a run is reproducible from its config: the
classical segmenter always works; TotalSegmentator is used only when asked for, and asking for it where it is
not installed is an error rather than a silent switch to something else. Both backends can return the coarse
label set (``ctrag.data.labels.COARSE_LABELS``), which is what makes their masks comparable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ctrag.data.labels import COARSE_LABELS, to_coarse, totalseg_v2_labels
from ctrag.data.nifti import Volume, check_ct_intensity, check_same_grid, load_volume, save_volume
from ctrag.errors import DataValidationError
from ctrag.segment.classical import classical_body, classical_segment
from ctrag.segment.config import ClassicalConfig, SegmentConfig
from ctrag.segment.totalseg import TotalSegBackend, run_totalsegmentator


def check_ct_volume(volume: Volume) -> None:
    """Refuse what cannot be a CT in Hounsfield units (2-D, degenerate, normalised, windowed, constant)."""
    name = volume.path or "volume"
    if volume.array.ndim != 3:
        raise DataValidationError(f"{name}: expected a 3-D CT volume, got an array of shape {volume.array.shape}")
    if min(volume.shape) < 2:
        raise DataValidationError(f"{name}: degenerate shape {volume.shape} (a single slice is not a volume)")
    check_ct_intensity(volume)


def totalseg_to_coarse(mask: Volume, ct: Volume | None = None, config: ClassicalConfig | None = None) -> Volume:
    """TotalSegmentator "total" labels → ``COARSE_LABELS``, so they compare with the classical segmenter.

    TotalSegmentator has no body class: with ``ct`` the body comes from the classical body mask of that CT (on the
    same grid), otherwise every labelled voxel counts as body.
    """
    body = None
    if ct is not None:
        check_same_grid(mask, ct)
        body = classical_body(ct, config) | (np.asarray(mask.array) > 0)
    coarse = to_coarse(np.asarray(mask.array), body=body)
    meta = {**mask.meta, "labels": "coarse", "label_names": dict(COARSE_LABELS), "converted_from": "total"}
    return Volume(array=coarse, affine=mask.affine.copy(), path=None, meta=meta)


def segment_volume(
    volume: Volume, config: SegmentConfig | None = None, *, backend: TotalSegBackend | None = None
) -> Volume:
    """Anatomy labels for ``volume`` on its own grid (same shape and affine), as uint8.

    ``config.method`` picks the backend; ``config.labels`` the label set ("coarse" from either backend, "total"
    only from TotalSegmentator). ``backend`` replaces the TotalSegmentator call (tests, remote services).
    The returned ``Volume.meta`` records method, label names and, for the classical backend, what it found.
    """
    cfg = config or SegmentConfig()
    if cfg.check_intensity:
        check_ct_volume(volume)
    elif volume.array.ndim != 3:
        raise DataValidationError(f"{volume.path or 'volume'}: expected a 3-D CT, got shape {volume.array.shape}")
    if cfg.method == "classical":
        return classical_segment(volume, cfg.classical)
    labels = run_totalsegmentator(volume, cfg.totalseg, backend=backend)
    if cfg.labels == "total":
        labels.meta["label_names"] = dict(totalseg_v2_labels())
        return labels
    return totalseg_to_coarse(labels, volume, cfg.classical)


def segment_file(
    ct_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: SegmentConfig | None = None,
    *,
    backend: TotalSegBackend | None = None,
) -> Volume:
    """Load a CT, segment it and write the mask atomically (uint8 NIfTI on the CT's grid)."""
    volume = load_volume(ct_path)
    labels = segment_volume(volume, config, backend=backend)
    method = labels.meta.get("method", "?")
    save_volume(
        Path(out_path),
        labels.array,
        volume.affine,
        dtype=np.uint8,
        description=f"ctrag segment {method} {labels.meta.get('labels', '')}",
    )
    labels.path = str(out_path)
    return labels
