#!/usr/bin/env bash
# The quick start: install what is missing, build hostctl, and compose the
# built-in example (treefiles/example.toml) into build/repo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release
hostctl=target/release/hostctl
mkdir -p build

echo "== compose the example into build/repo"
$hostctl compose tree --repo build/repo treefiles/example.toml
echo
echo "== the commit, as the ostree CLI sees it"
ostree --repo=build/repo log example/x86_64/demo | head -n 8
ostree --repo=build/repo ls example/x86_64/demo /usr/etc
