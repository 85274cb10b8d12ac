"""A run folder on disk: component folders, ``pipeline.json`` naming them, and strict weight import.

::

    run/
      pipeline.json        {"_class_name": "GenerationPipeline", "components": {"vae": "vae", ...}, "config": {...},
                            "encoder": {name_or_path, weights, fingerprint, dim}}
      vae/                 config.json (+ the image space it was trained in) + model.pt
      unet/                config.json (+ scale_factor, null embedding kind) + model.pt [+ null_embedding.pt]
      controlnet/          config.json (+ label set) + model.pt
      sampler/sampler.json RFlowScheduler arguments

A *component folder* holds ``config.json`` (the architecture config plus facts the weights depend on) and
``model.pt`` (a plain state dict, loadable with ``torch.load(weights_only=True)``). Loading compares the stored
config with the one the caller builds and refuses a checkpoint from another config, naming the fields that
differ. Training writes each component as it finishes and refreshes ``pipeline.json``.

External checkpoints (MAISI, Text2CT, RAG-Text2CT, MONAI Generative) wrap their state dicts differently:
``{"unet_state_dict": ..., "scale_factor": ...}``, DDP's ``module.`` prefix, ``torch.compile``'s ``_orig_mod.``,
and MONAI Generative's older attention names. ``map_state_dict`` undoes each of these, then ``load_strict``
compares the keys with the model's own: every missing or unexpected key is an error, never a silent
``strict=False``. ``import_external_weights`` turns such files into a run folder.

The text encoder a UNet was trained with is recorded in ``pipeline.json`` (``encoder_record``) and rebuilt from
that record or from a preset's ``encoder`` section (``encoder_spec_from_config``, ``create_text_encoder``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag._version import __version__
from ctrag.config import config_to_dict
from ctrag.data.labels import num_labels
from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.generation.config import GeneratorConfig, TrainConfig, image_space_from_legacy, image_space_record
from ctrag.generation.controlnet import controlnet_from_unet
from ctrag.generation.networks import build_controlnet, build_unet, build_vae
from ctrag.generation.sampler import SAMPLER_CONFIG_NAME, RectifiedFlowSampler
from ctrag.utils.atomic import atomic_path, atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file, load_strict

logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
VAE_DIR = "vae"
UNET_DIR = "unet"
CONTROLNET_DIR = "controlnet"
SAMPLER_DIR = "sampler"

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
    directory: str | os.PathLike[str],
    component: str,
    model: nn.Module,
    expected_config: Mapping[str, Any] | None,
    *,
    legacy_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Load a component folder into ``model``; the stored config must equal ``expected_config`` (when given).

    ``legacy_keys`` are config keys older folders stored that the caller checks itself (the VAE's old
    ``image``), left out of the comparison.
    """
    info = read_component(directory, component)
    if expected_config is not None:
        stored = {k: v for k, v in dict(info.get("config", {})).items() if k not in legacy_keys}
        diffs = config_differences(stored, dict(expected_config))
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


# ------------------------------------------------------------------------------------------ generator components


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def vae_meta(config: GeneratorConfig, train: TrainConfig | None, imported_from: str | None = None) -> dict[str, Any]:
    """What a VAE folder records besides its architecture: the image space its intensities and voxels mean."""
    meta: dict[str, Any] = {"image_space": image_space_record(config.preprocess)}
    if train is not None:
        meta["train"] = config_to_dict(train)
    if imported_from is not None:
        meta["imported_from"] = imported_from
    return meta


def load_vae_component(
    folder: str | os.PathLike[str], config: GeneratorConfig, device: torch.device | str
) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen VAE of a folder; refuses one trained in another image space (spacing, HU window...)."""
    vae = build_vae(config.vae)
    info = load_component(folder, "vae", vae, config_to_dict(config.vae), legacy_keys=("image",))
    stored = info.get("image_space")
    legacy = (info.get("config") or {}).get("image")
    if stored is None and legacy is not None:  # folders written before the image space moved to ``preprocess``
        stored = {**image_space_record(config.preprocess), **image_space_from_legacy(legacy)}
    wanted = image_space_record(config.preprocess)
    diffs = config_differences(stored, wanted) if stored is not None else []
    if diffs:
        raise CheckpointMismatchError(
            f"vae checkpoint {folder} was trained in another image space (preprocess section): " + "; ".join(diffs)
        )
    return _frozen(vae.to(device)), info


def unet_meta(scale_factor: float, config: GeneratorConfig, train: TrainConfig | None, **extra: Any) -> dict[str, Any]:
    return {
        "scale_factor": float(scale_factor),
        "null_embedding": config.diffusion.null_embedding,
        "image_space": image_space_record(config.preprocess),
        "train": None if train is None else config_to_dict(train),
        **extra,
    }


def load_unet_component(
    folder: str | os.PathLike[str], config: GeneratorConfig, device: torch.device | str
) -> tuple[nn.Module, torch.Tensor, float, dict[str, Any]]:
    """(unet, null embedding (1, 1, D), latent scale factor, config.json) of a UNet folder."""
    unet = build_unet(config.diffusion)
    info = load_component(folder, "unet", unet, config_to_dict(config.diffusion))
    if "scale_factor" not in info:
        raise CheckpointMismatchError(f"{folder}/{CONFIG_FILE} lacks the latent scale_factor")
    dim = config.diffusion.cross_attention_dim or 1
    if info.get("null_embedding", "zero") == "learned":
        null = load_extra_tensor(folder, "null_embedding").float().reshape(1, 1, -1)
        if null.shape[-1] != dim:
            raise CheckpointMismatchError(f"{folder}: learned null embedding has size {null.shape[-1]}, expected {dim}")
    else:
        null = torch.zeros(1, 1, dim)
    return _frozen(unet.to(device)), null.to(device), float(info["scale_factor"]), info


def load_controlnet_component(
    folder: str | os.PathLike[str], config: GeneratorConfig, device: torch.device | str
) -> tuple[nn.Module, dict[str, Any]]:
    n = num_labels(config.controlnet.label_set)
    controlnet = build_controlnet(config.diffusion, config.controlnet, n)
    info = load_component(folder, "controlnet", controlnet, config_to_dict(config.controlnet))
    stored_unet = info.get("unet")
    if stored_unet is not None and stored_unet != config_to_dict(config.diffusion):
        raise CheckpointMismatchError(f"{folder}: ControlNet was trained for another UNet architecture")
    return _frozen(controlnet.to(device)), info


def fresh_controlnet(unet: nn.Module, config: GeneratorConfig) -> nn.Module:
    """A zero-initialised ControlNet copied from ``unet`` (what training starts from)."""
    return controlnet_from_unet(unet, config.diffusion, config.controlnet, num_labels(config.controlnet.label_set))


def _complete(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / MODEL_FILE).is_file()


def encoder_record(encoder: Any, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """What recreates (and identifies) the text encoder a UNet was trained with."""
    return {
        **dict(spec or {}),
        "fingerprint": getattr(encoder, "fingerprint", None),
        "dim": getattr(encoder, "dim", None),
        "name": getattr(encoder, "name", None),
    }


def update_pipeline_index(
    run: str | os.PathLike[str], config: GeneratorConfig, encoder: dict[str, Any] | None = None
) -> Path:
    """(Re)write ``run/pipeline.json`` listing the complete components and the full generator config.

    ``encoder`` (see ``encoder_record``) is stored when given and otherwise kept from the previous file.
    """
    root = Path(run)
    previous: dict[str, Any] = {}
    if (root / PIPELINE_FILE).is_file():
        previous = json.loads((root / PIPELINE_FILE).read_text(encoding="utf-8"))
    components: dict[str, str | None] = {}
    for name in (VAE_DIR, UNET_DIR, CONTROLNET_DIR):
        components[name] = name if _complete(root / name) else None
    components[SAMPLER_DIR] = SAMPLER_DIR if (root / SAMPLER_DIR / SAMPLER_CONFIG_NAME).is_file() else None
    payload = {
        "_class_name": "GenerationPipeline",
        "ctrag_version": __version__,
        "components": components,
        "config": config.to_dict(),
        "encoder": encoder if encoder is not None else previous.get("encoder"),
    }
    out = root / PIPELINE_FILE
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    return out


def read_pipeline_index(run: str | os.PathLike[str]) -> dict[str, Any]:
    root = Path(run)
    file = root / PIPELINE_FILE
    if not root.is_dir():
        raise WeightsNotFoundError(f"weights folder not found: {root}")
    if not file.is_file():
        raise WeightsNotFoundError(
            f"{root} has no {PIPELINE_FILE}; it is not a generator run folder (train one with "
            "`ctrag train vae|diffusion|"
            "controlnet --out DIR`, or save one with GenerationPipeline.save_pretrained)"
        )
    data = json.loads(file.read_text(encoding="utf-8"))
    if data.get("_class_name") != "GenerationPipeline":
        raise CheckpointMismatchError(f"{file} does not describe a GenerationPipeline")
    return dict(data)


def component_folder(run: str | os.PathLike[str], index: dict[str, Any], name: str) -> Path | None:
    """Folder of component ``name`` named by a ``pipeline.json`` (None when the run has none)."""
    rel = index.get("components", {}).get(name)
    return None if rel is None else Path(run) / rel


def save_vae(root: str | os.PathLike[str], config: GeneratorConfig, vae: nn.Module, meta: Mapping[str, Any]) -> Path:
    return save_component(Path(root) / VAE_DIR, "vae", vae, config_to_dict(config.vae), meta)


def save_unet(
    root: str | os.PathLike[str],
    config: GeneratorConfig,
    unet: nn.Module,
    scale_factor: float,
    null_embedding: torch.Tensor | None = None,
    **extra: Any,
) -> Path:
    """The UNet folder: weights, latent scale factor, and the learned null embedding when there is one."""
    tensors = None
    if config.diffusion.null_embedding == "learned":
        if null_embedding is None:
            raise CheckpointMismatchError("a learned null embedding is configured but none was given")
        tensors = {"null_embedding": null_embedding.detach().cpu()}
    meta = unet_meta(float(scale_factor), config, None, **extra)
    return save_component(Path(root) / UNET_DIR, "unet", unet, config_to_dict(config.diffusion), meta, tensors)


def save_controlnet(root: str | os.PathLike[str], config: GeneratorConfig, controlnet: nn.Module, **extra: Any) -> Path:
    label_set = config.controlnet.label_set
    meta = {
        "label_set": label_set,
        "num_labels": num_labels(label_set),
        "unet": config_to_dict(config.diffusion),
        **extra,
    }
    return save_component(
        Path(root) / CONTROLNET_DIR, "controlnet", controlnet, config_to_dict(config.controlnet), meta
    )


def import_external_weights(
    config: GeneratorConfig,
    out: str | os.PathLike[str],
    *,
    vae: str | os.PathLike[str],
    unet: str | os.PathLike[str],
    controlnet: str | os.PathLike[str] | None = None,
    scale_factor: float | None = None,
    encoder_spec: dict[str, Any] | None = None,
) -> Path:
    """Turn MAISI / Text2CT / RAG-Text2CT checkpoint files into a ctrag run folder ``GenerationPipeline`` loads.

    Each file is mapped onto the architecture ``config`` describes and loaded strictly (``map_state_dict``); the
    latent scale factor comes from the diffusion checkpoint (MAISI stores it there) unless given. ``encoder_spec``
    (from the preset's ``encoder`` section) is recorded as the text encoder the UNet expects.
    """
    root = Path(out)
    vae_model = build_vae(config.vae)
    load_external_weights(vae_model, vae)
    unet_model = build_unet(config.diffusion)
    meta = load_external_weights(unet_model, unet)
    factor = scale_factor if scale_factor is not None else meta.get("scale_factor")
    if factor is None:
        raise CheckpointMismatchError(
            f"{unet} records no scale_factor (the latent scaling the UNet was trained with); pass it explicitly"
        )
    save_vae(root, config, vae_model, vae_meta(config, None, str(vae)))
    if config.diffusion.null_embedding == "learned":
        raise CheckpointMismatchError("external checkpoints carry no learned null embedding; use null_embedding: zero")
    save_unet(root, config, unet_model, float(factor), imported_from=str(unet))
    if controlnet is not None:
        cn_model = build_controlnet(config.diffusion, config.controlnet, num_labels(config.controlnet.label_set))
        load_external_weights(cn_model, controlnet)
        save_controlnet(root, config, cn_model, imported_from=str(controlnet))
    RectifiedFlowSampler.from_config(config.sampler.scheduler).save_config(root / SAMPLER_DIR)
    record = None if encoder_spec is None else {**encoder_spec, "fingerprint": None}
    return update_pipeline_index(root, config, encoder=record)


# ---------------------------------------------------------------------------------------------- text encoder


def encoder_spec_from_config(
    config: str | os.PathLike[str] | Mapping[str, Any], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """``{"name_or_path", "weights", "long_text"}`` of the text encoder a preset's ``encoder`` section names.

    The section is read through its schema (``ctrag.encoders.config.EncoderConfig``: ``text``, ``text_weights``,
    ``long_text``), so a preset that names another encoder gets that encoder and not the MiniLM default.
    ``overrides`` are ``--set`` items; those addressed to ``encoder.`` apply here.
    """
    from ctrag.config import load_config
    from ctrag.encoders.config import EncoderConfig

    mine = [o.split(".", 1)[1] for o in overrides if o.split("=", 1)[0].startswith("encoder.")]
    source = dict(config) if isinstance(config, Mapping) else str(config)
    section = load_config(EncoderConfig, source, mine, section="encoder")
    return {"name_or_path": section.text, "weights": section.text_weights, "long_text": section.long_text}


def recorded_encoder_spec(record: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The encoder a run recorded, with ``encoder.text_weights=`` / ``encoder.long_text=`` overrides applied (an
    imported run records the encoder by name only; its local weights folder is given at load time)."""
    keys = {"text_weights": "weights", "long_text": "long_text"}
    spec = dict(record)
    for item in overrides:
        key, _, value = item.partition("=")
        field_name = key.removeprefix("encoder.")
        if key.startswith("encoder.") and field_name in keys:
            spec[keys[field_name]] = None if value in ("", "null", "None") else value
    return spec


def create_text_encoder(spec: Mapping[str, Any], device: str) -> Any:
    """Build the encoder a spec names (``ctrag.encoders.create_encoder``; local files only)."""
    from ctrag.encoders.factory import create_encoder

    # only a non-default long-text mode is passed on: every encoder type defaults to truncation
    settings = {"long_text": spec["long_text"]} if spec.get("long_text", "truncate") != "truncate" else {}
    made = create_encoder(str(spec["name_or_path"]), weights=spec.get("weights"), device=device, **settings)
    encoder = made[0] if isinstance(made, tuple) else made
    expected = spec.get("fingerprint")
    if expected and encoder.fingerprint != expected:
        raise CheckpointMismatchError(
            f"text encoder {spec['name_or_path']!r} now has fingerprint {encoder.fingerprint}, but the UNet was "
            f"trained with {expected}; its embeddings would not mean what the UNet learned"
        )
    return encoder


# ------------------------------------------------------------------------------------------ loading a whole run


@dataclass
class RunComponents:
    """Every trained component of a run folder, loaded and checked against one generator config."""

    vae: nn.Module
    unet: nn.Module
    sampler: RectifiedFlowSampler
    scale_factor: float
    null_embedding: torch.Tensor
    controlnet: nn.Module | None = None
    weights: dict[str, str] = field(default_factory=dict)
    """Content hash of each component's weights (for provenance)."""


def load_run_components(
    run_dir: str | os.PathLike[str],
    index: Mapping[str, Any],
    config: GeneratorConfig,
    device: torch.device | str,
    *,
    require_controlnet: bool = False,
) -> RunComponents:
    """Load the VAE, UNet, (ControlNet) and sampler a ``pipeline.json`` names; each must match ``config``."""
    folders = {n: component_folder(run_dir, dict(index), n) for n in (VAE_DIR, UNET_DIR, CONTROLNET_DIR, SAMPLER_DIR)}
    for needed in (VAE_DIR, UNET_DIR):
        if folders[needed] is None:
            command = "vae" if needed == VAE_DIR else "diffusion"
            raise WeightsNotFoundError(f"{run_dir} has no trained {needed} (run `ctrag train {command}`)")
    if require_controlnet and folders[CONTROLNET_DIR] is None:
        raise WeightsNotFoundError(f"{run_dir} has no trained controlnet (run `ctrag train controlnet`)")
    vae_dir, unet_dir, cn_dir, sampler_dir = (folders[n] for n in (VAE_DIR, UNET_DIR, CONTROLNET_DIR, SAMPLER_DIR))
    assert vae_dir is not None and unet_dir is not None
    vae, _ = load_vae_component(vae_dir, config, device)
    unet, null, scale_factor, _ = load_unet_component(unet_dir, config, device)
    weights = {VAE_DIR: component_hash(vae_dir), UNET_DIR: component_hash(unet_dir)}
    controlnet = None
    if cn_dir is not None:
        controlnet, _ = load_controlnet_component(cn_dir, config, device)
        weights[CONTROLNET_DIR] = component_hash(cn_dir)
    sampler = (
        RectifiedFlowSampler.from_pretrained(sampler_dir)
        if sampler_dir is not None
        else RectifiedFlowSampler.from_config(config.sampler.scheduler)
    )
    return RunComponents(vae, unet, sampler, scale_factor, null, controlnet, weights)
