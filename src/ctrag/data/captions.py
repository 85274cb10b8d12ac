"""Text derived from annotations, for CTs that have no report of their own.

No CT shipped with ctrag is paired with its radiology report, and ctrag never invents such a pairing. A CT still
needs *some* text to be indexed, so this module writes plain radiology-like sentences that state only what the
annotations (and simple measurements on the CT itself) support. Cases using it carry
``report_source="annotation-derived"``. Nothing here asserts normality: absent annotations are not negative
findings, so no sentence says "no ...".

- :func:`caption_tumour_box`: a tumour bounding box in RAS mm (Lung-PET-CT-Dx JSON) + its pathology class ->
  side (box centre vs. the body's left-right centre), lung zone (box centre within the craniocaudal extent of
  air-density lung on that CT, in thirds), anterior/posterior third, box size in mm, pathology.
- :func:`caption_from_mask`: a TotalSegmentator "total" mask -> region covered (neck / chest / abdomen / pelvis
  from which structures are present; "lung bases" when the lungs reach the top of the field of view), vertebral
  levels, the list of segmented structures, and (with the CT) whether the aorta is contrast-enhanced (median HU).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ctrag.data.labels import ANATOMY_GROUPS, group_of, totalseg_v2_labels
from ctrag.data.nifti import Volume

LUNG_HU = (-950.0, -500.0)
BODY_HU = -500.0
CONTRAST_AORTA_HU = 150.0
_VERTEBRA_ORDER = (
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)] + ["S1"]
)


@dataclass(frozen=True)
class Caption:
    """Findings and impression written from annotations, plus the facts they were written from."""

    findings: str
    impression: str
    facts: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------------------


def _world(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """Voxel indices (N, 3) -> RAS mm (N, 3)."""
    return ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _body_mask(ct: Volume) -> np.ndarray:
    """Body = everything denser than -500 HU with holes (lungs) filled, slice by slice along the last axis."""
    dense = np.asarray(ct.array) > BODY_HU
    body = np.zeros_like(dense)
    for k in range(dense.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(dense[:, :, k])
    return body


def lung_extent_z(ct: Volume) -> tuple[float, float]:
    """World z range (RAS mm) of the slices holding air-density lung inside the body (>2 % of the peak slice)."""
    arr = np.asarray(ct.array, dtype=np.float32)
    lung = (arr > LUNG_HU[0]) & (arr < LUNG_HU[1]) & _body_mask(ct)
    idx = np.argwhere(lung)
    if idx.size == 0:
        raise ValueError(f"{ct.path or 'CT'}: no lung-density voxels found")
    z = _world(ct, idx.astype(np.float64))[:, 2]
    hist, edges = np.histogram(z, bins=max(8, int(np.ptp(z) / max(ct.spacing[2], 1.0)) + 1))
    keep = hist > 0.02 * hist.max()
    return float(edges[:-1][keep].min()), float(edges[1:][keep].max())


def _body_ranges(ct: Volume) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(_body_mask(ct)).astype(np.float64)
    world = _world(ct, idx)
    return world.min(axis=0), world.max(axis=0)


def _third(value: float, lo: float, hi: float, names: tuple[str, str, str]) -> str:
    frac = (value - lo) / max(hi - lo, 1e-6)
    return names[0] if frac < 1 / 3 else names[1] if frac < 2 / 3 else names[2]


# --------------------------------------------------------------------------------------------------------------
# Tumour box (Lung-PET-CT-Dx)
# --------------------------------------------------------------------------------------------------------------


def caption_tumour_box(box: Mapping[str, Any], ct: Volume) -> Caption:
    """Caption for a lung tumour given as a Lung-PET-CT-Dx bbox JSON (``bbox_3d_ras_mm``, ``bbox_3d_voxel``,
    ``spacing_mm``, ``slice_boxes[].class_name``) and the CT it was drawn on (any resolution, same world)."""
    ras = box["bbox_3d_ras_mm"]
    lo, hi = np.asarray(ras["min"], dtype=float), np.asarray(ras["max"], dtype=float)
    centre = (lo + hi) / 2
    vox = box["bbox_3d_voxel"]
    spacing = np.asarray(box["spacing_mm"], dtype=float)
    counts = np.array([vox[f"{a}_max"] - vox[f"{a}_min"] + 1 for a in "ijk"], dtype=float)
    size = np.round(counts * spacing).astype(int)  # voxel-centre box + one voxel = covered extent
    body_lo, body_hi = _body_ranges(ct)
    # RAS world: +x points to the patient's right, +y anterior, +z superior.
    side = "right" if centre[0] > (body_lo[0] + body_hi[0]) / 2 else "left"
    z_lo, z_hi = lung_extent_z(ct)
    zone = _third(float(centre[2]), z_lo, z_hi, ("lower", "middle", "upper"))
    ap = _third(float(centre[1]), float(body_lo[1]), float(body_hi[1]), ("posterior", "", "anterior"))
    classes = Counter(str(b.get("class_name", "")).strip() for b in box.get("slice_boxes", []))
    pathology = classes.most_common(1)[0][0] if classes else ""
    lesion = "mass" if size.max() > 30 else "nodule"
    where = f"in the {zone} zone of the {side} lung" + (f", {ap}ly" if ap else "")
    findings = [
        f"A {lesion} is present {where}.",
        f"The annotated bounding box of the lung {lesion} measures about {size[0]} x {size[1]} x {size[2]} mm "
        "(transverse x anteroposterior x craniocaudal).",
    ]
    if pathology:
        findings.append(f"Pathology of the lung {lesion}: {pathology}.")
    impression = f"{side.capitalize()} {zone} zone lung {lesion}" + (f", {pathology}." if pathology else ".")
    facts = {
        "side": side,
        "lung_zone": zone,
        "anteroposterior": ap or "middle",
        "box_size_mm": size.tolist(),
        "pathology": pathology,
        "box_centre_ras_mm": [round(float(c), 1) for c in centre],
    }
    return Caption(" ".join(findings), impression, facts)


# --------------------------------------------------------------------------------------------------------------
# Segmentation mask (TotalSegmentator "total")
# --------------------------------------------------------------------------------------------------------------

_SIDED_RE = re.compile(r"^(?P<base>.+)_(?P<side>left|right)$")
_LOBE_RE = re.compile(r"^lung_(?P<lobe>upper|middle|lower)_lobe_(?P<side>left|right)$")
_RIB_RE = re.compile(r"^rib_(?P<side>left|right)_(?P<n>\d+)$")
_MUSCLE_PREFIXES = {"gluteus": "gluteal", "autochthon": "autochthonous back", "iliopsoas": "iliopsoas"}
_NECK = {"thyroid_gland"}
_UPPER_ABDOMEN = {"liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "gallbladder"}
_PELVIS_PREFIXES = ("urinary_bladder", "prostate", "hip_", "femur_", "sacrum", "gluteus_", "iliac_")


def _present_names(mask: Volume) -> dict[str, int]:
    table = totalseg_v2_labels()
    arr = np.asarray(mask.array)
    if arr.dtype.kind not in "iub":
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{mask.path or 'mask'}: negative label values")
    counts = np.zeros(max(int(arr.max(initial=0)), max(table)) + 1, dtype=np.int64)
    for k in range(arr.shape[-1]):  # slice by slice: no full-size int64 copy of a 512x512x128 mask
        counts += np.bincount(arr[..., k].ravel(), minlength=counts.size)
    return {table[i]: int(n) for i, n in enumerate(counts) if n and i in table}


def _range_text(items: list[int]) -> str:
    items = sorted(items)
    return f"{items[0]}" if len(items) == 1 else f"{items[0]}-{items[-1]}"


def _group_rank(name: str) -> int:
    group = group_of({v: k for k, v in totalseg_v2_labels().items()}[name])
    order = list(ANATOMY_GROUPS)
    return order.index(group) if group in order else len(order)


def _structure_list(names: list[str]) -> list[str]:
    """Human-readable structure names in anatomical group order, grouped (lobes, vertebrae, ribs, muscles,
    left/right pairs)."""
    items: list[tuple[int, int, str]] = []  # (group rank, position, text)
    lobes = [m for m in (_LOBE_RE.match(n) for n in names) if m]
    if lobes:
        text = (
            "both lungs (all five lobes)"
            if len(lobes) == 5
            else "lung lobes: " + ", ".join(f"{m['side']} {m['lobe']}" for m in lobes)
        )
        items.append((0, 0, text))
    ribs: dict[str, list[int]] = {}
    sided: dict[str, set[str]] = {}
    first_seen: dict[str, tuple[int, int]] = {}
    muscles: list[str] = []
    vertebrae = [n.removeprefix("vertebrae_") for n in names if n.startswith("vertebrae_")]
    for pos, name in enumerate(names):
        rank = _group_rank(name)
        if _LOBE_RE.match(name) or name.startswith("vertebrae_"):
            first_seen.setdefault("#vertebrae" if name.startswith("vertebrae_") else "#lobes", (rank, pos))
            continue
        rib = _RIB_RE.match(name)
        if rib:
            ribs.setdefault(rib["side"], []).append(int(rib["n"]))
            first_seen.setdefault("#ribs", (rank, pos))
            continue
        prefix = next((p for p in _MUSCLE_PREFIXES if name.startswith(p)), None)
        if prefix:
            if _MUSCLE_PREFIXES[prefix] not in muscles:
                muscles.append(_MUSCLE_PREFIXES[prefix])
            first_seen.setdefault("#muscles", (rank, pos))
            continue
        match = _SIDED_RE.match(name)
        base = match["base"] if match else name
        if match:
            sided.setdefault(base, set()).add(match["side"])
        first_seen.setdefault(base, (rank, pos))
    for base, (rank, pos) in first_seen.items():
        if base.startswith("#"):
            continue
        pretty = base.replace("_", " ")
        sides = sided.get(base)
        if sides is None:
            text = pretty
        elif len(sides) == 2:
            text = f"{pretty} (left and right)"
        else:
            text = f"{next(iter(sides))} {pretty}"
        items.append((rank, pos, text))
    if vertebrae:
        ordered = sorted(vertebrae, key=lambda v: _VERTEBRA_ORDER.index(v) if v in _VERTEBRA_ORDER else 99)
        text = "vertebra " + ordered[0] if len(ordered) == 1 else f"vertebrae {ordered[0]} to {ordered[-1]}"
        items.append((*first_seen["#vertebrae"], text))
    if ribs:
        items.append(
            (
                *first_seen["#ribs"],
                "ribs (" + ", ".join(f"{side} {_range_text(ns)}" for side, ns in sorted(ribs.items())) + ")",
            )
        )
    if muscles:
        items.append((*first_seen["#muscles"], _join(muscles) + " muscles"))
    return [text for _, _, text in sorted(items)]


def _lungs_reach_top(mask: Volume, names: dict[str, int]) -> bool:
    """Do the lungs reach the superior edge of the field of view (so the apices may be cut off)?"""
    table = {v: k for k, v in totalseg_v2_labels().items()}
    lung_ids = [table[n] for n in names if _LOBE_RE.match(n)]
    if not lung_ids:
        return False
    lungs = np.isin(np.asarray(mask.array), lung_ids)
    lo, hi = [], []
    for axis in range(3):
        present = np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(present.min())
        hi.append(present.max())
    box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], dtype=float)
    top_lung = _world(mask, box)[:, 2].max()
    fov = np.array(
        [[i, j, k] for i in (0, mask.shape[0] - 1) for j in (0, mask.shape[1] - 1) for k in (0, mask.shape[2] - 1)],
        dtype=float,
    )
    top_fov = _world(mask, fov)[:, 2].max()
    return bool(top_fov - top_lung <= 1.5 * mask.spacing[2])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_from_mask(mask: Volume, ct: Volume | None = None) -> Caption:
    """Caption listing what a TotalSegmentator "total" mask covers (and, given the CT, aortic contrast)."""
    names = _present_names(mask)
    if not names:
        raise ValueError(f"{mask.path or 'mask'}: no TotalSegmentator labels present")
    ordered = sorted(names, key=lambda n: {v: k for k, v in totalseg_v2_labels().items()}[n])
    has_lungs = any(_LOBE_RE.match(n) for n in names)
    has_neck = bool(_NECK & set(names)) or any(n.startswith("vertebrae_C") for n in names)
    has_chest = has_lungs or "heart" in names or "trachea" in names
    has_abdomen = bool(_UPPER_ABDOMEN & set(names))
    has_pelvis = any(n.startswith(_PELVIS_PREFIXES) for n in names)
    region: list[str] = []
    if has_neck:
        region.append("lower neck")
    if has_lungs:
        region.append("lower chest (lung bases)" if _lungs_reach_top(mask, names) else "chest")
    elif has_chest:
        region.append("heart and aorta" if "aorta" in names else "heart")
    if has_abdomen:
        region.append("abdomen" if has_pelvis else "upper abdomen")
    if has_pelvis:
        region.append("pelvis")
    region_text = _join(region) if region else "body"
    extent_mm = np.asarray(mask.shape, dtype=float) * np.asarray(mask.spacing)
    cropped = bool(min(extent_mm[0], extent_mm[1]) < 250.0)
    contrast = ""
    facts: dict[str, Any] = {"region": region_text, "structures": ordered, "cropped_field_of_view": cropped}
    if ct is not None and "aorta" in names:
        aorta_id = {v: k for k, v in totalseg_v2_labels().items()}["aorta"]
        median = float(np.median(np.asarray(ct.array)[np.asarray(mask.array) == aorta_id]))
        facts["aorta_median_hu"] = round(median)
        contrast = "contrast-enhanced " if median > CONTRAST_AORTA_HU else "non-contrast "
    scope = f"CT with a cropped field of view covering the {region_text}" if cropped else f"CT of the {region_text}"
    findings = [f"{(contrast + scope)[0].upper()}{(contrast + scope)[1:]}."]
    if "aorta_median_hu" in facts:
        findings.append(f"Median density within the segmented aorta: {facts['aorta_median_hu']} HU.")
    findings.append("Segmented structures: " + "; ".join(_structure_list(ordered)) + ".")
    if ct is None:
        findings.append("The CT itself is not available; only its segmentation is.")
    impression = f"{(contrast + scope)[0].upper()}{(contrast + scope)[1:]}."
    return Caption(" ".join(findings), impression, facts)
