//! The command-line contract. Verb and flag names follow rpm-ostree/bootc where
//! they exist, because scripts and docs depend on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::agent::config::{ETC_CONFIG, USR_CONFIG};
use crate::agent::health::{ETC_HEALTH_D, USR_HEALTH_D};
use crate::agent::run::{AgentOptions, HealthOptions};
use crate::bootloader::{EspTarget, HOST_ESP};
use crate::compose::tree::ComposeOptions;
use crate::host::verbs::{
    self as verbs, BootCheckOptions, CleanupOptions, DbDiffOptions, DeployOptions, InstallOptions,
    KargsOptions, PinOptions, RebaseOptions, RollbackOptions, StatusOptions, Target,
    UpgradeOptions,
};
use crate::image::ImageOptions;
use crate::publish::serve::PrepareOptions;
use crate::publish::{KeygenOptions, SignOptions};
use crate::Outcome;

pub mod docs;

#[derive(Debug, Parser)]
#[command(
    name = "hostctl",
    version,
    about = "Atomic, image-based OS updates for Debian hosts"
)]
pub struct Cli {
    /// Root of the sysroot to operate on.
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    pub sysroot: PathBuf,
    /// Stateroot (OSTree "osname"); defaults to the booted one, else the only one present.
    #[arg(long, global = true, value_name = "NAME")]
    pub stateroot: Option<String>,
    /// ESP (a mounted directory) to publish boot entries to whenever the
    /// command writes a deployment list; default: /efi on the running host
    /// when it holds hostctl's entries, else none (`internal` commands: /efi).
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "esp_image")]
    pub esp: Option<PathBuf>,
    /// Instead of --esp: a disk image holding the ESP's FAT filesystem,
    /// written with mtools (no mount needed).
    #[arg(long, global = true, value_name = "FILE")]
    pub esp_image: Option<PathBuf>,
    /// Byte offset of the FAT filesystem inside --esp-image (default 0).
    #[arg(long, global = true, value_name = "BYTES", requires = "esp_image")]
    pub esp_offset: Option<u64>,
    /// How progress is shown on stderr: a redrawn line on a terminal and
    /// plain lines otherwise (auto), plain lines always, or one JSON object
    /// per line (json). stdout never carries progress.
    #[arg(long, global = true, value_enum, default_value_t = ProgressArg::Auto, value_name = "MODE")]
    pub progress: ProgressArg,
    /// Write progress as JSON lines to this open file descriptor instead of
    /// stderr (implies --progress=json).
    #[arg(long, global = true, value_name = "N")]
    pub progress_fd: Option<i32>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressArg {
    Auto,
    Plain,
    Json,
}

impl From<ProgressArg> for crate::progress::Mode {
    fn from(a: ProgressArg) -> Self {
        use crate::progress::Mode;
        match a {
            ProgressArg::Auto => Mode::Auto,
            ProgressArg::Plain => Mode::Plain,
            ProgressArg::Json => Mode::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build-side commands: compose a tree into an OSTree repository.
    #[command(subcommand)]
    Compose(ComposeCmd),
    /// Turn an empty directory or filesystem into a sysroot and deploy REF into it.
    Install(InstallArgs),
    /// Show deployments in boot order.
    Status(StatusArgs),
    /// Fetch the newest commit of the origin's ref and make it the next boot.
    Upgrade(UpgradeArgs),
    /// Make the previous deployment the default.
    Rollback(RollbackArgs),
    /// Deploy a specific commit of the origin ref's history (version or checksum prefix).
    Deploy(DeployArgs),
    /// Switch the origin to another ref and deploy its head.
    Rebase(RebaseArgs),
    /// Show or change the kernel arguments of the default deployment.
    Kargs(KargsArgs),
    /// Pin a deployment so that it is never garbage-collected.
    Pin(PinArgs),
    /// Remove deployments and prune unreferenced objects.
    Cleanup(CleanupArgs),
    /// Package database queries.
    #[command(subcommand)]
    Db(DbCmd),
    /// Disk images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Sign an existing commit with an ed25519 and/or GPG key (adds to its signatures).
    Sign(SignArgs),
    /// Signing keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Prepare a repository for serving: static deltas, pruning, signed summary.
    Publish(PublishArgs),
    /// The update agent (run by hostctl-agent.timer; see docs/agent.md).
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Hooks run by hostctl's systemd units and by its package build (not for interactive use).
    #[command(subcommand, hide = true)]
    Internal(InternalCmd),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Repository holding the commit.
    #[arg(long, default_value = "repo", value_name = "REPO")]
    pub repo: PathBuf,
    /// ed25519 secret key file (from `hostctl key generate`).
    #[arg(long, value_name = "FILE", required_unless_present = "gpg_sign")]
    pub key: Option<PathBuf>,
    /// GPG key id to sign with, through libostree (repeatable).
    #[arg(long = "gpg-sign", value_name = "KEYID")]
    pub gpg_sign: Vec<String>,
    /// GnuPG home directory holding the --gpg-sign keys (default: GnuPG's own).
    #[arg(long, value_name = "DIR", requires = "gpg_sign")]
    pub gpg_homedir: Option<PathBuf>,
    /// Ref or commit checksum to sign.
    pub rev: String,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The archive repository to prepare.
    #[arg(long, default_value = "repo", value_name = "REPO")]
    pub repo: PathBuf,
    /// Generate deltas to each ref's head from this many previous commits.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub deltas: usize,
    /// Keep this many commits of each ref (head included); older ones are pruned.
    #[arg(long, value_name = "K")]
    pub keep: Option<usize>,
    /// Keep every commit of each ref made at or after DATE (2026-12-01, UTC
    /// midnight, or an RFC 3339 time); with --keep, a commit either rule
    /// keeps stays.
    #[arg(long, value_name = "DATE")]
    pub keep_newer_than: Option<String>,
    /// Sign the summary (and any head not yet signed by it) with this ed25519
    /// key (repeatable: during a rotation, every key hosts may trust).
    #[arg(long = "sign-key", value_name = "FILE")]
    pub sign_keys: Vec<PathBuf>,
    /// Sign the summary (and any head not yet signed by it) with this GPG key
    /// (repeatable).
    #[arg(long = "gpg-sign", value_name = "KEYID")]
    pub gpg_sign: Vec<String>,
    /// GnuPG home directory holding the --gpg-sign keys (default: GnuPG's own).
    #[arg(long, value_name = "DIR", requires = "gpg_sign")]
    pub gpg_homedir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Check, stage or apply an update as `updates.policy` says.
    RunOnce(AgentRunArgs),
    /// Reboot now if `reboot.strategy` allows it (window open, lock granted).
    Reboot(AgentArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The admin's configuration, overlaying --defaults key by key.
    #[arg(long, default_value = ETC_CONFIG, value_name = "FILE")]
    pub config: PathBuf,
    /// The tree's default configuration.
    #[arg(long, default_value = USR_CONFIG, value_name = "FILE")]
    pub defaults: PathBuf,
    /// Where the agent keeps its state (last run, held reboot slot) and
    /// finds the commits that failed to boot.
    #[arg(long, default_value = "/var/lib/hostctl", value_name = "DIR")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct AgentRunArgs {
    #[command(flatten)]
    pub common: AgentArgs,
    /// Do nothing unless `updates.interval` (plus a random delay up to
    /// `updates.randomized-delay`) has passed since the last run.
    #[arg(long)]
    pub if_due: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Generate an ed25519 key pair: PREFIX.secret and PREFIX.pub.
    Generate {
        /// Path prefix of the two files; existing files are never overwritten.
        #[arg(long, value_name = "PREFIX")]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ComposeCmd {
    /// Compose TREEFILE into a commit on its ref.
    Tree(ComposeTreeArgs),
    /// Commit a prepared directory as it is (like `ostree commit --tree=dir=`).
    Commit(ComposeCommitArgs),
}

#[derive(Debug, Args)]
pub struct ComposeCommitArgs {
    /// Repository to commit into; created (archive mode) when missing.
    #[arg(long, default_value = "repo", value_name = "REPO")]
    pub repo: PathBuf,
    /// Ref to move to the new commit.
    #[arg(long = "ref", value_name = "REF")]
    pub refname: String,
    /// Commit subject (default: the ref).
    #[arg(long, value_name = "TEXT")]
    pub subject: Option<String>,
    /// The directory to commit: owners, modes and xattrs are taken as they are.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ComposeTreeArgs {
    /// Repository to commit into; created (archive mode) when missing.
    #[arg(long, default_value = "repo", value_name = "REPO")]
    pub repo: PathBuf,
    /// Write the new (or unchanged) commit checksum to FILE.
    #[arg(long, value_name = "FILE")]
    pub write_commitid_to: Option<PathBuf>,
    /// Exit with status 77 when nothing changed.
    #[arg(long)]
    pub unchanged_exit_77: bool,
    /// Compose even when the inputs hash to the ref's current commit.
    #[arg(long)]
    pub force_nocache: bool,
    /// Where downloaded packages are kept between composes.
    #[arg(long, value_name = "DIR")]
    pub cachedir: Option<PathBuf>,
    /// Where the tree is assembled (default: $TMPDIR); removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Sign the new commit with this ed25519 secret key file.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Sign the new commit with this GPG key id, through libostree (repeatable).
    #[arg(long = "gpg-sign", value_name = "KEYID")]
    pub gpg_sign: Vec<String>,
    /// GnuPG home directory holding the --gpg-sign keys (default: GnuPG's own).
    #[arg(long, value_name = "DIR", requires = "gpg_sign")]
    pub gpg_homedir: Option<PathBuf>,
    /// hostctl's Debian package (scripts/build-deb.sh), which a treefile with
    /// `install-hostctl = true` installs into the tree.
    #[arg(long, value_name = "FILE", env = "HOSTCTL_DEB")]
    pub hostctl_deb: Option<PathBuf>,
    /// The treefile (TOML).
    pub treefile: PathBuf,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Repository URL (file:///..., http(s)://...).
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// Ref to deploy.
    #[arg(long = "ref", value_name = "REF")]
    pub refspec: String,
    /// Name of the remote configured on the host.
    #[arg(long, default_value = "origin", value_name = "NAME")]
    pub remote: String,
    /// Kernel argument for the deployment (repeatable).
    #[arg(long = "karg", value_name = "ARG")]
    pub kargs: Vec<String>,
    /// File of ed25519 public keys (base64, one per line) that every commit
    /// from the remote must be signed by (repeatable).
    #[arg(long = "verify-key", value_name = "FILE")]
    pub verify_keys: Vec<PathBuf>,
    /// GPG keyring file (`gpg --export`, binary or armoured) whose keys
    /// every commit from the remote must be signed by (repeatable).
    #[arg(long = "gpg-keyring", value_name = "FILE")]
    pub gpg_keyrings: Vec<PathBuf>,
    /// Accept an http(s) remote without --verify-key or --gpg-keyring: anyone
    /// who can change the repository or the network path then decides what
    /// the host boots.
    #[arg(long)]
    pub insecure_allow_unsigned: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
    /// Only the booted deployment.
    #[arg(long)]
    pub booted: bool,
    #[arg(short, long)]
    pub verbose: bool,
    /// Exit with status 77 when a deployment other than the booted one
    /// boots next.
    #[arg(long)]
    pub pending_exit_77: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("report").args(["check", "preview"]).multiple(true)))]
pub struct UpgradeArgs {
    /// Only say whether an update is available.
    #[arg(long)]
    pub check: bool,
    /// Say whether an update is available and what it changes.
    #[arg(long)]
    pub preview: bool,
    /// Pull the update but do not deploy it.
    #[arg(long)]
    pub download_only: bool,
    /// Accept a commit older than the current one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Exit with status 77 when there is no update.
    #[arg(long)]
    pub unchanged_exit_77: bool,
    /// Reboot after the update is deployed.
    #[arg(short, long)]
    pub reboot: bool,
    /// With --check or --preview: print one JSON object on stdout instead
    /// of text.
    #[arg(long, requires = "report")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Version or checksum (prefix) from the origin ref's history.
    pub revision: String,
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Exit with status 77 when the commit is already the default.
    #[arg(long)]
    pub unchanged_exit_77: bool,
    #[arg(short, long)]
    pub reboot: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Reboot into the rollback deployment.
    #[arg(short, long)]
    pub reboot: bool,
}

#[derive(Debug, Args)]
pub struct RebaseArgs {
    /// [REMOTE:]REF
    pub target: String,
    #[arg(short, long)]
    pub reboot: bool,
}

#[derive(Debug, Args)]
pub struct KargsArgs {
    #[arg(long, value_name = "K[=V]")]
    pub append: Vec<String>,
    #[arg(long, value_name = "K[=V]")]
    pub delete: Vec<String>,
    #[arg(long, value_name = "K=V")]
    pub replace: Vec<String>,
    /// Append unless this exact argument is already there.
    #[arg(long, value_name = "K[=V]")]
    pub append_if_missing: Vec<String>,
    /// Delete if present; no error when absent.
    #[arg(long, value_name = "K[=V]")]
    pub delete_if_present: Vec<String>,
    /// Exit with status 77 when the arguments do not change.
    #[arg(long)]
    pub unchanged_exit_77: bool,
    #[arg(short, long)]
    pub reboot: bool,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Deployment index as shown by `hostctl status` (0 = default).
    pub index: usize,
    #[arg(long)]
    pub unpin: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Remove a staged (pending) deployment.
    #[arg(long)]
    pub pending: bool,
    /// Remove the rollback deployment.
    #[arg(long)]
    pub rollback: bool,
}

#[derive(Debug, Subcommand)]
pub enum DbCmd {
    /// Packages added, removed, upgraded and downgraded between two commits.
    Diff(DbDiffArgs),
}

#[derive(Debug, Args)]
pub struct DbDiffArgs {
    /// Compare commits of this (build) repository instead of host deployments.
    #[arg(long, value_name = "REPO")]
    pub repo: Option<PathBuf>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build a bootable GPT disk image from a commit.
    Build(ImageBuildArgs),
}

#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    #[arg(long, value_name = "REPO")]
    pub repo: PathBuf,
    #[arg(long = "ref", value_name = "REF")]
    pub refspec: String,
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    #[arg(long, default_value = "4G", value_name = "SIZE")]
    pub size: String,
    #[arg(long = "karg", value_name = "ARG")]
    pub kargs: Vec<String>,
    /// URL the host's remote points at (default: the repo the image is built from).
    #[arg(long, value_name = "URL")]
    pub remote_url: Option<String>,
    /// File of ed25519 public keys the host verifies every commit against
    /// (repeatable); the image's own commit is verified with them too.
    #[arg(long = "verify-key", value_name = "FILE")]
    pub verify_keys: Vec<PathBuf>,
    /// GPG keyring file the host verifies every commit against
    /// (repeatable); the image's own commit is verified with it too.
    #[arg(long = "gpg-keyring", value_name = "FILE")]
    pub gpg_keyrings: Vec<PathBuf>,
    /// Accept an http(s) --remote-url without --verify-key or --gpg-keyring.
    #[arg(long)]
    pub insecure_allow_unsigned: bool,
}

#[derive(Debug, Subcommand)]
pub enum InternalCmd {
    /// Publish bootloader entries for the current deployments onto the ESP.
    PublishEntries(PublishEntriesArgs),
    /// At boot: if systemd-boot fell back from the default entry because its
    /// boot tries ran out, make the booted deployment the default.
    BootCheck(BootCheckArgs),
    /// Before boot-complete.target: run the health checks; fail (and record
    /// why) when one fails, so the boot is marked bad.
    HealthCheck(HealthCheckArgs),
    /// At package build time: write the man pages and shell completions.
    GenerateDocs(GenerateDocsArgs),
}

#[derive(Debug, Args)]
pub struct GenerateDocsArgs {
    /// Directory to write `man/` and `completions/` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct HealthCheckArgs {
    #[command(flatten)]
    pub common: AgentArgs,
    /// A health.d directory; later ones replace earlier ones' checks of the
    /// same name (default: the tree's, then /etc's).
    #[arg(long = "checks-dir", value_name = "DIR")]
    pub checks_dirs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BootCheckArgs {}

#[derive(Debug, Args)]
pub struct PublishEntriesArgs {}

impl Cli {
    /// The ESP named with `--esp` or `--esp-image`, if any.
    pub fn esp_target(&self) -> Option<EspTarget> {
        match (&self.esp, &self.esp_image) {
            (_, Some(image)) => Some(EspTarget::Image {
                path: image.clone(),
                offset: self.esp_offset.unwrap_or(0),
            }),
            (Some(dir), None) => Some(EspTarget::Dir(dir.clone())),
            (None, None) => None,
        }
    }

    /// The named ESP, else the host's mount point (`/efi`): for the boot-time
    /// `internal` commands, which always have an ESP.
    fn esp_or_default(&self) -> EspTarget {
        self.esp_target()
            .unwrap_or_else(|| EspTarget::Dir(PathBuf::from(HOST_ESP)))
    }
}

/// Run a parsed command line. This is the only place that turns clap's
/// structs into the library's options, so the library never sees clap.
pub fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    crate::progress::configure(cli.progress.into(), cli.progress_fd)?;
    let esp = cli.esp_target();
    let t = Target {
        sysroot: &cli.sysroot,
        stateroot: cli.stateroot.as_deref(),
        esp: esp.as_ref(),
    };
    // The verbs that may change which deployment boots next; after them,
    // /run/reboot-required says whether that is another than the running one.
    let changing_default = matches!(
        cli.command,
        Command::Upgrade(_)
            | Command::Rollback(_)
            | Command::Deploy(_)
            | Command::Rebase(_)
            | Command::Kargs(_)
            | Command::Cleanup(_)
    );
    let outcome = run_command(cli, &t)?;
    if changing_default && outcome == Outcome::Done {
        // The command did what it was asked; a /run that cannot be written
        // is reported but does not undo that.
        if let Err(e) = crate::agent::reboot_required::refresh(t.sysroot, t.stateroot) {
            eprintln!(
                "warning: updating {}: {e:#}",
                crate::agent::reboot_required::FLAG
            );
        }
    }
    Ok(outcome)
}

fn run_command(cli: &Cli, t: &Target) -> anyhow::Result<Outcome> {
    match &cli.command {
        Command::Compose(ComposeCmd::Tree(a)) => crate::compose::tree::run(&a.into()),
        Command::Compose(ComposeCmd::Commit(a)) => {
            crate::compose::tree::commit_dir(&crate::compose::tree::CommitDirOptions {
                repo: a.repo.clone(),
                refname: a.refname.clone(),
                subject: a.subject.clone(),
                dir: a.dir.clone(),
            })
        }
        Command::Install(a) => verbs::install(t, &a.into()),
        Command::Status(a) => verbs::status(t, &a.into()),
        Command::Upgrade(a) => verbs::upgrade(t, &a.into()),
        Command::Rollback(a) => verbs::rollback(t, &RollbackOptions { reboot: a.reboot }),
        Command::Deploy(a) => verbs::deploy(t, &a.into()),
        Command::Rebase(a) => verbs::rebase(t, &a.into()),
        Command::Kargs(a) => verbs::kargs(t, &a.into()),
        Command::Pin(a) => verbs::pin(t, &a.into()),
        Command::Cleanup(a) => verbs::cleanup(t, &a.into()),
        Command::Agent(AgentCmd::RunOnce(a)) => crate::agent::run::run_once(
            t,
            &AgentOptions {
                if_due: a.if_due,
                ..(&a.common).into()
            },
        ),
        Command::Agent(AgentCmd::Reboot(a)) => crate::agent::run::reboot(&a.into()),
        Command::Image(ImageCmd::Build(a)) => crate::image::build(t.stateroot, &a.into()),
        Command::Sign(a) => crate::publish::sign_existing(&SignOptions {
            repo: a.repo.clone(),
            key: a.key.clone(),
            gpg_sign: a.gpg_sign.clone(),
            gpg_homedir: a.gpg_homedir.clone(),
            rev: a.rev.clone(),
        }),
        Command::Publish(a) => crate::publish::serve::prepare(&PrepareOptions {
            repo: a.repo.clone(),
            deltas: a.deltas,
            keep: a.keep,
            keep_newer_than: a
                .keep_newer_than
                .as_deref()
                .map(crate::publish::serve::parse_cutoff)
                .transpose()?,
            sign_keys: a.sign_keys.clone(),
            gpg_sign: a.gpg_sign.clone(),
            gpg_homedir: a.gpg_homedir.clone(),
        }),
        Command::Key(KeyCmd::Generate { output }) => crate::publish::generate_key(&KeygenOptions {
            output: output.clone(),
        }),
        Command::Internal(InternalCmd::BootCheck(_)) => verbs::boot_check(
            t,
            &BootCheckOptions {
                esp: cli.esp_or_default(),
            },
        ),
        Command::Internal(InternalCmd::HealthCheck(a)) => crate::agent::run::health_check(
            t,
            &HealthOptions {
                defaults: a.common.defaults.clone(),
                config: a.common.config.clone(),
                state_dir: a.common.state_dir.clone(),
                dirs: if a.checks_dirs.is_empty() {
                    vec![PathBuf::from(USR_HEALTH_D), PathBuf::from(ETC_HEALTH_D)]
                } else {
                    a.checks_dirs.clone()
                },
            },
        ),
        Command::Internal(InternalCmd::GenerateDocs(a)) => {
            let done = docs::generate(&a.out)?;
            for p in done.man_pages.iter().chain(&done.completions) {
                println!("{}", p.display());
            }
            Ok(Outcome::Done)
        }
        Command::Internal(InternalCmd::PublishEntries(_)) => {
            crate::bootloader::cli::publish_entries(&cli.sysroot, &cli.esp_or_default())
        }
        // With --repo, two commits of a build repository; else two
        // deployments of the host.
        Command::Db(DbCmd::Diff(a)) => verbs::db_diff(t, &a.into()),
    }
}

impl From<&InstallArgs> for InstallOptions {
    fn from(a: &InstallArgs) -> Self {
        InstallOptions {
            repo: a.repo.clone(),
            refspec: a.refspec.clone(),
            remote: a.remote.clone(),
            kargs: a.kargs.clone(),
            verify_keys: a.verify_keys.clone(),
            gpg_keyrings: a.gpg_keyrings.clone(),
            allow_unsigned: a.insecure_allow_unsigned,
        }
    }
}

impl From<&StatusArgs> for StatusOptions {
    fn from(a: &StatusArgs) -> Self {
        StatusOptions {
            json: a.json,
            booted: a.booted,
            verbose: a.verbose,
            pending_exit_77: a.pending_exit_77,
        }
    }
}

impl From<&UpgradeArgs> for UpgradeOptions {
    fn from(a: &UpgradeArgs) -> Self {
        UpgradeOptions {
            check: a.check,
            preview: a.preview,
            download_only: a.download_only,
            allow_downgrade: a.allow_downgrade,
            unchanged_exit_77: a.unchanged_exit_77,
            reboot: a.reboot,
            json: a.json,
            skip: Vec::new(),
        }
    }
}

impl From<&AgentArgs> for AgentOptions {
    fn from(a: &AgentArgs) -> Self {
        AgentOptions {
            defaults: a.defaults.clone(),
            config: a.config.clone(),
            state_dir: a.state_dir.clone(),
            if_due: false,
        }
    }
}

impl From<&DeployArgs> for DeployOptions {
    fn from(a: &DeployArgs) -> Self {
        DeployOptions {
            revision: a.revision.clone(),
            allow_downgrade: a.allow_downgrade,
            unchanged_exit_77: a.unchanged_exit_77,
            reboot: a.reboot,
        }
    }
}

impl From<&RebaseArgs> for RebaseOptions {
    fn from(a: &RebaseArgs) -> Self {
        RebaseOptions {
            target: a.target.clone(),
            reboot: a.reboot,
        }
    }
}

impl From<&KargsArgs> for KargsOptions {
    fn from(a: &KargsArgs) -> Self {
        KargsOptions {
            append: a.append.clone(),
            delete: a.delete.clone(),
            replace: a.replace.clone(),
            append_if_missing: a.append_if_missing.clone(),
            delete_if_present: a.delete_if_present.clone(),
            unchanged_exit_77: a.unchanged_exit_77,
            reboot: a.reboot,
        }
    }
}

impl From<&PinArgs> for PinOptions {
    fn from(a: &PinArgs) -> Self {
        PinOptions {
            index: a.index,
            unpin: a.unpin,
        }
    }
}

impl From<&CleanupArgs> for CleanupOptions {
    fn from(a: &CleanupArgs) -> Self {
        CleanupOptions {
            pending: a.pending,
            rollback: a.rollback,
        }
    }
}

impl From<&DbDiffArgs> for DbDiffOptions {
    fn from(a: &DbDiffArgs) -> Self {
        DbDiffOptions {
            repo: a.repo.clone(),
            from: a.from.clone(),
            to: a.to.clone(),
            json: a.json,
        }
    }
}

impl From<&ComposeTreeArgs> for ComposeOptions {
    fn from(a: &ComposeTreeArgs) -> Self {
        ComposeOptions {
            repo: a.repo.clone(),
            write_commitid_to: a.write_commitid_to.clone(),
            unchanged_exit_77: a.unchanged_exit_77,
            force_nocache: a.force_nocache,
            cachedir: a.cachedir.clone(),
            workdir: a.workdir.clone(),
            treefile: a.treefile.clone(),
            sign_key: a.sign_key.clone(),
            gpg_sign: a.gpg_sign.clone(),
            gpg_homedir: a.gpg_homedir.clone(),
            hostctl_deb: a.hostctl_deb.clone(),
        }
    }
}

impl From<&ImageBuildArgs> for ImageOptions {
    fn from(a: &ImageBuildArgs) -> Self {
        ImageOptions {
            repo: a.repo.clone(),
            refspec: a.refspec.clone(),
            output: a.output.clone(),
            size: a.size.clone(),
            kargs: a.kargs.clone(),
            remote_url: a.remote_url.clone(),
            verify_keys: a.verify_keys.clone(),
            gpg_keyrings: a.gpg_keyrings.clone(),
            allow_unsigned: a.insecure_allow_unsigned,
        }
    }
}
