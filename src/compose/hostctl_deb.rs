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

/// The `--hostctl-deb` file as the compose uses it: a private copy, made
/// once, so that what was checked is what is hashed and installed even if
/// the file given is rebuilt or replaced meanwhile (scripts/build-deb.sh
/// rewrites its output in place). Removed when dropped.
pub struct CheckedDeb {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Check `deb` (the `--hostctl-deb` file) against a treefile with
/// `install-hostctl = true`, before any work: it is given, exists, is a
/// Debian package named `hostctl` for the tree's architecture. A version
/// other than the running hostctl's is only warned about on stderr.
pub fn check(tf: &Treefile, deb: Option<&Path>) -> Result<CheckedDeb> {
    // The key may come from an included treefile (as in the reference
    // ones); the top one is what the user ran.
    let top = format!(
        "{}{}",
        tf.sources[0].display(),
        if tf.sources.len() > 1 {
            " (with its includes)"
        } else {
            ""
        }
    );
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
    let dir = tempfile::Builder::new()
        .prefix("hostctl-deb-")
        .tempdir()
        .context("creating a directory for the copy of --hostctl-deb")?;
    // A fixed name: apt takes a local package only by a name ending in
    // `.deb`, and mmdebstrap splits paths at commas and whitespace.
    let path = dir.path().join("hostctl.deb");
    std::fs::copy(deb, &path).with_context(|| {
        format!(
            "copying --hostctl-deb {} to {}",
            deb.display(),
            path.display()
        )
    })?;
    if let Err(why) = crate::compose::treefile::local_package_path(&path) {
        bail!("{top}: key `install-hostctl`: the copy of --hostctl-deb: {why} (set TMPDIR)");
    }
    let f = fields(&path).with_context(|| {
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
    let arch = crate::compose::packages::arch_of(tf)?;
    if f.architecture != arch && f.architecture != "all" {
        bail!(
            "{top}: key `install-hostctl`: --hostctl-deb {} is for architecture {}, the tree is {arch}",
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
    Ok(CheckedDeb { _dir: dir, path })
}

/// Put the checked `deb` into the compose: for a tree with packages it
/// becomes one more local package (installed by apt, hashed as one) and
/// `None` is returned; for a tree without packages its path is returned, to
/// be extracted with [`extract`] and hashed by the caller.
pub fn add_to(tf: &mut Treefile, deb: PathBuf) -> Option<PathBuf> {
    if tf.has_packages() {
        tf.local_packages.push(deb);
        None
    } else {
        Some(deb)
    }
}

/// The files of `deb` into `tree`, without a dpkg database entry (a tree
/// without packages has no dpkg database). Not `dpkg-deb -x`: it gives the
/// directories it extracts into the package's modes, the tree's root and
/// its base's `/usr` included; tar keeps existing directories as they are.
pub fn extract(deb: &Path, tree: &Path) -> Result<()> {
    crate::progress::step(
        "compose",
        &format!("Extracting {} into the tree", deb.display()),
    );
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting dpkg-deb --fsys-tarfile {}", deb.display()))?;
    let tar_in = dpkg.stdout.take().expect("piped stdout");
    let tar = crate::util::run(
        Command::new("tar")
            .args([
                "-x",
                "--no-overwrite-dir",
                "--same-owner",
                "--same-permissions",
                "-C",
            ])
            .arg(tree)
            .stdin(tar_in),
        &format!("extracting {} into {}", deb.display(), tree.display()),
    );
    let status = dpkg
        .wait()
        .with_context(|| format!("waiting for dpkg-deb --fsys-tarfile {}", deb.display()))?;
    tar?;
    if !status.success() {
        bail!(
            "dpkg-deb --fsys-tarfile {} failed ({status})",
            deb.display()
        );
    }
    Ok(())
}
