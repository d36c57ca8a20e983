//! `keshless-ops publish`: publish a job message like gcloud would.

use std::process::ExitCode;

/// Publish a job message to the jobs topic, adding the job secret, so the
/// worker runs it through the normal pipeline.
#[derive(Debug, clap::Args)]
pub struct PublishCmd {
    /// Job name, e.g. postgres-backup.
    pub job: String,
    /// Job parameter as KEY=VALUE (repeatable).
    #[arg(long = "param", value_parser = super::parse_param)]
    pub params: Vec<(String, String)>,
    /// Idempotency key (default: derived from the message id).
    #[arg(long)]
    pub key: Option<String>,
}

impl PublishCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("publish", 4)
    }
}
