#!/usr/bin/env bash
# The hand-made-id check (DESIGN.md invariant 1): no id minted, parsed or assembled from strings
# outside crates/ids. Clippy's disallowed-methods catches calls; this catches what clippy cannot
# see: ids glued together from prefixes and parts, other id libraries, and any uuid constructor
# a feature flag may add later.
#
# Usage: ci/check-ids.sh [FILE...]   (default: every tracked .rs file outside crates/ids)
# Exit 1 and one line per finding when something is found.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files -- '*.rs' ':(exclude)crates/ids/**')
fi
[ "${#files[@]}" -gt 0 ] || exit 0

prefixes='thread|run|req|request|user|session|conn|connection|ws|websocket|websocket_factory|msg|message|checkpoint|assistant|agent|ctx|event'
patterns=(
  # uuid/ulid constructors, whatever features are enabled
  'Uuid::(new_v[0-9]|now_v[0-9]|from_u128|from_u64_pair|from_fields|from_bytes|from_slice|parse_str|try_parse)|Builder::from_|Ulid::|uuid4\('
  # a prefixed id assembled in a format string: "thread_{}", "req_{id}", ...
  "\"(${prefixes})_[^\"]*\\{[^}]*\\}"
  # a bare prefix literal to glue onto something: "req_", "thread_"
  "\"(${prefixes})_\""
  # ids glued from parts: "{user_id}_{request_id}"
  '"[^"]*\{[a-z0-9_]*\}_\{[a-z0-9_]*\}[^"]*"'
)

found=0
for pattern in "${patterns[@]}"; do
  if grep -nHE "$pattern" -- "${files[@]}"; then
    found=1
  fi
done
if [ "$found" -ne 0 ]; then
  echo "check-ids: ids are minted, parsed and formatted only in crates/ids (see ARCHITECTURE.md)" >&2
  exit 1
fi
