use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use steward::cli::{self, Cli};
use steward::error::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.daemon_log_format();
    let daemon = log_format.is_some();
    if let Some(format) = log_format {
        steward::init_logging(format);
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
