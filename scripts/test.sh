#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit and integration tests.
# Integration tests need root: they chown files, chroot, and loop-mount images.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the integration tests need root" >&2
  exit 1
fi
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$log"
# GLib criticals and warnings are bugs even when every test passes: users
# read them as crashes (issue 8).
if grep -nE 'GLib[-A-Za-z]*-(CRITICAL|WARNING) \*\*' "$log"; then
  echo "test.sh: the run above printed GLib criticals or warnings" >&2
  exit 1
fi
