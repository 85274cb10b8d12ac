"""Index configuration: preset loading, validation and the IVF-PQ sizes resolved for a corpus."""

from __future__ import annotations

import pytest

from ctrag.config import load_config
from ctrag.errors import ConfigError
from ctrag.index import IndexConfig, IVFPQConfig


def test_index_config_from_preset_and_validation() -> None:
    cfg = load_config(IndexConfig, "tiny-cpu", section="index")
    assert cfg.kind == "flat"
    assert (
        load_config(IndexConfig, "tiny-cpu", ["kind=hnsw", "hnsw.ef_search=128"], section="index").hnsw.ef_search == 128
    )
    with pytest.raises(ConfigError, match="kind must be one of"):
        IndexConfig(kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="m=40 must divide the dimension 384"):
        IVFPQConfig(m=40).resolve_m(384)
    assert IVFPQConfig().resolve_m(384) == 48 and IVFPQConfig().resolve_m(512) == 64
    assert IVFPQConfig().resolve_nlist(1_000_000) == 1000 and IVFPQConfig().resolve_nlist(100) == 2
    assert IVFPQConfig().resolve_train_size(1_000_000, 1000) == 64_000
    on_disk = load_config(IndexConfig, "tiny-cpu", ["kind=ivfpq", "ivfpq.on_disk=true", "device=cpu"], section="index")
    assert on_disk.ivfpq.on_disk and on_disk.device == "cpu" and on_disk.ivfpq.shard_size == 1_000_000
    with pytest.raises(ConfigError, match="shard_size must be >= 1"):
        IVFPQConfig(shard_size=0)
    with pytest.raises(ConfigError, match="device must be one of"):
        IndexConfig(device="tpu")  # type: ignore[arg-type]


def test_ivfpq_sizes_shrink_for_small_training_sets() -> None:
    cfg = IVFPQConfig(nlist=64, bits=8)
    assert cfg.resolve_nlist(100) == 2  # at least 39 training vectors per list
    assert cfg.resolve_bits(100) == 6 and cfg.resolve_bits(10_000) == 8  # 2**bits centroids need the vectors
    with pytest.raises(ConfigError):
        IndexConfig(add_batch_size=0)
