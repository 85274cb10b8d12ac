"""NIfTI reading and writing that never loses the voxel-to-world mapping.

A CT is only meaningful with its affine: spacing, orientation and origin decide where an anatomy mask lands and
what a generated volume means to a viewer. ``Volume`` carries the array *and* its affine everywhere; writers are
atomic (temp file + rename) so an interrupted save never leaves a half-written volume under the final name.
The ``check_*`` functions turn the problems met in real folders (truncated gzip, 2-D slices, missing
orientation, windowed 8-bit exports, masks on another grid) into ``DataValidationError`` messages that say
which file and what was expected.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from ctrag.errors import DataValidationError
from ctrag.utils.atomic import atomic_path

HU_AIR = -1000.0
HU_MIN_PLAUSIBLE = -2048.0
HU_MAX_PLAUSIBLE = 32767.0
GRID_ATOL_MM = 1e-3


@dataclass
class Volume:
    """A 3-D array with its 4x4 voxel-to-RAS-mm affine (nibabel convention: ``data[i, j, k]``)."""

    array: np.ndarray
    affine: np.ndarray
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise DataValidationError(f"{self._name()}: affine must be 4x4, got {self.affine.shape}")

    def _name(self) -> str:
        return self.path or "volume"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine's 3x3 part)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"`` (where each voxel axis points in world space)."""
        return "".join(nib.aff2axcodes(self.affine))

    def with_array(self, array: np.ndarray) -> Volume:
        """Same grid, new values (e.g. a mask computed from this CT)."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"with_array: shape {array.shape} does not match grid {self.array.shape}")
        return Volume(array=array, affine=self.affine.copy(), path=None, meta=dict(self.meta))


def _describe_grid(shape: tuple[int, ...], affine: np.ndarray) -> str:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return (
        f"shape {tuple(shape)}, spacing {tuple(round(float(s), 4) for s in spacing)} mm, "
        f"orientation {''.join(nib.aff2axcodes(affine))}, origin {tuple(round(float(o), 2) for o in affine[:3, 3])}"
    )


def load_volume(path: str | os.PathLike[str], *, dtype: npt.DTypeLike | None = None) -> Volume:
    """Read a 3-D NIfTI file, validating geometry; raise ``DataValidationError`` on anything unusable.

    4-D files with a single volume (``x, y, z, 1``) are squeezed; anything else that is not 3-D is refused.
    Scaling (``scl_slope``/``scl_inter``) is applied by nibabel, so CT arrays are in HU.
    """
    file = Path(path)
    name = str(file)
    if file.is_dir():
        raise DataValidationError(
            f"{name}: is a folder, not a NIfTI file (a DICOM series? convert it first, e.g. with dcm2niix)"
        )
    if not file.is_file():
        raise DataValidationError(f"{name}: file not found")
    try:
        img = nib.load(str(file))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataValidationError(f"{name}: not a NIfTI image (got {type(img).__name__})")
        data = np.asanyarray(img.dataobj)
    except DataValidationError:
        raise
    except (
        EOFError,
        OSError,
        zlib.error,
        gzip.BadGzipFile,
        nib.filebasedimages.ImageFileError,
        ValueError,
    ) as exc:
        raise DataValidationError(f"{name}: unreadable or truncated NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataValidationError(f"{name}: expected a 3-D volume, got {data.ndim}-D data of shape {data.shape}")
    if min(data.shape) < 2:
        raise DataValidationError(f"{name}: degenerate 3-D shape {data.shape} (a single slice is not a volume)")
    header = img.header
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    affine = img.affine
    if qcode == 0 and scode == 0:
        raise DataValidationError(
            f"{name}: no orientation information (qform_code and sform_code are both 0); "
            "write the file with a valid affine (e.g. from the DICOM geometry)"
        )
    check_affine(affine, name)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    meta = {"qform_code": qcode, "sform_code": scode, "stored_dtype": str(header.get_data_dtype())}
    return Volume(array=np.asarray(data), affine=np.asarray(affine, dtype=np.float64), path=name, meta=meta)


def check_affine(affine: np.ndarray, name: str = "volume") -> None:
    """Refuse affines that cannot be a scanner geometry (non-finite, singular, zero or absurd spacing)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise DataValidationError(f"{name}: affine is missing or not finite: {affine.tolist()}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 1e-6) or abs(np.linalg.det(affine[:3, :3])) <= 1e-9:
        raise DataValidationError(f"{name}: affine is singular (voxel spacing {spacing.tolist()} mm)")
    if np.any(spacing > 50.0):
        raise DataValidationError(f"{name}: voxel spacing {spacing.tolist()} mm is not plausible for a CT")


def check_ct_intensity(volume: Volume) -> tuple[float, float]:
    """Check values look like Hounsfield units; return (p1, p99) for the manifest.

    A chest/abdomen CT contains air (about -1000 HU) and soft tissue near 0. Windowed 8-bit exports (0..255),
    normalised arrays (0..1) and raw stored values without the rescale intercept (0..4095) all fail here with a
    message naming the likely cause.
    """
    name = volume.path or "volume"
    arr = volume.array
    if arr.dtype.kind not in "iuf":
        raise DataValidationError(f"{name}: CT values must be numeric, got dtype {arr.dtype}")
    sample = arr.reshape(-1)[:: max(1, arr.size // 2_000_000)].astype(np.float32)
    if not np.all(np.isfinite(sample)):
        raise DataValidationError(f"{name}: CT contains NaN or infinite values")
    lo, p1, p99, hi = np.percentile(sample, [0, 1, 99, 100]).tolist()
    if hi - lo < 1e-3:
        raise DataValidationError(f"{name}: CT is constant ({lo}); not an image")
    if lo < HU_MIN_PLAUSIBLE or hi > HU_MAX_PLAUSIBLE:
        raise DataValidationError(f"{name}: values {lo:.0f}..{hi:.0f} lie outside any Hounsfield range")
    if hi <= 1.0 + 1e-6 and lo >= -1.0 - 1e-6:
        raise DataValidationError(
            f"{name}: values {lo:.3g}..{hi:.3g} look normalised, not Hounsfield units; "
            "give the original HU volume (ctrag normalises itself)"
        )
    if lo >= 0:
        hint = (
            " (looks like raw stored values: apply the DICOM rescale intercept, usually -1024)"
            if hi > 1000
            else " (looks like a windowed 8-bit export or a non-CT modality)"
        )
        raise DataValidationError(f"{name}: no negative values (range {lo:.0f}..{hi:.0f}), so no air in HU{hint}")
    if p1 > -500:
        raise DataValidationError(
            f"{name}: 1st percentile is {p1:.0f} HU; a CT of the chest should contain air near -1000 HU"
        )
    return float(p1), float(p99)


def same_grid(
    a_shape: tuple[int, ...],
    a_affine: np.ndarray,
    b_shape: tuple[int, ...],
    b_affine: np.ndarray,
    atol_mm: float = GRID_ATOL_MM,
) -> bool:
    return tuple(a_shape[:3]) == tuple(b_shape[:3]) and bool(np.allclose(a_affine, b_affine, atol=atol_mm))


def check_same_grid(mask: Volume, image: Volume, atol_mm: float = GRID_ATOL_MM) -> None:
    """A mask must lie on its image's voxel grid (same shape and affine) to be used as-is."""
    if not same_grid(mask.shape, mask.affine, image.shape, image.affine, atol_mm):
        raise DataValidationError(
            f"mask {mask.path or ''} is on another grid than image {image.path or ''}: "
            f"mask {_describe_grid(mask.shape, mask.affine)} vs image {_describe_grid(image.shape, image.affine)}; "
            "resample the mask with nearest-neighbour interpolation onto the image grid first"
        )


def check_label_mask(mask: Volume, allowed: set[int] | None = None) -> list[int]:
    """Integer labels only, and (optionally) only known ids; returns the sorted labels present (without 0)."""
    name = mask.path or "mask"
    arr = mask.array
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise DataValidationError(f"{name}: a label mask must hold integer labels, found fractional values")
    elif arr.dtype.kind not in "iub":
        raise DataValidationError(f"{name}: a label mask must be integer-typed, got {arr.dtype}")
    present = sorted(int(v) for v in np.unique(arr) if v != 0)
    if present and present[0] < 0:
        raise DataValidationError(f"{name}: negative label values {[v for v in present if v < 0]}")
    if allowed is not None:
        unknown = [v for v in present if v not in allowed]
        if unknown:
            raise DataValidationError(f"{name}: unknown label ids {unknown} (known: {min(allowed)}..{max(allowed)})")
    return present


def save_volume(
    path: str | os.PathLike[str],
    array: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: npt.DTypeLike | None = None,
    description: str = "",
) -> Path:
    """Write ``array`` with ``affine`` as NIfTI (qform = sform, code 1 "scanner") atomically."""
    final = Path(path)
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"save_volume: expected a 3-D array, got shape {arr.shape}")
    check_affine(affine, str(final))
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    with atomic_path(final, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return final
