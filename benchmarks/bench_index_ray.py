"""Embedding throughput of ``ctrag index --engine ray`` (2 local workers) vs ``--engine local``, same reports.

The reports are the shipped CT-RATE train split (``sample_data/ct_rate_nc_sa/ct_clip_text_classifier``, 800
real reports), the encoder the default ``minilm`` from the factory. In one script, on the same texts:

* local: :func:`ctrag.index.embed_texts` in this process (torch's default threads);
* ray, cold: :class:`ctrag.index.ray_embed.RayEmbedder` into an empty work folder, a local cluster of
  ``--workers`` CPUs started by the engine (cluster start and each worker's encoder load included);
* ray, steady state: shards/s between the first and the last finished shard of that job (what a long job
  sees once its workers are up), and the seconds to the first finished shard (the fixed start-up);
* ray, resume: the same job again over the finished work folder (no shard embedded, Ray not started);
* identity: largest |difference| between the two engines' vectors, whether they are bit for bit equal, and
  whether flat-index top-10 neighbours of every row agree.

Usage: ``python benchmarks/bench_index_ray.py [--n 800] [--shard-size 64] [--workers 2] [--out benchmarks/results]``.
Absolute numbers depend on the machine and its load (both recorded); the ratio ray / local is the figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, write_result

REPO = Path(__file__).resolve().parents[1]
CT_RATE = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800, help="train reports (0 = all)")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np

    from ctrag.data.ct_rate import read_ctclip_classifier
    from ctrag.encoders.factory import create_encoder
    from ctrag.index import CaseIndex, embed_texts
    from ctrag.index.ray_embed import SHARD_STAGE, EncoderSpec, RayEmbedConfig, RayEmbedder

    cases = [c for c in read_ctclip_classifier(CT_RATE) if c.split == "train" and c.has_report]
    cases = cases[: args.n] if args.n > 0 else cases
    texts = [c.report_text for c in cases]
    load_before = os.getloadavg()

    encoder = create_encoder(args.encoder)
    t0 = time.perf_counter()
    local = embed_texts(encoder, texts, batch_size=args.batch_size)
    local_s = time.perf_counter() - t0
    n_shards = -(-len(texts) // args.shard_size)

    ticks: list[tuple[float, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == SHARD_STAGE:
            ticks.append((time.perf_counter(), done))

    cfg = RayEmbedConfig(shard_size=args.shard_size, batch_size=args.batch_size, workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as work:
        engine = RayEmbedder.for_encoder(encoder, EncoderSpec(args.encoder), work_dir=work, config=cfg)
        t0 = time.perf_counter()
        remote = engine(texts, progress)
        cold_s = time.perf_counter() - t0
        job = engine.last
        assert job is not None
        first = next(t for t, done in ticks if done >= 1)
        last = ticks[-1][0]
        steady = (n_shards - 1) / (last - first) if last > first else float("nan")
        t0 = time.perf_counter()
        again = engine(texts)
        resume_s = time.perf_counter() - t0
        resumed = engine.last
        assert resumed is not None and not resumed.embedded and np.array_equal(again, remote)

    diff = float(np.max(np.abs(remote - local)))
    idx_local = CaseIndex.build(local, cases, encoder_fingerprint=encoder.fingerprint, encoder_name=encoder.name)
    idx_ray = CaseIndex.build(remote, cases, encoder_fingerprint=encoder.fingerprint, encoder_name=encoder.name)
    same_top10 = bool(np.array_equal(idx_local.search(local, 10)[1], idx_ray.search(local, 10)[1]))
    figures: dict[str, Any] = {
        "reports": len(texts),
        "source": "sample_data/ct_rate_nc_sa/ct_clip_text_classifier train split (real CT-RATE reports)",
        "encoder": f"{encoder.name} ({encoder.fingerprint})",
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "shards": n_shards,
        "workers": args.workers,
        "load_average_before": [round(x, 2) for x in load_before],
        "local": {
            "seconds": round(local_s, 2),
            "reports_per_s": round(len(texts) / local_s, 2),
            "shards_per_s": round(n_shards / local_s, 3),
        },
        "ray_cold": {
            "seconds": round(cold_s, 2),
            "reports_per_s": round(len(texts) / cold_s, 2),
            "shards_per_s": round(n_shards / cold_s, 3),
            "seconds_to_first_shard": round(first - ticks[0][0], 2),  # cluster start + encoder loads + 1 shard
            "worker_embed_seconds": round(job.embed_seconds, 2),
        },
        "ray_steady_shards_per_s": round(steady, 3),
        "ray_steady_reports_per_s": round(steady * args.shard_size, 2),
        "ray_resume_seconds": round(resume_s, 3),
        "ratio_ray_cold_over_local_throughput": round(local_s / cold_s, 3),
        "ratio_ray_steady_over_local_throughput": round(steady * args.shard_size / (len(texts) / local_s), 3),
        "identity": {
            "max_abs_diff": diff,
            "bit_for_bit": bool(np.array_equal(remote, local)),
            "flat_top10_equal": same_top10,
        },
        "peak_rss_mb_driver": round(peak_rss_mb(), 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    out = write_result(args.out, "index_ray", figures)
    print(out)
    for key in ("local", "ray_cold", "ray_steady_shards_per_s", "ray_resume_seconds", "identity"):
        print(key, figures[key])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
