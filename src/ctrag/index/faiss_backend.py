"""Construction and tuning of the FAISS structures behind a case index.

Kept apart from :mod:`ctrag.index.case_index` so the benchmarks measure exactly the code the library runs, and
so FAISS is imported only when an index is actually built or loaded. Every structure uses inner product on
L2-normalised vectors, i.e. cosine similarity.

Indexes larger than memory (IVF-PQ with ``on_disk``) follow FAISS's own recipe: train once on a sample, fill one
copy of the trained index per shard of rows, write each shard, and merge the shards' inverted lists into a
single memory-mapped ``.ivfdata`` file. GPUs are used through FAISS's GPU indexes when the installed FAISS has
them (:func:`resolve_device`).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.errors import ConfigError, DataValidationError
from ctrag.index.config import IndexConfig
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)


def _faiss() -> Any:
    import faiss

    return faiss


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """Send what FAISS's C++ code prints while mapping on-disk lists to stderr instead of stdout.

    ``OnDiskInvertedLists`` and ``read_index(..., IO_FLAG_ONDISK_SAME_DIR)`` ``printf`` a line each time; on
    stdout that line would corrupt the JSON that ``ctrag search --json`` writes there.
    """
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no usable stdout (closed, or replaced by an object without a descriptor)
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def gpu_count() -> int:
    """GPUs the installed FAISS can use (0 for the CPU-only ``faiss-cpu`` wheels)."""
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_device(device: str) -> str:
    """``cpu`` or ``gpu`` for a configured ``device`` (``auto``/``cpu``/``gpu``); ``gpu`` without a GPU is an error."""
    if device == "cpu":
        return "cpu"
    available = gpu_count() > 0 and hasattr(_faiss(), "index_cpu_to_all_gpus")
    if device == "gpu" and not available:
        raise ConfigError(
            "index device 'gpu' was requested, but the installed FAISS sees no GPU (faiss-cpu build, or no CUDA "
            "device visible); install a FAISS GPU build, or set index.device to 'auto' or 'cpu'"
        )
    return "gpu" if available else "cpu"


def is_on_disk(index: Any) -> bool:
    """Whether ``index`` keeps its inverted lists in a memory-mapped ``.ivfdata`` file."""
    faiss = _faiss()
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return False
    return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


def to_search_device(index: Any, kind: str, device: str) -> Any:
    """The index to search with: a GPU copy of flat and in-memory IVF-PQ indexes when ``device`` resolves to GPU.

    The CPU index stays the one that is saved; HNSW and on-disk lists have no FAISS GPU version and stay on CPU.
    """
    if resolve_device(device) != "gpu" or kind == "hnsw" or is_on_disk(index):
        return index
    faiss = _faiss()
    logger.info("searching the %s index on %d GPU(s)", kind, gpu_count())
    return faiss.index_cpu_to_all_gpus(index)


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
    ondisk_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build and fill a FAISS index over ``vectors`` (n, dim) float32, L2-normalised.

    Returns the index and the parameters actually used (``effective``), which differ from ``config`` when a
    small corpus forces smaller IVF/PQ sizes. Training samples are drawn with ``seed``; HNSW insertion with
    several OpenMP threads is not bit-for-bit reproducible, flat and IVF-PQ are. Insertion is reported as
    ``progress("build <kind> index", done, n)``. An on-disk IVF-PQ index writes its shards and merged lists
    into ``ondisk_dir``, which must exist and outlive the returned index (it reads its lists from there).
    """
    if config.kind == "ivfpq" and config.ivfpq.on_disk and ondisk_dir is None:
        raise ConfigError("an on-disk IVF-PQ index needs ondisk_dir, the folder its inverted lists are written to")
    with faiss_threads(config.threads):
        return _build(vectors, config, seed, progress, None if ondisk_dir is None else Path(ondisk_dir))


def _build(
    vectors: np.ndarray, config: IndexConfig, seed: int, progress: ProgressFn | None, ondisk_dir: Path | None
) -> tuple[Any, dict[str, Any]]:
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)  # no copy for float32 arrays, memory maps included
    n, dim = x.shape
    effective: dict[str, Any] = {"kind": config.kind}
    device = resolve_device(config.device)
    if device == "gpu":
        effective["build_device"] = "gpu"
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw.ef_construction
        index.hnsw.efSearch = config.hnsw.ef_search
        effective.update(m=config.hnsw.m, ef_construction=config.hnsw.ef_construction, ef_search=config.hnsw.ef_search)
    elif config.kind == "ivfpq":
        index, train_info = _train_ivfpq(faiss, x, config, seed, device)
        effective.update(train_info)
        if config.ivfpq.on_disk:
            effective.update(on_disk=True, shard_size=config.ivfpq.shard_size)
            assert ondisk_dir is not None
            return _fill_on_disk(faiss, index, x, config, progress, ondisk_dir), effective
    else:  # pragma: no cover - IndexConfig validates kind
        raise AssertionError(config.kind)
    step = config.add_batch_size
    for start in range(0, n, step):
        index.add(x[start : start + step])
        if progress is not None:
            progress(f"build {config.kind} index", min(start + step, n), n)
    return index, effective


def _train_ivfpq(faiss: Any, x: np.ndarray, config: IndexConfig, seed: int, device: str) -> tuple[Any, dict[str, Any]]:
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
    if device == "gpu":  # k-means assignment is the costly part of training; FAISS runs it on a GPU flat index
        index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
    index.train(np.ascontiguousarray(train))
    index.nprobe = min(cfg.nprobe, nlist)
    info = {"nlist": nlist, "nprobe": index.nprobe, "m": m, "bits": bits, "train_size": len(train)}
    return index, info


class ScratchDir:
    """A temporary folder removed when its owner is garbage-collected (or on :meth:`cleanup`).

    A built, not yet saved, on-disk index reads its lists from such a folder, so the folder must live as long
    as the index; :meth:`ctrag.index.case_index.CaseIndex.save` copies the lists into the index folder.
    """

    def __init__(self, prefix: str = "ctrag-ivf-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def cleanup(self) -> None:
        self._finalizer()


def _fill_on_disk(
    faiss: Any, trained: Any, x: np.ndarray, config: IndexConfig, progress: ProgressFn | None, out_dir: Path
) -> Any:
    """Fill ``trained`` shard by shard and merge the shards into one memory-mapped inverted-list file.

    Each shard holds ``shard_size`` rows' codes in memory until it is written; the merge reads the shards
    memory-mapped. Peak memory is therefore one shard, whatever the corpus size.
    """
    n = x.shape[0]
    shard_rows = config.ivfpq.shard_size
    shard_files: list[str] = []
    try:
        for s_start in range(0, n, shard_rows):
            s_end = min(s_start + shard_rows, n)
            shard = faiss.clone_index(trained)
            for start in range(s_start, s_end, config.add_batch_size):
                end = min(start + config.add_batch_size, s_end)
                shard.add_with_ids(np.ascontiguousarray(x[start:end]), np.arange(start, end, dtype=np.int64))
                if progress is not None:
                    progress("build ivfpq index", end, n)
            name = str(out_dir / f"shard-{len(shard_files):05d}.index")
            faiss.write_index(shard, name)
            shard_files.append(name)
            del shard
        merged = faiss.clone_index(trained)
        _merge_shards(faiss, merged, shard_files, str(out_dir / "index.ivfdata"))
    finally:
        for name in shard_files:
            with contextlib.suppress(OSError):
                os.remove(name)
    return merged


def _merge_shards(faiss: Any, empty: Any, shard_files: list[str], ivfdata_path: str) -> None:
    """Move the lists of the shard files into ``empty`` as one ``OnDiskInvertedLists`` at ``ivfdata_path``.

    Shards are opened memory-mapped, so merging reads them sequentially instead of loading them.
    """
    ivf = faiss.extract_index_ivf(empty)
    sources, keep = [], []
    with _c_stdout_to_stderr():
        for name in shard_files:
            shard = faiss.read_index(name, faiss.IO_FLAG_MMAP)
            sources.append(faiss.extract_index_ivf(shard).invlists)
            keep.append(shard)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, ivfdata_path)
        vec = faiss.InvertedListsPtrVector()
        for src in sources:
            vec.push_back(src)
        total = lists.merge_from_multiple(vec.data(), vec.size(), False)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns the lists now
    empty.ntotal = ivf.ntotal = int(total)
    del keep


def set_search_params(index: Any, kind: str, ef_search: int | None = None, nprobe: int | None = None) -> None:
    """Change query-time knobs of a built index (no effect on the flat index); CPU and GPU indexes alike."""
    if kind == "hnsw" and ef_search is not None:
        index.hnsw.efSearch = int(ef_search)
    if kind == "ivfpq" and nprobe is not None:
        if hasattr(index, "nprobe") and not type(index).__name__.startswith("Gpu"):
            index.nprobe = int(min(nprobe, int(index.nlist)))
        else:  # a GPU index, or its replicas over several GPUs (no nprobe attribute of their own)
            _faiss().GpuParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))


def search_params(index: Any, kind: str) -> dict[str, int]:
    """Current query-time knobs, for provenance records."""
    if kind == "hnsw":
        return {"ef_search": int(index.hnsw.efSearch)}
    if kind == "ivfpq":
        return {"nprobe": int(index.nprobe)}
    return {}


def release_mapped_pages(array: Any) -> bool:
    """Unmap the pages of a read-only memory-mapped ``array`` from this process; True if it was one.

    Reading a few hundred scattered rows of a memory map makes the kernel map far more than those rows (fault-
    around maps whole page-cache folios, up to 2 MB each), so after some queries a search process "holds" most
    of a 15 GB vector file in its resident set. The pages are clean page cache: dropping them from the page
    tables (``MADV_DONTNEED``) keeps them cached for the next read and costs a fraction of a millisecond.
    Only read-only maps are touched; a copy-on-write map would lose its private changes.
    """
    obj = array
    while obj is not None:
        if isinstance(obj, np.memmap) and getattr(obj, "mode", None) == "r":
            handle = getattr(obj, "_mmap", None)
            if isinstance(handle, mmap.mmap):
                handle.madvise(mmap.MADV_DONTNEED)
                return True
        obj = getattr(obj, "base", None)
    return False


def search_rescored(
    index: Any, vectors: np.ndarray, queries: np.ndarray, k: int, shortlist: int, *, release_pages: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS shortlist of ``max(k, shortlist)`` rows per query, re-scored with exact cosines from ``vectors``.

    Approximate structures rank near-ties poorly (IVF-PQ's own top-1 is often wrong) but rarely miss the true
    neighbour from a shortlist of a few hundred; exact scores of those rows need ``shortlist`` row reads from
    ``vectors``. A read-only memory map is fine: only those rows are read, and with ``release_pages`` their
    pages are unmapped again (:func:`release_mapped_pages`), so the vectors never accumulate in the process's
    resident memory. Returns (scores, rows), (n_queries, k'), best first; rows FAISS could not fill are -1
    with score -inf.
    """
    n = int(index.ntotal)
    k_eff = min(int(k), n)
    width = min(max(int(k), int(shortlist)), n)
    _, rows = index.search(queries, width)
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    flat = safe.ravel()
    order_read = np.argsort(flat, kind="stable")  # read the memory map in file order
    gathered = np.empty((flat.size, vectors.shape[1]), dtype=np.float32)
    gathered[order_read] = np.asarray(vectors[flat[order_read]], dtype=np.float32)
    if release_pages:
        release_mapped_pages(vectors)
    exact = np.einsum("qkd,qd->qk", gathered.reshape(rows.shape[0], width, -1), queries.astype(np.float32))
    exact = np.where(valid, exact, -np.inf).astype(np.float32)
    best = np.argsort(-exact, axis=1, kind="stable")[:, :k_eff]
    out_rows = np.take_along_axis(np.where(valid, rows, -1), best, axis=1)
    return np.take_along_axis(exact, best, axis=1), out_rows


def write_index(index: Any, path: str, ivfdata_name: str | None = None) -> None:
    """Write ``index`` to ``path``; an on-disk index also gets its lists copied to ``ivfdata_name`` beside it.

    FAISS records the lists' file name inside the index; the reader resolves it in the index's own folder
    (``IO_FLAG_ONDISK_SAME_DIR``), which keeps a saved index valid when its folder is renamed or moved.
    """
    faiss = _faiss()
    with _c_stdout_to_stderr():
        faiss.write_index(index, path)
    if not is_on_disk(index):
        return
    if ivfdata_name is None:
        raise DataValidationError("an index with on-disk inverted lists needs a file name for its lists")
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    target = Path(path).parent / ivfdata_name
    if Path(lists.filename).resolve() != target.resolve():
        shutil.copyfile(lists.filename, target)


def read_index(path: str, on_disk: bool = False) -> Any:
    """Read an index written by :func:`write_index`; ``on_disk`` maps its inverted lists read-only."""
    faiss = _faiss()
    if not on_disk:
        return faiss.read_index(path)
    with _c_stdout_to_stderr():
        return faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
