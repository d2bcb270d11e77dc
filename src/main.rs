use std::process::ExitCode;

use clap::Parser;
use hostctl::cli::{Cli, Command, ComposeCmd, DbCmd, ImageCmd, InternalCmd};
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
        Command::Image(ImageCmd::Build(args)) => {
            hostctl::image::build(cli.stateroot.as_deref(), args)
        }
        Command::Internal(InternalCmd::BootCheck(args)) => deploy::boot_check(&t, args),
        Command::Internal(InternalCmd::PublishEntries(args)) => {
            hostctl::bootloader::cli::publish_entries(&cli.sysroot, args)
        }
        Command::Db(DbCmd::Diff(args)) => match &args.repo {
            Some(repo) => {
                let text =
                    hostctl::pkgdiff::repo_diff(repo, args.from.as_deref(), args.to.as_deref())?;
                print!("{text}");
                Ok(Outcome::Done)
            }
            // Host mode: the lists come from the booted and the pending
            // deployment's commits; pkgdiff::diff and render stay the same.
            None => deploy::db_diff(&t, args),
        },
    }
}
