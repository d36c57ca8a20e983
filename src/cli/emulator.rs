//! `keshless-ops emulator`: the Pub/Sub emulator as a standalone server.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::emulator::{EmulatorConfig, RunningEmulator};

/// Serve the in-memory Pub/Sub emulator (gRPC) for local development and tests.
/// Point clients at it with PUBSUB_EMULATOR_HOST=127.0.0.1:PORT.
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
}

impl EmulatorCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = EmulatorConfig {
            max_retained_bytes: self.max_retained_mib.saturating_mul(1024 * 1024),
        };
        let emulator = RunningEmulator::start((self.host, self.port).into(), config)
            .await
            .with_context(|| format!("cannot listen on {}:{}", self.host, self.port))?;
        // The address goes to stdout so scripts can read it when --port 0.
        println!("PUBSUB_EMULATOR_HOST={}", emulator.host());
        super::shutdown_signal().await;
        // Bounded: connected clients get a few seconds to hang up.
        emulator.shutdown().await;
        tracing::info!("Pub/Sub emulator stopped");
        Ok(ExitCode::SUCCESS)
    }
}
