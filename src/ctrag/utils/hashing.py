"""Content hashes used for cache keys, provenance records and fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash a JSON-serialisable object independent of key order."""
    return sha256_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))
