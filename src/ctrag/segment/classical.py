"""Classical anatomy masks from Hounsfield thresholds and morphology: body, left/right lung, airway, bone.

Why a classical segmenter: most CTs ctrag meets (shipped real CTs, user uploads, generated volumes) come without
a mask, and TotalSegmentator needs weights this machine does not have. Thresholds and morphology find the
structures that HU alone separates well, at any resolution from 0.75 mm to 8 mm, in about a second, and
deterministically. Everything runs on the closest-RAS view of the array (see ``grid.CanonicalView``):
axis 2 is inferior → superior, so "axial slice" and "top of the body" are well defined, and patient left is
decided from world x (smaller RAS x = patient left), not from array indices.

Steps, each in its own function:

1. ``body_mask``: tissue above ``body_hu``, opened to drop the table, largest part, holes filled per axial slice;
   where the field of view cuts through the body (a crop), the slice border is treated as body.
2. ``airway_mask``: a tube of lumen (< ``airway_hu``) near the midline, tracked slice by slice from the top down
   until it splits at the carina (then ``bronchi_length_mm`` further) or leaks into lung; kept only if it is long
   enough and opens into a lung.
3. ``lung_masks``: air inside the body minus the airway; gas pockets (median HU near -1000) and crumbs dropped;
   lungs that touch at a junction are split by erosion seeds; closing + hole filling pull vessels back in.
4. ``bone_mask``: above ``bone_hu`` inside the body, contrast blood pools removed, small marrow holes filled.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ctrag.data.labels import COARSE_LABELS
from ctrag.data.nifti import Volume
from ctrag.errors import DataValidationError
from ctrag.segment.config import ClassicalConfig
from ctrag.segment.grid import (
    CanonicalView,
    block_mean,
    block_repeat,
    ellipsoid_mm,
    fill_holes_axial,
    label_components,
    largest_component,
    pooling_factors,
    radius_voxels,
    remove_small,
)

logger = logging.getLogger(__name__)

LABEL_IDS: dict[str, int] = {name: code for code, name in COARSE_LABELS.items()}


@dataclass
class ClassicalResult:
    """Boolean masks on the *canonical* grid plus what was found (for logging, manifests and tests)."""

    view: CanonicalView
    body: np.ndarray
    lung_left: np.ndarray
    lung_right: np.ndarray
    airway: np.ndarray
    bone: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def label_array(self) -> np.ndarray:
        """Coarse label map (uint8) on the canonical grid; later structures win where masks overlap."""
        out = np.zeros(self.body.shape, dtype=np.uint8)
        out[self.body] = LABEL_IDS["body"]
        out[self.bone] = LABEL_IDS["bone"]
        out[self.lung_left] = LABEL_IDS["lung_left"]
        out[self.lung_right] = LABEL_IDS["lung_right"]
        out[self.airway] = LABEL_IDS["airway"]
        return out


# --------------------------------------------------------------------------------------------------- utilities


def _pad_width(se: np.ndarray) -> list[tuple[int, int]]:
    return [(s // 2, s // 2) for s in se.shape]


def _closing(mask: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Closing that assumes the object continues beyond the array edge (no erosion artefact at a cropped FOV)."""
    if se.size <= 1:
        return mask.copy()
    pad = _pad_width(se)
    padded = np.pad(mask, pad, mode="edge")
    closed = ndi.binary_closing(padded, structure=se)
    return np.asarray(closed[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape, strict=True))])


def _opening(mask: np.ndarray, se: np.ndarray) -> np.ndarray:
    if se.size <= 1:
        return mask.copy()
    pad = _pad_width(se)
    padded = np.pad(mask, pad, mode="edge")
    opened = ndi.binary_opening(padded, structure=se)
    return np.asarray(opened[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape, strict=True))])


def _in_plane(se: np.ndarray) -> np.ndarray:
    """Keep only the central axial plane of a 3-D structuring element."""
    return se[:, :, se.shape[2] // 2 : se.shape[2] // 2 + 1]


# --------------------------------------------------------------------------------------------------- body


def body_mask(hu: np.ndarray, spacing: tuple[float, float, float], cfg: ClassicalConfig) -> np.ndarray:
    """Body outline (canonical grid): tissue, minus the table, with lungs, airway and gas filled in."""
    tissue = hu > cfg.body_hu
    se = ellipsoid_mm(cfg.table_opening_mm, spacing)
    core = largest_component(_opening(tissue, se))
    if not core.any():
        core = largest_component(tissue)
    if not core.any():
        raise DataValidationError(f"no voxel above {cfg.body_hu} HU: the volume contains no body")
    # Conditional dilation gives back skin and thin parts that the opening removed, without the table.
    body = largest_component(ndi.binary_dilation(core, structure=se) & tissue if se.size > 1 else core)
    present = body.any(axis=(0, 1))
    border = np.concatenate([body[0], body[-1], body[1:-1, 0], body[1:-1, -1]], axis=0)
    closed = present & (border.mean(axis=0) >= cfg.fov_closed_fraction)
    return fill_holes_axial(body, closed_slices=closed)


# --------------------------------------------------------------------------------------------------- airway


def _track_airway(
    lumen: np.ndarray, k0: int, seed: np.ndarray, spacing: tuple[float, float, float], cfg: ClassicalConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Follow a lumen cross-section downwards; return the tube and how tracking ended."""
    px = spacing[0] * spacing[1]
    tube = np.zeros(lumen.shape, dtype=bool)
    tube[:, :, k0] = seed
    prev = seed
    prev_area = float(seed.sum()) * px
    split_k: int | None = None
    leaked = False
    k_end = k0
    reach_se = np.ones((3, 3), dtype=bool)
    for k in range(k0 - 1, -1, -1):
        labels, sizes = label_components(lumen[:, :, k])
        touched = np.unique(labels[ndi.binary_dilation(prev, structure=reach_se) & (labels > 0)])
        if touched.size == 0:
            break
        limit = min(cfg.airway_max_area_mm2, cfg.airway_max_growth * prev_area)
        good = [int(t) for t in touched if sizes[t] * px <= limit]
        if len(good) < len(touched):
            leaked = True
        if not good:
            break
        cur = np.isin(labels, good)
        branches = sum(1 for t in good if sizes[t] * px >= cfg.airway_min_area_mm2 / 4)
        if split_k is None and branches >= 2:
            split_k = k
        tube[:, :, k] = cur
        k_end = k
        prev, prev_area = cur, float(cur.sum()) * px
        if split_k is not None and (split_k - k) * spacing[2] >= cfg.bronchi_length_mm:
            break
        if leaked:
            # One bronchus entered the lung; the other(s) may go on for this slice but not further.
            break
    info = {"top_k": k0, "end_k": k_end, "carina_k": split_k, "leaked": leaked}
    return tube, info


def airway_mask(
    hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float], cfg: ClassicalConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Trachea and main bronchi (canonical grid), or an empty mask when none is in the field of view."""
    lumen = (hu < cfg.airway_hu) & body
    air = (hu < cfg.air_hu) & body
    px = spacing[0] * spacing[1]
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    ks = np.flatnonzero(body.any(axis=(0, 1)))
    if ks.size == 0:
        return np.zeros_like(body), {"found": False, "reason": "no body"}
    k_top = int(ks.max())
    k_stop = max(-1, k_top - int(np.ceil(cfg.airway_search_mm / spacing[2])) - 1)
    air_labels: np.ndarray | None = None
    tried = 0
    for k in range(k_top, k_stop, -1):
        xs = np.flatnonzero(body[:, :, k].any(axis=1))
        if xs.size == 0:
            continue
        centre_x = 0.5 * (xs.min() + xs.max())
        labels, sizes = label_components(lumen[:, :, k])
        cands = []
        for lab in range(1, sizes.size):
            area = sizes[lab] * px
            if not cfg.airway_min_area_mm2 <= area <= cfg.airway_max_area_mm2:
                continue
            cx = float(np.mean(np.nonzero(labels == lab)[0]))
            if abs(cx - centre_x) * spacing[0] <= cfg.airway_midline_mm:
                cands.append((area, lab))
        for _, lab in sorted(cands, reverse=True)[:2]:
            tried += 1
            tube, info = _track_airway(lumen, k, labels == lab, spacing, cfg)
            length_mm = (info["top_k"] - info["end_k"] + 1) * spacing[2]
            if length_mm < cfg.airway_min_length_mm or (info["carina_k"] is None and not info["leaked"]):
                continue
            # The tube must open into aerated lung, not into a gas pocket (oesophagus → stomach).
            if air_labels is None:
                air_labels, _ = label_components(air)
            ids = np.unique(air_labels[tube & (air_labels > 0)])
            connected = np.isin(air_labels, ids) & ~tube
            connected_ml = float(connected.sum() * voxel_ml)
            if connected_ml < 2 * cfg.lung_min_ml or not _is_lung_like(hu[connected], connected_ml, cfg):
                continue
            info.update(found=True, length_mm=float(length_mm), seeds_tried=tried)
            return tube, info
    return np.zeros_like(body), {"found": False, "seeds_tried": tried}


# --------------------------------------------------------------------------------------------------- lungs


def _values_by_label(values: np.ndarray, labels: np.ndarray, ids: list[int]) -> dict[int, np.ndarray]:
    """HU values of each labelled component, gathered with one sort instead of one mask per component."""
    flat = labels.ravel()
    sel = np.flatnonzero(np.isin(flat, ids))
    order = sel[np.argsort(flat[sel], kind="stable")]
    sorted_labels = flat[order]
    bounds = np.searchsorted(sorted_labels, [*ids, max(ids) + 1])
    vals = values.ravel()
    return {i: vals[order[bounds[n] : bounds[n + 1]]] for n, i in enumerate(ids)}


def _is_lung_like(values: np.ndarray, volume_ml: float, cfg: ClassicalConfig) -> bool:
    """Aerated lung rather than a gas pocket (pure air) or a partial-volume sliver (mostly soft tissue)."""
    if values.size == 0 or float(np.median(values)) > cfg.lung_max_median_hu:
        return False
    return not (float(np.percentile(values, 10)) < cfg.gas_p10_hu and volume_ml < cfg.gas_max_ml)


def _split_by_erosion(
    comp: np.ndarray, view: CanonicalView, midline_x: float, cfg: ClassicalConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Split one connected left+right lung region into two seeds by in-plane erosion; None if it won't split."""
    sx = view.spacing[0]
    max_r = radius_voxels(cfg.lung_split_erosion_mm, sx)
    for r in range(1, max(1, max_r) + 1):
        se = _in_plane(ellipsoid_mm(r * sx, view.spacing))
        eroded = ndi.binary_erosion(comp, structure=se)
        labels, sizes = label_components(eroded)
        if sizes.size < 3:
            continue
        order = np.argsort(sizes)[::-1]
        a, b = int(order[0]), int(order[1])
        if sizes[b] < 0.1 * sizes[a]:
            continue
        xa = view.world(np.argwhere(labels == a).mean(axis=0))[0, 0]
        xb = view.world(np.argwhere(labels == b).mean(axis=0))[0, 0]
        if (xa - midline_x) * (xb - midline_x) >= 0:
            continue
        seeds = np.zeros(comp.shape, dtype=np.int8)
        left_lab, right_lab = (a, b) if xa < xb else (b, a)
        seeds[labels == left_lab] = 1
        seeds[labels == right_lab] = 2
        idx = ndi.distance_transform_edt(seeds == 0, sampling=view.spacing, return_distances=False, return_indices=True)
        nearest = seeds[tuple(idx)]
        return comp & (nearest == 1), comp & (nearest == 2)
    return None


def lung_masks(
    hu: np.ndarray,
    body: np.ndarray,
    airway: np.ndarray,
    view: CanonicalView,
    midline_x: float,
    cfg: ClassicalConfig,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Left and right lung (canonical grid). ``midline_x`` is the patient's midline in world RAS mm."""
    spacing = view.spacing
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    airway_zone = ndi.binary_dilation(airway, structure=ndi.generate_binary_structure(3, 1)) if airway.any() else airway
    # Air connected (in 3-D) mostly to air outside the body is outside air caught in a fold or under a
    # table-attached blanket, even where a slice's hole filling put it inside the body.
    air_all = (hu < cfg.air_hu) & ~airway_zone
    all_labels, all_sizes = label_components(air_all)
    outside_counts = np.bincount(all_labels[air_all & ~body], minlength=all_sizes.size)
    outside_ids = np.flatnonzero(outside_counts > 0.5 * np.maximum(all_sizes, 1))
    air = air_all & body & ~np.isin(all_labels, outside_ids)
    labels, sizes = label_components(air)
    ids = [i for i in range(1, sizes.size) if sizes[i] * voxel_ml >= cfg.lung_min_ml]
    lungish = []
    if ids:
        values = _values_by_label(hu, labels, ids)
        lungish = [i for i in ids if _is_lung_like(values[i], sizes[i] * voxel_ml, cfg)]
    info: dict[str, Any] = {"air_pieces_dropped": len(ids) - len(lungish), "split": "none"}
    if not lungish:
        empty = np.zeros_like(body)
        info["pieces"] = 0
        return empty, empty.copy(), info
    largest = max(sizes[i] for i in lungish)
    keep = [i for i in lungish if sizes[i] >= cfg.lung_min_fraction * largest]
    info["pieces"] = len(keep)
    left = np.zeros_like(body)
    right = np.zeros_like(body)
    for i in keep:
        comp = labels == i
        xs = view.world(np.argwhere(comp))[:, 0]
        frac_left = float(np.mean(xs < midline_x))
        if min(frac_left, 1.0 - frac_left) >= 0.15 and sizes[i] >= 0.5 * largest:
            parts = _split_by_erosion(comp, view, midline_x, cfg)
            if parts is None:
                left_side = _world_x_below(view, comp.shape, midline_x)
                parts = (comp & left_side, comp & ~left_side)
                info["split"] = "midline"
            else:
                info["split"] = "erosion"
            left |= parts[0]
            right |= parts[1]
        elif frac_left >= 0.5:
            left |= comp
        else:
            right |= comp
    se = ellipsoid_mm(cfg.lung_closing_mm, spacing)
    px = spacing[0] * spacing[1]
    closed_left = fill_holes_axial(_closing(left, se), pixel_mm2=px) if left.any() else left
    closed_right = fill_holes_axial(_closing(right, se), pixel_mm2=px) if right.any() else right
    allowed = body & ~airway
    out_left = closed_left & allowed & ~right
    out_right = closed_right & allowed & ~left & ~out_left
    return out_left, out_right, info


def _world_x_below(view: CanonicalView, shape: tuple[int, ...], x_mm: float) -> np.ndarray:
    """Voxels whose world RAS x is below ``x_mm`` (the patient-left side of a sagittal plane)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij", sparse=True)
    a = view.affine
    x = a[0, 0] * i + a[0, 1] * j + a[0, 2] * k + a[0, 3]
    return np.asarray(x < x_mm)


# --------------------------------------------------------------------------------------------------- bone


def bone_mask(
    hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float], cfg: ClassicalConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Bone (canonical grid): a dense core without contrast blood pools, grown into nearby and enclosed marrow."""
    bone = (hu > cfg.bone_hu) & body
    info: dict[str, Any] = {"blood_pools_removed_ml": 0.0}
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    px = spacing[0] * spacing[1]
    blood = np.zeros_like(bone)
    if cfg.blood_pool_radius_mm > 0 and bone.any():
        soft = bone & (hu < cfg.blood_pool_max_hu)
        pools = _opening(soft, ellipsoid_mm(cfg.blood_pool_radius_mm, spacing))
        labels, sizes = label_components(pools)
        ids = list(range(1, sizes.size))
        medians = {i: float(np.median(v)) for i, v in _values_by_label(hu, labels, ids).items()} if ids else {}
        blood_ids = [i for i in ids if sizes[i] * voxel_ml >= cfg.blood_pool_min_ml]
        if blood_ids:
            ref = max(medians[i] for i in blood_ids)
            floor = max(cfg.blood_pool_secondary_min_hu, cfg.blood_pool_relative * ref)
            blood_ids += [i for i in ids if i not in blood_ids and medians[i] >= floor]
            info["blood_pool_median_hu"] = ref
            blood = fill_holes_axial(np.isin(labels, blood_ids), pixel_mm2=px)
            # Dense inflow and the partial-volume rim of the pool are blood too, not bone.
            blood = ndi.binary_dilation(blood, structure=ndi.generate_binary_structure(3, 1)) & (hu > cfg.marrow_hu)
            info["blood_pools_removed_ml"] = float((blood & bone).sum() * voxel_ml)
            bone &= ~blood
    bone = remove_small(bone, int(np.ceil(cfg.bone_min_ml / voxel_ml)), connectivity=3)
    marrow = (hu > cfg.marrow_hu) & body
    if blood.any() and cfg.marrow_grow_mm > 0:
        # Enhanced myocardium and vessel walls next to a blood pool are not marrow.
        marrow &= ~ndi.binary_dilation(blood, structure=ellipsoid_mm(cfg.marrow_grow_mm, spacing))
    if cfg.marrow_grow_mm > 0 and bone.any():
        bone |= ndi.binary_dilation(bone, structure=ellipsoid_mm(cfg.marrow_grow_mm, spacing)) & marrow
    # Marrow enclosed by cortex in an axial slice.
    filled = fill_holes_axial(bone, max_hole_mm2=cfg.bone_fill_max_mm2, pixel_mm2=px)
    bone |= filled & marrow
    return bone, info


# --------------------------------------------------------------------------------------------------- driver


def _midline_x(view: CanonicalView, airway: np.ndarray, bone: np.ndarray, body: np.ndarray) -> tuple[float, str]:
    """Patient midline (world x): the airway if found, else the centre of bone (spine + both rib cages), else body."""
    for name, mask in (("airway", airway), ("bone", bone), ("body", body)):
        if mask.sum() >= 10:
            return float(view.world(np.argwhere(mask).mean(axis=0))[0, 0]), name
    return float(view.world(np.array(view.shape) / 2.0)[0, 0]), "fov"


def classical_masks(volume: Volume, config: ClassicalConfig | None = None) -> ClassicalResult:
    """Run the classical segmenter; masks stay on the canonical (closest-RAS) grid of ``volume``."""
    cfg = config or ClassicalConfig()
    if volume.array.ndim != 3:
        raise DataValidationError(f"{volume.path or 'volume'}: expected a 3-D CT, got shape {volume.array.shape}")
    view = CanonicalView.of(volume.shape, volume.affine)
    hu = view.to_canonical(np.asarray(volume.array, dtype=np.float32))
    hu = np.maximum(hu, np.float32(cfg.outside_fov_hu))
    spacing = view.spacing
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    body = body_mask(hu, spacing, cfg)
    timings["body_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    airway, airway_info = airway_mask(hu, body, spacing, cfg)
    timings["airway_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bone, bone_info = bone_mask(hu, body, spacing, cfg)
    timings["bone_s"] = time.perf_counter() - t0

    midline, midline_from = _midline_x(view, airway, bone, body)
    t0 = time.perf_counter()
    left, right, lung_info = lung_masks(hu, body, airway, view, midline, cfg)
    timings["lungs_s"] = time.perf_counter() - t0

    voxel_ml = float(np.prod(spacing)) / 1000.0
    info: dict[str, Any] = {
        "orientation_in": volume.orientation,
        "midline_x_mm": midline,
        "midline_from": midline_from,
        "airway": airway_info,
        "lungs": lung_info,
        "bone": bone_info,
        "volumes_ml": {
            "body": float(body.sum() * voxel_ml),
            "lung_left": float(left.sum() * voxel_ml),
            "lung_right": float(right.sum() * voxel_ml),
            "airway": float(airway.sum() * voxel_ml),
            "bone": float(bone.sum() * voxel_ml),
        },
        "timings": timings,
    }
    logger.debug("classical segmentation of %s: %s", volume.path or "volume", info)
    return ClassicalResult(view=view, body=body, lung_left=left, lung_right=right, airway=airway, bone=bone, info=info)


def _working_volume(volume: Volume, cfg: ClassicalConfig) -> tuple[Volume, tuple[int, int, int]]:
    factors = pooling_factors(volume.spacing, cfg.working_spacing_mm)
    if factors == (1, 1, 1):
        return volume, factors
    pooled, pooled_affine = block_mean(volume.array, volume.affine, factors)
    return Volume(array=pooled, affine=pooled_affine, path=volume.path), factors


def classical_body(volume: Volume, config: ClassicalConfig | None = None) -> np.ndarray:
    """Body mask (bool) on the input grid; what TotalSegmentator lacks for the coarse "body" label."""
    cfg = config or ClassicalConfig()
    work, factors = _working_volume(volume, cfg)
    view = CanonicalView.of(work.shape, work.affine)
    hu = np.maximum(view.to_canonical(np.asarray(work.array, dtype=np.float32)), np.float32(cfg.outside_fov_hu))
    body = view.from_canonical(body_mask(hu, view.spacing, cfg))
    return block_repeat(body, factors, volume.shape) if factors != (1, 1, 1) else body


def classical_segment(volume: Volume, config: ClassicalConfig | None = None) -> Volume:
    """Coarse anatomy labels (``COARSE_LABELS``: body, lung_left, lung_right, airway, bone) on the input grid.

    Deterministic and CPU-only. CTs finer than ``working_spacing_mm`` are segmented on a mean-pooled copy and
    the labels are repeated back, so the output always has the input's shape and affine.
    """
    cfg = config or ClassicalConfig()
    work, factors = _working_volume(volume, cfg)
    result = classical_masks(work, cfg)
    labels = result.view.from_canonical(result.label_array())
    if factors != (1, 1, 1):
        labels = block_repeat(labels, factors, volume.shape)
    meta = {
        "method": "classical",
        "labels": "coarse",
        "label_names": dict(COARSE_LABELS),
        "pooling_factors": list(factors),
        **result.info,
    }
    return Volume(array=labels, affine=volume.affine.copy(), path=None, meta=meta)
