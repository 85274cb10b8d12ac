"""Resumable generated-sample storage: a stored sample comes back identical, keyed by everything that made it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrag.data.nifti import load_volume
from ctrag.evaluation.generation_cache import GenerationCache, sample_key


def test_store_load_round_trip_and_resume(lowres_chest_ct: Path, tmp_path: Path) -> None:
    real = load_volume(lowres_chest_ct)
    ct = np.asarray(real.array, dtype=np.float32) + 0.4  # generated HU are rounded to int16 on the way in
    proxy = (np.asarray(real.array) > -400).astype(np.uint8)
    cache = GenerationCache(tmp_path)
    key = sample_key({"method": "nearest", "seed": 0, "report": "abc"})
    assert key == sample_key({"seed": 0, "report": "abc", "method": "nearest"}) and len(key) == 16
    calls: list[int] = []

    def create() -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:  # type: ignore[type-arg]
        calls.append(1)
        return ct, real.affine, proxy, {"retrieved": [{"case_id": "c1"}]}

    fresh = cache.get_or_create("nearest", 0, "case", key, create)
    again = cache.get_or_create("nearest", 0, "case", key, create)
    assert calls == [1] and not fresh.from_cache and again.from_cache
    np.testing.assert_array_equal(np.asarray(again.ct.array), np.asarray(fresh.ct.array))
    np.testing.assert_array_equal(np.asarray(fresh.ct.array), np.rint(ct).astype(np.int16))
    np.testing.assert_array_equal(np.asarray(again.proxy.array), proxy)  # type: ignore[union-attr]
    assert again.retrieved_ids == ["c1"] and again.ct.meta["generated"]
    # another key (e.g. other weights) or a missing volume file means: generate again
    assert cache.load("nearest", 0, "case", sample_key({"other": 1})) is None
    Path(fresh.record["files"]["proxy"]).unlink()
    assert cache.load("nearest", 0, "case", key) is None
