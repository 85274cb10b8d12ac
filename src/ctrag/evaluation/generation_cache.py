"""Resumable storage of generated volumes for evaluation runs.

An ablation generates methods × seeds × reports volumes, which at paper scale takes GPU-days; a crash or a new
metric must not mean generating again. Each sample is keyed by everything that determines it (generator
identity, method, strategy, seed, steps, guidance, control scale, the report's hash and, for the ground-truth
method, the mask's hash) and stored as ``<method>/seed<k>/<case>.<key>.{ct,proxy}.nii.gz`` plus a JSON record.
The JSON is written last, so a sample counts as done only when all its files are complete (each file is
written atomically); anything less is generated again.

Volumes are stored as int16 HU, and freshly generated samples are rounded the same way before use, so a
resumed run gives exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.data.nifti import Volume, load_volume, save_volume
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.hashing import sha256_json


@dataclass
class GeneratedSample:
    """A generated CT (HU, int16 values) with its coarse-label proxy and provenance."""

    ct: Volume
    proxy: Volume | None
    record: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def retrieved_ids(self) -> list[str]:
        return [str(r.get("case_id")) for r in self.record.get("retrieved", [])]


def sample_key(payload: dict[str, Any]) -> str:
    return sha256_json(payload)[:16]


class GenerationCache:
    """Folder of generated samples addressed by (method, seed, case id, key)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _paths(self, method: str, seed: int, case_id: str, key: str) -> dict[str, Path]:
        folder = self.root / method / f"seed{seed}"
        stem = f"{case_id}.{key}"
        return {
            "ct": folder / f"{stem}.ct.nii.gz",
            "proxy": folder / f"{stem}.proxy.nii.gz",
            "record": folder / f"{stem}.json",
        }

    def load(self, method: str, seed: int, case_id: str, key: str) -> GeneratedSample | None:
        paths = self._paths(method, seed, case_id, key)
        if not paths["record"].is_file() or not paths["ct"].is_file():
            return None
        record = json.loads(paths["record"].read_text(encoding="utf-8"))
        if record.get("key") != key:
            return None
        ct = load_volume(paths["ct"])
        ct.meta["generated"] = True
        proxy = load_volume(paths["proxy"]) if record.get("has_proxy") and paths["proxy"].is_file() else None
        if record.get("has_proxy") and proxy is None:
            return None
        return GeneratedSample(ct=ct, proxy=proxy, record=record, from_cache=True)

    def store(
        self,
        method: str,
        seed: int,
        case_id: str,
        key: str,
        ct: np.ndarray,
        affine: np.ndarray,
        proxy: np.ndarray | None,
        record: dict[str, Any],
    ) -> GeneratedSample:
        paths = self._paths(method, seed, case_id, key)
        hu = np.clip(np.rint(np.asarray(ct, dtype=np.float64)), -32768, 32767).astype(np.int16)
        save_volume(paths["ct"], hu, affine, description="ctrag generated CT (synthetic, evaluation)")
        proxy_vol = None
        if proxy is not None:
            save_volume(paths["proxy"], np.asarray(proxy).astype(np.uint8), affine, description="ctrag proxy (coarse)")
            proxy_vol = Volume(array=np.asarray(proxy).astype(np.uint8), affine=np.asarray(affine, dtype=np.float64))
        full = {**record, "key": key, "has_proxy": proxy is not None, "files": {k: str(v) for k, v in paths.items()}}
        atomic_write_text(paths["record"], json.dumps(full, indent=2, default=str))
        return GeneratedSample(
            ct=Volume(array=hu, affine=np.asarray(affine, dtype=np.float64), meta={"generated": True}),
            proxy=proxy_vol,
            record=full,
        )

    def get_or_create(
        self,
        method: str,
        seed: int,
        case_id: str,
        key: str,
        create: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]],
    ) -> GeneratedSample:
        """Cached sample, or ``create() -> (ct_hu, affine, coarse_proxy_or_None, record)`` stored then returned."""
        cached = self.load(method, seed, case_id, key)
        if cached is not None:
            return cached
        ct, affine, proxy, record = create()
        return self.store(method, seed, case_id, key, ct, affine, proxy, record)
