#!/usr/bin/env bash
# The commit writer next to `ostree commit`, on the same tree, in one run.
#
#   bench/commit.sh [DIR ...]    (default: /usr/bin /usr/include /usr/share/doc)
#
# Copies the DIRs into one tree, then for each case commits it into an
# archive repository with `ostree commit --tree=dir=` and with
# `hostctl compose commit` (each into its own repository) and prints wall
# seconds and peak memory (/usr/bin/time -v) side by side:
#   - fresh: into an empty repository;
#   - unchanged: the same tree again;
#   - one file changed;
#   - 1% of the files changed;
# and the size of both repositories after the fresh commit. Figures vary
# with the page cache and with other load: each pair runs back to back.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
hostctl=${CARGO_TARGET_DIR:-$PWD/target}/release/hostctl
work=$(mktemp -d /var/tmp/hostctl-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=(/usr/bin /usr/include /usr/share/doc)
tree=$work/tree
mkdir -p "$tree"
for d in "${dirs[@]}"; do
  mkdir -p "$tree/$(dirname "$d")"
  cp -a "$d" "$tree/$d"
done
echo "tree: ${dirs[*]} ($(find "$tree" | wc -l) entries, $(du -sh "$tree" | cut -f1))"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"

# Wall seconds and peak RSS (MiB) of one command, as "SECONDS MIB".
measure() {
  /usr/bin/time -v -o "$work/time" "$@" >/dev/null 2>"$work/err" ||
    { echo "failed: $*" >&2; cat "$work/err" "$work/time" >&2; exit 1; }
  awk -F': ' '
    /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i] }
    /Maximum resident set size/ { m = $2 / 1024 }
    END { printf "%.1f %.0f", s, m }' "$work/time"
}

ostree --repo="$work/o" init --mode=archive
row() {
  local label=$1 o h
  o=$(measure ostree --repo="$work/o" commit --branch=bench --tree=dir="$tree")
  h=$(measure "$hostctl" compose commit --repo "$work/h" --ref bench "$tree")
  set -- $o $h
  printf '%-28s %9s %9s %8s %9s %9s\n' "$label" "$1" "$3" \
    "$(awk -v a="$1" -v b="$3" 'BEGIN { printf "%.1fx", (b > 0 ? a / b : 0) }')" "$2" "$4"
}

printf '%-28s %9s %9s %8s %9s %9s\n' "case" "ostree s" "hostctl s" "ratio" "ostree MiB" "hostctl MiB"
row "fresh, empty repository"
printf '%-28s %9s %9s\n' "repository size (MiB)" \
  "$(du -sm "$work/o" | cut -f1)" "$(du -sm "$work/h" | cut -f1)"
row "unchanged tree"
f=$(find "$tree" -type f -size +10k -print -quit)
echo "changed" >>"$f"
row "one file changed"
find "$tree" -type f | awk 'NR % 100 == 0' | while read -r f; do echo "changed" >>"$f"; done
row "1% of the files changed"
