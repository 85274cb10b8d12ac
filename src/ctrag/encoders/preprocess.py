"""Turn a CT ``Volume`` (HU, any orientation/spacing) into the tensor a ctrag volume tower reads.

This is a thin adapter over the project's one preprocessing pipeline, ``ctrag.data.transforms`` (RAS, resample to
``spacing``, HU window -> [0, 1], centre pad/crop to ``size``; the affine is tracked by MONAI). The encoder does not
keep its own copy of those steps; it records the ``PreprocessConfig`` it was trained with in its checkpoint, so
training and inference cannot drift apart.

Tensor layout: ``(1, I, J, K)`` (MONAI channel-first, RAS: I = left->right, J = posterior->anterior,
K = inferior->superior), exactly what ``build_preprocess`` returns; batches are ``(n, 1, I, J, K)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ctrag.config import config_to_dict, from_dict
from ctrag.data.nifti import Volume
from ctrag.data.transforms import PreprocessConfig, build_preprocess, volume_to_metatensor
from ctrag.errors import ConfigError

__all__ = [
    "PreparedVolume",
    "PreprocessConfig",
    "check_encoder_preprocess",
    "load_prepared",
    "prepare_volume",
    "preprocess_from_dict",
    "preprocess_to_dict",
    "variable_depth_preprocess",
]


@dataclass
class PreparedVolume:
    """Encoder input ``(1, I, J, K)`` float32 plus the voxel-to-RAS affine of that grid."""

    tensor: torch.Tensor
    affine: np.ndarray


def check_encoder_preprocess(cfg: PreprocessConfig, *, variable_depth: bool = False) -> PreprocessConfig:
    """The volume towers expect a fixed spacing and values in [0, 1]; refuse configs that do not produce that.

    Fixed-grid towers (the CNN) need a fixed size in all three axes; ``variable_depth`` towers (SigVLP) need a fixed
    in-plane size and every slice kept, i.e. ``resize_mode="pad_crop_xy"``.
    """
    if tuple(cfg.output_range) != (0.0, 1.0):
        raise ConfigError(f"volume encoders expect output_range (0, 1), got {cfg.output_range}")
    if variable_depth and cfg.resize_mode != "pad_crop_xy":
        raise ConfigError(
            f"a variable-depth (SigVLP) encoder keeps every slice: resize_mode must be 'pad_crop_xy', got "
            f"{cfg.resize_mode!r} (see ctrag.encoders.preprocess.variable_depth_preprocess)"
        )
    if not variable_depth and cfg.resize_mode in ("none", "pad_crop_xy"):
        raise ConfigError(
            f"volume encoders need a fixed grid: resize_mode must be 'pad_crop' or 'resize', not {cfg.resize_mode!r}"
        )
    if min(cfg.size) < 8:
        raise ConfigError(f"volume encoders need at least 8 voxels per axis, got size {cfg.size}")
    return cfg


def variable_depth_preprocess(cfg: PreprocessConfig) -> PreprocessConfig:
    """The project preprocessing (orientation, spacing, HU window, in-plane size) with the depth crop removed."""
    return replace(cfg, resize_mode="pad_crop_xy")


def preprocess_to_dict(cfg: PreprocessConfig) -> dict[str, Any]:
    return dict(config_to_dict(cfg))


def preprocess_from_dict(data: Mapping[str, Any]) -> PreprocessConfig:
    return from_dict(PreprocessConfig, dict(data))


def prepare_volume(
    volume: Volume, cfg: PreprocessConfig, *, rescale: Mapping[str, float] | None = None
) -> PreparedVolume:
    """Run ``build_preprocess`` on an in-memory HU volume (``rescale``: DICOM slope/intercept still to apply)."""
    item: dict[str, Any] = {"image": volume_to_metatensor(volume)}
    if rescale:
        item["hu_slope"] = float(rescale.get("slope", 1.0))
        item["hu_intercept"] = float(rescale.get("intercept", 0.0))
    out = build_preprocess(cfg, load=False)(item)["image"]
    affine = out.affine if hasattr(out, "affine") else torch.as_tensor(volume.affine)
    tensor = torch.as_tensor(out).as_subclass(torch.Tensor).float().contiguous()
    return PreparedVolume(tensor=tensor, affine=np.asarray(affine, dtype=np.float64))


def load_prepared(
    path: str | os.PathLike[str], cfg: PreprocessConfig, *, rescale: Mapping[str, float] | None = None
) -> PreparedVolume:
    """``load_volume`` (validated NIfTI) + ``prepare_volume``."""
    from ctrag.data.nifti import load_volume

    return prepare_volume(load_volume(path), cfg, rescale=rescale)
