//! `install-hostctl`: hostctl's own Debian package (`--hostctl-deb`) goes
//! into the tree. A tree with packages gets it from apt with the other
//! packages, as a local package (so dpkg knows it and the package list shows
//! its version); a tree without packages (a `base` only) gets its files
//! extracted with `dpkg-deb -x`, which no dpkg database records.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::compose::treefile::Treefile;

/// What `dpkg-deb --field` says about a package file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebFields {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

/// `Package`, `Version` and `Architecture` of `deb`; an error when it is not
/// a Debian package.
pub fn fields(deb: &Path) -> Result<DebFields> {
    let out = crate::util::run(
        Command::new("dpkg-deb").arg("--field").arg(deb).args([
            "Package",
            "Version",
            "Architecture",
        ]),
        &format!("reading {} as a Debian package", deb.display()),
    )?;
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Ok(DebFields {
        package: field("Package"),
        version: field("Version"),
        architecture: field("Architecture"),
    })
}

fn native_arch() -> Result<String> {
    let out = crate::util::run(
        Command::new("dpkg").arg("--print-architecture"),
        "finding the build machine's architecture",
    )?;
    Ok(out.trim().to_string())
}

/// Check `deb` (the `--hostctl-deb` file) against a treefile with
/// `install-hostctl = true`, before any work: it is given, exists, is a
/// Debian package named `hostctl` for this machine's architecture. Returns
/// its absolute path. A version other than the running hostctl's is only
/// warned about on stderr.
pub fn check(tf: &Treefile, deb: Option<&Path>) -> Result<PathBuf> {
    let top = tf.sources[0].display();
    let Some(deb) = deb else {
        bail!(
            "{top}: key `install-hostctl`: no hostctl package given: pass --hostctl-deb FILE \
             (or set HOSTCTL_DEB) with hostctl's .deb, built by scripts/build-deb.sh in \
             hostctl's source checkout, or the .deb you installed hostctl from"
        );
    };
    let meta = std::fs::metadata(deb).with_context(|| {
        format!(
            "{top}: key `install-hostctl`: --hostctl-deb {} cannot be read",
            deb.display()
        )
    })?;
    if !meta.is_file() {
        bail!(
            "{top}: key `install-hostctl`: --hostctl-deb {} is not a file",
            deb.display()
        );
    }
    // apt takes a local package only by a name ending in `.deb`.
    if !deb.to_string_lossy().ends_with(".deb") {
        bail!(
            "{top}: key `install-hostctl`: --hostctl-deb {}: the file name must end in .deb",
            deb.display()
        );
    }
    let abs = std::fs::canonicalize(deb)
        .with_context(|| format!("finding the absolute path of {}", deb.display()))?;
    if let Err(why) = crate::compose::treefile::local_package_path(&abs) {
        bail!("{top}: key `install-hostctl`: --hostctl-deb {why}");
    }
    let f = fields(&abs).with_context(|| {
        format!(
            "{top}: key `install-hostctl`: --hostctl-deb {} is not a Debian package",
            deb.display()
        )
    })?;
    if f.package != "hostctl" {
        bail!(
            "{top}: key `install-hostctl`: --hostctl-deb {} is the package `{}`, not `hostctl`",
            deb.display(),
            f.package
        );
    }
    let arch = native_arch()?;
    if f.architecture != arch && f.architecture != "all" {
        bail!(
            "{top}: key `install-hostctl`: --hostctl-deb {} is for architecture {}, this machine is {arch}",
            deb.display(),
            f.architecture
        );
    }
    let mine = env!("CARGO_PKG_VERSION");
    if f.version != mine {
        eprintln!(
            "warning: --hostctl-deb {} is hostctl {}, this hostctl is {mine}: the tree gets {}",
            deb.display(),
            f.version,
            f.version
        );
    }
    Ok(abs)
}

/// Whether the tree is built by apt (the treefile installs packages).
pub fn tree_has_packages(tf: &Treefile) -> bool {
    !tf.packages.is_empty() || !tf.local_packages.is_empty()
}

/// Put the checked `deb` into the compose: for a tree with packages it
/// becomes one more local package (installed by apt, hashed as one) and
/// `None` is returned; for a tree without packages its path is returned, to
/// be extracted with [`extract`] and hashed by the caller.
pub fn add_to(tf: &mut Treefile, deb: PathBuf) -> Option<PathBuf> {
    if tree_has_packages(tf) {
        tf.local_packages.push(deb);
        None
    } else {
        Some(deb)
    }
}

/// `dpkg-deb -x` of `deb` into `tree`: its files without a dpkg database
/// entry (a tree without packages has no dpkg database).
pub fn extract(deb: &Path, tree: &Path) -> Result<()> {
    crate::progress::step(
        "compose",
        &format!("Extracting {} into the tree", deb.display()),
    );
    crate::util::run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(tree),
        &format!("extracting {} into {}", deb.display(), tree.display()),
    )?;
    Ok(())
}
