//! Kernel and initramfs where libostree looks for them:
//! `/usr/lib/modules/$kver/{vmlinuz,initramfs.img}`.
//!
//! The initramfs is built by the tree's own dracut inside the tree (so it
//! matches the tree's systemd, libraries and modules; in the sandbox of
//! [`crate::compose::sandbox`], as it is code from the tree), generic rather than
//! host-only (the build machine is not the host), with libostree's `ostree`
//! module that runs `ostree-prepare-root`, and with the configuration this
//! project keeps in `dracut/`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::compose::sandbox;

/// Kernel versions of the tree: directories of `/usr/lib/modules` that come
/// with a kernel image, either already at `$kver/vmlinuz` or as Debian's
/// `/boot/vmlinuz-$kver`.
pub fn kernels(tree: &Path) -> Result<Vec<String>> {
    let modules = tree.join("usr/lib/modules");
    if !modules.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in
        std::fs::read_dir(&modules).with_context(|| format!("listing {}", modules.display()))?
    {
        let e = e.with_context(|| format!("listing {}", modules.display()))?;
        let kver = e.file_name().to_string_lossy().into_owned();
        if e.path().join("vmlinuz").is_file() || tree.join(format!("boot/vmlinuz-{kver}")).is_file()
        {
            out.push(kver);
        }
    }
    out.sort();
    Ok(out)
}

/// Move the kernel into place and build its initramfs with the tree's dracut.
pub fn build(tree: &Path, dracut_conf_dir: &Path) -> Result<()> {
    let kvers = kernels(tree)?;
    let kver = match kvers.as_slice() {
        [] => {
            eprintln!("No kernel in the tree: skipping the initramfs");
            return Ok(());
        }
        [one] => one.clone(),
        many => bail!(
            "the tree has several kernels ({}); an OSTree commit boots exactly one, remove the others (e.g. with remove-files)",
            many.join(", ")
        ),
    };
    if !tree.join("usr/bin/dracut").exists() {
        bail!("the tree has kernel {kver} but no dracut: add `dracut` to packages (initramfs-tools images cannot boot OSTree)");
    }
    if tree.join("usr/sbin/update-initramfs").exists() {
        bail!(
            "initramfs-tools is installed in the tree next to dracut; \
             it cannot build an initramfs that boots OSTree: make sure `dracut` is in packages and nothing pulls initramfs-tools"
        );
    }
    if !tree
        .join("usr/lib/dracut/modules.d/98ostree/module-setup.sh")
        .exists()
    {
        bail!("the tree lacks libostree's dracut module: add `ostree-boot` to packages");
    }
    let moddir = tree.join("usr/lib/modules").join(&kver);
    let vmlinuz = moddir.join("vmlinuz");
    let boot_kernel = tree.join(format!("boot/vmlinuz-{kver}"));
    if !vmlinuz.exists() {
        std::fs::rename(&boot_kernel, &vmlinuz).with_context(|| {
            format!("moving {} to {}", boot_kernel.display(), vmlinuz.display())
        })?;
    }
    install_dracut_conf(tree, dracut_conf_dir)?;
    let out_rel = format!("/usr/lib/modules/{kver}/initramfs.img");
    crate::progress::step(
        "compose",
        &format!("Building the initramfs for {kver} with the tree's dracut"),
    );
    // The tree's dracut is code from the tree like a postprocess script, so
    // it gets the same sandbox. There is no CAP_MKNOD in it: dracut is told
    // not to create /dev nodes in the image, which the kernel's built-in
    // initramfs and the initrd's devtmpfs provide at boot anyway.
    sandbox::prepare(tree).context("initramfs: preparing the tree for the sandbox")?;
    let out = sandbox::command(
        tree,
        sandbox::Access::default(),
        &[
            "dracut",
            "--force",
            "--no-hostonly",
            "--reproducible",
            "--kver",
            &kver,
            &out_rel,
        ],
    )
    .env("LC_ALL", "C.UTF-8")
    .env("DRACUT_NO_MKNOD", "1")
    .output()
    .with_context(|| {
        format!(
            "starting bwrap (package bubblewrap) to run dracut in {}",
            tree.display()
        )
    })?;
    if !out.status.success() || !tree.join(out_rel.trim_start_matches('/')).is_file() {
        bail!(
            "dracut failed in the tree for kernel {kver} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // dracut writes 0600; nothing in a generic image is secret, and tools
    // run as a user (lsinitrd, image builders) need to read it.
    let img = tree.join(out_rel.trim_start_matches('/'));
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting mode of {}", img.display()))?;
    remove_debian_boot_leftovers(tree)?;
    Ok(())
}

/// Copy `dracut/*.conf` from this project into the tree's
/// `/etc/dracut.conf.d/`, and `dracut/modules.d/*` into its dracut.
fn install_dracut_conf(tree: &Path, src: &Path) -> Result<()> {
    let dest = tree.join("etc/dracut.conf.d");
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut n = 0;
    if src.is_dir() {
        for e in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
            let p = e
                .with_context(|| format!("listing {}", src.display()))?
                .path();
            if p.extension().is_some_and(|x| x == "conf") {
                let to = dest.join(p.file_name().expect("listed file has a name"));
                std::fs::copy(&p, &to)
                    .with_context(|| format!("copying {} to {}", p.display(), to.display()))?;
                n += 1;
            }
        }
    }
    if n == 0 {
        bail!(
            "no dracut configuration (*.conf) found in {}; set HOSTCTL_DATADIR to hostctl's data directory (its source checkout, or /usr/share/hostctl where the package installed it)",
            src.display()
        );
    }
    // hostctl's own dracut modules (the bootlink repair).
    let modules = src.join("modules.d");
    if modules.is_dir() {
        let dest = tree.join("usr/lib/dracut/modules.d");
        crate::compose::rootfs::copy_tree_into(&modules, &dest)
            .context("installing hostctl's dracut modules into the tree")?;
    }
    Ok(())
}

/// Debian's kernel packages leave `/boot/vmlinuz-*`, `/boot/initrd.img-*`
/// and `/vmlinuz`-style links; OSTree ignores them and `/boot` must be empty
/// in a commit.
fn remove_debian_boot_leftovers(tree: &Path) -> Result<()> {
    let mut victims: Vec<PathBuf> = Vec::new();
    for dir in [tree.to_path_buf(), tree.join("boot")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["vmlinuz", "vmlinux", "initrd.img"].iter().any(|p| {
                name == *p
                    || name.starts_with(&format!("{p}-"))
                    || name.starts_with(&format!("{p}."))
            }) {
                victims.push(e.path());
            }
        }
    }
    for v in victims {
        std::fs::remove_file(&v).with_context(|| format!("removing {}", v.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kernels_and_removes_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("usr/lib/modules/6.1.0-1-amd64")).unwrap();
        std::fs::create_dir_all(t.join("usr/lib/modules/6.1.0-0-amd64")).unwrap(); // modules only
        std::fs::create_dir_all(t.join("boot")).unwrap();
        std::fs::write(t.join("boot/vmlinuz-6.1.0-1-amd64"), "k").unwrap();
        std::fs::write(t.join("boot/initrd.img-6.1.0-1-amd64"), "i").unwrap();
        std::fs::write(t.join("boot/config-6.1.0-1-amd64"), "c").unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-1-amd64", t.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-1-amd64", t.join("vmlinuz.old")).unwrap();
        std::os::unix::fs::symlink("boot/initrd.img-6.1.0-1-amd64", t.join("initrd.img")).unwrap();
        assert_eq!(kernels(t).unwrap(), vec!["6.1.0-1-amd64"]);
        remove_debian_boot_leftovers(t).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(t)
            .unwrap()
            .chain(std::fs::read_dir(t.join("boot")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["boot", "config-6.1.0-1-amd64", "usr"]);
    }
}
