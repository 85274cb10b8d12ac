"""Construction and tuning of the FAISS structures behind a case index.

Kept apart from :mod:`ctrag.index.case_index` so the benchmark measures exactly the code the library runs, and
so FAISS is imported only when an index is actually built or loaded. Every structure uses inner product on
L2-normalised vectors, i.e. cosine similarity.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from ctrag.index.config import IndexConfig
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)


def _faiss() -> Any:
    import faiss

    return faiss


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run a block with FAISS limited to ``threads`` OpenMP threads (``None``: leave FAISS's setting alone).

    FAISS's thread count is process-wide, so it is set and restored around the work instead of being left
    changed. On a machine where cores are shared, one thread is often faster than several busy-waiting ones.
    """
    if threads is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def build_faiss_index(
    vectors: np.ndarray,
    config: IndexConfig,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build and fill a FAISS index over ``vectors`` (n, dim) float32, L2-normalised.

    Returns the index and the parameters actually used (``effective``), which differ from ``config`` when a
    small corpus forces smaller IVF/PQ sizes. Training samples are drawn with ``seed``; HNSW insertion with
    several OpenMP threads is not bit-for-bit reproducible, flat and IVF-PQ are. Insertion is reported as
    ``progress("build <kind> index", done, n)``.
    """
    with faiss_threads(config.threads):
        return _build(vectors, config, seed, progress)


def _build(
    vectors: np.ndarray, config: IndexConfig, seed: int, progress: ProgressFn | None
) -> tuple[Any, dict[str, Any]]:
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    effective: dict[str, Any] = {"kind": config.kind}
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw.ef_construction
        index.hnsw.efSearch = config.hnsw.ef_search
        effective.update(m=config.hnsw.m, ef_construction=config.hnsw.ef_construction, ef_search=config.hnsw.ef_search)
    elif config.kind == "ivfpq":
        index, train_info = _build_ivfpq(faiss, x, config, seed)
        effective.update(train_info)
    else:  # pragma: no cover - IndexConfig validates kind
        raise AssertionError(config.kind)
    step = config.add_batch_size
    for start in range(0, n, step):
        index.add(x[start : start + step])
        if progress is not None:
            progress(f"build {config.kind} index", min(start + step, n), n)
    return index, effective


def _build_ivfpq(faiss: Any, x: np.ndarray, config: IndexConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    n, dim = x.shape
    cfg = config.ivfpq
    nlist = cfg.resolve_nlist(n)
    m = cfg.resolve_m(dim)
    rng = np.random.default_rng(seed)
    n_train = cfg.resolve_train_size(n, nlist)
    train = x if n_train == n else x[np.sort(rng.choice(n, size=n_train, replace=False))]
    bits = cfg.resolve_bits(len(train))
    if nlist != (cfg.nlist or nlist) or bits != cfg.bits:
        logger.warning(
            "IVF-PQ on %d vectors: using nlist=%d, bits=%d (requested nlist=%s, bits=%d) so k-means has enough "
            "training points",
            n,
            nlist,
            bits,
            cfg.nlist,
            cfg.bits,
        )
    if len(train) < 39 * 2**bits:
        logger.warning(
            "IVF-PQ: %d training vectors for %d PQ centroids per sub-quantiser; codebooks will be coarse "
            "(a flat index is exact and fast at this size)",
            len(train),
            2**bits,
        )
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, bits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    # We warn once above (in Python); stop FAISS printing one stderr line per sub-quantiser.
    index.pq.cp.min_points_per_centroid = 1
    index.train(np.ascontiguousarray(train))
    index.nprobe = min(cfg.nprobe, nlist)
    info = {"nlist": nlist, "nprobe": index.nprobe, "m": m, "bits": bits, "train_size": len(train)}
    return index, info


def set_search_params(index: Any, kind: str, ef_search: int | None = None, nprobe: int | None = None) -> None:
    """Change query-time knobs of a built index (no effect on the flat index)."""
    if kind == "hnsw" and ef_search is not None:
        index.hnsw.efSearch = int(ef_search)
    if kind == "ivfpq" and nprobe is not None:
        index.nprobe = int(min(nprobe, index.nlist))


def search_params(index: Any, kind: str) -> dict[str, int]:
    """Current query-time knobs, for provenance records."""
    if kind == "hnsw":
        return {"ef_search": int(index.hnsw.efSearch)}
    if kind == "ivfpq":
        return {"nprobe": int(index.nprobe)}
    return {}


def write_index(index: Any, path: str) -> None:
    _faiss().write_index(index, path)


def read_index(path: str) -> Any:
    return _faiss().read_index(path)
