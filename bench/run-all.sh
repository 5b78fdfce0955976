#!/usr/bin/env bash
# Runs spindle-bench's workloads against Spindle on SQLite, Spindle on PostgreSQL and
# LangGraph's dev server, one server at a time on loopback, each workload with --server-pid so
# the server's CPU and peak RSS are measured. Reports go to stdout and JSON files under
# target/bench-results/.
#
#   bench/run-all.sh                       # every target, every workload
#   bench/run-all.sh all concurrent        # one row of BENCHMARKS.md: the 3 servers, 1 workload
#   bench/run-all.sh sqlite concurrent     # one cell: TARGET WORKLOAD
#   TARGETS="sqlite postgres" WORKLOADS="race stream" bench/run-all.sh
#
# TARGET: all | sqlite | postgres | langgraph (quoted lists work too). WORKLOAD: sequential | concurrent | stream | race |
# sessions | websocket. Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) for
# `postgres`, and python3 (a virtualenv is made by bench/peers/langgraph/setup.sh) for
# `langgraph`. Bounded: every workload stops by itself (seconds to a minute each).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
targets="${1:-${TARGETS:-all}}"
if [ "$targets" = all ]; then targets="sqlite postgres langgraph"; fi
workloads="${2:-${WORKLOADS:-sequential concurrent stream race sessions websocket}}"
port="${PORT:-2031}"
base="http://127.0.0.1:$port"
out="$root/target/bench-results"
mkdir -p "$out"
# The server needs file descriptors for many WebSocket connections.
ulimit -n "$(ulimit -Hn)" || true

cargo build --release -q -p spindle-server -p spindle-bench
spindle="$root/target/release/spindle"
bench="$root/target/release/spindle-bench"

server_pid=""
cleanup_cmd=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  if [ -n "$cleanup_cmd" ]; then eval "$cleanup_cmd"; cleanup_cmd=""; fi
}
trap stop_server EXIT

wait_ready() {
  for _ in $(seq 1 600); do
    if curl -sf -m 2 "$base/ok" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then echo "server exited; see $1" >&2; return 1; fi
    sleep 0.2
  done
  echo "server not ready after 120 s; see $1" >&2
  return 1
}

spindle_flags=(--listen "127.0.0.1:$port" --log warn)
if "$spindle" serve --help 2>/dev/null | grep -q -- --ws-max-connections-per-user; then
  spindle_flags+=(--ws-max-connections-per-user 100000)
fi
# Every client is on loopback here: the connection caps are for strangers, not the benchmark.
if "$spindle" serve --help 2>/dev/null | grep -q -- --max-connections-per-address; then
  spindle_flags+=(--max-connections 100000 --max-connections-per-address 100000)
fi

start_target() {
  local target="$1" log="$out/$1-server.log"
  case "$target" in
    sqlite)
      local dir; dir="$(mktemp -d /tmp/spindle-bench-XXXXXX)"
      "$spindle" serve "${spindle_flags[@]}" --data-dir "$dir" >"$log" 2>&1 &
      server_pid=$!
      cleanup_cmd="rm -rf '$dir'"
      ;;
    postgres)
      local db="spindle_bench_$$"
      psql -q -h 127.0.0.1 -U postgres -c "create database $db" >/dev/null
      "$spindle" serve "${spindle_flags[@]}" \
        --database-url "postgres://postgres@127.0.0.1:5432/$db" >"$log" 2>&1 &
      server_pid=$!
      cleanup_cmd="psql -q -h 127.0.0.1 -U postgres -c 'drop database if exists $db' >/dev/null"
      ;;
    langgraph)
      # The same number of runs at once as Spindle's default --run-concurrency (64).
      N_JOBS_PER_WORKER="${N_JOBS_PER_WORKER:-64}" PORT="$port" \
        bench/peers/langgraph/start.sh >"$log" 2>&1 &
      server_pid=$!
      ;;
    *) echo "unknown target $target" >&2; exit 1 ;;
  esac
  wait_ready "$log"
}

run_workload() {
  local target="$1" workload="$2"
  local args=()
  case "$workload" in
    sequential) args=(--runs 500 --warmup 20) ;;
    concurrent) args=(--clients 16,64,256 --seconds 5) ;;
    stream) args=(--events 1000 --repeat 5) ;;
    race) args=(--clients 50) ;;
    sessions) args=(--sessions 1000 --concurrency 64) ;;
    websocket) args=(--idle 10000 --fanout 1000 --events 1000) ;;
    *) echo "unknown workload $workload" >&2; exit 1 ;;
  esac
  echo "== $target: spindle-bench $workload ${args[*]} (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
  # Exit code 2 is a correctness failure: reported, and the run goes on.
  "$bench" "$workload" "${args[@]}" --base-url "$base" --server-pid "$server_pid" \
    --label "$target" --json "$out/$target-$workload.json" || [ $? -eq 2 ]
}

for target in $targets; do
  start_target "$target"
  for workload in $workloads; do
    run_workload "$target" "$workload"
  done
  stop_server
done
