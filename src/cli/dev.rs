//! `keshless-ops dev`: the whole system on one machine.

use std::process::ExitCode;

/// Run everything locally: the in-process Pub/Sub emulator, a file:// store,
/// the local PostgreSQL, the worker, and an embedded scheduler.
#[derive(Debug, clap::Args)]
pub struct DevCmd {
    /// Publish every job once, wait for them, print a summary and exit.
    #[arg(long)]
    pub once: bool,
}

impl DevCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("dev", 9)
    }
}
