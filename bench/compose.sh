#!/usr/bin/env bash
# Compose speed next to the ostree CLI doing the same work, on the same tree.
#
#   bench/compose.sh [TREE]      (default: a copy of this machine's /usr)
#
# Prints wall-clock seconds for:
#   - ostree commit into an archive repo vs hostctl compose tree (cold);
#   - a re-commit of the unchanged tree vs hostctl's no-op detection.
# Run it on an idle machine; figures vary with the page cache, so each pair
# runs back to back on the same warm cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
hostctl=$PWD/target/release/hostctl
work=$(mktemp -d /var/tmp/hostctl-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

src=${1:-}
if [ -z "$src" ]; then
  mkdir -p "$work/base"
  cp -a /usr "$work/base/usr"
  mkdir -p "$work/base/etc" && cp -a /etc/os-release /etc/passwd /etc/group "$work/base/etc/"
  src=$work/base
fi
files=$(find "$src" | wc -l); size=$(du -sh "$src" | cut -f1)
echo "tree: $src ($files entries, $size)"
cat > "$work/bench.toml" <<TOML
ref = "bench"
base = "$src"
TOML

t() {
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/err" || { echo "failed: $*" >&2; cat "$work/err" >&2; exit 1; }
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { print e - s }'
}

ostree --repo="$work/o" init --mode=archive
mkdir -p "$work/h"
printf '%-44s %10s %10s\n' "" "ostree" "hostctl"
printf '%-44s %10.1f %10.1f\n' "commit into a new archive repo (s)" \
  "$(t ostree --repo="$work/o" commit --branch=bench --tree=dir="$src")" \
  "$(t "$hostctl" compose tree --repo "$work/h/repo" --workdir /var/tmp "$work/bench.toml")"
printf '%-44s %10.1f %10.1f\n' "again, tree unchanged (s)" \
  "$(t ostree --repo="$work/o" commit --branch=bench --tree=dir="$src")" \
  "$(t "$hostctl" compose tree --repo "$work/h/repo" --workdir /var/tmp "$work/bench.toml")"
printf '%-44s %10s %10s\n' "commits on the ref afterwards" \
  "$(ostree --repo="$work/o" log bench | grep -c '^commit')" \
  "$(ostree --repo="$work/h/repo" log bench | grep -c '^commit')"
