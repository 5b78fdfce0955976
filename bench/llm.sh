#!/usr/bin/env bash
# The llm agent's cost per token (#15): the tests' model server (`spindle-testkit model`) in a
# process of its own, Spindle configured with it (--llm-base-url), and `spindle-bench llm`:
# the model server's own rate read directly, the same through Spindle's `llm` runs over SSE
# (ratio, goal ≥ 0.9), per-token latency and Spindle's CPU per token. Release builds.
#   bench/llm.sh                                   # SQLite
#   BACKENDS="sqlite postgres" bench/llm.sh        # also PostgreSQL (a fresh database, dropped)
#   TOKENS=1000 CONCURRENCY=100 RUNS=100 ALONE=5 PER_CHUNK=1 INTERVAL_US=0 bench/llm.sh
#   SPINDLE_BINS="OLD NEW" ROUNDS=2 bench/llm.sh   # an A/B: the binaries in turns, each round
#     PER_CHUNK: tokens per HTTP write; INTERVAL_US: the model server's wait between writes
# Reports: target/bench-results/llm-<backend>-k<PER_CHUNK>-i<INTERVAL_US>.json and the table on stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
backends=${BACKENDS:-sqlite}
tokens=${TOKENS:-1000} per_chunk=${PER_CHUNK:-1} interval_us=${INTERVAL_US:-0} concurrency=${CONCURRENCY:-100} runs=${RUNS:-100} alone=${ALONE:-5}
port=${PORT:-2033}
base="http://127.0.0.1:$port"
out="$root/target/bench-results"; mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" || true

# Two builds: one would unify the tools' dependency features into the server's build.
cargo build --release -q -p spindle-server
cargo build --release -q -p spindle-bench -p spindle-testkit
bin="${CARGO_TARGET_DIR:-$root/target}/release"
servers=${SPINDLE_BINS:-$bin/spindle} rounds=${ROUNDS:-1}

model_pid="" pid="" dir="" db="" model_out=""
stop_spindle() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi
  if [ -n "$dir" ]; then rm -rf "$dir"; dir=""; fi
  if [ -n "$db" ]; then psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db" >/dev/null; db=""; fi
}
stop_all() {
  stop_spindle
  if [ -n "$model_pid" ]; then kill "$model_pid" 2>/dev/null || true; wait "$model_pid" 2>/dev/null || true; model_pid=""; fi
  if [ -n "$model_out" ]; then rm -f "$model_out"; fi
}
trap stop_all EXIT

model_out=$(mktemp /tmp/spindle-llm-model-XXXXXX)
"$bin/spindle-testkit" model --listen 127.0.0.1:0 >"$model_out" & model_pid=$!
model_url=""
for _ in $(seq 100); do
  model_url=$(awk '$1 == "model" { print $2 }' "$model_out")
  [ -n "$model_url" ] && break
  sleep 0.1
done
[ -n "$model_url" ] || { echo "the model server did not start" >&2; exit 1; }

start() {
  local backend=$1 server=$2
  # Every run at once (the default is 64 places); every client is on loopback.
  local flags=(--listen "127.0.0.1:$port" --log warn --llm-base-url "$model_url"
    --run-concurrency "$((concurrency > 64 ? concurrency : 64))"
    --max-connections 100000 --max-connections-per-address 100000)
  case $backend in
    sqlite) dir=$(mktemp -d /tmp/spindle-llm-XXXXXX); flags+=(--data-dir "$dir") ;;
    postgres) db="spindle_llm_$$"; psql -q -h 127.0.0.1 -U postgres -c "create database $db" >/dev/null
              flags+=(--database-url "postgres://postgres@127.0.0.1:5432/$db") ;;
    *) echo "unknown backend $backend" >&2; exit 1 ;;
  esac
  "$server" serve "${flags[@]}" >"$out/llm-$backend-server.log" 2>&1 & pid=$!
  for _ in $(seq 300); do curl -sf -m 1 "$base/ok" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "spindle did not start; see $out/llm-$backend-server.log" >&2; exit 1
}

status=0
for backend in $backends; do
  for round in $(seq "$rounds"); do
    k=0
    for server in $servers; do
      k=$((k + 1))
      start "$backend" "$server"
      echo "== $backend round $round, server $k ($server): model $model_url (pid $model_pid), spindle $base (pid $pid), loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
      "$bin/spindle-bench" llm --base-url "$base" --model-url "$model_url" --server-pid "$pid" \
        --tokens "$tokens" --tokens-per-chunk "$per_chunk" --interval-us "$interval_us" --concurrency "$concurrency" --runs "$runs" --alone "$alone" \
        --timeout 300 --label "spindle $backend #$k" --json "$out/llm-$backend-s$k-r$round-k$per_chunk-i$interval_us.json" || status=$?
      stop_spindle
    done
  done
done
exit "$status"
