"""``create_encoder``: one entry point from an architecture name (or a local folder) to a ready ``Encoder``.

Architectures are JSON files in ``ctrag/encoders/model_configs/`` (scanned once into a name -> config registry;
``list_encoders()`` lists them). Each names a ``type`` that decides which loader builds it, default settings
per tower, and, for volume towers, the preprocessing the weights expect — model and preprocessing travel together,
as in open_clip. ``weights`` is a pretrained tag (``ctrag.encoders.pretrained``) or an existing local path; nothing
is ever downloaded.

Accepted ``name_or_path`` forms:

* a registered name: ``"minilm"``, ``"hf-text"``, ``"ct-clip"``, ``"ctrag-volume-tiny"``, ...
* ``"local-dir:/path"`` or a plain existing folder: a sentence-transformers folder (``modules.json``), a plain
  Hugging Face folder (``config.json``), a trained shared-space encoder (``encoder_config.json``) or a static
  encoder distilled by ``ctrag encoders distill-static`` (``static_encoder.json``);
* a path to an architecture ``.json`` file of your own (same schema as the shipped ones).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ctrag.config import from_dict
from ctrag.encoders.base import Encoder
from ctrag.encoders.pretrained import is_pretrained_tag, list_pretrained_tags, resolve_pretrained
from ctrag.errors import CheckpointMismatchError, ConfigError, InvalidInputError, WeightsNotFoundError

_TYPES = ("sentence-transformers", "hf-text", "ct-clip", "shared-space", "static-text")


@lru_cache(maxsize=1)
def _builtin_configs() -> dict[str, dict[str, Any]]:
    """Scan the shipped ``model_configs/*.json`` (read-only; cached because the package files never change)."""
    folder = resources.files("ctrag.encoders") / "model_configs"
    out: dict[str, dict[str, Any]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            out[entry.name.removesuffix(".json")] = _validate_config(json.loads(entry.read_text("utf-8")), entry.name)
    return out


def _validate_config(cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(cfg, dict) or cfg.get("type") not in _TYPES:
        raise ConfigError(f"encoder config {where}: 'type' must be one of {list(_TYPES)}")
    return cfg


def list_encoders() -> list[str]:
    """Registered architecture names."""
    return sorted(_builtin_configs())


def get_model_config(name_or_file: str | os.PathLike[str]) -> dict[str, Any]:
    """A deep copy of a registered architecture (or of a ``.json`` architecture file)."""
    path = Path(name_or_file)
    if path.suffix == ".json":
        if not path.is_file():
            raise InvalidInputError(f"encoder architecture file not found: {path}")
        return _validate_config(json.loads(path.read_text("utf-8")), str(path))
    configs = _builtin_configs()
    if str(name_or_file) not in configs:
        raise InvalidInputError(f"unknown encoder {str(name_or_file)!r}; known encoders: {list_encoders()}")
    return copy.deepcopy(configs[str(name_or_file)])


def create_encoder(
    name_or_path: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Encoder:
    """Build an encoder. ``weights``: pretrained tag or local path; ``overrides`` patch the config's settings.

    Examples: ``create_encoder("minilm", long_text="chunk-mean")``,
    ``create_encoder("hf-text", weights="/models/bert", pooling="cls")``,
    ``create_encoder("ct-clip", weights="/w/CT-CLIP_v2.pt", text_model="/w/cxr-bert")``,
    ``create_encoder("runs/encoder")`` (a folder written by ``ctrag train encoder``).
    """
    text = str(name_or_path)
    local = text.removeprefix("local-dir:")
    # Registered names win over a same-named folder in the working directory; "local-dir:" forces a folder.
    is_folder = text.startswith("local-dir:") or (text not in _builtin_configs() and Path(local).is_dir())
    if is_folder:
        if weights is not None:
            raise InvalidInputError("weights= cannot be combined with a local model folder (the folder is the weights)")
        return _from_local_dir(Path(local), device, overrides)
    cfg = get_model_config(name_or_path)
    name = Path(text).stem if text.endswith(".json") else text
    builder = {
        "sentence-transformers": _build_sentence_transformers,
        "hf-text": _build_hf_text,
        "ct-clip": _build_ct_clip,
        "shared-space": _build_shared_space,
        "static-text": _build_static_text,
    }[cfg["type"]]
    return builder(name, cfg, weights, device, weights_dir, dict(overrides))


# --- helpers -------------------------------------------------------------------------------------------------------


def _merge(
    section: Mapping[str, Any], overrides: dict[str, Any], where: str, extra_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Apply overrides to one settings section; unknown names are an error listing what is accepted."""
    merged = dict(section)
    allowed = set(section) | set(extra_keys)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise InvalidInputError(f"{where}: unknown setting(s) {unknown}; accepted: {sorted(allowed)}")
    merged.update(overrides)
    return merged


def _weights_path(
    name: str, cfg: dict[str, Any], weights: str | os.PathLike[str] | None, weights_dir: Any, role: str
) -> tuple[dict[str, Path], str | None]:
    """Resolve ``weights`` (tag, path, or None -> default tag) to ``(paths_by_role, tag or None)``."""
    if weights is None:
        weights = cfg.get("default_pretrained")
        if weights is None:
            raise WeightsNotFoundError(
                f"encoder {name!r} has no default weights; pass weights=<local path> "
                f"(pretrained tags: {list_pretrained_tags(name) or 'none'})"
            )
    text = str(weights)
    if is_pretrained_tag(name, text):
        return resolve_pretrained(name, text, weights_dir), text
    path = Path(text).expanduser()
    if not path.exists():
        looks_like_tag = os.sep not in text and "." not in text
        hint = (
            f" and no pretrained tag {text!r} (known tags: {list_pretrained_tags(name) or 'none'})"
            if looks_like_tag
            else ""
        )
        raise WeightsNotFoundError(f"weights for {name!r} not found: {path} does not exist{hint}")
    return {role: path}, None


def _build_sentence_transformers(
    name: str, cfg: dict[str, Any], weights: Any, device: str, weights_dir: Any, overrides: dict[str, Any]
) -> Encoder:
    from ctrag.encoders.text import SentenceTransformerEncoder

    settings = _merge(cfg.get("text", {}), overrides, name)
    paths, _ = _weights_path(name, cfg, weights, weights_dir, "model")
    return SentenceTransformerEncoder(
        paths["model"],
        name=name,
        device=device,
        long_text=settings.get("long_text", "truncate"),
        max_seq_length=settings.get("max_seq_length"),
        batch_size=settings.get("batch_size", 64),
    )


def _build_hf_text(
    name: str, cfg: dict[str, Any], weights: Any, device: str, weights_dir: Any, overrides: dict[str, Any]
) -> Encoder:
    from ctrag.encoders.hf_text import HFTextEncoder

    settings = _merge(cfg.get("text", {}), overrides, name)
    paths, _ = _weights_path(name, cfg, weights, weights_dir, "model")
    return HFTextEncoder(paths["model"], name=name, device=device, **settings)


def _build_ct_clip(
    name: str, cfg: dict[str, Any], weights: Any, device: str, weights_dir: Any, overrides: dict[str, Any]
) -> Encoder:
    from ctrag.encoders.ct_clip import CTCLIPEncoder, CTCLIPTextConfig
    from ctrag.encoders.ctvit import CTViTConfig

    text_model = overrides.pop("text_model", None)
    load_volume_tower = bool(overrides.pop("load_volume_tower", cfg.get("vision", {}).get("load", True)))
    settings = _merge(cfg.get("text", {}), overrides, name, extra_keys=("text_model", "load_volume_tower"))
    paths, _ = _weights_path(name, cfg, weights, weights_dir, "checkpoint")
    checkpoint = paths["checkpoint"]
    if checkpoint.is_dir():
        candidates = sorted(checkpoint.glob("*.pt"))
        if len(candidates) != 1:
            raise WeightsNotFoundError(
                f"{checkpoint}: expected exactly one CT-CLIP .pt file in the folder, found {len(candidates)}"
            )
        checkpoint = candidates[0]
    text_model = text_model or paths.get("text_model")
    if text_model is None:
        raise WeightsNotFoundError(
            "CT-CLIP needs the CXR-BERT folder (config.json + tokenizer files): pass text_model=<folder>, or use the "
            f"pretrained tag(s) {list_pretrained_tags(name)} which locate it under the weights folder"
        )
    text_fields = {k: settings[k] for k in ("hidden_size", "max_length", "lowercase", "strip_chars") if k in settings}
    vision = {k: v for k, v in cfg.get("vision", {}).items() if k != "load"}
    return CTCLIPEncoder(
        checkpoint,
        text_model,
        name=name,
        text_cfg=CTCLIPTextConfig(**text_fields, latent_dim=int(cfg.get("embed_dim", 512))),
        vision_cfg=from_dict(CTViTConfig, vision),
        load_volume_tower=load_volume_tower,
        long_text=settings.get("long_text", "truncate"),
        device=device,
        batch_size=settings.get("batch_size", 8),
    )


def _build_shared_space(
    name: str, cfg: dict[str, Any], weights: Any, device: str, weights_dir: Any, overrides: dict[str, Any]
) -> Encoder:
    if weights is None:
        raise WeightsNotFoundError(
            f"encoder {name!r} is trained by ctrag and has no shipped weights: run `ctrag train encoder` and pass "
            "weights=<its output folder>"
        )
    path = Path(weights).expanduser()
    if not path.is_dir():
        raise WeightsNotFoundError(f"trained encoder folder not found: {path}")
    from ctrag.encoders.clip import read_tower_info, tower_type

    expected, found = cfg.get("tower_type", "cnn"), tower_type(read_tower_info(path).tower)
    if expected != found:
        raise CheckpointMismatchError(f"{path} holds a {found!r} volume tower, but encoder {name!r} is {expected!r}")
    return _load_shared_space(path, device, overrides)


def _build_static_text(
    name: str, cfg: dict[str, Any], weights: Any, device: str, weights_dir: Any, overrides: dict[str, Any]
) -> Encoder:
    """A static encoder folder; no torch is imported (the folder holds numpy arrays and a tokenizer file)."""
    from ctrag.encoders.static_text import StaticTextEncoder

    if weights is None:
        raise WeightsNotFoundError(
            f"encoder {name!r} is distilled by ctrag and has no shipped weights: run `ctrag encoders distill-static "
            "--corpus DIR --out FOLDER` and pass weights=FOLDER"
        )
    settings = _merge(cfg.get("text", {}), overrides, name)
    return StaticTextEncoder(Path(weights).expanduser(), name=name, batch_size=int(settings.get("batch_size", 256)))


def _load_shared_space(folder: Path, device: str, overrides: dict[str, Any]) -> Encoder:
    from ctrag.encoders.clip import SharedSpaceEncoder, read_tower_info

    text_encoder = overrides.pop("text_encoder", None)
    if overrides:
        raise InvalidInputError(
            f"shared-space encoder: unknown setting(s) {sorted(overrides)}; accepted: ['text_encoder']"
        )
    if text_encoder is None:
        info = read_tower_info(folder)
        spec = dict(info.text_encoder)
        spec.pop("fingerprint", None)
        spec.pop("name", None)
        name_or_path = spec.pop("name_or_path", None)
        if name_or_path is None:
            raise WeightsNotFoundError(f"{folder}: encoder_config.json does not say how to rebuild its text encoder")
        text_encoder = create_encoder(name_or_path, spec.pop("weights", None), device, **spec)
    return SharedSpaceEncoder.from_pretrained(folder, text_encoder, device=device)


def _from_local_dir(folder: Path, device: str, overrides: dict[str, Any]) -> Encoder:
    if not folder.is_dir():
        raise WeightsNotFoundError(f"local model folder not found: {folder}")
    if (folder / "encoder_config.json").is_file():
        return _load_shared_space(folder, device, overrides)
    from ctrag.encoders.static_text import NAME as STATIC_NAME
    from ctrag.encoders.static_text import is_static_folder

    if is_static_folder(folder):
        return _build_static_text(STATIC_NAME, get_model_config(STATIC_NAME), folder, device, None, overrides)
    if (folder / "modules.json").is_file():
        # Any sentence-transformers folder: keep its own max_seq_length unless overridden.
        cfg = {
            "type": "sentence-transformers",
            "text": {"max_seq_length": None, "long_text": "truncate", "batch_size": 64},
        }
        return _build_sentence_transformers(folder.name, cfg, folder, device, None, overrides)
    if (folder / "config.json").is_file():
        return _build_hf_text(folder.name, get_model_config("hf-text"), folder, device, None, overrides)
    raise WeightsNotFoundError(
        f"{folder} is not a model folder: expected encoder_config.json (ctrag), modules.json (sentence-transformers) "
        "or config.json (Hugging Face)"
    )
