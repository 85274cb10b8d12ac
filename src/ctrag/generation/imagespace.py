"""The generator's image space: RAS grids at a fixed spacing, HU window <-> [0, 1], resampling onto grids.

Every volume the generator reads (training CTs, proxy masks) is brought onto an explicit grid (shape + affine)
and every volume it writes carries that grid's affine, so spacing and orientation are never implied by array
shape. CT intensities are resampled linearly (with a Gaussian anti-aliasing blur when the grid is coarser than
the source); label maps only ever with nearest neighbour so no label is invented between two others. The
resampling and HU maps themselves are ``ctrag.data.transforms``'.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ctrag.data import transforms
from ctrag.data.nifti import Volume
from ctrag.generation.config import ImageSpaceConfig

_AXES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def direction_matrix(orientation: str) -> np.ndarray:
    """3x3 matrix whose columns are the world (RAS) directions of the voxel axes for codes like ``"RAS"``."""
    mat = np.zeros((3, 3))
    for col, code in enumerate(orientation.upper()):
        axis, sign = _AXES[code]
        mat[axis, col] = sign
    return mat


def grid_affine(
    center_world: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, ...], orientation: str
) -> np.ndarray:
    """Affine of a grid of ``shape`` voxels at ``spacing`` whose centre lies at ``center_world`` (RAS mm)."""
    affine = np.eye(4)
    affine[:3, :3] = direction_matrix(orientation) * np.asarray(spacing, dtype=np.float64)[None, :]
    half = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_world, dtype=np.float64) - affine[:3, :3] @ half
    return affine


def world_bounds(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min/max RAS corner coordinates of a grid's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def covering_grid(
    volume: Volume, space: ImageSpaceConfig, min_shape: tuple[int, ...] = (1, 1, 1)
) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid in ``space`` (orientation + spacing) covering ``volume``'s extent, at least ``min_shape`` voxels
    (extra voxels are added symmetrically and lie outside the scan)."""
    lo, hi = world_bounds(volume.shape, volume.affine)
    direc = np.abs(direction_matrix(space.orientation))
    extent_vox = (np.abs(direc.T @ (hi - lo)) / np.asarray(space.spacing)) + 1.0
    shape = tuple(max(int(np.ceil(e - 1e-6)), int(m)) for e, m in zip(extent_vox, min_shape, strict=True))
    center = (lo + hi) / 2.0
    return (shape[0], shape[1], shape[2]), grid_affine(center, shape, space.spacing, space.orientation)


def _antialias(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Gaussian pre-blur of sigma ``(target/source - 1) / 2`` voxels per source axis when a grid is coarser than
    its source, so small bright structures are averaged into the coarse voxels rather than aliased."""
    src_from_dst = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    step = np.abs(src_from_dst[:3, :3]).max(axis=1)  # source voxels per target step (exact for aligned grids)
    sigma = np.clip((step - 1.0) / 2.0, 0.0, None)
    data = np.asarray(array, dtype=np.float32)
    return ndi.gaussian_filter(data, sigma=sigma, mode="nearest") if np.any(sigma > 0.05) else data


def hu_to_unit(hu: np.ndarray, space: ImageSpaceConfig) -> np.ndarray:
    """Clip to ``[hu_min, hu_max]`` and map linearly onto [0, 1] (float32)."""
    return np.asarray(transforms.hu_to_unit(np.asarray(hu, dtype=np.float32), (space.hu_min, space.hu_max)))


def unit_to_hu(unit: np.ndarray, space: ImageSpaceConfig) -> np.ndarray:
    """Inverse of ``hu_to_unit`` (values outside [0, 1] are clipped first)."""
    return np.asarray(transforms.unit_to_hu(np.asarray(unit, dtype=np.float32), (space.hu_min, space.hu_max)))


def ct_to_space(
    volume: Volume, space: ImageSpaceConfig, min_shape: tuple[int, ...] = (1, 1, 1)
) -> tuple[np.ndarray, np.ndarray]:
    """A CT in HU resampled (anti-aliased, linear) onto a covering grid of ``space`` and mapped to [0, 1]."""
    shape, affine = covering_grid(volume, space, min_shape)
    smooth = Volume(array=_antialias(volume.array, volume.affine, affine), affine=volume.affine)
    hu = transforms.resample_to_grid(smooth, shape, affine, mode="linear", fill=space.hu_min).array
    return hu_to_unit(hu, space), affine


def labels_to_grid(mask: Volume, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto a grid (outside the source: background 0)."""
    return np.asarray(transforms.resample_to_grid(mask, shape, affine, mode="nearest", fill=0).array)
