"""Recompute Reg2RG's published RadGenome lung-region row from the predictions they released, with
`ctrag evaluate reports --protocol reg2rg`, and show ctrag's figures beside theirs.

The shipped release (sample_data/ct_rate_nc_sa/reg2rg_released/, see its NOTICE.md) holds one CSV with both texts;
the CLI wants a reference file and a generated-report file, so this script writes the two JSONL tables, runs the
CLI in-process, and reads its report_metrics.json back. METEOR needs NLTK's WordNet and Punkt data (not on PyPI):
without --nltk-data it runs with --no-meteor and the METEOR cells say so.

    PYTHONPATH=src python scripts/reproduce_reg2rg_row.py [--out runs/reg2rg_lung] [--nltk-data DIR]
        [--doc docs/results/reg2rg_published_row.md]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from pathlib import Path

from ctrag.cli import main as ctrag_main
from ctrag.evaluation.report_metrics import LANGUAGE_METRIC_TITLES
from ctrag.utils.atomic import atomic_write_text

RELEASE = Path("sample_data/ct_rate_nc_sa/reg2rg_released")
COLUMNS = tuple(LANGUAGE_METRIC_TITLES.items())
NO_METEOR = "not run: needs NLTK WordNet data, see docs/report_metrics.md"
MARKER = "<!-- hand-written notes below are kept when this file is regenerated -->"


def split_release(release: Path, work: Path) -> tuple[Path, Path, int]:
    """refs.jsonl / hyps.jsonl keyed by AccNum, the two inputs `ctrag evaluate reports` pairs by id."""
    with gzip.open(release / "lung_reports.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    work.mkdir(parents=True, exist_ok=True)
    refs, hyps = work / "refs.jsonl", work / "hyps.jsonl"
    with open(refs, "w", encoding="utf-8") as r, open(hyps, "w", encoding="utf-8") as h:
        for row in rows:
            r.write(json.dumps({"id": row["AccNum"], "text": row["GT_combined_report"]}) + "\n")
            h.write(json.dumps({"id": row["AccNum"], "text": row["Pred_combined_report"]}) + "\n")
    return refs, hyps, len(rows)


def published_row(release: Path, region: str = "lung") -> dict[str, str]:
    with open(release / "nlg_evaluation_results_all_regions.csv", encoding="utf-8", newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["region"] == region]
    if len(rows) != 1:
        raise SystemExit(f"{release}: expected one {region!r} row, found {len(rows)}")
    return rows[0]


def side_by_side(record: dict, published: dict[str, str]) -> list[str]:
    """Markdown rows: per-report mean ± sd and corpus, ctrag vs published, with the largest differences."""
    per = record.get("per_report") or {}
    lines = ["| | " + " | ".join(label for _, label in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]

    def cells(fmt) -> str:
        return " | ".join(fmt(name, label) for name, label in COLUMNS)

    def ours_per(name: str, _: str) -> str:
        return f"{per[name]['mean']:.4f} ± {per[name]['sd']:.4f}" if name in per else NO_METEOR

    def theirs_per(_: str, label: str) -> str:
        return published[label].replace("±", " ± ")

    def ours_corpus(name: str, _: str) -> str:
        return NO_METEOR if record.get(name) is None else f"{record[name]:.4f}"

    def theirs_corpus(_: str, label: str) -> str:
        return published.get(f"Overall_{label}", "— (not published)")

    lines += [
        f"| per-report mean ± sd, ctrag | {cells(ours_per)} |",
        f"| per-report mean ± sd, Reg2RG | {cells(theirs_per)} |",
        f"| corpus, ctrag | {cells(ours_corpus)} |",
        f"| corpus (`Overall_*`), Reg2RG | {cells(theirs_corpus)} |",
    ]
    return lines


def max_differences(record: dict, published: dict[str, str]) -> dict[str, float]:
    per = record.get("per_report") or {}
    diff = {"per_report_mean": 0.0, "per_report_sd": 0.0, "corpus_bleu": 0.0, "corpus_rouge": 0.0}
    for name, label in COLUMNS:
        if name in per:
            mean, sd = (float(v) for v in published[label].split("±"))
            diff["per_report_mean"] = max(diff["per_report_mean"], abs(per[name]["mean"] - mean))
            diff["per_report_sd"] = max(diff["per_report_sd"], abs(per[name]["sd"] - sd))
        key = "corpus_bleu" if name.startswith("bleu") else "corpus_rouge" if name.startswith("rouge") else None
        if key and record.get(name) is not None:
            diff[key] = max(diff[key], abs(record[name] - float(published[f"Overall_{label}"])))
    return diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", type=Path, default=RELEASE)
    ap.add_argument("--out", type=Path, default=Path("runs/reg2rg_lung"))
    ap.add_argument("--nltk-data", type=Path, default=None, help="nltk_data folder; without it METEOR is not run")
    ap.add_argument("--doc", type=Path, default=None, help="also write this Markdown page (the docs/results table)")
    args = ap.parse_args()
    refs, hyps, n = split_release(args.release, args.out / "inputs")
    argv = ["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(args.out)]
    argv += ["--protocol", "reg2rg"]
    argv += ["--nltk-data", str(args.nltk_data)] if args.nltk_data else ["--no-meteor"]
    print("ctrag " + " ".join(argv), flush=True)
    code = ctrag_main(argv)
    if code:
        sys.exit(code)
    record = json.loads((args.out / "report_metrics.json").read_text(encoding="utf-8"))["methods"]["hyps"]
    published = published_row(args.release)
    diff = max_differences(record, published)
    lines = [
        "# Reg2RG's published RadGenome lung row, recomputed by ctrag",
        "",
        f"Reg2RG's released lung-region predictions ({n:,} RadGenome-ChestCT valid reports, shipped in "
        "`sample_data/ct_rate_nc_sa/reg2rg_released/`, zhi-xuan-chen/Reg2RG @ 4effe09) scored with "
        "`ctrag evaluate reports --protocol reg2rg`, beside the `lung` row of their "
        "`nlg_evaluation_results_all_regions.csv`.",
        "",
        "Command: `PYTHONPATH=src python scripts/reproduce_reg2rg_row.py --doc docs/results/reg2rg_published_row.md`"
        + ("" if args.nltk_data else " (no `--nltk-data`: METEOR not run)"),
        "",
        *side_by_side(record, published),
        "",
        f"Largest |ctrag - Reg2RG|: per-report mean {diff['per_report_mean']:.1e}, sd {diff['per_report_sd']:.1e}, "
        f"corpus BLEU {diff['corpus_bleu']:.1e}, corpus ROUGE {diff['corpus_rouge']:.1e}. Their table has 4 "
        "decimals (rounding: up to 5e-5); their corpus ROUGE is HF `evaluate`'s bootstrap median of the mean, "
        "ctrag's is the mean. Reg2RG publishes no corpus CIDEr.",
        "",
    ]
    print("\n".join(lines))
    if args.doc is not None:
        kept = ""
        if args.doc.is_file() and MARKER in args.doc.read_text(encoding="utf-8"):
            kept = args.doc.read_text(encoding="utf-8").split(MARKER, 1)[1]
        atomic_write_text(args.doc, "\n".join(lines) + "\n" + MARKER + kept)


if __name__ == "__main__":
    main()
