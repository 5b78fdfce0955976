#!/usr/bin/env bash
# Shows that the id gate really fails when violated: writes a crate that mints and assembles
# ids by hand (in target/, never committed), then expects both clippy (disallowed-methods from
# the repository's clippy.toml) and ci/check-ids.sh to reject it.
set -euo pipefail
repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
fixture="$repo/target/id-gate-fixture"
rm -rf "$fixture"
mkdir -p "$fixture/src"
cp "$repo/Cargo.lock" "$fixture/Cargo.lock"
cat > "$fixture/Cargo.toml" <<'TOML'
[package]
name = "id-gate-fixture"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
uuid = { version = "1", features = ["v4", "v7"] }

[lints.clippy]
disallowed_methods = "deny"
TOML
cat > "$fixture/src/lib.rs" <<'RUST'
//! Everything the id gate must reject.
pub fn minted_elsewhere() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}
pub fn time_ordered_elsewhere() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
pub fn parsed_elsewhere(s: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(s).ok()
}
pub fn assembled(op: &str, n: u64) -> String {
    format!("thread_{op}_{n}")
}
pub fn prefixed(hex: &str) -> String {
    String::from("req_") + hex
}
RUST

status=0
out=$(cd "$fixture" && CLIPPY_CONF_DIR="$repo" CARGO_TARGET_DIR="$repo/target/id-gate" \
  cargo clippy --quiet --offline 2>&1) || status=$?
for method in new_v4 now_v7 parse_str; do
  if ! grep -q "disallowed method \`uuid::Uuid::$method\`" <<<"$out"; then
    echo "id gate: clippy did not reject uuid::Uuid::$method (exit $status):" >&2
    echo "$out" >&2
    exit 1
  fi
done
[ "$status" -ne 0 ] || { echo "id gate: clippy passed a crate that mints ids" >&2; exit 1; }

if grep_out=$("$repo/ci/check-ids.sh" "$fixture/src/lib.rs" 2>&1); then
  echo "id gate: check-ids.sh passed a file that assembles ids by hand" >&2
  exit 1
fi
for needle in 'Uuid::new_v4' 'format!("thread_' '"req_"'; do
  grep -qF "$needle" <<<"$grep_out" || { echo "id gate: check-ids.sh missed $needle" >&2; echo "$grep_out" >&2; exit 1; }
done
echo "id gate: clippy rejects new_v4, now_v7 and parse_str outside crates/ids; check-ids.sh rejects hand-made ids"
