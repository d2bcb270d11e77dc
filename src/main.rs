use std::process::ExitCode;

use clap::Parser;
use hostctl::cli::Cli;
use hostctl::Outcome;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match hostctl::cli::run(&cli) {
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
