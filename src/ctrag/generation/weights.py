"""Saving and loading generator weights: ctrag component folders and external MAISI / Text2CT checkpoints.

A *component folder* (``vae/``, ``unet/``, ``controlnet/``) holds ``config.json`` (the architecture config plus
facts the weights depend on, such as the latent ``scale_factor``) and ``model.pt`` (a plain state dict, loadable
with ``torch.load(weights_only=True)``). Loading compares the stored config with the one the caller builds
and refuses a checkpoint from another config, naming the fields that differ.

External checkpoints (MAISI, Text2CT, RAG-Text2CT, MONAI Generative) wrap their state dicts differently:
``{"unet_state_dict": ..., "scale_factor": ...}``, DDP's ``module.`` prefix, ``torch.compile``'s ``_orig_mod.``,
and MONAI Generative's older attention names. ``map_state_dict`` undoes each of these, then ``load_strict``
compares the keys with the model's own: every missing or unexpected key is an error, never a silent
``strict=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.utils.atomic import atomic_path, atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file, load_strict

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
CONTAINER_KEYS: tuple[str, ...] = (
    "unet_state_dict",
    "controlnet_state_dict",
    "autoencoder_state_dict",
    "model_state_dict",
    "state_dict",
    "model",
)
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

# New (MONAI core) name fragment -> the fragment older checkpoints used (MONAI Generative / diffusers-like).
_LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    (".attn.to_q.", ".to_q."),
    (".attn.to_k.", ".to_k."),
    (".attn.to_v.", ".to_v."),
    (".attn.out_proj.", ".proj_attn."),
    (".out_proj.", ".to_out.0."),
    ("postconv", "conv"),
)


# ------------------------------------------------------------------------------------------------ file level


def save_state_dict(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through a temporary file, so a crash never leaves a truncated checkpoint."""
    final = Path(path)
    with atomic_path(final, suffix=final.suffix) as tmp, open(tmp, "wb") as fh:
        torch.save(dict(state), fh)
    return final


# ------------------------------------------------------------------------------------------------ key mapping


def unwrap_state_dict(
    checkpoint: Mapping[str, Any], container: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a checkpoint into its state dict and the remaining metadata (``scale_factor``, ``epoch``, ...)."""
    keys = [container] if container else list(CONTAINER_KEYS)
    for key in keys:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            meta = {k: v for k, v in checkpoint.items() if k != key}
            return dict(checkpoint[key]), meta
    if container:
        raise CheckpointMismatchError(f"checkpoint has no {container!r} entry; entries: {sorted(checkpoint)[:12]}")
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint), {}
    raise CheckpointMismatchError(
        f"cannot find a state dict in the checkpoint (entries {sorted(checkpoint)[:12]}; expected tensors or one of "
        f"{list(CONTAINER_KEYS)})"
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _legacy_candidates(key: str) -> list[str]:
    """Names an older checkpoint may use for ``key`` (one rename at a time and all applicable together)."""
    out = []
    combined = key
    for new, old in _LEGACY_RENAMES:
        if new in key:
            out.append(key.replace(new, old))
        if new in combined:
            combined = combined.replace(new, old)
    if combined != key:
        out.append(combined)
    return out


def map_state_dict(state: Mapping[str, torch.Tensor], model_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys onto ``model_keys``: wrapper prefixes first, then legacy attention/conv names.

    Keys that match nothing are kept under their own name so ``load_strict`` reports them as unexpected.
    """
    src = _strip_prefixes(dict(state))
    wanted = list(model_keys)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key in wanted:
        if key in src:
            out[key] = src[key]
            used.add(key)
            continue
        for cand in _legacy_candidates(key):
            if cand in src and cand not in used:
                out[key] = src[cand]
                used.add(cand)
                break
    for key, value in src.items():
        if key not in used:
            out[key] = value
    renamed = sum(1 for k in wanted if k in out and k not in src)
    if renamed:
        logger.info("mapped %d legacy parameter names onto the current MONAI names", renamed)
    return out


def load_external_weights(
    model: nn.Module, path: str | os.PathLike[str], container: str | None = None
) -> dict[str, Any]:
    """Load a MAISI / Text2CT / MONAI checkpoint file into ``model`` (strictly); return its metadata."""
    checkpoint = load_checkpoint_file(path)
    state, meta = unwrap_state_dict(checkpoint, container)
    load_strict(model, map_state_dict(state, model.state_dict().keys()), str(path))
    clean: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            clean[k] = float(v.item())
        elif isinstance(v, int | float | str | bool):
            clean[k] = v
    return clean


# ------------------------------------------------------------------------------------------ component folders


def save_component(
    directory: str | os.PathLike[str],
    component: str,
    model: nn.Module,
    config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.pt`` (+ optional extra tensors) and ``config.json`` into ``directory`` atomically."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrapped(model).state_dict().items()}
    save_state_dict(state, folder / MODEL_FILE)
    for name, tensor in (extra_tensors or {}).items():
        save_state_dict({name: tensor.detach().cpu().contiguous()}, folder / f"{name}.pt")
    payload = {"component": component, "config": dict(config), **dict(meta or {})}
    atomic_write_text(folder / CONFIG_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return folder


def read_component(directory: str | os.PathLike[str], component: str) -> dict[str, Any]:
    """The ``config.json`` of a component folder; ``WeightsNotFoundError`` if the folder is incomplete."""
    folder = Path(directory)
    cfg_file, model_file = folder / CONFIG_FILE, folder / MODEL_FILE
    if not folder.is_dir():
        raise WeightsNotFoundError(f"{component} weights folder not found: {folder}")
    if not cfg_file.is_file() or not model_file.is_file():
        raise WeightsNotFoundError(
            f"{component} weights folder {folder} is incomplete: needs {CONFIG_FILE} and {MODEL_FILE} "
            "(train it with `ctrag train` or point --weights at a complete run folder)"
        )
    data = json.loads(cfg_file.read_text(encoding="utf-8"))
    if data.get("component") != component:
        raise CheckpointMismatchError(f"{folder} holds a {data.get('component')!r} component, not {component!r}")
    return dict(data)


def config_differences(stored: Any, wanted: Any, path: str = "") -> list[str]:
    """Dotted paths where two plain config dicts differ (lists and tuples compare equal)."""
    if isinstance(stored, Mapping) and isinstance(wanted, Mapping):
        out: list[str] = []
        for key in sorted(set(stored) | set(wanted)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in stored or key not in wanted:
                out.append(f"{sub} (only in {'checkpoint' if key in stored else 'config'})")
            else:
                out.extend(config_differences(stored[key], wanted[key], sub))
        return out
    if isinstance(stored, list | tuple) and isinstance(wanted, list | tuple):
        if len(stored) != len(wanted):
            return [f"{path}: checkpoint {list(stored)} vs config {list(wanted)}"]
        out = []
        for i, (a, b) in enumerate(zip(stored, wanted, strict=True)):
            out.extend(config_differences(a, b, f"{path}[{i}]"))
        return [f"{path}: checkpoint {list(stored)} vs config {list(wanted)}"] if out else []
    if stored != wanted:
        return [f"{path}: checkpoint {stored!r} vs config {wanted!r}"]
    return []


def load_component(
    directory: str | os.PathLike[str], component: str, model: nn.Module, expected_config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Load a component folder into ``model``; the stored config must equal ``expected_config`` (when given)."""
    info = read_component(directory, component)
    if expected_config is not None:
        diffs = config_differences(info.get("config", {}), dict(expected_config))
        if diffs:
            raise CheckpointMismatchError(
                f"{component} checkpoint {directory} was trained with another config: " + "; ".join(diffs[:8])
            )
    state = load_checkpoint_file(Path(directory) / MODEL_FILE)
    load_strict(model, state, str(Path(directory) / MODEL_FILE))
    return info


def load_extra_tensor(directory: str | os.PathLike[str], name: str) -> torch.Tensor:
    data = load_checkpoint_file(Path(directory) / f"{name}.pt")
    if name not in data or not isinstance(data[name], torch.Tensor):
        raise CheckpointMismatchError(f"{directory}/{name}.pt does not hold a tensor named {name!r}")
    return data[name]


def state_dict_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and values of a state dict: equal weights give equal hashes, whatever
    the memory layout or the bytes ``torch.save`` happened to write (its archives carry a random id)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def component_hash(directory: str | os.PathLike[str]) -> str:
    """Content hash of a component's weights (for provenance records and cache keys)."""
    return state_dict_hash(load_checkpoint_file(Path(directory) / MODEL_FILE))


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers, so saved keys never carry their prefixes."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "module") and isinstance(inner.module, nn.Module):
            inner = inner.module
        elif hasattr(inner, "_orig_mod") and isinstance(inner._orig_mod, nn.Module):
            inner = inner._orig_mod
        else:
            break
    return inner
