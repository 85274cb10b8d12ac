#!/usr/bin/env bash
# The demo behind `make demo`: every step is a plain `ctrag` command a user can run by hand.
set -euo pipefail
OUT=${OUT:-demo_out}
mkdir -p "$OUT"
ctrag --help
