"""Text-encoder throughput and retrieval quality: today's MiniLM (torch), its ONNX export, the static encoder.

Issue 11, item 2: >= 3x today's reports/s on 2 cores, measured against today's encoder in the same run.

Speed: the same shipped train reports (default 200) are embedded by each encoder in interleaved rounds (the
order rotates every round, so machine load drifting during the run hits every encoder alike); each encoder's
figure is the median over rounds, and the speed-up is the median of the per-round ratios. torch and ONNX Runtime
get ``--threads`` threads; the static encoder is single-threaded numpy + tokenizers. MiniLM reads the first 256
tokens of a report (its window); the static encoder reads all of them.

Quality: :func:`ctrag.evaluation.retrieval_eval.evaluate_retrieval` (what ``ctrag evaluate retrieval`` runs) for
MiniLM and for the static encoder: the shipped val reports query an index of the train reports; top-1 / top-5
label-Jaccard and ROUGE-L@1, dense cosine alone and through ctrag's default hybrid scorer (Retriever).

The static encoder is distilled here first (``--static DIR`` reuses a folder written by ``ctrag encoders
distill-static``). Its frequency weights come from the train reports only.

Usage: ``python benchmarks/bench_text_encoder_speed.py [--n 200] [--rounds 3] [--threads 2] [--static DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb, write_result

REPO = Path(__file__).resolve().parents[1]
CT_RATE = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"
QUALITY_KEYS = ("label_jaccard@1", "label_jaccard@5", "rouge_l@1")


def _quality(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, label in (("minilm", "dense"), ("default", "hybrid")):  # "minilm" = plain cosine of this encoder
        summary = result.method(method)
        out[label] = {key: {"mean": round(summary[key]["mean"], 4),
                            "ci95": [round(v, 4) for v in summary[key]["ci95"]]} for key in QUALITY_KEYS}  # fmt: skip
    return out


def _paired_top1(results: dict[str, Any], data: Any, bootstrap: int, seed: int) -> dict[str, Any]:
    """Static minus MiniLM per query on the top-1 metrics, with a paired bootstrap CI (same resamples for both)."""
    from ctrag.evaluation.metrics.retrieval import mean_jaccard_at_k
    from ctrag.evaluation.metrics.text import rouge_l
    from ctrag.evaluation.retrieval_eval import _labels
    from ctrag.evaluation.stats import BootstrapPlan

    by_id = {c.case_id: c for c in data.index_cases}
    queries = data.query_cases
    plan = BootstrapPlan.make(len(queries), bootstrap, seed)
    q_labels = _labels(queries)
    out: dict[str, Any] = {}
    for method, label in (("minilm", "dense"), ("default", "hybrid")):
        per: dict[str, dict[str, np.ndarray]] = {}
        for enc, result in results.items():
            top1 = [by_id[i] for i in result.method(method)["top1_case_ids"]]
            per[enc] = {
                "label_jaccard@1": mean_jaccard_at_k(q_labels, _labels(top1)[:, None, :], 1),
                "rouge_l@1": rouge_l([c.report_text for c in queries], [c.report_text for c in top1]),
            }
        out[label] = {}
        for key in ("label_jaccard@1", "rouge_l@1"):
            diff = per["static"][key] - per["minilm_torch"][key]
            lo, hi = plan.ci(diff)
            out[label][key] = {"mean": round(float(diff.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)]}
        same = sum(a == b for a, b in zip(*(r.method(method)["top1_case_ids"] for r in results.values()), strict=True))
        out[label]["same_top1_share"] = round(same / len(queries), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="train reports embedded per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the quality CIs")
    parser.add_argument("--static", type=Path, default=None, help="reuse this static encoder folder")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    torch.set_num_threads(args.threads)

    from ctrag.data.ct_rate import read_ctclip_classifier
    from ctrag.encoders import create_encoder
    from ctrag.encoders.onnx_text import OnnxTextEncoder, export_text_encoder
    from ctrag.encoders.static_text import StaticTextEncoder, distill_static_encoder
    from ctrag.encoders.text import one_truncation_warning

    cases = read_ctclip_classifier(CT_RATE, patient_level_split=False)
    train_texts = [c.report_text for c in cases if c.split == "train" and c.report_text.strip()]
    reports = train_texts[: args.n]
    minilm = create_encoder("minilm")
    scratch = tempfile.TemporaryDirectory(prefix="bench-text-speed-")
    distill_seconds = None
    if args.static is None:
        t0 = time.perf_counter()
        static_dir = distill_static_encoder(cases, Path(scratch.name) / "minilm-static", source=minilm)  # type: ignore[arg-type]
        distill_seconds = round(time.perf_counter() - t0, 1)
        print(f"distilled the static encoder in {distill_seconds} s", flush=True)
    else:
        static_dir = args.static
    static = StaticTextEncoder(static_dir)
    onnx = OnnxTextEncoder(export_text_encoder(minilm, reports[:32], Path(scratch.name) / "onnx").folder,
                           threads=args.threads)  # fmt: skip
    encoders: dict[str, Any] = {"minilm_torch": minilm, "minilm_onnx": onnx, "static": static}
    for enc in encoders.values():  # warm-up: thread pools, tokenizer caches, first-call allocations
        with one_truncation_warning(enc):
            enc.encode_text(reports[:16])

    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    names = list(encoders)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            enc = encoders[name]
            with one_truncation_warning(enc):
                t0 = time.perf_counter()
                enc.encode_text(reports)
                seconds[name].append(time.perf_counter() - t0)
            print(f"round {r + 1} {name:13s} {len(reports) / seconds[name][-1]:9.1f} reports/s", flush=True)
    speed = {
        name: {
            "seconds_per_round": [round(s, 3) for s in values],
            "reports_per_s_median": round(len(reports) / statistics.median(values), 2),
        }
        for name, values in seconds.items()
    }

    def ratio(fast: str, slow: str) -> float:
        return round(statistics.median(s / f for f, s in zip(seconds[fast], seconds[slow], strict=True)), 1)

    tokens = static.count_tokens(reports)
    figures: dict[str, Any] = {
        "goal": "static encoder reports/s >= 3x today's MiniLM (torch) on the same reports, same run, 2 cores",
        "data": {
            "source": "sample_data/ct_rate_nc_sa/ct_clip_text_classifier/train.csv (real CT-RATE reports)",
            "reports": len(reports),
            "mean_tokens": round(sum(tokens) / len(tokens), 1),
            "max_tokens": max(tokens),
            "reports_over_minilm_window": sum(1 for n in tokens if n > minilm.max_tokens),  # type: ignore[attr-defined]
            "minilm_window_tokens": minilm.max_tokens,  # type: ignore[attr-defined]
        },
        "setup": {
            "rounds": args.rounds,
            "order": "rotated every round",
            "torch_threads": torch.get_num_threads(),
            "onnx_threads": args.threads,
            "static": "single-threaded numpy + tokenizers, whole reports",
        },
        "encoders": {name: {"fingerprint": enc.fingerprint, "dim": enc.dim} for name, enc in encoders.items()},
        "static_encoder": {
            "settings": static.manifest["settings"],
            "pca": static.manifest["pca"],
            "weights_counted_on": static.manifest["weights_counted_on"],
            "distill_seconds": distill_seconds,
        },
        "speed": speed,
        "speedup": {
            "static_over_minilm_torch": ratio("static", "minilm_torch"),
            "static_over_minilm_onnx": ratio("static", "minilm_onnx"),
            "onnx_over_minilm_torch": ratio("minilm_onnx", "minilm_torch"),
        },
    }
    figures["goal_met"] = figures["speedup"]["static_over_minilm_torch"] >= 3.0
    print(f"speed-up static / MiniLM torch: {figures['speedup']['static_over_minilm_torch']}x", flush=True)

    if not args.skip_quality:
        from ctrag.evaluation.retrieval_eval import RetrievalEvalConfig, evaluate_retrieval, load_ctclip_eval_data

        data = load_ctclip_eval_data(CT_RATE)
        eval_cfg = RetrievalEvalConfig(bootstrap=args.bootstrap, ablations=False)
        quality: dict[str, Any] = {
            "protocol": "ctrag evaluate retrieval: shipped val reports query the train index (patients shared "
            "with val removed); dense = cosine of the encoder's vectors, hybrid = ctrag's default "
            "HybridScorer through Retriever; mean and 95% bootstrap CI over queries",
            "queries": len(data.query_cases),
            "index_rows": len(data.index_cases),
        }
        results = {}
        for name in ("minilm_torch", "static"):
            t0 = time.perf_counter()
            with one_truncation_warning(encoders[name]):
                results[name] = evaluate_retrieval(data, encoders[name], config=eval_cfg)
            quality[name] = _quality(results[name])
            quality[name]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"quality {name}: {quality[name]}", flush=True)
        quality["static_minus_minilm"] = {
            mode: {key: round(quality["static"][mode][key]["mean"] - quality["minilm_torch"][mode][key]["mean"], 4)
                   for key in QUALITY_KEYS}
            for mode in ("dense", "hybrid")
        }  # fmt: skip
        quality["static_minus_minilm_paired_top1"] = _paired_top1(results, data, args.bootstrap, eval_cfg.seed)
        print(f"paired top-1 differences: {quality['static_minus_minilm_paired_top1']}", flush=True)
        figures["quality"] = quality
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    path = write_result(args.out, "text_encoder_speed", figures)
    scratch.cleanup()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
