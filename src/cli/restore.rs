//! `keshless-ops restore`: bring data back from backups.

use std::path::PathBuf;
use std::process::ExitCode;

/// Restore PostgreSQL, secrets or documents from backups.
#[derive(Debug, clap::Subcommand)]
pub enum RestoreCmd {
    /// Stream a PostgreSQL backup into pg_restore and verify checksum and row counts.
    Postgres {
        /// Backup date (YYYY-MM-DD); the newest complete backup of that day.
        #[arg(long, conflicts_with = "latest")]
        date: Option<String>,
        /// The newest complete backup.
        #[arg(long)]
        latest: bool,
        /// Database to restore into.
        #[arg(long)]
        target_url: String,
        /// Create the target database first.
        #[arg(long)]
        create_db: bool,
        /// Allow restoring into a non-empty database, dropping objects first.
        #[arg(long)]
        clean: bool,
    },
    /// Decrypt a secrets backup into a file (mode 0600).
    Secrets {
        /// Weekly backup date (YYYY-MM-DD); default: latest.
        #[arg(long)]
        date: Option<String>,
        /// Output file.
        #[arg(long, required_unless_present = "stdout")]
        out: Option<PathBuf>,
        /// Write the decrypted secrets to standard output instead.
        #[arg(long)]
        stdout: bool,
    },
    /// Bring back the generation of each object under a prefix that was live at a time.
    Documents {
        /// Object prefix, e.g. kyc/.
        #[arg(long)]
        prefix: String,
        /// Point in time (RFC 3339).
        #[arg(long)]
        as_of: String,
        /// Report what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

impl RestoreCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            RestoreCmd::Postgres { .. } => super::not_implemented("restore postgres", 5),
            RestoreCmd::Secrets { .. } => super::not_implemented("restore secrets", 6),
            RestoreCmd::Documents { .. } => super::not_implemented("restore documents", 8),
        }
    }
}
