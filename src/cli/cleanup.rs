//! `keshless-ops cleanup`: apply the retention policy.

use std::process::ExitCode;

/// Apply retention: delete expired backups, always keeping the safety floors,
/// and print what was kept and deleted, with the reason for each.
#[derive(Debug, clap::Args)]
pub struct CleanupCmd {
    /// Decide and report, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl CleanupCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("cleanup", 7)
    }
}
