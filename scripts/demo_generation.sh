#!/usr/bin/env bash
# Report -> CT demo on the shipped data: train the tiny generator (VAE, text-conditioned UNet, ControlNet) on the
# real training CTs, then generate CTs for two held-out CT-RATE validation reports with their nearest training case
# as the anatomy proxy, plus the text-only baseline of each for comparison. Budget: under 5 minutes on 2 CPU cores.
#
#   OUT=demo_out bash scripts/demo_generation.sh          # CORPUS / INDEX may point at existing ones to reuse
#
# What the shipped data allows: 4 training CTs (Lung-PET-CT-Dx A0001/A0002, two TotalSegmentator test CTs; the
# LIDC-IDRI-0314 CT is the test split and never trained on), coarse anatomy masks from `ctrag.segment`, and
# annotation-derived captions as the only CT-paired text. Text-following at the paper's level needs CT-RATE
# (or the public Text2CT/MAISI weights loaded from a local path, see the text2ct-512 preset).
set -euo pipefail
OUT=${OUT:-demo_out}
CONFIG=${CONFIG:-tiny-cpu}
THREADS=${THREADS:-2}
RUN=${RUN:-$OUT/generator}
CORPUS=${CORPUS:-$OUT/corpus}
INDEX=${INDEX:-$OUT/index}
mkdir -p "$OUT"
SECONDS=0

# 1. corpus and retrieval index (train split only), unless the caller already built them
if [ ! -f "$CORPUS/manifest.jsonl" ]; then
  ctrag ingest sample_data/ct sample_data/ct_rate_nc_sa --out "$CORPUS" --no-progress
fi
if [ ! -f "$INDEX/index.json" ]; then
  ctrag index "$CORPUS" --out "$INDEX" --no-progress
fi
echo "[demo-generation] corpus + index ready after ${SECONDS}s"

# 2. training: one run folder, three components (each resumes if interrupted)
ctrag train vae --config "$CONFIG" --corpus "$CORPUS" --out "$RUN" --threads "$THREADS" --no-progress
ctrag train diffusion --config "$CONFIG" --corpus "$CORPUS" --out "$RUN" --threads "$THREADS" --no-progress
ctrag train controlnet --config "$CONFIG" --corpus "$CORPUS" --out "$RUN" --threads "$THREADS" --no-progress
echo "[demo-generation] training done after ${SECONDS}s"

# 3. two held-out CT-RATE validation reports (their CTs are not in the repository)
python - "$OUT" <<'PY'
import csv, pathlib, sys
rows = list(csv.DictReader(open("sample_data/ct_rate_nc_sa/ct_clip_text_classifier/val.csv", encoding="utf-8")))
for i in (0, 1):
    pathlib.Path(sys.argv[1], f"report_{i}.txt").write_text(rows[i]["report_text"], encoding="utf-8")
PY

# 4. generation: nearest-retrieved proxy (ControlNet) and, with --baseline, the text-only volume of the same seed
#    on the same grid; --dice segments both and writes their Dice against the proxy into the provenance JSON
for i in 0 1; do
  ctrag generate --weights "$RUN" --index "$INDEX" --report-file "$OUT/report_$i.txt" --strategy nearest \
    --seed 0 --threads "$THREADS" --dice --baseline --no-progress --out "$OUT/generated_report_$i.nii.gz"
done
echo "[demo-generation] done after ${SECONDS}s: $OUT/generated_report_{0,1}.nii.gz (+ .png, .provenance.json)"
