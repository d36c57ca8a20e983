//! `keshless-ops emulator`: the Pub/Sub emulator as a standalone server.

use std::process::ExitCode;

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
}

impl EmulatorCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        super::not_implemented("emulator", 3)
    }
}
