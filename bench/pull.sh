#!/usr/bin/env bash
# What an update costs to download, and what its static delta costs to
# generate: hostctl next to the ostree CLI on the same commits, served by
# nginx on 127.0.0.1.
#
#   bench/pull.sh --reference [PACKAGE]  (default: less)
#   bench/pull.sh [PACKAGE]              (default: apt)
#   BENCH_KEEP=1 bench/pull.sh ...       keeps the work directory
#                                        (repositories, sysroot image)
#
# --reference: v1 is the reference host (treefiles/debian-minimal.toml,
# composed from Debian's packages: a few minutes per compose), v2 the same
# treefile with PACKAGE added. Needs the Debian mirror apt uses.
#
# Otherwise the tree is synthetic, quicker to make: the files of this machine's installed Debian packages of
# priority required, important and standard (their /usr and /etc parts,
# merged-/usr), with a placeholder kernel. v2 is v1 with PACKAGE replaced by
# the version apt would upgrade it to, fetched with `apt-get download`: one
# real package update. Needs root (a loop-mounted sysroot), nginx, and a
# PACKAGE that has an upgrade candidate (`apt list --upgradable`).
#
# Prints bytes sent by nginx (its access log) for: hostctl upgrade with and
# without static deltas; `ostree pull` of the same ref with and without
# deltas, and by checksum; and the wall-clock seconds of the delta
# generation in `hostctl publish` and `ostree static-delta generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--reference" ]; then
  mode=reference
  pkg=${2:-less}
else
  mode=synthetic
  pkg=${1:-apt}
fi
cargo build --release -q
hostctl=${CARGO_TARGET_DIR:-$PWD/target}/release/hostctl
work=$(mktemp -d /var/tmp/hostctl-bench-pull.XXXXXX)
mnt=$work/mnt
cleanup() {
  if [ -n "${BENCH_KEEP:-}" ]; then
    kill -TERM "$(cat "$work/nginx.pid")" 2>/dev/null || true
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
    if [ -n "${loopdev:-}" ]; then losetup -d "$loopdev" || true; fi
    echo "kept $work (c1=${c1:-} c2=${c2:-})"
    return
  fi
  if [ -s "$work/nginx.pid" ]; then
    # SIGTERM: the master stops its workers too.
    kill -TERM "$(cat "$work/nginx.pid")" 2>/dev/null || true
    sleep 0.5
  fi
  if mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  if [ -n "${loopdev:-}" ]; then losetup -d "$loopdev" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

t() {
  local s e
  s=$(date +%s.%N)
  "$@" >"$work/out" 2>&1 || { echo "failed: $*" >&2; cat "$work/out" >&2; exit 1; }
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }'
}
sent() { awk '{ s += $3 } END { print s + 0 }' "$1"; }

# --- the trees -------------------------------------------------------------
if [ "$mode" = reference ]; then
  reference=$PWD/treefiles/debian-minimal.toml
  # It has install-hostctl: hostctl's .deb, HOSTCTL_DEB or built here.
  export HOSTCTL_DEB=${HOSTCTL_DEB:-$(./scripts/build-deb.sh 2>/dev/null | tail -n 1)}
  printf 'include = ["%s"]\nref = "bench/pull"\n' "$reference" >"$work/v1.toml"
  printf 'include = ["%s"]\nref = "bench/pull"\npackages = ["%s"]\n' "$reference" "$pkg" >"$work/v2.toml"
  echo "tree: the reference host (treefiles/debian-minimal.toml); update: adds the package $pkg"
else
installed=$(dpkg-query -W -f='${Version}' "$pkg")
candidate=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
if [ -z "$candidate" ] || [ "$candidate" = "$installed" ] || [ "$candidate" = "(none)" ]; then
  echo "$pkg has no upgrade candidate (installed $installed); pick one from 'apt list --upgradable'" >&2
  exit 1
fi
# Paths as they are on a merged-/usr system (/bin/sh is /usr/bin/sh).
canonical() {
  while read -r f; do
    case "$f" in
      /bin/* | /sbin/* | /lib/* | /lib64/*) f=/usr$f ;;
    esac
    case "$f" in /usr/* | /etc/*) ;; *) continue ;; esac
    if [ -f "$f" ] || [ -L "$f" ]; then echo "${f#/}"; fi
  done
}
{ dpkg-query -W -f='${Package} ${Priority}\n' | awk '$2 ~ /^(required|important|standard)$/ { print $1 }'; echo "$pkg"; } |
  sort -u | xargs dpkg -L 2>/dev/null | canonical | sort -u >"$work/files"
dpkg -L "$pkg" | canonical | sort -u >"$work/pkgfiles"
mkdir -p "$work/v1"
tar -C / --no-recursion -cf - -T "$work/files" | tar -C "$work/v1" -xf -
cp -a /etc/passwd /etc/group "$work/v1/etc/"
mkdir -p "$work/v1/usr/lib/modules/6.1.0-bench" "$work/v1/var"
echo "placeholder kernel" >"$work/v1/usr/lib/modules/6.1.0-bench/vmlinuz"
echo "placeholder initramfs" >"$work/v1/usr/lib/modules/6.1.0-bench/initramfs.img"
for d in bin sbin lib lib64; do mkdir -p "$work/v1/usr/$d"; ln -sfn "usr/$d" "$work/v1/$d"; done

cp -a "$work/v1" "$work/v2"
(cd "$work/v2" && xargs rm -f <"$work/pkgfiles")
mkdir -p "$work/deb" "$work/x"
(cd "$work/deb" && apt-get download -q "$pkg=$candidate" >/dev/null 2>&1)
dpkg-deb -x "$work"/deb/*.deb "$work/x"
for d in bin sbin lib lib64; do
  if [ -d "$work/x/$d" ] && [ ! -L "$work/x/$d" ]; then
    mkdir -p "$work/x/usr/$d" && cp -a "$work/x/$d/." "$work/x/usr/$d/" && rm -rf "${work:?}/x/$d"
  fi
done
for d in usr etc; do [ -d "$work/x/$d" ] && cp -a "$work/x/$d" "$work/v2/"; done
echo "tree: $(wc -l <"$work/files") files of the required/important/standard packages ($(du -sh "$work/v1" | cut -f1))"
echo "update: $pkg $installed -> $candidate ($(wc -l <"$work/pkgfiles") files)"
for v in v1 v2; do
  printf 'ref = "bench/pull"\nbase = "%s"\nautomatic-version-prefix = "1"\n' "$work/$v" >"$work/$v.toml"
done
fi

# --- compose and serve -----------------------------------------------------
"$hostctl" key generate --output "$work/build" >/dev/null
repo=$work/srv/repo
"$hostctl" compose tree --repo "$repo" --sign-key "$work/build.secret" --workdir /var/tmp "$work/v1.toml" >/dev/null
c1=$(ostree --repo="$repo" rev-parse bench/pull)
"$hostctl" publish --repo "$repo" --sign-key "$work/build.secret" >/dev/null

ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r port nodelta <<<"$ports"
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events {}
http {
  log_format bytes '\$uri \$status \$body_bytes_sent';
  default_type application/octet-stream;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server { listen 127.0.0.1:$port; root $work/srv; access_log $work/access.log bytes; }
  # The same repository as if it had no static deltas.
  server {
    listen 127.0.0.1:$nodelta; root $work/srv; access_log $work/access-nodelta.log bytes;
    location ~ /(deltas|delta-indexes)/ { return 404; }
  }
}
EOF
nginx -c "$work/nginx.conf" -p "$work/nginx" </dev/null >/dev/null 2>&1 &
for _ in $(seq 100); do [ -s "$work/nginx.pid" ] && break; sleep 0.05; done
url=http://127.0.0.1:$port/repo

truncate -s 4G "$work/disk.img"
mkfs.ext4 -q -F "$work/disk.img"
loopdev=$(losetup --find --show "$work/disk.img")
mkdir -p "$mnt" && mount "$loopdev" "$mnt"
"$hostctl" --sysroot "$mnt" install --repo "$url" --ref bench/pull --verify-key "$work/build.pub" >/dev/null
mkdir -p "$work/o1"
ostree --repo="$work/o1" init --mode=bare
ostree --repo="$work/o1" remote add --no-gpg-verify o "$url"
ostree --repo="$work/o1" pull o "bench/pull@$c1" >/dev/null

"$hostctl" compose tree --repo "$repo" --sign-key "$work/build.secret" --workdir /var/tmp "$work/v2.toml" >/dev/null
c2=$(ostree --repo="$repo" rev-parse bench/pull)
cp -a "$repo" "$work/plain-repo"
gen_ostree=$(t ostree --repo="$work/plain-repo" static-delta generate --from="$c1" --to="$c2")
gen_hostctl=$(t "$hostctl" publish --repo "$repo" --sign-key "$work/build.secret" --deltas 1)
delta_size=$(du -sb "$repo/deltas" | cut -f1)

# Compressed size of the objects v2 has and v1 has not: what an object pull
# cannot do without.
objects() {
  ostree --repo="$repo" ls -R -C "$1" | awk '$1 ~ /^-/ { print $5 }' | sort -u
}
changed=0
for c in $(comm -13 <(objects "$c1") <(objects "$c2")); do
  changed=$((changed + $(stat -c %s "$repo/objects/${c:0:2}/${c:2}.filez")))
done

# --- downloads, each from the same starting point --------------------------
measure() { # LOG COMMAND...: bytes nginx sent to COMMAND
  : >"$1"
  local log=$1
  shift
  "$@" >"$work/out" 2>&1 || { echo "failed: $*" >&2; cat "$work/out" >&2; exit 1; }
  sent "$log"
}
for s in s1 s2; do cp -a "$mnt" "$work/$s"; done
sed -i "s|127.0.0.1:$port/|127.0.0.1:$nodelta/|" "$work/s2/ostree/repo/config"
for o in o2 o3; do cp -a "$work/o1" "$work/$o"; done
ostree --repo="$work/o2" remote add --force --no-gpg-verify o "http://127.0.0.1:$nodelta/repo"
h_delta=$(measure "$work/access.log" "$hostctl" --sysroot "$work/s1" upgrade --download-only)
h_plain=$(measure "$work/access-nodelta.log" "$hostctl" --sysroot "$work/s2" upgrade --download-only)
o_delta=$(measure "$work/access.log" ostree --repo="$work/o1" pull o bench/pull)
o_plain=$(measure "$work/access-nodelta.log" ostree --repo="$work/o2" pull o bench/pull)
o_csum=$(measure "$work/access.log" ostree --repo="$work/o3" pull o "bench/pull@$c2")
for r in "$work/s1/ostree/repo" "$work/s2/ostree/repo" "$work/o1" "$work/o2" "$work/o3"; do
  ostree --repo="$r" fsck -q >/dev/null
done

echo "changed objects (compressed, what an object pull needs): $changed bytes; static delta: $delta_size bytes"
printf '%-52s %12s %12s\n' "bytes sent by nginx" "deltas" "no deltas"
printf '%-52s %12s %12s\n' "hostctl upgrade --download-only" "$h_delta" "$h_plain"
printf '%-52s %12s %12s\n' "ostree pull REMOTE REF" "$o_delta" "$o_plain"
printf '%-52s %12s %12s\n' "ostree pull REMOTE REF@CHECKSUM" "$o_csum" "-"
printf '%-52s %12s\n' "delta generation, wall seconds" ""
printf '%-52s %12s\n' "hostctl publish --deltas 1 (delta, summary, sig)" "$gen_hostctl"
printf '%-52s %12s\n' "ostree static-delta generate" "$gen_ostree"
