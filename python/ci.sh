#!/usr/bin/env bash
# CI for the Python worker: for each lockfile (newest langgraph, then the previous minor), a venv
# under target/ (reused while its lockfile is unchanged), the lockfile and this package
# installed, and pytest run quietly. Prints how long each took.
# Usage: python/ci.sh [--setup] [LOCKFILE...]   (default: requirements-test.lock requirements-test-older.lock)
# --setup makes the venvs and installs the package, without running pytest (the Rust tests of
# graphs call it for target/py-venv when it is missing).
set -euo pipefail
setup_only=0
if [ "${1:-}" = --setup ]; then setup_only=1; shift; fi
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"
locks=("$@")
[ ${#locks[@]} -gt 0 ] || locks=(requirements-test.lock requirements-test-older.lock)

for lock in "${locks[@]}"; do
  start=$SECONDS
  name="$(basename "$lock" .lock)"
  venv="$repo/target/py-venv"
  [ "$name" = requirements-test ] || venv="$repo/target/py-venv-${name#requirements-test-}"
  # A venv made from another version of the lockfile is made anew, so nothing stale stays in it.
  if [ -f "$venv/installed.lock" ] && ! cmp -s "$venv/installed.lock" "$here/$lock"; then
    rm -rf "$venv"
  fi
  if [ ! -f "$venv/installed.lock" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/$lock"
    cp "$here/$lock" "$venv/installed.lock"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$here"
  [ "$setup_only" = 1 ] && continue
  echo "python worker: $lock: $("$venv/bin/python" -c 'import langgraph, importlib.metadata as m; print("langgraph", m.version("langgraph"))')"
  (cd "$here" && "$venv/bin/python" -m pytest -q -p no:cacheprovider)
  echo "python worker: $lock took $((SECONDS - start)) s"
done
