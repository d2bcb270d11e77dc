//! Decisions the host verbs take, on plain data: is a commit an update, which
//! commit a revision names, which deployments survive a change, what
//! rollback and cleanup do. No I/O here, so each rule has a unit test.

use thiserror::Error;

pub use super::roles::{Roles, Slot};
use crate::format::repo::CommitInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    Update,
    /// Older than what is deployed; needs `--allow-downgrade`.
    Downgrade,
}

/// Compare the candidate with the commit the update starts from. Timestamps
/// decide because versions are free-form strings; an equal timestamp on a
/// different commit counts as an update (a rebuild in the same second).
pub fn decide(current: &CommitInfo, candidate: &CommitInfo) -> Decision {
    if current.checksum == candidate.checksum {
        Decision::Unchanged
    } else if candidate.timestamp < current.timestamp {
        Decision::Downgrade
    } else {
        Decision::Update
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("no commit in the history of {branch} has version or checksum {wanted:?}")]
    NotFound { wanted: String, branch: String },
    #[error("checksum prefix {wanted:?} matches several commits of {branch}; give more digits")]
    Ambiguous { wanted: String, branch: String },
}

/// Find the commit `wanted` names in `history` (newest first): an exact
/// version wins (the newest commit carrying it), else a checksum prefix of
/// at least 4 hex digits that matches exactly one commit.
pub fn select_revision<'a>(
    history: &'a [CommitInfo],
    wanted: &str,
    branch: &str,
) -> Result<&'a CommitInfo, SelectError> {
    if let Some(c) = history
        .iter()
        .find(|c| c.version.as_deref() == Some(wanted))
    {
        return Ok(c);
    }
    let not_found = || SelectError::NotFound {
        wanted: wanted.to_string(),
        branch: branch.to_string(),
    };
    let is_prefix = wanted.len() >= 4 && wanted.chars().all(|c| c.is_ascii_hexdigit());
    if !is_prefix {
        return Err(not_found());
    }
    let wanted_lc = wanted.to_ascii_lowercase();
    let mut matches = history
        .iter()
        .filter(|c| c.checksum.starts_with(&wanted_lc));
    match (matches.next(), matches.next()) {
        (Some(c), None) => Ok(c),
        (Some(_), Some(_)) => Err(SelectError::Ambiguous {
            wanted: wanted.to_string(),
            branch: branch.to_string(),
        }),
        (None, _) => Err(not_found()),
    }
}

/// Indices of the existing deployments to keep after a new one is put in
/// front: other stateroots, the booted one, the one the new deployment's
/// `/etc` was merged from (it becomes the rollback), and pinned ones.
pub fn retain_after_deploy(slots: &[Slot], osname: &str, merge: Option<usize>) -> Vec<usize> {
    (0..slots.len())
        .filter(|&i| {
            let s = &slots[i];
            s.osname != osname || s.booted || s.pinned || Some(i) == merge
        })
        .filter(|&i| !slots[i].staged)
        .collect()
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RollbackError {
    #[error("there is no rollback deployment")]
    NoRollback,
}

/// The new boot order for `rollback`, as indices into `slots`.
///
/// - With a pending deployment ahead of the booted one, rollback undoes it:
///   the booted deployment becomes the default again. A staged pending
///   deployment is discarded (it was never finalized); an already written
///   one moves to second place so another rollback brings it back.
/// - Otherwise the default and the rollback deployment swap places.
pub fn rollback_order(roles: &Roles) -> Result<Vec<usize>, RollbackError> {
    let slots = roles.slots();
    let mut order: Vec<usize> = (0..slots.len()).collect();
    match roles.booted() {
        Some(b) if b > 0 => {
            order.retain(|&i| !slots[i].staged);
            let pos = order
                .iter()
                .position(|&i| i == b)
                .expect("booted is never staged");
            let booted_idx = order.remove(pos);
            order.insert(0, booted_idx);
            if order.len() < 2 && !roles.any_staged() {
                return Err(RollbackError::NoRollback);
            }
        }
        _ => {
            let r = roles.rollback().ok_or(RollbackError::NoRollback)?;
            order.swap(0, r);
        }
    }
    Ok(order)
}

/// Which deployments `cleanup` removes: the pending ones (those ahead of
/// the booted one) and the rollback one, as [`Roles`] decides them. Pinned
/// deployments are never removed here; unpin them first.
pub fn cleanup_removals(roles: &Roles, pending: bool, rollback: bool) -> Vec<usize> {
    let mut out = Vec::new();
    if pending {
        out.extend(roles.pending());
    }
    if rollback {
        out.extend(roles.rollback());
    }
    out.retain(|&i| !roles.is_pinned(i));
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the deployment at `index` may be pinned or unpinned: it must
/// exist, and must not be staged (a staged deployment is not written yet;
/// it can be pinned once finalization has made it a deployment).
pub fn pin_check(roles: &Roles, index: usize) -> Result<(), String> {
    if index >= roles.len() {
        return Err(format!(
            "no deployment with index {index} ({} deployments)",
            roles.len()
        ));
    }
    if roles.is_staged(index) {
        return Err(format!(
            "deployment {index} is staged; it can be pinned once it is finalized"
        ));
    }
    Ok(())
}

/// A deployment named by its index or a unique checksum prefix.
pub fn find_deployment(checksums: &[String], arg: &str) -> Result<usize, String> {
    if let Ok(i) = arg.parse::<usize>() {
        if i < checksums.len() {
            return Ok(i);
        }
    }
    let hits: Vec<usize> = (0..checksums.len())
        .filter(|&i| arg.len() >= 4 && checksums[i].starts_with(arg))
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => {
            Err("matches no deployment index or checksum (prefixes need 4+ characters)".to_string())
        }
        _ => Err("matches several deployments; give more of the checksum".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sum: &str, version: &str, ts: u64) -> CommitInfo {
        CommitInfo {
            checksum: sum.into(),
            version: Some(version.into()),
            timestamp: ts,
        }
    }

    fn slot(booted: bool, staged: bool, pinned: bool) -> Slot {
        Slot {
            osname: "debian".into(),
            booted,
            staged,
            pinned,
        }
    }

    #[test]
    fn finds_deployments_by_index_or_prefix() {
        let c = vec!["abcd1234".to_string(), "abce9999".to_string()];
        assert_eq!(find_deployment(&c, "1"), Ok(1));
        assert_eq!(find_deployment(&c, "abce"), Ok(1));
        assert!(find_deployment(&c, "abc").is_err());
        assert!(find_deployment(&c, "5").is_err());
        assert!(find_deployment(&c, "ffff").is_err());
    }

    #[test]
    fn decide_by_checksum_then_time() {
        let cur = c("aa", "1", 100);
        assert_eq!(decide(&cur, &c("aa", "1", 100)), Decision::Unchanged);
        assert_eq!(decide(&cur, &c("bb", "2", 200)), Decision::Update);
        assert_eq!(decide(&cur, &c("bb", "2", 100)), Decision::Update);
        assert_eq!(decide(&cur, &c("bb", "0.9", 50)), Decision::Downgrade);
    }

    #[test]
    fn select_by_version_or_unique_prefix() {
        let h = vec![
            c("abcd11", "1.2", 3),
            c("abcd22", "1.1", 2),
            c("ef0033", "1.0", 1),
        ];
        assert_eq!(select_revision(&h, "1.1", "b").unwrap().checksum, "abcd22");
        assert_eq!(select_revision(&h, "ef00", "b").unwrap().checksum, "ef0033");
        assert_eq!(
            select_revision(&h, "ABCD2", "b").unwrap().checksum,
            "abcd22"
        );
        assert!(matches!(
            select_revision(&h, "abcd", "b"),
            Err(SelectError::Ambiguous { .. })
        ));
        assert!(matches!(
            select_revision(&h, "abc", "b"),
            Err(SelectError::NotFound { .. })
        ));
        assert!(matches!(
            select_revision(&h, "2.0", "b"),
            Err(SelectError::NotFound { .. })
        ));
    }

    #[test]
    fn a_version_that_looks_like_hex_still_matches_as_version() {
        let h = vec![c("1234aa", "beef", 2), c("beef00", "1", 1)];
        assert_eq!(select_revision(&h, "beef", "b").unwrap().checksum, "1234aa");
    }

    #[test]
    fn retention_keeps_booted_merge_pinned_and_other_stateroots() {
        let mut other = slot(false, false, false);
        other.osname = "fedora".into();
        let slots = vec![
            slot(false, false, false), // 0: default, merge source
            slot(false, false, false), // 1: old rollback
            slot(false, false, true),  // 2: pinned
            other,                     // 3
        ];
        assert_eq!(
            retain_after_deploy(&slots, "debian", Some(0)),
            vec![0, 2, 3]
        );
        let booted = vec![
            slot(false, true, false), // staged: replaced by the new one
            slot(true, false, false),
            slot(false, false, false),
        ];
        assert_eq!(retain_after_deploy(&booted, "debian", Some(1)), vec![1]);
    }

    #[test]
    fn rollback_swaps_or_undoes_pending() {
        let s = vec![slot(false, false, false), slot(false, false, false)];
        assert_eq!(rollback_order(&Roles::new(s.clone())).unwrap(), vec![1, 0]);
        let s = vec![
            slot(true, false, false),
            slot(false, false, false),
            slot(false, false, true),
        ];
        assert_eq!(
            rollback_order(&Roles::new(s.clone())).unwrap(),
            vec![1, 0, 2]
        );
        // Staged ahead of booted: the staged one goes, booted stays default.
        let s = vec![
            slot(false, true, false),
            slot(true, false, false),
            slot(false, false, false),
        ];
        assert_eq!(rollback_order(&Roles::new(s.clone())).unwrap(), vec![1, 2]);
        let s = vec![slot(false, true, false), slot(true, false, false)];
        assert_eq!(rollback_order(&Roles::new(s.clone())).unwrap(), vec![1]);
        // A written pending deployment moves behind the booted one.
        let s = vec![slot(false, false, false), slot(true, false, false)];
        assert_eq!(rollback_order(&Roles::new(s.clone())).unwrap(), vec![1, 0]);
        assert_eq!(
            rollback_order(&Roles::new(vec![slot(false, false, false)])),
            Err(RollbackError::NoRollback)
        );
        assert_eq!(
            rollback_order(&Roles::new(vec![slot(true, false, false)])),
            Err(RollbackError::NoRollback)
        );
    }

    #[test]
    fn a_staged_deployment_cannot_be_pinned() {
        let s = vec![
            slot(false, true, false),
            slot(true, false, false),
            slot(false, false, false),
        ];
        let roles = Roles::new(s);
        let e = pin_check(&roles, 0).expect_err("pinning the staged deployment 0 was allowed");
        assert!(e.contains("staged"), "{e}");
        assert_eq!(pin_check(&roles, 1), Ok(()), "the booted deployment");
        assert_eq!(pin_check(&roles, 2), Ok(()), "the rollback deployment");
        let e = pin_check(&roles, 3).expect_err("index 3 of 3 deployments was allowed");
        assert!(e.contains("index 3"), "{e}");
    }

    #[test]
    fn cleanup_picks_pending_and_rollback_but_not_pinned() {
        let s = vec![
            slot(false, true, false),
            slot(true, false, false),
            slot(false, false, false),
        ];
        assert_eq!(
            cleanup_removals(&Roles::new(s.clone()), true, false),
            vec![0]
        );
        assert_eq!(
            cleanup_removals(&Roles::new(s.clone()), false, true),
            vec![2]
        );
        assert_eq!(
            cleanup_removals(&Roles::new(s.clone()), true, true),
            vec![0, 2]
        );
        let s = vec![slot(false, false, false), slot(false, false, true)];
        assert!(cleanup_removals(&Roles::new(s.clone()), true, true).is_empty());
        let s = vec![slot(false, false, false), slot(false, false, false)];
        assert_eq!(
            cleanup_removals(&Roles::new(s.clone()), false, true),
            vec![1]
        );
    }
}
