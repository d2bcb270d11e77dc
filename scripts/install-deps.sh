#!/usr/bin/env bash
# Install what hostctl and its tests need on a Debian 12 machine (idempotent).
# Run as root. Everything comes from Debian's own archive.
set -euo pipefail

packages=(
  # libostree and the ostree CLI (the independent witness in tests)
  libostree-dev ostree libglib2.0-dev pkg-config
  # compose: tarballs, chroot scripts, units
  tar gzip zstd xz-utils bzip2 util-linux systemd busybox-static
  # tests: a static HTTP server for remotes over http
  python3
  # tests: an independent ed25519 implementation to check signatures
  openssl
  # Debian composes and the initramfs
  mmdebstrap dracut-core ostree-boot
  # disks, filesystems and boots
  e2fsprogs dosfstools mtools fdisk gdisk systemd-boot-efi ovmf qemu-system-x86 qemu-utils
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (apt-get needs it)" >&2
  exit 1
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
