"""Typed configuration of a case index (the ``index:`` section of a preset).

The default is an exact flat inner-product index: corpora in this project are thousands of cases, where exact
search costs milliseconds and is never wrong. HNSW and IVF-PQ exist for the 10^5..10^6+ scale path (see
``benchmarks/bench_index.py`` for what each costs and how much recall it gives up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ctrag.errors import ConfigError

IndexKind = Literal["flat", "hnsw", "ivfpq"]
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivfpq")
IndexDevice = Literal["auto", "cpu", "gpu"]
INDEX_DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")


@dataclass
class HNSWConfig:
    """Graph index parameters (FAISS ``IndexHNSWFlat``).

    ``m`` links per node and ``ef_construction`` trade build time and memory for graph quality; ``ef_search``
    is the query-time beam width (raise it for recall, lower it for speed; it can be changed after loading).
    """

    m: int = 32
    ef_construction: int = 100
    ef_search: int = 64

    def __post_init__(self) -> None:
        for name in ("m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"HNSWConfig: {name} must be >= 1, got {getattr(self, name)}")


@dataclass
class IVFPQConfig:
    """Inverted lists + product quantisation (FAISS ``IndexIVFPQ``), for corpora too large to keep in float32.

    ``nlist=None`` picks ``sqrt(n)`` lists; ``m=None`` picks ``dim/8`` sub-quantisers (8 dimensions each);
    ``train_size=None`` trains on ``64 * nlist`` vectors (at least ``39 * 2**bits`` for the PQ codebooks) drawn
    with the seed. k-means cost grows with ``nlist * train_size``, so these keep a 10^6-vector build to minutes
    on two cores. Small corpora cannot train the requested sizes (k-means needs >= 39 points per list and
    2**bits points per PQ codebook), so the builder clamps them and records the values it used in ``index.json``.

    ``on_disk=True`` keeps the inverted lists (the PQ codes and row ids, ~56 bytes per case at 384-d) in their
    own file, ``index.ivfdata``, memory-mapped when the index is loaded: a search touches only the lists it
    probes, so resident memory stays far below the index size and opening a 10^7-case index is instant. The
    lists are then filled shard by shard (``shard_size`` rows each, every shard written to disk and the shards
    merged into one file, as FAISS does for indexes larger than memory), so building needs memory for one shard,
    not for the whole corpus.
    """

    nlist: int | None = None
    nprobe: int = 16
    m: int | None = None
    bits: int = 8
    train_size: int | None = None
    on_disk: bool = False
    shard_size: int = 1_000_000

    def __post_init__(self) -> None:
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"IVFPQConfig: nlist must be >= 1 or null, got {self.nlist}")
        if self.nprobe < 1:
            raise ConfigError(f"IVFPQConfig: nprobe must be >= 1, got {self.nprobe}")
        if self.m is not None and self.m < 1:
            raise ConfigError(f"IVFPQConfig: m must be >= 1 or null, got {self.m}")
        if not 1 <= self.bits <= 16:
            raise ConfigError(f"IVFPQConfig: bits must be in 1..16, got {self.bits}")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"IVFPQConfig: train_size must be >= 1 or null, got {self.train_size}")
        if self.shard_size < 1:
            raise ConfigError(f"IVFPQConfig: shard_size must be >= 1, got {self.shard_size}")

    def resolve_nlist(self, n: int) -> int:
        """Number of inverted lists actually used for ``n`` vectors (requested or automatic, then clamped)."""
        wanted = self.nlist if self.nlist is not None else round(math.sqrt(n))
        return max(1, min(wanted, n // 39))

    def resolve_train_size(self, n: int, nlist: int) -> int:
        """Training vectors drawn from ``n`` (requested or automatic)."""
        wanted = self.train_size if self.train_size is not None else max(64 * nlist, 39 * 2**self.bits)
        return max(1, min(n, wanted))

    def resolve_m(self, dim: int) -> int:
        """Number of PQ sub-quantisers for ``dim``; an explicit ``m`` must divide ``dim``."""
        if self.m is None:
            target = max(1, dim // 8)
            return max(d for d in range(1, target + 1) if dim % d == 0)
        if dim % self.m:
            divisors = [d for d in range(1, dim + 1) if dim % d == 0]
            raise ConfigError(f"IVFPQConfig: m={self.m} must divide the dimension {dim}; valid values: {divisors}")
        return self.m

    def resolve_bits(self, n_train: int) -> int:
        """Bits per PQ code, lowered when fewer than ``2**bits`` training vectors exist."""
        return max(1, min(self.bits, math.floor(math.log2(max(n_train, 2)))))


@dataclass
class IndexConfig:
    """Which FAISS structure a :class:`~ctrag.index.case_index.CaseIndex` uses, and its parameters.

    ``device``: where FAISS trains and searches. ``auto`` uses a GPU when the installed FAISS is a GPU build and
    sees one (IVF k-means training, flat and in-memory IVF-PQ search), the CPU otherwise; ``gpu`` makes a missing
    GPU an error instead of a silent fallback. HNSW and on-disk inverted lists always stay on the CPU (FAISS has
    no GPU version of either).
    """

    kind: IndexKind = "flat"
    hnsw: HNSWConfig = field(default_factory=HNSWConfig)
    ivfpq: IVFPQConfig = field(default_factory=IVFPQConfig)
    add_batch_size: int = 65_536
    #: OpenMP threads FAISS may use while building (``None``: FAISS default, one per core).
    threads: int | None = None
    device: IndexDevice = "auto"

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"IndexConfig: threads must be >= 1 or null, got {self.threads}")
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"IndexConfig: kind must be one of {list(INDEX_KINDS)}, got {self.kind!r}")
        if self.device not in INDEX_DEVICES:
            raise ConfigError(f"IndexConfig: device must be one of {list(INDEX_DEVICES)}, got {self.device!r}")
        if self.add_batch_size < 1:
            raise ConfigError(f"IndexConfig: add_batch_size must be >= 1, got {self.add_batch_size}")
