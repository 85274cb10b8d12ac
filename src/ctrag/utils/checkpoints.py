"""Reading checkpoint files safely and loading state dicts strictly: one mechanism for every model ctrag loads.

Generator components (``ctrag.generation.run_folder``) and FID backbones (``ctrag.evaluation.features``) both need
the same two guarantees: a file is unpickled with ``weights_only=True`` (never arbitrary code), and a state dict
goes into a model only if every key and shape matches, because a half-loaded network silently gives random
outputs. The error names what differs so a user can tell a wrong config from a wrong file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError

STRICT_LOAD_HINT = "Check that the config matches the checkpoint's architecture."


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True`` (safetensors files through safetensors)."""
    file = Path(path)
    if not file.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {file}")
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - optional
            raise WeightsNotFoundError(f"{file}: reading .safetensors needs the 'safetensors' package") from exc
        return dict(load_file(str(file), device="cpu"))
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have no common base class
        raise CheckpointMismatchError(
            f"{file}: not a loadable checkpoint with torch.load(weights_only=True) ({type(exc).__name__}: {exc}); "
            "only plain tensor checkpoints are accepted"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"{file}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    optional: Callable[[str], bool] | None = None,
    hint: str = STRICT_LOAD_HINT,
) -> None:
    """Load ``state`` into ``model`` only if keys and shapes match exactly; otherwise say what differs.

    ``optional(key)`` marks model keys a checkpoint may omit (e.g. BatchNorm ``num_batches_tracked`` counters,
    which some exports drop); those keep the model's own values.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (optional is not None and optional(k))]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{source}: checkpoint does not fit {type(model).__name__}: {len(missing)} missing {missing[:6]}, "
            f"{len(unexpected)} unexpected {unexpected[:6]}, {len(shapes)} shape mismatches {shapes[:4]}. {hint}"
        )
    full = dict(state)
    for k in own:
        full.setdefault(k, own[k])  # only keys ``optional`` allowed to be missing reach this
    model.load_state_dict(full, strict=True)
