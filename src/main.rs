//! Entry point: parse the command line, set up logging, run, map the outcome
//! to an exit code. Everything else lives in the library.

use std::process::ExitCode;

use keshless_ops::cli::Cli;
use keshless_ops::telemetry::{self, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_with_environment();
    telemetry::init(LogFormat::detect(), "info");
    match cli.run().await {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
