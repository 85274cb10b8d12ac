"""Cold start of ``ctrag search``: a fresh process answering one real report, against bare imports.

Variants, run as fresh processes in interleaved rounds so machine load hits each alike:
* ``search_onnx``: ``ctrag search --json`` on an index that stores its encoder as ONNX (the default since
  ``ctrag index`` writes ``text_encoder_onnx/``): onnxruntime + tokenizers, no torch;
* ``search_torch``: the same command with ``--no-onnx`` (the recorded encoder built with torch + transformers);
* ``import_torch_faiss``: ``python -c "import torch, faiss"``, the floor of any torch-based search (the baseline the
  issue states its goals against: <= 1.5x, and <= 0.5x for a torch-free path).
Both searches must return the same ranking (checked here, scores within 1e-4).

Usage: ``python benchmarks/bench_search_cold_start.py [--index demo_out/index] [--rounds 5]`` (``make demo`` first).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv"


def timed(command: list[str]) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - start, out.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=REPO / "demo_out" / "index")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not any(args.index.glob("*/text_encoder_onnx/onnx_encoder.json")):
        print(f"error: {args.index} stores no ONNX encoder; rebuild it with `ctrag index` (or run make demo)",
              file=sys.stderr)  # fmt: skip
        return 2
    with open(REPORTS, encoding="utf-8", newline="") as fh:
        report = next(csv.DictReader(fh))["report_text"]
    ctrag = str(Path(sys.executable).with_name("ctrag"))
    search = [ctrag, "search", report, "--index", str(args.index), "--json", "--k", "5"]
    variants = {
        "search_onnx": search,
        "search_torch": [*search, "--no-onnx"],
        "import_torch_faiss": [sys.executable, "-c", "import torch, faiss"],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, command in variants.items():
            seconds, stdout = timed(command)
            times[name].append(round(seconds, 3))
            outputs[name] = stdout
    hits = {name: json.loads(outputs[name])["hits"] for name in ("search_onnx", "search_torch")}
    same_ranking = [h["case_id"] for h in hits["search_onnx"]] == [h["case_id"] for h in hits["search_torch"]]
    pairs = zip(hits["search_onnx"], hits["search_torch"], strict=True)
    score_gap = max(abs(a["score"] - b["score"]) for a, b in pairs)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "index": os.path.relpath(args.index, REPO),
        "rounds": args.rounds,
        "median_seconds": median,
        "all_seconds": times,
        "ratio_search_onnx_over_import_torch_faiss": round(median["search_onnx"] / median["import_torch_faiss"], 3),
        "ratio_search_torch_over_import_torch_faiss": round(median["search_torch"] / median["import_torch_faiss"], 3),
        "speedup_onnx_over_torch_search": round(median["search_torch"] / median["search_onnx"], 2),
        "same_ranking": same_ranking,
        "max_score_gap": score_gap,
    }
    if not same_ranking or score_gap > 1e-4:
        print("error: the ONNX and torch searches disagree", file=sys.stderr)
        return 1
    path = write_result(args.out, "search_cold_start", result)
    print(json.dumps({k: v for k, v in result.items() if k != "all_seconds"}, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
