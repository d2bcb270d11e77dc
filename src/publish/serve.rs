//! Preparing a repository to be served as plain files: static deltas to
//! each ref's head, old commits pruned by a retention rule, the summary
//! regenerated and signed. No hostctl process runs on the server.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;

use crate::format::keys::SIGN_ED25519;
use crate::format::repo::CommitInfo;
use crate::format::{gpg, repo, sign};
use crate::util::human_bytes;
use crate::Outcome;

/// What `hostctl publish` is asked to do.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub repo: PathBuf,
    /// Deltas to each head from this many of its previous commits.
    pub deltas: usize,
    /// Keep this many commits of each ref (head included); None keeps all.
    pub keep: Option<usize>,
    /// Also keep every commit at or after this time (seconds since the
    /// epoch), counting back from each head.
    pub keep_newer_than: Option<u64>,
    /// Sign the summary (and any head they have not signed) with these
    /// ed25519 keys: all of them during a key rotation.
    pub sign_keys: Vec<PathBuf>,
    /// And with these GPG keys, through libostree.
    pub gpg_sign: Vec<String>,
    pub gpg_homedir: Option<PathBuf>,
}

/// How many commits of a ref's `history` (head first) retention keeps: a
/// commit stays while it is among the last `keep` or no older than
/// `newer_than`, and the head always stays. Counting stops at the first
/// commit neither rule keeps: older ones hang from it, so they go too.
pub fn kept_len(history: &[CommitInfo], keep: Option<usize>, newer_than: Option<u64>) -> usize {
    if keep.is_none() && newer_than.is_none() {
        return history.len();
    }
    let kept = |i: usize, c: &CommitInfo| {
        i == 0 || keep.is_some_and(|k| i < k) || newer_than.is_some_and(|t| c.timestamp >= t)
    };
    history
        .iter()
        .enumerate()
        .position(|(i, c)| !kept(i, c))
        .unwrap_or(history.len())
}

/// `--keep-newer-than`'s argument: an RFC 3339 time, or a date meaning its
/// midnight UTC. Seconds since the epoch.
pub fn parse_cutoff(text: &str) -> Result<u64> {
    let t = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        t.timestamp()
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .unwrap_or_default()
    } else {
        bail!("--keep-newer-than {text:?}: not a date (2026-12-01) or an RFC 3339 time (2026-12-01T08:00:00Z)");
    };
    u64::try_from(t).map_err(|_| anyhow::anyhow!("--keep-newer-than {text:?}: before 1970"))
}

/// The commits a delta starts from: the `n` parents of `head` that
/// retention keeps. A delta from a pruned commit would serve nobody the
/// server still describes, so the window is the smaller of the two.
pub fn delta_sources(history: &[String], n: usize, keep: Option<usize>) -> Vec<String> {
    let kept = keep.unwrap_or(usize::MAX).saturating_sub(1);
    history.iter().skip(1).take(n.min(kept)).cloned().collect()
}

fn dir_size(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub fn prepare(args: &PrepareOptions) -> Result<Outcome> {
    if args.keep == Some(0) {
        bail!("--keep 0 would remove every commit; keep at least 1");
    }
    // Before any change: a key that cannot sign fails first.
    let keys = args
        .sign_keys
        .iter()
        .map(|k| sign::read_secret(k))
        .collect::<Result<Vec<_>>>()?;
    let gpg_signers = args
        .gpg_sign
        .iter()
        .map(|k| gpg::GpgSigner::open(k, args.gpg_homedir.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    let r = repo::open(&args.repo)?;
    if r.mode() != ostree::RepoMode::Archive {
        bail!(
            "{} is not an archive repository; only archive repositories can be served over HTTP",
            args.repo.display()
        );
    }
    let refs: Vec<(String, String)> = r
        .list_refs(None, gio::Cancellable::NONE)
        .with_context(|| format!("listing the refs of {}", args.repo.display()))?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    // Each ref's history (head first), read once for retention and deltas,
    // and how many of its commits retention keeps.
    let mut histories = Vec::new();
    let mut kept = Vec::new();
    for (_, head) in &refs {
        let h = repo::history(&r, head)?;
        kept.push(kept_len(&h, args.keep, args.keep_newer_than));
        histories.push(h.into_iter().map(|c| c.checksum).collect::<Vec<_>>());
    }
    if args.keep.is_some() || args.keep_newer_than.is_some() {
        let needed: std::collections::BTreeSet<&String> = histories
            .iter()
            .zip(&kept)
            .flat_map(|(h, &n)| h.iter().take(n))
            .collect();
        // Like `ostree prune --keep-younger-than`: the first commit a ref
        // drops is deleted, which cuts the older ones off that ref; the
        // prune then removes whatever no ref reaches any more. A commit
        // another ref still keeps is never deleted.
        for ((h, &n), (refname, _)) in histories.iter().zip(&kept).zip(&refs) {
            if let Some(first_dropped) = h.get(n) {
                if !needed.contains(first_dropped) {
                    r.delete_object(
                        ostree::ObjectType::Commit,
                        first_dropped,
                        gio::Cancellable::NONE,
                    )
                    .with_context(|| {
                        format!("removing commit {first_dropped} of {refname} (retention)")
                    })?;
                }
            }
        }
        let (_, pruned, size) = r
            .prune(
                ostree::RepoPruneFlags::REFS_ONLY,
                -1,
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("pruning {}", args.repo.display()))?;
        // Deltas whose target is gone can serve nobody.
        r.prune_static_deltas(None, gio::Cancellable::NONE)
            .with_context(|| format!("pruning the static deltas of {}", args.repo.display()))?;
        println!(
            "Pruned {pruned} objects ({}); kept per ref: {}.",
            human_bytes(size),
            refs.iter()
                .zip(&kept)
                .map(|((r, _), n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let existing: std::collections::BTreeSet<String> = r
        .list_static_delta_names(gio::Cancellable::NONE)
        .context("listing static deltas")?
        .into_iter()
        .map(|s| s.to_string())
        .collect();
    let deltas_dir = args.repo.join("deltas");
    for (((refname, head), history), &n) in refs.iter().zip(&histories).zip(&kept) {
        for k in &keys {
            sign::sign_commit(&r, head, k)
                .with_context(|| format!("signing {head} ({refname}) with {}", k.source))?;
        }
        for g in &gpg_signers {
            gpg::sign_commit(&r, head, g)
                .with_context(|| format!("signing {head} ({refname}) with {}", g.describe()))?;
        }
        for from in delta_sources(history, args.deltas, Some(n)) {
            let name = format!("{from}-{head}");
            if existing.contains(&name) {
                continue;
            }
            let before = dir_size(&deltas_dir);
            // libostree reads its parameters without a NULL check: an empty
            // dictionary, not None, means "the defaults".
            let params = glib::VariantDict::new(None).end();
            r.static_delta_generate(
                ostree::StaticDeltaGenerateOpt::Major,
                Some(&from),
                head,
                None,
                Some(&params),
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("generating the delta {from} -> {head} of {refname}"))?;
            println!(
                "{refname}: delta from {} to {}: {}",
                &from[..12],
                &head[..12],
                human_bytes(dir_size(&deltas_dir).saturating_sub(before))
            );
        }
    }

    r.regenerate_summary(None, gio::Cancellable::NONE)
        .with_context(|| format!("regenerating the summary of {}", args.repo.display()))?;
    if !keys.is_empty() || !gpg_signers.is_empty() {
        sign_summary(&args.repo, &keys, &gpg_signers)?;
    }
    println!(
        "{} is ready to serve as static files ({} ref(s)).",
        args.repo.display(),
        refs.len()
    );
    Ok(Outcome::Done)
}

/// `summary.sig` in libostree's format: an `a{sv}` with
/// `ostree.sign.ed25519` and `ostree.gpgsigs`, each holding signatures
/// over the summary file's bytes. Written under a temporary name and
/// renamed, so a server never serves a half-written signature.
fn sign_summary(
    repo_path: &Path,
    keys: &[sign::SecretKey],
    gpg_signers: &[gpg::GpgSigner],
) -> Result<()> {
    let summary = repo_path.join("summary");
    let bytes =
        std::fs::read(&summary).with_context(|| format!("reading {}", summary.display()))?;
    let dict = glib::VariantDict::new(None);
    if !keys.is_empty() {
        let sigs: Vec<Vec<u8>> = keys.iter().map(|k| k.sign(&bytes).to_vec()).collect();
        dict.insert_value(SIGN_ED25519, &sigs.to_variant());
    }
    let mut signed = dict.end();
    for g in gpg_signers {
        signed = g
            .sign(&bytes, Some(&signed))
            .with_context(|| format!("signing {}", summary.display()))?;
    }
    let data = signed.data_as_bytes();
    let sig = repo_path.join("summary.sig");
    let tmp = repo_path.join(".summary.sig.tmp");
    std::fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &sig)
        .with_context(|| format!("renaming {} to {}", tmp.display(), sig.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(ts: &[u64]) -> Vec<CommitInfo> {
        ts.iter()
            .enumerate()
            .map(|(i, &t)| CommitInfo {
                checksum: format!("c{i}"),
                version: None,
                timestamp: t,
            })
            .collect()
    }

    #[test]
    fn retention_keeps_the_last_k_or_the_newer_ones() {
        let h = hist(&[400, 300, 200, 100]);
        assert_eq!(kept_len(&h, None, None), 4);
        assert_eq!(kept_len(&h, Some(2), None), 2);
        assert_eq!(kept_len(&h, Some(9), None), 4);
        assert_eq!(kept_len(&h, None, Some(250)), 2);
        assert_eq!(kept_len(&h, None, Some(300)), 2, "at the cutoff is kept");
        assert_eq!(kept_len(&h, None, Some(1000)), 1, "the head always stays");
        // Either rule keeps a commit.
        assert_eq!(kept_len(&h, Some(1), Some(250)), 2);
        assert_eq!(kept_len(&h, Some(3), Some(350)), 3);
        // Counting stops at the first dropped commit: a newer one behind
        // it hangs from it and cannot stay.
        let skewed = hist(&[400, 100, 350]);
        assert_eq!(kept_len(&skewed, None, Some(300)), 1);
    }

    #[test]
    fn cutoffs_are_dates_or_rfc3339_times() {
        assert_eq!(parse_cutoff("1970-01-02").unwrap(), 86_400);
        assert_eq!(parse_cutoff("1970-01-01T01:00:00Z").unwrap(), 3_600);
        assert_eq!(parse_cutoff("1970-01-01T02:00:00+01:00").unwrap(), 3_600);
        let e = parse_cutoff("last tuesday").unwrap_err().to_string();
        assert!(e.contains("last tuesday") && e.contains("RFC 3339"), "{e}");
        assert!(parse_cutoff("1969-12-31").is_err());
    }

    #[test]
    fn deltas_start_only_from_kept_parents() {
        let h: Vec<String> = ["d", "c", "b", "a"].iter().map(|s| s.to_string()).collect();
        assert_eq!(delta_sources(&h, 2, None), ["c", "b"]);
        assert_eq!(delta_sources(&h, 5, None), ["c", "b", "a"]);
        assert_eq!(delta_sources(&h, 5, Some(2)), ["c"]);
        assert!(delta_sources(&h, 0, None).is_empty());
        assert!(delta_sources(&h, 3, Some(1)).is_empty());
        assert!(delta_sources(&h[..1], 3, None).is_empty());
    }
}
