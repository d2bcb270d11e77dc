//! The container images a commit carries (`hostctl.images`, `a(ss)`: name,
//! manifest digest), their differences between two commits, and the one
//! text `db diff` and `upgrade --preview` print: package changes, then
//! image changes.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use ostree::glib;
use serde::Serialize;

use crate::format::keys::IMAGES as METADATA_KEY;
use crate::format::pkglist;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Image {
    /// As podman names it, e.g. `localhost/app:v1`.
    pub name: String,
    /// `sha256:...` of the image's manifest.
    pub digest: String,
}

/// An image of the same name with other content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageChange {
    pub name: String,
    pub old_digest: String,
    pub new_digest: String,
}

/// Serialized as it is by `db diff --json` and `upgrade --preview --json`
/// (docs/cli.md), so the text and the JSON come from the same value.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageDiff {
    pub added: Vec<Image>,
    pub removed: Vec<Image>,
    pub changed: Vec<ImageChange>,
}

impl ImageDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub fn to_variant(images: &[Image]) -> glib::Variant {
    use glib::prelude::*;
    images
        .iter()
        .map(|i| (i.name.clone(), i.digest.clone()))
        .collect::<Vec<_>>()
        .to_variant()
}

/// The images of a commit, or `None` when it records none (composed without
/// `[[images]]`, or by an older hostctl).
pub fn recorded_images(repo: &ostree::Repo, checksum: &str) -> Result<Option<Vec<Image>>> {
    let Some(v) = crate::format::repo::metadata_value(repo, checksum, METADATA_KEY)? else {
        return Ok(None);
    };
    let list: Vec<(String, String)> = v.get().with_context(|| {
        format!(
            "commit {checksum}: `{METADATA_KEY}` has type {}, expected a(ss)",
            v.type_()
        )
    })?;
    Ok(Some(
        list.into_iter()
            .map(|(name, digest)| Image { name, digest })
            .collect(),
    ))
}

pub fn diff(from: &[Image], to: &[Image]) -> ImageDiff {
    let a: BTreeMap<&str, &Image> = from.iter().map(|i| (i.name.as_str(), i)).collect();
    let b: BTreeMap<&str, &Image> = to.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut d = ImageDiff::default();
    for (name, ia) in &a {
        match b.get(name) {
            None => d.removed.push((*ia).clone()),
            Some(ib) if ib.digest != ia.digest => d.changed.push(ImageChange {
                name: name.to_string(),
                old_digest: ia.digest.clone(),
                new_digest: ib.digest.clone(),
            }),
            Some(_) => {}
        }
    }
    d.added = b
        .iter()
        .filter(|(n, _)| !a.contains_key(*n))
        .map(|(_, i)| (*i).clone())
        .collect();
    d
}

pub fn render(d: &ImageDiff) -> String {
    if d.is_empty() {
        return "No image changes.\n".to_string();
    }
    let mut out = String::new();
    let mut section =
        |title: &str, lines: Vec<String>| super::pkglist::write_section(&mut out, title, lines);
    section(
        "Images changed",
        d.changed
            .iter()
            .map(|c| format!("{} {} -> {}", c.name, c.old_digest, c.new_digest))
            .collect(),
    );
    section(
        "Images removed",
        d.removed
            .iter()
            .map(|i| format!("{} {}", i.name, i.digest))
            .collect(),
    );
    section(
        "Images added",
        d.added
            .iter()
            .map(|i| format!("{} {}", i.name, i.digest))
            .collect(),
    );
    out
}

/// What changed between two commits: what `db diff` and `upgrade
/// --preview` print, as text ([`render_changes`]) or serialized as it is
/// (`--json`).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// `None` when either commit has no package list.
    pub packages: Option<pkglist::PackageDiff>,
    /// `None` when neither commit records images.
    pub images: Option<ImageDiff>,
}

/// Package and image changes between two commits (each in its own
/// repository: a preview compares the host's with a remote's).
pub fn changes(
    old_repo: &ostree::Repo,
    old: &str,
    new_repo: &ostree::Repo,
    new: &str,
) -> Result<Changes> {
    let (ia, ib) = (
        recorded_images(old_repo, old)?,
        recorded_images(new_repo, new)?,
    );
    let images = (ia.is_some() || ib.is_some())
        .then(|| diff(&ia.unwrap_or_default(), &ib.unwrap_or_default()));
    let packages = match (
        pkglist::recorded_packages(old_repo, old)?,
        pkglist::recorded_packages(new_repo, new)?,
    ) {
        (Some(a), Some(b)) => Some(pkglist::diff(&a, &b)),
        _ => None,
    };
    Ok(Changes { packages, images })
}

/// [`changes`] for `db diff`: commits without a package list are an error
/// unless images were recorded, so a tree of images alone still has a diff.
pub fn changes_required(
    old_repo: &ostree::Repo,
    old: &str,
    new_repo: &ostree::Repo,
    new: &str,
) -> Result<Changes> {
    let c = changes(old_repo, old, new_repo, new)?;
    if c.packages.is_none() && c.images.is_none() {
        // The error the package list alone has always given.
        pkglist::packages_of_commit(old_repo, old)?;
        pkglist::packages_of_commit(new_repo, new)?;
    }
    Ok(c)
}

/// Package changes, then image changes (when either commit records images).
pub fn render_changes(c: &Changes) -> String {
    let mut out = match &c.packages {
        Some(p) => pkglist::render(p),
        None => "Packages: not recorded in both commits\n".to_string(),
    };
    if let Some(i) = &c.images {
        out.push_str(&render(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(name: &str, d: char) -> Image {
        Image {
            name: name.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
        }
    }

    #[test]
    fn changes_are_keyed_by_name() {
        let d = diff(
            &[
                i("localhost/app", 'a'),
                i("localhost/old", 'b'),
                i("same", 'c'),
            ],
            &[
                i("localhost/app", 'd'),
                i("localhost/new", 'e'),
                i("same", 'c'),
            ],
        );
        assert_eq!(d.removed, vec![i("localhost/old", 'b')]);
        assert_eq!(d.added, vec![i("localhost/new", 'e')]);
        assert_eq!(d.changed.len(), 1);
        let text = render(&d);
        assert!(
            text.starts_with(&format!(
                "Images changed (1):\n  localhost/app sha256:{} -> sha256:{}\n",
                "a".repeat(64),
                "d".repeat(64)
            )),
            "{text}"
        );
        assert!(
            text.contains("Images removed (1):\n  localhost/old"),
            "{text}"
        );
        assert!(
            text.contains("Images added (1):\n  localhost/new"),
            "{text}"
        );
        assert_eq!(
            render(&diff(&[i("x", 'a')], &[i("x", 'a')])),
            "No image changes.\n"
        );
    }

    #[test]
    fn changes_serialize_with_the_keys_docs_cli_md_names() {
        let pkg = |name: &str, version: &str| pkglist::Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
        };
        let c = Changes {
            packages: Some(pkglist::diff(
                &[pkg("bash", "5.2-1"), pkg("gone", "1")],
                &[pkg("bash", "5.2-2")],
            )),
            images: Some(diff(&[i("app", 'a')], &[i("app", 'b')])),
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({
                "packages": {
                    "added": [],
                    "removed": [{"name": "gone", "version": "1", "arch": "amd64"}],
                    "upgraded": [{"name": "bash", "arch": "amd64", "old_version": "5.2-1", "new_version": "5.2-2"}],
                    "downgraded": [],
                },
                "images": {
                    "added": [],
                    "removed": [],
                    "changed": [{"name": "app", "old_digest": i("app", 'a').digest, "new_digest": i("app", 'b').digest}],
                },
            })
        );
        let text = render_changes(&c);
        assert!(
            text.starts_with("Upgraded (1):\n  bash 5.2-1 -> 5.2-2 amd64\n"),
            "{text}"
        );
        assert!(
            text.contains("Images changed (1):\n  app sha256:"),
            "{text}"
        );
        let none = Changes::default();
        assert_eq!(
            serde_json::to_value(&none).unwrap(),
            serde_json::json!({"packages": null, "images": null})
        );
        assert_eq!(
            render_changes(&none),
            "Packages: not recorded in both commits\n"
        );
    }

    #[test]
    fn variant_is_a_list_of_name_and_digest() {
        let v = to_variant(&[i("localhost/app:v1", 'a')]);
        assert_eq!(v.type_().as_str(), "a(ss)");
        let back: Vec<(String, String)> = v.get().unwrap();
        assert_eq!(back[0].0, "localhost/app:v1");
    }
}
