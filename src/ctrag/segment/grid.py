"""Voxel-grid helpers for segmentation: canonical orientation, mm-sized structuring elements, resampling.

The segmenters reason anatomically ("axial slice", "top of the body", "patient left"), which only makes sense
in a known orientation. Shipped CTs come as LPS and RAS, so the classical segmenter works on the closest RAS
view of the array (a lossless permutation/flip, undone afterwards) and decides left/right from world
coordinates, never from array indices. Structuring elements are sized in millimetres and converted with the
voxel spacing so a 5 mm closing means 5 mm on a 0.75 mm grid and on an 8 mm one.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class CanonicalView:
    """How an array maps onto its closest RAS orientation (axis 0 → patient right, 1 → anterior, 2 → superior).

    In RAS+ world coordinates x grows towards the patient's *right*, so patient left is the smaller x; in the
    canonical view array index 0 along axis 0 is the patient's left-most column.
    """

    ornt: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of(cls, shape: tuple[int, ...], affine: np.ndarray) -> CanonicalView:
        if len(shape) != 3:
            raise ValueError(f"CanonicalView: expected a 3-D shape, got {shape}")
        ornt = nib.orientations.io_orientation(affine)
        canon_affine = np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(ornt, shape)
        perm = [int(a) for a in ornt[:, 0]]
        canon_shape = [0, 0, 0]
        for src_axis, dst_axis in enumerate(perm):
            canon_shape[dst_axis] = int(shape[src_axis])
        return cls(ornt=ornt, shape=(canon_shape[0], canon_shape[1], canon_shape[2]), affine=canon_affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nib.orientations.apply_orientation(array, self.ornt))

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        back = nib.orientations.ornt_transform(_RAS, self.ornt)
        return np.ascontiguousarray(nib.orientations.apply_orientation(array, back))

    def world(self, ijk: np.ndarray) -> np.ndarray:
        """World (RAS mm) coordinates of canonical voxel indices, ``ijk`` of shape (n, 3)."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def ellipsoid_mm(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Boolean ball of ``radius_mm`` on a grid of ``spacing`` (2-D or 3-D); an axis coarser than the radius is flat."""
    half = [int(np.floor(radius_mm / s + 1e-6)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)], indexing="ij")
    dist2 = sum(g**2 for g in grids)
    return np.asarray(dist2 <= radius_mm**2 + 1e-6)


def radius_voxels(radius_mm: float, spacing: float) -> int:
    return int(np.floor(radius_mm / spacing + 1e-6))


def label_components(mask: np.ndarray, connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Connected components and their voxel counts (``sizes[0]`` is the background, set to 0)."""
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    labels, n = ndi.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels, sizes


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    labels, sizes = label_components(mask, connectivity)
    if sizes.max(initial=0) == 0:
        return np.zeros(mask.shape, dtype=bool)
    return np.asarray(labels == int(np.argmax(sizes)))


def remove_small(mask: np.ndarray, min_voxels: int, connectivity: int = 1) -> np.ndarray:
    if min_voxels <= 1:
        return mask.astype(bool)
    labels, sizes = label_components(mask, connectivity)
    keep = sizes >= min_voxels
    keep[0] = False
    return np.asarray(keep[labels])


def fill_holes_axial(
    mask: np.ndarray,
    max_hole_mm2: float | None = None,
    pixel_mm2: float = 1.0,
    closed_slices: np.ndarray | None = None,
) -> np.ndarray:
    """Fill holes slice by slice along axis 2 (axial in the canonical view), optionally only small ones.

    ``closed_slices`` (bool per slice) marks slices whose border counts as foreground: there the field of view cuts
    through the object, so background touching the border is still enclosed. One in-plane labelling of the whole
    stack replaces a flood fill per slice.
    """
    ring = np.zeros(mask.shape[2], dtype=bool) if closed_slices is None else np.asarray(closed_slices, dtype=bool)
    padded = np.pad(mask.astype(bool), ((1, 1), (1, 1), (0, 0)), mode="constant")
    padded[0, :, ring] = True
    padded[-1, :, ring] = True
    padded[:, 0, ring] = True
    padded[:, -1, ring] = True
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndi.generate_binary_structure(2, 1)
    labels, n = ndi.label(~padded, structure=in_plane)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[np.unique(edge)] = True
    hole = ~outside
    hole[0] = False
    if max_hole_mm2 is not None:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        hole &= sizes * pixel_mm2 <= max_hole_mm2
    return np.asarray(mask | hole[labels[1:-1, 1:-1, :]])


def resample_labels_nearest(
    array: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray
) -> np.ndarray:
    """Nearest-neighbour resampling of a label array onto another grid (voxels outside the source get 0).

    Used when a backend hands a mask back on a grid other than the input CT's (another orientation, spacing or
    crop); for a pure permutation/flip of the same grid the result is exact.
    """
    src_from_dst = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    out = ndi.affine_transform(
        np.asarray(array),
        src_from_dst[:3, :3],
        offset=src_from_dst[:3, 3],
        output_shape=tuple(int(s) for s in shape[:3]),
        order=0,
        mode="constant",
        cval=0,
        prefilter=False,
    )
    return np.asarray(out, dtype=array.dtype)


def pooling_factors(spacing: tuple[float, ...], working_spacing_mm: float) -> tuple[int, int, int]:
    """Integer block sizes that bring each axis to at most ``working_spacing_mm`` (1 = keep the axis)."""
    if working_spacing_mm <= 0:
        return (1, 1, 1)
    f = [max(1, int(np.floor(working_spacing_mm / s + 1e-6))) for s in spacing[:3]]
    return (f[0], f[1], f[2])


def block_mean(array: np.ndarray, affine: np.ndarray, factors: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pool ``array`` by integer ``factors`` (edge-padded to a multiple); return the array and its affine.

    Mean pooling is how the shipped low-resolution CTs were made, so HU thresholds tuned on them carry over.
    """
    pad = [(0, (-n) % f) for n, f in zip(array.shape, factors, strict=True)]
    a = np.pad(np.asarray(array, dtype=np.float32), pad, mode="edge")
    nx, ny, nz = (s // f for s, f in zip(a.shape, factors, strict=True))
    fx, fy, fz = factors
    pooled = a.reshape(nx, fx, ny, fy, nz, fz).mean(axis=(1, 3, 5), dtype=np.float32)
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, :3] = new_affine[:3, :3] * np.asarray(factors, dtype=np.float64)[None, :]
    first_centre = (np.asarray(factors, dtype=np.float64) - 1.0) / 2.0
    new_affine[:3, 3] = affine[:3, :3] @ first_centre + affine[:3, 3]
    return pooled, new_affine


def block_repeat(labels: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Undo ``block_mean`` for a label map: repeat each voxel over its block and crop to ``shape``."""
    out = labels
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return np.ascontiguousarray(out[: shape[0], : shape[1], : shape[2]])
