"""Label sets the ControlNet can be conditioned on, conversion between them, and per-batch mask encodings.

Masks arrive in two vocabularies: TotalSegmentator v2 "total" ids (1..117, the RAG-Text2CT proxies) and the
coarse set of ``ctrag.segment`` (body, lungs, airway, bone). The ControlNet is trained on one *label set*
(``coarse``, ``groups`` = body + ``ANATOMY_GROUPS``, or ``totalseg``) and every mask is converted to it by
name before use, so a TotalSegmentator proxy can drive a model trained on coarse masks.

Masks are stored as small integer maps; the float encoding the network reads (one-hot or MAISI's binary bits)
is built per batch with ``encode_mask``. A one-hot bank of every training mask would cost
``num_labels + 1`` floats per voxel up front, which is what made an earlier experiment run out of memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ctrag.data.labels import ANATOMY_GROUPS, COARSE_LABELS, left_right_table, to_coarse, totalseg_v2_labels
from ctrag.errors import DataValidationError

logger = logging.getLogger(__name__)

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
    closed = ndi.binary_closing(fg, structure=np.ones((5, 5, 1), bool), iterations=2, border_value=0)
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


@cache
def _flip_table(label_set: str) -> np.ndarray:
    return left_right_table(label_names(label_set))


def flip_left_right(mask: torch.Tensor, label_set: str, axis: int) -> torch.Tensor:
    """Mirror a label tensor along ``axis`` and swap left/right structures so the labels stay anatomical."""
    table = torch.as_tensor(_flip_table(label_set), device=mask.device)
    return table[mask.long().flip(axis)].to(mask.dtype)


def encode_mask(
    labels: torch.Tensor, n_labels: int, encoding: str = "onehot", pool: int = 1, bits: int = 8
) -> torch.Tensor:
    """(B, 1, X, Y, Z) integer labels -> float input of the mask encoder, built for this batch only.

    ``onehot``: ``n_labels + 1`` channels (background first), average-pooled by ``pool`` so each coarse voxel
    keeps the fraction of every structure; ``binary``: ``bits`` channels holding the label id in binary, the
    MAISI/RAG-Text2CT encoding (pooling a bit pattern is meaningless, so it uses nearest subsampling).
    """
    if labels.ndim != 5 or labels.shape[1] != 1:
        raise ValueError(f"encode_mask: expected (B, 1, X, Y, Z) labels, got {tuple(labels.shape)}")
    lab = labels.long()
    if encoding == "binary":
        if pool > 1:
            lab = lab[..., ::pool, ::pool, ::pool]
        weights = 2 ** torch.arange(bits, device=lab.device)
        out = (lab.unsqueeze(-1).bitwise_and(weights) != 0).float()  # (B, 1, X, Y, Z, bits)
        return out.squeeze(1).permute(0, 4, 1, 2, 3).contiguous()
    if int(lab.max()) > n_labels or int(lab.min()) < 0:
        raise DataValidationError(f"mask holds ids outside 0..{n_labels} ({int(lab.min())}..{int(lab.max())})")
    onehot = torch.zeros((lab.shape[0], n_labels + 1, *lab.shape[2:]), dtype=torch.float32, device=lab.device)
    onehot.scatter_(1, lab, 1.0)
    if pool > 1:
        onehot = F.avg_pool3d(onehot, kernel_size=pool, stride=pool)
    return onehot


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
