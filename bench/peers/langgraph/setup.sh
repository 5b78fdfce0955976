#!/usr/bin/env bash
# Makes the virtualenv for LangGraph's dev server (the in-memory runtime), pinned to the
# versions measured in BENCHMARKS.md. Idempotent. VENV defaults to target/peer-venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
venv="${VENV:-$root/target/peer-venv}"
if [ ! -x "$venv/bin/langgraph" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet \
    "langgraph-cli[inmem]==0.4.40" "langgraph-api==0.16.7" "langgraph-runtime-inmem==0.36.7" \
    "langgraph==1.2.24" "langchain-core==1.8.3"
fi
"$venv/bin/pip" list 2>/dev/null | grep -E '^(langgraph|langchain-core|uvicorn) ' || true
