"""Bring real and generated CTs onto one evaluation grid before any network sees them.

Every evaluation network (feature extractors for FID, the clinical classifier) must see real and generated
volumes prepared *identically*, otherwise a metric measures a preprocessing difference instead of a generation
difference. Resizing every volume to a fixed voxel count would not do: a 431 mm scan and a 256 mm generated
volume would both fill the array, at different scales. The rule here, applied to both sides, is physical:

1. one field of view and one spacing for everything: the image space's field of view (``spacing x size`` of
   the preset's ``preprocess`` section, ``ctrag.data.transforms.PreprocessConfig``; Text2CT's 384 mm cube by
   default) divided into the requested ``shape`` of voxels;
2. each volume is resampled onto that grid in RAS orientation (array axis 0 towards the patient's right, 1
   anterior, 2 superior, whatever the file stored), centred on the volume's own centre: anti-aliased and
   trilinear, padded with air where the scan ends, cropped where it is larger;
3. Hounsfield units are clipped to the image space's window and scaled to [0, 1].

Arrays come out as float32 ``(I, J, K)`` = (R, A, S) axes; axial slices are ``[:, :, k]``, coronal ``[:, j, :]``,
sagittal ``[i, :, :]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

from ctrag.data import transforms
from ctrag.data.nifti import Volume
from ctrag.data.transforms import PreprocessConfig
from ctrag.errors import DataValidationError

DEFAULT_SPACE = PreprocessConfig()
"""The image space evaluation grids are cut from when the caller names none (Text2CT's)."""
HU_WINDOW: tuple[float, float] = DEFAULT_SPACE.hu_window


def to_ras(volume: Volume) -> Volume:
    """Reorder/flip axes so the array is in RAS orientation; the affine is updated to match (no resampling)."""
    ornt = nib.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, target)
    array = nib.orientations.apply_orientation(np.asarray(volume.array), transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape[:3])
    return Volume(array=np.ascontiguousarray(array), affine=affine, path=volume.path, meta=dict(volume.meta))


def normalise_hu(array: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and map linearly to [0, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"normalise_hu: window must be (low, high) with high > low, got {window}")
    return np.asarray(transforms.hu_to_unit(np.asarray(array, dtype=np.float32), (lo, hi)), dtype=np.float32)


def evaluation_spacing(shape: Sequence[int], space: PreprocessConfig = DEFAULT_SPACE) -> tuple[float, float, float]:
    """Voxel size (mm) of a ``shape`` grid over the image space's field of view (``space.spacing * space.size``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"evaluation grid shape must be 3 positive ints, got {shape}")
    fov = np.asarray(space.field_of_view, dtype=np.float64)
    sp = fov / np.asarray(shape, dtype=np.float64)
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def evaluation_grid(
    volume: Volume, shape: Sequence[int], space: PreprocessConfig = DEFAULT_SPACE
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The RAS grid (shape, affine) a volume is prepared on: the image space's field of view in ``shape`` voxels,
    centred on the volume."""
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    center = transforms.world_center(volume.shape, volume.affine)
    return size, transforms.grid_affine(center, size, evaluation_spacing(size, space), "RAS")


def prepare_volume(
    volume: Volume,
    shape: Sequence[int],
    window: tuple[float, float] | None = None,
    *,
    space: PreprocessConfig = DEFAULT_SPACE,
) -> np.ndarray:
    """One spacing, one field of view, one HU window: the single preparation every evaluation network uses.

    ``space`` is the image space (``preprocess`` section) whose field of view the ``shape`` grid covers and whose
    HU window applies (``window`` overrides it).
    """
    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise DataValidationError(f"{volume.path or 'volume'}: expected a 3-D CT, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataValidationError(f"{volume.path or 'volume'}: CT contains NaN or infinite values")
    hu_window = space.hu_window if window is None else (float(window[0]), float(window[1]))
    size, affine = evaluation_grid(volume, shape, space)
    hu = transforms.resample_ct(volume, size, affine, fill=hu_window[0]).array
    return normalise_hu(hu, hu_window)
