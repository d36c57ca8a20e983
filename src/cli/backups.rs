//! `keshless-ops backups`: list and verify stored backups.

use std::process::ExitCode;

/// List and verify stored backups.
#[derive(Debug, clap::Subcommand)]
pub enum BackupsCmd {
    /// Complete backups, newest first, with age, size and tables; incomplete ones flagged.
    List {
        /// Backup class: postgres.
        class: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read a backup and check its size and SHA-256 against its manifest.
    Verify {
        /// Backup id as shown by `backups list`.
        id: String,
    },
}

impl BackupsCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            BackupsCmd::List { .. } => super::not_implemented("backups list", 5),
            BackupsCmd::Verify { .. } => super::not_implemented("backups verify", 5),
        }
    }
}
