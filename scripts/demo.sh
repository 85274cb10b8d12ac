#!/usr/bin/env bash
# `make demo`: the product end to end on the shipped real data. Every step is a plain `ctrag` command that a user
# can run by hand; outputs go to $OUT (default demo_out/).
set -euo pipefail
OUT=${OUT:-demo_out}
export COLUMNS=${COLUMNS:-160}
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/3 Ingest the shipped sample corpus (real CTs + masks, 900 real CT-RATE reports) and validate every case"
ctrag ingest sample_data --out "$OUT/corpus"

step "2/3 Index the train split (packaged MiniLM embeddings + hybrid label/lexical scorer fitted on train only)"
ctrag index "$OUT/corpus" --out "$OUT/index" --cache "$OUT/embeddings.sqlite"

step "3/3 Search with held-out (val) reports: the index never contains them"
for case in ctclip_val_8 ctclip_val_9 ctclip_val_19; do
  ctrag search --query-case "$case" --corpus "$OUT/corpus" --index "$OUT/index" --k 3
done
ctrag search "Right hilar mass. Post-obstructive atelectasis in the right middle lobe." \
  --index "$OUT/index" --k 3 --has-mask
