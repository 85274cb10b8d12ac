"""Regenerate docs/results/report_generation_tiny.{md,json}: retrieval-only reports for the 100 shipped CT-RATE val
reports, built from the 800 train reports only, scored with ctrag's report metrics.

    PYTHONPATH=src python scripts/report_generation_eval.py [--out docs/results] [--bootstrap 1000]

Text-to-text retrieval: the query is the val report itself (no shipped CT is paired with its own report), so this
is an upper-bound-like setting for a retrieval reporter, not image-to-text report generation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.data.case import Case
from ctrag.encoders.factory import create_encoder
from ctrag.evaluation.report_bootstrap import METEOR_PER_REPORT, ReportStatistics, bootstrap_report_metrics
from ctrag.evaluation.report_metrics import LANGUAGE_METRIC_TITLES, clinical_efficacy, evaluate_reports, tokenize
from ctrag.evaluation.retrieval_eval import load_ctclip_eval_data
from ctrag.index import CaseIndex
from ctrag.labels.ct_rate import fit_on_train, read_split
from ctrag.reporting.retrieval_reporter import RetrievalReportConfig, RetrievalReporter
from ctrag.retrieval.retriever import Retriever
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.jsonable import jsonable

DATA = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")
COMMAND = "PYTHONPATH=src python scripts/report_generation_eval.py --out docs/results"
METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
TITLES = {**LANGUAGE_METRIC_TITLES, "ce_precision_micro": "CE P", "ce_recall_micro": "CE R", "ce_f1_micro": "CE F1"}
REFERENCE = "nearest train report"  # differences are taken against the simplest retrieval reporter


def score(
    name: str, refs: list[str], hyps: list[str], ref_labels: np.ndarray, gt_labels: np.ndarray, extractor: Any
) -> tuple[dict[str, Any], ReportStatistics]:
    """All metrics of one method and the per-report statistics its CIs are resampled from. CE compares the
    extractor's labels of hypothesis and reference (the usual protocol, as ``ctrag evaluate reports``), and, in
    the JSON, the hypothesis labels with the ground truth."""
    s = evaluate_reports(refs, hyps, label_extractor=None, meteor=True)
    rec: dict[str, Any] = {k: v for k, v in s.as_dict().items() if k != "notes"}
    rec["notes"] = {k: v for k, v in s.notes.items() if k != "clinical_efficacy"}
    hyp_labels = extractor.predict(hyps).astype(int)
    rec["clinical_efficacy"] = clinical_efficacy(ref_labels, hyp_labels)
    rec["clinical_efficacy_vs_ground_truth"] = clinical_efficacy(gt_labels, hyp_labels)
    rec["mean_words"] = float(np.mean([len(tokenize(h).split()) for h in hyps]))
    rec["name"] = name
    assert s.statistics is not None
    return rec, s.statistics.with_labels(ref_labels, hyp_labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = load_ctclip_eval_data(DATA)
    train, val = data.index_cases, data.query_cases
    encoder = create_encoder("minilm")
    enc = encoder[0] if isinstance(encoder, tuple) else encoder
    emb = enc.encode_text([c.report_text for c in train])
    index = CaseIndex.build(
        emb, train, encoder_fingerprint=enc.fingerprint, encoder_name=enc.name, encoder_spec={"name_or_path": "minilm"}
    )
    reporter = RetrievalReporter(Retriever(index, enc), RetrievalReportConfig())
    refs = [c.report_text for c in val]
    extractor = fit_on_train(DATA, seed=args.seed)
    val_labelled = read_split(DATA, "val")
    assert val_labelled.case_ids == [c.case_id for c in val], "val order differs between readers"
    ref_labels = extractor.predict(refs).astype(int)

    runs: dict[str, list[str]] = {}
    sources: dict[str, list[list[str]]] = {}
    rng = np.random.default_rng(args.seed)
    random_cases: list[Case] = [train[int(i)] for i in rng.integers(0, len(train), size=len(val))]
    runs["random train report"] = [c.report_text for c in random_cases]
    sources["random train report"] = [[c.case_id] for c in random_cases]
    timings = {}
    for mode, label in (("nearest", "nearest train report"), ("compose", "composed (region MMR)")):
        t = time.perf_counter()
        reps = reporter.report_for_cases(val, mode=mode)  # type: ignore[arg-type]
        timings[label] = time.perf_counter() - t
        for c, r in zip(val, reps, strict=True):  # the guard, once more, on what each report is made of
            assert all(s.split == "train" and s.patient_id != c.patient_id for s in r.sentences)
        runs[label] = [r.findings + " " + r.impression for r in reps]
        sources[label] = [sorted({s.case_id for s in r.sentences}) for r in reps]
    scored = {n: score(n, refs, h, ref_labels, val_labelled.labels, extractor) for n, h in runs.items()}
    boot = bootstrap_report_metrics(
        {n: st for n, (_, st) in scored.items()}, n_resamples=args.bootstrap, seed=args.seed, reference=REFERENCE
    )
    results = []
    for name, (rec, _) in scored.items():
        rec["ci95"] = boot["ci"].get(name, {})
        rec["difference"] = boot["difference"].get(name)
        results.append(rec)
    gt_ce = clinical_efficacy(val_labelled.labels, ref_labels)
    record = {
        "command": COMMAND,
        "setting": "text-to-text retrieval: query = the val report itself; sources = train reports only",
        "n_val": len(val),
        "n_train_sources": len(train),
        "removed_from_sources": data.removed_from_index,
        "encoder": {"name": enc.name, "fingerprint": enc.fingerprint},
        "reporter_config": reporter.config.__dict__,
        "label_extractor": {
            "class": "ctrag.labels.LabelExtractor",
            "fitted_on": "train.csv (train reports of val patients left out)",
            "fingerprint": extractor.fingerprint(),
            "thresholds": "per-label, tuned on train out-of-fold",
            "ce_reference": "CE compares extractor(generated) with extractor(val reference); "
            "clinical_efficacy_vs_ground_truth compares it with the val ground-truth labels",
            "extractor_vs_ground_truth_on_val_refs": gt_ce,
        },
        "bootstrap": {
            "resamples": args.bootstrap,
            "seed": args.seed,
            "confidence": 0.95,
            "paired": True,
            "reference": REFERENCE,
            "approximate": boot["approximate"],
        },
        "results": results,
        "source_cases_per_report": {k: float(np.mean([len(s) for s in v])) for k, v in sources.items()},
        "seconds": {**timings, "total": time.perf_counter() - t0},
        # case ids only: CT-RATE text (CC BY-NC-SA 4.0) stays under sample_data/ct_rate_nc_sa/
        "example_sources": {"val_case": val[0].case_id, **{k: v[0] for k, v in sources.items()}},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "report_generation_tiny.json", json.dumps(jsonable(record), indent=1) + "\n")
    atomic_write_text(args.out / "report_generation_tiny.md", render(record))
    print(render(record))


def _fmt(rec: dict[str, Any], key: str) -> str:
    v = rec.get(key) if not key.startswith("ce_") else rec["clinical_efficacy"].get(key[3:])
    if v is None:
        return "n/a"
    ci = rec["ci95"].get(key)
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and np.isfinite(ci[0]) else "")


def _fmt_diff(rec: dict[str, Any], key: str) -> str:
    d = (rec.get("difference") or {}).get(key)
    if d is None:
        return "n/a"
    return f"{d['value']:+.3f}{'*' if d['excludes_zero'] else ''} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def render(record: dict[str, Any]) -> str:
    lines = [
        "# Retrieval-only report generation on the shipped CT-RATE reports (tiny)",
        "",
        f"Command: `{record['command']}`",
        "",
        "**Setting: text-to-text retrieval on real reports.** Each of the "
        f"{record['n_val']} val.csv reports is the query; the report is built from the {record['n_train_sources']} "
        "train.csv reports only (train reports of val patients removed: "
        f"{', '.join(record['removed_from_sources']) or 'none'}; the retriever's leakage guard is checked). "
        "Because the query report is given, this is an upper-bound-like setting for a retrieval reporter, **not** "
        "image-to-text report generation: no CT in the shipped data is paired with its own report.",
        "",
        f"Encoder: packaged MiniLM (`{record['encoder']['name']}`), exact cosine. Composed reports: per Reg2RG "
        "region, MMR (lambda 0.7) over the findings sentences of the 10 nearest train reports, 3 per region, at "
        "most one per source case; impression = 3 MMR-picked impression sentences of those cases.",
        "",
        "| method | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr | CE P | CE R | CE F1 | words |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = (*METRICS, "ce_precision_micro", "ce_recall_micro", "ce_f1_micro")
    for r in record["results"]:
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r, k) for k in keys) + f" | {r['mean_words']:.0f} |")
    ref = record["bootstrap"]["reference"]
    lines += [
        "",
        f"Difference to the {ref} (paired bootstrap over the val reports; * where the 95 % CI excludes 0):",
        "",
        "| method | " + " | ".join(f"Δ {TITLES[k]}" for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    lines += [
        f"| {r['name']} | " + " | ".join(_fmt_diff(r, k) for k in keys) + " |"
        for r in record["results"]
        if r.get("difference")
    ]
    le = record["label_extractor"]
    gt = le["extractor_vs_ground_truth_on_val_refs"]
    lines += [
        "",
        "BLEU-n, METEOR and CIDEr are corpus scores (pycocoevalcap), ROUGE-L the mean over reports. Brackets: 95 % "
        f"paired percentile bootstrap CIs ({record['bootstrap']['resamples']} resamples of the val reports, seed "
        f"{record['bootstrap']['seed']}, the same resamples for every method; `ctrag.evaluation.report_bootstrap`, "
        "as `ctrag evaluate reports`): corpus BLEU and CE are recomputed exactly on each resample from per-report "
        "counts. "
        + " ".join(f"{k.upper() if k == 'meteor' else k}: {v}." for k, v in record["bootstrap"]["approximate"].items())
        + " Mean per-report METEOR and its CI: "
        + ", ".join(
            f"{r['name']} [{r['ci95'][METEOR_PER_REPORT][0]:.3f}, {r['ci95'][METEOR_PER_REPORT][1]:.3f}]"
            for r in record["results"]
            if r["ci95"].get(METEOR_PER_REPORT)
        )
        + ".",
        "",
        f"Clinical efficacy (micro over 18 labels x 100 reports): labels of the generated report read by "
        f"`{le['class']}` (fitted on {le['fitted_on']}, {le['thresholds']} thresholds; fingerprint "
        f"`{le['fingerprint'][:16]}`), compared with the labels the same extractor reads from the val reference "
        "report (the usual CE protocol, as `ctrag evaluate reports`). Against the val ground-truth labels instead: "
        + ", ".join(
            f"{r['name']} F1 {r['clinical_efficacy_vs_ground_truth']['f1_micro']:.3f}" for r in record["results"]
        )
        + f"; the extractor on the references themselves vs ground truth: micro-F1 {gt['f1_micro']:.3f} "
        f"(P {gt['precision_micro']:.3f}, R {gt['recall_micro']:.3f}).",
        "",
        "Random train report: one seeded random train report per query (a floor). Mean distinct source cases per "
        "composed report: "
        f"{record['source_cases_per_report'].get('composed (region MMR)', float('nan')):.1f}.",
        "",
        f"Time: {record['seconds']['total']:.0f} s on 2 shared CPU cores (encoder, 800 train embeddings, reports, "
        "metrics with METEOR under Java).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
