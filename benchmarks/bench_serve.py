"""The warm service against the cold CLI: search latency over HTTP, and generation jobs per minute.

One script, one machine, the demo's outputs (`make demo` first):
* ``warm``: ``ctrag serve``'s app under uvicorn on loopback (models loaded once), ``POST /api/search`` for
  ``--queries`` real CT-RATE val reports, one keep-alive client, sequential; p50 / p99 per request;
* ``in_process``: the same queries through the service's retriever without HTTP (what HTTP adds);
* ``cold_cli``: ``ctrag search --json`` as a fresh process for ``--cold-runs`` of the same reports (what a user
  without the service waits);
* ``jobs``: ``--jobs`` generation jobs (tiny preset, its 30 steps and CFG 5.0) submitted at once; jobs per minute
  from the first submission to the last success.

Usage: ``python benchmarks/bench_serve.py [--demo-out demo_out] [--queries 200] [--cold-runs 5] [--jobs 10]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import latency_ms, write_result

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    demo = args.demo_out
    if not (demo / "index").is_dir() or not (demo / "generator").is_dir():
        print(f"error: {demo} has no index/ and generator/; run `make demo` first", file=sys.stderr)
        return 2

    import httpx
    import torch
    import uvicorn

    from ctrag.serve.app import create_app
    from ctrag.serve.config import ServeConfig
    from ctrag.serve.service import CtragService

    torch.set_num_threads(args.threads)
    with REPORTS.open(newline="", encoding="utf-8") as fh:
        reports = [row["report_text"] for row in csv.DictReader(fh) if row["report_text"].strip()]
    queries = [reports[i % len(reports)] for i in range(args.queries)]

    with tempfile.TemporaryDirectory(prefix="ctrag-bench-serve-") as scratch:
        config = ServeConfig(
            index_dir=demo / "index", weights_dir=demo / "generator", corpus_dir=demo / "corpus",
            out_dir=Path(scratch), port=18000 + (int(time.time()) % 1000), max_queued=max(4, args.jobs),
        )  # fmt: skip
        t0 = time.perf_counter()
        service = CtragService(config)
        service.load()
        load_s = time.perf_counter() - t0
        server = uvicorn.Server(uvicorn.Config(create_app(config, service), host="127.0.0.1", port=config.port,
                                               log_level="warning"))  # fmt: skip
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{config.port}"
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                client.post("/api/search", json={"text": queries[0], "k": 5}).raise_for_status()  # warm-up
                warm: list[float] = []
                for text in queries:
                    start = time.perf_counter()
                    client.post("/api/search", json={"text": text, "k": 5}).raise_for_status()
                    warm.append(time.perf_counter() - start)
                in_process: list[float] = []
                for text in queries:
                    start = time.perf_counter()
                    service.search({"text": text, "k": 5})
                    in_process.append(time.perf_counter() - start)

                submitted = time.perf_counter()
                ids = [
                    client.post("/api/jobs", json={"report": reports[i % len(reports)], "seed": i}).json()["job_id"]
                    for i in range(args.jobs)
                ]
                pending = set(ids)
                while pending:
                    for job_id in list(pending):
                        state = client.get(f"/api/jobs/{job_id}").json()["state"]
                        if state == "succeeded":
                            pending.discard(job_id)
                        elif state in ("failed", "cancelled"):
                            raise RuntimeError(f"job {job_id} {state}")
                    time.sleep(0.05)
                jobs_s = time.perf_counter() - submitted
                steps = service.pipeline.config.sampler.steps
        finally:
            server.should_exit = True
            thread.join(30)

    exe = Path(sys.executable).with_name("ctrag")
    cold: list[float] = []
    for text in queries[: args.cold_runs]:
        start = time.perf_counter()
        subprocess.run([str(exe), "search", "--index", str(demo / "index"), "--json", "--k", "5", text],
                       check=True, capture_output=True)  # fmt: skip
        cold.append(time.perf_counter() - start)

    warm_stats, cold_median = latency_ms(warm), statistics.median(cold)
    figures = {
        "demo_out": os.path.relpath(demo, REPO),
        "service_load_seconds": round(load_s, 2),
        "search_warm_http": warm_stats,
        "search_in_process": latency_ms(in_process),
        "search_cold_cli": {"n": len(cold), "median_s": round(cold_median, 3), "runs_s": [round(c, 3) for c in cold]},
        "cold_cli_over_warm_p50": round(cold_median / (warm_stats["p50_ms"] / 1000.0), 1),
        "jobs": {
            "n": args.jobs,
            "steps": steps,
            "wall_s": round(jobs_s, 2),
            "jobs_per_minute": round(60.0 * args.jobs / jobs_s, 1),
            "torch_threads": args.threads,
        },
    }
    path = write_result(args.out, "serve", figures)
    print(f"warm p50 {warm_stats['p50_ms']} ms / p99 {warm_stats['p99_ms']} ms; cold CLI {cold_median:.2f} s; "
          f"{figures['jobs']['jobs_per_minute']} jobs/min -> {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
