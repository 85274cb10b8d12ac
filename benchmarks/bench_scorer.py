"""Hybrid scorer latency per query, old vs new scoring code on the same fitted scorer, at 807 and 10^6 cases.

Measures the scorer, not the text encoder: query vectors (packaged MiniLM) are computed once before timing.

* ``shipped``: the hybrid scorer of a ctrag index over the shipped corpus's 807 train cases (``--index``, e.g.
  ``demo_out/index`` from ``make demo``, written by the code before this change: it also checks that such an index
  still loads), or, without ``--index``, one fitted here on those cases with the library's defaults (MiniLM
  vectors, weight search). Queries: the 100 shipped CT-RATE val reports, one at a time, every row a candidate
  (``candidate_rows=None``, what the retriever passes below ``exact_limit``).
* ``synthetic_1m``: **synthetic** 10^6-row scorer made by replicating the 807 rows of the shipped one (reports,
  labels, BM25 weight rows, token sequences) with small Gaussian noise on the vectors (renormalised; cosine to the
  original ~0.995). Each query's candidate rows are what the retriever's FAISS step would hand the scorer above
  ``RetrievalConfig.exact_limit``: the ``n_search`` best rows by dense score (exact here), sorted, with
  ``n_search`` from ``RetrievalConfig.shortlist`` and the "nearest" strategy's needs as in
  ``Retriever._shortlist``. BM25 weights are copied rows, not refitted: with every report repeated equally often,
  the refitted idf would differ only in its +0.5 smoothing.
* ``synthetic_exact_limit``: the same replication at ``RetrievalConfig.exact_limit`` rows (200 000), the largest
  corpus the retriever scores *completely* per query (no FAISS step; also what "farthest"/"random" do at any
  size): ``candidate_rows=None``, ``--full-queries`` queries.
* old = ``benchmarks/baseline_hybrid.py`` (the scoring code before the change), new = ``HybridScorer.scores``; both
  score the same queries in the same process, alternating; the JSON records whether their scores are identical
  (max absolute difference) and their rankings equal.

Usage: ``python benchmarks/bench_scorer.py [--index demo_out/index] [--rows 1000000] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import latency_ms, peak_rss_mb, write_result
from baseline_hybrid import BaselineScorer

REPO = Path(__file__).resolve().parents[1]
VAL = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv"


def val_reports() -> list[str]:
    with open(VAL, encoding="utf-8", newline="") as fh:
        return [row["report_text"] for row in csv.DictReader(fh)]


def shipped_scorer(index_dir: Path | None) -> tuple[Any, str]:
    from ctrag.retrieval.hybrid import HybridScorer

    if index_dir is not None:
        from ctrag.index import CaseIndex

        index = CaseIndex.load(index_dir)
        folder = index.component_dir("hybrid")
        if folder is None:
            raise SystemExit(f"{index_dir} has no hybrid scorer; build it with `ctrag index ... --scorer hybrid`")
        return HybridScorer.load(folder), f"loaded from {index_dir} (written by ctrag before this change)"
    import tempfile

    from ctrag.data.ingest import ingest
    from ctrag.encoders.factory import create_encoder

    with tempfile.TemporaryDirectory() as tmp:
        corpus = ingest([REPO / "sample_data" / "ct", REPO / "sample_data" / "ct_rate_nc_sa"], tmp).corpus
        cases = [c for c in corpus if c.split == "train"]
    encoder = create_encoder("minilm")
    vectors = encoder.encode_text([c.report_text for c in cases])
    return HybridScorer.fit(cases, vectors), "fitted here on the shipped train cases (MiniLM, default weight search)"


def time_pair(
    old: BaselineScorer, new: Any, texts: list[str], emb: np.ndarray, rows: list[np.ndarray | None]
) -> dict[str, Any]:
    """Old and new on the same queries, one at a time, alternating (so load changes hit both alike)."""
    t_old: list[float] = []
    t_new: list[float] = []
    max_diff = 0.0
    same_rank = True
    for i, text in enumerate(texts):
        q = emb[i : i + 1]
        new.scores([text], q, rows[i])  # warm caches for this query's rows once for both
        t = time.perf_counter()
        a = old.scores([text], q, rows[i])
        t_old.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = new.scores([text], q, rows[i])
        t_new.append(time.perf_counter() - t)
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        same_rank &= bool(np.array_equal(np.argsort(-a[0], kind="stable"), np.argsort(-b[0], kind="stable")))
    old_p, new_p = latency_ms(t_old), latency_ms(t_new)
    return {
        "queries": len(texts),
        "candidates_per_query": int(np.median([len(new) if r is None else r.size for r in rows])),
        "old": old_p,
        "new": new_p,
        "speedup_p50": round(old_p["p50_ms"] / new_p["p50_ms"], 2),
        "identical": {"max_abs_score_diff": max_diff, "same_ranking": same_rank},
    }


def replicate(scorer: Any, n: int, noise: float, rng: np.random.Generator) -> tuple[Any, list[list[int]]]:
    """A ``n``-row scorer whose row i copies row ``i % len(scorer)`` (vectors with noise); see the module doc."""
    import scipy.sparse as sp

    from ctrag.retrieval.hybrid import HybridScorer, LcsTable
    from ctrag.retrieval.lexical import BM25Scorer

    base = len(scorer)
    src = np.arange(n) % base
    emb = np.empty((n, scorer.dim), dtype=np.float32)
    for start in range(0, n, 65536):
        part = scorer.embeddings[src[start : start + 65536]]
        part = part + rng.standard_normal(part.shape, dtype=np.float32) * np.float32(noise / math.sqrt(scorer.dim))
        emb[start : start + part.shape[0]] = part / np.linalg.norm(part, axis=1, keepdims=True)
    table = scorer.lcs_table
    reps = math.ceil(n / base)
    lengths = np.diff(table.offsets)
    offsets = np.concatenate([[0], np.cumsum(lengths[src])]).astype(np.int64)
    flat = np.tile(table.flat, reps)[: offsets[-1]]
    big_table = LcsTable._from_flat(table.vocab, flat, offsets, table.max_tokens)
    bm = scorer.bm25
    big_bm25 = BM25Scorer(bm.vocab, sp.csr_matrix(bm.weights[src]), bm.idf, bm.config) if bm is not None else None
    big = HybridScorer(
        config=scorer.config,
        weights=scorer.weights,
        label_model=scorer.label_model,
        bm25=big_bm25,
        embeddings=emb,
        cand_labels=scorer.cand_labels[src],
        labels_known=scorer.labels_known[src],
        lcs_table=big_table,
        case_ids=[f"syn{i // base}_{scorer.case_ids[i % base]}" for i in range(n)],
    )
    base_lists = [table.tokens(i) for i in range(base)]
    return big, [base_lists[i] for i in src]  # shared per-row lists for the old code (see BaselineScorer)


def shortlists(embeddings: np.ndarray, queries: np.ndarray) -> tuple[list[np.ndarray | None], int]:
    """The rows the retriever would score per query above ``exact_limit`` (k = 5, strategy "nearest")."""
    from ctrag.retrieval.retriever import RetrievalConfig
    from ctrag.retrieval.strategies import get_strategy

    cfg = RetrievalConfig()
    needed = get_strategy("nearest").shortlist_size(cfg.k, {})
    assert needed is not None
    n = embeddings.shape[0]
    n_search = min(n, math.ceil(max(needed, cfg.shortlist) / 1.0 * 1.25) + 16)  # every row is a candidate
    out: list[np.ndarray | None] = []
    for start in range(0, len(queries), 8):
        sims = queries[start : start + 8] @ embeddings.T
        top = np.argpartition(-sims, n_search - 1, axis=1)[:, :n_search]
        out.extend(np.sort(r).astype(np.int64) for r in top)
    return out, n_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=None, help="ctrag index with a hybrid scorer (807 cases)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic scorer (0: skip)")
    parser.add_argument("--full-queries", type=int, default=10, help="queries of the exact-limit full scan (0: skip)")
    parser.add_argument("--noise", type=float, default=0.1, help="norm of the noise added to replicated vectors")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    from ctrag.encoders.factory import create_encoder

    texts = val_reports()
    scorer, source = shipped_scorer(args.index)
    t = time.perf_counter()
    emb = np.asarray(create_encoder("minilm").encode_text(texts), dtype=np.float32)
    print(f"{len(texts)} val reports embedded in {time.perf_counter() - t:.1f}s (not part of any timing)", flush=True)
    figures: dict[str, Any] = {
        "goal": "p50 <= 20 ms at the shipped 807 cases, <= 50 ms at 10^6 cases; identical results",
        "queries": "the 100 shipped CT-RATE val reports (sample_data/.../val.csv), one per call",
        "query_vectors": "packaged MiniLM, computed before timing (the scorer is measured, not the encoder)",
        "baseline": "benchmarks/baseline_hybrid.py: the scoring code before this change, same fitted scorer",
        "scorer": {"source": source, "rows": len(scorer), "weights": repr(scorer)},
    }
    old = BaselineScorer(scorer)
    figures["shipped"] = time_pair(old, scorer, texts, emb, [None] * len(texts))
    print("shipped", figures["shipped"], flush=True)

    if args.rows:
        t = time.perf_counter()
        big, lists = replicate(scorer, args.rows, args.noise, np.random.default_rng(0))
        build_s = time.perf_counter() - t
        rows, n_search = shortlists(big.embeddings, emb)
        figures["synthetic_1m"] = {
            "data": (
                f"SYNTHETIC: the {len(scorer)} shipped rows replicated to {args.rows} (vectors + Gaussian noise of "
                f"norm {args.noise}, renormalised; labels, BM25 weight rows, token sequences copied)"
            ),
            "rows": args.rows,
            "build_s": round(build_s, 1),
            "candidate_rows": f"the {n_search} best rows by dense score, sorted (the retriever's FAISS shortlist)",
            **time_pair(BaselineScorer(big, lists), big, texts, emb, rows),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        del big, lists, rows
        print("synthetic", figures["synthetic_1m"], flush=True)
    if args.full_queries:
        from ctrag.retrieval.retriever import RetrievalConfig

        n_full = RetrievalConfig().exact_limit
        big, lists = replicate(scorer, n_full, args.noise, np.random.default_rng(1))
        k = args.full_queries
        figures["synthetic_exact_limit"] = {
            "data": f"SYNTHETIC: as synthetic_1m, {n_full} rows (RetrievalConfig.exact_limit)",
            "rows": n_full,
            "candidate_rows": "None: every row scored (the retriever's exact path up to exact_limit)",
            **time_pair(BaselineScorer(big, lists), big, texts[:k], emb[:k], [None] * k),
        }
        del big, lists
        print("exact limit", figures["synthetic_exact_limit"], flush=True)
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(write_result(args.out, "scorer", figures))


if __name__ == "__main__":
    main()
