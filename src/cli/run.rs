//! `keshless-ops run`: run one job in this process.

use std::process::ExitCode;

/// Run a job now, in this process, through the same idempotency ledger and
/// decision core as the worker (no Pub/Sub needed).
#[derive(Debug, clap::Args)]
pub struct RunCmd {
    /// Job name, e.g. postgres-backup.
    pub job: String,
    /// Job parameter as KEY=VALUE (repeatable).
    #[arg(long = "param", value_parser = super::parse_param)]
    pub params: Vec<(String, String)>,
    /// Idempotency key (default: a fresh one).
    #[arg(long)]
    pub key: Option<String>,
}

impl RunCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("run", 4)
    }
}
