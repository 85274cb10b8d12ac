"""Text-encoding throughput of the default encoder on real CT-RATE reports (shipped sample, 800 + 100 rows).

Measures, in one process on the same reports:
* reports/s and sentences/s for ``long_text="truncate"`` and ``"chunk-mean"`` at several batch sizes, plus the
  number of sentence windows per report that chunk-mean embeds;
* the cost ratio chunk-mean / truncate (same batch size);
* the embedding-cache speed-up: encoding through an empty cache (all misses) vs the same call again (all hits),
  as a ratio.

Usage: ``python benchmarks/bench_text_encoding.py [--n 300] [--batch-sizes 16 64] [--out benchmarks/results]``.
Absolute numbers depend on the machine (recorded in the JSON); compare the ratios.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, write_result

REPO = Path(__file__).resolve().parents[1]
CT_RATE = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"


def load_reports(n: int) -> list[str]:
    texts: list[str] = []
    for name in ("train.csv", "val.csv"):
        with open(CT_RATE / name, encoding="utf-8", newline="") as fh:
            texts.extend(row["report_text"] for row in csv.DictReader(fh) if row["report_text"].strip())
    return texts[:n] if n > 0 else texts


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of reports (0 = all 900)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ctrag.encoders import EmbeddingCache, create_encoder, encode_text_cached
    from ctrag.encoders.long_text import chunk_texts, split_sentences

    reports = load_reports(args.n)
    n_sentences = sum(len(split_sentences(t)) for t in reports)
    chars = sum(len(t) for t in reports)
    encoders = {mode: create_encoder("minilm", long_text=mode) for mode in ("truncate", "chunk-mean")}
    chunk_enc = encoders["chunk-mean"]
    windows, _ = chunk_texts(reports, chunk_enc.count_tokens, chunk_enc.max_tokens)  # type: ignore[attr-defined]
    tokens = chunk_enc.count_tokens(reports)  # type: ignore[attr-defined]

    # warm-up (first call pays one-off costs: thread pools, tokenizer caches)
    encoders["truncate"].encode_text(reports[:8])

    runs = []
    for batch_size in args.batch_sizes:
        for mode, enc in encoders.items():
            _, seconds = timed(enc.encode_text, reports, batch_size=batch_size)
            runs.append(
                {
                    "mode": mode,
                    "batch_size": batch_size,
                    "seconds": round(seconds, 3),
                    "reports_per_s": round(len(reports) / seconds, 2),
                    "sentences_per_s": round(n_sentences / seconds, 1),
                    "windows_embedded": len(windows) if mode == "chunk-mean" else len(reports),
                }
            )
            print(
                f"{mode:10s} batch {batch_size:3d}: {len(reports) / seconds:7.2f} reports/s, "
                f"{n_sentences / seconds:8.1f} sentences/s",
                flush=True,
            )
    ratios = {}
    for batch_size in args.batch_sizes:
        t = {r["mode"]: r["seconds"] for r in runs if r["batch_size"] == batch_size}
        ratios[f"chunk_mean_over_truncate_time_bs{batch_size}"] = round(t["chunk-mean"] / t["truncate"], 3)

    # cache: cold (all misses) vs warm (all hits), same encoder, same reports
    with tempfile.TemporaryDirectory() as tmp, EmbeddingCache(Path(tmp) / "cache.sqlite") as cache:
        enc = encoders["truncate"]
        cold_vec, cold = timed(encode_text_cached, enc, reports, cache, max(args.batch_sizes))
        warm_vec, warm = timed(encode_text_cached, enc, reports, cache, max(args.batch_sizes))
        identical = bool((cold_vec == warm_vec).all())
        cache_rows = cache.count()
    cache_fig = {
        "cold_seconds": round(cold, 3),
        "warm_seconds": round(warm, 4),
        "speedup_ratio": round(cold / warm, 1),
        "warm_reports_per_s": round(len(reports) / warm, 1),
        "vectors_identical": identical,
        "rows": cache_rows,
    }
    print(f"cache: cold {cold:.2f}s, warm {warm:.4f}s -> {cold / warm:.0f}x", flush=True)

    figures = {
        "data": {
            "source": "sample_data/ct_rate_nc_sa/ct_clip_text_classifier/{train,val}.csv (real CT-RATE reports)",
            "reports": len(reports),
            "sentences": n_sentences,
            "mean_chars": round(chars / len(reports), 1),
            "mean_tokens": round(sum(tokens) / len(tokens), 1),
            "max_tokens": max(tokens),
            "window_tokens": chunk_enc.max_tokens,  # type: ignore[attr-defined]
            "reports_over_window": sum(1 for t in tokens if t > chunk_enc.max_tokens),  # type: ignore[attr-defined]
            "chunk_windows_per_report": round(len(windows) / len(reports), 3),
        },
        "encoder": {mode: enc.fingerprint for mode, enc in encoders.items()},
        "runs": runs,
        "ratios": ratios,
        "cache": cache_fig,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    path = write_result(args.out, "bench_text_encoding", figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
