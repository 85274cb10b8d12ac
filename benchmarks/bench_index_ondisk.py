"""IVF-PQ with on-disk inverted lists at 10^6 and 10^7 vectors: build, resident memory, latency, recall@1.

What is measured, per corpus size, with the library's own code (``ctrag.index.faiss_backend``: the sharded
on-disk build, ``read_index(on_disk=True)`` and ``search_rescored``, which ``CaseIndex.search(rerank=True)``
runs):

* **build**: training + filling shard by shard + merging into one ``.ivfdata`` file; seconds and peak RSS of the
  build process (the vectors are read from a memory map, whose touched pages count in RSS);
* **search**, in a fresh process that opens the saved index (lists memory-mapped) and the memory-mapped float32
  vectors used for exact re-scoring: single-query p50/p99 (FAISS shortlist + exact re-score of the shortlist),
  recall@1 against exact search, and the process's resident memory (current and peak) after all queries;
* **baseline**, in the same script: exact search over the same memory-mapped vectors (chunked float32 GEMM, what
  the default flat index computes), its latency on a few queries, and the memory a flat index would hold.

The vectors are **generated**, not real report embeddings (10^7 real reports do not exist here), but they are
drawn around the real ones: the shipped CT-RATE reports are embedded with the default encoder (MiniLM), cluster
centres are real report embeddings moved along the principal directions of the real embeddings, and each
cluster's members spread in a low-dimensional subspace of those directions plus isotropic noise. Queries are
fresh draws (not indexed). The JSON records how close the generated vectors are to the real ones.

Usage::

    python benchmarks/bench_index_ondisk.py --sizes 1000000 10000000 --out benchmarks/results

Needs ``rows x 1.5 KB`` of free disk under ``--work`` (15 GB for 10^7; removed at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHUNK = 250_000


# ---------------------------------------------------------------------------------------------------- helpers
def proc_status_mb() -> dict[str, float]:
    """Resident memory of this process, MB: current (VmRSS = RssAnon + RssFile + shmem) and peak (VmHWM).

    RssFile counts the pages of memory-mapped files (lists, vectors) this process has touched: they are page
    cache, shared and dropped by the kernel under memory pressure; RssAnon is memory only this process holds.
    """
    out: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key.lower()] = round(int(value.split()[0]) / 1024.0, 1)
    return out


def real_report_embeddings(cache: Path) -> np.ndarray:
    """The shipped CT-RATE reports (train + val) embedded with the default encoder; cached as .npy."""
    if cache.is_file():
        return np.load(cache)
    import csv

    from ctrag.encoders.factory import create_encoder

    folder = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"
    texts = []
    for split in ("train", "val"):
        with open(folder / f"{split}.csv", encoding="utf-8") as fh:
            texts += [row["report_text"] for row in csv.DictReader(fh)]
    made: Any = create_encoder("minilm")
    encoder = made[0] if isinstance(made, tuple) else made
    vectors = np.asarray(encoder.encode_text(texts), dtype=np.float32)
    np.save(cache, vectors)
    return vectors


class Generator:
    """Unit vectors around real report embeddings (see the module docstring); deterministic in ``seed``."""

    def __init__(self, real: np.ndarray, n: int, cluster_size: int, seed: int, args: argparse.Namespace) -> None:
        rng = np.random.default_rng(seed)
        self.dim = real.shape[1]
        centred = real - real.mean(axis=0)
        _, sing, vt = np.linalg.svd(centred, full_matrices=False)
        pcs = args.pcs
        std = (sing[:pcs] / np.sqrt(len(real) - 1)).astype(np.float32)
        self.directions = (std[:, None] * vt[:pcs]).astype(np.float32)  # (pcs, dim), scaled by the real spread
        n_clusters = max(1, n // cluster_size)
        source = rng.integers(0, len(real), size=n_clusters)
        shift = rng.standard_normal((n_clusters, pcs)).astype(np.float32) * np.float32(args.centre_shift)
        centres = real[source] + shift @ self.directions
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        # A pool of low-dimensional member subspaces inside the real principal directions.
        pool = np.linalg.qr(rng.standard_normal((args.basis_pool, pcs, args.sub_dim)).astype(np.float32))[0]
        self.bases = np.einsum("bps,pd->bsd", pool, self.directions).astype(np.float32)  # (pool, sub, dim)
        self.cluster_basis = rng.integers(0, args.basis_pool, size=n_clusters)
        self.spread, self.noise, self.sub_dim = args.spread, args.noise, args.sub_dim
        self.seed = seed

    def chunk(self, start: int, rows: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, start])
        cluster = rng.integers(0, len(self.centres), size=rows)
        z = rng.standard_normal((rows, self.sub_dim), dtype=np.float32) * np.float32(self.spread)
        x = self.centres[cluster].copy()
        basis = self.cluster_basis[cluster]
        for b in np.unique(basis):
            sel = np.flatnonzero(basis == b)
            x[sel] += z[sel] @ self.bases[b]
        x += rng.standard_normal((rows, self.dim), dtype=np.float32) * np.float32(self.noise / np.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


# ---------------------------------------------------------------------------------------------------- stages
def stage_generate(n: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """vectors.npy (memory map), queries.npy and the exact top-1 of every query, in one pass over the chunks."""
    real = real_report_embeddings(Path(args.real_cache))
    gen = Generator(real, n, args.cluster_size, args.seed, args)
    queries = gen.chunk(0, args.queries, stream=1)
    vectors = np.lib.format.open_memmap(work / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, gen.dim))
    best_score = np.full(len(queries), -np.inf, dtype=np.float32)
    best_row = np.full(len(queries), -1, dtype=np.int64)
    t0 = time.perf_counter()
    exact_s = 0.0
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        block = gen.chunk(start, rows)
        vectors[start : start + rows] = block
        t1 = time.perf_counter()
        sims = queries @ block.T
        arg = sims.argmax(axis=1)
        top = sims[np.arange(len(queries)), arg]
        better = top > best_score
        best_score[better], best_row[better] = top[better], arg[better] + start
        exact_s += time.perf_counter() - t1
        print(f"  generated {start + rows:,}/{n:,}", file=sys.stderr, flush=True)
    vectors.flush()
    generate_s = time.perf_counter() - t0 - exact_s
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", best_row)
    sample = np.asarray(vectors[np.sort(np.random.default_rng(1).choice(n, size=2000, replace=False))])
    to_real = (sample @ real.T).max(axis=1)
    real_nn = real @ real.T
    np.fill_diagonal(real_nn, -1.0)
    del vectors
    return {
        "generate_s": round(generate_s, 1),
        "exact_truth_s_for_all_queries": round(exact_s, 1),
        "clusters": len(gen.centres),
        "data_check": {
            "real_reports": len(real),
            "median_cosine_generated_to_nearest_real_report": round(float(np.median(to_real)), 4),
            "median_cosine_real_report_to_nearest_other_real_report": round(float(np.median(real_nn.max(axis=1))), 4),
            "median_cosine_query_to_its_true_nearest_neighbour": round(float(np.median(best_score)), 4),
        },
    }


def per_size(values: list[int], n: int, args: argparse.Namespace) -> int | None:
    """The value of a per-size option for corpus size ``n`` (one value for all sizes, or one per size; 0 = auto)."""
    value = values[args.sizes.index(n)] if len(values) == len(args.sizes) else values[0]
    return value or None


def index_config(n: int, args: argparse.Namespace) -> Any:
    from ctrag.index.config import IndexConfig, IVFPQConfig

    ivfpq = IVFPQConfig(
        nlist=per_size(args.nlist, n, args),
        nprobe=args.nprobe[0],
        on_disk=True,
        shard_size=args.shard_size,
        train_size=per_size(args.train_size, n, args),
    )
    return IndexConfig(kind="ivfpq", ivfpq=ivfpq, threads=args.build_threads, device="cpu")


def stage_build(n: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ctrag.index import faiss_backend

    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    scratch = work / "build"
    scratch.mkdir(exist_ok=True)
    out = work / "index"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 30 or done == total:
            last[0] = time.perf_counter()
            print(f"  {stage} {done:,}/{total:,} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    index, effective = faiss_backend.build_faiss_index(
        vectors, index_config(n, args), seed=args.seed, progress=progress, ondisk_dir=scratch
    )
    build_s = time.perf_counter() - t0
    faiss_backend.write_index(index, str(out / "index.faiss"), "index.ivfdata")
    del index
    shutil.rmtree(scratch)
    return {
        "effective": effective,
        "build_s": round(build_s, 1),
        "build_process_memory_mb": proc_status_mb(),
        "index_faiss_mb": round((out / "index.faiss").stat().st_size / 2**20, 1),
        "ivfdata_mb": round((out / "index.ivfdata").stat().st_size / 2**20, 1),
        "vectors_mb": round((work / "vectors.npy").stat().st_size / 2**20, 1),
    }


def stage_query(n: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run in a fresh process so its resident memory is that of a search service, not of the build."""
    import faiss

    from ctrag.index import faiss_backend

    faiss.omp_set_num_threads(1)
    before = proc_status_mb()
    t0 = time.perf_counter()
    index = faiss_backend.read_index(str(work / "index" / "index.faiss"), on_disk=True)
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    open_s = time.perf_counter() - t0
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    results = []
    for release, nprobe, shortlist in (
        (r, p, s) for r in args.release_pages for p in args.nprobe for s in args.shortlist
    ):
        faiss_backend.set_search_params(index, "ivfpq", nprobe=nprobe)
        kwargs = {"release_pages": bool(release)}
        for q in queries[:20]:  # warm-up: map the probed lists once, as a running service would have
            faiss_backend.search_rescored(index, vectors, q[None, :], 1, shortlist, **kwargs)
        times, top1 = [], []
        for q in queries:
            t = time.perf_counter()
            _, rows = faiss_backend.search_rescored(index, vectors, q[None, :], 1, shortlist, **kwargs)
            times.append(time.perf_counter() - t)
            top1.append(int(rows[0, 0]))
        ms = np.asarray(times) * 1000.0
        results.append(
            {
                "nprobe": nprobe,
                "shortlist": shortlist,
                "release_pages": bool(release),
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
                "recall_at_1": round(float(np.mean(np.asarray(top1) == truth)), 4),
                "memory_after_mb": proc_status_mb(),
            }
        )
        print(f"  {results[-1]}", file=sys.stderr, flush=True)
    # Baseline: exact search over the same memory-mapped vectors (what a flat index computes), a few queries.
    exact_times = []
    for q in queries[: args.exact_queries]:
        t = time.perf_counter()
        best = -np.inf
        for start in range(0, n, CHUNK):
            best = max(best, float((np.asarray(vectors[start : start + CHUNK]) @ q).max()))
        exact_times.append(time.perf_counter() - t)
    return {
        "open_s": round(open_s, 3),
        "memory_before_open_mb": before,
        "settings": results,
        "torch_imported": "torch" in sys.modules,
        "faiss_threads": 1,
        "load_average_at_end": list(os.getloadavg()),
        "baseline_exact_scan_over_mmap": {
            "queries": len(exact_times),
            "p50_ms": round(float(np.median(exact_times)) * 1000.0, 1),
            "flat_index_in_memory_mb": round(n * vectors.shape[1] * 4 / 2**20, 1),
        },
        "memory_end_mb": proc_status_mb(),
    }


STAGES = {"generate": stage_generate, "build": stage_build, "query": stage_query}


def run_stage(stage: str, n: int, work: Path, argv: list[str]) -> dict[str, Any]:
    """Each stage in its own process: resident memory figures then belong to that stage alone."""
    result = work / f"{stage}.json"
    cmd = [sys.executable, __file__, *argv, "--stage", stage, "--stage-n", str(n), "--stage-work", str(work)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return json.loads(result.read_text(encoding="utf-8"))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--exact-queries", type=int, default=3)
    p.add_argument("--nlist", type=int, nargs="+", default=[0], help="per size; 0: the library default, sqrt(n)")
    p.add_argument("--train-size", type=int, nargs="+", default=[0], help="per size; 0: the library default")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32])
    p.add_argument("--shortlist", type=int, nargs="+", default=[32, 64])
    p.add_argument(
        "--release-pages",
        type=int,
        nargs="+",
        default=[1],
        help="1: unmap the vectors' pages after each re-score (bounded memory); 0: leave them mapped (faster)",
    )
    p.add_argument("--shard-size", type=int, default=1_000_000)
    p.add_argument("--build-threads", type=int, default=None)
    p.add_argument("--cluster-size", type=int, default=500)
    p.add_argument("--pcs", type=int, default=64, help="principal directions of the real embeddings used")
    p.add_argument("--centre-shift", type=float, default=1.0, help="centre = real + shift x real spread")
    p.add_argument("--sub-dim", type=int, default=8)
    p.add_argument("--spread", type=float, default=0.5)
    p.add_argument("--noise", type=float, default=0.15)
    p.add_argument("--basis-pool", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the generated data and indexes")
    p.add_argument("--real-cache", default=None, help="cache file of the real report embeddings")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default="index_ondisk")
    p.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--stage-n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stage-work", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.stage:
        figures = STAGES[args.stage](args.stage_n, Path(args.stage_work), args)
        (Path(args.stage_work) / f"{args.stage}.json").write_text(json.dumps(figures), encoding="utf-8")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import write_result

    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ctrag-bench-ondisk-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.real_cache is None:
        args.real_cache = str(root / "real_report_embeddings.npy")
        argv += ["--real-cache", args.real_cache]
    real_report_embeddings(Path(args.real_cache))
    import faiss

    sizes = []
    try:
        for n in args.sizes:
            work = root / f"n{n}"
            work.mkdir(exist_ok=True)
            print(f"n = {n:,}", file=sys.stderr, flush=True)
            entry: dict[str, Any] = {"n": n}
            for stage in ("generate", "build", "query"):
                t = time.perf_counter()
                entry[stage] = run_stage(stage, n, work, argv)
                entry[stage]["stage_wall_s"] = round(time.perf_counter() - t, 1)
            q = entry["query"]
            base = q["baseline_exact_scan_over_mmap"]
            entry["vs_exact"] = [
                {
                    "nprobe": s["nprobe"],
                    "shortlist": s["shortlist"],
                    "release_pages": s["release_pages"],
                    "speedup_p50": round(base["p50_ms"] / s["p50_ms"], 1),
                    "rss_vs_flat_index": round(s["memory_after_mb"]["vmrss"] / base["flat_index_in_memory_mb"], 3),
                }
                for s in q["settings"]
            ]
            sizes.append(entry)
            if not args.keep:
                shutil.rmtree(work)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(root, ignore_errors=True)
    figures = {
        "data": {
            "kind": "generated around real report embeddings",
            "description": (
                "cluster centres = real CT-RATE report embeddings (default encoder, MiniLM) shifted along the top "
                "principal directions of the real embeddings; members spread in a per-cluster low-dimensional "
                "subspace of those directions plus isotropic noise; renormalised. Queries are fresh draws, not "
                "indexed. Not real embeddings: absolute recall on a real corpus of this size will differ."
            ),
            "cluster_size": args.cluster_size,
            "pcs": args.pcs,
            "centre_shift": args.centre_shift,
            "sub_dim": args.sub_dim,
            "spread": args.spread,
            "noise": args.noise,
            "queries": args.queries,
            "seed": args.seed,
        },
        "faiss_version": faiss.__version__,
        "k": 1,
        "sizes": sizes,
    }
    print(write_result(args.out, args.name, figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
