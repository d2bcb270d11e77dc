#!/bin/bash
# dracut module: repair the bootlink an ESP entry names, before
# ostree-prepare-root follows it. See hostctl-bootlink.sh for why.

check() {
    return 0
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
