#!/usr/bin/env bash
# A bounded schemathesis run against the real `spindle` binary's /openapi.json, on SQLite and on
# PostgreSQL (issue #12: a bug found only on PostgreSQL must fail CI too). Two users with API
# keys; the check is "no 5xx, ever" (plus a server that is still healthy afterwards).
#   ci/fuzz/run.sh [path/to/spindle]     # default: target/debug/spindle (built if missing)
# Environment: FUZZ_EXAMPLES (per operation, default 25), FUZZ_BACKENDS ("sqlite postgres"),
# SPINDLE_TEST_DATABASE_URL (admin URL of the PostgreSQL server, default postgres@127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/spindle}
[ -x "$bin" ] || cargo build -q -p spindle-server
examples=${FUZZ_EXAMPLES:-25}
backends=${FUZZ_BACKENDS:-sqlite postgres}
admin=${SPINDLE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

venv=${FUZZ_VENV:-target/fuzz-venv}
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r ci/fuzz/requirements.txt
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

for backend in $backends; do
  case $backend in
    sqlite) url="sqlite://$work/fuzz.db" ;;
    postgres)
      db="spindle_fuzz_$$"
      psql "$admin" -qc "drop database if exists $db" -c "create database $db" >/dev/null
      url="${admin%/*}/$db" ;;
  esac
  key_a=$("$bin" keys create --user fuzz-alice --database-url "$url" 2>/dev/null)
  key_b=$("$bin" keys create --user fuzz-bob --database-url "$url" 2>/dev/null)
  "$bin" serve --auth keys --listen 127.0.0.1:0 --database-url "$url" --log warn >"$work/out" 2>"$work/err" &
  server_pid=$!
  for _ in $(seq 100); do grep -q 'listening on' "$work/out" 2>/dev/null && break; sleep 0.1; done
  base=$(sed -n 's/^spindle listening on //p' "$work/out")
  [ -n "$base" ] || { cat "$work/err" >&2; echo "fuzz: $backend server did not start" >&2; exit 1; }
  # Bob owns a thread; Alice's requests must never see it or 500 on it.
  curl -sf -X POST "$base/threads" -H "x-api-key: $key_b" -H 'content-type: application/json' -d '{}' >/dev/null
  echo "==> schemathesis on $backend ($base, $examples examples per operation)"
  status=0
  "$venv/bin/schemathesis" run "$base/openapi.json" \
    --checks not_a_server_error \
    --max-examples "$examples" \
    --phases examples,coverage,fuzzing \
    --header "x-api-key: $key_a" \
    --workers 2 --seed 12 \
    --suppress-health-check all \
    --exclude-path-regex '(/stream|/join|/wait)' \
    --request-timeout 20 \
    --no-color || status=$?
  # Still healthy, still serving the other user.
  curl -sf "$base/healthz" >/dev/null || { echo "fuzz: $backend unhealthy after the run" >&2; status=1; }
  curl -sf -X POST "$base/threads/search" -H "x-api-key: $key_b" -H 'content-type: application/json' -d '{}' >/dev/null \
    || { echo "fuzz: $backend cannot serve bob after the run" >&2; status=1; }
  if grep -E 'panicked|ERROR' "$work/err" >&2; then status=1; fi
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
  [ "$backend" = postgres ] && psql "$admin" -qc "drop database if exists $db" >/dev/null
  [ "$status" = 0 ] || { echo "fuzz: failures on $backend" >&2; exit 1; }
done
echo "fuzz: no server error on $backends"
