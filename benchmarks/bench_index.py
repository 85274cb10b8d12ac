"""FAISS index kinds at scale: flat vs HNSW vs IVF-PQ on 10^5 and 10^6 L2-normalised 384-d vectors.

The vectors are **synthetic** (stated in the JSON): random unit cluster centres, each vector a centre plus a
Gaussian in that cluster's own low-dimensional subspace plus small isotropic noise, renormalised (cosine to its
centre ~0.85, nearest neighbours ~0.95, like report embeddings); queries are fresh draws, not in the index.
Real report corpora of 10^6 cases are not available here; the recall of approximate indexes depends on the data,
so treat those figures as indicative and the timings and sizes as the main result.

Per size and kind, built with the library's own code (``ctrag.index.faiss_backend``) and default settings:

* build time (training + adding), serialised index size, RSS growth of the process;
* query latency for k = 10: single queries (p50/p99 over ``--single`` queries) and batches of ``--batch``
  (p50/p99 per batch, and queries/s);
* recall@1 and recall@10 against exact search (numpy float32 GEMM, also timed: it is what ``Retriever`` runs
  below ``exact_limit`` candidates), and recall@1 after exact re-scoring of a 32-row FAISS shortlist with the
  stored vectors (what ``Retriever`` does above ``exact_limit``);
* one extra query-time setting per approximate kind (HNSW ``ef_search``, IVF-PQ ``nprobe``);
* ratios against flat measured in the same process (speed-up, size, recall).

Usage: ``python benchmarks/bench_index.py [--sizes 100000 1000000] [--threads 0] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, write_result

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_vectors(
    n: int, dim: int, clusters: int, spread: float, noise: float, sub_dim: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` unit vectors with cluster structure of low intrinsic dimension, like text embeddings.

    Each vector = a random unit cluster centre + ``spread`` x a Gaussian in that cluster's own random
    ``sub_dim``-dimensional subspace + ``noise`` x isotropic Gaussian, renormalised. Without the low-dimensional
    part, all members of a cluster are almost equally far from a query and "the nearest neighbour" is mostly
    noise, which no index (and no real corpus) looks like.
    """
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = np.linalg.qr(rng.standard_normal((clusters, dim, sub_dim)).astype(np.float32))[0]  # (c, dim, sub)
    out = np.empty((n, dim), dtype=np.float32)
    step = 50_000
    for start in range(0, n, step):
        m = min(step, n - start)
        cl = rng.integers(0, clusters, size=m)
        z = rng.standard_normal((m, sub_dim), dtype=np.float32) * np.float32(spread / np.sqrt(sub_dim))
        x = centres[cl] + np.einsum("mds,ms->md", bases[cl], z)
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def percentiles_ms(times: list[float]) -> dict[str, float]:
    arr = np.asarray(times) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 4), "p99_ms": round(float(np.percentile(arr, 99)), 4)}


def measure_queries(index: Any, queries: np.ndarray, k: int, n_single: int, batch: int) -> dict[str, Any]:
    single: list[float] = []
    for i in range(min(n_single, len(queries))):
        t = time.perf_counter()
        index.search(queries[i : i + 1], k)
        single.append(time.perf_counter() - t)
    batched: list[float] = []
    rows = []
    total = time.perf_counter()
    for start in range(0, len(queries), batch):
        t = time.perf_counter()
        _, ids = index.search(queries[start : start + batch], k)
        batched.append(time.perf_counter() - t)
        rows.append(ids)
    total = time.perf_counter() - total
    return {
        "single": percentiles_ms(single),
        "batched": {**percentiles_ms(batched), "batch": batch, "queries_per_s": round(len(queries) / total, 1)},
        "rows": np.concatenate(rows),
    }


def recall(rows: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    at1 = float(np.mean(rows[:, 0] == truth[:, 0]))
    atk = float(np.mean([len(set(r[:k]) & set(t[:k])) / k for r, t in zip(rows, truth, strict=True)]))
    return {"recall_at_1": round(at1, 4), f"recall_at_{k}": round(atk, 4)}


def rerank_recall(index: Any, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, shortlist: int) -> float:
    _, ids = index.search(queries, shortlist)
    hits = 0
    for q, row, t in zip(queries, ids, truth, strict=True):
        row = row[row >= 0]
        exact = vectors[row] @ q
        hits += int(row[int(np.argmax(exact))] == t[0])
    return round(hits / len(queries), 4)


class NumpyExact:
    """Exact top-k with a float32 numpy GEMM: what ``Retriever`` runs below ``exact_limit`` candidates."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.vectors.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def index_bytes(index: Any) -> int:
    from ctrag.index import faiss_backend

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss_backend.write_index(index, path)
        return os.path.getsize(path)


def bench_size(n: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    from ctrag.index import faiss_backend
    from ctrag.index.config import IndexConfig

    clusters = max(100, n // args.cluster_size)
    t = time.perf_counter()
    data = make_vectors(n + args.queries, args.dim, clusters, args.spread, args.noise, args.sub_dim, rng)
    vectors, queries = data[:n], np.ascontiguousarray(data[n:])
    gen_s = time.perf_counter() - t
    print(f"[n={n}] generated {n} + {args.queries} vectors ({clusters} clusters) in {gen_s:.1f}s", flush=True)
    out: dict[str, Any] = {"n": n, "clusters": clusters, "generate_s": round(gen_s, 2), "kinds": {}}

    # Ground truth and the retriever's exact path: numpy float32 GEMM over all queries.
    exact = measure_queries(NumpyExact(vectors), queries, args.k, args.single, args.batch)
    truth = exact.pop("rows")
    out["numpy_exact"] = exact
    print(f"[n={n}] numpy exact: {exact}", flush=True)

    for kind in args.kinds:
        cfg = IndexConfig(kind=kind, threads=args.threads or None)
        if args.hnsw_ef_construction:
            cfg.hnsw.ef_construction = args.hnsw_ef_construction
        if args.hnsw_m:
            cfg.hnsw.m = args.hnsw_m
        gc.collect()
        before = rss_mb()
        t = time.perf_counter()
        index, effective = faiss_backend.build_faiss_index(vectors, cfg, seed=args.seed)
        build_s = time.perf_counter() - t
        grown = rss_mb() - before
        size = index_bytes(index)
        entry: dict[str, Any] = {
            "effective": effective,
            "build_s": round(build_s, 2),
            "index_bytes": size,
            "index_mb": round(size / 2**20, 1),
            "rss_growth_mb": round(grown, 1),
            "settings": [],
        }
        sweep: list[dict[str, int]] = [{}]
        if kind == "hnsw":
            sweep = [{"ef_search": effective["ef_search"]}, {"ef_search": args.ef_search_high}]
        elif kind == "ivfpq":
            sweep = [{"nprobe": effective["nprobe"]}, {"nprobe": args.nprobe_high}]
        # FAISS's flat scan is slow for batches in this build (see flat_note), so it gets fewer queries.
        subset = queries[: args.flat_queries] if kind == "flat" else queries
        for params in sweep:
            faiss_backend.set_search_params(index, kind, **params)
            with faiss_backend.faiss_threads(args.threads or None):
                m = measure_queries(index, subset, args.k, args.single, args.batch)
                rows = m.pop("rows")
                m.update(params=params, queries=len(subset), **recall(rows, truth[: len(subset)], args.k))
                if kind != "flat":
                    m["recall_at_1_rerank32"] = rerank_recall(index, vectors, queries, truth, 32)
            entry["settings"].append(m)
            print(f"[n={n}] {kind} {params}: build {build_s:.1f}s, {m}", flush=True)
        out["kinds"][kind] = entry
        del index
        gc.collect()
    flat = out["kinds"].get("flat")
    if flat:
        base = flat["settings"][0]
        for entry in out["kinds"].values():
            s = entry["settings"][0]
            entry["vs_flat"] = {
                "single_speedup_p50": round(base["single"]["p50_ms"] / s["single"]["p50_ms"], 2),
                "batched_speedup_qps": round(s["batched"]["queries_per_s"] / base["batched"]["queries_per_s"], 2),
                "size_ratio": round(entry["index_bytes"] / flat["index_bytes"], 4),
                "build_ratio": round(entry["build_s"] / max(flat["build_s"], 1e-9), 1),
            }
    del data, vectors, queries
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"], choices=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--cluster-size", type=int, default=500, help="mean vectors per synthetic cluster")
    parser.add_argument("--spread", type=float, default=0.6, help="within-cluster spread (norm, low-dim part)")
    parser.add_argument("--sub-dim", type=int, default=8, help="dimension of each cluster's spread subspace")
    parser.add_argument("--noise", type=float, default=0.2, help="isotropic noise norm relative to the unit centre")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and batched latency")
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--flat-queries", type=int, default=256, help="batched queries for FAISS flat (slow)")
    parser.add_argument("--name", default="index", help="result file name (without .json)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-m", type=int, default=0, help="override HNSW M (0 = library default)")
    parser.add_argument(
        "--hnsw-ef-construction", type=int, default=0, help="override HNSW efConstruction (0 = library default)"
    )
    parser.add_argument("--ef-search-high", type=int, default=256)
    parser.add_argument("--nprobe-high", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0 = FAISS default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if "flat" not in args.kinds:
        parser.error("--kinds must include flat (it is the baseline)")
    args.kinds = ["flat", *[k for k in args.kinds if k != "flat"]]

    import faiss

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    sizes = [bench_size(n, args, rng) for n in args.sizes]
    figures = {
        "data": {
            "kind": "synthetic",
            "description": "random unit cluster centres + Gaussian spread in a per-cluster random low-dimensional "
            "subspace + small isotropic noise, renormalised; queries are fresh draws (not indexed). "
            "Not real report embeddings: absolute recall of approximate indexes depends on the data.",
            "dim": args.dim,
            "cluster_size": args.cluster_size,
            "spread": args.spread,
            "sub_dim": args.sub_dim,
            "noise": args.noise,
            "queries": args.queries,
            "seed": args.seed,
        },
        "k": args.k,
        "faiss_version": faiss.__version__,
        "faiss_threads": args.threads or faiss.omp_get_max_threads(),
        "faiss_blas_threshold": int(faiss.cvar.distance_compute_blas_threshold),
        "thread_env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "load_average_at_end": list(os.getloadavg()),
        "flat_note": "FAISS flat uses its BLAS path only for >= faiss_blas_threshold queries per call; below that "
        "(all batches here) it scans per query, so batching gives FAISS flat little; numpy_exact is a BLAS GEMM.",
        "hnsw_overrides": {"m": args.hnsw_m or None, "ef_construction": args.hnsw_ef_construction or None},
        "sizes": sizes,
        "total_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    path = write_result(args.out, args.name, figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
