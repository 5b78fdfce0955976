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
# TARGET: all | sqlite | postgres | langgraph | graphs | graphs-pg (quoted lists work too).
# WORKLOAD: sequential | concurrent | stream | race | sessions | websocket. Needs PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust) for `postgres` and `graphs-pg`, and python3 (a
# virtualenv is made by bench/peers/langgraph/setup.sh) for `langgraph`. Bounded: every
# workload stops by itself (seconds to a minute each).
#
# `graphs` / `graphs-pg`: Spindle on SQLite / PostgreSQL serving the very same Python graphs as
# `langgraph` (bench/peers/langgraph/langgraph.json: `echo`, `synthetic`) on
# ${GRAPH_WORKERS:-1} Python worker processes (`--graphs --python --workers`), with the
# interpreter ${GRAPH_PYTHON:-target/py-venv/bin/python} (made by
# `bash python/ci.sh --setup requirements-test.lock`). Measuring starts once a worker answers
# an `echo` run. Reports of GRAPH_WORKERS=N (N > 1) are labelled graphs-wN / graphs-pg-wN.
#
# Each workload's arguments can be replaced: SEQUENTIAL_ARGS, CONCURRENT_ARGS, STREAM_ARGS,
# RACE_ARGS, SESSIONS_ARGS, WEBSOCKET_ARGS (e.g. CONCURRENT_ARGS="--clients 16,64 --seconds 5").
# After a target's workloads, the peak RSS (VmHWM) of the server and of each of its descendant
# processes (LangGraph's or Spindle's workers) is printed and written to
# target/bench-results/LABEL-memory.txt.
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
    local children; children="$(descendants "$server_pid")"
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    # Spindle's workers die with it (kill_on_drop); make sure, by their pids.
    for _ in $(seq 1 50); do
      local alive=""
      for pid in $children; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
      [ -z "$alive" ] && break
      sleep 0.1
    done
    for pid in $children; do
      if kill -0 "$pid" 2>/dev/null; then
        echo "descendant $pid outlived the server: killing it" >&2
        kill "$pid" 2>/dev/null || true
      fi
    done
  fi
  if [ -n "$cleanup_cmd" ]; then eval "$cleanup_cmd"; cleanup_cmd=""; fi
}
trap stop_server EXIT

# Every live descendant of a pid, depth first.
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

# Peak RSS since start (VmHWM) of the server and of each descendant, and their sum.
report_memory() {
  local label="$1" file="$out/$1-memory.txt" total=0 pid hwm rss
  {
    echo "== $label: peak RSS (VmHWM) / RSS now, MB"
    for pid in "$server_pid" $(descendants "$server_pid"); do
      hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      total=$((total + ${hwm:-0}))
      printf '%8s  %6.1f / %6.1f  %s\n' "$pid" "$(echo "${hwm:-0}/1024" | bc -l)" \
        "$(echo "${rss:-0}/1024" | bc -l)" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-110)"
    done
    printf 'sum of peaks: %.1f MB\n' "$(echo "$total/1024" | bc -l)"
  } | tee "$file"
}

# Spindle with --graphs answers /ok before its worker has connected: wait until an `echo` run
# on a worker answers 200 (bounded).
wait_worker() {
  local log="$1" thread
  for _ in $(seq 1 120); do
    thread=$(curl -sf -m 5 -X POST -H 'content-type: application/json' -d '{}' "$base/threads" |
      sed -n 's/.*"thread_id" *: *"\([^"]*\)".*/\1/p') || true
    if [ -n "$thread" ] && curl -sf -m 10 -o /dev/null -X POST -H 'content-type: application/json' \
      -d '{"assistant_id":"echo","input":{"messages":[{"role":"human","content":"hi"}]}}' \
      "$base/threads/$thread/runs/wait"; then
      return 0
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then echo "server exited; see $log" >&2; return 1; fi
    sleep 0.5
  done
  echo "no worker answered an echo run in 120 s; see $log" >&2
  return 1
}

wait_ready() {
  for _ in $(seq 1 600); do
    if curl -sf -m 2 "$base/ok" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then echo "server exited; see $1" >&2; return 1; fi
    sleep 0.2
  done
  echo "server not ready after 120 s; see $1" >&2
  return 1
}

spindle_flags=(--listen "127.0.0.1:$port" --log "${SPINDLE_LOG:-warn}")
if "$spindle" serve --help 2>/dev/null | grep -q -- --ws-max-connections-per-user; then
  spindle_flags+=(--ws-max-connections-per-user 100000)
fi
# Every client is on loopback here: the connection caps are for strangers, not the benchmark.
if "$spindle" serve --help 2>/dev/null | grep -q -- --max-connections-per-address; then
  spindle_flags+=(--max-connections 100000 --max-connections-per-address 100000)
fi

graph_workers="${GRAPH_WORKERS:-1}"
graph_python="${GRAPH_PYTHON:-$root/target/py-venv/bin/python}"
graph_flags=(--graphs "$root/bench/peers/langgraph/langgraph.json" --python "$graph_python"
  --workers "$graph_workers")

# The name of a target's reports: graphs with more than one worker say how many.
label_of() {
  case "$1" in
    graphs | graphs-pg) if [ "$graph_workers" != 1 ]; then echo "$1-w$graph_workers"; return; fi ;;
  esac
  echo "$1"
}

start_target() {
  local target="$1" log; log="$out/$(label_of "$1")-server.log"
  case "$target" in
    sqlite | graphs)
      local dir extra=(); dir="$(mktemp -d /tmp/spindle-bench-XXXXXX)"
      [ "$target" = graphs ] && extra=("${graph_flags[@]}")
      "$spindle" serve "${spindle_flags[@]}" --data-dir "$dir" "${extra[@]}" >"$log" 2>&1 &
      server_pid=$!
      cleanup_cmd="rm -rf '$dir'"
      ;;
    postgres | graphs-pg)
      local db="spindle_bench_$$" extra=()
      [ "$target" = graphs-pg ] && extra=("${graph_flags[@]}")
      psql -q -h 127.0.0.1 -U postgres -c "create database $db" >/dev/null
      "$spindle" serve "${spindle_flags[@]}" \
        --database-url "postgres://postgres@127.0.0.1:5432/$db" "${extra[@]}" >"$log" 2>&1 &
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
  case "$target" in graphs | graphs-pg) wait_worker "$log" ;; esac
}

run_workload() {
  local target="$1" workload="$2"
  local args=()
  case "$workload" in
    sequential) read -ra args <<<"${SEQUENTIAL_ARGS:---runs 500 --warmup 20}" ;;
    concurrent) read -ra args <<<"${CONCURRENT_ARGS:---clients 16,64,256 --seconds 5}" ;;
    stream) read -ra args <<<"${STREAM_ARGS:---events 1000 --repeat 5}" ;;
    race) read -ra args <<<"${RACE_ARGS:---clients 50}" ;;
    sessions) read -ra args <<<"${SESSIONS_ARGS:---sessions 1000 --concurrency 64}" ;;
    websocket) read -ra args <<<"${WEBSOCKET_ARGS:---idle 10000 --fanout 1000 --events 1000}" ;;
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
    run_workload "$(label_of "$target")" "$workload"
  done
  report_memory "$(label_of "$target")"
  stop_server
done
