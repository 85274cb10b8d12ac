"""Per-region precision / recall / F1 of the region tagger on the hand-labelled CT-RATE sentences.

Usage: ``PYTHONPATH=src python scripts/eval_region_tagger.py`` (prints one table per part: dev = train reports the
rules were corrected on, test = val reports only measured). The labels: tests/data/ct_rate_nc_sa/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctrag.reporting.sentences import REGIONS, sentence_is_abnormal, tag_regions

LABELLED = Path(__file__).resolve().parents[1] / "tests" / "data" / "ct_rate_nc_sa" / "region_sentences.jsonl"


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main() -> None:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    for use in ("dev", "test"):
        part = [r for r in rows if r["use"] == use]
        counts = {g: [0, 0, 0] for g in REGIONS}
        for r in part:
            pred, gold = set(tag_regions(r["text"])), set(r["regions"])
            for g in REGIONS:
                counts[g][0 if g in pred and g in gold else 1 if g in pred else 2] += g in pred or g in gold
        correct = sum(sentence_is_abnormal(r["text"]) == r["abnormal"] for r in part)
        print(f"\n{use}: {len(part)} sentences from {len({r['case_id'] for r in part})} reports")
        print(f"{'region':22s} {'P':>6s} {'R':>6s} {'F1':>6s} {'gold':>5s}")
        for g, (tp, fp, fn) in counts.items():
            p, rec, f = _prf(tp, fp, fn)
            print(f"{g:22s} {p:6.3f} {rec:6.3f} {f:6.3f} {tp + fn:5d}")
        tp, fp, fn = (sum(v[i] for v in counts.values()) for i in range(3))
        p, rec, f = _prf(tp, fp, fn)
        print(f"{'micro':22s} {p:6.3f} {rec:6.3f} {f:6.3f} {tp + fn:5d}")
        print(f"abnormal flag accuracy {correct / len(part):.3f}")


if __name__ == "__main__":
    main()
