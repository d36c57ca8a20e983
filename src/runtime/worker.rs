//! The worker: StreamingPull on the jobs subscription, and for every message
//! the loop "gather facts → [`delivery::decide`] → execute the action" until
//! the message is acked or nacked.
//!
//! While a message is held or its job runs, a keeper extends its ack deadline
//! and the ledger lease is renewed, so hour-long backups keep their message.
//! On shutdown the worker stops pulling, lets running jobs finish within the
//! grace period, then interrupts them, nacks their messages and releases
//! their keys, all inside [`SHUTDOWN_AFTER_GRACE`] more (Cloud Run kills the
//! container 10 s after SIGTERM).
//!
//! Reading is eager but capped: a worker holds at most `concurrency` running
//! plus [`WAITING_PER_SLOT`] × `concurrency` waiting messages. Each stream is
//! opened with a flow-control window of what is left of that cap, and no
//! stream is open while the cap is reached, so the rest stay in Pub/Sub for
//! other instances.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use futures::StreamExt;
use google_cloud_gax::retry::RetrySetting;
use google_cloud_pubsub::client::Client;
use google_cloud_pubsub::publisher::{Publisher, PublisherConfig};
use google_cloud_pubsub::subscriber::{ReceivedMessage, SubscriberConfig};
use google_cloud_pubsub::subscription::{SubscribeConfig, Subscription};
use secrecy::SecretString;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{info, warn, Instrument};

use crate::runtime::delivery::{
    decide, AckReason, Action, DeadLetterKind, HandlerOutcome, LedgerState, NackReason, Situation,
};
use crate::runtime::job::{JobError, Outcome, Registry, RunContext};
use crate::runtime::ledger::{Claim, ClaimRequest, DeadLetteredKeys, Ledger};
use crate::runtime::message::{self, Authentication, JobRequest, Source};
use crate::runtime::metrics::Metrics;
use crate::runtime::pubsub;
use crate::telemetry::error_chain;

/// The message of the line every job run ends with, by outcome. The
/// log-based metrics in `infra/monitoring.tf` filter on these texts and read
/// [`JOB_OUTCOME_FIELDS`]; `tests/infra.rs` holds them to it.
pub const JOB_SUCCEEDED: &str = "job succeeded";
pub const JOB_FAILED: &str = "job failed";
pub const JOB_INTERRUPTED: &str = "job interrupted";

/// The `outcome` of a run: the field of those lines and the label of
/// `keshless_ops_jobs_total`.
pub mod run_outcome {
    pub const SUCCEEDED: &str = "succeeded";
    /// Failed and will not be retried (dead-lettered).
    pub const PERMANENT: &str = "permanent";
    /// Failed, retried in-process, then nacked for redelivery.
    pub const TRANSIENT: &str = "transient";
    /// Stopped by a shutdown or a lost lease; redelivered.
    pub const INTERRUPTED: &str = "interrupted";
    pub const ALL: [&str; 4] = [SUCCEEDED, PERMANENT, TRANSIENT, INTERRUPTED];
}

/// Top-level fields of the JSON payload of those lines: the job's name, the
/// database it concerns (absent for jobs without one), `outcome` (the
/// `keshless_ops_jobs_total` label: `succeeded`, `permanent`, `transient`,
/// `interrupted`), the run's duration in seconds, and the bytes it stored
/// ([`Outcome::size_bytes`]; 0 for a failure).
pub const JOB_OUTCOME_FIELDS: [&str; 5] = ["job", "database", "outcome", "duration_seconds", "bytes"];

/// The database a run concerns: the outcome's `database` detail, else the
/// normalised params' `database`; `None` for jobs without one.
fn run_database<'a>(params: &'a serde_json::Value, outcome: Option<&'a Outcome>) -> Option<&'a str> {
    outcome
        .and_then(Outcome::database)
        .or_else(|| params.get("database").and_then(serde_json::Value::as_str))
}

/// Messages a worker may hold waiting for a slot, per slot
/// (`WORKER_CONCURRENCY`): enough that the next job starts at once, few
/// enough that a busy instance leaves the backlog to the others.
pub const WAITING_PER_SLOT: usize = 2;

/// What the shutdown may take after the grace period: interrupted handlers
/// nack and release (bounded here), then the HTTP server closes (bounded by
/// the `worker` command). With `SHUTDOWN_GRACE_SECONDS=7` the whole shutdown
/// fits the 10 s Cloud Run leaves between SIGTERM and SIGKILL.
pub const SHUTDOWN_AFTER_GRACE: Duration = Duration::from_millis(INTERRUPTED_HANDLERS_MILLIS + HTTP_CLOSE_MILLIS);

/// Of [`SHUTDOWN_AFTER_GRACE`], the time interrupted handlers get to nack
/// their messages and release their keys. One that takes longer is left:
/// its lease and its message's deadline expire and another worker takes it.
const INTERRUPTED_HANDLERS_MILLIS: u64 = 2000;
const INTERRUPTED_HANDLERS_BUDGET: Duration = Duration::from_millis(INTERRUPTED_HANDLERS_MILLIS);

/// Of [`SHUTDOWN_AFTER_GRACE`], the time the HTTP server gets to close.
const HTTP_CLOSE_MILLIS: u64 = 500;
pub const HTTP_CLOSE_BUDGET: Duration = Duration::from_millis(HTTP_CLOSE_MILLIS);

/// A stream that stays open this long (or delivers a message) counts as
/// healthy; one that ends sooner was a failed attempt.
const STREAM_SETTLED_AFTER: Duration = Duration::from_secs(1);

/// Pub/Sub limits an attribute value to 1024 bytes.
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// Bounded in-process retries of transient job errors, before the message is
/// nacked and Pub/Sub's retry policy takes over.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first run (0 = run once).
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            max_retries: 3,
        }
    }
}

/// How one worker behaves. [`WorkerOptions::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Subscription id (not the full name).
    pub subscription: String,
    /// Dead-letter topic id.
    pub dead_letter_topic: String,
    /// Unique name of this worker in the ledger (`host-pid-random`).
    pub owner: String,
    /// Messages handled at once (jobs are heavy: default 1).
    pub concurrency: usize,
    /// Ack deadline requested on the stream and on every extension.
    pub ack_deadline: Duration,
    /// How often a leased message's deadline is extended.
    pub ack_extension_interval: Duration,
    /// Ledger lease of a running job, and how often it is renewed.
    pub lease: Duration,
    pub lease_renewal_interval: Duration,
    /// How often a held message re-checks the ledger.
    pub hold_recheck_interval: Duration,
    pub retry: RetryPolicy,
    /// Time running jobs get after shutdown begins.
    pub shutdown_grace: Duration,
    /// Time zone of the schedule (idempotency periods).
    pub time_zone: chrono_tz::Tz,
    /// The subscription's dead-letter limit; `None` reads it from the subscription.
    pub max_delivery_attempts: Option<u32>,
    /// "Now" for what the worker itself dates (dead-letter attributes); jobs
    /// get theirs from the registry, idempotency periods from the publish time.
    pub clock: crate::clock::Clock,
    /// How long the StreamingPull may keep failing before `/readyz` answers 503.
    pub stream_failure_threshold: Duration,
}

impl WorkerOptions {
    pub fn new(subscription: impl Into<String>, dead_letter_topic: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            subscription: subscription.into(),
            dead_letter_topic: dead_letter_topic.into(),
            owner: default_owner(),
            concurrency: 1,
            ack_deadline: Duration::from_secs(60),
            ack_extension_interval: Duration::from_secs(20),
            lease: Duration::from_secs(120),
            lease_renewal_interval: Duration::from_secs(30),
            hold_recheck_interval: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(25),
            time_zone: chrono_tz::UTC,
            max_delivery_attempts: None,
            clock: crate::clock::Clock::system(),
            stream_failure_threshold: Duration::from_secs(60),
        }
    }
}

/// `hostname-pid-random`: unique per process, readable in the ledger.
pub fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Liveness facts the HTTP endpoints report.
#[derive(Debug)]
pub struct WorkerHealth {
    stream: Mutex<StreamHealth>,
    failure_threshold: Duration,
}

/// What the worker knows about its StreamingPull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHealth {
    /// A stream has settled at least once since the worker started.
    pub connected_once: bool,
    /// Since when streams keep failing (`None`: the current one is healthy,
    /// or no stream is wanted because the worker holds all it may).
    pub failing_since: Option<Instant>,
    /// What the last failure said.
    pub last_problem: Option<String>,
}

impl Default for WorkerHealth {
    fn default() -> Self {
        WorkerHealth::new(Duration::from_secs(60))
    }
}

impl WorkerHealth {
    pub fn new(failure_threshold: Duration) -> WorkerHealth {
        WorkerHealth {
            stream: Mutex::new(StreamHealth::default()),
            failure_threshold,
        }
    }

    /// `Ok` with a note while the StreamingPull serves (or recovers within
    /// the threshold); `Err` with the reason when the worker is not ready.
    pub fn subscription_stream(&self) -> Result<String, String> {
        let health = self.stream.lock().expect("health lock").clone();
        stream_readiness(&health, Instant::now(), self.failure_threshold)
    }

    fn update(&self, change: impl FnOnce(&mut StreamHealth)) {
        change(&mut self.stream.lock().expect("health lock"));
    }

    /// The current stream is healthy.
    fn settled(&self) {
        self.update(|health| {
            health.connected_once = true;
            health.failing_since = None;
            health.last_problem = None;
        });
    }

    /// A stream ended or could not be opened.
    fn failed(&self, problem: String) {
        self.update(|health| {
            health.failing_since.get_or_insert_with(Instant::now);
            health.last_problem = Some(problem);
        });
    }

    /// No stream is open on purpose (the worker holds all it may): nothing
    /// is failing.
    fn paused(&self) {
        self.update(|health| {
            health.failing_since = None;
            health.last_problem = None;
        });
    }
}

/// The readiness rule: not ready before the first healthy stream, nor when
/// streams have kept failing for more than `threshold`; a short outage (the
/// service closes streams from time to time) is not a reason to be taken
/// out of service.
pub fn stream_readiness(health: &StreamHealth, now: Instant, threshold: Duration) -> Result<String, String> {
    let problem = health.last_problem.as_deref().unwrap_or("the stream ended");
    match (health.connected_once, health.failing_since) {
        (false, None) => Err("the subscription stream has not opened yet".to_owned()),
        (false, Some(_)) => Err(format!("the subscription stream cannot be opened: {problem}")),
        (true, None) => Ok("up".to_owned()),
        (true, Some(since)) => {
            let failing = now.saturating_duration_since(since);
            if failing > threshold {
                Err(format!(
                    "the subscription stream has been failing for {} s (more than {} s): {problem}",
                    failing.as_secs(),
                    threshold.as_secs()
                ))
            } else {
                Ok(format!("reconnecting for {} s: {problem}", failing.as_secs()))
            }
        }
    }
}

struct Shared {
    subscription: Subscription,
    dead_letters: Publisher,
    ledger: Ledger,
    registry: Registry,
    job_secret: SecretString,
    options: WorkerOptions,
    max_delivery_attempts: Option<u32>,
    metrics: Metrics,
    /// Fires when shutdown begins: pull nothing more, start no job.
    stopping: CancellationToken,
    /// Fires when the grace period is over: interrupt running jobs.
    interrupting: CancellationToken,
    /// Messages received and not yet acked or nacked (running and waiting).
    outstanding: AtomicUsize,
    /// Signalled whenever `outstanding` drops.
    capacity_freed: Notify,
}

/// A configured worker; [`Worker::run`] serves until shutdown.
pub struct Worker {
    shared: Arc<Shared>,
    health: Arc<WorkerHealth>,
}

impl Worker {
    /// Prepares a worker; reads the subscription's dead-letter limit unless
    /// the options give one.
    pub async fn new(
        client: &Client,
        ledger: Ledger,
        registry: Registry,
        job_secret: SecretString,
        options: WorkerOptions,
        metrics: Metrics,
    ) -> anyhow::Result<Worker> {
        let subscription = client.subscription(&options.subscription);
        let options_threshold = options.stream_failure_threshold;
        let max_delivery_attempts = match options.max_delivery_attempts {
            Some(limit) => Some(limit),
            None => match subscription.config(None).await {
                Ok((_, config)) => config
                    .dead_letter_policy
                    .map(|policy| policy.max_delivery_attempts.max(0) as u32)
                    .filter(|limit| *limit > 0),
                Err(status) => {
                    warn!(error = %status, subscription = %options.subscription,
                          "cannot read the subscription's dead-letter policy and PUBSUB_MAX_DELIVERY_ATTEMPTS is \
                           not set: transient failures will be dead-lettered by Pub/Sub itself, without the error \
                           attached and with the original attributes");
                    None
                }
            },
        };
        let dead_letters = client
            .topic(&options.dead_letter_topic)
            .new_publisher(Some(PublisherConfig {
                workers: 1,
                flush_interval: Duration::from_millis(10),
                bundle_size: 1,
                ..PublisherConfig::default()
            }));
        Ok(Worker {
            shared: Arc::new(Shared {
                subscription,
                dead_letters,
                ledger,
                registry,
                job_secret,
                options,
                max_delivery_attempts,
                metrics,
                stopping: CancellationToken::new(),
                interrupting: CancellationToken::new(),
                outstanding: AtomicUsize::new(0),
                capacity_freed: Notify::new(),
            }),
            health: Arc::new(WorkerHealth::new(options_threshold)),
        })
    }

    pub fn health(&self) -> Arc<WorkerHealth> {
        Arc::clone(&self.health)
    }

    /// Pulls and handles messages until `shutdown` fires, then drains.
    /// Transient Pub/Sub errors never end it: the stream is reopened with backoff.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = Arc::clone(&self.shared);
        let tracker = TaskTracker::new();
        let concurrency = shared.options.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        // Running plus waiting: what this worker may hold at once.
        let cap = concurrency * (1 + WAITING_PER_SLOT);
        let mut reconnect_delays = reconnect_backoff();
        // When the signal came: the grace period counts from then, whatever
        // handing back the stream took.
        let signalled = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
        let _stamp = AbortOnDropHandle::new(tokio::spawn({
            let (signalled, shutdown) = (Arc::clone(&signalled), shutdown.clone());
            async move {
                shutdown.cancelled().await;
                let _ = signalled.set(tokio::time::Instant::now());
            }
        }));
        load_last_successes(&shared).await;
        info!(
            subscription = %shared.options.subscription,
            owner = %shared.options.owner,
            concurrency,
            max_held_messages = cap,
            max_delivery_attempts = ?shared.max_delivery_attempts,
            "worker started"
        );
        'connection: while !shutdown.is_cancelled() {
            // At the cap no stream is open: Pub/Sub keeps the rest for other
            // instances (acks and deadline extensions do not need a stream).
            let window = loop {
                let freed = shared.capacity_freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                let held = shared.outstanding.load(Ordering::SeqCst);
                if held < cap {
                    break cap - held;
                }
                self.health.paused();
                tracing::debug!(held, "holding all the messages this worker may; no stream open");
                tokio::select! {
                    _ = freed => {}
                    _ = shutdown.cancelled() => break 'connection,
                }
            };
            let subscribe_config = SubscribeConfig::default()
                .with_channel_capacity(1)
                .with_subscriber_config(SubscriberConfig {
                    stream_ack_deadline_seconds: shared.options.ack_deadline.as_secs().clamp(10, 600) as i32,
                    // Server-side flow control: this stream gets at most what
                    // is left of the cap. Windows count per stream, so the
                    // messages still held from earlier streams are taken off.
                    max_outstanding_messages: window as i64,
                    // Every failure ends the stream here, where it is seen
                    // (readiness), backed off and reopened with a fresh window;
                    // the client would otherwise retry it out of sight.
                    retry_setting: Some(RetrySetting {
                        from_millis: 100,
                        max_delay: Some(Duration::from_secs(1)),
                        factor: 1,
                        take: 0,
                        codes: Vec::new(),
                    }),
                    ..SubscriberConfig::default()
                });
            let mut stream = match shared.subscription.subscribe(Some(subscribe_config)).await {
                Ok(stream) => stream,
                Err(status) => {
                    warn!(error = %status, "cannot open the subscription stream; retrying");
                    self.health.failed(status.to_string());
                    let delay = reconnect_delays.next().unwrap_or(Duration::from_secs(30));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue 'connection,
                        _ = shutdown.cancelled() => break 'connection,
                    }
                }
            };
            let settling = tokio::time::sleep(STREAM_SETTLED_AFTER);
            tokio::pin!(settling);
            let mut settled = false;
            loop {
                // Read every message as it arrives and keep its lease from
                // then on, even while it waits for a free slot: unread, it
                // would expire and come back again and again, until Pub/Sub
                // dead-lettered a job that never ran. The window keeps what
                // arrives within the cap.
                let received = tokio::select! {
                    received = stream.next() => received,
                    _ = &mut settling, if !settled => {
                        settled = true;
                        self.health.settled();
                        reconnect_delays = reconnect_backoff();
                        continue;
                    }
                    _ = shutdown.cancelled() => break,
                };
                let Some(received) = received else {
                    break;
                };
                if !settled {
                    // A stream that delivers is healthy: start backing off afresh.
                    settled = true;
                    self.health.settled();
                    reconnect_delays = reconnect_backoff();
                }
                shared.outstanding.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&shared);
                let permits = Arc::clone(&permits);
                tracker.spawn(async move {
                    handle_message(&shared, Arc::new(received), permits).await;
                    shared.outstanding.fetch_sub(1, Ordering::SeqCst);
                    shared.capacity_freed.notify_waiters();
                });
            }
            if shutdown.is_cancelled() {
                // Messages waiting for a slot give up now (a nack), not when
                // the stream has been handed back: a slot freed meanwhile
                // must not start a job the grace period then interrupts.
                shared.stopping.cancel();
                // Hands back whatever the client buffered but we never started.
                dispose_within(stream, DISPOSE_BUDGET).await;
                break 'connection;
            }
            dispose_within(stream, DISPOSE_BUDGET).await;
            let problem = if settled {
                "the stream ended".to_owned()
            } else {
                // The client keeps the failure to itself: ask the service.
                tokio::select! {
                    problem = probe_subscription(&shared.subscription) => problem,
                    _ = shutdown.cancelled() => break 'connection,
                }
            };
            if settled {
                // The service closes streams from time to time: reopen at once.
                tracing::debug!("subscription stream ended; reopening");
            } else {
                warn!(problem = %problem, "the subscription stream failed; reconnecting");
            }
            self.health.failed(problem);
            if !settled {
                let delay = reconnect_delays.next().unwrap_or(Duration::from_secs(30));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }

        let grace_ends =
            signalled.get().copied().unwrap_or_else(tokio::time::Instant::now) + shared.options.shutdown_grace;
        info!(
            grace_seconds = shared.options.shutdown_grace.as_secs(),
            running = tracker.len(),
            "shutting down: no new messages; waiting for running jobs"
        );
        shared.stopping.cancel();
        tracker.close();
        if tokio::time::timeout_at(grace_ends, tracker.wait()).await.is_err() {
            warn!(running = tracker.len(), "grace period over: interrupting running jobs");
            shared.interrupting.cancel();
            // Interrupted handlers only nack and release.
            if tokio::time::timeout(INTERRUPTED_HANDLERS_BUDGET, tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    running = tracker.len(),
                    "handlers did not nack and release in time; their leases and ack deadlines will expire instead"
                );
            }
        }
        info!("worker stopped");
        Ok(())
    }
}

/// Of the shutdown, the time the stream gets to nack what the client
/// buffered; within the grace period.
const DISPOSE_BUDGET: Duration = Duration::from_secs(1);

/// Disposes of a stream (nacking what it buffered), giving up after `budget`:
/// anything not nacked then comes back when its deadline expires.
async fn dispose_within(stream: google_cloud_pubsub::subscription::MessageStream, budget: Duration) {
    if tokio::time::timeout(budget, stream.dispose()).await.is_err() {
        warn!("handing back the buffered messages took too long; they come back when their deadlines expire");
    }
}

/// Why a stream failed, as far as a plain call on the subscription tells.
async fn probe_subscription(subscription: &Subscription) -> String {
    let no_retry = RetrySetting {
        from_millis: 100,
        max_delay: Some(Duration::from_secs(1)),
        factor: 1,
        take: 0,
        codes: Vec::new(),
    };
    match tokio::time::timeout(Duration::from_secs(5), subscription.config(Some(no_retry))).await {
        Ok(Ok(_)) => "the stream ended before it settled".to_owned(),
        Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
        Err(_) => "the service did not answer within 5 s".to_owned(),
    }
}

/// Sets `keshless_ops_last_success_timestamp_seconds` from the ledger, so the
/// gauge survives restarts and deploys instead of starting empty. A ledger
/// that cannot be read leaves the gauge empty (the worker still serves: the
/// claim of the first message will retry the ledger anyway).
async fn load_last_successes(shared: &Shared) {
    match shared.ledger.last_successes().await {
        Ok(successes) => {
            for (job, finished_at) in &successes {
                shared
                    .metrics
                    .last_success_timestamp_seconds
                    .with_label_values(&[job.as_str()])
                    .set(finished_at.timestamp());
            }
            tracing::debug!(jobs = successes.len(), "last successes loaded from the ledger");
        }
        Err(error) => warn!(
            error = %error_chain(&error),
            "cannot read the last successes from the ledger; keshless_ops_last_success_timestamp_seconds starts empty"
        ),
    }
}

/// Delays between attempts to reopen the subscription stream.
fn reconnect_backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Everything the decision loop learned along the way.
struct Progress {
    situation: Situation,
    request: Option<JobRequest>,
    invalid: Option<String>,
    attempt: u32,
    /// The key is ours in the ledger (claimed and not yet finished).
    owns_key: bool,
    /// Ledger owner of this handling: the worker's name plus a per-message
    /// suffix, so two handlers in one process can never renew or finish each
    /// other's claims.
    owner: String,
    failure: Option<String>,
}

async fn handle_message(shared: &Arc<Shared>, received: Arc<ReceivedMessage>, permits: Arc<Semaphore>) {
    let incoming = pubsub::incoming(&received);
    let span = tracing::info_span!(
        "message",
        message.id = %incoming.message_id,
        delivery.attempt = incoming.delivery_attempt,
        job.name = tracing::field::Empty,
        job.key = tracing::field::Empty,
    );
    async move {
        // Keep the message leased from the start: waits for a slot, holds and
        // queued runs must not let it expire and be redelivered.
        let _keeper = AbortOnDropHandle::new(tokio::spawn(keep_deadline(
            Arc::clone(&received),
            shared.options.ack_deadline,
            shared.options.ack_extension_interval,
        )));
        // At most `concurrency` messages are handled at once. A shutdown
        // while waiting goes on without a slot: the decision is then a nack.
        shared.metrics.waiting.inc();
        let _permit = tokio::select! {
            biased;
            _ = shared.stopping.cancelled() => None,
            permit = permits.acquire_owned() => Some(permit.expect("semaphore is never closed")),
        };
        shared.metrics.waiting.dec();
        shared.metrics.in_flight.inc();
        let authentication = message::authenticate(&incoming.attributes, &shared.job_secret);
        let mut progress = Progress {
            situation: Situation {
                authentication,
                message_valid: true,
                ledger: None,
                outcome: None,
                delivery_attempt: incoming.delivery_attempt,
                max_delivery_attempts: shared.max_delivery_attempts,
                shutting_down: shared.stopping.is_cancelled(),
            },
            request: None,
            invalid: None,
            attempt: 0,
            owns_key: false,
            owner: format!(
                "{}/{}",
                shared.options.owner,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            failure: None,
        };
        if authentication == Authentication::Valid {
            match message::parse(&incoming, &shared.registry, shared.options.time_zone) {
                Ok(request) => {
                    let span = tracing::Span::current();
                    span.record("job.name", request.job);
                    span.record("job.key", request.idempotency_key.as_str());
                    progress.request = Some(request);
                }
                Err(problem) => {
                    progress.situation.message_valid = false;
                    progress.invalid = Some(problem.to_string());
                }
            }
        }
        loop {
            progress.situation.shutting_down = shared.stopping.is_cancelled();
            let action = decide(&progress.situation);
            match action {
                Action::Claim => claim(shared, &mut progress).await,
                Action::Run => run(shared, &mut progress).await,
                Action::Hold => {
                    tokio::select! {
                        _ = tokio::time::sleep(shared.options.hold_recheck_interval) => {}
                        _ = shared.stopping.cancelled() => {}
                    }
                    progress.situation.ledger = None;
                }
                Action::Ack(reason) => {
                    acknowledge(shared, &received, &incoming, reason).await;
                    break;
                }
                Action::Nack(reason) => {
                    negative_acknowledge(shared, &received, &progress, reason).await;
                    break;
                }
                Action::DeadLetter(kind) => {
                    dead_letter(shared, &received, &incoming, &progress, kind).await;
                    break;
                }
            }
        }
        shared.metrics.in_flight.dec();
    }
    .instrument(span)
    .await
}

/// Extends the message's ack deadline until aborted.
async fn keep_deadline(received: Arc<ReceivedMessage>, deadline: Duration, interval: Duration) {
    let seconds = deadline.as_secs().clamp(10, 600) as i32;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await; // the first tick is immediate; the stream just set the deadline
    loop {
        ticker.tick().await;
        if let Err(status) = received.modify_ack_deadline(seconds).await {
            warn!(error = %status, "could not extend the ack deadline");
        }
    }
}

async fn claim(shared: &Arc<Shared>, progress: &mut Progress) {
    let request = progress.request.as_ref().expect("claim only follows a valid message");
    let dead_lettered = if request.source == Source::Replay {
        DeadLetteredKeys::Retake
    } else {
        DeadLetteredKeys::Respect
    };
    let claimed = shared
        .ledger
        .claim(&ClaimRequest {
            idempotency_key: &request.idempotency_key,
            job: request.job,
            owner: &progress.owner,
            lease: shared.options.lease,
            message_id: Some(&request.message_id),
            source: request.source.as_str(),
            dead_lettered,
        })
        .await;
    progress.situation.ledger = Some(match claimed {
        Ok(Claim::Claimed { attempt }) => {
            progress.attempt = attempt;
            progress.owns_key = true;
            LedgerState::Claimed
        }
        Ok(Claim::AlreadySucceeded { .. }) => LedgerState::AlreadySucceeded,
        Ok(Claim::AlreadyDeadLettered { .. }) => LedgerState::AlreadyDeadLettered,
        Ok(Claim::HeldBy { owner, until }) => {
            tracing::debug!(%owner, %until, "key held by another worker; holding the message");
            LedgerState::HeldByAnother
        }
        Ok(Claim::KeyConflict { existing_job }) => {
            progress.failure = Some(format!(
                "idempotency key {:?} was already used for job {existing_job:?}, not {:?}",
                request.idempotency_key, request.job
            ));
            LedgerState::KeyConflict
        }
        Err(error) => {
            warn!(error = %error_chain(&error), "ledger unavailable");
            progress.failure = Some(error_chain(&error));
            LedgerState::Unavailable
        }
    });
}

async fn run(shared: &Arc<Shared>, progress: &mut Progress) {
    let request = progress.request.as_ref().expect("run only follows a claim");
    let job = shared
        .registry
        .get(request.job)
        .expect("parse only accepts registered jobs")
        .clone();
    let cancel = shared.interrupting.child_token();
    let context = RunContext {
        job: request.job,
        idempotency_key: request.idempotency_key.clone(),
        message_id: Some(request.message_id.clone()),
        source: request.source.as_str().to_owned(),
        requested_by: request.requested_by.clone(),
        attempt: progress.attempt,
        cancel: cancel.clone(),
    };
    // Renew the lease while the job runs; losing it means another worker
    // may take over, so this run must stop.
    let _renewer = AbortOnDropHandle::new(tokio::spawn({
        let (ledger, key, owner) = (
            shared.ledger.clone(),
            request.idempotency_key.clone(),
            progress.owner.clone(),
        );
        let (lease, interval, lost) = (
            shared.options.lease,
            shared.options.lease_renewal_interval,
            cancel.clone(),
        );
        async move { ledger.hold_lease(&key, &owner, lease, interval, lost).await }
    }));
    info!(
        attempt = progress.attempt,
        source = request.source.as_str(),
        "job started"
    );
    let started = Instant::now();
    let result = run_with_retries(shared, job.as_ref(), &context, &request.params, &cancel).await;
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64();
    // The fields of these three lines are JOB_OUTCOME_FIELDS: alerts read them.
    let (outcome, label) = match result {
        Some(Ok(outcome)) => {
            let recorded = record_success(shared, &request.idempotency_key, &progress.owner, &outcome).await;
            progress.owns_key = !recorded;
            info!(
                job = request.job,
                database = run_database(&request.params, Some(&outcome)),
                outcome = run_outcome::SUCCEEDED,
                duration_seconds = seconds,
                bytes = outcome.size_bytes(),
                summary = %outcome.summary,
                "{JOB_SUCCEEDED}"
            );
            // The ledger's finish time, so a restarted worker (which loads
            // it from the ledger) reports the same value.
            let finished_at = match recorded {
                true => shared.ledger.find(&request.idempotency_key).await.ok().flatten(),
                false => None,
            }
            .and_then(|run| run.finished_at)
            .unwrap_or_else(|| shared.options.clock.now());
            shared
                .metrics
                .last_success_timestamp_seconds
                .with_label_values(&[request.job])
                .set(finished_at.timestamp());
            (HandlerOutcome::Succeeded { recorded }, run_outcome::SUCCEEDED)
        }
        Some(Err(error)) => {
            let (handler_outcome, label) = if error.is_transient() {
                (HandlerOutcome::TransientFailure, run_outcome::TRANSIENT)
            } else {
                (HandlerOutcome::PermanentFailure, run_outcome::PERMANENT)
            };
            warn!(
                job = request.job,
                database = run_database(&request.params, None),
                outcome = label,
                duration_seconds = seconds,
                bytes = 0u64,
                error = %error,
                "{JOB_FAILED}"
            );
            progress.failure = Some(error.to_string());
            (handler_outcome, label)
        }
        None => {
            warn!(
                job = request.job,
                database = run_database(&request.params, None),
                outcome = run_outcome::INTERRUPTED,
                duration_seconds = seconds,
                bytes = 0u64,
                "{JOB_INTERRUPTED}"
            );
            progress.failure = Some("interrupted before it finished".to_owned());
            (HandlerOutcome::Interrupted, run_outcome::INTERRUPTED)
        }
    };
    shared.metrics.jobs.with_label_values(&[request.job, label]).inc();
    shared
        .metrics
        .job_duration_seconds
        .with_label_values(&[request.job, label])
        .observe(elapsed.as_secs_f64());
    progress.situation.outcome = Some(outcome);
}

/// Runs the job, retrying transient errors with jittered exponential
/// backoff. `None` when interrupted (shutdown grace over, or lease lost).
async fn run_with_retries(
    shared: &Arc<Shared>,
    job: &dyn crate::runtime::job::RegisteredJob,
    context: &RunContext,
    params: &serde_json::Value,
    cancel: &CancellationToken,
) -> Option<Result<Outcome, JobError>> {
    let policy = shared.options.retry;
    let attempt = || async { job.run(context, params.clone()).await };
    let retried = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(policy.min_delay)
                .with_max_delay(policy.max_delay)
                .with_max_times(policy.max_retries)
                .with_jitter(),
        )
        .when(|error: &JobError| error.is_transient() && !cancel.is_cancelled())
        .notify(|error: &JobError, delay: Duration| {
            warn!(error = %error, retry_in_seconds = delay.as_secs_f64(), "transient failure; retrying in-process");
        });
    match tokio::select! {
        result = retried => Some(result),
        _ = cancel.cancelled() => None,
    } {
        // A job that noticed the interruption first fails with it: still an
        // interruption (nacked and released), not a failure of the job.
        Some(Err(_)) if cancel.is_cancelled() => None,
        result => result,
    }
}

/// Writes success to the ledger.
async fn record_success(shared: &Arc<Shared>, key: &str, owner: &str, outcome: &Outcome) -> bool {
    // The work is done; only the record is missing. Keep trying for minutes
    // (the message and the lease stay held meanwhile): giving up means a
    // redelivery runs the whole job again.
    let write = || async { shared.ledger.succeed(key, owner, outcome).await };
    let retried = write
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(15))
                .with_max_times(12),
        )
        .when(|_| !shared.interrupting.is_cancelled());
    match retried.await {
        Ok(true) => true,
        Ok(false) => {
            warn!("job succeeded but this worker no longer owns the key");
            false
        }
        Err(error) => {
            warn!(error = %error_chain(&error), "job succeeded but the ledger could not record it");
            false
        }
    }
}

async fn acknowledge(
    shared: &Arc<Shared>,
    received: &ReceivedMessage,
    incoming: &message::IncomingMessage,
    reason: AckReason,
) {
    let label = match reason {
        AckReason::Succeeded => "ack_succeeded",
        AckReason::Duplicate => "ack_duplicate",
        AckReason::AlreadyDeadLettered => "ack_already_dead_lettered",
        AckReason::Forged => "ack_forged",
    };
    if reason == AckReason::Forged {
        // Never the presented secret: only that it was wrong or missing.
        let presented = incoming.attributes.contains_key(message::SECRET_ATTRIBUTE);
        warn!(
            source = incoming
                .attributes
                .get("source")
                .map(String::as_str)
                .unwrap_or("(none)"),
            secret_present = presented,
            "rejected a message with a missing or wrong x-job-secret"
        );
        shared.metrics.rejected_forged.inc();
    } else if reason == AckReason::Duplicate {
        info!("duplicate: the key already succeeded");
    } else if reason == AckReason::AlreadyDeadLettered {
        warn!(
            "not run: this idempotency key was dead-lettered before; fix the cause, then \
             `keshless-ops dlq replay --key <key>` (or publish with a new key)"
        );
    }
    if let Err(status) = received.ack().await {
        warn!(error = %status, "ack failed; the message will be redelivered and found done");
    }
    shared.metrics.messages.with_label_values(&[label]).inc();
}

async fn negative_acknowledge(
    shared: &Arc<Shared>,
    received: &ReceivedMessage,
    progress: &Progress,
    reason: NackReason,
) {
    if progress.owns_key {
        let request = progress.request.as_ref().expect("owning a key implies a request");
        let key = &request.idempotency_key;
        let owner = &progress.owner;
        let written = match reason {
            NackReason::TransientFailure => {
                let error = progress.failure.as_deref().unwrap_or("transient failure");
                shared.ledger.fail(key, owner, error).await
            }
            NackReason::Interrupted | NackReason::ShuttingDown => shared.ledger.release(key, owner).await,
            NackReason::LedgerUnavailable | NackReason::SuccessNotRecorded => Ok(true),
        };
        if let Err(error) = written {
            warn!(error = %error_chain(&error), "could not update the ledger; the lease will expire instead");
        }
    }
    let label = match reason {
        NackReason::TransientFailure => "nack_transient",
        NackReason::LedgerUnavailable => "nack_ledger_unavailable",
        NackReason::SuccessNotRecorded => "nack_success_not_recorded",
        NackReason::ShuttingDown => "nack_shutting_down",
        NackReason::Interrupted => "nack_interrupted",
    };
    info!(reason = label, "nacking the message for redelivery");
    if let Err(status) = received.nack().await {
        warn!(error = %status, "nack failed; the message will be redelivered when its deadline expires");
    }
    shared.metrics.messages.with_label_values(&[label]).inc();
}

/// The attributes a dead-lettered copy carries: the original ones without
/// the secret (replay adds it back), the resolved job and key (so a replay
/// runs the same key even in a later schedule period), and why.
fn dead_letter_attributes(
    incoming: &message::IncomingMessage,
    progress: &Progress,
    kind: DeadLetterKind,
    owner: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> HashMap<String, String> {
    let mut attributes = incoming.attributes.clone();
    attributes.remove(message::SECRET_ATTRIBUTE);
    let error = progress
        .invalid
        .as_deref()
        .or(progress.failure.as_deref())
        .unwrap_or("unknown error");
    attributes.insert(
        "error".into(),
        message::truncated(error.to_owned(), MAX_ATTRIBUTE_BYTES),
    );
    attributes.insert("error_kind".into(), kind.as_str().into());
    attributes
        .entry("original_message_id".into())
        .or_insert_with(|| incoming.message_id.clone());
    // With the message id, what a replay needs to give the message the key
    // it would have had (scheduler keys depend on the publish time).
    attributes
        .entry("original_publish_time".into())
        .or_insert_with(|| incoming.publish_time.to_rfc3339());
    if let Some(attempt) = incoming.delivery_attempt {
        attributes.insert("delivery_attempt".into(), attempt.to_string());
    }
    attributes.insert("dead_lettered_at".into(), now.to_rfc3339());
    attributes.insert(
        "dead_lettered_by".into(),
        message::truncated(owner.to_owned(), MAX_ATTRIBUTE_BYTES),
    );
    if let Some(request) = &progress.request {
        attributes.insert("job".into(), request.job.into());
        attributes.insert(
            "idempotency_key".into(),
            message::truncated(request.idempotency_key.clone(), MAX_ATTRIBUTE_BYTES),
        );
    }
    attributes
}

async fn dead_letter(
    shared: &Arc<Shared>,
    received: &ReceivedMessage,
    incoming: &message::IncomingMessage,
    progress: &Progress,
    kind: DeadLetterKind,
) {
    let attributes = dead_letter_attributes(
        incoming,
        progress,
        kind,
        &shared.options.owner,
        shared.options.clock.now(),
    );
    warn!(error_kind = kind.as_str(), error = %attributes["error"], "dead-lettering the message");
    match pubsub::publish(&shared.dead_letters, incoming.data.clone(), attributes).await {
        Ok(dead_letter_id) => {
            if progress.owns_key {
                let request = progress.request.as_ref().expect("owning a key implies a request");
                let reason = progress.failure.as_deref().unwrap_or(kind.as_str());
                if let Err(error) = shared
                    .ledger
                    .dead_letter(&request.idempotency_key, &progress.owner, reason)
                    .await
                {
                    warn!(error = %error_chain(&error), "could not mark the key dead-lettered in the ledger");
                }
            }
            if let Err(status) = received.ack().await {
                warn!(error = %status, "ack after dead-lettering failed; a redelivery will find the key dead-lettered");
            }
            info!(%dead_letter_id, "message dead-lettered");
            let label = format!("dead_letter_{}", kind.as_str());
            shared.metrics.messages.with_label_values(&[&label]).inc();
        }
        Err(status) => {
            // Nothing may be lost: keep the message in the subscription.
            warn!(error = %status, "could not publish to the dead-letter topic; nacking instead");
            negative_acknowledge(shared, received, progress, NackReason::TransientFailure).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_tolerates_short_stream_failures_only() {
        let now = Instant::now();
        let threshold = Duration::from_secs(60);
        let health = |connected_once, failing_for: Option<u64>| StreamHealth {
            connected_once,
            failing_since: failing_for.map(|seconds| now - Duration::from_secs(seconds)),
            last_problem: failing_for.map(|_| "Unavailable: connection refused".to_owned()),
        };
        // (why, health, ready, the note or reason contains)
        let cases = [
            (
                "before the first stream",
                health(false, None),
                false,
                "has not opened yet",
            ),
            (
                "the first stream fails",
                health(false, Some(1)),
                false,
                "cannot be opened: Unavailable",
            ),
            ("serving", health(true, None), true, "up"),
            (
                "a reopen in progress",
                health(true, Some(5)),
                true,
                "reconnecting for 5 s",
            ),
            (
                "at the threshold",
                health(true, Some(60)),
                true,
                "reconnecting for 60 s",
            ),
            (
                "past it",
                health(true, Some(61)),
                false,
                "failing for 61 s (more than 60 s): Unavailable: connection refused",
            ),
        ];
        for (why, health, ready, text) in cases {
            let readiness = stream_readiness(&health, now, threshold);
            assert_eq!(readiness.is_ok(), ready, "{why}: {readiness:?}");
            let (Ok(note) | Err(note)) = readiness;
            assert!(note.contains(text), "{why}: {note}");
        }
    }

    #[test]
    fn the_logged_database_and_bytes_come_from_the_outcome_then_the_params() {
        let params = serde_json::json!({"database": "from-params", "monthly": "auto"});
        let reported = Outcome::new("done").with_details(serde_json::json!({"database": "resolved", "size_bytes": 42}));
        let silent = Outcome::new("done").with_details(serde_json::json!({"rows": 7}));
        // (why, params, outcome, expected database, expected bytes)
        let cases = [
            (
                "the outcome names the database it backed up",
                &params,
                Some(&reported),
                Some("resolved"),
                42,
            ),
            (
                "else the normalised params",
                &params,
                Some(&silent),
                Some("from-params"),
                0,
            ),
            ("a failure has only the params", &params, None, Some("from-params"), 0),
            (
                "jobs without a database log none",
                &serde_json::Value::Null,
                Some(&silent),
                None,
                0,
            ),
        ];
        for (why, params, outcome, database, bytes) in cases {
            assert_eq!(run_database(params, outcome), database, "{why}");
            assert_eq!(outcome.map_or(0, Outcome::size_bytes), bytes, "{why}");
        }
    }
}
