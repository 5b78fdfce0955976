#!/usr/bin/env bash
# The walls of ARCHITECTURE.md that a Cargo.toml edge alone does not show:
#  1. the crate graph: the API layer does not depend on the store, agents depend on neither the
#     store nor the engine, the wire formats (protocol) on neither the store, the engine nor
#     axum, the engine (and so its hub) on no wire format, and the domain not on the store (each is also a compile error: a crate
#     cannot name what it does not depend on; this says which edge must stay missing);
#  2. nothing but the event log appends events: outside crates/store (which defines them), the
#     store's appending functions are called only in crates/engine/src/log.rs, which publishes
#     what they commit (persist, then publish, in one place). Tests may call them.
#  3. no module imports a sibling module that imports it back.
# Exit 1 and one line per breach.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
status=0

# 1. Missing edges: `deny` a normal dependency at any depth, `deny_direct` a direct one (the
# API reaches the store through the engine, and must not name it).
deny() { # crate, forbidden dependency
  forbid "$1" "$2" ""
}
deny_direct() {
  forbid "$1" "$2" "--depth 1"
}
forbid() { # crate, forbidden dependency, cargo tree options
  if ! cargo metadata -q --format-version 1 --no-deps | grep -q "\"name\":\"$1\""; then
    echo "wall check: no crate $1 in the workspace (renamed? update ci/check-walls.sh)"
    status=1
    return
  fi
  # shellcheck disable=SC2086 # $3: options, split on purpose
  if cargo tree -q -e normal -p "$1" $3 --prefix none 2>/dev/null | tail -n +2 | grep -q "^$2 "; then
    echo "wall breached: $1 depends on $2"
    status=1
  fi
}
deny_direct spindle-api spindle-store
deny_direct spindle-api rusqlite
deny_direct spindle-api sqlx
deny spindle-agents spindle-store
deny spindle-agents spindle-engine
deny spindle-protocol spindle-store
deny spindle-protocol spindle-engine
deny spindle-protocol axum
deny spindle-domain spindle-store
deny spindle-engine spindle-protocol
deny spindle-engine axum

# 2. The event log is the only appender: no store value (`store`, `self.store`,
# `self.inner.store`, ...) calls an appending function anywhere else, even across lines.
appenders='append_events|append_event|commit_step|commit_first_step|finish_run|create_run_claiming'
while IFS= read -r hit; do
  echo "an event is appended outside the event log (crates/engine/src/log.rs): $hit"
  status=1
done < <(git ls-files -- 'crates/*/src/*.rs' ':(exclude)crates/store/*' ':(exclude)crates/engine/src/log.rs' \
  | xargs perl -0777 -ne 'while (/\bstore\s*\.\s*('"$appenders"')\s*\(/g) { print "$ARGV: store.$1(\n" }' || true)

# 3. No module imports a sibling that imports it back (within each crate; a module's
# submodules count as the module, and the crate root is every module's parent).
cycles=$(python3 - <<'PY'
import glob, itertools, os, re
for crate in sorted(glob.glob('crates/*/src')):
    deps = {}
    for path in glob.glob(crate + '/**/*.rs', recursive=True):
        rel = os.path.relpath(path, crate)
        if rel in ('lib.rs', 'main.rs'):
            continue
        module = rel[:-3].replace('/mod', '').split('/')[0]
        text = open(path).read()
        used = set(re.findall(r'crate::([a-z_]+)', text))
        for group in re.findall(r'use crate::\{([^}]*)\}', text):
            used.update(p.strip().split('::')[0] for p in group.split(',') if p.strip())
        deps.setdefault(module, set()).update(used - {module})
    for a, b in itertools.combinations(sorted(deps), 2):
        if b in deps[a] and a in deps.get(b, ()):
            print(f'{crate}: {a} and {b} import each other')
PY
)
if [ -n "$cycles" ]; then
  echo "$cycles" | sed 's/^/module cycle: /'
  status=1
fi

exit "$status"
