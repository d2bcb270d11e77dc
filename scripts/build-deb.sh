#!/usr/bin/env bash
# Build hostctl's Debian package from this checkout with dpkg-buildpackage
# (debian/): a release build, man pages, completions. Prints the path of the
# .deb as its last line on standard output; the build's log goes to standard
# error. Needs the packages of scripts/install-deps.sh and cargo.
#
#   CARGO_TARGET_DIR   cargo's target directory (default: ./target); the
#                      package and its build tree go to $CARGO_TARGET_DIR/debian/
#   DEB_BUILD_OPTIONS  as for any Debian package (e.g. parallel=2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target"
target=$(cd "$target" && pwd)
out=$target/debian

cd "$root"
version=$(dpkg-parsechangelog -SVersion)
cargo_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
if [ "$version" != "$cargo_version" ]; then
  echo "build-deb: debian/changelog says $version, Cargo.toml $cargo_version: add a changelog entry (dch -v $cargo_version)" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)
deb=$out/hostctl_${version}_$arch.deb

# dpkg-buildpackage writes the package into the parent of the tree it
# builds, so it builds a copy under $out, not the checkout. The copy keeps
# the files' times: cargo then rebuilds only what changed since last time.
src=$out/hostctl-$version
rm -rf "$src"
mkdir -p "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # Tracked and new files, as they are in the working tree (uncommitted
  # changes included); ignored ones (target/, build/) are not sources.
  git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null |
    tar -C "$src" -xf -
else
  tar --exclude=./target --exclude=./build --exclude=./.git -cf - . | tar -C "$src" -xf -
fi
rm -f "$out"/hostctl_"$version"_* "$out"/hostctl-dbgsym_"$version"_*

echo "build-deb: building $deb" >&2
(cd "$src" && CARGO_TARGET_DIR=$target dpkg-buildpackage --build=binary --no-sign) >&2
test -f "$deb" || { echo "build-deb: dpkg-buildpackage made no $deb" >&2; exit 1; }
echo "$deb"
