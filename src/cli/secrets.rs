//! `keshless-ops secrets`: key management for secrets backups.

use std::process::ExitCode;

/// Key management for secrets backups.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCmd {
    /// Re-encrypt secrets backups with a new key.
    Rekey {
        /// Show what would be re-encrypted without writing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl SecretsCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            SecretsCmd::Rekey { .. } => super::not_implemented("secrets rekey", 6),
        }
    }
}
