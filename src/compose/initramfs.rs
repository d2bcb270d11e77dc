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

use crate::compose::initramfs_reuse::{self, Record};
use crate::compose::sandbox;
use crate::format::repo;

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

/// The ref's head in the repository the compose writes to: the commit whose
/// initramfs may be reused.
pub struct Previous<'a> {
    pub repo: &'a ostree::Repo,
    pub commit: &'a str,
}

/// The arguments every dracut run of hostctl's shares, so that the modules
/// it lists are those it would build with.
const DRACUT_ARGS: [&str; 2] = ["--no-hostonly", "--reproducible"];

/// dracut's temporary directory, relative to the tree's root.
const STAGING: &str = ".hostctl-dracut-tmp";

/// Move the kernel into place and put an initramfs next to it: the one of
/// `previous` when nothing it was built from changed (see
/// [`initramfs_reuse`]), else one built by the tree's dracut, recorded in
/// `cachedir` for the next compose.
pub fn build(
    tree: &Path,
    dracut_conf_dir: &Path,
    cachedir: &Path,
    previous: Option<&Previous>,
) -> Result<()> {
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
    sandbox::prepare(tree).context("initramfs: preparing the tree for the sandbox")?;
    let out_rel = format!("/usr/lib/modules/{kver}/initramfs.img");
    let img = tree.join(out_rel.trim_start_matches('/'));
    // Asked once, for the reuse decision and for the record of a new build.
    let modules = included_modules(tree, &kver);
    let why = match try_reuse(tree, &kver, cachedir, previous, &modules, &img) {
        Ok(Reuse::Done(short)) => {
            crate::progress::step(
                "compose",
                &format!("Reusing the initramfs of {short} (nothing it was built from changed)"),
            );
            remove_debian_boot_leftovers(tree)?;
            return Ok(());
        }
        Ok(Reuse::Refused(why)) => why,
        Err(e) => format!("{e:#}"),
    };
    crate::progress::step(
        "compose",
        &format!("Building the initramfs for {kver} with the tree's dracut ({why})"),
    );
    // dracut keeps its staging directory (the image's content as files)
    // here, inside the tree where the sandbox can write, and hostctl reads
    // the list of what went into the image from it. Walking that directory
    // needs no parsing, unlike lsinitrd's `ls -l`-style listing of the
    // compressed image; the directory is removed before the commit.
    let staging = tree.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    // The tree's dracut is code from the tree like a postprocess script, so
    // it gets the same sandbox. There is no CAP_MKNOD in it: dracut is told
    // not to create /dev nodes in the image, which the kernel's built-in
    // initramfs and the initrd's devtmpfs provide at boot anyway.
    let staging_arg = format!("/{STAGING}");
    let mut argv = vec!["dracut", "--force"];
    argv.extend(DRACUT_ARGS);
    argv.extend([
        "--keep",
        "--tmpdir",
        &staging_arg,
        "--kver",
        &kver,
        &out_rel,
    ]);
    let out = sandbox::command(tree, sandbox::Access::default(), &argv)
        .env("LC_ALL", "C.UTF-8")
        .env("DRACUT_NO_MKNOD", "1")
        .output()
        .with_context(|| {
            format!(
                "starting bwrap (package bubblewrap) to run dracut in {}",
                tree.display()
            )
        });
    let recorded = match &out {
        Ok(o) if o.status.success() && img.is_file() => {
            record_build(tree, &kver, cachedir, &modules, &staging, &img)
        }
        _ => Ok(()),
    };
    std::fs::remove_dir_all(&staging)
        .with_context(|| format!("removing dracut's staging directory {}", staging.display()))?;
    let out = out?;
    if !out.status.success() || !img.is_file() {
        bail!(
            "dracut failed in the tree for kernel {kver} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // A compose without a record only costs the next one a dracut run.
    if let Err(e) = recorded {
        eprintln!(
            "warning: not recording what the initramfs was built from ({e:#}); the next compose will build it again"
        );
    }
    // dracut writes 0600; nothing in a generic image is secret, and tools
    // run as a user (lsinitrd, image builders) need to read it.
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting mode of {}", img.display()))?;
    remove_debian_boot_leftovers(tree)?;
    Ok(())
}

enum Reuse {
    /// Copied in; the short checksum of the commit it came from.
    Done(String),
    /// Why not, in a few words.
    Refused(String),
}

/// Copy the previous commit's initramfs into the tree at `img` when its
/// record says nothing it was built from changed.
fn try_reuse(
    tree: &Path,
    kver: &str,
    cachedir: &Path,
    previous: Option<&Previous>,
    modules: &Result<Vec<String>>,
    img: &Path,
) -> Result<Reuse> {
    let Some(prev) = previous else {
        return Ok(Reuse::Refused("no previous commit on the ref".into()));
    };
    let short = &prev.commit[..prev.commit.len().min(10)];
    let img_rel = format!("/usr/lib/modules/{kver}/initramfs.img");
    let Some(bytes) = repo::read_commit_file(prev.repo, prev.commit, &img_rel)? else {
        return Ok(Reuse::Refused(format!(
            "the previous commit {short} has no initramfs for kernel {kver}"
        )));
    };
    let path = initramfs_reuse::record_path(cachedir, &initramfs_reuse::sha256_hex(&bytes));
    let Some(record) = initramfs_reuse::read_record(&path)? else {
        return Ok(Reuse::Refused(format!(
            "no record of what the initramfs of {short} was built from at {}",
            path.display()
        )));
    };
    let modules = match modules {
        Ok(m) => m,
        Err(e) => return Err(anyhow::anyhow!("{e:#}")),
    };
    let entries = initramfs_reuse::collect(tree, kver, &record.files)
        .with_context(|| format!("reading the inputs of the initramfs in {}", tree.display()))?;
    if let Some(why) = initramfs_reuse::refusal(&record, kver, modules, &entries) {
        return Ok(Reuse::Refused(format!("{why} since {short}")));
    }
    std::fs::write(img, &bytes).with_context(|| {
        format!(
            "writing the initramfs of {short} ({img_rel}) to {}",
            img.display()
        )
    })?;
    std::fs::set_permissions(img, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting mode of {}", img.display()))?;
    Ok(Reuse::Done(short.to_string()))
}

/// The dracut modules the tree's dracut would include for `kver`, as it
/// decides them (every module's check(), so a new package whose binary
/// makes a module's check succeed shows here). `dracut --list-modules`
/// lists the modules available, not those chosen, so hostctl's own module
/// prints dracut's choice from its cmdline() hook during
/// `--print-cmdline`, which runs the checks and stops before building.
fn included_modules(tree: &Path, kver: &str) -> Result<Vec<String>> {
    let mut argv = vec!["dracut", "--print-cmdline"];
    argv.extend(DRACUT_ARGS);
    argv.extend(["--kver", kver]);
    let out = sandbox::command(tree, sandbox::Access::default(), &argv)
        .env("LC_ALL", "C.UTF-8")
        .env("DRACUT_NO_MKNOD", "1")
        .env("HOSTCTL_LIST_DRACUT_MODULES", "1")
        .output()
        .with_context(|| {
            format!(
                "starting bwrap (package bubblewrap) to run dracut --print-cmdline in {}",
                tree.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "dracut --print-cmdline failed in the tree for kernel {kver} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let modules = initramfs_reuse::parse_modules(&String::from_utf8_lossy(&out.stdout));
    initramfs_reuse::check_modules(&modules)?;
    Ok(modules)
}

/// Write the record of the image dracut just built at `img`, from its
/// staging directory under `staging`.
fn record_build(
    tree: &Path,
    kver: &str,
    cachedir: &Path,
    modules: &Result<Vec<String>>,
    staging: &Path,
    img: &Path,
) -> Result<()> {
    let modules = match modules {
        Ok(m) => m.clone(),
        Err(e) => bail!("{e:#}"),
    };
    // dracut makes one `dracut.XXXXXX` directory under --tmpdir; its
    // `initramfs/` is the image's main archive.
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(staging).with_context(|| format!("listing {}", staging.display()))? {
        let p = e
            .with_context(|| format!("listing {}", staging.display()))?
            .path();
        if p.join("initramfs").is_dir() {
            dirs.push(p.join("initramfs"));
        }
    }
    let [staged] = dirs.as_slice() else {
        bail!(
            "expected one dracut staging directory in {}, found {}",
            staging.display(),
            dirs.len()
        );
    };
    let files = initramfs_reuse::copied_files(tree, staged)?;
    let entries = initramfs_reuse::collect(tree, kver, &files)
        .with_context(|| format!("reading the inputs of the initramfs in {}", tree.display()))?;
    let key = initramfs_reuse::input_key(kver, &modules, &entries);
    let sha = crate::util::sha256_file(img)?;
    let path = initramfs_reuse::record_path(cachedir, &hex::encode(sha));
    initramfs_reuse::write_record(
        &path,
        &Record {
            kver: kver.to_string(),
            key,
            modules,
            files,
        },
    )
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
    // hostctl's own dracut modules (the bootlink repair). A module a package
    // in the tree ships (hostctl's own, with `install-hostctl`) is that
    // package's: its files stay as dpkg installed them, so the tree's
    // hostctl and its module come from the same package.
    let modules = src.join("modules.d");
    if modules.is_dir() {
        let dest = tree.join("usr/lib/dracut/modules.d");
        let packaged = packaged_paths(tree)?;
        for e in
            std::fs::read_dir(&modules).with_context(|| format!("listing {}", modules.display()))?
        {
            let p = e
                .with_context(|| format!("listing {}", modules.display()))?
                .path();
            let name = p.file_name().expect("listed file has a name");
            let in_tree = format!("/usr/lib/dracut/modules.d/{}", name.to_string_lossy());
            if packaged.contains(&in_tree) {
                continue;
            }
            let to = dest.join(name);
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            crate::compose::rootfs::copy_tree_into(&p, &to)
                .context("installing hostctl's dracut modules into the tree")?;
        }
    }
    Ok(())
}

/// Every path the tree's dpkg database lists as some package's (the
/// `info/*.list` files), wherever the database is at this point.
fn packaged_paths(tree: &Path) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    let info = [
        tree.join("var/lib/dpkg/info"),
        tree.join(crate::compose::packages::DPKG_DB).join("info"),
    ]
    .into_iter()
    .find(|d| d.is_dir());
    let Some(info) = info else {
        return Ok(out);
    };
    for e in std::fs::read_dir(&info).with_context(|| format!("listing {}", info.display()))? {
        let p = e
            .with_context(|| format!("listing {}", info.display()))?
            .path();
        if p.extension().is_some_and(|x| x == "list") {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            out.extend(text.lines().map(str::to_string));
        }
    }
    Ok(out)
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
