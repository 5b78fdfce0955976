#!/usr/bin/env bash
# Starts LangGraph's dev server (in-memory runtime) with the echo and synthetic graphs on
# 127.0.0.1:${PORT:-2031} (2024, its default, is taken on our machines). Runs in the
# foreground; `exec` so the pid you start is the server's. Logs to stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${VENV:-$root/target/peer-venv}"
"$here/setup.sh" >/dev/null
cd "$here"
# The dev server persists its in-memory store here between starts: start empty.
rm -rf .langgraph_api
# No tracing, no analytics, no browser, no reloader process.
export LANGSMITH_TRACING=false LANGCHAIN_TRACING_V2=false LANGGRAPH_CLI_NO_ANALYTICS=1
exec "$venv/bin/langgraph" dev --no-browser --no-reload --port "${PORT:-2031}" --host 127.0.0.1 \
  ${N_JOBS_PER_WORKER:+--n-jobs-per-worker "$N_JOBS_PER_WORKER"}
