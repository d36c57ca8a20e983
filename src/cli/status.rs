//! `keshless-ops status`: ledger state and backup freshness.

use std::process::ExitCode;

/// Per job: last success, last failure, attempts, running now, and freshness
/// against the schedule. Exits 2 when a job is overdue, so it can drive an alert.
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl StatusCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("status", 9)
    }
}
