"""Label vocabularies: the 18 CT-RATE abnormalities and the TotalSegmentator v2 "total" classes.

The TotalSegmentator names are parsed from its ``map_to_binary.py`` (Apache-2.0) and shipped as JSON in
``ctrag/data/resources``. ``ANATOMY_GROUPS`` folds the 117 classes into the coarse structures that a report
talks about and that a low-resolution model can still represent (both lungs, airway, heart, aorta, bone...);
``COARSE_LABELS`` is the label set the classical segmenter produces, so masks from either source can be
compared after ``to_coarse``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache, lru_cache
from importlib import resources

import numpy as np
import numpy.typing as npt

from ctrag.errors import DataValidationError


def _read_resource(name: str) -> object:
    return json.loads((resources.files("ctrag.data") / "resources" / name).read_text(encoding="utf-8"))


CT_RATE_LABELS: tuple[str, ...] = tuple(str(x) for x in _read_resource("ct_rate_18_abnormality_labels.json"))  # type: ignore[attr-defined]
"""The 18 CT-RATE abnormality labels, in the column order of the CT-RATE label CSVs."""


@lru_cache(maxsize=1)
def totalseg_v2_labels() -> dict[int, str]:
    """TotalSegmentator v2 "total" task: label id (1..117) -> class name."""
    raw = _read_resource("total_v2_label_names.json")
    assert isinstance(raw, dict)
    return {int(k): str(v) for k, v in raw.items()}


def _ids(names: Sequence[str] = (), prefixes: Sequence[str] = ()) -> tuple[int, ...]:
    table = totalseg_v2_labels()
    return tuple(sorted(i for i, n in table.items() if n in names or any(n.startswith(p) for p in prefixes)))


# Anatomical groups used by reports, proxies and evaluation. Order matters: ``to_coarse`` assigns later groups
# on top of earlier ones only where the earlier left background, so overlaps never happen silently.
ANATOMY_GROUPS: dict[str, tuple[int, ...]] = {
    "lung_left": _ids(("lung_upper_lobe_left", "lung_lower_lobe_left")),
    "lung_right": _ids(("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")),
    "airway": _ids(("trachea",)),
    "heart": _ids(("heart", "atrial_appendage_left")),
    "aorta": _ids(("aorta",)),
    "esophagus": _ids(("esophagus",)),
    "vessels": _ids(
        (
            "pulmonary_vein",
            "brachiocephalic_trunk",
            "superior_vena_cava",
            "inferior_vena_cava",
            "portal_vein_and_splenic_vein",
        ),
        prefixes=("subclavian_artery", "common_carotid_artery", "brachiocephalic_vein", "iliac_"),
    ),
    "bone": _ids(
        ("sacrum", "skull", "sternum", "costal_cartilages"),
        prefixes=("vertebrae_", "rib_", "humerus_", "scapula_", "clavicula_", "femur_", "hip_"),
    ),
    "upper_abdomen": _ids(
        (
            "spleen",
            "kidney_right",
            "kidney_left",
            "gallbladder",
            "liver",
            "stomach",
            "pancreas",
            "adrenal_gland_right",
            "adrenal_gland_left",
            "duodenum",
            "kidney_cyst_left",
            "kidney_cyst_right",
        )
    ),
    "muscle": _ids(prefixes=("gluteus_", "autochthon_", "iliopsoas_")),
    "other": _ids(
        (
            "thyroid_gland",
            "small_bowel",
            "colon",
            "urinary_bladder",
            "prostate",
            "spinal_cord",
            "brain",
        )
    ),
}

COARSE_LABELS: dict[int, str] = {1: "body", 2: "lung_left", 3: "lung_right", 4: "airway", 5: "bone"}
"""Label set shared by the classical segmenter and ``to_coarse``: what HU + morphology can find reliably."""


def group_of(label_id: int) -> str | None:
    """Name of the anatomical group holding a TotalSegmentator label id, or None for background/unknown."""
    for group, ids in ANATOMY_GROUPS.items():
        if label_id in ids:
            return group
    return None


def to_coarse(mask: npt.NDArray[np.integer], body: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.uint8]:
    """Map a TotalSegmentator "total" mask to ``COARSE_LABELS``.

    TotalSegmentator has no "body" class; pass a body mask (e.g. from ``ctrag.segment``) to fill label 1,
    otherwise every labelled voxel counts as body.
    """
    out = np.zeros(mask.shape, dtype=np.uint8)
    if body is not None:
        if body.shape != mask.shape:
            raise ValueError(f"to_coarse: body shape {body.shape} != mask shape {mask.shape}")
        out[body] = 1
    else:
        out[mask > 0] = 1
    inv = {name: code for code, name in COARSE_LABELS.items()}
    groups = ("bone", "airway", "lung_right", "lung_left")  # a later group wins where two share a label
    top = max(int(mask.max(initial=0)), *(max(ANATOMY_GROUPS[g]) for g in groups))
    lookup = np.zeros(top + 1, dtype=np.uint8)  # one pass over the voxels instead of one np.isin per group
    for group in groups:
        lookup[list(ANATOMY_GROUPS[group])] = inv[group]
    grouped = lookup[np.clip(mask, 0, top)]
    return np.where(grouped > 0, grouped, out)


def left_right_partner(name: str) -> str:
    """The name of the mirror-image structure: every ``left`` word swapped with ``right`` (``rib_left_3`` ->
    ``rib_right_3``, ``lung_upper_lobe_left`` -> ``lung_upper_lobe_right``); unpaired names come back unchanged."""
    swap = {"left": "right", "right": "left"}
    return "_".join(swap.get(part, part) for part in name.split("_"))


def left_right_table(names: dict[int, str]) -> npt.NDArray[np.int64]:
    """Lookup table ``new_id = table[old_id]`` that relabels a mirrored label map so the labels stay anatomical.

    Structures whose partner exists in ``names`` swap ids (lungs, kidneys, ribs, clavicles...); midline and
    unpaired structures (heart, aorta, the right middle lobe) keep theirs. Background 0 maps to itself.
    """
    by_name = {v: k for k, v in names.items()}
    table = np.arange(max(names, default=0) + 1, dtype=np.int64)
    for code, name in names.items():
        table[code] = by_name.get(left_right_partner(name), code)
    return table


# --------------------------------------------------------------------------------------------------------------
# Label sets of label maps (what a mask's ids mean, and conversion between vocabularies)
# --------------------------------------------------------------------------------------------------------------
# Masks arrive in two vocabularies: TotalSegmentator v2 "total" ids (1..117, the RAG-Text2CT proxies) and the
# coarse set of ``ctrag.segment`` (body, lungs, airway, bone). A ControlNet is trained on one *label set*
# (``coarse``, ``groups`` = body + ``ANATOMY_GROUPS``, or ``totalseg``) and every mask is converted to it by name,
# so a TotalSegmentator proxy can drive a model trained on coarse masks.

SOURCE_SPACES: tuple[str, ...] = ("coarse", "totalseg")


@cache
def label_names(label_set: str) -> dict[int, str]:
    """id -> name of a label set (background 0 excluded)."""
    if label_set == "coarse":
        return dict(COARSE_LABELS)
    if label_set == "groups":
        names = ["body", *ANATOMY_GROUPS]
        return {i + 1: n for i, n in enumerate(names)}
    if label_set == "totalseg":
        return dict(totalseg_v2_labels())
    raise DataValidationError(f"unknown label set {label_set!r}; known: coarse, groups, totalseg")


def num_labels(label_set: str) -> int:
    return max(label_names(label_set))


def source_space(mask_source: str | None, values: Sequence[int] | None = None) -> str:
    """Vocabulary of a stored mask from its manifest ``mask_source`` (``totalsegmentator-total``,
    ``ctrag-classical-coarse``, ...) or, when that is unknown, from its values (ids above the coarse range can
    only be TotalSegmentator ids)."""
    text = (mask_source or "").lower()
    if "total" in text:
        return "totalseg"
    if "coarse" in text or "classical" in text:
        return "coarse"
    if values is not None:
        top = max(values, default=0)
        return "totalseg" if top > max(COARSE_LABELS) else "coarse"
    raise DataValidationError(f"cannot tell the label vocabulary of mask_source {mask_source!r}")


def check_labels(mask: np.ndarray, space: str, name: str = "mask") -> list[int]:
    """Refuse masks that are not integer label maps of ``space``; return the labels present (without 0)."""
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise DataValidationError(f"{name}: a mask must be 3-D, got {arr.ndim}-D data of shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise DataValidationError(f"{name}: a label mask must hold integer labels, found fractional values")
    elif arr.dtype.kind not in "iub":
        raise DataValidationError(f"{name}: a label mask must be integer-typed, got {arr.dtype}")
    present = [int(v) for v in np.unique(arr) if v != 0]
    known = label_names(space)
    unknown = [v for v in present if v not in known]
    if unknown:
        raise DataValidationError(
            f"{name}: unknown label ids {unknown[:20]} for the {space!r} label set (known ids: "
            f"{min(known)}..{max(known)})"
        )
    return present


def body_from_labels(mask: np.ndarray) -> np.ndarray:
    """Approximate body outline of an organ mask without its CT: labelled voxels, closed and hole-filled per
    axial slice (TotalSegmentator has no "body" class; skin and fat between organs stay unlabelled)."""
    fg = np.asarray(mask) > 0
    if not fg.any():
        return fg
    from scipy import ndimage as ndi  # imported here: every search loads this module, few need morphology

    # Closing with a 5x5 in-slice square, twice, is closing with one 9x9 square, and a square is separable: two 1-D
    # maximum filters then two 1-D minimum filters (outside = 0, as binary_closing's border_value=0) give the
    # identical result 3-4x faster than ndimage.binary_closing (a 512x512x128 mask: 1.3 s instead of 4.7 s).
    side = 2 * (5 - 1) + 1
    grown = fg.view(np.uint8)
    for axis in (0, 1):
        grown = ndi.maximum_filter1d(grown, side, axis=axis, mode="constant", cval=0)
    for axis in (0, 1):
        grown = ndi.minimum_filter1d(grown, side, axis=axis, mode="constant", cval=0)
    closed = grown.astype(bool)
    filled = np.stack([ndi.binary_fill_holes(closed[:, :, k]) for k in range(closed.shape[2])], axis=2)
    return np.asarray(filled | fg)


def convert_labels(
    mask: np.ndarray, source: str, target: str, body: np.ndarray | None = None, name: str = "mask"
) -> np.ndarray:
    """Map a label map from vocabulary ``source`` to label set ``target`` (uint8/int16), by structure name.

    ``body`` (bool, same grid) fills the body label where the source has none (TotalSegmentator masks); without
    it the outline is estimated with ``body_from_labels``.
    """
    check_labels(mask, source, name)
    arr = np.asarray(mask).astype(np.int32, copy=False)
    if source == target:
        return arr.astype(np.uint8 if target != "totalseg" else np.int16)
    if source == "coarse" and target == "totalseg":
        raise DataValidationError(
            f"{name}: a coarse mask (body/lungs/airway/bone) cannot drive a model trained on TotalSegmentator labels"
        )
    out_names = {v: k for k, v in label_names(target).items()}
    out = np.zeros(arr.shape, dtype=np.uint8)
    if "body" in out_names:
        if body is None and source == "totalseg":
            body = body_from_labels(arr)
        elif body is None:
            body = arr > 0
        if body.shape != arr.shape:
            raise DataValidationError(f"{name}: body mask shape {body.shape} differs from mask shape {arr.shape}")
        out[body | (arr > 0)] = out_names["body"]
    if source == "totalseg" and target == "coarse":
        assert body is not None
        return to_coarse(arr, body=body | (arr > 0))  # the vocabulary module's own TotalSegmentator -> coarse map
    if source == "totalseg":
        # ``bone`` before the lungs/airway so the more specific structure wins where groups touch.
        order = [g for g in ANATOMY_GROUPS if g not in ("lung_left", "lung_right", "airway")]
        order += ["lung_left", "lung_right", "airway"]
        for group in order:
            if group in out_names:
                out[np.isin(arr, ANATOMY_GROUPS[group])] = out_names[group]
    else:  # coarse -> groups
        for code, group in label_names(source).items():
            if group in out_names:
                out[arr == code] = out_names[group]
    return out


def as_coarse(mask: np.ndarray, label_set: str) -> np.ndarray:
    """Any label set's map as coarse labels (body, lungs, airway, bone), for overlays and Dice."""
    if label_set == "coarse":
        return np.asarray(mask).astype(np.uint8)
    if label_set == "totalseg":
        return convert_labels(mask, "totalseg", "coarse")
    coarse_ids = {name: code for code, name in COARSE_LABELS.items()}
    arr = np.asarray(mask)
    out = np.zeros(arr.shape, dtype=np.uint8)
    out[arr > 0] = coarse_ids["body"]
    for code, name in label_names(label_set).items():
        if name in coarse_ids and name != "body":
            out[arr == code] = coarse_ids[name]
    return out
