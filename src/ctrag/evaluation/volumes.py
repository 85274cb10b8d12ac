"""Bring real and generated CTs onto one evaluation grid before any network sees them.

Every evaluation network (feature extractors for FID, the clinical classifier) must see real and generated
volumes prepared *identically*, otherwise a metric measures a preprocessing difference instead of a generation
difference. The rule here, applied to both sides:

1. reorient to RAS (nibabel's closest canonical orientation; flips/permutations only, no interpolation): array
   axis 0 increases towards the patient's right, axis 1 towards anterior, axis 2 towards superior, whatever
   orientation the file stored (the shipped Lung-PET-CT-Dx and LIDC volumes are LPS, generated ones RAS);
2. clip Hounsfield units to ``[hu_min, hu_max]`` (default [-1000, 1000], the Text2CT window) and scale to [0, 1];
3. resize to a fixed ``shape`` (trilinear), as Text2CT resizes every CT to 512×512×128; the aspect change is the
   same for both sides of a comparison.

Arrays come out as float32 ``(I, J, K)`` = (R, A, S) axes; axial slices are ``[:, :, k]``, coronal ``[:, j, :]``,
sagittal ``[i, :, :]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ctrag.data.nifti import Volume
from ctrag.errors import DataValidationError

HU_WINDOW: tuple[float, float] = (-1000.0, 1000.0)


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
    arr = np.asarray(array, dtype=np.float32)
    return ((np.clip(arr, lo, hi) - lo) / (hi - lo)).astype(np.float32, copy=False)


def resize_array(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resize of a 3-D float array to ``shape`` (no-op when it already matches)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"resize_array: shape must be 3 positive ints, got {shape}")
    if tuple(array.shape) == shape:
        return np.asarray(array, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def prepare_volume(volume: Volume, shape: Sequence[int], window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """RAS → HU window → [0, 1] → fixed ``shape``: the single preparation every evaluation network uses."""
    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise DataValidationError(f"{volume.path or 'volume'}: expected a 3-D CT, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataValidationError(f"{volume.path or 'volume'}: CT contains NaN or infinite values")
    ras = to_ras(volume)
    return resize_array(normalise_hu(ras.array, window), shape)
