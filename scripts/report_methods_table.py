"""One table from the `ctrag evaluate reports` folders that scripts/report_methods_tiny.sh writes.

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
METRICS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"]
CE = ["precision_micro", "recall_micro", "f1_micro"]

HEADER = """# All four report methods on the held-out shipped CT (tiny, CPU) — they run; nothing here ranks them

**n = {n} held-out CT** (test split of `sample_data/ct/cases.csv`: {cases}). No shipped CT has its own radiologist
report: the reference is the **annotation-derived** text of `cases.csv` (findings + impression written from
annotations, not by a radiologist). Every learned reporter was trained on the four train-split CTs (annotation-derived
texts too) after a text warm-up on CT-RATE train reports; the visual tower is **untrained** (seeded random weights)
and the step counts are tiny. So this table shows one thing: the four methods (and AdaRAG-CT's `--no-rag`) run end to
end from the CLI under one protocol (same CT, same reference, same `ctrag evaluate reports`). It says **nothing**
about which method is better. Learned reporters that echo the training captions' register overlap the
annotation-style reference in words; retrieval copies radiologist CT-RATE sentences, a different register. At the
default step counts the learned reporters are far undertrained and write degenerate text (empty strings, repeated
tokens; see the hypotheses below), so their zeros are a statement about the training budget, not the methods.

Metrics: coco-caption BLEU-1..4, ROUGE-L, CIDEr (`--protocol coco`, METEOR off: `--no-meteor`). CIDEr's IDF is
computed over the n reference(s) themselves, so with n = 1 it is degenerate. Clinical efficacy (CE): micro P/R/F1 over
the 18 CT-RATE labels read by **{extractor}** (`--fit-labels` on the CT-RATE train CSV); where the extractor reads no
positive label in the reference or hypothesis, CE is 0 by construction. **No confidence intervals**: `ctrag evaluate
reports` computes none, and a bootstrap over n = 1 report would be one point.

Regenerate (about {minutes} min on 2 shared CPU cores):

```
{command}
```
"""


def fmt(v: Any) -> str:
    return "–" if v is None else f"{float(v):.3f}"


def main(work: Path, stem: Path) -> None:
    rows: list[dict[str, Any]] = []
    extractor = None
    for key, label in ROWS:
        rec = json.loads((work / "eval" / key / "report_metrics.json").read_text("utf-8"))
        rep = json.loads((work / "reports" / f"{key}.json").read_text("utf-8"))
        ext = rec.get("label_extractor") or {}
        extractor = f"{ext.get('module', '?')}.{ext.get('name', '?')} (fingerprint {str(ext.get('fingerprint'))[:12]})"
        ce = rec.get("clinical_efficacy") or {}
        rows.append(
            {
                "method": key,
                "label": label,
                "n": rec["n_reports"],
                **{m: rec.get(m) for m in METRICS},
                **{f"ce_{m}": ce.get(m) for m in CE},
                "label_extractor": extractor,
                "hypothesis": rep["report"],
                "retrievals": len(rep.get("retrievals") or []) if key.startswith("adarag") else None,
                "reference_case": (rep.get("reference") or {}).get("case_id") if key.startswith("diffvp") else None,
            }
        )
    import csv

    refs = list(csv.DictReader((work / "refs.csv").open(encoding="utf-8")))
    command = (work / "command.txt").read_text("utf-8").strip() if (work / "command.txt").exists() else ""
    seconds = float((work / "seconds.txt").read_text("utf-8")) if (work / "seconds.txt").exists() else 0.0
    lines = [
        HEADER.format(
            n=len(refs),
            cases=", ".join(r["id"] for r in refs),
            extractor=extractor,
            minutes=max(1, round(seconds / 60)),
            command=command,
        ),
        "| method | n | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr | CE P | CE R | CE F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [fmt(r[m]) for m in METRICS] + [fmt(r[f"ce_{m}"]) for m in CE]
        lines.append(f"| {r['label']} | {r['n']} | " + " | ".join(cells) + " |")
    lines += ["", f"Reference ({refs[0]['id']}): " + refs[0]["text"].replace("\n\n", " "), "", "Hypotheses:", ""]
    for r in rows:
        extra = []
        if r["retrievals"] is not None:
            extra.append(f"{r['retrievals']} retrieval(s)")
        if r["reference_case"]:
            extra.append(f"normal reference {r['reference_case']}")
        text = " ".join(r["hypothesis"].split())
        text = text if len(text) <= 300 else text[:300] + " …"
        text = text or "(empty string)"
        lines.append(f"- **{r['label']}**{' (' + ', '.join(extra) + ')' if extra else ''}: {text}")
    lines.append("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(lines), "utf-8")
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "seconds": seconds, "references": refs, "rows": rows}, indent=2) + "\n",
        "utf-8",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
