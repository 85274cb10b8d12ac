"""Spatial controllability: Dice and HD95 between a segmentation of a generated CT and the mask that guided it.

RAG-Text2CT (sec. 3, Table 3) segments every generated volume and compares the result with the structural
proxy it was conditioned on; "Real" (the segmentation of a real CT against its own mask) is the reference row
that shows what the segmentation pipeline itself achieves. Both metrics come from MONAI: ``compute_dice`` and
``compute_hausdorff_distance(percentile=95, spacing=...)`` (millimetres, from the affine).

Conventions (stated because they change numbers):

- Labels are evaluated where the *reference* mask contains them; a label absent from the reference is reported
  as NaN and left out of the means (a label the reference lacks cannot be "followed").
- A label present in the reference but missing from the prediction gets Dice 0 and HD95 = the diagonal of the
  volume in mm (the largest distance possible on that grid) instead of MONAI's NaN, so that missing a structure
  is penalised rather than silently dropped; such labels are listed in ``missing``.
- Both masks must lie on the same voxel grid (shape and affine); nothing is resampled here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ctrag.data.labels import COARSE_LABELS
from ctrag.data.nifti import Volume, check_same_grid
from ctrag.errors import InvalidInputError


def _one_hot(mask: np.ndarray, labels: list[int]) -> torch.Tensor:
    arr = np.asarray(mask)
    return torch.from_numpy(np.stack([arr == lab for lab in labels]).astype(np.float32))[None]


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, float]:
    """MONAI Dice per label (NaN where the reference lacks the label)."""
    from monai.metrics import compute_dice

    if pred.shape != ref.shape:
        raise InvalidInputError(f"dice: shapes differ {pred.shape} vs {ref.shape}")
    if not labels:
        return {}
    d = compute_dice(_one_hot(pred, labels), _one_hot(ref, labels), include_background=True, ignore_empty=True)
    return {lab: float(v) for lab, v in zip(labels, d[0].tolist(), strict=True)}


def hd95_per_label(
    pred: np.ndarray, ref: np.ndarray, labels: list[int], spacing: tuple[float, float, float]
) -> dict[int, float]:
    """MONAI symmetric 95th-percentile Hausdorff distance in mm per label (NaN where either side is empty)."""
    from monai.metrics import compute_hausdorff_distance

    if pred.shape != ref.shape:
        raise InvalidInputError(f"hd95: shapes differ {pred.shape} vs {ref.shape}")
    if not labels:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for empty classes; handled by the caller
        h = compute_hausdorff_distance(
            _one_hot(pred, labels),
            _one_hot(ref, labels),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return {lab: float(v) for lab, v in zip(labels, h[0].tolist(), strict=True)}


@dataclass
class SpatialAgreement:
    """Per-label Dice/HD95 (by label name) and their means over the labels the reference contains."""

    dice: dict[str, float]
    hd95: dict[str, float]
    dice_mean: float
    hd95_mean: float
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def spatial_agreement(
    pred: Volume,
    ref: Volume,
    label_names: Mapping[int, str] = COARSE_LABELS,
) -> SpatialAgreement:
    """Dice and HD95 of ``pred`` (segmentation of a CT) against ``ref`` (the mask it should follow)."""
    check_same_grid(pred, ref)
    p, r = np.asarray(pred.array), np.asarray(ref.array)
    present = [lab for lab in label_names if np.any(r == lab)]
    spacing = ref.spacing
    dice = dice_per_label(p, r, present)
    hd = hd95_per_label(p, r, present, spacing)
    diagonal = float(math.sqrt(sum((n * s) ** 2 for n, s in zip(r.shape, spacing, strict=True))))
    missing = []
    for lab in present:
        if not np.any(p == lab):
            missing.append(label_names[lab])
            dice[lab] = 0.0
            hd[lab] = diagonal
    names_dice = {name: dice.get(lab, float("nan")) for lab, name in label_names.items()}
    names_hd = {name: hd.get(lab, float("nan")) for lab, name in label_names.items()}
    dvals = [dice[lab] for lab in present]
    hvals = [hd[lab] for lab in present]
    return SpatialAgreement(
        dice=names_dice,
        hd95=names_hd,
        dice_mean=float(np.mean(dvals)) if dvals else float("nan"),
        hd95_mean=float(np.mean(hvals)) if hvals else float("nan"),
        missing=missing,
    )
