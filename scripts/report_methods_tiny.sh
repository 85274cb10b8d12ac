#!/usr/bin/env bash
# All four report methods (retrieval, Reg2RG, AdaRAG-CT, DiffVP) under one protocol on the held-out shipped CT, at
# tiny scale on CPU: ingest, index, train each reporter on the train split, report with --json, score each method
# with `ctrag evaluate reports`, then one table. The figures show that every method runs end to end, not which is
# better (n = 1, annotation-derived reference, untrained visual tower). Budget: about 10 min on 2 CPU cores.
#   usage: scripts/report_methods_tiny.sh WORK_DIR [RESULTS_STEM]   (stem default docs/results/report_methods_tiny)
set -euo pipefail
WORK=${1:?usage: $0 WORK_DIR [RESULTS_STEM]}
STEM=${2:-docs/results/report_methods_tiny}
if command -v ctrag >/dev/null 2>&1; then CTRAG=(ctrag); else CTRAG=(python -m ctrag); fi
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
SECONDS=0
step() { printf '\n== [%4ss] %s\n' "$SECONDS" "$*" >&2; }
CASES=sample_data/ct
CT=$CASES/extra/lidc_idri_0314_ct_lowres.nii.gz   # the one test-split CT of sample_data/ct/cases.csv
CASE=lidc_idri_0314
TEXT=sample_data/ct_rate_nc_sa/ct_clip_text_classifier
# small models and few steps: the point is that each method runs, not that it learns
TEXT_STEPS=${TEXT_STEPS:-40}
STEPS=${STEPS:-20}
WARMUP_CASES=${WARMUP_CASES:-200}

step "ingest + index (train split only)"
"${CTRAG[@]}" ingest $TEXT $CASES --out "$WORK/corpus" --allow-skips --no-progress
"${CTRAG[@]}" index "$WORK/corpus" --out "$WORK/index" --no-onnx --splits train --no-progress

step "train reg2rg"
"${CTRAG[@]}" train reporter --method reg2rg --out "$WORK/reg2rg" --cases $CASES --text-steps "$TEXT_STEPS" \
  --steps "$STEPS" --max-text-cases "$WARMUP_CASES" --set model.max_paragraph_tokens=32 \
  --set model.max_impression_tokens=24 --no-progress
step "train adarag"
"${CTRAG[@]}" train reporter --method adarag --out "$WORK/adarag" --cases $CASES --steps "$((STEPS * 2))" \
  --max-text-cases "$WARMUP_CASES" --set model.max_new_tokens=96 --no-progress
for pairing in random nearest; do
  step "train diffvp ($pairing pairing)"
  "${CTRAG[@]}" train reporter --method diffvp --pairing $pairing --out "$WORK/diffvp_$pairing" --cases $CASES \
    --text-steps "$TEXT_STEPS" --steps "$STEPS" --max-text-cases "$WARMUP_CASES" --set model.max_new_tokens=96 \
    --no-progress
done

step "report the held-out CT with every method (--json)"
mkdir -p "$WORK/reports"
R=$WORK/reports
"${CTRAG[@]}" report "$CT" --method retrieval --compose --index "$WORK/index" --json >"$R/retrieval_compose.json"
"${CTRAG[@]}" report "$CT" --method retrieval --nearest --index "$WORK/index" --json >"$R/retrieval_nearest.json"
"${CTRAG[@]}" report "$CT" --method reg2rg --lm "$WORK/reg2rg" --json >"$R/reg2rg.json"
"${CTRAG[@]}" report "$CT" --method adarag --lm "$WORK/adarag" --json >"$R/adarag.json"
"${CTRAG[@]}" report "$CT" --method adarag --lm "$WORK/adarag" --no-rag --json >"$R/adarag_no_rag.json"
"${CTRAG[@]}" report "$CT" --method diffvp --lm "$WORK/diffvp_random" --pairing random --json >"$R/diffvp_random.json"
"${CTRAG[@]}" report "$CT" --method diffvp --lm "$WORK/diffvp_nearest" --pairing nearest \
  --json >"$R/diffvp_nearest.json"

step "references and hypotheses (id,text) per method"
"$PY" - "$WORK" "$CASES/cases.csv" <<'PY'
import csv, json, pathlib, sys
work, cases = pathlib.Path(sys.argv[1]), sys.argv[2]
test = [r for r in csv.DictReader(open(cases, encoding="utf-8")) if r["split"] == "test"]
def write(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f); w.writerow(["id", "text"]); w.writerows(rows)
write(work / "refs.csv", [(r["case_id"], f"Findings: {r['findings']}\n\nImpression: {r['impression']}") for r in test])
for js in sorted((work / "reports").glob("*.json")):
    text = json.loads(js.read_text("utf-8"))["report"]
    write(work / "reports" / f"{js.stem}.csv", [(test[0]["case_id"], text)])
PY

step "score each method (coco-caption metrics, CE with the label model fitted on CT-RATE train)"
for hyp in "$R"/*.csv; do
  m=$(basename "$hyp" .csv)
  "${CTRAG[@]}" evaluate reports --refs "$WORK/refs.csv" --hyps "$hyp" --out "$WORK/eval/$m" --no-meteor \
    --fit-labels $TEXT/train.csv >&2
done

step "table"
echo "PYTHONPATH=src scripts/report_methods_tiny.sh $WORK   # TEXT_STEPS=$TEXT_STEPS STEPS=$STEPS WARMUP_CASES=$WARMUP_CASES" \
  >"$WORK/command.txt"
echo "$SECONDS" >"$WORK/seconds.txt"
"$PY" scripts/report_methods_table.py "$WORK" "$STEM"
step "done"
