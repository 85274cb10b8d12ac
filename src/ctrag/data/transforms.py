"""Text2CT preprocessing as MONAI dictionary transforms, configured by :class:`PreprocessConfig`.

The pipeline (Text2CT / RAG-Text2CT, arXiv:2603.08305): load with the affine, channel first, reorient to RAS,
resample to the target spacing (bilinear for the CT, nearest for masks, so label ids survive), clip HU to
[-1000, 1000] and map linearly to [0, 1], then pad/crop (or resize) to the target size. Every step keeps the
affine in the ``MetaTensor`` up to date, so a generated volume can be written back in world coordinates and a
mask from another case can be put on the output grid with :func:`resample_to_grid`.

Presets (also in the YAML presets, section ``preprocess``): ``text2ct-512`` = 0.75 x 0.75 x 3 mm at
512 x 512 x 128 (a 384 x 384 x 384 mm field of view); ``tiny-cpu`` = 4 mm isotropic at 64 x 64 x 32.

Our own transforms come in pairs (array form + ``*d`` dictionary form with ``keys`` and
``allow_missing_keys=False``) and never modify the input dict. None of them is random.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    Transform,
)
from scipy import ndimage

from ctrag.config import load_config
from ctrag.data.case import Case
from ctrag.data.nifti import Volume
from ctrag.errors import ConfigError, InvalidInputError

ResizeMode = Literal["pad_crop", "pad_crop_xy", "resize", "none"]
_AXCODES_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_INTERP = {"nearest", "bilinear"}


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing of CTs and masks; saved with every model so training and sampling cannot drift apart.

    ``size`` is applied after resampling: ``pad_crop`` centres and pads (with 0, i.e. -1000 HU / background)
    or crops, keeping the spacing exact; ``pad_crop_xy`` does the same in-plane (i, j) only and keeps every
    slice (``size[2]`` is then unused: encoders that read any number of slices, e.g. SigVLP, must not lose the
    ends of a long scan to a depth crop); ``resize`` interpolates to ``size`` (the spacing then changes, the
    affine says how); ``none`` keeps whatever the spacing step produced.
    """

    spacing: tuple[float, float, float] = (0.75, 0.75, 3.0)
    size: tuple[int, int, int] = (512, 512, 128)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    output_range: tuple[float, float] = (0.0, 1.0)
    orientation: str = "RAS"
    resize_mode: ResizeMode = "pad_crop"
    image_interp: str = "bilinear"
    mask_interp: str = "nearest"
    mask_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.spacing):
            raise ConfigError(f"PreprocessConfig: spacing must be positive, got {self.spacing}")
        if any(s < 1 for s in self.size):
            raise ConfigError(f"PreprocessConfig: size must be >= 1, got {self.size}")
        if self.hu_window[0] >= self.hu_window[1]:
            raise ConfigError(f"PreprocessConfig: hu_window must be (low, high) with low < high, got {self.hu_window}")
        if self.output_range[0] >= self.output_range[1]:
            raise ConfigError(f"PreprocessConfig: output_range must be increasing, got {self.output_range}")
        codes = self.orientation.upper()
        if len(codes) != 3 or any(sum(c in pair for c in codes) != 1 for pair in _AXCODES_LABELS):
            raise ConfigError(
                f"PreprocessConfig: orientation must be three axis codes like 'RAS', got {self.orientation!r}"
            )
        if self.image_interp not in _INTERP or self.mask_interp != "nearest":
            raise ConfigError(
                f"PreprocessConfig: image_interp must be one of {sorted(_INTERP)} and mask_interp 'nearest' "
                f"(labels must not be blended), got {self.image_interp!r}/{self.mask_interp!r}"
            )
        if self.mask_dtype not in {"uint8", "int16", "int32", "int64"}:
            raise ConfigError(f"PreprocessConfig: mask_dtype must be an integer dtype name, got {self.mask_dtype!r}")

    @property
    def field_of_view(self) -> tuple[float, float, float]:
        """Physical extent (mm) of the image space: ``spacing * size`` per axis."""
        return (
            float(self.spacing[0] * self.size[0]),
            float(self.spacing[1] * self.size[1]),
            float(self.spacing[2] * self.size[2]),
        )


PREPROCESS_PRESETS: dict[str, PreprocessConfig] = {
    "text2ct-512": PreprocessConfig(),
    "tiny-cpu": PreprocessConfig(spacing=(4.0, 4.0, 4.0), size=(64, 64, 32)),
}


def load_preprocess_config(source: str | Any | None = "tiny-cpu", overrides: Sequence[str] = ()) -> PreprocessConfig:
    """``PreprocessConfig`` from a preset name / YAML path (section ``preprocess``) or a mapping."""
    return load_config(PreprocessConfig, source, overrides, section="preprocess" if isinstance(source, str) else None)


# --------------------------------------------------------------------------------------------------------------
# Intensity maps
# --------------------------------------------------------------------------------------------------------------


def hu_to_unit(
    x: Any, hu_window: tuple[float, float] = (-1000.0, 1000.0), output_range: tuple[float, float] = (0.0, 1.0)
) -> Any:
    """Clip HU to ``hu_window`` and map it linearly onto ``output_range`` (numpy or torch)."""
    lo, hi = hu_window
    a, b = output_range
    clipped = x.clamp(lo, hi) if isinstance(x, torch.Tensor) else np.clip(x, lo, hi)
    return (clipped - lo) / (hi - lo) * (b - a) + a


def unit_to_hu(
    x: Any, hu_window: tuple[float, float] = (-1000.0, 1000.0), output_range: tuple[float, float] = (0.0, 1.0)
) -> Any:
    """Inverse of :func:`hu_to_unit` (values outside ``output_range`` are clipped first)."""
    lo, hi = hu_window
    a, b = output_range
    clipped = x.clamp(a, b) if isinstance(x, torch.Tensor) else np.clip(x, a, b)
    return (clipped - a) / (b - a) * (hi - lo) + lo


class UnitToHU(Transform):
    """Array transform: model intensities in ``output_range`` -> Hounsfield units (keeps MetaTensor metadata)."""

    def __init__(
        self, hu_window: tuple[float, float] = (-1000.0, 1000.0), output_range: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        self.hu_window = hu_window
        self.output_range = output_range

    def __call__(self, img: Any) -> Any:
        return unit_to_hu(img, self.hu_window, self.output_range)


class UnitToHUd(MapTransform):
    """Dictionary form of :class:`UnitToHU`."""

    def __init__(
        self,
        keys: KeysCollection,
        hu_window: tuple[float, float] = (-1000.0, 1000.0),
        output_range: tuple[float, float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = UnitToHU(hu_window, output_range)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


class RescaleIntensity(Transform):
    """Array transform: ``slope * x + intercept`` (DICOM rescale), computed in float32."""

    def __init__(self, slope: float = 1.0, intercept: float = 0.0) -> None:
        self.slope = float(slope)
        self.intercept = float(intercept)

    def __call__(self, img: Any) -> Any:
        if isinstance(img, torch.Tensor):
            return img.float() * self.slope + self.intercept
        return np.asarray(img, dtype=np.float32) * self.slope + self.intercept


class RescaleIntensityd(MapTransform):
    """Per-item DICOM rescale: slope/intercept come from the item (``slope_key``/``intercept_key``).

    Items without those keys pass unchanged, so one pipeline serves HU volumes and CT-RATE raw volumes alike
    (:func:`case_to_item` fills the keys only when ingest decided a rescale is needed).
    """

    def __init__(
        self,
        keys: KeysCollection,
        slope_key: str = "hu_slope",
        intercept_key: str = "hu_intercept",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slope_key = slope_key
        self.intercept_key = intercept_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.slope_key not in d and self.intercept_key not in d:
            return d
        op = RescaleIntensity(float(d.get(self.slope_key, 1.0)), float(d.get(self.intercept_key, 0.0)))
        for key in self.key_iterator(d):
            d[key] = op(d[key])
        return d


# --------------------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------------------


def build_preprocess(
    cfg: PreprocessConfig,
    *,
    image_key: str | None = "image",
    mask_keys: Sequence[str] = (),
    load: bool = True,
) -> Compose:
    """The preprocessing ``Compose`` for an item dict with a CT under ``image_key`` and masks under ``mask_keys``.

    With ``load=True`` the values are file paths; with ``load=False`` they are channel-first ``MetaTensor``s
    carrying their affine (e.g. from :func:`volume_to_metatensor`). The output values are ``MetaTensor``s with
    shape ``(1, *cfg.size)`` (unless ``resize_mode="none"``) and the updated affine.
    """
    image_keys = [image_key] if image_key else []
    mask_keys = list(mask_keys)
    keys = image_keys + mask_keys
    if not keys:
        raise InvalidInputError("build_preprocess: give an image_key and/or mask_keys")
    steps: list[Any] = []
    if load:
        steps += [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)]
    else:
        steps.append(EnsureTyped(keys, data_type="tensor", track_meta=True))
    if image_keys:
        steps.append(RescaleIntensityd(image_keys))
    steps.append(Orientationd(keys, axcodes=cfg.orientation.upper(), labels=_AXCODES_LABELS))
    modes = [cfg.image_interp] * len(image_keys) + ["nearest"] * len(mask_keys)
    steps.append(Spacingd(keys, pixdim=cfg.spacing, mode=modes, padding_mode="border"))
    if image_keys:
        lo, hi = cfg.hu_window
        a, b = cfg.output_range
        steps.append(ScaleIntensityRanged(image_keys, a_min=lo, a_max=hi, b_min=a, b_max=b, clip=True))
    if cfg.resize_mode == "pad_crop":
        steps.append(ResizeWithPadOrCropd(keys, spatial_size=cfg.size, mode="constant"))
    elif cfg.resize_mode == "pad_crop_xy":  # a non-positive size keeps that axis as it is (MONAI convention)
        steps.append(ResizeWithPadOrCropd(keys, spatial_size=(cfg.size[0], cfg.size[1], -1), mode="constant"))
    elif cfg.resize_mode == "resize":
        resize_modes = ["trilinear" if cfg.image_interp == "bilinear" else "nearest"] * len(image_keys)
        steps.append(Resized(keys, spatial_size=cfg.size, mode=resize_modes + ["nearest"] * len(mask_keys)))
    if mask_keys:
        steps.append(CastToTyped(mask_keys, dtype=getattr(torch, cfg.mask_dtype)))
    if image_keys:
        steps.append(CastToTyped(image_keys, dtype=torch.float32))
    return Compose(steps)


def case_to_item(case: Case, *, image_key: str = "image", mask_key: str = "mask") -> dict[str, Any]:
    """Item dict for :func:`build_preprocess` from a manifest case (paths, and rescale values if needed)."""
    item: dict[str, Any] = {"case_id": case.case_id}
    if case.volume_path is not None:
        item[image_key] = case.volume_path
        rescale = case.extra.get("rescale")
        if case.extra.get("rescale_applied") and rescale:
            item["hu_slope"] = float(rescale["slope"])
            item["hu_intercept"] = float(rescale["intercept"])
    if case.mask_path is not None:
        item[mask_key] = case.mask_path
    return item


def volume_to_metatensor(volume: Volume) -> MetaTensor:
    """Channel-first ``MetaTensor`` (1, I, J, K) carrying the volume's affine (RAS mm)."""
    arr = torch.as_tensor(np.ascontiguousarray(volume.array))[None]
    return MetaTensor(arr, affine=torch.as_tensor(volume.affine, dtype=torch.float64))


def metatensor_to_volume(tensor: MetaTensor, channel: int = 0) -> Volume:
    """The inverse of :func:`volume_to_metatensor` (one channel)."""
    affine = tensor.affine
    arr = tensor[channel].detach().cpu().numpy()
    return Volume(
        arr, np.asarray(affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    )


# --------------------------------------------------------------------------------------------------------------
# Grid resampling
# --------------------------------------------------------------------------------------------------------------


def resample_to_grid(
    volume: Volume,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    mode: Literal["nearest", "linear"] = "nearest",
    fill: float = 0.0,
) -> Volume:
    """Put ``volume`` on another voxel grid (shape + affine) by world coordinates.

    ``nearest`` keeps integer labels exactly (use it for masks); ``linear`` is trilinear (for CT values; pass
    ``fill=-1000`` for air outside the source). Voxels whose world position lies outside the source get
    ``fill``. The result has ``target_affine``, so it overlays anything already on that grid.
    """
    shape = tuple(int(s) for s in target_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"resample_to_grid: target_shape must be 3 positive ints, got {tuple(target_shape)}")
    target = np.asarray(target_affine, dtype=np.float64)
    if target.shape != (4, 4):
        raise InvalidInputError(f"resample_to_grid: target_affine must be 4x4, got {target.shape}")
    if mode not in ("nearest", "linear"):
        raise InvalidInputError(f"resample_to_grid: mode must be 'nearest' or 'linear', got {mode!r}")
    # target voxel -> world -> source voxel
    mapping = np.linalg.inv(volume.affine) @ target
    src = np.asarray(volume.array)
    order = 0 if mode == "nearest" else 1
    out_dtype = src.dtype if mode == "nearest" else np.float32
    data = src if mode == "nearest" else src.astype(np.float32)
    out = ndimage.affine_transform(
        data,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=shape,
        order=order,
        mode="constant",
        cval=fill,
        output=out_dtype,
        prefilter=False,
    )
    return Volume(out, target.copy(), None, dict(volume.meta))


# --------------------------------------------------------------------------------------------------------------
# Image-space grids (what the generator and the evaluation networks resample onto)
# --------------------------------------------------------------------------------------------------------------

_AXES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def direction_matrix(orientation: str) -> np.ndarray:
    """3x3 matrix whose columns are the world (RAS) directions of the voxel axes for codes like ``"RAS"``."""
    mat = np.zeros((3, 3))
    for col, code in enumerate(orientation.upper()):
        axis, sign = _AXES[code]
        mat[axis, col] = sign
    return mat


def grid_affine(
    center_world: np.ndarray, shape: Sequence[int], spacing: Sequence[float], orientation: str = "RAS"
) -> np.ndarray:
    """Affine of a grid of ``shape`` voxels at ``spacing`` whose centre lies at ``center_world`` (RAS mm)."""
    affine = np.eye(4)
    affine[:3, :3] = direction_matrix(orientation) * np.asarray(spacing, dtype=np.float64)[None, :]
    half = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_world, dtype=np.float64) - affine[:3, :3] @ half
    return affine


def world_bounds(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min/max RAS corner coordinates of a grid's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def world_center(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """RAS position of the centre of a grid's voxel-centre bounding box."""
    lo, hi = world_bounds(shape, affine)
    return (lo + hi) / 2.0


def covering_grid(
    volume: Volume, spacing: Sequence[float], orientation: str = "RAS", min_shape: Sequence[int] = (1, 1, 1)
) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid at ``spacing`` in ``orientation`` covering ``volume``'s extent, at least ``min_shape`` voxels
    (extra voxels are added symmetrically and lie outside the scan)."""
    lo, hi = world_bounds(volume.shape, volume.affine)
    direc = np.abs(direction_matrix(orientation))
    extent_vox = (np.abs(direc.T @ (hi - lo)) / np.asarray(spacing)) + 1.0
    shape = tuple(max(int(np.ceil(e - 1e-6)), int(m)) for e, m in zip(extent_vox, min_shape, strict=True))
    size = (shape[0], shape[1], shape[2])
    return size, grid_affine((lo + hi) / 2.0, size, spacing, orientation)


def antialias(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Gaussian pre-blur of sigma ``(target/source - 1) / 2`` voxels per source axis when a grid is coarser than
    its source, so small bright structures are averaged into the coarse voxels rather than aliased."""
    src_from_dst = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    step = np.abs(src_from_dst[:3, :3]).max(axis=1)  # source voxels per target step (exact for aligned grids)
    sigma = np.clip((step - 1.0) / 2.0, 0.0, None)
    data = np.asarray(array, dtype=np.float32)
    return ndimage.gaussian_filter(data, sigma=sigma, mode="nearest") if np.any(sigma > 0.05) else data


def resample_ct(volume: Volume, shape: Sequence[int], affine: np.ndarray, fill: float = -1000.0) -> Volume:
    """A CT (HU) on another grid: anti-aliased when the grid is coarser, then trilinear; outside the scan ``fill``."""
    smooth = Volume(array=antialias(volume.array, volume.affine, affine), affine=volume.affine)
    return resample_to_grid(smooth, shape, affine, mode="linear", fill=fill)


def ct_to_space(
    volume: Volume, space: PreprocessConfig, min_shape: Sequence[int] = (1, 1, 1)
) -> tuple[np.ndarray, np.ndarray]:
    """A CT in HU on a grid of ``space`` (orientation + spacing) covering it, mapped to ``space.output_range``."""
    shape, affine = covering_grid(volume, space.spacing, space.orientation, min_shape)
    hu = resample_ct(volume, shape, affine, fill=space.hu_window[0]).array
    return np.asarray(hu_to_unit(hu, space.hu_window, space.output_range), dtype=np.float32), affine
