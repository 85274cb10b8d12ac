"""Typed configuration of ``ctrag.segment`` (the ``segment:`` section of a preset).

Thresholds are Hounsfield units and sizes are millimetres (converted to voxels with each CT's spacing), so the
same settings behave alike at 0.75 mm and at 8 mm. Which backend runs is a setting (``method``), never a
fallback chosen by catching an exception: asking for TotalSegmentator where it is missing is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ctrag.errors import ConfigError

SegmentMethod = Literal["classical", "totalsegmentator"]
LabelSet = Literal["coarse", "total"]


@dataclass
class ClassicalConfig:
    """HU thresholds and morphology sizes of the classical (threshold + morphology) segmenter."""

    working_spacing_mm: float = 3.0
    """Finer CTs are mean-pooled by integer factors to about this spacing before segmenting and the labels are
    repeated back onto the input grid: the thresholds were validated at 2.6-3.4 mm, and a 512x512 slice costs
    16 times more morphology. 0 segments at the input resolution."""
    # --- body
    outside_fov_hu: float = -1024.0
    """Values below this are padding outside the reconstruction circle (-2048, -3024); treated as air."""
    body_hu: float = -500.0
    """Tissue threshold for the body outline (skin/fat are above, air and lung below)."""
    table_opening_mm: float = 6.0
    """Opening radius that detaches the scanner table and blankets from the body before picking the largest part."""
    fov_closed_fraction: float = 0.5
    """If tissue covers at least this fraction of an axial slice's border, the field of view cuts through the body
    there (a crop) and the border is treated as body, so lungs cut by the crop edge still count as inside."""
    # --- lungs
    air_hu: float = -400.0
    """Air-like threshold: lung parenchyma and airway lumen lie below it."""
    gas_p10_hu: float = -960.0
    gas_max_ml: float = 600.0
    """An air pocket whose 10th HU percentile is below ``gas_p10_hu`` and that is smaller than ``gas_max_ml`` is gas
    (stomach, bowel), not aerated lung: gas pockets hold pure air (-1000 HU) even after pooling to 6 mm, while lung
    parenchyma has vessels in every voxel (10th percentile -800 to -930 HU on the shipped CTs at 2.6-6.7 mm).
    Emphysematous lungs can have a gas-like percentile; the size limit keeps a whole lung from being dropped."""
    lung_max_median_hu: float = -600.0
    """Air pieces with a higher median are partial-volume slivers (skin folds, fat next to air), not lung."""
    lung_min_ml: float = 5.0
    lung_min_fraction: float = 0.02
    """Lung pieces smaller than this fraction of the largest lung piece are dropped (noise, small gas)."""
    lung_closing_mm: float = 5.0
    """Closing radius that pulls vessels and hilar structures on the lung margin into the lung."""
    lung_split_erosion_mm: float = 15.0
    """Largest in-plane erosion tried to split lungs that touch at a junction line."""
    # --- airway
    airway_hu: float = -900.0
    """Lumen threshold for the trachea and main bronchi (stricter than ``air_hu`` so growing stops at the lung)."""
    airway_min_area_mm2: float = 40.0
    airway_max_area_mm2: float = 700.0
    airway_max_growth: float = 2.5
    """Tracking stops when the airway cross-section grows by more than this factor between slices (it entered lung)."""
    airway_midline_mm: float = 45.0
    """The tracheal seed must lie within this distance of the body's left-right centre."""
    airway_search_mm: float = 120.0
    """Seeds are searched this far below the top of the body."""
    airway_min_length_mm: float = 20.0
    bronchi_length_mm: float = 30.0
    """How far below the carina the main bronchi are followed."""
    # --- bone
    bone_hu: float = 200.0
    """Bone core: cortex and dense marrow. Contrast blood in the portal-venous phase (150-200 HU) stays mostly below."""
    bone_min_ml: float = 0.1
    bone_fill_max_mm2: float = 900.0
    """Enclosed holes up to this area (marrow of vertebral bodies) are filled into bone; larger ones (the thorax
    when ribs, spine and sternum close a ring) are not."""
    marrow_hu: float = 110.0
    marrow_grow_mm: float = 6.0
    """Bone grows from its core into voxels above ``marrow_hu`` within this distance (marrow of vertebral bodies and
    pelvis, partial-volume cortex), and fills enclosed holes above ``marrow_hu``."""
    blood_pool_radius_mm: float = 7.0
    """Contrast-filled heart chambers and large vessels pass ``bone_hu`` (300-600 HU in arterial phase). They are thick
    and large: a region of [``bone_hu``, ``blood_pool_max_hu``] that holds a ball of this radius and has at least
    ``blood_pool_min_ml`` is a blood pool and is removed from bone. Single vertebral bodies and humeral/femoral heads
    with dense marrow are smaller (1-41 mL on the shipped CTs, vs. 546 mL for the heart + aorta of the CTA crop).
    0 disables the check."""
    blood_pool_max_hu: float = 1200.0
    blood_pool_min_ml: float = 60.0
    blood_pool_relative: float = 0.6
    blood_pool_secondary_min_hu: float = 300.0
    """Once a blood pool is found, smaller thick regions whose median HU is at least ``blood_pool_relative`` times the
    pool's median and above ``blood_pool_secondary_min_hu`` are blood as well (a descending aorta cut off by the
    crop); marrow of the same patient is far less dense than arterial-phase blood."""

    def __post_init__(self) -> None:
        lo = self.outside_fov_hu
        if not (lo <= self.air_hu < self.bone_hu and lo < self.body_hu < self.bone_hu):
            raise ConfigError(
                "ClassicalConfig: expected outside_fov_hu <= air_hu < bone_hu and outside_fov_hu < body_hu < bone_hu, "
                f"got outside_fov_hu={self.outside_fov_hu}, air_hu={self.air_hu}, body_hu={self.body_hu}, "
                f"bone_hu={self.bone_hu}"
            )
        if not self.airway_hu <= self.air_hu:
            raise ConfigError(f"ClassicalConfig: airway_hu ({self.airway_hu}) must be <= air_hu ({self.air_hu})")
        if not 0.0 < self.fov_closed_fraction <= 1.0:
            raise ConfigError(f"ClassicalConfig: fov_closed_fraction must be in (0, 1], got {self.fov_closed_fraction}")
        for name in (
            "table_opening_mm",
            "lung_closing_mm",
            "lung_split_erosion_mm",
            "blood_pool_radius_mm",
            "lung_min_ml",
            "bone_min_ml",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"ClassicalConfig: {name} must be >= 0, got {getattr(self, name)}")
        if self.airway_min_area_mm2 >= self.airway_max_area_mm2 or self.airway_max_growth <= 1.0:
            raise ConfigError(
                "ClassicalConfig: need airway_min_area_mm2 < airway_max_area_mm2 and airway_max_growth > 1, got "
                f"{self.airway_min_area_mm2}, {self.airway_max_area_mm2}, {self.airway_max_growth}"
            )


@dataclass
class TotalSegConfig:
    """Where TotalSegmentator's weights are and how to run it. Nothing is ever downloaded.

    ``weights_dir`` is either a ``TOTALSEG_HOME_DIR``-style folder (holding ``nnunet/results/Dataset2xx_*``) or the
    results folder itself (``TOTALSEG_WEIGHTS_PATH``-style).
    """

    weights_dir: Path | None = None
    task: Literal["total"] = "total"
    fast: bool = True
    """True: the 3 mm model (task 297, one network); False: the 1.5 mm models (tasks 291-295)."""
    device: str = "cpu"
    """"cpu", "cuda" or "cuda:N"."""


@dataclass
class SegmentConfig:
    """Which backend to run and which label set to return."""

    method: SegmentMethod = "classical"
    labels: LabelSet = "coarse"
    """"coarse": ``ctrag.data.labels.COARSE_LABELS`` (body, lungs, airway, bone) from either backend;
    "total": raw TotalSegmentator v2 ids (only with method "totalsegmentator")."""
    check_intensity: bool = True
    """Refuse inputs that do not look like Hounsfield units (normalised or windowed exports)."""
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    totalseg: TotalSegConfig = field(default_factory=TotalSegConfig)

    def __post_init__(self) -> None:
        if self.method == "classical" and self.labels == "total":
            raise ConfigError(
                'SegmentConfig: labels "total" (117 TotalSegmentator classes) needs method "totalsegmentator"; '
                "the classical segmenter produces the coarse set only"
            )
