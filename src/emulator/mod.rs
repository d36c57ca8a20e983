//! An in-process Google Cloud Pub/Sub emulator speaking real gRPC.
//!
//! No Pub/Sub emulator can be installed where this worker is developed, yet
//! the job runtime must be driven through the real client crate before it can
//! be trusted. This module serves `google.pubsub.v1.Publisher` and
//! `google.pubsub.v1.Subscriber` with the protobuf types of
//! `gcloud-googleapis`, keeping topics, subscriptions and leases in memory.
//!
//! It follows the semantics Google documents for lease management, retry
//! policies, dead-letter topics and StreamingPull flow control; see
//! [`state`] for the model and [`policy`] for the individual rules. Run it
//! with `keshless-ops emulator --port N`, or start it from a test with
//! [`RunningEmulator::start`] on port 0 and point the client at
//! [`RunningEmulator::host`].

pub mod names;
pub mod policy;
pub mod publisher;
pub mod routing;
pub mod secret_manager;
pub mod state;
pub mod subscriber;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

pub use state::EmulatorError;

use publisher::PublisherService;
use routing::{PublisherServer, SubscriberServer};
use state::Registry;
use subscriber::SubscriberService;

/// Settings of one emulator instance.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Cap on the bytes of unacked messages kept in memory; a publish that
    /// would exceed it fails with RESOURCE_EXHAUSTED instead of growing.
    pub max_retained_bytes: usize,
    /// Pub/Sub closes StreamingPull streams from time to time with
    /// UNAVAILABLE (to move them between servers) and clients reopen them;
    /// the flow-control window starts afresh on the new stream. `Some(d)`
    /// closes every stream `d` after it opened, so that path can be tested.
    pub max_stream_lifetime: Option<Duration>,
    /// Where publish times come from: the system clock, or a simulated one.
    pub clock: crate::clock::Clock,
    /// The service may answer a Pull with fewer messages than asked for,
    /// even while more wait. `Some(n)` answers every Pull with at most `n`,
    /// so clients that take one short answer for the whole backlog are caught.
    pub max_messages_per_pull: Option<usize>,
    /// A Pull with the deprecated `return_immediately` is answered from
    /// what the service has at hand, which is often nothing even while
    /// messages wait (why the field is deprecated). `true` answers every such
    /// Pull with no messages, so clients that rely on it are caught.
    pub immediate_pulls_find_nothing: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            max_retained_bytes: 256 * 1024 * 1024,
            max_stream_lifetime: None,
            clock: crate::clock::Clock::system(),
            max_messages_per_pull: None,
            immediate_pulls_find_nothing: false,
        }
    }
}

/// How long [`RunningEmulator::shutdown`] waits for connections to drain
/// before it stops the server task outright.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The namespace type of the emulator; see [`serve`] and [`RunningEmulator`].
#[derive(Debug, Clone, Copy)]
pub struct Emulator;

impl Emulator {
    /// Starts an emulator in the background; same as [`RunningEmulator::start`].
    pub async fn start(address: SocketAddr, config: EmulatorConfig) -> std::io::Result<RunningEmulator> {
        RunningEmulator::start(address, config).await
    }
}

/// An emulator serving on a tokio task; stopped by [`RunningEmulator::shutdown`]
/// (or, less gracefully, when dropped).
#[derive(Debug)]
pub struct RunningEmulator {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningEmulator {
    /// Bind and serve in the background (tokio task). Port 0 = pick a free port.
    pub async fn start(address: SocketAddr, config: EmulatorConfig) -> std::io::Result<RunningEmulator> {
        let listener = TcpListener::bind(address).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown_sender, shutdown_receiver) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, async move {
            // A dropped sender means the handle is gone: stop as well.
            let _ = shutdown_receiver.await;
        }));
        Ok(RunningEmulator {
            local_addr,
            shutdown: Some(shutdown_sender),
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// "127.0.0.1:PORT", what PUBSUB_EMULATOR_HOST should be.
    pub fn host(&self) -> String {
        self.local_addr.to_string()
    }

    /// Ends open streams, stops accepting calls and waits (briefly) for the
    /// server task to finish.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(error = %error, "Pub/Sub emulator stopped with an error"),
                Ok(Err(join_error)) => tracing::warn!(error = %join_error, "Pub/Sub emulator task failed"),
                Err(_elapsed) => {
                    tracing::warn!("Pub/Sub emulator did not drain in time; stopping it");
                    task.abort();
                }
            }
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Serve until `shutdown` resolves (used by `keshless-ops emulator --port N`).
pub async fn serve(
    listener: TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let registry = Registry::new(config.max_retained_bytes, config.clock.clone());
    let address = listener.local_addr().ok();
    tracing::info!(address = ?address, max_retained_bytes = config.max_retained_bytes, "Pub/Sub emulator listening");
    // Without TCP_NODELAY small StreamingPull responses can sit in Nagle's
    // buffer waiting on a delayed ACK, adding ~40 ms to every delivery.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Also runs when this future is dropped (RunningEmulator dropped without
    // shutdown), so timer tasks and streams never outlive the server.
    let _shut_down_on_exit = ShutDownOnDrop(Arc::clone(&registry));
    let shutdown_registry = Arc::clone(&registry);
    let result = Server::builder()
        .layer(tower::util::MapRequestLayer::new(
            routing::stamp_call_deadline::<tonic::body::Body>,
        ))
        .add_service(PublisherServer::new(PublisherService::new(Arc::clone(&registry))))
        .add_service(SubscriberServer::new(SubscriberService::new(
            Arc::clone(&registry),
            config.max_stream_lifetime,
            config.max_messages_per_pull,
            config.immediate_pulls_find_nothing,
        )))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // Open StreamingPull calls would otherwise hold the graceful
            // shutdown open forever.
            shutdown_registry.shut_down();
        })
        .await;
    result
}

/// Shuts the registry down when dropped.
struct ShutDownOnDrop(Arc<Registry>);

impl Drop for ShutDownOnDrop {
    fn drop(&mut self) {
        self.0.shut_down();
    }
}
