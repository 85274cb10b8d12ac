"""Outputs of ``ctrag evaluate retrieval``: ``retrieval_eval.json``, the Markdown report and the trade-off figure.

The CLI's rich table and the Markdown table come from the same :func:`summary_rows`, so the numbers printed and
the numbers committed under ``docs/results/`` cannot drift apart. Text below :data:`KEEP_MARKER` in an existing
Markdown report (hand-written analysis) survives regeneration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.evaluation.retrieval_eval import RetrievalEvalResult
from ctrag.utils.serialization import write_json

#: Text below this line in an existing Markdown report is kept when the report is regenerated (hand-written notes).
KEEP_MARKER = "<!-- hand-written notes below are kept when this file is regenerated -->"
JSON_NAME = "retrieval_eval.json"
MD_NAME = "retrieval_eval.md"
FIGURE_NAME = "retrieval_tradeoff.png"


_ORDER = {"default": 0, "ablation": 1, "baseline": 2, "reference": 3}


def _fmt(entry: Any, ci: bool = True) -> str:
    if not isinstance(entry, dict):
        return "–"
    lo, hi = entry.get("ci95", [math.nan, math.nan])
    if ci and not (math.isnan(lo) or math.isnan(hi)):
        return f"{entry['mean']:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"{entry['mean']:.3f}"


def summary_rows(result: RetrievalEvalResult, ks: Sequence[int] = (1, 5), ci: bool = True) -> list[dict[str, str]]:
    """Table rows (strings) shared by the CLI's rich table and the Markdown file; CIs for J@1 and ROUGE-L."""
    rows = []
    for m in sorted(result.methods, key=lambda m: _ORDER.get(m["group"], 9)):
        row = {"method": m["name"], "group": m["group"]}
        for k in ks:
            row[f"J@{k}"] = _fmt(m.get(f"label_jaccard@{k}"), ci=ci and k == 1)
            row[f"EM-P@{k}"] = _fmt(m.get(f"exact_match_precision@{k}"), ci=False)
            row[f"hit@{k}"] = f"{m.get(f'mean_label_hit_rate@{k}', math.nan):.3f}"
        row["ROUGE-L@1"] = _fmt(m.get("rouge_l@1"), ci=ci)
        row["ROUGE-2@1"] = _fmt(m.get("rouge_2@1"), ci=False)
        row["fit s"] = f"{m['fit_seconds']:.1f}"
        rows.append(row)
    return rows


def render_markdown(result: RetrievalEvalResult, command: str | None = None) -> str:
    ks = tuple(result.setup["eval_config"]["ks"])
    rows = summary_rows(result, ks)
    cols = list(rows[0].keys())
    lines = ["# Retrieval evaluation: report -> case", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    d = result.data
    lines += [
        f"Index: {d['index_rows']} CT-RATE train reports; queries: {d['queries']} val reports; "
        f"leakage guard: {d['leakage_guard']}.",
        "",
        "J@k = mean label-Jaccard over the top k (two all-zero label vectors: Jaccard 1); EM-P@k = exact-match "
        "precision at k; hit@k = per-label hit rate at k averaged over the 18 labels; ROUGE-L@1 / ROUGE-2@1 = "
        "F-measure between the query and the top-1 report (rouge-score tokenisation, Porter stemming). "
        "Brackets: 95 % percentile bootstrap CI over queries.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    if result.comparisons:
        lines += ["", "Paired differences (default minus baseline, 95 % bootstrap CI):", ""]
        lines += ["| vs | metric | difference |", "|---|---|---|"]
        for c in result.comparisons:
            lo, hi = c["ci95"]
            lines.append(f"| {c['b']} | {c['metric']} | {c['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    default = next((m for m in result.methods if m["name"] == "default"), None)
    if default and default.get("weights"):
        sel = default.get("selection", {})
        lines += ["", "## Default retriever", "", f"Weights: `{default['weights']}`.", ""]
        if sel.get("searched"):
            ch = sel["chosen"]
            ref = sel["reference"]
            base = sel["baselines"][ref]
            lines += [
                f"Chosen by {sel['folds']}-fold patient-level cross-fitting on the index rows only "
                f"({sel['tuning_queries']} tuning queries): {sel['rule']}. Cross-validated label-Jaccard@1 "
                f"{ch['label_jaccard']:.3f}, LCS-F1@1 {ch['lcs_f1']:.3f} (reference {ref}: "
                f"{base['label_jaccard']:.3f}, {base['lcs_f1']:.3f}).",
            ]
    shown = ("default", "bm25", "tfidf", "minilm", "labels-only", "label-oracle")
    hit_methods = [m for m in result.methods if m["name"] in shown]
    if hit_methods:
        k = ks[0]
        lines += ["", f"## Per-label hit rate @{k}", ""]
        lines += ["| label | " + " | ".join(m["name"] for m in hit_methods) + " |"]
        lines += ["|---|" + "|".join("---" for _ in hit_methods) + "|"]
        for name in CT_RATE_LABELS:
            vals = [m[f"per_label_hit_rate@{k}"][name] for m in hit_methods]
            lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in vals) + " |")
    lines += ["", "## Methods", ""]
    lines += [f"- **{m['name']}** ({m['group']}): {m['description']}" for m in result.methods]
    lm = result.label_model
    if lm:
        lines += [
            "",
            "## Label model (trained on the index rows, measured on the queries)",
            "",
            f"Macro-F1 (at the model's thresholds) {lm['macro_f1']:.3f}, macro AUC {lm['macro_auc']:.3f} over "
            f"{lm['n_queries']} query reports.",
        ]
    notes = result.setup.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    t = result.timings
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in t.items()), ""]
    return "\n".join(lines)


def write_figure(result: RetrievalEvalResult, path: Path) -> Path | None:
    """Scatter of top-1 label-Jaccard vs ROUGE-L (with CIs): the trade-off the default retriever resolves."""
    from ctrag.segment.overlay import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = {"default": "tab:red", "ablation": "tab:orange", "baseline": "tab:blue", "reference": "tab:gray"}
    for m in result.methods:
        j, r = m["label_jaccard@1"], m["rouge_l@1"]
        xerr = [[j["mean"] - j["ci95"][0]], [j["ci95"][1] - j["mean"]]] if not math.isnan(j["ci95"][0]) else None
        yerr = [[r["mean"] - r["ci95"][0]], [r["ci95"][1] - r["mean"]]] if not math.isnan(r["ci95"][0]) else None
        ax.errorbar(j["mean"], r["mean"], xerr=xerr, yerr=yerr, fmt="o", color=colours.get(m["group"], "k"),
                    capsize=2, alpha=0.85)  # fmt: skip
        ax.annotate(m["name"], (j["mean"], r["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("top-1 label-Jaccard (18 CT-RATE labels)")
    ax.set_ylabel("ROUGE-L F (query vs top-1 report)")
    ax.set_title(f"Report -> case retrieval ({result.data['queries']} queries, {result.data['index_rows']} rows)")
    ax.grid(alpha=0.3)
    return save_png(fig, path, dpi=130)


def write_outputs(result: RetrievalEvalResult, out_dir: str | Path, command: str | None = None) -> list[Path]:
    """``retrieval_eval.json``, ``retrieval_eval.md`` and ``retrieval_tradeoff.png`` in ``out_dir`` (atomic)."""
    from ctrag.utils.atomic import atomic_open

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    if command:
        payload["command"] = command
    write_json(folder / JSON_NAME, payload)
    kept = ""
    if (folder / MD_NAME).is_file():
        old = (folder / MD_NAME).read_text(encoding="utf-8")
        if KEEP_MARKER in old:
            kept = old[old.index(KEEP_MARKER) :]
    with atomic_open(folder / MD_NAME, "w") as fh:
        fh.write(render_markdown(result, command))
        if kept:
            fh.write("\n" + kept)
    written = [folder / JSON_NAME, folder / MD_NAME]
    fig = write_figure(result, folder / FIGURE_NAME)
    if fig is not None:
        written.append(fig)
    return written
