//! The operator's verbs on a sysroot. Each one takes the sysroot lock, works
//! out what to do with the pure rules in `plan`, and changes the sysroot in
//! one libostree step at the end, so a failure before that step leaves
//! deployments, boot entries and origins as they were.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use ostree::gio;
use serde::Serialize;

use crate::bootloader::{self, EspTarget};
use crate::format::dirtree::{diff_files, usr_files, TreeDiff};
use crate::format::repo::{commit_info, CommitInfo};
use crate::format::{images, pkglist};
use crate::host::fetch;
use crate::host::kargs::{self, Edit};
use crate::host::origin::Refspec;
use crate::host::plan::{self, Decision};
use crate::host::status;
use crate::host::sysroot::{self, Host};
use crate::Outcome;

use super::deploy::{
    copy_origin, default_deployment, deploy_commit, deployment_refspec, write_and_publish,
};

pub use super::install::{install, InstallOptions};

/// What `hostctl status` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct StatusOptions {
    pub json: bool,
    pub booted: bool,
    pub verbose: bool,
    pub pending_exit_77: bool,
}

/// What `hostctl upgrade` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub check: bool,
    pub preview: bool,
    pub download_only: bool,
    pub allow_downgrade: bool,
    pub unchanged_exit_77: bool,
    pub reboot: bool,
    /// With `check` or `preview`: print one JSON object ([`UpgradeReport`])
    /// on stdout and nothing else there.
    pub json: bool,
    /// Commits not to deploy (the agent's list of commits that failed to
    /// boot here): when the head is one of them, nothing is done.
    pub skip: Vec<String>,
}

/// What `hostctl deploy` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub revision: String,
    pub allow_downgrade: bool,
    pub unchanged_exit_77: bool,
    pub reboot: bool,
}

/// What `hostctl rollback` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    pub reboot: bool,
}

/// What `hostctl rebase` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct RebaseOptions {
    pub target: String,
    pub reboot: bool,
}

/// What `hostctl kargs` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct KargsOptions {
    pub append: Vec<String>,
    pub delete: Vec<String>,
    pub replace: Vec<String>,
    pub append_if_missing: Vec<String>,
    pub delete_if_present: Vec<String>,
    pub unchanged_exit_77: bool,
    pub reboot: bool,
}

/// What `hostctl pin` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct PinOptions {
    pub index: usize,
    pub unpin: bool,
}

/// What `hostctl cleanup` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct CleanupOptions {
    pub pending: bool,
    pub rollback: bool,
}

/// What `hostctl db diff` on a host is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct DbDiffOptions {
    /// Compare commits of this build repository instead of deployments.
    pub repo: Option<std::path::PathBuf>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub json: bool,
}

/// One side of a comparison in the JSON of `db diff` and `upgrade
/// --check/--preview` (docs/cli.md).
#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub checksum: String,
    pub version: Option<String>,
    /// The deployment's index as `hostctl status` shows it; `None` for a
    /// commit that is not deployed (a build repository's, a remote head).
    pub deployment: Option<usize>,
}

impl Endpoint {
    fn new(c: &CommitInfo, deployment: Option<usize>) -> Self {
        Endpoint {
            checksum: c.checksum.clone(),
            version: c.version.clone(),
            deployment,
        }
    }
}

/// `db diff --json`: the two commits and what changed between them, the
/// same value the text is rendered from.
#[derive(Debug, Serialize)]
pub struct DiffReport {
    pub from: Endpoint,
    pub to: Endpoint,
    #[serde(flatten)]
    pub changes: images::Changes,
}

/// `upgrade --check --json` and `upgrade --preview --json`.
#[derive(Debug, Serialize)]
pub struct UpgradeReport {
    /// `to` is another commit than `from` that `upgrade` would deploy now
    /// (a downgrade only with `--allow-downgrade`).
    pub update_available: bool,
    /// `to` is older than `from` (reported only with `--allow-downgrade`;
    /// without it an older head is an error).
    pub downgrade: bool,
    /// The default deployment, which the update starts from.
    pub from: Endpoint,
    /// The head of the origin ref on its remote.
    pub to: Endpoint,
    /// `--preview` only: files under `/usr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<TreeDiff>,
    /// `--preview` only: packages and images, as `db diff --json`.
    #[serde(flatten)]
    pub changes: Option<images::Changes>,
}

fn print_json<T: Serialize>(value: &T, what: &str) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .with_context(|| format!("serialising the JSON of {what}"))?;
    // Not println!: with the reader gone (`| head -n1`) it panics (exit
    // 101); an error keeps the exit statuses cli.md lists.
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{text}")
        .with_context(|| format!("writing the JSON of {what} to stdout"))?;
    Ok(())
}

/// What the boot-time fallback check is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone)]
pub struct BootCheckOptions {
    pub esp: EspTarget,
}

/// Which sysroot and stateroot a verb acts on, and the ESP it publishes
/// boot entries to when it writes a deployment list (the global options).
pub struct Target<'a> {
    pub sysroot: &'a Path,
    pub stateroot: Option<&'a str>,
    /// `None`: the running host's `/efi` when it holds hostctl's entries,
    /// else nowhere ([`bootloader::host_esp`]).
    pub esp: Option<&'a EspTarget>,
}

/// Open `t`'s sysroot to change it: locked, and publishing to the ESP the
/// command names (checked before anything changes).
fn open_to_change(t: &Target) -> Result<Host> {
    let mut host = sysroot::open(t.sysroot, t.stateroot, true)?;
    host.use_esp(t.esp)?;
    Ok(host)
}

pub(crate) const DEFAULT_STATEROOT: &str = "debian";

fn maybe_reboot(host: &Host, reboot: bool) -> Result<()> {
    if !reboot {
        return Ok(());
    }
    if !host.booted {
        println!(
            "Not rebooting: {} is not the running system.",
            host.path.display()
        );
        return Ok(());
    }
    crate::util::run(
        Command::new("systemctl").arg("reboot"),
        "requesting a reboot",
    )?;
    Ok(())
}

pub(crate) fn describe(c: &CommitInfo) -> String {
    format!(
        "{} ({})",
        c.version.as_deref().unwrap_or("<no version>"),
        c.checksum
    )
}

pub fn status(t: &Target, args: &StatusOptions) -> Result<Outcome> {
    let host = sysroot::open_unlocked_any(t.sysroot, t.stateroot)?;
    let mut deps = host.status()?;
    // The note belongs to the running host, not to another sysroot.
    let note = host
        .booted
        .then(|| std::fs::read_to_string(FALLBACK_NOTE).ok())
        .flatten()
        .map(|n| n.trim().to_string());
    if let (false, Some(note)) = (args.json, &note) {
        println!("Note: {note}");
    }
    if args.booted {
        deps.retain(|d| d.booted);
    }
    if args.json {
        println!("{}", status::render_json_with(&deps, note.as_deref()));
    } else {
        print!("{}", status::render_text(&deps, args.verbose));
    }
    // rpm-ostree's meaning: a deployment ahead of the booted one will boot
    // next. A sysroot that is not running has nothing pending.
    if !host.roles().pending().is_empty() {
        return Ok(Outcome::Unchanged {
            exit_77: args.pending_exit_77,
        });
    }
    Ok(Outcome::Done)
}

/// Shared by upgrade and deploy: apply the update rules to `target` (a
/// refused downgrade is an error) and say what they decided, on stdout
/// unless `quiet`.
fn decide_update(
    current: &CommitInfo,
    refspec: &Refspec,
    target: &CommitInfo,
    allow_downgrade: bool,
    quiet: bool,
) -> Result<Decision> {
    let decision = plan::decide(current, target);
    match decision {
        Decision::Downgrade if !allow_downgrade => bail!(
            "{} of {refspec} is older than the deployed {}; pass --allow-downgrade to deploy it anyway",
            describe(target),
            describe(current)
        ),
        _ if quiet => {}
        Decision::Unchanged => {
            println!("No update: {} is already the default deployment.", describe(current))
        }
        Decision::Downgrade => println!("Downgrading: {} -> {}", describe(current), describe(target)),
        Decision::Update => println!("Update: {} -> {}", describe(current), describe(target)),
    }
    Ok(decision)
}

/// The index `hostctl status` shows for `dep`.
fn deployment_index(host: &Host, dep: &ostree::Deployment) -> Option<usize> {
    host.deployments().iter().position(|d| {
        d.osname() == dep.osname()
            && d.csum() == dep.csum()
            && d.deployserial() == dep.deployserial()
    })
}

pub fn upgrade(t: &Target, args: &UpgradeOptions) -> Result<Outcome> {
    if args.json {
        crate::util::messages_to_stderr();
    }
    let host = open_to_change(t)?;
    let current_dep = default_deployment(&host)?;
    let refspec = deployment_refspec(&current_dep)?;
    let repo = host.repo();
    let probe = fetch::probe(
        &repo,
        &host.path.join("ostree/repo"),
        &refspec,
        1,
        args.preview,
    )?;
    let head = probe.head_info()?;
    let unchanged = Outcome::Unchanged {
        exit_77: args.unchanged_exit_77,
    };
    let skipped = args.skip.contains(&head.checksum);
    // Only the agent skips commits, and it never asks for JSON.
    if skipped && !args.json {
        println!(
            "Skipping {}: it failed to boot on this host; waiting for a newer commit.",
            describe(&head)
        );
        return Ok(unchanged);
    }
    let current = commit_info(&repo, &current_dep.csum())?;
    let decision = decide_update(&current, &refspec, &head, args.allow_downgrade, args.json)?;
    if args.json {
        let (files, changes) = if args.preview {
            // The same commit: nothing changes (and the probe repository
            // need not hold its tree).
            let (new_repo, new) = if decision == Decision::Unchanged {
                (&repo, &current.checksum)
            } else {
                (&probe.repo, &head.checksum)
            };
            let (files, changes) = preview_changes(&repo, &current.checksum, new_repo, new)?;
            (Some(files), Some(changes))
        } else {
            (None, None)
        };
        print_json(
            &UpgradeReport {
                update_available: decision != Decision::Unchanged && !skipped,
                downgrade: decision == Decision::Downgrade,
                from: Endpoint::new(&current, deployment_index(&host, &current_dep)),
                to: Endpoint::new(&head, None),
                files,
                changes,
            },
            "upgrade",
        )?;
    }
    if decision == Decision::Unchanged || skipped {
        return Ok(unchanged);
    }
    if args.preview && !args.json {
        print_preview(&repo, &current_dep.csum(), &probe.repo, &head.checksum)?;
    }
    if args.check || args.preview {
        return Ok(Outcome::Done);
    }
    fetch::pull_into_sysroot(&repo, &probe, &head.checksum)?;
    if args.download_only {
        println!(
            "Downloaded {}; not deployed (--download-only).",
            describe(&head)
        );
        return Ok(Outcome::Done);
    }
    deploy_keeping_origin(&host, &current_dep, &head.checksum, args.reboot)
}

/// What `upgrade --preview` shows: files under `/usr`, packages, images.
fn preview_changes(
    old_repo: &ostree::Repo,
    old: &str,
    new_repo: &ostree::Repo,
    new: &str,
) -> Result<(TreeDiff, images::Changes)> {
    let files = diff_files(&usr_files(old_repo, old)?, &usr_files(new_repo, new)?);
    Ok((files, images::changes(old_repo, old, new_repo, new)?))
}

fn print_preview(
    old_repo: &ostree::Repo,
    old: &str,
    new_repo: &ostree::Repo,
    new: &str,
) -> Result<()> {
    let (diff, changes) = preview_changes(old_repo, old, new_repo, new)?;
    println!(
        "Files under /usr: {} added, {} removed, {} modified",
        diff.added.len(),
        diff.removed.len(),
        diff.modified.len()
    );
    for (mark, list) in [
        ("A", &diff.added),
        ("D", &diff.removed),
        ("M", &diff.modified),
    ] {
        for p in list {
            println!("  {mark} /{p}");
        }
    }
    print!("{}", images::render_changes(&changes));
    Ok(())
}

pub fn deploy(t: &Target, args: &DeployOptions) -> Result<Outcome> {
    let host = open_to_change(t)?;
    let current_dep = default_deployment(&host)?;
    let refspec = deployment_refspec(&current_dep)?;
    let repo = host.repo();
    let probe = fetch::probe(&repo, &host.path.join("ostree/repo"), &refspec, -1, false)?;
    let history = probe.history()?;
    let target = plan::select_revision(&history, &args.revision, &refspec.to_string())?.clone();
    let current = commit_info(&repo, &current_dep.csum())?;
    if decide_update(&current, &refspec, &target, args.allow_downgrade, false)?
        == Decision::Unchanged
    {
        return Ok(Outcome::Unchanged {
            exit_77: args.unchanged_exit_77,
        });
    }
    fetch::pull_into_sysroot(&repo, &probe, &target.checksum)?;
    deploy_keeping_origin(&host, &current_dep, &target.checksum, args.reboot)
}

/// Deploy `checksum` with the origin and merged `/etc` of the current
/// deployment (upgrade and deploy differ only in which commit they pick).
fn deploy_keeping_origin(
    host: &Host,
    current: &ostree::Deployment,
    checksum: &str,
    reboot: bool,
) -> Result<Outcome> {
    let merge = host.merge_deployment();
    deploy_commit(host, checksum, &copy_origin(current)?, merge.as_ref(), None)?;
    maybe_reboot(host, reboot)?;
    Ok(Outcome::Done)
}

pub fn rebase(t: &Target, args: &RebaseOptions) -> Result<Outcome> {
    let host = open_to_change(t)?;
    let current_dep = default_deployment(&host)?;
    let current_ref = deployment_refspec(&current_dep)?;
    let refspec = Refspec::parse(&args.target)?.with_default_remote(current_ref.remote.as_deref());
    let repo = host.repo();
    let probe = fetch::probe(&repo, &host.path.join("ostree/repo"), &refspec, 1, false)?;
    let head = probe.head_info()?;
    fetch::pull_into_sysroot(&repo, &probe, &head.checksum)?;
    let origin = copy_origin(&current_dep)?;
    origin.set_string("origin", "refspec", &refspec.to_string());
    let merge = host.merge_deployment();
    deploy_commit(&host, &head.checksum, &origin, merge.as_ref(), None)?;
    println!(
        "Rebased from {current_ref} to {refspec}: {}",
        describe(&head)
    );
    maybe_reboot(&host, args.reboot)?;
    Ok(Outcome::Done)
}

pub fn rollback(t: &Target, args: &RollbackOptions) -> Result<Outcome> {
    let host = open_to_change(t)?;
    let deps = host.deployments();
    let order = plan::rollback_order(&host.roles())
        .with_context(|| format!("rolling back {}", host.path.display()))?;
    let list: Vec<ostree::Deployment> = order.iter().map(|&i| sysroot::handle(&deps[i])).collect();
    write_and_publish(&host, &list)?;
    let new_default = &list[0];
    println!(
        "Rolled back: {} is the default for the next boot.",
        describe(&commit_info(&host.repo(), &new_default.csum())?)
    );
    maybe_reboot(&host, args.reboot)?;
    Ok(Outcome::Done)
}

fn kargs_edits(args: &KargsOptions) -> Vec<Edit> {
    // Deletions first, so `--delete quiet --append quiet=1` swaps the value.
    let mut edits: Vec<Edit> = args.delete.iter().cloned().map(Edit::Delete).collect();
    edits.extend(
        args.delete_if_present
            .iter()
            .cloned()
            .map(Edit::DeleteIfPresent),
    );
    edits.extend(args.replace.iter().cloned().map(Edit::Replace));
    edits.extend(args.append.iter().cloned().map(Edit::Append));
    edits.extend(
        args.append_if_missing
            .iter()
            .cloned()
            .map(Edit::AppendIfMissing),
    );
    edits
}

pub fn kargs(t: &Target, args: &KargsOptions) -> Result<Outcome> {
    let edits = kargs_edits(args);
    let mut host = sysroot::open(t.sysroot, t.stateroot, !edits.is_empty())?;
    if !edits.is_empty() {
        host.use_esp(t.esp)?;
    }
    let default = default_deployment(&host)?;
    let current = kargs::strip_ostree_managed(&sysroot::deployment_kargs(&default));
    if edits.is_empty() {
        println!("{}", current.join(" "));
        return Ok(Outcome::Done);
    }
    let new = kargs::apply(&current, &edits)?;
    if new == current {
        println!("Kernel arguments unchanged.");
        return Ok(Outcome::Unchanged {
            exit_77: args.unchanged_exit_77,
        });
    }
    deploy_commit(
        &host,
        &default.csum(),
        &copy_origin(&default)?,
        Some(&default),
        Some(&new),
    )?;
    println!("Kernel arguments: {}", new.join(" "));
    maybe_reboot(&host, args.reboot)?;
    Ok(Outcome::Done)
}

pub fn pin(t: &Target, args: &PinOptions) -> Result<Outcome> {
    let host = sysroot::open(t.sysroot, t.stateroot, true)?;
    let deps = host.deployments();
    plan::pin_check(&host.roles(), args.index).map_err(anyhow::Error::msg)?;
    let d = &deps[args.index];
    host.sysroot
        .deployment_set_pinned(d, !args.unpin)
        .with_context(|| format!("changing the pin of deployment {}", args.index))?;
    println!(
        "Deployment {} ({}) is {}.",
        args.index,
        d.csum(),
        if args.unpin { "unpinned" } else { "pinned" }
    );
    Ok(Outcome::Done)
}

pub fn cleanup(t: &Target, args: &CleanupOptions) -> Result<Outcome> {
    let host = open_to_change(t)?;
    let deps = host.deployments();
    let roles = host.roles();
    let remove = plan::cleanup_removals(&roles, args.pending, args.rollback);
    if !remove.is_empty() {
        let keep: Vec<ostree::Deployment> = (0..deps.len())
            .filter(|i| !remove.contains(i))
            .map(|i| sysroot::handle(&deps[i]))
            .collect();
        write_and_publish(&host, &keep)?;
        for i in &remove {
            println!("Removed deployment {i} ({}).", deps[*i].csum());
        }
    } else {
        if args.pending || args.rollback {
            println!("No matching deployment to remove (pinned ones are kept).");
        }
        host.sysroot
            .cleanup(gio::Cancellable::NONE)
            .with_context(|| format!("cleaning up {}", host.path.display()))?;
    }
    println!("Pruned objects no deployment or ref uses.");
    Ok(Outcome::Done)
}

/// `hostctl db diff` between deployments of a host. FROM and TO are
/// deployment indices as `hostctl status` shows them, or checksum prefixes;
/// by default FROM is the booted deployment (on an unbooted sysroot, the
/// rollback one) and TO the default one, i.e. what the next boot changes.
pub fn db_diff(t: &Target, args: &DbDiffOptions) -> Result<Outcome> {
    if args.json {
        crate::util::messages_to_stderr();
    }
    if let Some(repo) = &args.repo {
        return repo_db_diff(repo, args);
    }
    let host = sysroot::open_unlocked_any(t.sysroot, t.stateroot)?;
    let deps = host.deployments();
    if deps.is_empty() {
        bail!("{} has no deployments", host.path.display());
    }
    let pick = |arg: Option<&str>, default: Option<usize>, what: &str| -> Result<usize> {
        match arg {
            Some(a) => plan::find_deployment(&deps.iter().map(|d| d.csum().to_string()).collect::<Vec<_>>(), a)
                .map_err(|e| anyhow::anyhow!("db diff: {what} `{a}` {e}")),
            None => default.with_context(|| {
                format!("db diff: no {what} deployment by default; name one (an index from `hostctl status` or a checksum)")
            }),
        }
    };
    let roles = host.roles();
    let from = pick(
        args.from.as_deref(),
        roles.booted().or(roles.rollback()),
        "FROM",
    )?;
    let to = pick(args.to.as_deref(), (from != 0).then_some(0), "TO")?;
    let repo = host.repo();
    let (a, b) = (deps[from].csum(), deps[to].csum());
    let changes = images::changes_required(&repo, &a, &repo, &b)?;
    if args.json {
        print_diff_json(&repo, (&a, Some(from)), (&b, Some(to)), changes)?;
    } else {
        println!("Deployment {from} ({a}) -> deployment {to} ({b}):");
        print!("{}", images::render_changes(&changes));
    }
    Ok(Outcome::Done)
}

/// `hostctl db diff --repo REPO [FROM [TO]]`: two commits of a build
/// repository.
fn repo_db_diff(repo_path: &Path, args: &DbDiffOptions) -> Result<Outcome> {
    let repo = crate::format::repo::open(repo_path)?;
    let (a, b) = pkglist::repo_endpoints(&repo, args.from.as_deref(), args.to.as_deref())?;
    let changes = images::changes_required(&repo, &a, &repo, &b)?;
    if args.json {
        print_diff_json(&repo, (&a, None), (&b, None), changes)?;
    } else {
        print!("From {a}\nTo   {b}\n{}", images::render_changes(&changes));
    }
    Ok(Outcome::Done)
}

/// `db diff --json`: commits (with their deployment index, if deployed) and
/// the changes between them.
fn print_diff_json(
    repo: &ostree::Repo,
    from: (&str, Option<usize>),
    to: (&str, Option<usize>),
    changes: images::Changes,
) -> Result<()> {
    let report = DiffReport {
        from: Endpoint::new(&commit_info(repo, from.0)?, from.1),
        to: Endpoint::new(&commit_info(repo, to.0)?, to.1),
        changes,
    };
    print_json(&report, "db diff")
}

/// Where `boot-check` records an automatic rollback, for `hostctl status`.
const FALLBACK_NOTE: &str = "/var/lib/hostctl/fallback";
/// Where `hostctl internal health-check` records why this boot is bad, for
/// `boot-check` in the boot after the fallback.
const HEALTH_FAILURE: &str = "/var/lib/hostctl/health-failure";
/// [`HEALTH_FAILURE`]'s name inside the agent's state directory.
pub const HEALTH_FAILURE_FILE: &str = "health-failure";

/// The health failure record: the checksum of the deployment that failed,
/// the check's name, then its output.
pub fn health_record(checksum: &str, name: &str, output: &str) -> String {
    format!("{checksum}\n{name}\n{output}\n")
}

/// (checksum, check name, output) of a health failure record.
pub fn parse_health_record(text: &str) -> Option<(String, String, String)> {
    let mut parts = text.splitn(3, '\n');
    let checksum = parts.next()?.trim().to_string();
    let name = parts.next()?.trim().to_string();
    let output = parts.next().unwrap_or("").trim().to_string();
    (!checksum.is_empty() && !name.is_empty()).then_some((checksum, name, output))
}

/// What `hostctl status` says after an automatic rollback from `failed` at
/// `at`: the health check that failed and its output (on one line) when
/// one did, else that its boot tries ran out.
pub fn fallback_note(failed: &str, at: &str, health: Option<(&str, &str)>, now: &str) -> String {
    match health {
        Some((name, output)) => {
            let output = output.lines().map(str::trim).collect::<Vec<_>>().join(" / ");
            format!("rolled back from {failed} at {at}: health check {name} failed: {output}")
        }
        None => format!(
            "rolled back from {failed} at {at}: it failed to boot (its boot tries ran out); now running {now}."
        ),
    }
}

/// Where `boot-check` lists the checksums of commits that failed to boot,
/// one per line, so the update agent does not stage them again.
pub const FAILED_COMMITS: &str = "/var/lib/hostctl/failed-commits";
/// [`FAILED_COMMITS`]'s name inside the agent's state directory.
pub const FAILED_COMMITS_FILE: &str = "failed-commits";

/// Run early at boot by hostctl-boot-check.service. When systemd-boot booted
/// an older entry because deployment 0's entry ran out of tries (it is marked
/// bad on the ESP), make the booted deployment the default for good, so the
/// broken one is not tried again, and record it.
pub fn boot_check(t: &Target, args: &BootCheckOptions) -> Result<Outcome> {
    let mut host = sysroot::open(t.sysroot, t.stateroot, true)?;
    // Not checked like `--esp` of other commands: an ESP that is not
    // mounted shows no bad entry, so nothing is published to it.
    host.esp = Some(args.esp.clone());
    if !host.booted {
        println!(
            "{} is not the booted system; nothing to check.",
            host.path.display()
        );
        return Ok(Outcome::Unchanged { exit_77: false });
    }
    let deps = host.deployments();
    let Some(bi) = host.roles().booted() else {
        bail!("the booted deployment is not in the deployment list");
    };
    let booted = &deps[bi];
    let entries = bootloader::bls::read_sysroot_entries(&host.path)?;
    let esp = args.esp.open();
    let serial = u32::try_from(booted.deployserial()).context("deployment serial")?;
    if bi == 0
        || !bootloader::fell_back(
            &entries,
            (booted.csum().as_str(), serial),
            &host.path.join("boot"),
            &*esp,
        )?
    {
        return Ok(Outcome::Unchanged { exit_77: false });
    }
    let failed = &deps[0];
    let mut list = vec![sysroot::handle(booted)];
    list.extend(
        deps.iter()
            .enumerate()
            .filter(|(i, _)| *i != bi)
            .map(|(_, d)| sysroot::handle(d)),
    );
    write_and_publish(&host, &list)?;
    let repo = host.repo();
    let health = std::fs::read_to_string(HEALTH_FAILURE)
        .ok()
        .and_then(|t| parse_health_record(&t))
        .filter(|(c, _, _)| *c == failed.csum().as_str());
    let note = fallback_note(
        &describe(&commit_info(&repo, &failed.csum())?),
        &chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        health.as_ref().map(|(_, n, o)| (n.as_str(), o.as_str())),
        &describe(&commit_info(&repo, &booted.csum())?),
    );
    eprintln!("hostctl: {note}");
    if let Some(dir) = Path::new(FALLBACK_NOTE).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(FALLBACK_NOTE, format!("{note}\n"))
        .with_context(|| format!("writing {FALLBACK_NOTE}"))?;
    let mut failed_list = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(FAILED_COMMITS)
        .with_context(|| format!("opening {FAILED_COMMITS}"))?;
    std::io::Write::write_all(&mut failed_list, format!("{}\n", failed.csum()).as_bytes())
        .with_context(|| format!("writing {FAILED_COMMITS}"))?;
    // Used up: the record explained this fallback.
    if health.is_some() {
        std::fs::remove_file(HEALTH_FAILURE)
            .with_context(|| format!("removing {HEALTH_FAILURE}"))?;
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_notes_name_the_failed_check_and_its_output() {
        let rec = health_record("abc", "20-web", "curl: (7) refused\nsecond line\n");
        let (c, n, o) = parse_health_record(&rec).unwrap();
        assert_eq!((c.as_str(), n.as_str()), ("abc", "20-web"));
        assert_eq!(
            fallback_note("12.3 (abc)", "2026-01-01 03:00 UTC", Some((&n, &o)), "12.2 (def)"),
            "rolled back from 12.3 (abc) at 2026-01-01 03:00 UTC: health check 20-web failed: curl: (7) refused / second line"
        );
        let plain = fallback_note("12.3 (abc)", "T", None, "12.2 (def)");
        assert!(plain.contains("failed to boot"), "{plain}");
        assert!(
            plain.starts_with("rolled back from 12.3 (abc) at T: "),
            "{plain}"
        );
        assert_eq!(parse_health_record(""), None);
        assert_eq!(parse_health_record("abc\n"), None);
    }
}
