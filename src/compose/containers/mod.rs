//! Container images carried in the commit and the containers systemd runs
//! from them (`[[images]]`, `[[containers]]`).
//!
//! The images are copied with skopeo into a containers-storage store inside
//! the tree ([`unit::STORE`]) using the vfs driver: each layer is applied as
//! a plain directory, so an upper layer's whiteout becomes a real deletion
//! and no overlayfs whiteout device reaches libostree. Podman on the host
//! reads that store as an additional, read-only image store; its writable
//! store stays in /var. Each container becomes `container-NAME.service`.

pub mod spec;
pub mod unit;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::treefile::Treefile;
use crate::format::images::Image;
use crate::util;
use spec::ImageSpec;

const TMPFILES: &str = "usr/lib/tmpfiles.d/hostctl-containers.conf";
const UNIT_DIR: &str = "usr/lib/systemd/system";

/// Before any work: every image source exists, has the shape of its format,
/// and skopeo can read it as an image.
pub fn check_sources(tf: &Treefile) -> Result<()> {
    if tf.images.is_empty() {
        return Ok(());
    }
    which("skopeo").map_err(|e| {
        tf.images[0].origin.error(
            "images",
            format!("{e}: install skopeo (Debian package `skopeo`) to carry images"),
        )
    })?;
    for img in &tf.images {
        check_source(img)?;
    }
    Ok(())
}

fn which(prog: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .with_context(|| format!("`{prog}` is not in PATH"))
}

fn check_source(img: &ImageSpec) -> Result<()> {
    let o = &img.origin;
    let src = &img.source;
    let meta = fs::metadata(src)
        .map_err(|e| o.error("images.source", format!("{}: {e}", src.display())))?;
    let want_dir = img.format == spec::ImageFormat::Oci;
    if want_dir != meta.is_dir() {
        return Err(o.error(
            "images.source",
            format!(
                "{} is {}, but format `{}` is {}",
                src.display(),
                if meta.is_dir() {
                    "a directory"
                } else {
                    "a file"
                },
                img.format.transport(),
                if want_dir {
                    "an OCI layout directory"
                } else {
                    "an archive file"
                }
            ),
        ));
    }
    let out = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(source_ref(img))
        .output()
        .with_context(|| format!("running skopeo inspect on {}", src.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(o.error(
            "images.source",
            format!(
                "{} is not a readable {} image: {}",
                src.display(),
                img.format.transport(),
                err.trim()
            ),
        ));
    }
    Ok(())
}

fn source_ref(img: &ImageSpec) -> String {
    format!("{}:{}", img.format.transport(), img.source.display())
}

/// The compose step: images into the tree's store, units, tmpfiles.d, the
/// storage configuration. Returns the carried images with their digests
/// for the commit metadata.
pub fn install(tf: &Treefile, tree: &Path, work: &Path) -> Result<Vec<Image>> {
    if tf.images.is_empty() && tf.containers.is_empty() {
        return Ok(Vec::new());
    }
    let store = tree.join(unit::STORE);
    if store.exists() {
        bail!(
            "/{} already exists in the tree (from the base, an overlay or a script): hostctl composes it from [[images]] alone",
            unit::STORE
        );
    }
    // c/storage would create the missing parents 0700.
    let parent = store.parent().expect("STORE has a parent");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", parent.display()))?;
    let runroot = work.join("containers-run");
    let conf = work.join("containers-storage.conf");
    // The build machine's own storage.conf (other stores, other drivers)
    // must not shape what goes into the tree.
    fs::create_dir_all(&runroot).with_context(|| format!("creating {}", runroot.display()))?;
    fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            runroot.display(),
            store.display()
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let dest = |name: &str| {
        format!(
            "containers-storage:[vfs@{}+{}]{name}",
            store.display(),
            runroot.display()
        )
    };
    let mut images = Vec::new();
    for img in &tf.images {
        crate::progress::step(
            "compose",
            &format!("Copying image {} from {}", img.name, img.source.display()),
        );
        util::run(
            Command::new("skopeo")
                .env("CONTAINERS_STORAGE_CONF", &conf)
                .args(["copy", "--quiet"])
                .arg(source_ref(img))
                .arg(dest(&img.name)),
            &format!("copying image {} from {}", img.name, img.source.display()),
        )?;
        let json = util::run(
            Command::new("skopeo")
                .env("CONTAINERS_STORAGE_CONF", &conf)
                .arg("inspect")
                .arg(dest(&img.name)),
            &format!("reading the digest of image {}", img.name),
        )?;
        let digest = digest_of(&json)
            .with_context(|| format!("reading the digest of image {}", img.name))?;
        images.push(Image {
            name: img.name.clone(),
            digest,
        });
    }
    if !tf.images.is_empty() {
        check_no_devices(&store)?;
        freeze_metadata(&store)?;
    }
    write_file(tree, unit::STORAGE_CONF, &unit::storage_conf())?;
    let treefile = tf.sources[0].display().to_string();
    for c in &tf.containers {
        write_file(
            tree,
            &format!("{UNIT_DIR}/{}", c.unit_name()),
            &unit::unit_text(c, &treefile),
        )?;
    }
    if tf.containers.iter().any(|c| !c.volumes.is_empty()) {
        write_file(tree, TMPFILES, &unit::tmpfiles_text(&tf.containers))?;
    }
    if !tf.containers.is_empty() {
        let units: Vec<String> = tf.containers.iter().map(|c| c.unit_name()).collect();
        util::run(
            Command::new("systemctl")
                .arg(format!("--root={}", tree.display()))
                .arg("enable")
                .args(&units),
            &format!("containers: enabling {}", units.join(" ")),
        )?;
    }
    Ok(images)
}

fn write_file(tree: &Path, rel: &str, text: &str) -> Result<()> {
    let p = tree.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating /{}", rel))?;
    }
    fs::write(&p, text).with_context(|| format!("writing /{rel}"))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of /{rel}"))
}

/// `Digest` of `skopeo inspect`'s JSON.
pub fn digest_of(json: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("skopeo inspect printed no JSON")?;
    let d = v
        .get("Digest")
        .and_then(|d| d.as_str())
        .context("skopeo inspect printed no Digest")?;
    if !d.starts_with("sha256:") || d.len() != 71 {
        bail!("`{d}` is not a sha256 digest");
    }
    Ok(d.to_string())
}

/// vfs applies whiteouts as deletions, so no device should be left; an
/// image that ships a device node itself is refused here with its path
/// rather than deep inside libostree.
fn check_no_devices(store: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(store).follow_links(false) {
        let e = e.with_context(|| format!("walking {}", store.display()))?;
        let ft = e.file_type();
        if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            bail!(
                "{}: a device node, FIFO or socket in a carried image layer; an OSTree commit cannot hold it (remove it from the image)",
                e.path().display()
            );
        }
    }
    Ok(())
}

/// The store's own files and directories lose their write bits: nothing
/// writes the carried store (the host mounts /usr read-only anyway, this
/// says so in the commit). Layer contents (`vfs/dir/ID/...`) keep the
/// image's modes: containers are created from them.
fn freeze_metadata(store: &Path) -> Result<()> {
    let layers = store.join("vfs/dir");
    let mut walk = walkdir::WalkDir::new(store).follow_links(false).into_iter();
    while let Some(e) = walk.next() {
        let e = e.with_context(|| format!("walking {}", store.display()))?;
        if e.path().parent() == Some(layers.as_path()) {
            walk.skip_current_dir();
            continue;
        }
        if e.file_type().is_symlink() {
            continue;
        }
        let mode = e
            .metadata()
            .with_context(|| format!("reading {}", e.path().display()))?
            .permissions()
            .mode();
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode & !0o222))
            .with_context(|| format!("setting the mode of {}", e.path().display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_comes_from_skopeo_json() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            digest_of(&format!("{{\"Name\":\"x\",\"Digest\":\"{d}\"}}")).unwrap(),
            d
        );
        assert!(digest_of("{\"Digest\":\"md5:00\"}").is_err());
        assert!(digest_of("not json").is_err());
    }
}
