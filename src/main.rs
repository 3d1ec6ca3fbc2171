use std::process::ExitCode;

use clap::Parser;
use steward::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = cli.is_daemon();
    if daemon {
        steward::logging::init(cli.log_format);
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if daemon {
                tracing::error!("{failure}");
            } else {
                eprintln!("steward: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
