"""Fold bookkeeping for scripts/report_methods_tiny.sh (kept out of the shell script so each step is testable).

report_methods_folds.py list CASES_CSV test|all       held-out case ids, space-separated
report_methods_folds.py split CASES_CSV CASE OUT_CSV REFS_JSONL
    write OUT_CSV with CASE as the only test case (every other case train), append CASE's annotation-derived
    findings + impression to REFS_JSONL, print CASE's volume path (relative to the cases folder)
report_methods_folds.py hypothesis REPORT_JSON CASE  one {"id", "text"} line from `ctrag report --json`
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def read_cases(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "list":
        rows = read_cases(args[0])
        print(" ".join(r["case_id"] for r in rows if args[1] == "all" or r["split"] == args[1]))
    elif command == "split":
        source, held, out_csv, refs = args
        rows = read_cases(source)
        if held not in {r["case_id"] for r in rows}:
            raise SystemExit(f"{held} is not a case of {source}")
        with open(out_csv, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "split": "test" if r["case_id"] == held else "train"})
        row = next(r for r in rows if r["case_id"] == held)
        text = f"Findings: {row['findings']}\n\nImpression: {row['impression']}"
        with open(refs, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": held, "text": text}) + "\n")
        print(row["volume"])
    elif command == "hypothesis":
        report = json.loads(Path(args[0]).read_text("utf-8"))
        print(json.dumps({"id": args[1], "text": report["report"]}))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
