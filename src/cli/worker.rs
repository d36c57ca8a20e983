//! `keshless-ops worker`: the long-running Pub/Sub subscriber.

use std::process::ExitCode;

/// Pull job messages from the subscription and run them, with idempotency,
/// retries, dead-lettering and the HTTP endpoints (/healthz, /readyz, /metrics,
/// POST /backup-jobs/{job}).
#[derive(Debug, clap::Args)]
pub struct WorkerCmd {}

impl WorkerCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("worker", 4)
    }
}
