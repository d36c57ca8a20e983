//! `keshless-ops dlq`: inspect and replay dead-lettered job messages.

use std::process::ExitCode;

/// Inspect and replay dead-lettered job messages.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCmd {
    /// Show dead-lettered messages (job, key, error, attempts, times) without consuming them.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead-lettered messages to the jobs topic (source=replay), keeping
    /// their idempotency key so a job that in fact succeeded is not run again.
    Replay {
        /// Only messages for this job.
        #[arg(long)]
        job: Option<String>,
        /// Only the message with this idempotency key.
        #[arg(long)]
        key: Option<String>,
        /// Replay every dead-lettered message.
        #[arg(long)]
        all: bool,
        /// Give replayed messages a fresh idempotency key (runs them again even if they succeeded).
        #[arg(long)]
        force: bool,
        /// Show what would be replayed without publishing or acknowledging anything.
        #[arg(long)]
        dry_run: bool,
    },
}

impl DlqCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            DlqCmd::List { .. } => super::not_implemented("dlq list", 4),
            DlqCmd::Replay { .. } => super::not_implemented("dlq replay", 4),
        }
    }
}
