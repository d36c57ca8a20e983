//! `keshless-ops drill`: the disaster-recovery rehearsal.

use std::process::ExitCode;

/// Rehearse disaster recovery: restore the newest backup into a scratch
/// database, verify it, decrypt the newest secrets backup, check the document
/// inventory, and report RTO/RPO. Fails loudly if any step fails.
#[derive(Debug, clap::Args)]
pub struct DrillCmd {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl DrillCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("drill", 9)
    }
}
