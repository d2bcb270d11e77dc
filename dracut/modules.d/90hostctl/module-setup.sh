#!/bin/bash
# dracut module: repair the bootlink an ESP entry names, before
# ostree-prepare-root follows it. See hostctl-bootlink.sh for why.

# 255: only when asked for. Installed on a build machine by the Debian
# package, the module must stay out of that machine's own initramfs; the
# trees ask for it in dracut/50-hostctl.conf (add_dracutmodules).
check() {
    return 255
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
