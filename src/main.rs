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
    let result = cli::run(cli);
    if daemon {
        if let Err(failure) = &result {
            tracing::error!("{failure}");
        }
        // The log is written by a thread of its own: let it finish.
        steward::flush_logs(std::time::Duration::from_secs(2));
    }
    match result {
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(failure) => {
            if !daemon {
                // stderr may be closed too; there is nowhere left to say so.
                let _ = writeln!(std::io::stderr(), "steward: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
