#!/usr/bin/env bash
# All four report methods (retrieval, Reg2RG, AdaRAG-CT, DiffVP) under one protocol on held-out shipped CTs, at
# tiny scale on CPU: ingest, index, train each reporter on the fold's train cases, report the held-out CT with
# --json, then score every method in one `ctrag evaluate reports` call (one table, paired bootstrap CIs over the
# held-out CTs, differences to the nearest-report baseline). The figures show that every method runs end to end,
# not which is better (annotation-derived references, untrained visual tower, four training CTs per fold).
#   usage: scripts/report_methods_tiny.sh WORK_DIR [RESULTS_STEM]   (stem default docs/results/report_methods_tiny)
#   HELD_OUT=test (default): the one test-split CT of sample_data/ct/cases.csv, trained on the four train CTs.
#   HELD_OUT=loo: leave-one-out over all five shipped CTs: five folds, each on a linked copy of sample_data/ct whose
#                 cases.csv makes the held-out CT the only test case (n = 5 reports in the table).
set -euo pipefail
WORK=${1:?usage: $0 WORK_DIR [RESULTS_STEM]}
STEM=${2:-docs/results/report_methods_tiny}
if command -v ctrag >/dev/null 2>&1; then CTRAG=(ctrag); else CTRAG=(python -m ctrag); fi
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
SECONDS=0
step() { printf '\n== [%4ss] %s\n' "$SECONDS" "$*" >&2; }
SOURCE_CASES=$(cd sample_data/ct && pwd)
TEXT=sample_data/ct_rate_nc_sa/ct_clip_text_classifier
# small models and few steps: the point is that each method runs, not that it learns
TEXT_STEPS=${TEXT_STEPS:-200}
STEPS=${STEPS:-80}
WARMUP_CASES=${WARMUP_CASES:-200}
HELD_OUT=${HELD_OUT:-test}
METHODS="retrieval_compose retrieval_nearest reg2rg adarag adarag_no_rag diffvp_random diffvp_nearest"
R=$WORK/reports
mkdir -p "$R"
: >"$WORK/refs.jsonl"
for m in $METHODS; do : >"$R/$m.jsonl"; done

case "$HELD_OUT" in
  loo) FOLDS=$("$PY" scripts/report_methods_folds.py list "$SOURCE_CASES/cases.csv" all) ;;
  test) FOLDS=$("$PY" scripts/report_methods_folds.py list "$SOURCE_CASES/cases.csv" test) ;;
  *) echo "HELD_OUT must be test or loo, not $HELD_OUT" >&2; exit 2 ;;
esac

for CASE in $FOLDS; do
  W=$WORK/fold_$CASE
  CASES=$W/cases
  mkdir -p "$CASES" "$W/reports"
  for entry in "$SOURCE_CASES"/*; do
    [ "$(basename "$entry")" = cases.csv ] || ln -sfn "$entry" "$CASES/"
  done
  # the held-out case is the fold's only test case, every other case trains; its own text is the reference
  CT=$CASES/$("$PY" scripts/report_methods_folds.py split "$SOURCE_CASES/cases.csv" "$CASE" "$CASES/cases.csv" \
    "$WORK/refs.jsonl")

  step "[$CASE] ingest + index (train split only)"
  "${CTRAG[@]}" ingest $TEXT "$CASES" --out "$W/corpus" --allow-skips --no-progress >&2
  "${CTRAG[@]}" index "$W/corpus" --out "$W/index" --no-onnx --splits train --no-progress >&2

  step "[$CASE] train reg2rg"
  "${CTRAG[@]}" train reporter --method reg2rg --out "$W/reg2rg" --cases "$CASES" --text-steps "$TEXT_STEPS" \
    --steps "$STEPS" --max-text-cases "$WARMUP_CASES" --set model.max_paragraph_tokens=32 \
    --set model.max_impression_tokens=24 --no-progress >&2
  step "[$CASE] train adarag"
  "${CTRAG[@]}" train reporter --method adarag --out "$W/adarag" --cases "$CASES" --steps "$((STEPS * 2))" \
    --max-text-cases "$WARMUP_CASES" --set model.max_new_tokens=96 --no-progress >&2
  for pairing in random nearest; do
    step "[$CASE] train diffvp ($pairing pairing)"
    "${CTRAG[@]}" train reporter --method diffvp --pairing $pairing --out "$W/diffvp_$pairing" --cases "$CASES" \
      --text-steps "$TEXT_STEPS" --steps "$STEPS" --max-text-cases "$WARMUP_CASES" --set model.max_new_tokens=96 \
      --no-progress >&2
  done

  step "[$CASE] report the held-out CT with every method (--json)"
  O=$W/reports
  "${CTRAG[@]}" report "$CT" --method retrieval --compose --index "$W/index" --json >"$O/retrieval_compose.json"
  "${CTRAG[@]}" report "$CT" --method retrieval --nearest --index "$W/index" --json >"$O/retrieval_nearest.json"
  "${CTRAG[@]}" report "$CT" --method reg2rg --lm "$W/reg2rg" --json >"$O/reg2rg.json"
  "${CTRAG[@]}" report "$CT" --method adarag --lm "$W/adarag" --json >"$O/adarag.json"
  "${CTRAG[@]}" report "$CT" --method adarag --lm "$W/adarag" --no-rag --json >"$O/adarag_no_rag.json"
  "${CTRAG[@]}" report "$CT" --method diffvp --lm "$W/diffvp_random" --pairing random --json >"$O/diffvp_random.json"
  "${CTRAG[@]}" report "$CT" --method diffvp --lm "$W/diffvp_nearest" --pairing nearest \
    --json >"$O/diffvp_nearest.json"
  for m in $METHODS; do
    "$PY" scripts/report_methods_folds.py hypothesis "$O/$m.json" "$CASE" >>"$R/$m.jsonl"
  done
done

step "score all methods in one table (coco-caption metrics, CE with the label model fitted on CT-RATE train)"
HYPS=()
for m in $METHODS; do HYPS+=(--hyps "$m=$R/$m.jsonl"); done
"${CTRAG[@]}" evaluate reports --refs "$WORK/refs.jsonl" "${HYPS[@]}" --reference retrieval_nearest \
  --out "$WORK/eval" --no-meteor --fit-labels $TEXT/train.csv --bootstrap 1000 >&2

step "table"
echo "PYTHONPATH=src HELD_OUT=$HELD_OUT TEXT_STEPS=$TEXT_STEPS STEPS=$STEPS WARMUP_CASES=$WARMUP_CASES" \
  "scripts/report_methods_tiny.sh /tmp/report_methods_tiny" >"$WORK/command.txt"
echo "$SECONDS" >"$WORK/seconds.txt"
"$PY" scripts/report_methods_table.py "$WORK" "$STEM"
step "done"
