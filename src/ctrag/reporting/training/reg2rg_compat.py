"""Visual features of CT cases for training (the same helper exists in the Reg2RG recipe; merge into one)."""

from __future__ import annotations

from collections.abc import Sequence

from ctrag.data.case import Case
from ctrag.reporting.visual import VisualFeatures, VisualFrontEnd
from ctrag.utils.progress import ProgressFn


def pair_features(
    cases: Sequence[Case], visual: VisualFrontEnd, progress: ProgressFn | None = None
) -> list[VisualFeatures]:
    """Frozen features of each case's CT (its manifest mask if it has one, else the segmenter's)."""
    from ctrag.data.nifti import load_volume

    out = []
    for i, c in enumerate(cases):
        assert c.volume_path is not None
        mask = load_volume(c.mask_path) if c.mask_path else None
        if mask is not None and c.mask_source:
            mask.meta["mask_source"] = c.mask_source
        out.append(visual.extract(load_volume(c.volume_path), mask))
        if progress:
            progress("visual features", i + 1, len(cases))
    return out
