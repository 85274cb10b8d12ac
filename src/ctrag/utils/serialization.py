"""Saving fitted components as JSON plus ``.npz`` arrays, never pickles, so a saved index or scorer can be read by
another ctrag, NumPy or scikit-learn version. Every write goes through a temporary file (``ctrag.utils.atomic``),
and every read names the file and what is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ctrag.errors import DataValidationError
from ctrag.utils.atomic import atomic_open, atomic_path


def save_csr(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_data": m.data,
        f"{prefix}_indices": m.indices,
        f"{prefix}_indptr": m.indptr,
        f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64),
    }


def load_csr(prefix: str, arrays: Any) -> sp.csr_matrix:
    shape = tuple(int(v) for v in arrays[f"{prefix}_shape"])
    return sp.csr_matrix((arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]), shape)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` through a temporary file, so a reader never sees half an archive."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)


def write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataValidationError(f"missing {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataValidationError(f"{path}: not valid JSON ({exc})") from exc


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataValidationError(f"missing {path.name} in {path.parent}")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_meta(path: Path, kind: str, max_version: int | None = None) -> dict[str, Any]:
    """The JSON header of a saved component, checked to be of ``kind`` and not newer than this code reads."""
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        got = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise DataValidationError(f"{path.parent} does not hold a {kind} (found {got!r})")
    if max_version is not None and int(meta.get("format_version", 0)) > max_version:
        raise DataValidationError(f"{path.parent}: {kind} format {meta.get('format_version')} is too new")
    return meta
