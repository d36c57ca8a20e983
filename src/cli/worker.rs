//! `keshless-ops worker`: the long-running Pub/Sub subscriber.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::runtime::http::{self, HttpState};
use crate::runtime::ledger::Ledger;
use crate::runtime::metrics::Metrics;
use crate::runtime::pubsub;
use crate::runtime::worker::{Worker, WorkerOptions};

/// Pull job messages from the subscription and run them, with idempotency,
/// retries, dead-lettering and the HTTP endpoints (/healthz, /readyz, /metrics,
/// POST /backup-jobs/{job}). Stops on SIGTERM: running jobs get
/// SHUTDOWN_GRACE_SECONDS to finish, then are nacked and released.
#[derive(Debug, clap::Args)]
pub struct WorkerCmd {}

impl WorkerCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = match super::load_config() {
            Ok(config) => config,
            Err(code) => return Ok(code),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                super::shutdown_signal().await;
                tracing::info!("shutdown signal received");
                shutdown.cancel();
            }
        });
        serve(&config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Runs the worker and its HTTP endpoints until `shutdown` fires (the
/// `worker` command, and `dev` in-process).
pub(crate) async fn serve(config: &crate::config::Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ledger = Ledger::connect(&config.ledger_database_url)
        .await
        .with_context(|| format!("cannot open the idempotency ledger at {}", config.ledger_database_url))?;
    let client = pubsub::connect(
        config.google_cloud_project.as_deref(),
        config.pubsub.emulator_host.as_deref(),
    )
    .await?;
    let backups = crate::storage::open(&config.backup_store, config.storage_emulator_host.as_deref())
        .await
        .with_context(|| format!("cannot open the backup store {}", config.backup_store))?;
    let registry = crate::jobs::registry(config, backups);
    let metrics = Metrics::new();
    let options = WorkerOptions {
        concurrency: config.worker.concurrency as usize,
        shutdown_grace: config.worker.shutdown_grace,
        time_zone: config.schedule_time_zone,
        max_delivery_attempts: config.pubsub.max_delivery_attempts,
        ..WorkerOptions::new(&config.pubsub.subscription, &config.pubsub.dead_letter_topic)
    };
    let worker = Worker::new(
        &client,
        ledger.clone(),
        registry.clone(),
        config.job_secret.clone(),
        options,
        metrics.clone(),
    )
    .await?;
    let state = Arc::new(HttpState {
        ledger,
        metrics,
        health: worker.health(),
        jobs: client.topic(&config.pubsub.topic).new_publisher(None),
        registry,
        job_secret: config.job_secret.clone(),
    });
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("cannot listen on port {} (PORT)", config.port))?;
    tracing::info!(
        port = listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or(config.port),
        "HTTP endpoints listening"
    );

    let http_stop = CancellationToken::new();
    let http_server = tokio::spawn(http::serve(listener, state, http_stop.clone()));
    worker.run(shutdown).await?;
    http_stop.cancel();
    // A client holding a request open must not keep the process alive
    // past the platform's kill deadline.
    match tokio::time::timeout(crate::runtime::worker::HTTP_CLOSE_BUDGET, http_server).await {
        Ok(served) => served.context("HTTP server task")?.context("HTTP server")?,
        Err(_) => tracing::warn!("HTTP connections still open at exit; closing them"),
    }
    Ok(())
}
