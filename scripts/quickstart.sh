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

echo
echo "== install the example into a throwaway sysroot"
# Deploying freezes the filesystem holding /boot, so the sysroot gets its own
# loop-mounted ext4 image rather than a directory on this machine's disk.
work=$(mktemp -d)
cleanup() {
  umount "$work/sysroot" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
truncate -s 1G "$work/disk.img"
mkfs.ext4 -q "$work/disk.img"
mkdir "$work/sysroot"
mount -o loop "$work/disk.img" "$work/sysroot"
sysroot=(--sysroot "$work/sysroot")
$hostctl install "${sysroot[@]}" --repo "file://$PWD/build/repo" --ref example/x86_64/demo
$hostctl status "${sysroot[@]}"

echo
echo "== compose a second version and upgrade to it"
$hostctl compose tree --repo build/repo --force-nocache treefiles/example.toml
$hostctl upgrade "${sysroot[@]}"
$hostctl status "${sysroot[@]}"

echo
echo "== roll back to the first version"
$hostctl rollback "${sysroot[@]}"
$hostctl status "${sysroot[@]}"
