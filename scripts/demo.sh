#!/usr/bin/env bash
# `make demo`: the product end to end on the shipped real data. Every step is a plain `ctrag` command that a user
# can run by hand; outputs go to $OUT (default demo_out/). Budget: about 5 minutes on 2 CPU cores.
set -euo pipefail
OUT=${OUT:-demo_out}
THREADS=${THREADS:-2}
export COLUMNS=${COLUMNS:-160}
mkdir -p "$OUT"
SECONDS=0
step() { printf '\n\033[1m== [%3ss] %s\033[0m\n' "$SECONDS" "$*"; }

step "1/5 Ingest the shipped sample corpus (real CTs + masks, 900 real CT-RATE reports) and validate every case"
ctrag ingest sample_data --out "$OUT/corpus" --no-progress

step "2/5 Index the train split (packaged MiniLM embeddings + hybrid label/lexical scorer fitted on train only)"
ctrag index "$OUT/corpus" --out "$OUT/index" --cache "$OUT/embeddings.sqlite" --no-progress

step "3/5 Case search with held-out (val) reports: the index never contains them"
ctrag search --query-case ctclip_val_9 --corpus "$OUT/corpus" --index "$OUT/index" --k 3
ctrag search "Mass in the right lung, adenocarcinoma." --index "$OUT/index" --k 3 --has-volume

step "4/5 Train the tiny generator on the real training CTs: VAE, text-conditioned UNet, ControlNet on anatomy masks"
for part in vae diffusion controlnet; do
  ctrag train "$part" --config tiny-cpu --corpus "$OUT/corpus" --out "$OUT/generator" --threads "$THREADS" --no-progress
done

step "5/5 Generate CTs for two held-out CT-RATE reports: nearest training case as anatomy proxy (+ text-only baseline)"
python - "$OUT" <<'PY'
import csv, pathlib, sys
rows = list(csv.DictReader(open("sample_data/ct_rate_nc_sa/ct_clip_text_classifier/val.csv", encoding="utf-8")))
for i in (0, 1):
    pathlib.Path(sys.argv[1], f"report_{i}.txt").write_text(rows[i]["report_text"], encoding="utf-8")
PY
for i in 0 1; do
  ctrag generate --weights "$OUT/generator" --index "$OUT/index" --report-file "$OUT/report_$i.txt" \
    --strategy nearest --seed 0 --threads "$THREADS" --dice --baseline --no-progress \
    --out "$OUT/generated_report_$i.nii.gz"
done
step "done: $OUT/generated_report_{0,1}.nii.gz with .png (tri-planar + proxy overlay) and .provenance.json"
