"""Encoder fingerprints: one short string that changes whenever the vectors an encoder produces could change.

An index or cache built with one encoder is useless (silently wrong) with another. What decides the vectors is
(a) the weight files, (b) the architecture, and (c) every setting that changes the computation: pooling, token
limit, long-text strategy, projection, preprocessing of volumes. The fingerprint hashes all three. It hashes file
*contents*, not paths or modification times, so it is identical across processes, machines and copies of the
same weights, and it changes when a single byte of a weight file changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ctrag.errors import WeightsNotFoundError
from ctrag.utils.hashing import sha256_file, sha256_json

#: Files inside a model folder that never influence the computed vectors (documentation, git metadata).
IGNORED_FILE_NAMES = frozenset({"README.md", ".gitattributes", ".gitignore", "LICENSE", "NOTICE", "NOTICE.md"})


def hash_weight_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """sha256 of every file under the given files/folders, keyed by argument position and relative path.

    Names of the roots themselves are not part of the key, so the same weights copied to another folder (or a
    renamed checkpoint file) give the same hashes. Folders are walked recursively in sorted order; documentation
    files (``IGNORED_FILE_NAMES``) and hidden files are skipped so editing a model card does not invalidate
    every index.
    """
    out: dict[str, str] = {}
    for position, raw in enumerate(paths):
        root = Path(raw)
        if root.is_file():
            out[f"{position}"] = sha256_file(root)
        elif root.is_dir():
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                rel = file.relative_to(root)
                if rel.name in IGNORED_FILE_NAMES or any(part.startswith(".") for part in rel.parts):
                    continue
                out[f"{position}/{rel.as_posix()}"] = sha256_file(file)
        else:
            raise WeightsNotFoundError(f"cannot fingerprint weights: {root} does not exist")
    return out


def make_fingerprint(name: str, settings: Mapping[str, Any], weight_hashes: Mapping[str, str]) -> str:
    """``"<name>@<16 hex>"``: the architecture name stays readable, the hash covers settings + weights."""
    digest = sha256_json({"name": name, "settings": dict(settings), "weights": dict(weight_hashes)})
    return f"{name}@{digest[:16]}"
