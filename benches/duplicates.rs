//! Duplicate-message throughput of the worker against the emulator and a
//! real PostgreSQL ledger (every message is claimed, found done, and acked),
//! and the latency of the pure decision function. Prints figures.
//! Run with `scripts/bench duplicates`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::pubsub::{PubSubStack, StackOptions, DEAD_LETTER_TOPIC, JOBS_SUBSCRIPTION, PROJECT};
use keshless_ops::config::DatabaseUrl;
use keshless_ops::runtime::delivery::{decide, HandlerOutcome, LedgerState, Situation};
use keshless_ops::runtime::job::{Job, JobError, Outcome, Registry, RunContext};
use keshless_ops::runtime::ledger::{ClaimRequest, DeadLetteredKeys, Ledger};
use keshless_ops::runtime::message::Authentication;
use keshless_ops::runtime::metrics::Metrics;
use keshless_ops::runtime::pubsub;
use keshless_ops::runtime::worker::{Worker, WorkerOptions};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret";

struct NeverRuns;

#[async_trait]
impl Job for NeverRuns {
    const NAME: &'static str = "bench";
    type Params = serde_json::Map<String, serde_json::Value>;
    async fn run(&self, _: &RunContext, _: Self::Params) -> Result<Outcome, JobError> {
        panic!("a duplicate must never run");
    }
}

fn decision_latency() {
    let situations = [
        (Authentication::Invalid, true, None, None),
        (Authentication::Valid, true, Some(LedgerState::AlreadySucceeded), None),
        (
            Authentication::Valid,
            true,
            Some(LedgerState::Claimed),
            Some(HandlerOutcome::TransientFailure),
        ),
    ]
    .map(|(authentication, message_valid, ledger, outcome)| Situation {
        authentication,
        message_valid,
        ledger,
        outcome,
        delivery_attempt: Some(3),
        max_delivery_attempts: Some(5),
        shutting_down: false,
    });
    let rounds = 3_000_000;
    let started = Instant::now();
    for round in 0..rounds {
        std::hint::black_box(decide(std::hint::black_box(&situations[round % situations.len()])));
    }
    println!(
        "decision: {:.1} ns per decide() over {rounds} calls",
        started.elapsed().as_nanos() as f64 / rounds as f64
    );
}

async fn duplicate_throughput(concurrency: usize, messages: usize) {
    let stack = PubSubStack::start(StackOptions::default()).await;
    let database = common::TestDatabase::create().await;
    let url: DatabaseUrl = database.url.parse().unwrap();
    let ledger = Ledger::connect(&url).await.unwrap();
    // The key is already done, as after the first of many deliveries.
    ledger
        .claim(&ClaimRequest {
            idempotency_key: "bench-key",
            job: "bench",
            owner: "setup",
            lease: Duration::from_secs(60),
            message_id: None,
            source: "cli",
            dead_lettered: DeadLetteredKeys::Respect,
        })
        .await
        .unwrap();
    ledger
        .succeed("bench-key", "setup", &Outcome::new("done"))
        .await
        .unwrap();

    for _ in 0..messages {
        stack
            .publish(
                r#"{"job": "bench", "idempotency_key": "bench-key"}"#,
                &[("x-job-secret", SECRET)],
            )
            .await;
    }
    let client = pubsub::connect(Some(PROJECT), Some(&stack.host())).await.unwrap();
    let metrics = Metrics::new();
    let worker = Worker::new(
        &client,
        ledger,
        Registry::new().with(NeverRuns),
        SecretString::from(SECRET),
        WorkerOptions {
            concurrency,
            ..WorkerOptions::new(JOBS_SUBSCRIPTION, DEAD_LETTER_TOPIC)
        },
        metrics.clone(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let duplicates = || metrics.messages.with_label_values(&["ack_duplicate"]).get() as usize;
    while duplicates() < messages {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "stalled at {}",
            duplicates()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await.unwrap().unwrap();
    println!(
        "duplicates: concurrency {concurrency}: {messages} duplicate messages acked in {:.2} s = {:.0} msg/s, \
         {:.2} ms per message end to end (claim + ack)",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / messages as f64 * concurrency as f64
    );
}

fn main() {
    decision_latency();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        duplicate_throughput(1, 2000).await;
        duplicate_throughput(4, 2000).await;
    });
}
