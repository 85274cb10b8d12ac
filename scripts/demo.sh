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

step "1/6 Ingest the shipped sample corpus (real CTs + masks, 900 real CT-RATE reports) and validate every case"
ctrag ingest sample_data --out "$OUT/corpus" --no-progress

step "2/6 Index the train split (packaged MiniLM embeddings + hybrid label/lexical scorer fitted on train only)"
ctrag index "$OUT/corpus" --out "$OUT/index" --cache "$OUT/embeddings.sqlite" --no-progress

step "3/6 Case search with held-out (val) reports: the index never contains them"
ctrag search --query-case ctclip_val_9 --corpus "$OUT/corpus" --index "$OUT/index" --k 3
ctrag search "Mass in the right lung, adenocarcinoma." --index "$OUT/index" --k 3 --has-volume

step "4/6 Train the tiny generator on the real training CTs: VAE, text-conditioned UNet, ControlNet on anatomy masks"
for part in vae diffusion controlnet; do
  ctrag train "$part" --config tiny-cpu --corpus "$OUT/corpus" --out "$OUT/generator" --threads "$THREADS" --no-progress
done

step "5/6 Generate CTs for two held-out CT-RATE reports: nearest training case as anatomy proxy (+ text-only baseline)"
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

step "6/6 Check the HTTP service on these outputs: start ctrag serve, search and generate once over HTTP, stop it"
PORT=${PORT:-$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
ctrag serve --index "$OUT/index" --weights "$OUT/generator" --corpus "$OUT/corpus" --out "$OUT/serve" \
  --port "$PORT" --threads "$THREADS" > "$OUT/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill -INT $SERVE_PID 2>/dev/null || true' EXIT
python - "$PORT" "$OUT/report_0.txt" <<'PY'
import pathlib, sys, time
import httpx
url, report = f"http://127.0.0.1:{sys.argv[1]}", pathlib.Path(sys.argv[2]).read_text(encoding="utf-8")
for _ in range(600):
    try:
        httpx.get(f"{url}/api/health", timeout=2).raise_for_status()
        break
    except httpx.HTTPError:
        time.sleep(0.2)
else:
    sys.exit("ctrag serve did not start; see serve.log")
hits = httpx.post(f"{url}/api/search", json={"text": report, "k": 3}, timeout=60).json()["hits"]
job = httpx.post(f"{url}/api/jobs", json={"report": report, "seed": 0}, timeout=60).json()
while (status := httpx.get(f"{url}/api/jobs/{job['job_id']}", timeout=60).json())["state"] in ("queued", "running"):
    time.sleep(0.2)
assert status["state"] == "succeeded", status
print(f"service ok: top hit {hits[0]['case_id']}; job {status['job_id']} -> {status['result']['files']['ct']}")
PY
kill -INT $SERVE_PID; wait $SERVE_PID || true; trap - EXIT

step "done: $OUT/generated_report_{0,1}.nii.gz with .png (tri-planar + proxy overlay) and .provenance.json"
printf '\nOpen the viewer (generate from a report, scroll the CT with its proxy overlay beside the retrieved case):\n'
printf '  ctrag serve --index %s/index --weights %s/generator --corpus %s/corpus --out %s/serve\n' "$OUT" "$OUT" "$OUT" "$OUT"
printf '  then open http://127.0.0.1:8000/ in a browser (run `source .venv/bin/activate` first if ctrag is not on PATH)\n'
