#!/bin/bash
# dracut module: repair the bootlink an ESP entry names, before
# ostree-prepare-root follows it. See hostctl-bootlink.sh for why.

# 255: only when asked for. Installed on a build machine by the Debian
# package, the module must stay out of that machine's own initramfs; the
# trees ask for it in dracut/50-hostctl.conf (add_dracutmodules).
check() {
    return 255
}

# hostctl asks dracut which modules it would include for a tree (to know
# whether the previous initramfs can be reused) by running
# `dracut --print-cmdline` with HOSTCTL_LIST_DRACUT_MODULES=1: dracut runs
# every module's check() and then this function with the result in
# $mods_to_load. Without the variable, it prints nothing.
cmdline() {
    [[ $HOSTCTL_LIST_DRACUT_MODULES == 1 ]] || return 0
    local _m
    printf '\n'
    for _m in $mods_to_load $modules_loaded; do
        printf 'hostctl-dracut-module: %s\n' "$_m"
    done
}

depends() {
    echo ostree systemd
}

install() {
    inst_script "$moddir/hostctl-bootlink.sh" /usr/lib/hostctl/hostctl-bootlink.sh
    inst_simple "$moddir/hostctl-bootlink.service" "$systemdsystemunitdir/hostctl-bootlink.service"
    inst_multiple ln mkdir rm dirname readlink
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target hostctl-bootlink.service
}
