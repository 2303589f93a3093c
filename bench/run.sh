#!/usr/bin/env bash
# Reproduces the figures of BENCHMARKS.md: `vigie simulate` against `vigie serve`, both on this
# machine, release build. Usage: bench/run.sh [ingest|alerts|runaway|cluster|all]
# KEEP_TMP=1 keeps the temporary directory (servers' logs) after the run.
# RATES="100000" picks the alert loads (default: 10000 and 100000).
# PIN=1 runs the server on CPU 0 and the load generator (and its alert subscriber) on CPU 1, a
# stand-in for drones and dispatchers on other machines (the server then has one core).
# IDLE_SPIN=1 keeps one SCHED_IDLE busy loop on each CPU, so that no vCPU ever halts: it measures
# what the VM's wake-up of a halted vCPU adds to the alert latency (not a production setting).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$CARGO_TARGET_DIR/release/vigie"
[ -x "$BIN" ] || cargo build --release -p vigie-cli
what="${1:-all}"
SERVER_CPUS=(); CLIENT_CPUS=()
if [ "${PIN:-0}" = 1 ]; then SERVER_CPUS=(taskset -c 0); CLIENT_CPUS=(taskset -c 1); fi

serve() { # serve DIR ARGS... → prints the address; the PID is in $DIR/pid
  local dir=$1; shift
  mkdir -p "$dir"
  "${SERVER_CPUS[@]}" "$BIN" serve --data-dir "$dir" --grpc-addr 127.0.0.1:0 "$@" >"$dir/out" 2>"$dir/log" &
  echo $! >"$dir/pid"
  for _ in $(seq 100); do
    grep -q listening "$dir/out" 2>/dev/null && break
    sleep 0.1
  done
  sed -n 's/listening on grpc:\/\///p' "$dir/out"
}
wait_ready() { # wait_ready DIR: until the server printed `ready` (its WAL or stream replayed)
  for _ in $(seq 600); do
    grep -qx ready "$1/out" 2>/dev/null && return
    sleep 0.1
  done
  echo "server in $1 never became ready" >&2; exit 1
}
stop() { # stop DIR: SIGTERM, then wait until the server exited (it flushes and, in cluster
  # mode, releases its leases first). `wait` cannot: serve ran it in a $(…) subshell.
  local pid; pid=$(cat "$1/pid")
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

tmp=$(mktemp -d)
trap 'for p in "$tmp"/*/pid; do kill -9 "$(cat "$p")" 2>/dev/null || true; done; [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
if [ "${IDLE_SPIN:-0}" = 1 ]; then
  for cpu in $(seq 0 $(($(nproc) - 1))); do
    mkdir -p "$tmp/spin-$cpu"
    taskset -c "$cpu" chrt -i 0 sh -c 'while :; do :; done' &
    echo $! >"$tmp/spin-$cpu/pid"
  done
fi
FLEET=(--drones 2000 --reports-per-drone 1500 --seed 1 --start 2026-01-01T00:00:00Z)

if [ "$what" = ingest ] || [ "$what" = all ]; then
  # Interleaved (off, fsync, off, …) so that drift on the shared VM hits both alike.
  for run in 1 2 3; do
    for wal in off fsync; do
      addr=$(serve "$tmp/ingest-$wal-$run" --wal "$wal" --compact-interval 0s)
      printf 'ingest wal=%-5s run %s: ' "$wal" "$run"
      "$BIN" simulate --target "$addr" "${FLEET[@]}" --batch 1000 --streams 4
      stop "$tmp/ingest-$wal-$run"
    done
  done
fi

if [ "$what" = alerts ] || [ "$what" = all ]; then
  # 30 s per run so that flushes (every 10 s) fall inside the window; WAL off then fsync.
  for rate in ${RATES:-10000 100000}; do
    for wal in off fsync; do
      addr=$(serve "$tmp/alerts-$rate-$wal" --wal "$wal" --compact-interval 0s)
      echo "alerts at ${rate} reports/s (batches of 100, WAL $wal, 30 s):"
      "${CLIENT_CPUS[@]}" "$BIN" simulate --target "$addr" --drones 2000 --reports-per-drone $((rate * 30 / 2000)) \
        --seed 2 --start 2026-01-01T00:00:00Z --rate "$rate" --batch 100 --streams 2 --measure-alerts
      stop "$tmp/alerts-$rate-$wal"
    done
  done
fi

if [ "$what" = runaway ] || [ "$what" = all ]; then
  # Ingest ack and alert p99 at 10k reports/s, alone and with four runaway queries running
  # (issue 17's goal: the queries change neither p99 by more than 2x), interleaved, WAL fsync.
  RUNAWAY=(
    "SELECT count(*) FROM generate_series(1, 1000000000000)"
    "SELECT count(*) FROM generate_series(1, 100000) a JOIN generate_series(1, 100000) b ON a.value % 7 < b.value % 11"
    "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 100000000)"
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
  )
  for run in 1 2 3; do
    for load in none runaway; do
      dir="$tmp/runaway-$load-$run"
      addr=$(serve "$dir" --compact-interval 0s --query-timeout 60s)
      pids=()
      if [ "$load" = runaway ]; then
        for sql in "${RUNAWAY[@]}"; do
          # Each statement again as soon as it is cancelled, for the whole run.
          (while kill -0 "$(cat "$dir/pid")" 2>/dev/null; do
             "$BIN" query --endpoint "grpc://$addr" "$sql" >/dev/null 2>&1 || true
           done) &
          pids+=($!)
        done
        sleep 2
      fi
      echo "run $run, runaway queries: $load (10k reports/s, batches of 100, WAL fsync, 30 s):"
      "${CLIENT_CPUS[@]}" "$BIN" simulate --target "$addr" --drones 2000 --reports-per-drone 150 \
        --seed 2 --start 2026-01-01T00:00:00Z --rate 10000 --batch 100 --streams 2 --measure-alerts
      stop "$dir"
      for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    done
  done
fi

if [ "$what" = cluster ] || [ "$what" = all ]; then
  # Ingest into one node whose WAL is a 3-node NATS JetStream cluster (R3, sync_interval: always,
  # all on this machine's 2 cores) vs the local WAL, interleaved; then alert latency at 10k/s.
  NATS="${NATS_SERVER:-$(command -v nats-server || echo "$PWD/.venv/bin/nats-server")}"
  urls=()
  for i in 0 1 2; do
    mkdir -p "$tmp/nats-$i"
    routes=""
    for j in 0 1 2; do
      if [ "$j" != "$i" ]; then routes="$routes nats://127.0.0.1:$((16222 + j)),"; fi
    done
    cat >"$tmp/nats-$i.conf" <<CONF
server_name: n$i
listen: "127.0.0.1:$((14222 + i))"
http: "127.0.0.1:$((18222 + i))"
jetstream { store_dir: "$tmp/nats-$i", sync_interval: always }
cluster { name: vigie, listen: "127.0.0.1:$((16222 + i))", routes: [${routes%,}] }
CONF
    "$NATS" -c "$tmp/nats-$i.conf" >"$tmp/nats-$i/log" 2>&1 &
    echo $! >"$tmp/nats-$i/pid"
    urls+=("nats://127.0.0.1:$((14222 + i))")
  done
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:18222/jsz | grep -q '"leader"' && break
    sleep 0.2
  done
  stream=$(IFS=,; echo "${urls[*]}")
  for run in ${CLUSTER_RUNS:-1 2 3}; do
    for wal in fsync stream; do
      if [ "$wal" = stream ]; then args=(--stream "$stream" --cluster-secret bench-cluster-secret-0001); else args=(--wal fsync); fi
      # A fresh lake per run; the stream outlives it (one per tenant): other drones each run.
      dir="$tmp/cluster-$wal-$run"
      addr=$(serve "$dir" "${args[@]}" --compact-interval 0s)
      printf 'cluster ingest wal=%-6s run %s: ' "$wal" "$run"
      "$BIN" simulate --target "$addr" --drones 2000 --reports-per-drone 250 --seed "$run" \
        --first-drone $((run * 10000)) --start 2026-01-01T00:00:00Z --batch 1000 --streams 4
      stop "$dir"
    done
  done
  if [ "${CLUSTER_ALERTS:-1}" = 1 ]; then
  addr=$(serve "$tmp/cluster-alerts" --stream "$stream" --cluster-secret bench-cluster-secret-0001 --compact-interval 0s)
  wait_ready "$tmp/cluster-alerts"
  echo "alerts at 10000 reports/s (batches of 100, WAL on JetStream R3, 30 s):"
  "$BIN" simulate --target "$addr" --drones 2000 --reports-per-drone 150 --seed 9 --first-drone 90000 \
    --start 2026-03-01T00:00:00Z --rate 10000 --batch 100 --streams 2 --measure-alerts
  stop "$tmp/cluster-alerts"
  fi

  # Two nodes on one lake: writes through the follower (forwarded to the owner) vs to the owner,
  # then the owner killed with -9: how long the survivor refuses writes (lease TTL 5 s + one
  # renewal period + claim and replay), as a drone retrying every 50 ms sees it.
  lake="$tmp/takeover-lake"; mkdir -p "$lake"
  common=(--stream "$stream" --stream-prefix takeover --cluster-secret bench-cluster-secret-0001
          --compact-interval 0s --object-store "file://$lake/")
  owner=$(serve "$tmp/takeover-a" "${common[@]}"); wait_ready "$tmp/takeover-a"
  follower=$(serve "$tmp/takeover-b" "${common[@]}"); wait_ready "$tmp/takeover-b"
  for run in 1 2 3; do
    for target in owner follower; do
      printf 'cluster ingest to the %-8s run %s: ' "$target" "$run"
      if [ "$target" = owner ]; then addr=$owner; first=$((run * 10000 + 100000))
      else addr=$follower; first=$((run * 10000 + 200000)); fi
      "$BIN" simulate --target "$addr" --drones 2000 --reports-per-drone 250 --seed "$run" \
        --first-drone "$first" --start 2026-01-01T00:00:00Z --batch 1000 --streams 4
    done
  done
  kill -9 "$(cat "$tmp/takeover-a/pid")"
  t0=$(date +%s.%N); n=0
  until "$BIN" simulate --target "$follower" --drones 1 --reports-per-drone 1 --seed 1 \
      --first-drone $((900000 + n)) --start 2026-01-01T00:00:00Z >/dev/null 2>&1; do
    n=$((n + 1)); sleep 0.05
  done
  t1=$(date +%s.%N)
  echo "takeover after kill -9: writes refused for $(echo "$t1 - $t0" | bc) s ($n retries); $(grep -o 'took the tenant over.*' "$tmp/takeover-b/log" | tail -1)"
  stop "$tmp/takeover-b"
fi
