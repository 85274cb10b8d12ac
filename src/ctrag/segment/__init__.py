"""Anatomy masks for CTs that come without one (shipped, uploaded or generated volumes).

``segment_volume(volume, SegmentConfig(...))`` returns labels on the CT's own grid from the backend the config
names: the classical segmenter (body, left/right lung, airway, bone from HU + morphology; CPU, deterministic,
about a second) or TotalSegmentator when its package and weights are on disk (never downloaded).
"""

from ctrag.segment.api import check_ct_volume, segment_file, segment_volume, totalseg_to_coarse
from ctrag.segment.classical import ClassicalResult, classical_body, classical_masks, classical_segment
from ctrag.segment.config import ClassicalConfig, SegmentConfig, TotalSegConfig
from ctrag.segment.totalseg import (
    HAS_TOTALSEGMENTATOR,
    TotalSegRequest,
    TotalSegStatus,
    run_totalsegmentator,
    totalsegmentator_available,
    totalsegmentator_status,
)

__all__ = [
    "HAS_TOTALSEGMENTATOR",
    "ClassicalConfig",
    "ClassicalResult",
    "SegmentConfig",
    "TotalSegConfig",
    "TotalSegRequest",
    "TotalSegStatus",
    "check_ct_volume",
    "classical_body",
    "classical_masks",
    "classical_segment",
    "run_totalsegmentator",
    "segment_file",
    "segment_volume",
    "totalseg_to_coarse",
    "totalsegmentator_available",
    "totalsegmentator_status",
]
