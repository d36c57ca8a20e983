//! `keshless-ops run`: run one job in this process.

use std::process::ExitCode;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::runtime::ledger::Ledger;
use crate::runtime::local::{run_locally, LocalRun};
use crate::runtime::worker::default_owner;

/// Run a job now, in this process, through the same message contract,
/// idempotency ledger and decision core as the worker (no Pub/Sub needed).
/// A key that already succeeded is not run again.
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
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RunCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = match super::load_config() {
            Ok(config) => config,
            Err(code) => return Ok(code),
        };
        let ledger = Ledger::connect(&config.ledger_database_url).await?;
        let backups = crate::storage::open(&config.backup_store, config.storage_emulator_host.as_deref())
            .await
            .with_context(|| format!("cannot open the backup store {}", config.backup_store))?;
        let registry = crate::jobs::registry(&config, backups);
        let cancel = CancellationToken::new();
        tokio::spawn({
            let cancel = cancel.clone();
            async move {
                super::shutdown_signal().await;
                cancel.cancel();
            }
        });
        let outcome = run_locally(
            &ledger,
            &registry,
            &self.job,
            super::params_object(&self.params),
            self.key,
            &default_owner(),
            cancel,
        )
        .await;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        } else {
            match &outcome {
                LocalRun::Succeeded { key, summary, .. } => println!("succeeded ({key}): {summary}"),
                LocalRun::Duplicate { key } => println!("already succeeded ({key}): not run again"),
                LocalRun::Held { key, owner, until } => {
                    println!("held ({key}): {owner} is running it (lease until {until}); not run")
                }
                LocalRun::Failed { key, kind, error } => {
                    eprintln!("failed ({}, {kind}): {error}", key.as_deref().unwrap_or("no key"))
                }
            }
        }
        Ok(match outcome {
            LocalRun::Succeeded { .. } | LocalRun::Duplicate { .. } => ExitCode::SUCCESS,
            LocalRun::Held { .. } => ExitCode::from(3),
            LocalRun::Failed { .. } => ExitCode::FAILURE,
        })
    }
}
