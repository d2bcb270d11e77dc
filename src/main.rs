use std::process::ExitCode;

use clap::Parser;
use hostctl::cli::{Cli, Command, ComposeCmd, DbCmd};
use hostctl::deploy::{self, Target};
use hostctl::Outcome;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Unchanged { exit_77 }) => {
            if exit_77 {
                ExitCode::from(77)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let t = Target {
        sysroot: &cli.sysroot,
        stateroot: cli.stateroot.as_deref(),
    };
    match &cli.command {
        Command::Compose(ComposeCmd::Tree(args)) => hostctl::compose::run(args),
        Command::Install(args) => deploy::install(&t, args),
        Command::Status(args) => deploy::status(&t, args),
        Command::Upgrade(args) => deploy::upgrade(&t, args),
        Command::Rollback => deploy::rollback(&t),
        Command::Deploy(args) => deploy::deploy(&t, args),
        Command::Rebase(args) => deploy::rebase(&t, args),
        Command::Kargs(args) => deploy::kargs(&t, args),
        Command::Pin(args) => deploy::pin(&t, args),
        Command::Cleanup(args) => deploy::cleanup(&t, args),
        Command::Db(DbCmd::Diff(args)) => match &args.repo {
            Some(repo) => {
                let text =
                    hostctl::pkgdiff::repo_diff(repo, args.from.as_deref(), args.to.as_deref())?;
                print!("{text}");
                Ok(Outcome::Done)
            }
            // Host mode: the lists come from the booted and the pending
            // deployment's commits; pkgdiff::diff and render stay the same.
            None => anyhow::bail!(
                "db diff between host deployments is not implemented yet; use --repo REPO"
            ),
        },
        other => anyhow::bail!("{} is not implemented yet", command_name(other)),
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Compose(_) => "compose",
        Command::Install(_) => "install",
        Command::Status(_) => "status",
        Command::Upgrade(_) => "upgrade",
        Command::Rollback => "rollback",
        Command::Deploy(_) => "deploy",
        Command::Rebase(_) => "rebase",
        Command::Kargs(_) => "kargs",
        Command::Pin(_) => "pin",
        Command::Cleanup(_) => "cleanup",
        Command::Db(_) => "db",
        Command::Image(_) => "image",
        Command::Internal(_) => "internal",
    }
}
