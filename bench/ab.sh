#!/usr/bin/env bash
# A/B of two `spindle` binaries in one run, alternating A B A B so the machine's drift hits both:
# spindle-bench's concurrent runs/s (every run a new thread's first, and conversations of 5 turns)
# and SSE stream events/s against each, on SQLite (and
# PostgreSQL with BACKENDS="sqlite postgres").
#   bench/ab.sh OLD_SPINDLE NEW_SPINDLE [ROUNDS]      # e.g. a build of main's parent vs this tree
# Reports: target/bench-results/ab-<label>-<backend>-<round>-<workload>.json and a summary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
a_bin=$1 b_bin=$2 rounds=${3:-2}
backends=${BACKENDS:-sqlite}
bench=${BENCH:-$root/target/release/spindle-bench}
[ -x "$bench" ] || (cd "$root" && cargo build --release -q -p spindle-bench)
port=${PORT:-2032}
base="http://127.0.0.1:$port"
out="$root/target/bench-results"; mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" || true
pid="" dir="" db=""
stop() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi
  if [ -n "$dir" ]; then rm -rf "$dir"; dir=""; fi
  if [ -n "$db" ]; then psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db" >/dev/null; db=""; fi
}
trap stop EXIT
start() {
  local bin=$1 backend=$2 flags=(--listen "127.0.0.1:$port" --log warn)
  "$bin" serve --help | grep -q -- --ws-max-connections-per-user && flags+=(--ws-max-connections-per-user 100000)
  "$bin" serve --help | grep -q -- --max-connections-per-address && flags+=(--max-connections 100000 --max-connections-per-address 100000)
  case $backend in
    sqlite) dir=$(mktemp -d /tmp/spindle-ab-XXXXXX); flags+=(--data-dir "$dir") ;;
    postgres) db="spindle_ab_$$"; psql -q -h 127.0.0.1 -U postgres -c "create database $db" >/dev/null
              flags+=(--database-url "postgres://postgres@127.0.0.1:5432/$db") ;;
  esac
  "$bin" serve "${flags[@]}" >/dev/null 2>&1 & pid=$!
  for _ in $(seq 300); do curl -sf -m 1 "$base/ok" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
for backend in $backends; do
  for round in $(seq "$rounds"); do
    for label in A B; do
      bin=$a_bin; [ $label = B ] && bin=$b_bin
      start "$bin" "$backend"
      for w in concurrent turns stream; do
        case $w in
          concurrent) cmd=concurrent args=(--clients 16,64 --seconds 5) ;;
          # Conversations of 5 turns: one run in 5 is a thread's first.
          turns) cmd=concurrent args=(--clients 16,64 --seconds 5 --runs-per-thread 5) ;;
          stream) cmd=stream args=(--events 1000 --repeat 5) ;;
        esac
        echo "== $label ($bin) $backend round $round: $w (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
        "$bench" "$cmd" "${args[@]}" --base-url "$base" --server-pid "$pid" --label "$label-$backend" \
          --json "$out/ab-$label-$backend-$round-$w.json"
      done
      stop
    done
  done
done
