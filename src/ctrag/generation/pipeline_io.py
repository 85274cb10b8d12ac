"""A run folder on disk: component folders plus ``pipeline.json`` naming them (diffusers' ``model_index.json``).

::

    run/
      pipeline.json        {"_class_name": "GenerationPipeline", "components": {"vae": "vae", ...}, "config": {...}}
      vae/                 config.json + model.pt
      unet/                config.json (+ scale_factor, null embedding kind) + model.pt [+ null_embedding.pt]
      controlnet/          config.json (+ label set) + model.pt
      sampler/sampler.json RFlowScheduler arguments

Training writes each component as it finishes and refreshes ``pipeline.json``; loading checks every component
against the config the caller asks for and refuses checkpoints trained with another one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag._version import __version__
from ctrag.config import config_to_dict
from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.generation.config import GeneratorConfig, TrainConfig
from ctrag.generation.controlnet import controlnet_from_unet
from ctrag.generation.masks import num_labels
from ctrag.generation.networks import build_controlnet, build_unet, build_vae
from ctrag.generation.weights import CONFIG_FILE, MODEL_FILE, load_component, load_extra_tensor
from ctrag.utils.atomic import atomic_write_text

PIPELINE_FILE = "pipeline.json"
VAE_DIR = "vae"
UNET_DIR = "unet"
CONTROLNET_DIR = "controlnet"
SAMPLER_DIR = "sampler"


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_vae_component(
    folder: str | os.PathLike[str], config: GeneratorConfig, device: torch.device | str
) -> tuple[nn.Module, dict[str, Any]]:
    vae = build_vae(config.vae)
    info = load_component(folder, "vae", vae, config_to_dict(config.vae))
    return _frozen(vae.to(device)), info


def unet_meta(scale_factor: float, config: GeneratorConfig, train: TrainConfig | None, **extra: Any) -> dict[str, Any]:
    return {
        "scale_factor": float(scale_factor),
        "null_embedding": config.diffusion.null_embedding,
        "vae_image": config_to_dict(config.vae.image),
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
    components[SAMPLER_DIR] = SAMPLER_DIR if (root / SAMPLER_DIR / "sampler.json").is_file() else None
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

    Each file is mapped onto the architecture ``config`` describes and loaded strictly (``weights.py``); the
    latent scale factor comes from the diffusion checkpoint (MAISI stores it there) unless given.
    """
    from ctrag.generation.sampler import RectifiedFlowSampler
    from ctrag.generation.weights import load_external_weights, save_component

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
    save_component(root / VAE_DIR, "vae", vae_model, config_to_dict(config.vae), {"imported_from": str(vae)})
    null = None
    if config.diffusion.null_embedding == "learned":
        raise CheckpointMismatchError("external checkpoints carry no learned null embedding; use null_embedding: zero")
    save_component(
        root / UNET_DIR,
        "unet",
        unet_model,
        config_to_dict(config.diffusion),
        unet_meta(float(factor), config, None, imported_from=str(unet)),
        null,
    )
    if controlnet is not None:
        n = num_labels(config.controlnet.label_set)
        cn_model = build_controlnet(config.diffusion, config.controlnet, n)
        load_external_weights(cn_model, controlnet)
        meta_cn = {
            "label_set": config.controlnet.label_set,
            "num_labels": n,
            "unet": config_to_dict(config.diffusion),
            "imported_from": str(controlnet),
        }
        save_component(root / CONTROLNET_DIR, "controlnet", cn_model, config_to_dict(config.controlnet), meta_cn)
    RectifiedFlowSampler.from_config(config.sampler.scheduler).save_config(root / SAMPLER_DIR)
    record = None if encoder_spec is None else {**encoder_spec, "fingerprint": None}
    return update_pipeline_index(root, config, encoder=record)
