#!/bin/sh
# Recreate a missing OSTree bootlink from the deployment the boot entry names.
#
# A boot entry says `ostree=/ostree/boot.B/OS/BOOTCSUM/N`: a link that
# libostree swaps on every change of the deployment list, and removes when it
# cleans up. hostctl publishes ESP entries right after each change, but a
# shutdown-time finalization of a staged update (ostree-finalize-staged)
# cleans up before hostctl can publish: a power cut there would leave the
# ESP's default entry naming a link that no longer exists. hostctl therefore
# also writes `hostctl.deploy=OS/CHECKSUM.SERIAL` into each ESP entry; when the
# bootlink is gone but that deployment is still there, this puts the link
# back (the same relative form libostree uses) so the entry boots what it says.
#
# SYSROOT and CMDLINE can be overridden for tests.
set -eu
sysroot=${SYSROOT:-/sysroot}
cmdline=$(cat "${CMDLINE:-/proc/cmdline}")

arg() {
    for word in $cmdline; do
        case "$word" in
            "$1"=*) echo "${word#*=}"; return 0 ;;
        esac
    done
    return 1
}

target=$(arg ostree) || exit 0
deploy=$(arg hostctl.deploy) || exit 0
link="$sysroot$target"
[ -e "$link" ] && exit 0

os=${deploy%%/*}
dir="$sysroot/ostree/deploy/$os/deploy/${deploy#*/}"
if [ ! -d "$dir" ]; then
    echo "hostctl-bootlink: $target is missing and so is deployment $deploy; cannot repair" >&2
    exit 0
fi
case "$target" in
    /ostree/boot.[01]/*/*/[0-9]*) ;;
    *) echo "hostctl-bootlink: unexpected ostree=$target; not touching it" >&2; exit 0 ;;
esac
# A dangling boot.B -> boot.B.S link (its target was cleaned up) is replaced
# by a plain directory; libostree's next cleanup removes either form.
bootdir="$sysroot/${target#/}"
bootdir=${bootdir%/*/*/*}
if [ -L "$bootdir" ] && [ ! -e "$bootdir" ]; then
    rm -f "$bootdir"
fi
rm -f "$link"
mkdir -p "$(dirname "$link")"
ln -s "../../../deploy/$os/deploy/${deploy#*/}" "$link"
echo "hostctl-bootlink: recreated $target -> deployment $deploy"
