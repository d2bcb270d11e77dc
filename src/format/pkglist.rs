//! Package-level differences between two trees, from the package lists
//! composes store in commit metadata (`hostctl.packages`).
//!
//! Where the two lists come from (two commits of a build repo, or the booted
//! and pending deployments of a host) is the caller's business: `diff` and
//! `render` only see the lists.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use ostree::{gio, glib};

use crate::format::debver;

use crate::format::keys::PACKAGES as METADATA_KEY;

/// One installed Debian package, as dpkg and apt name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

impl Package {
    /// The architecture to ask apt for: `all` packages are requested with the
    /// native architecture.
    pub fn arch_or<'a>(&'a self, native: &'a str) -> &'a str {
        if self.arch == "all" {
            native
        } else {
            &self.arch
        }
    }
}

/// A package of the same name and architecture in another version.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub arch: String,
    #[serde(rename = "old_version")]
    pub from: String,
    #[serde(rename = "new_version")]
    pub to: String,
}

/// Serialized as it is by `db diff --json` and `upgrade --preview --json`
/// (docs/cli.md), so the text and the JSON come from the same value.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct PackageDiff {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub upgraded: Vec<Change>,
    pub downgraded: Vec<Change>,
}

impl PackageDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.upgraded.is_empty()
            && self.downgraded.is_empty()
    }
}

/// Compare two package lists. A package is keyed by name and architecture,
/// so a change of architecture (e.g. `all` → `amd64`) shows as removed plus
/// added.
pub fn diff(from: &[Package], to: &[Package]) -> PackageDiff {
    let key = |p: &Package| (p.name.clone(), p.arch.clone());
    let a: BTreeMap<_, &Package> = from.iter().map(|p| (key(p), p)).collect();
    let b: BTreeMap<_, &Package> = to.iter().map(|p| (key(p), p)).collect();
    let mut d = PackageDiff::default();
    for (k, pa) in &a {
        match b.get(k) {
            None => d.removed.push((*pa).clone()),
            Some(pb) => {
                let change = || Change {
                    name: pa.name.clone(),
                    arch: pa.arch.clone(),
                    from: pa.version.clone(),
                    to: pb.version.clone(),
                };
                match debver::compare(&pa.version, &pb.version) {
                    Ordering::Less => d.upgraded.push(change()),
                    Ordering::Greater => d.downgraded.push(change()),
                    Ordering::Equal => {}
                }
            }
        }
    }
    for (k, pb) in &b {
        if !a.contains_key(k) {
            d.added.push((*pb).clone());
        }
    }
    d
}

/// Human-readable listing, one section per kind of change.
pub fn render(d: &PackageDiff) -> String {
    if d.is_empty() {
        return "No package changes.\n".to_string();
    }
    let mut out = String::new();
    let mut section = |title: &str, lines: Vec<String>| write_section(&mut out, title, lines);
    let pkg = |p: &Package| format!("{} {} {}", p.name, p.version, p.arch);
    let chg = |c: &Change| format!("{} {} -> {} {}", c.name, c.from, c.to, c.arch);
    section("Upgraded", d.upgraded.iter().map(chg).collect());
    section("Downgraded", d.downgraded.iter().map(chg).collect());
    section("Removed", d.removed.iter().map(pkg).collect());
    section("Added", d.added.iter().map(pkg).collect());
    out
}

/// One titled, counted, indented section of a diff listing; nothing when
/// `lines` is empty. Shared by the package and image diffs so `db diff`
/// prints both alike.
pub(crate) fn write_section(out: &mut String, title: &str, lines: Vec<String>) {
    if !lines.is_empty() {
        let _ = writeln!(out, "{title} ({}):", lines.len());
        for l in lines {
            let _ = writeln!(out, "  {l}");
        }
    }
}

/// The package list stored in a commit's metadata.
pub fn packages_of_commit(repo: &ostree::Repo, checksum: &str) -> Result<Vec<Package>> {
    recorded_packages(repo, checksum)?.with_context(|| {
        format!("commit {checksum} has no `{METADATA_KEY}` metadata (not composed from packages?)")
    })
}

/// The package list of a commit, or `None` when it has none (a tree composed
/// from local inputs only).
pub fn recorded_packages(repo: &ostree::Repo, checksum: &str) -> Result<Option<Vec<Package>>> {
    let Some(v) = crate::format::repo::metadata_value(repo, checksum, METADATA_KEY)? else {
        return Ok(None);
    };
    let list: Vec<(String, String, String)> = v.get().with_context(|| {
        format!(
            "commit {checksum}: `{METADATA_KEY}` has type {}, expected a(sss)",
            v.type_()
        )
    })?;
    Ok(Some(
        list.into_iter()
            .map(|(name, version, arch)| Package {
                name,
                version,
                arch,
            })
            .collect(),
    ))
}

pub fn to_variant(pkgs: &[Package]) -> glib::Variant {
    use glib::prelude::*;
    pkgs.iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.arch.clone()))
        .collect::<Vec<_>>()
        .to_variant()
}

/// Resolve a ref or checksum (prefix) of `repo` to a commit checksum.
fn resolve_rev(repo: &ostree::Repo, rev: &str) -> Result<String> {
    repo.resolve_rev(rev, false)
        .with_context(|| format!("`{rev}` is neither a ref nor a commit of the repo"))?
        .map(|s| s.to_string())
        .with_context(|| format!("`{rev}` not found in the repo"))
}

/// FROM and TO for a build repo. With both given they are used as they are;
/// with only FROM (a ref), or nothing and a repo holding exactly one ref, the
/// ref's head is compared with its parent commit.
pub fn repo_endpoints(
    repo: &ostree::Repo,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(String, String)> {
    match (from, to) {
        (Some(f), Some(t)) => Ok((resolve_rev(repo, f)?, resolve_rev(repo, t)?)),
        (Some(r), None) => head_and_parent(repo, r),
        (None, _) => {
            let refs = repo
                .list_refs(None, gio::Cancellable::NONE)
                .context("listing the repo's refs")?;
            let names: Vec<String> = refs.keys().map(|k| k.to_string()).collect();
            match names.as_slice() {
                [only] => head_and_parent(repo, only),
                [] => bail!("the repo has no refs"),
                _ => bail!(
                    "the repo has several refs ({}); name one, or give FROM and TO",
                    names.join(", ")
                ),
            }
        }
    }
}

fn head_and_parent(repo: &ostree::Repo, rev: &str) -> Result<(String, String)> {
    let head = resolve_rev(repo, rev)?;
    let commit = repo
        .load_variant(ostree::ObjectType::Commit, &head)
        .with_context(|| format!("loading commit {head}"))?;
    let Some(parent) = ostree::commit_get_parent(&commit) else {
        bail!("{rev} ({head}) has no parent commit to compare with; give FROM and TO");
    };
    Ok((parent.to_string(), head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
        }
    }

    #[test]
    fn classifies_changes_by_debian_version_order() {
        let from = vec![
            p("same", "1.0"),
            p("gone", "2"),
            p("up", "1.0~rc1"),
            p("down", "1:0.5"),
            p("kernel", "6.1.0-9"),
        ];
        let to = vec![
            p("same", "1.0"),
            p("up", "1.0"),
            p("down", "0.9"),
            p("new", "3"),
            p("kernel", "6.1.0-37"),
        ];
        let d = diff(&from, &to);
        assert_eq!(d.added, vec![p("new", "3")]);
        assert_eq!(d.removed, vec![p("gone", "2")]);
        let names = |v: &Vec<Change>| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&d.upgraded), vec!["kernel", "up"]);
        assert_eq!(names(&d.downgraded), vec!["down"]);
        let text = render(&d);
        assert!(
            text.contains("Upgraded (2):\n  kernel 6.1.0-9 -> 6.1.0-37 amd64\n"),
            "{text}"
        );
        assert!(
            text.contains("Downgraded (1):\n  down 1:0.5 -> 0.9 amd64\n"),
            "{text}"
        );
        assert!(text.contains("Removed (1):\n  gone 2 amd64\n"), "{text}");
        assert!(text.contains("Added (1):\n  new 3 amd64\n"), "{text}");
    }

    #[test]
    fn identical_lists_have_no_changes() {
        let l = vec![p("a", "1"), p("b", "2")];
        assert!(diff(&l, &l).is_empty());
        assert_eq!(render(&diff(&l, &l)), "No package changes.\n");
    }

    #[test]
    fn variant_roundtrip() {
        let l = vec![p("a", "1"), p("b", "2")];
        let v = to_variant(&l);
        assert_eq!(v.type_().as_str(), "a(sss)");
        let back: Vec<(String, String, String)> = v.get().unwrap();
        assert_eq!(back[1], ("b".into(), "2".into(), "amd64".into()));
    }
}
