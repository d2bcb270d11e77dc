#!/usr/bin/env bash
# Install what hostctl and its tests need on a Debian 12 machine (idempotent).
# Run as root. Everything comes from Debian's own archive.
set -euo pipefail

packages=(
  # libostree and the ostree CLI (the independent witness in tests)
  libostree-dev ostree libglib2.0-dev pkg-config
  # compose: tarballs, chroot scripts, units
  tar gzip zstd xz-utils bzip2 util-linux systemd busybox-static
  # the sandbox postprocess scripts and dracut run in (bwrap)
  bubblewrap
  # tests: a static HTTP server for remotes over http
  python3
  # tests of the commit writer: xattrs (getfattr), file capabilities (setcap);
  # bench/commit.sh: peak memory with /usr/bin/time -v
  attr libcap2-bin time
  # tests: an independent ed25519 implementation to check signatures, and
  # HMAC-SHA256 to check the agent's FleetLock host id
  openssl
  # GPG signing and verification: libostree's gpgme runs gpg, gpg-agent and
  # gpgconf; the tests make keys and check signatures with gpg itself
  gnupg
  # the agent's maintenance windows are local time: the system tz database
  # (the window tests use Europe/Berlin and America/New_York)
  tzdata
  # tests: serving published repositories (started by the tests on 127.0.0.1)
  nginx-light
  # tests: a QEMU guest's only way out, guestfwd to a 127.0.0.1 port, runs
  # socat for each connection
  socat
  # Debian composes and the initramfs
  mmdebstrap dracut-core ostree-boot
  # container images carried in commits: skopeo copies them into the tree;
  # the tests run the carried images with podman and runc (crun, podman's
  # other choice, refuses the hybrid cgroup hierarchy of the test machines)
  skopeo podman runc
  # disks, filesystems and boots
  e2fsprogs dosfstools mtools fdisk gdisk systemd-boot-efi ovmf qemu-system-x86 qemu-utils
  # the Debian package (scripts/build-deb.sh): debhelper builds it, pandoc
  # makes hostctl.toml(5) and treefile(5) from docs/; its test checks it
  # with lintian and man
  debhelper dpkg-dev pandoc lintian man-db
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
  # Packages must not start services (nginx would listen on every address):
  # the tests start what they need, on 127.0.0.1 only.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ -n "$own_policy" ]; then rm -f "$policy"; fi
fi
command -v bwrap >/dev/null || { echo "install-deps: bwrap missing although bubblewrap is installed" >&2; exit 1; }
command -v cargo >/dev/null || { echo "install-deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
