"""Visual front end shared by the report methods: whole-volume features and Reg2RG's per-region features.

Why one module for all methods: AdaRAG-CT, DiffVP and Reg2RG all read a CT through the same volume encoder, and
their comparison is only fair when they see the same features. :class:`VisualFrontEnd` turns a CT (HU, any
orientation) and an anatomy mask into a :class:`VisualFeatures` record:

* ``global_vector`` (``2 * C``: mean and max of the encoder's last feature map over the whole preprocessed CT) and
  ``global_tokens`` (the feature map average-pooled to ``global_grid`` cells, ``(prod(global_grid), C)``): the
  global context (Reg2RG's global token; DiffVP's Q-Former reads tokens).
* ``texture`` ``(R, 2 * C)`` per region, after Reg2RG's decoupled local features: the CT is masked to the region on
  its **native** grid (voxels outside the region set to the bottom of the HU window), cropped to the region's
  bounding box (+ ``crop_margin_mm``), resampled to ``patch_size`` and encoded; the feature map is pooled (mean and
  max) inside the region's own mask. Because the masking happens before any interpolation, the texture of a region
  does not depend on a single voxel outside it (tested).
* ``geometry`` ``(R, 1, *geometry_size)``: the region's binary mask on the whole-volume working grid, area-pooled
  to ``geometry_size`` (occupancy in [0, 1]); it keeps position and scale that the crop throws away. It is the
  *input* of :class:`GeometryEncoder`, a small 3-D conv net that the report model trains (Reg2RG trains its
  geometry encoder too); the front end itself holds no trainable weights.
* ``present`` ``(R,)``: whether the region has voxels. A region without voxels gets zeros and ``present=False``,
  never an error: the classical segmenter finds no heart, and no TotalSegmentator class is a breast.

Regions (:data:`REGION_LABELS` says which labels map where; the table is also in ``docs/reporting.md``):
TotalSegmentator v2 "total" labels and ``ctrag.segment``'s coarse labels both map to the ten Reg2RG regions.
The pleura has no class in either vocabulary, so it is derived: a band of ``pleura_band_mm`` on each side of the
lung surface. The breast has no source label at all and is always absent (flagged).

Mask source: a mask given by the caller (``mask_source="given"``) or, when none is given, ``ctrag.segment``'s
configured backend (``"segmenter:classical"`` by default, which yields lung, airway and bone only); it is recorded
in the output, with notes on every region that came out empty.

Affines: every resampling goes through ``ctrag.data.transforms.build_preprocess`` (MONAI, affine-tracked, RAS);
crops carry their own affine (origin moved to the crop corner, axes untouched), so no step mirrors an axis.

Encoder: the project's 3-D volume tower (:class:`ctrag.encoders.volume.VolumeTower`), either the tower of a
shared-space encoder trained with ``ctrag train encoder`` (:meth:`VisualFrontEnd.from_encoder`) or, by default, a
tower built from :class:`VisualConfig` with seeded random weights. The default is an *untrained* feature
extractor (random conv features), which is what the CPU tests and tiny runs use; say so when reporting figures.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctrag.data.labels import ANATOMY_GROUPS, COARSE_LABELS, source_space, totalseg_v2_labels
from ctrag.data.nifti import HU_AIR, Volume, check_same_grid
from ctrag.data.transforms import PreprocessConfig, build_preprocess, volume_to_metatensor
from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.reporting.sentences import REGIONS

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Labels -> regions
# --------------------------------------------------------------------------------------------------------------


def _names(ids: Sequence[int]) -> tuple[str, ...]:
    table = totalseg_v2_labels()
    return tuple(table[i] for i in ids)


#: TotalSegmentator v2 "total" class names per Reg2RG region. A class belongs to one region only, so region masks
#: do not double-count voxels; the aorta (the whole vessel, TotalSegmentator does not split it) is mediastinum.
TOTALSEG_REGIONS: dict[str, tuple[str, ...]] = {
    "lung": _names(ANATOMY_GROUPS["lung_left"] + ANATOMY_GROUPS["lung_right"]),
    "trachea and bronchie": _names(ANATOMY_GROUPS["airway"]),
    "pleura": (),  # derived from the lung surface, see module docstring
    "mediastinum": (
        "aorta",
        "pulmonary_vein",
        "brachiocephalic_trunk",
        "brachiocephalic_vein_left",
        "brachiocephalic_vein_right",
        "superior_vena_cava",
    ),
    "heart": _names(ANATOMY_GROUPS["heart"]),
    "esophagus": ("esophagus",),
    "thyroid": ("thyroid_gland",),
    "breast": (),  # no TotalSegmentator class
    "bone": _names(ANATOMY_GROUPS["bone"]),
    "abdomen": (
        *_names(ANATOMY_GROUPS["upper_abdomen"]),
        "small_bowel",
        "colon",
        "inferior_vena_cava",
        "portal_vein_and_splenic_vein",
    ),
}

#: ``ctrag.segment`` coarse label names per region (body carries no region).
COARSE_REGIONS: dict[str, tuple[str, ...]] = {
    "lung": ("lung_left", "lung_right"),
    "trachea and bronchie": ("airway",),
    "bone": ("bone",),
}

#: Regions built from another region's mask instead of labels: region -> (source region, how).
DERIVED_REGIONS: dict[str, str] = {"pleura": "band around the lung surface"}

#: Everything above in one place, for documentation and the output record.
REGION_LABELS: dict[str, dict[str, Any]] = {
    r: {
        "totalseg": list(TOTALSEG_REGIONS.get(r, ())),
        "coarse": list(COARSE_REGIONS.get(r, ())),
        "derived": DERIVED_REGIONS.get(r),
    }
    for r in REGIONS
}


def _lookup(label_set: str, regions: Sequence[str]) -> dict[str, np.ndarray]:
    """region -> label ids of ``label_set`` ("totalseg" or "coarse")."""
    if label_set == "totalseg":
        by_name = {v: k for k, v in totalseg_v2_labels().items()}
        table = TOTALSEG_REGIONS
    elif label_set == "coarse":
        by_name = {v: k for k, v in COARSE_LABELS.items()}
        table = COARSE_REGIONS
    else:
        raise DataValidationError(f"region masks: unknown label set {label_set!r} (totalseg or coarse)")
    return {r: np.asarray([by_name[n] for n in table.get(r, ())], dtype=np.int64) for r in regions}


def region_masks(
    labels: np.ndarray,
    label_set: str,
    regions: Sequence[str] = REGIONS,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    pleura_band_mm: float = 4.0,
) -> np.ndarray:
    """Binary masks ``(len(regions), *labels.shape)`` of the Reg2RG regions from a label map.

    ``spacing`` (mm per voxel axis) sizes the derived pleura band, so the band is the same physical width on any
    grid. Unknown region names raise; regions without a source label come back empty.
    """
    unknown = [r for r in regions if r not in REGIONS]
    if unknown:
        raise InvalidInputError(f"unknown regions {unknown}; known: {list(REGIONS)}")
    arr = np.asarray(labels).astype(np.int64, copy=False)
    ids = _lookup(label_set, list(regions) + (["lung"] if "pleura" in regions else []))
    out = np.zeros((len(regions), *arr.shape), dtype=bool)
    for i, r in enumerate(regions):
        if r == "pleura":
            out[i] = _pleura_band(np.isin(arr, ids["lung"]), spacing, pleura_band_mm)
        elif ids[r].size:
            out[i] = np.isin(arr, ids[r])
    return out


def _pleura_band(lung: np.ndarray, spacing: Sequence[float], band_mm: float) -> np.ndarray:
    if not lung.any():
        return np.zeros_like(lung)
    from scipy import ndimage as ndi

    radius = [max(1, round(band_mm / float(s))) for s in spacing]
    struct = np.zeros([2 * r + 1 for r in radius], dtype=bool)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    struct[sum((g / max(r, 1)) ** 2 for g, r in zip(grid, radius, strict=True)) <= 1.0] = True
    grown = ndi.binary_dilation(lung, structure=struct)
    shrunk = ndi.binary_erosion(lung, structure=struct)
    return np.asarray(grown & ~shrunk)


# --------------------------------------------------------------------------------------------------------------
# Config, output record, geometry encoder
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VisualConfig:
    """Settings of the visual front end (the ``reporting.visual:`` section of a preset).

    ``spacing``/``size``: the whole-volume working grid (RAS, pad/crop), used for the global features and the
    geometry masks; ``patch_size``: the grid every region crop is resized to; ``tower_*`` and ``seed``: the default
    (untrained) volume tower, ignored when a trained tower is passed in.
    """

    regions: tuple[str, ...] = REGIONS
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0)
    size: tuple[int, int, int] = (64, 64, 32)
    patch_size: tuple[int, int, int] = (32, 32, 32)
    crop_margin_mm: float = 4.0
    geometry_size: tuple[int, int, int] = (32, 32, 16)
    global_grid: tuple[int, int, int] = (2, 2, 2)
    pleura_band_mm: float = 4.0
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    tower_channels: tuple[int, ...] = (8, 16, 32)
    tower_strides: tuple[int, ...] = (2, 2, 2)
    seed: int = 0

    def __post_init__(self) -> None:
        self.regions = tuple(self.regions)
        bad = [r for r in self.regions if r not in REGIONS]
        if bad or not self.regions or len(set(self.regions)) != len(self.regions):
            raise ConfigError(
                f"VisualConfig: regions must be distinct names out of {list(REGIONS)}, got {self.regions}"
            )
        for name in ("size", "patch_size", "geometry_size", "global_grid"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3 or min(value) < 1:
                raise ConfigError(f"VisualConfig: {name} must be three positive integers, got {getattr(self, name)}")
            setattr(self, name, value)
        if min(self.patch_size) < 8 or min(self.size) < 8:
            raise ConfigError(
                "VisualConfig: size and patch_size need at least 8 voxels per axis (the encoder's minimum)"
            )
        if self.crop_margin_mm < 0 or self.pleura_band_mm <= 0:
            raise ConfigError("VisualConfig: crop_margin_mm must be >= 0 and pleura_band_mm > 0")

    def working_preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(spacing=self.spacing, size=self.size, hu_window=self.hu_window, resize_mode="pad_crop")

    def patch_preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(
            spacing=self.spacing, size=self.patch_size, hu_window=self.hu_window, resize_mode="resize"
        )

    def tower_config(self) -> VolumeTowerConfig:
        return VolumeTowerConfig(
            channels=tuple(self.tower_channels), strides=tuple(self.tower_strides), num_groups=8, head_hidden=32
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class VisualFeatures:
    """What the report methods read about one CT (see the module docstring for each field)."""

    global_vector: torch.Tensor  # (2C,)
    global_tokens: torch.Tensor  # (prod(global_grid), C)
    texture: torch.Tensor  # (R, 2C), zeros where absent
    geometry: torch.Tensor  # (R, 1, *geometry_size), occupancy in [0, 1]
    present: torch.Tensor  # (R,) bool
    regions: tuple[str, ...]
    voxels: list[int]  # region voxels on the native grid
    mask_source: str  # "given" or "segmenter:<method>"
    label_set: str  # "totalseg" or "coarse"
    notes: list[str] = field(default_factory=list)

    @property
    def missing_regions(self) -> list[str]:
        return [r for r, p in zip(self.regions, self.present.tolist(), strict=True) if not p]

    def select(self, regions: Sequence[str]) -> VisualFeatures:
        """The same record restricted to ``regions`` (in that order)."""
        pos = []
        for r in regions:
            if r not in self.regions:
                raise InvalidInputError(f"region {r!r} was not extracted; extracted: {list(self.regions)}")
            pos.append(self.regions.index(r))
        idx = torch.as_tensor(pos, dtype=torch.long)
        return VisualFeatures(
            self.global_vector,
            self.global_tokens,
            self.texture[idx],
            self.geometry[idx],
            self.present[idx],
            tuple(regions),
            [self.voxels[i] for i in pos],
            self.mask_source,
            self.label_set,
            list(self.notes),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (no tensors): what the report says about its visual input."""
        return {
            "mask_source": self.mask_source,
            "label_set": self.label_set,
            "regions": [
                {"region": r, "present": bool(p), "voxels": int(v)}
                for r, p, v in zip(self.regions, self.present.tolist(), self.voxels, strict=True)
            ],
            "missing_regions": self.missing_regions,
            "notes": list(self.notes),
        }


class GeometryEncoder(nn.Module):
    """Region mask -> vector: three strided 3-D convs, global mean pool, a linear map (Reg2RG's geometry branch,
    a small conv net here instead of their three-layer ViT3D)."""

    def __init__(self, out_dim: int, channels: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv3d(c_in, c, kernel_size=3, stride=2, padding=1), nn.GroupNorm(min(4, c), c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """``(n, 1, I, J, K)`` occupancy -> ``(n, out_dim)``."""
        if masks.ndim != 5 or masks.shape[1] != 1:
            raise InvalidInputError(f"GeometryEncoder: expected masks shaped (n, 1, I, J, K), got {tuple(masks.shape)}")
        return self.proj(self.convs(masks).mean(dim=(2, 3, 4)))


# --------------------------------------------------------------------------------------------------------------
# The front end
# --------------------------------------------------------------------------------------------------------------


class VisualFrontEnd:
    """CT + mask -> :class:`VisualFeatures` with a frozen volume tower (see the module docstring)."""

    def __init__(
        self,
        config: VisualConfig | None = None,
        *,
        tower: VolumeTower | None = None,
        tower_source: str = "untrained",
        segment_config: Any | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = config or VisualConfig()
        if tower is None:
            gen_state = torch.random.get_rng_state()
            try:  # seeded construction without leaving the global RNG changed
                torch.manual_seed(int(self.config.seed))
                tower = VolumeTower(self.config.tower_config())
            finally:
                torch.random.set_rng_state(gen_state)
            tower_source = "untrained"
        self.tower = tower.to(device).eval()
        for p in self.tower.parameters():
            p.requires_grad_(False)
        self.tower_source = tower_source
        self.segment_config = segment_config
        self.device = device

    @classmethod
    def from_encoder(cls, encoder: Any, config: VisualConfig | None = None, **kwargs: Any) -> VisualFrontEnd:
        """Use the tower of a shared-space encoder (``ctrag train encoder``); its grid replaces ``config``'s."""
        tower = getattr(encoder, "tower", None)
        if not isinstance(tower, VolumeTower):
            raise InvalidInputError(
                f"encoder {getattr(encoder, 'name', encoder)!r} has no ctrag volume tower; give a folder written by "
                "`ctrag train encoder` or leave the encoder out (untrained default tower)"
            )
        cfg = config or VisualConfig()
        prep = encoder.preprocess
        cfg = VisualConfig(**{**asdict(cfg), "spacing": tuple(prep.spacing), "size": tuple(prep.size)})
        return cls(cfg, tower=tower, tower_source=f"encoder:{getattr(encoder, 'fingerprint', '?')}", **kwargs)

    @property
    def feature_dim(self) -> int:
        """Width of ``texture`` and ``global_vector`` rows."""
        return 2 * int(self.tower.cfg.channels[-1])

    @property
    def token_dim(self) -> int:
        """Width of ``global_tokens`` rows."""
        return int(self.tower.cfg.channels[-1])

    def state(self) -> dict[str, Any]:
        """What a saved report model must record to rebuild this front end."""
        return {"config": self.config.to_dict(), "tower": self.tower.cfg.to_dict(), "tower_source": self.tower_source}

    # ---------------------------------------------------------------- extraction
    @torch.no_grad()  # not inference_mode: trainable heads read these tensors under autograd
    def extract(self, volume: Volume, mask: Volume | None = None) -> VisualFeatures:
        """Features of one CT (HU). ``mask``: TotalSegmentator "total" or coarse labels on the CT's grid."""
        from ctrag.segment.api import check_ct_volume, segment_volume

        cfg = self.config
        check_ct_volume(volume)
        notes: list[str] = []
        if mask is not None:
            check_same_grid(mask, volume)
            labels = np.asarray(mask.array)
            if labels.dtype.kind == "f":
                if not np.all(np.mod(labels, 1) == 0):
                    raise DataValidationError(f"{mask.path or 'mask'}: a label mask must hold integer labels")
                labels = labels.astype(np.int64)
            values = [int(v) for v in np.unique(labels) if v != 0]
            label_set = source_space(mask.meta.get("mask_source") if mask.meta else None, values)
            mask_source = "given"
        else:
            seg = segment_volume(volume, self.segment_config)
            labels = np.asarray(seg.array)
            label_set = "totalseg" if seg.meta.get("labels") == "total" else "coarse"
            method = str(seg.meta.get("method", "classical"))
            mask_source = f"segmenter:{method}"
            notes.append(f"no mask given: regions from ctrag.segment ({method}, {label_set} labels)")
        native = region_masks(labels, label_set, cfg.regions, spacing=volume.spacing, pleura_band_mm=cfg.pleura_band_mm)
        voxels = [int(m.sum()) for m in native]
        present = torch.as_tensor([v > 0 for v in voxels], dtype=torch.bool)
        for r, v in zip(cfg.regions, voxels, strict=True):
            if v == 0:
                why = (
                    "no source label"
                    if not REGION_LABELS[r][label_set] and not REGION_LABELS[r]["derived"]
                    else "no voxels"
                )
                notes.append(f"region {r!r} is empty ({why} in the {label_set} mask); its features are zeros")

        # 1. whole volume on the working grid: global features and geometry masks
        image, geometry = self._working_grid(volume, native)
        fmap = self._feature_map(image[None])[0]  # (C, i, j, k)
        global_vector = torch.cat((fmap.mean(dim=(1, 2, 3)), fmap.amax(dim=(1, 2, 3))))
        global_tokens = F.adaptive_avg_pool3d(fmap[None], cfg.global_grid)[0].flatten(1).T.contiguous()

        # 2. per-region texture from masked native crops
        texture = torch.zeros(len(cfg.regions), self.feature_dim)
        for i, m in enumerate(native):
            if voxels[i]:
                texture[i] = self._texture(volume, m)
        return VisualFeatures(
            global_vector.float().cpu(),
            global_tokens.float().cpu(),
            texture,
            geometry,
            present,
            tuple(cfg.regions),
            voxels,
            mask_source,
            label_set,
            notes,
        )

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        return self.tower.stages(self.tower.stem(x)).float().cpu()

    def _working_grid(self, volume: Volume, native: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed CT ``(1, *size)`` and region occupancy ``(R, 1, *geometry_size)`` on the working grid."""
        cfg = self.config
        item: dict[str, Any] = {"image": volume_to_metatensor(volume)}
        keys = []
        for i, m in enumerate(native):
            key = f"r{i}"
            keys.append(key)
            item[key] = volume_to_metatensor(volume.with_array(m.astype(np.uint8)))
        out = build_preprocess(cfg.working_preprocess(), mask_keys=keys, load=False)(item)
        image = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).float()
        masks = torch.stack([torch.as_tensor(out[k]).as_subclass(torch.Tensor).float() for k in keys])  # (R,1,...)
        geometry = F.adaptive_avg_pool3d(masks, cfg.geometry_size)
        return image, geometry

    def _texture(self, volume: Volume, region: np.ndarray) -> torch.Tensor:
        """Masked crop of one region -> pooled features (mean and max inside the region)."""
        cfg = self.config
        lo = float(cfg.hu_window[0])
        idx = np.argwhere(region)
        margin = [int(np.ceil(cfg.crop_margin_mm / s)) for s in volume.spacing]
        start = np.maximum(idx.min(axis=0) - margin, 0)
        stop = np.minimum(idx.max(axis=0) + 1 + np.asarray(margin), region.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        crop_mask = region[sl]
        crop_ct = np.where(crop_mask, np.asarray(volume.array)[sl].astype(np.float32), min(lo, HU_AIR))
        affine = volume.affine.copy()
        affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ start.astype(np.float64)  # crop corner; axes unchanged
        crop = Volume(crop_ct, affine)
        item = {
            "image": volume_to_metatensor(crop),
            "mask": volume_to_metatensor(crop.with_array(crop_mask.astype(np.uint8))),
        }
        out = build_preprocess(cfg.patch_preprocess(), mask_keys=("mask",), load=False)(item)
        image = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).float()
        pmask = torch.as_tensor(out["mask"]).as_subclass(torch.Tensor).float()
        fmap = self._feature_map(image[None])[0]  # (C, i, j, k)
        weight = F.adaptive_max_pool3d(pmask[None], fmap.shape[1:])[0, 0]  # cells touching the region
        if float(weight.sum()) == 0:  # the region vanished in resampling (a few voxels): pool everywhere
            weight = torch.ones_like(weight)
        inside = weight > 0
        mean = (fmap * weight).sum(dim=(1, 2, 3)) / weight.sum()
        peak = fmap.masked_fill(~inside[None], float("-inf")).amax(dim=(1, 2, 3))
        return torch.cat((mean, peak))


def features_to_arrays(features: VisualFeatures) -> dict[str, np.ndarray]:
    """Tensors of a record as numpy arrays (for caches written with ``ctrag.utils.serialization.write_npz``)."""
    return {
        "global_vector": features.global_vector.numpy(),
        "global_tokens": features.global_tokens.numpy(),
        "texture": features.texture.numpy(),
        "geometry": features.geometry.numpy(),
        "present": features.present.numpy(),
    }


def features_from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> VisualFeatures:
    """Inverse of :func:`features_to_arrays` with the record's ``summary()`` as ``meta``."""
    regions = tuple(r["region"] for r in meta["regions"])
    return VisualFeatures(
        torch.as_tensor(arrays["global_vector"]),
        torch.as_tensor(arrays["global_tokens"]),
        torch.as_tensor(arrays["texture"]),
        torch.as_tensor(arrays["geometry"]),
        torch.as_tensor(arrays["present"]).bool(),
        regions,
        [int(r["voxels"]) for r in meta["regions"]],
        str(meta["mask_source"]),
        str(meta["label_set"]),
        list(meta.get("notes", [])),
    )
