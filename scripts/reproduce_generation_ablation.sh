#!/usr/bin/env bash
# Regenerate docs/results/generation_ablation_tiny/ from a clean clone (after `make venv`):
#
#   PATH="$PWD/.venv/bin:$PATH" OUT=/tmp/ablation bash scripts/reproduce_generation_ablation.sh
#
# Builds the corpus and the train-split index, trains the tiny generator exactly as `make demo` does, then runs the
# RAG-Text2CT ablation (text-only, RAG-Farthest/Random/Nearest, GT mask; 5 seeds) with the tiny-cpu preset's
# evaluation section: the test split's CT (LIDC-IDRI-0314) plus the first 10 CT-RATE validation reports as
# report-only cases. The "Real" spatial row compares the segmenter with the two shipped TotalSegmentator masks of
# training CTs. Set COPY=1 to copy the tables and figures into docs/results/generation_ablation_tiny/.
set -euo pipefail
OUT=${OUT:-ablation_out}
THREADS=${THREADS:-2}
export OUT THREADS
SECONDS=0
mkdir -p "$OUT"
CORPUS=${CORPUS:-$OUT/corpus}
INDEX=${INDEX:-$OUT/index}
RUN=${RUN:-$OUT/generator}
if [ ! -f "$CORPUS/manifest.jsonl" ]; then
  ctrag ingest sample_data/ct sample_data/ct_rate_nc_sa --out "$CORPUS" --no-progress
fi
if [ ! -f "$INDEX/index.json" ]; then
  ctrag index "$CORPUS" --out "$INDEX" --no-progress
fi
for part in vae diffusion controlnet; do
  ctrag train "$part" --config tiny-cpu --corpus "$CORPUS" --out "$RUN" --threads "$THREADS" --no-progress
done
echo "[ablation] generator trained after ${SECONDS}s"
ctrag evaluate generation --config tiny-cpu --out "$OUT/eval" --corpus "$CORPUS" --pipeline "$RUN" --index "$INDEX" \
  --set "spatial_reference_case_ids=[ts_example_ct,ts_chest_crop]" --threads "$THREADS" --no-progress
echo "[ablation] done after ${SECONDS}s: $OUT/eval/results.md"
if [ "${COPY:-0}" = "1" ]; then
  dest=docs/results/generation_ablation_tiny
  mkdir -p "$dest"
  rm -rf "$dest/figures"
  cp -r "$OUT"/eval/{results.md,results.json,results.csv,per_seed.csv,per_case.csv,figures} "$dest"/
fi
