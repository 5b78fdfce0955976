#!/usr/bin/env bash
# The walls of ARCHITECTURE.md that a Cargo.toml edge alone does not show:
#  1. the crate graph: the API layer does not depend on the store, agents depend on neither the
#     store nor the engine, the wire formats (protocol) on neither the store, the engine nor
#     axum, and the domain on nothing of ours but ids (each is also a compile error: a crate
#     cannot name what it does not depend on; this says which edge must stay missing);
#  2. nothing but the event log appends events: outside crates/store (which defines them), the
#     store's appending functions are called only in crates/engine/src/log.rs, which publishes
#     what they commit (persist, then publish, in one place). Tests may call them.
# Exit 1 and one line per breach.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
status=0

# 1. Missing edges (normal dependencies, transitively).
deny() { # crate, forbidden dependency
  if cargo tree -q --locked -e normal -p "$1" --prefix none 2>/dev/null | grep -q "^$2 "; then
    echo "wall breached: $1 depends on $2"
    status=1
  fi
}
deny spindle-api spindle-store
deny spindle-api rusqlite
deny spindle-api sqlx
deny spindle-agents spindle-store
deny spindle-agents spindle-engine
deny spindle-protocol spindle-store
deny spindle-protocol spindle-engine
deny spindle-protocol axum
deny spindle-domain spindle-store

# 2. The event log is the only appender.
appenders='\.(append_events|append_event|commit_step|commit_first_step|finish_run|create_run_claiming)\('
while IFS= read -r hit; do
  echo "an event is appended outside the event log (crates/engine/src/log.rs): $hit"
  status=1
done < <(git ls-files -- 'crates/*/src/*.rs' ':(exclude)crates/store/*' ':(exclude)crates/engine/src/log.rs' \
  | xargs grep -nE "$appenders" || true)

exit "$status"
