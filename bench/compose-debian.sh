#!/usr/bin/env bash
# Debian compose times: the reference host composed cold, again unchanged,
# and with one package added (which reuses the initramfs, see
# docs/performance.md).
#
#   bench/compose-debian.sh [TREEFILE]   (default: treefiles/debian-minimal.toml)
#
# Needs root and the Debian mirror. Downloads go to the package cache
# (HOSTCTL_BENCH_CACHE, default /var/cache/hostctl), so only the first run
# of the script pays for them; the initramfs records go there too, which is
# why the cold case uses a fresh repository (no parent commit to reuse from).
# Prints wall-clock seconds and peak memory (/usr/bin/time -v, maximum
# resident set size) of each compose.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
hostctl=${CARGO_TARGET_DIR:-$PWD/target}/release/hostctl
# A treefile with install-hostctl (the reference host) installs hostctl's
# .deb: HOSTCTL_DEB, else one built from this checkout.
export HOSTCTL_DEB=${HOSTCTL_DEB:-$(./scripts/build-deb.sh 2>/dev/null | tail -n 1)}
treefile=$(realpath "${1:-treefiles/debian-minimal.toml}")
cache=${HOSTCTL_BENCH_CACHE:-/var/cache/hostctl}
work=$(mktemp -d /var/tmp/hostctl-bench-debian.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/plus.toml" <<TOML
include = ["$treefile"]
packages = ["tmux"]
TOML

# run LABEL TREEFILE: one compose into $work/repo, timed.
run() {
  local label=$1 tf=$2 rc=0
  /usr/bin/time -v -o "$work/time" "$hostctl" compose tree --unchanged-exit-77 \
    --repo "$work/repo" --cachedir "$cache" --workdir "$work" "$tf" \
    >/dev/null 2>"$work/err" || rc=$?
  if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
    echo "failed: $label" >&2; cat "$work/err" >&2; exit 1
  fi
  local wall rss initrd
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0;
    for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$work/time")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$work/time")
  initrd=$(grep -oE '^(Reusing|Building) the initramfs' "$work/err" | cut -d' ' -f1 || true)
  printf '%-36s %8.1f s %8s MiB   %s\n' "$label" "$wall" "$rss" "${initrd:-no initramfs step}"
}

printf '%-36s %10s %12s   %s\n' "compose" "wall" "peak memory" "initramfs"
run "cold, empty repository" "$treefile"
run "again, nothing changed" "$treefile"
run "one package added (tmux)" "$work/plus.toml"
