//! `keshless-ops emulator`: the Pub/Sub emulator and the Secret Manager fake
//! as a standalone server.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::emulator::secret_manager::{seed_demo, FakeConfig, SecretManagerFake};
use crate::emulator::{EmulatorConfig, RunningEmulator};

/// Serve the in-memory Pub/Sub emulator (gRPC) for local development and tests.
/// Point clients at it with PUBSUB_EMULATOR_HOST=127.0.0.1:PORT. Unless --bare,
/// it starts with the production topology: topics backup-jobs and
/// backup-jobs-dlq, subscription backup-jobs-worker (dead-letter policy, 5
/// attempts) and backup-jobs-dlq-inspect, in project local-project.
///
/// Beside it, the Secret Manager fake (REST) on --secret-manager-port: point
/// clients at it with SECRET_MANAGER_EMULATOR_HOST=127.0.0.1:PORT. Unless
/// --bare it holds demo secrets of project local-project (labels, several
/// versions in mixed states, aliases, a regional secret in europe-west1).
/// Faults are switched on with POST /fake/faults, e.g.
/// {"fail_next": 5, "wrong_checksum": ["projects/P/secrets/S/versions/1"], "page_delay_ms": 500}.
#[derive(Debug, clap::Args)]
pub struct EmulatorCmd {
    /// TCP port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8085)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Refuse publishes (RESOURCE_EXHAUSTED) once this many MiB of messages are retained.
    #[arg(long, default_value_t = 256)]
    pub max_retained_mib: usize,
    /// Start empty instead of creating the worker's topics and subscriptions.
    #[arg(long)]
    pub bare: bool,
    /// TCP port of the Secret Manager fake (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8086)]
    pub secret_manager_port: u16,
    /// The Secret Manager fake's cap on pageSize (the real service's is 25000).
    #[arg(long, default_value_t = 25_000)]
    pub secret_manager_page_size: usize,
}

impl EmulatorCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = EmulatorConfig {
            max_stream_lifetime: None,
            max_messages_per_pull: None,
            immediate_pulls_find_nothing: false,
            max_retained_bytes: self.max_retained_mib.saturating_mul(1024 * 1024),
            ..EmulatorConfig::default()
        };
        let emulator = RunningEmulator::start((self.host, self.port).into(), config)
            .await
            .with_context(|| format!("cannot listen on {}:{}", self.host, self.port))?;
        if !self.bare {
            create_topology(&emulator.host())
                .await
                .context("cannot create the topics and subscriptions")?;
        }
        let secret_manager = SecretManagerFake::start(
            (self.host, self.secret_manager_port).into(),
            FakeConfig {
                maximum_page_size: self.secret_manager_page_size.max(1),
                // As the real service names what it returns.
                numbered_names: true,
            },
        )
        .await
        .with_context(|| format!("cannot listen on {}:{}", self.host, self.secret_manager_port))?;
        if !self.bare {
            secret_manager
                .with_store(|store| seed_demo(store, crate::runtime::pubsub::EMULATOR_PROJECT))
                .map_err(|error| anyhow::anyhow!("cannot seed the demo secrets: {}", error.message))?;
        }
        // The addresses go to stdout so scripts can read them when a port is 0.
        println!("PUBSUB_EMULATOR_HOST={}", emulator.host());
        println!("SECRET_MANAGER_EMULATOR_HOST={}", secret_manager.host());
        super::shutdown_signal().await;
        // Bounded: connected clients get a few seconds to hang up.
        emulator.shutdown().await;
        secret_manager.shutdown();
        tracing::info!("Pub/Sub emulator and Secret Manager fake stopped");
        Ok(ExitCode::SUCCESS)
    }
}

/// The topics and subscriptions `infra/` creates in production, with their default names.
pub(crate) async fn create_topology(host: &str) -> anyhow::Result<()> {
    use google_cloud_googleapis::pubsub::v1::DeadLetterPolicy;
    use google_cloud_pubsub::subscription::SubscriptionConfig;

    let client = crate::runtime::pubsub::connect(None, Some(host)).await?;
    let jobs = client.create_topic("backup-jobs", None, None).await?;
    let dead_letters = client.create_topic("backup-jobs-dlq", None, None).await?;
    client
        .create_subscription(
            "backup-jobs-worker",
            &jobs.id(),
            SubscriptionConfig {
                ack_deadline_seconds: 60,
                dead_letter_policy: Some(DeadLetterPolicy {
                    dead_letter_topic: dead_letters.fully_qualified_name().to_owned(),
                    max_delivery_attempts: 5,
                }),
                ..SubscriptionConfig::default()
            },
            None,
        )
        .await?;
    client
        .create_subscription(
            "backup-jobs-dlq-inspect",
            &dead_letters.id(),
            SubscriptionConfig::default(),
            None,
        )
        .await?;
    Ok(())
}
