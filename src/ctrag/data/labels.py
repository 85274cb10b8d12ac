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
from functools import lru_cache
from importlib import resources

import numpy as np
import numpy.typing as npt


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
    for group in ("bone", "airway", "lung_right", "lung_left"):
        out[np.isin(mask, ANATOMY_GROUPS[group])] = inv[group]
    return out


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
