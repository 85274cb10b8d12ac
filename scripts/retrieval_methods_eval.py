"""Regenerate docs/results/retrieval_methods.{json,md}: issue 14's retrieval methods on the shipped CT-RATE reports.

    PYTHONPATH=src python scripts/retrieval_methods_eval.py [--out docs/results] [--cache /tmp/minilm.sqlite]

Protocol of ``ctrag evaluate retrieval``: the 797 train reports (3 of val patients removed) form the index (packaged
MiniLM + the default hybrid scorer fitted on them), the 100 val reports query it once. Rows: the default retriever;
two-stage region reranks (WristMIR) per region and region score; composed text scores (global + region-level);
MMR reference sets (diversity, one case per patient); abstention calibrated on train (leave-one-patient-out).
Nothing here is tuned on val: stage-one size, region weight, mix weights and MMR lambda are fixed up front.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.config import config_to_dict
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.encoders.cache import memo_encoder
from ctrag.evaluation.metrics.retrieval import mean_jaccard_at_k
from ctrag.evaluation.metrics.text import rouge_l
from ctrag.evaluation.retrieval_eval import load_ctclip_eval_data, rank_rows
from ctrag.index.build import build_index
from ctrag.reporting.sentences import REGIONS
from ctrag.retrieval.compose import MixWeights, compose_scores
from ctrag.retrieval.evidence import calibrate_abstention, select_references
from ctrag.retrieval.guard import assert_no_leakage
from ctrag.retrieval.label_agreement import label_jaccard
from ctrag.retrieval.regional import RegionIndex, case_sentences, region_label_columns, region_text, two_stage_rerank
from ctrag.retrieval.retriever import Retriever
from ctrag.utils.atomic import atomic_write_text

DATA = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")
MARKER = "<!-- hand-written notes below are kept when this file is regenerated -->"
EVAL_REGIONS = ("lung", "pleura", "heart", "mediastinum")
STAGE1 = 20
REGION_WEIGHT = 0.5
MIX = {"global": 0.7, "region": 0.3}
MMR_LAMBDA = 0.7
ABSTAIN_QUANTILE = 0.05
UNRELATED = (
    "Preheat the oven to 180 degrees. Whisk two eggs with sugar, fold in the flour and bake for 25 minutes.",
    "The quarterly sales report shows revenue growth in the northern region and lower costs for shipping.",
    "Chop the onions and garlic, fry them in olive oil, add tomatoes and simmer the sauce for an hour.",
)


def _labels(cases: list[Any]) -> np.ndarray:
    return np.asarray([c.labels for c in cases], dtype=np.int8)


def _region_jaccard(q: np.ndarray, r: np.ndarray, region: str) -> np.ndarray:
    cols = region_label_columns(region)
    return label_jaccard(q[:, cols], r[:, cols])


def _metrics(
    top: np.ndarray, index_cases: list[Any], queries: list[Any], q_tagged: list[Any], i_regions: RegionIndex
) -> dict[str, Any]:
    ql, il = _labels(queries), _labels(index_cases)
    out: dict[str, Any] = {
        "label_jaccard@1": float(mean_jaccard_at_k(ql, il[top], 1).mean()),
        "label_jaccard@5": float(mean_jaccard_at_k(ql, il[top], 5).mean()),
        "rouge_l@1": float(
            rouge_l([c.report_text for c in queries], [index_cases[int(r)].report_text for r in top[:, 0]]).mean()
        ),
        "regions": {},
    }
    for region in EVAL_REGIONS:
        refs = [region_text(t, region) for t in q_tagged]
        keep = [i for i, t in enumerate(refs) if t]
        hyps = [i_regions.texts[region][int(top[i, 0])] for i in keep]
        rl = rouge_l([refs[i] for i in keep], hyps)
        out["regions"][region] = {
            "label_jaccard@1": float(_region_jaccard(ql, il[top[:, 0]], region).mean()),
            "label_jaccard@5": float(np.mean([_region_jaccard(ql, il[top[:, j]], region) for j in range(5)])),
            "rouge_l@1": float(rl.mean()),
            "queries_with_region_text": len(keep),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--cache", type=Path, default=None, help="SQLite embedding cache for the MiniLM vectors")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    from ctrag.cli._shared import load_encoder

    data = load_ctclip_eval_data(DATA)
    memo = memo_encoder(load_encoder("minilm", None, "cpu"), cache_path=args.cache)
    queries = data.query_cases
    q_texts = [c.report_text for c in queries]
    memo.encode_text([c.report_text for c in data.index_cases] + q_texts, batch_size=64)
    built = build_index(
        data.index_cases,
        memo,
        scorer="hybrid",
        splits=("train",),
        seed=args.seed,
        encoder_spec={"name_or_path": "minilm"},
    )
    index, scorer = built.index, built.scorer
    assert scorer is not None
    retriever = Retriever(index, memo, scorer, scorer_name="hybrid")
    assert_no_leakage(index, queries, eval_split="val")
    index_cases = index.cases
    q_emb = memo.encode_text(q_texts)
    t_fit = time.perf_counter() - t0

    glob = scorer.scores(q_texts, q_emb)  # (n_q, n_index): the default retriever's scores
    default_top = rank_rows(glob, 5)
    via = retriever.search_cases(queries, k=5, eval_split="val")
    assert [h[0].case_id for h in via] == [index_cases[int(r)].case_id for r in default_top[:, 0]]
    i_regions = RegionIndex.build(index_cases)
    q_tagged = [case_sentences(c) for c in queries]
    probs = scorer.label_model.predict_proba(q_texts) if scorer.label_model is not None else None
    rows: list[dict[str, Any]] = []

    def add(name: str, kind: str, top: np.ndarray, note: str, **extra: Any) -> None:
        rows.append(
            {
                "method": name,
                "kind": kind,
                "note": note,
                **_metrics(top, index_cases, queries, q_tagged, i_regions),
                **extra,
            }
        )

    add(
        "default",
        "default",
        default_top,
        "hybrid scorer (label + LCS, weights chosen on train CV), nearest",
        weights=config_to_dict(scorer.weights),
    )

    # Two-stage, region-conditioned rerank (WristMIR): stage one = default top STAGE1, stage two = region score.
    all_rows = np.arange(len(index))
    timing: dict[str, float] = {}
    for method in ("lexical", "label", "dense"):
        for region in EVAL_REGIONS:
            t1 = time.perf_counter()
            top = np.zeros((len(queries), 5), dtype=np.int64)
            for qi, text in enumerate(q_texts):
                stage = np.argsort(-glob[qi], kind="stable")[:STAGE1]
                reg = np.zeros(len(index))
                reg[stage] = i_regions.scores(
                    text,
                    region,
                    method,
                    stage,  # type: ignore[arg-type]
                    query_probs=None if probs is None else probs[qi : qi + 1],
                    encoder=memo,
                )
                picked, _ = two_stage_rerank(glob[qi], reg, stage1=STAGE1, k=5, region_weight=REGION_WEIGHT)
                assert set(picked.tolist()) <= set(stage.tolist())
                top[qi] = picked
            timing[f"rerank_{method}_{region}_ms_per_query"] = 1000 * (time.perf_counter() - t1) / len(queries)
            add(
                f"two-stage[{region}, {method}]",
                "two-stage",
                top,
                f"default top {STAGE1}, reranked by {REGION_WEIGHT} x {method} {region} score",
                region=region,
            )

    # Composed text query: convex mix of the global score and the mean region-level lexical score.
    mix = MixWeights.of(MIX)
    top = np.zeros((len(queries), 5), dtype=np.int64)
    for qi, text in enumerate(q_texts):
        region_terms = [i_regions.scores(text, r, "lexical", all_rows) for r in REGIONS]
        local = np.mean(region_terms, axis=0)
        top[qi] = rank_rows(compose_scores({"global": glob[qi], "region": local}, mix, normalise="minmax")[None], 5)[0]
    add(
        "composed[text global + text regions]",
        "composed",
        top,
        f"one stage over all rows: {mix.as_dict()} x minmax(global hybrid, mean LCS-F1 over the 10 regions)",
    )

    # Reference sets: MMR (diversity) + one per patient, and abstention calibrated on train.
    for lam in (1.0, MMR_LAMBDA):
        hits = [select_references(retriever, t, 5, mmr_lambda=lam).hits for t in q_texts]
        top = np.asarray([[index.row_of(h.case_id) for h in hs] for hs in hits], dtype=np.int64)
        vecs = np.asarray(index.vectors)
        red = [float(np.mean([vecs[a] @ vecs[b] for i, a in enumerate(t) for b in t[i + 1 :]])) for t in top]
        pats = [len({index_cases[int(r)].patient_id for r in t}) for t in top]
        add(
            f"references[mmr lambda={lam:g}]",
            "evidence",
            top,
            "MMR over hybrid scores and MiniLM vectors, at most one case per patient",
            mean_pairwise_cosine_top5=float(np.mean(red)),
            mean_distinct_patients_top5=float(np.mean(pats)),
        )
    vecs = np.asarray(index.vectors)
    red = [float(np.mean([vecs[a] @ vecs[b] for i, a in enumerate(t) for b in t[i + 1 :]])) for t in default_top]
    rows[0]["mean_pairwise_cosine_top5"] = float(np.mean(red))
    rows[0]["mean_distinct_patients_top5"] = float(
        np.mean([len({index_cases[int(r)].patient_id for r in t}) for t in default_top])
    )

    rng = np.random.default_rng(args.seed)
    rand = rng.standard_normal((3, index.dim)).astype(np.float32)
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    abstention: dict[str, Any] = {}
    for statistic in ("dense", "score"):
        t1 = time.perf_counter()
        thr = calibrate_abstention(retriever, ABSTAIN_QUANTILE, statistic=statistic)  # type: ignore[arg-type]
        timing[f"calibrate_abstention_{statistic}_seconds"] = time.perf_counter() - t1
        val_refs = [select_references(retriever, t, 5, mmr_lambda=MMR_LAMBDA, abstention=thr) for t in q_texts]
        far = [select_references(retriever, t, 5, abstention=thr) for t in UNRELATED]
        far_vec = [select_references(retriever, "", 5, abstention=thr, query_vector=v) for v in rand]
        abstention[statistic] = {
            "threshold": thr.to_dict(),
            "val_abstained": int(sum(r.abstained for r in val_refs)),
            "val_queries": len(val_refs),
            "val_top_min": float(min(r.top_score or 0.0 for r in val_refs)),
            "val_top_median": float(np.median([r.top_score or 0.0 for r in val_refs])),
            "unrelated_abstained": int(sum(r.abstained for r in far)),
            "unrelated_top_max": float(max(r.top_score or 0.0 for r in far)),
            "random_vectors_abstained": int(sum(r.abstained for r in far_vec)),
            "random_top_max": float(max(r.top_score or 0.0 for r in far_vec)),
            "unrelated_texts": list(UNRELATED),
        }
    record = {
        "command": "PYTHONPATH=src python scripts/retrieval_methods_eval.py --out docs/results",
        "data": {"index_rows": len(index), "queries": len(queries), "removed_from_index": data.removed_from_index},
        "settings": {
            "stage1": STAGE1,
            "region_weight": REGION_WEIGHT,
            "mix": MIX,
            "mmr_lambda": MMR_LAMBDA,
            "abstain_quantile": ABSTAIN_QUANTILE,
            "regions": list(EVAL_REGIONS),
            "region_labels": {r: [CT_RATE_LABELS[i] for i in region_label_columns(r)] for r in EVAL_REGIONS},
        },
        "rows": rows,
        "abstention": abstention,
        "timings": {"fit_seconds": t_fit, "total_seconds": time.perf_counter() - t0, **timing},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "retrieval_methods.json", json.dumps(record, indent=1) + "\n")
    md = args.out / "retrieval_methods.md"
    notes = md.read_text(encoding="utf-8").partition(MARKER)[2] if md.is_file() else ""
    atomic_write_text(md, render(record) + notes.lstrip("\n"))


def render(record: dict[str, Any]) -> str:
    """The Markdown table of ``record`` (hand-written notes below the marker survive regeneration)."""
    st = record["settings"]
    regions = st["regions"]
    head = "| method | J@1 | J@5 | ROUGE-L@1 | " + " | ".join(f"{r} J@1 | {r} RL@1" for r in regions) + " |"
    lines = [
        "# Retrieval methods (issue 14) on the shipped CT-RATE reports",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Index: {record['data']['index_rows']} train reports (MiniLM + default hybrid scorer fitted on them); "
        f"queries: {record['data']['queries']} val reports. J@k: mean label-Jaccard over the top k; ROUGE-L@1: "
        "query vs top-1 report. Per region (labels of that region only: "
        + "; ".join(f"{r}: {', '.join(st['region_labels'][r])}" for r in regions)
        + "): region J@1 = label-Jaccard over the region's labels, region RL@1 = ROUGE-L of the query's and the "
        "top-1's sentences of that region (queries with such sentences). Fixed settings, none tuned on val: "
        f"stage one {st['stage1']}, region weight {st['region_weight']}, mix {st['mix']}, "
        f"MMR lambda {st['mmr_lambda']}, abstention quantile {st['abstain_quantile']}.",
        "",
        head,
        "|" + "---|" * (4 + 2 * len(regions)),
    ]
    for r in record["rows"]:
        cells = [r["method"], f"{r['label_jaccard@1']:.3f}", f"{r['label_jaccard@5']:.3f}", f"{r['rouge_l@1']:.3f}"]
        for reg in regions:
            m = r["regions"][reg]
            bold = r.get("region") == reg
            j, rl = f"{m['label_jaccard@1']:.3f}", f"{m['rouge_l@1']:.3f}"
            cells += [f"**{j}**", f"**{rl}**"] if bold else [j, rl]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bold: the region a two-stage row reranks by.", "", "## Reference sets", ""]
    lines.append("| method | J@5 | mean pairwise cosine top 5 | distinct patients top 5 |")
    lines.append("|---|---|---|---|")
    for r in record["rows"]:
        if "mean_pairwise_cosine_top5" in r:
            lines.append(
                f"| {r['method']} | {r['label_jaccard@5']:.3f} | {r['mean_pairwise_cosine_top5']:.3f} | "
                f"{r['mean_distinct_patients_top5']:.2f} |"
            )
    lines += ["", "## Abstention (threshold: quantile of train leave-one-patient-out top scores)", ""]
    lines.append(
        "| statistic | threshold | val abstained | val top min / median | unrelated texts abstained "
        "(max top) | random vectors abstained (max top) |"
    )
    lines.append("|---|---|---|---|---|---|")
    for name, a in record["abstention"].items():
        lines.append(
            f"| {name} | {a['threshold']['threshold']:.3f} | {a['val_abstained']}/{a['val_queries']} | "
            f"{a['val_top_min']:.3f} / {a['val_top_median']:.3f} | {a['unrelated_abstained']}/3 "
            f"({a['unrelated_top_max']:.3f}) | {a['random_vectors_abstained']}/3 ({a['random_top_max']:.3f}) |"
        )
    t = record["timings"]
    lines += ["", "Timings (s, 2 shared CPU cores): " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()), "", MARKER, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
