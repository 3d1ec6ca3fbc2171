use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use steward::cli::{self, Cli};
use steward::error::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = cli.is_daemon();
    if daemon {
        steward::logging::init(cli.log_format);
    }
    match cli::run(cli) {
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(failure) => {
            if daemon {
                tracing::error!("{failure}");
            } else {
                // stderr may be closed too; there is nowhere left to say so.
                let _ = writeln!(std::io::stderr(), "steward: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
