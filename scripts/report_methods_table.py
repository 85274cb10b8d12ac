"""One table from the `ctrag evaluate reports` folder (all methods, CIs) that scripts/report_methods_tiny.sh writes.

Usage: python scripts/report_methods_table.py WORK_DIR RESULTS_STEM  (writes RESULTS_STEM.md and .json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS = [
    ("retrieval_compose", "retrieval, composed (region MMR, λ 0.7, top-3)"),
    ("retrieval_nearest", "retrieval, nearest train report"),
    ("reg2rg", "Reg2RG"),
    ("adarag", "AdaRAG-CT, adaptive retrieval"),
    ("adarag_no_rag", "AdaRAG-CT, --no-rag"),
    ("diffvp_random", "DiffVP, random normal reference"),
    ("diffvp_nearest", "DiffVP, nearest normal reference"),
]
COLUMNS = [
    ("bleu_1", "BLEU-1"),
    ("bleu_4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("cider", "CIDEr"),
    ("ce_precision_micro", "CE P"),
    ("ce_recall_micro", "CE R"),
    ("ce_f1_micro", "CE F1"),
]

HEADER = """# All four report methods on held-out shipped CTs (tiny, CPU) — they run; nothing here ranks them

**n = {n} held-out CT(s)** ({cases}; `{held_out}`: {held_out_text}). No shipped CT has its own radiologist report:
each reference is the **annotation-derived** text of `sample_data/ct/cases.csv` (findings + impression written from
annotations, not by a radiologist). Every learned reporter was trained on the other four CTs (annotation-derived texts
too) after a text warm-up on CT-RATE train reports; the visual tower is **untrained** (seeded random weights) and the
step counts are small. So this table shows one thing: the four methods (and AdaRAG-CT's `--no-rag`) run end to end
from the CLI under one protocol (same CTs, same references, one `ctrag evaluate reports` call). It says **nothing**
about which method is better: the learned reporters echo the register of the four training captions, which overlap
the annotation-style references in words (the two Lung-PET-CT-Dx captions share one template), while retrieval copies
radiologist CT-RATE sentences, a different register.

Metrics: coco-caption BLEU-1..4, ROUGE-L, CIDEr (`--protocol coco`, METEOR off: `--no-meteor`); CIDEr's IDF comes
from the n references themselves. Clinical efficacy (CE): micro P/R/F1 over the 18 CT-RATE labels read by
**{extractor}** (`--fit-labels` on the CT-RATE train CSV); where the extractor reads no positive label in the
references or hypotheses, CE is 0 by construction. Brackets: {ci_text}

Regenerate (about {minutes} min on 2 shared CPU cores):

```
{command}
```
"""


def fmt(v: Any) -> str:
    return "–" if v is None else f"{float(v):.3f}"


def cell(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key) if not key.startswith("ce_") else (entry.get("clinical_efficacy") or {}).get(key[3:])
    lo_hi = (entry.get("ci") or {}).get(key)
    if value is None:
        return "–"
    return fmt(value) if not lo_hi else f"{float(value):.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"


def main(work: Path, stem: Path) -> None:
    import os

    record = json.loads((work / "eval" / "report_metrics.json").read_text("utf-8"))
    ext = record.get("label_extractor") or {}
    extractor = f"{ext.get('module', '?')}.{ext.get('name', '?')} (fingerprint {str(ext.get('fingerprint'))[:12]})"
    refs = [json.loads(line) for line in (work / "refs.jsonl").read_text("utf-8").splitlines() if line.strip()]
    hypotheses = {
        key: [json.loads(line) for line in (work / "reports" / f"{key}.jsonl").read_text("utf-8").splitlines() if line]
        for key, _ in ROWS
    }
    command = (work / "command.txt").read_text("utf-8").strip() if (work / "command.txt").exists() else ""
    seconds = float((work / "seconds.txt").read_text("utf-8")) if (work / "seconds.txt").exists() else 0.0
    boot = record["bootstrap"]
    ci_text = (
        f"no confidence intervals ({boot['skipped']})."
        if "skipped" in boot
        else f"{boot['confidence']:.0%} percentile bootstrap CIs over the {record['n_reports']} held-out CTs "
        f"({boot['n_resamples']} resamples, seed {boot['seed']}, the same resamples for every method). With this few "
        "reports they are coarse: they show how much one case moves a figure, not more."
    )
    held_out = "HELD_OUT=loo" if "HELD_OUT=loo" in command else "HELD_OUT=test"
    held_out_text = (
        "leave-one-out, every shipped CT held out once"
        if held_out.endswith("loo")
        else "the one test-split CT of cases.csv"
    )
    lines = [
        HEADER.format(
            n=len(refs),
            cases=", ".join(r["id"] for r in refs),
            held_out=held_out,
            held_out_text=held_out_text,
            extractor=extractor,
            ci_text=ci_text,
            minutes=max(1, round(seconds / 60)),
            command=command,
        ),
        "| method | " + " | ".join(t for _, t in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for key, label in ROWS:
        entry = record["methods"][key]
        lines.append(f"| {label} | " + " | ".join(cell(entry, k) for k, _ in COLUMNS) + " |")
    ref_key = record["reference_method"]
    ref_label = dict(ROWS)[ref_key]
    if "skipped" not in boot:
        lines += ["", f"Difference to **{ref_label}** (paired bootstrap; * where the CI excludes 0):", ""]
        lines += ["| method | " + " | ".join(f"Δ {t}" for _, t in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for key, label in ROWS:
            diff = record["methods"][key].get("difference")
            if not diff:
                continue
            cells = []
            for k, _ in COLUMNS:
                d = diff.get(k)
                cells.append(
                    "–"
                    if d is None
                    else f"{d['value']:+.3f}{'*' if d['excludes_zero'] else ''} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "References and hypotheses (first 240 characters):", ""]
    for i, ref in enumerate(refs):
        lines += [f"**{ref['id']}** — reference: " + " ".join(ref["text"].split()), ""]
        for key, label in ROWS:
            text = " ".join(hypotheses[key][i]["text"].split())
            text = (text if len(text) <= 240 else text[:240] + " …") or "(empty string)"
            lines.append(f"- {label}: {text}")
        lines.append("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(lines), "utf-8")
    payload = {
        "command": command,
        "seconds": seconds,
        "machine": {"cpus": os.cpu_count()},
        "references": refs,
        "hypotheses": hypotheses,
        "metrics": record,
    }
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
