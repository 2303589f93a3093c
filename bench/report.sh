#!/usr/bin/env bash
# Daily report benchmark (issue 21): one day of 300 drones, one report a minute each (432,000
# reports, ~4,300 alerts), then `vigie report` (PDF, then HTML) timed three times each.
# Usage: bench/report.sh [path/to/vigie]   (default: target/release/vigie)
set -euo pipefail
BIN=${1:-target/release/vigie}
DIR=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$DIR"' EXIT
"$BIN" serve --data-dir "$DIR/data" --grpc-addr 127.0.0.1:0 --wal off --shutdown-timeout 300s > "$DIR/out" 2> "$DIR/err" &
PID=$!
until grep -qs '^ready' "$DIR/out"; do sleep 0.2; done
ADDR=$(sed -n 's/^listening on grpc:\/\///p' "$DIR/out")
"$BIN" simulate --target "$ADDR" --drones 300 --reports-per-drone 1440 \
  --start 2026-03-01T00:00:00Z --seed 1 | tail -1
kill -TERM "$PID"
wait "$PID" || { echo "vigie serve failed:"; grep -v "^ *[0-9]*: \|^ *at " "$DIR/err" | tail -15; exit 1; }
PID=""
for format in pdf html; do
  for run in 1 2 3; do
    start=$(date +%s.%N)
    "$BIN" report --data-dir "$DIR/data" --day 2026-03-01 --format "$format" \
      --out "$DIR/r.$format" 2>/dev/null | tail -1
    end=$(date +%s.%N)
    printf '%s run %s: %.2f s, %s bytes\n' "$format" "$run" "$(echo "$end - $start" | bc)" \
      "$(stat -c %s "$DIR/r.$format")"
  done
done
