//! The worker end to end: real PostgreSQL ledger, our Pub/Sub emulator over
//! gRPC through the real client, and small probe jobs that record what ran.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::pubsub::{eventually, PubSubStack, StackOptions, DEAD_LETTER_TOPIC, JOBS_SUBSCRIPTION, PROJECT};
use common::TestDatabase;
use keshless_ops::config::DatabaseUrl;
use keshless_ops::runtime::dead_letters::{self, ReplaySelection};
use keshless_ops::runtime::job::{Job, JobError, Outcome, Registry, RunContext};
use keshless_ops::runtime::ledger::{Ledger, RunStatus};
use keshless_ops::runtime::metrics::Metrics;
use keshless_ops::runtime::pubsub;
use keshless_ops::runtime::worker::{RetryPolicy, Worker, WorkerOptions};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-job-secret-5b7e";

// ---- probe jobs ----

/// What the probe jobs saw; shared between the test and every worker.
#[derive(Clone, Default)]
struct Probe {
    /// Keys whose run completed successfully, in order.
    completed: Arc<Mutex<Vec<String>>>,
    /// Runs started (including failed and interrupted ones).
    started: Arc<AtomicUsize>,
    /// While set, `fail: "while_broken"` runs fail transiently.
    broken: Arc<AtomicBool>,
}

impl Probe {
    fn completed(&self) -> Vec<String> {
        self.completed.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FailMode {
    #[default]
    Never,
    Permanent,
    WhileBroken,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ProbeParams {
    sleep_ms: u64,
    fail: FailMode,
    /// Reported back as the outcome's `database` and `size_bytes` details.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    size_bytes: u64,
}

async fn run_probe(probe: &Probe, context: &RunContext, params: ProbeParams) -> Result<Outcome, JobError> {
    probe.started.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(params.sleep_ms)).await;
    match params.fail {
        FailMode::Permanent => {
            return Err(JobError::permanent(anyhow::anyhow!(
                "pg_dump: permission denied for table users"
            )))
        }
        FailMode::WhileBroken if probe.broken.load(Ordering::SeqCst) => {
            return Err(JobError::transient(anyhow::anyhow!("storage answered 503")))
        }
        _ => {}
    }
    probe.completed.lock().unwrap().push(context.idempotency_key.clone());
    Ok(Outcome::new(format!("probe ran for {} ms", params.sleep_ms))
        .with_details(serde_json::json!({"database": params.database, "size_bytes": params.size_bytes})))
}

struct ProbeJob(Probe);

#[async_trait]
impl Job for ProbeJob {
    const NAME: &'static str = "probe";
    type Params = ProbeParams;
    async fn run(&self, context: &RunContext, params: ProbeParams) -> Result<Outcome, JobError> {
        run_probe(&self.0, context, params).await
    }
}

/// A probe registered under a scheduled job's name, so scheduler keys apply.
struct ScheduledProbeJob(Probe);

#[async_trait]
impl Job for ScheduledProbeJob {
    const NAME: &'static str = "postgres-backup";
    type Params = ProbeParams;
    async fn run(&self, context: &RunContext, params: ProbeParams) -> Result<Outcome, JobError> {
        run_probe(&self.0, context, params).await
    }
}

// ---- harness ----

struct Harness {
    stack: PubSubStack,
    database: TestDatabase,
    ledger: Ledger,
    probe: Probe,
}

struct RunningWorker {
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
    metrics: Metrics,
}

impl RunningWorker {
    fn count(&self, action: &str) -> u64 {
        self.metrics.messages.with_label_values(&[action]).get()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops")
            .expect("worker task");
    }
}

impl Harness {
    async fn start(options: StackOptions) -> Harness {
        common::init_test_logs();
        let stack = PubSubStack::start(options).await;
        let database = TestDatabase::create().await;
        let url: DatabaseUrl = database.url.parse().unwrap();
        let ledger = Ledger::connect(&url).await.expect("ledger");
        Harness {
            stack,
            database,
            ledger,
            probe: Probe::default(),
        }
    }

    fn registry(&self) -> Registry {
        Registry::new()
            .with(ProbeJob(self.probe.clone()))
            .with(ScheduledProbeJob(self.probe.clone()))
    }

    fn options(&self, owner: &str) -> WorkerOptions {
        WorkerOptions {
            owner: owner.to_owned(),
            ack_deadline: Duration::from_secs(10),
            ack_extension_interval: Duration::from_secs(2),
            lease: Duration::from_secs(3),
            lease_renewal_interval: Duration::from_secs(1),
            hold_recheck_interval: Duration::from_millis(200),
            retry: RetryPolicy {
                min_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(50),
                max_retries: 1,
            },
            shutdown_grace: Duration::from_secs(2),
            ..WorkerOptions::new(JOBS_SUBSCRIPTION, DEAD_LETTER_TOPIC)
        }
    }

    async fn start_worker_with(&self, options: WorkerOptions) -> RunningWorker {
        self.start_worker_serving(self.registry(), options).await
    }

    /// A worker on this harness's emulator and ledger, not yet running.
    async fn worker(&self, registry: Registry, options: WorkerOptions) -> (Worker, Metrics) {
        let client = pubsub::connect(Some(PROJECT), Some(&self.stack.host()))
            .await
            .expect("client");
        let metrics = Metrics::new();
        let worker = Worker::new(
            &client,
            self.ledger.clone(),
            registry,
            SecretString::from(SECRET),
            options,
            metrics.clone(),
        )
        .await
        .expect("worker");
        (worker, metrics)
    }

    async fn start_worker_serving(&self, registry: Registry, options: WorkerOptions) -> RunningWorker {
        let (worker, metrics) = self.worker(registry, options).await;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move { worker.run(token).await.expect("worker run") });
        RunningWorker {
            shutdown,
            handle,
            metrics,
        }
    }

    async fn start_worker(&self, owner: &str) -> RunningWorker {
        self.start_worker_with(self.options(owner)).await
    }

    async fn publish(&self, data: &str, extra: &[(&str, &str)]) -> String {
        let mut attributes = vec![("x-job-secret", SECRET)];
        attributes.extend_from_slice(extra);
        self.stack.publish(data, &attributes).await
    }

    async fn status(&self, key: &str) -> Option<RunStatus> {
        self.ledger.find(key).await.expect("ledger").map(|run| run.status)
    }
}

// ---- acceptance ----

#[tokio::test]
async fn a_scheduled_message_runs_once_and_its_duplicate_is_acked() {
    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-a").await;
    let scheduled = [("source", "cloud-scheduler"), ("job", "postgres-backup")];
    // Cloud Scheduler firing twice for the same day (a retry, a double fire).
    harness.publish("", &scheduled).await;
    harness.publish("", &scheduled).await;
    eventually(Duration::from_secs(20), "both messages acked", || async {
        worker.count("ack_succeeded") + worker.count("ack_duplicate") == 2
    })
    .await;
    assert_eq!(worker.count("ack_succeeded"), 1);
    assert_eq!(worker.count("ack_duplicate"), 1);
    let key = format!("postgres-backup:{}", chrono::Utc::now().format("%Y-%m-%d"));
    assert_eq!(harness.probe.completed(), std::slice::from_ref(&key));
    let run = harness.ledger.find(&key).await.unwrap().expect("ledger row");
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.attempts, 1);
    assert_eq!(run.source.as_deref(), Some("cloud-scheduler"));
    // Nothing is left to redeliver.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(PubSubStack::peek(&harness.stack.subscription).await.is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn two_databases_scheduled_in_one_period_are_backed_up_once_each() {
    let harness = Harness::start(StackOptions::default()).await;
    let (ledger_db, payments_db) = (TestDatabase::create().await, TestDatabase::create().await);
    for database in [&ledger_db, &payments_db] {
        database
            .connect()
            .await
            .batch_execute(
                "CREATE TABLE entries (id int PRIMARY KEY); INSERT INTO entries SELECT generate_series(1, 10)",
            )
            .await
            .unwrap();
    }
    let (store, _directory) = common::file_store().await;
    let registry = Registry::new().with(keshless_ops::jobs::PostgresBackup {
        backups: store.clone(),
        database_url: ledger_db.url.parse().unwrap(),
        databases: vec![ledger_db.name.clone(), payments_db.name.clone()],
        pg_dump: keshless_ops::postgres::process::pg_dump_program(),
        encoding: Default::default(),
        clock: Default::default(),
    });
    let worker = harness
        .start_worker_serving(registry, harness.options("worker-databases"))
        .await;
    // One Cloud Scheduler job per database (infra/scheduler.tf), each fired
    // twice in the same day.
    let scheduled = [("source", "cloud-scheduler"), ("job", "postgres-backup")];
    for _ in 0..2 {
        for database in [&ledger_db, &payments_db] {
            harness
                .publish(
                    &format!(r#"{{"params":{{"database":"{}"}}}}"#, database.name),
                    &scheduled,
                )
                .await;
        }
    }
    eventually(Duration::from_secs(60), "all four messages acked", || async {
        worker.count("ack_succeeded") + worker.count("ack_duplicate") == 4
    })
    .await;
    assert_eq!(worker.count("ack_succeeded"), 2, "one run per database");
    assert_eq!(worker.count("ack_duplicate"), 2, "the repeated fires ran nothing");
    let today = chrono::Utc::now().format("%Y-%m-%d");
    for database in [&ledger_db, &payments_db] {
        let key = format!("postgres-backup:{}:{today}", database.name);
        assert_eq!(harness.status(&key).await, Some(RunStatus::Succeeded), "{key}");
    }
    let mut backed_up: Vec<String> =
        keshless_ops::postgres::layout::list(store.as_ref(), Some(keshless_ops::postgres::layout::Class::Daily))
            .await
            .unwrap()
            .into_iter()
            .filter(|listed| listed.is_complete())
            .map(|listed| listed.manifest.unwrap().database)
            .collect();
    backed_up.sort();
    let mut expected = vec![ledger_db.name.clone(), payments_db.name.clone()];
    expected.sort();
    assert_eq!(backed_up, expected, "exactly one complete backup of each database");
    // `backups list --database` shows that database's backups only (the
    // first backup of a month is also kept as the month's).
    let location = keshless_ops::storage::BlobStore::location(store.as_ref()).to_string();
    let listed = common::keshless_ops(
        &["backups", "list", "postgres", "--database", &payments_db.name, "--json"],
        &[("BACKUP_STORE", location.as_str())],
    );
    assert!(listed.status.success(), "{}", common::text(&listed.stderr));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(!listed.is_empty());
    assert!(
        listed
            .iter()
            .all(|backup| backup["manifest"]["database"] == payments_db.name.as_str()),
        "{listed:?}"
    );
    // A database outside DATABASES is refused up front, naming the accepted ones.
    harness
        .publish(r#"{"params":{"database":"elsewhere"}}"#, &scheduled)
        .await;
    eventually(Duration::from_secs(20), "the stray message dead-lettered", || async {
        worker.count("dead_letter_invalid-message") == 1
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn two_workers_one_key_runs_once_and_the_other_holds_then_acks() {
    let harness = Harness::start(StackOptions::default()).await;
    let first = harness.start_worker("worker-a").await;
    let second = harness.start_worker("worker-b").await;
    let data = r#"{"job": "probe", "params": {"sleep_ms": 1500}, "idempotency_key": "manual-2026-11-26"}"#;
    harness.publish(data, &[]).await;
    harness.publish(data, &[]).await;
    eventually(Duration::from_secs(20), "both messages acked", || async {
        let acks = |worker: &RunningWorker| worker.count("ack_succeeded") + worker.count("ack_duplicate");
        acks(&first) + acks(&second) == 2
    })
    .await;
    assert_eq!(harness.probe.completed(), ["manual-2026-11-26"]);
    assert_eq!(harness.probe.started.load(Ordering::SeqCst), 1);
    assert_eq!(first.count("ack_succeeded") + second.count("ack_succeeded"), 1);
    assert_eq!(first.count("ack_duplicate") + second.count("ack_duplicate"), 1);
    first.stop().await;
    second.stop().await;
}

/// Runs a worker on a runtime of its own, so the test can kill it the way
/// a crash does: every task dropped at once, nothing acked or released.
fn spawn_killable_worker(
    harness: &Harness,
    owner: &str,
) -> (tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let host = harness.stack.host();
    let url: DatabaseUrl = harness.database.url.parse().unwrap();
    let registry = harness.registry();
    let options = harness.options(owner);
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = pubsub::connect(Some(PROJECT), Some(&host)).await.unwrap();
            let ledger = Ledger::connect(&url).await.unwrap();
            let worker = Worker::new(
                &client,
                ledger,
                registry,
                SecretString::from(SECRET),
                options,
                Metrics::new(),
            )
            .await
            .unwrap();
            tokio::select! {
                _ = worker.run(CancellationToken::new()) => {}
                _ = killed => {}
            }
        });
        runtime.shutdown_background();
    });
    (kill, thread)
}

#[tokio::test]
async fn a_killed_worker_is_taken_over_after_its_lease_expires() {
    let harness = Harness::start(StackOptions::default()).await;
    let (kill, thread) = spawn_killable_worker(&harness, "worker-doomed");
    let data = r#"{"job": "probe", "params": {"sleep_ms": 4000}, "idempotency_key": "takeover-key"}"#;
    harness.publish(data, &[]).await;
    eventually(Duration::from_secs(10), "the doomed worker started the job", || async {
        harness.probe.started.load(Ordering::SeqCst) == 1
    })
    .await;
    kill.send(()).unwrap();
    thread.join().unwrap();
    assert_eq!(harness.status("takeover-key").await, Some(RunStatus::Running));

    // The survivor gets the message once its ack deadline expires, holds it
    // while the dead worker's lease is live, then takes the key over.
    let survivor = harness.start_worker("worker-survivor").await;
    eventually(Duration::from_secs(30), "the survivor completed the job", || async {
        survivor.count("ack_succeeded") == 1
    })
    .await;
    assert_eq!(harness.probe.completed(), ["takeover-key"]);
    assert_eq!(harness.probe.started.load(Ordering::SeqCst), 2);
    let run = harness.ledger.find("takeover-key").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.attempts, 2);
    survivor.stop().await;
}

#[tokio::test]
async fn transient_failures_end_in_the_dlq_and_replay_runs_once() {
    let harness = Harness::start(StackOptions {
        max_delivery_attempts: 5,
        ..StackOptions::default()
    })
    .await;
    harness.probe.broken.store(true, Ordering::SeqCst);
    let worker = harness.start_worker("worker-a").await;
    let data = r#"{"job": "probe", "params": {"fail": "while_broken"}, "idempotency_key": "flaky-key"}"#;
    let original_id = harness.publish(data, &[("source", "gcloud")]).await;

    eventually(Duration::from_secs(30), "dead-lettered after 5 deliveries", || async {
        worker.count("dead_letter_retries-exhausted") == 1
    })
    .await;
    assert_eq!(worker.count("nack_transient"), 4);
    // One run per delivery, each retried once in-process.
    assert_eq!(harness.probe.started.load(Ordering::SeqCst), 10);
    assert_eq!(harness.status("flaky-key").await, Some(RunStatus::DeadLettered));

    let letters = dead_letters::list(&harness.stack.dead_letter_subscription, &harness.stack.puller, 100)
        .await
        .expect("list");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    assert_eq!(letter.job.as_deref(), Some("probe"));
    assert_eq!(letter.idempotency_key.as_deref(), Some("flaky-key"));
    assert_eq!(letter.error_kind.as_deref(), Some("retries-exhausted"));
    assert!(
        letter.error.as_deref().unwrap().contains("storage answered 503"),
        "{letter:?}"
    );
    assert_eq!(letter.attempts, Some(5));
    assert_eq!(letter.original_message_id.as_deref(), Some(original_id.as_str()));
    // Listing consumed nothing.
    assert_eq!(
        dead_letters::list(&harness.stack.dead_letter_subscription, &harness.stack.puller, 100)
            .await
            .unwrap()
            .len(),
        1
    );

    // The outage is over: replay brings it back and it succeeds once.
    harness.probe.broken.store(false, Ordering::SeqCst);
    let report = dead_letters::replay(
        &harness.stack.dead_letter_subscription,
        &harness.stack.puller,
        &harness.stack.publisher,
        &SecretString::from(SECRET),
        &ReplaySelection {
            job: Some("probe".into()),
            ..ReplaySelection::default()
        },
    )
    .await
    .expect("replay");
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    eventually(Duration::from_secs(20), "the replay succeeded", || async {
        worker.count("ack_succeeded") == 1
    })
    .await;
    assert_eq!(harness.probe.completed(), ["flaky-key"]);
    let run = harness.ledger.find("flaky-key").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.source.as_deref(), Some("replay"));
    assert!(
        dead_letters::list(&harness.stack.dead_letter_subscription, &harness.stack.puller, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Replaying again (say, an operator's second try) does not run it twice.
    let copy = dead_letters::replay(
        &harness.stack.dead_letter_subscription,
        &harness.stack.puller,
        &harness.stack.publisher,
        &SecretString::from(SECRET),
        &ReplaySelection {
            all: true,
            ..ReplaySelection::default()
        },
    )
    .await
    .unwrap();
    assert!(copy.replayed.is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_on_first_delivery_and_forgeries_dropped() {
    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-a").await;
    // (data, what the dead letter's error must name)
    let cases: &[(&str, &str)] = &[
        ("{not json", "data: "),
        (
            r#"{"job": "postgres-restore"}"#,
            "accepted jobs: `postgres-backup`, `probe`",
        ),
        (r#"{"job": "probe", "params": {"sleep": 1}}"#, "unknown field `sleep`"),
        (
            r#"{"job": "probe", "params": {"fail": "sometimes"}}"#,
            "unknown variant `sometimes`",
        ),
    ];
    for (data, _) in cases {
        harness.publish(data, &[]).await;
    }
    // Forged: wrong secret and no secret at all.
    harness
        .stack
        .publish(r#"{"job": "probe"}"#, &[("x-job-secret", "guessed-secret-9z")])
        .await;
    harness.stack.publish(r#"{"job": "probe"}"#, &[]).await;

    eventually(Duration::from_secs(20), "every message handled", || async {
        worker.count("dead_letter_invalid-message") == 4 && worker.count("ack_forged") == 2
    })
    .await;
    assert_eq!(worker.metrics.rejected_forged.get(), 2);
    assert!(harness.probe.started.load(Ordering::SeqCst) == 0, "nothing may run");

    let letters = dead_letters::list(&harness.stack.dead_letter_subscription, &harness.stack.puller, 100)
        .await
        .unwrap();
    assert_eq!(
        letters.len(),
        4,
        "forged messages must never reach the DLQ: {letters:#?}"
    );
    for (_, expected) in cases {
        assert!(
            letters
                .iter()
                .any(|letter| letter.error.as_deref().is_some_and(|error| error.contains(expected))),
            "no dead letter names {expected:?}: {letters:#?}"
        );
    }
    for letter in &letters {
        assert_eq!(letter.error_kind.as_deref(), Some("invalid-message"));
        assert_eq!(letter.attempts, Some(1), "dead-lettered on the first delivery");
    }
    worker.stop().await;
}

#[tokio::test]
async fn forged_messages_are_logged_without_the_presented_secret() {
    let captured = common::CapturedLogs::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    // #[tokio::test] runs every task on this thread, so the default applies to the worker too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-a").await;
    let forged = "forged-secret-value-31f";
    let id = harness
        .stack
        .publish(r#"{"job": "probe"}"#, &[("x-job-secret", forged), ("source", "gcloud")])
        .await;
    eventually(Duration::from_secs(10), "forged message acked", || async {
        worker.count("ack_forged") == 1
    })
    .await;
    worker.stop().await;
    let logs = captured.text();
    assert!(logs.contains("missing or wrong x-job-secret"), "{logs}");
    assert!(logs.contains(&id), "the warning names the message id: {logs}");
    assert!(!logs.contains(forged), "the presented secret leaked into the logs");
    assert!(!logs.contains(SECRET), "the real secret leaked into the logs");
}

#[tokio::test]
async fn job_outcome_lines_carry_the_alerting_fields_at_the_top_level() {
    use keshless_ops::runtime::worker::{JOB_FAILED, JOB_OUTCOME_FIELDS, JOB_SUCCEEDED};
    use tracing_subscriber::layer::SubscriberExt;

    // The names infra/monitoring.tf filters on, spelled out: a rename in the
    // code must fail here, not silently empty an alert.
    assert_eq!(
        JOB_OUTCOME_FIELDS,
        ["job", "database", "outcome", "duration_seconds", "bytes"]
    );
    assert_eq!((JOB_SUCCEEDED, JOB_FAILED), ("job succeeded", "job failed"));

    let captured = common::CapturedLogs::default();
    let writer = captured.clone();
    // The production JSON layer (LogFormat::Json), writing into `captured`.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(keshless_ops::telemetry::cloud_logging_layer(move || writer.clone()));
    // #[tokio::test] runs every task on this thread, so the default applies to the worker too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-logs").await;
    harness
        .publish(
            r#"{"job": "postgres-backup", "params": {"database": "keshless", "size_bytes": 4096, "sleep_ms": 50},
                "idempotency_key": "logged-success"}"#,
            &[],
        )
        .await;
    harness
        .publish(
            r#"{"job": "probe", "params": {"database": "ledger", "fail": "permanent"}, "idempotency_key": "logged-failure"}"#,
            &[],
        )
        .await;
    harness
        .publish(r#"{"job": "probe", "idempotency_key": "logged-no-database"}"#, &[])
        .await;
    eventually(Duration::from_secs(20), "three runs finished", || async {
        worker.count("ack_succeeded") == 2 && worker.count("dead_letter_permanent") == 1
    })
    .await;
    worker.stop().await;

    let succeeded = captured.lines_with_message(JOB_SUCCEEDED);
    assert_eq!(succeeded.len(), 2, "{succeeded:?}");
    let backup = succeeded
        .iter()
        .find(|line| line["job"] == "postgres-backup")
        .expect("the postgres-backup line");
    assert_eq!(backup["severity"], "INFO");
    assert_eq!(backup["database"], "keshless", "{backup}");
    assert_eq!(backup["outcome"], "succeeded", "{backup}");
    assert_eq!(backup["bytes"], 4096, "{backup}");
    let seconds = backup["duration_seconds"]
        .as_f64()
        .expect("duration_seconds is a number");
    assert!((0.05..30.0).contains(&seconds), "{backup}");
    // Every alerting field is a top-level key of the payload, not only in the span.
    for field in JOB_OUTCOME_FIELDS {
        assert!(
            backup.get(field).is_some(),
            "{field} missing at the top level: {backup}"
        );
    }
    assert_eq!(backup["span"]["job.key"], "logged-success", "{backup}");

    let plain = succeeded
        .iter()
        .find(|line| line["job"] == "probe")
        .expect("the probe line");
    assert!(
        plain.get("database").is_none(),
        "a job without a database logs none: {plain}"
    );
    assert_eq!(plain["bytes"], 0, "{plain}");

    let failed = captured.lines_with_message(JOB_FAILED);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let failure = &failed[0];
    assert_eq!(failure["severity"], "WARNING");
    assert_eq!(failure["job"], "probe");
    assert_eq!(failure["database"], "ledger", "{failure}");
    assert_eq!(failure["outcome"], "permanent", "{failure}");
    assert_eq!(failure["bytes"], 0, "{failure}");
    assert!(failure["duration_seconds"].is_f64(), "{failure}");
    assert!(
        failure["error"].as_str().unwrap().contains("permission denied"),
        "{failure}"
    );
}

#[tokio::test]
async fn a_restarted_worker_reports_the_last_success_from_the_ledger() {
    let harness = Harness::start(StackOptions::default()).await;
    let http = reqwest::Client::new();
    let gauge = |text: &str| {
        text.lines()
            .find(|line| line.starts_with("keshless_ops_last_success_timestamp_seconds{job=\"probe\"}"))
            .map(str::to_owned)
    };

    let first = harness.start_worker("worker-before").await;
    harness
        .publish(r#"{"job": "probe", "idempotency_key": "before-restart"}"#, &[])
        .await;
    eventually(Duration::from_secs(10), "the job ran", || async {
        first.count("ack_succeeded") == 1
    })
    .await;
    let before = gauge(&first.metrics.render()).expect("the first worker reports the success");
    first.stop().await;
    let finished_at = harness
        .ledger
        .find("before-restart")
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .unwrap();
    assert_eq!(
        before,
        format!(
            "keshless_ops_last_success_timestamp_seconds{{job=\"probe\"}} {}",
            finished_at.timestamp()
        )
    );

    // A new process (a deploy): fresh metrics, no message handled yet.
    let (worker, metrics) = harness
        .worker(harness.registry(), harness.options("worker-after"))
        .await;
    let (base, stop_http) = start_http(&harness, &worker, metrics.clone()).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    // The gauge is loaded when the worker starts; poll /metrics until it is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Some(line) = gauge(&text) {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no last-success gauge after a restart:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after, before);
    assert_eq!(metrics.messages.with_label_values(&["ack_succeeded"]).get(), 0);
    shutdown.cancel();
    running.await.unwrap().unwrap();
    stop_http.cancel();
}

#[tokio::test]
async fn a_job_longer_than_the_ack_deadline_is_not_redelivered() {
    let harness = Harness::start(StackOptions {
        ack_deadline_seconds: 10,
        ..StackOptions::default()
    })
    .await;
    let worker = harness.start_worker("worker-a").await;
    harness
        .publish(
            r#"{"job": "probe", "params": {"sleep_ms": 14000}, "idempotency_key": "long-job"}"#,
            &[],
        )
        .await;
    eventually(Duration::from_secs(30), "the long job finished", || async {
        worker.count("ack_succeeded") == 1
    })
    .await;
    assert_eq!(harness.probe.started.load(Ordering::SeqCst), 1, "ran exactly once");
    let run = harness.ledger.find("long-job").await.unwrap().unwrap();
    assert_eq!(run.attempts, 1);
    // Held by its own keeper the whole time: no second delivery, no duplicate.
    assert_eq!(worker.count("ack_duplicate"), 0);
    worker.stop().await;
}

/// A worker (one slot) on an emulator that closes every stream after
/// `stream_lifetime`, running the probe job `first` (`sleep_ms` long) with the
/// job `second` published behind it: a reopened stream delivers `second`
/// while the slot is busy.
async fn busy_slot_with_a_second_job(
    stream_lifetime: Duration,
    first: &str,
    sleep_ms: u64,
    second: &str,
) -> (Harness, RunningWorker) {
    let harness = Harness::start(StackOptions {
        ack_deadline_seconds: 10,
        max_stream_lifetime: Some(stream_lifetime),
        ..StackOptions::default()
    })
    .await;
    let worker = harness.start_worker("worker-a").await;
    harness
        .publish(
            &format!(r#"{{"job": "probe", "params": {{"sleep_ms": {sleep_ms}}}, "idempotency_key": "{first}"}}"#),
            &[],
        )
        .await;
    eventually(Duration::from_secs(10), "the first job started", || async {
        harness.probe.started.load(Ordering::SeqCst) == 1
    })
    .await;
    harness
        .publish(&format!(r#"{{"job": "probe", "idempotency_key": "{second}"}}"#), &[])
        .await;
    (harness, worker)
}

/// Pub/Sub closes StreamingPull streams from time to time and its flow
/// control starts afresh on the reopened stream, so the next job can arrive
/// while the only slot is busy. It must keep its lease while it waits: not
/// expire and come back (a duplicate, and after enough rounds a dead letter
/// for a job that never ran).
#[tokio::test]
async fn a_job_delivered_while_the_slot_is_busy_keeps_its_lease_until_it_runs() {
    let (harness, worker) = busy_slot_with_a_second_job(Duration::from_secs(2), "long", 16_000, "queued").await;
    eventually(Duration::from_secs(45), "both jobs finished", || async {
        worker.count("ack_succeeded") == 2
    })
    .await;
    // One slot: the queued job ran after the long one, once.
    assert_eq!(harness.probe.completed(), ["long", "queued"]);
    assert_eq!(harness.probe.started.load(Ordering::SeqCst), 2);
    // Its 10 s deadline passed while it waited: kept, it never came back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        worker.count("ack_duplicate"),
        0,
        "the queued message expired and was delivered again"
    );
    assert_eq!(worker.count("dead_letter_permanent"), 0);
    assert_eq!(harness.ledger.find("queued").await.unwrap().unwrap().attempts, 1);
    worker.stop().await;
}

/// A message waiting for the busy slot when SIGTERM comes is handed back
/// (nacked) and never started, even if the slot frees during the shutdown.
#[tokio::test]
async fn sigterm_hands_back_a_waiting_message_without_starting_it() {
    let (harness, worker) = busy_slot_with_a_second_job(Duration::from_secs(1), "running", 1500, "waiting").await;
    // A reopened stream delivers it while the slot is busy.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let metrics = worker.metrics.clone();
    worker.stop().await; // grace 2 s: the running job finishes, its slot frees
    assert_eq!(harness.probe.completed(), ["running"]);
    assert_eq!(
        harness.probe.started.load(Ordering::SeqCst),
        1,
        "the waiting job must not start"
    );
    assert_eq!(metrics.messages.with_label_values(&["ack_succeeded"]).get(), 1);
    assert_eq!(metrics.messages.with_label_values(&["nack_shutting_down"]).get(), 1);
    assert!(harness.ledger.find("waiting").await.unwrap().is_none(), "never claimed");
}

#[tokio::test]
async fn sigterm_lets_a_short_job_finish_and_acks_it() {
    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-a").await;
    harness
        .publish(
            r#"{"job": "probe", "params": {"sleep_ms": 1000}, "idempotency_key": "finishes"}"#,
            &[],
        )
        .await;
    eventually(Duration::from_secs(10), "job started", || async {
        harness.probe.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let metrics = worker.metrics.clone();
    worker.stop().await; // grace is 2 s: enough
    assert_eq!(metrics.messages.with_label_values(&["ack_succeeded"]).get(), 1);
    assert_eq!(harness.probe.completed(), ["finishes"]);
    assert_eq!(harness.status("finishes").await, Some(RunStatus::Succeeded));
}

#[tokio::test]
async fn sigterm_interrupts_a_long_job_nacks_and_releases_it_and_nothing_is_lost() {
    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-a").await;
    harness
        .publish(
            r#"{"job": "probe", "params": {"sleep_ms": 5000}, "idempotency_key": "interrupted"}"#,
            &[],
        )
        .await;
    eventually(Duration::from_secs(10), "job started", || async {
        harness.probe.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let metrics = worker.metrics.clone();
    worker.stop().await; // grace 2 s < 5 s job
    assert_eq!(metrics.messages.with_label_values(&["nack_interrupted"]).get(), 1);
    let run = harness.ledger.find("interrupted").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed, "released for the next worker");
    assert!(run.lease_owner.is_none());
    assert!(harness.probe.completed().is_empty());

    // The message was nacked, not lost: the next worker completes it at once.
    let next = harness.start_worker("worker-b").await;
    eventually(Duration::from_secs(20), "the next worker completed it", || async {
        next.count("ack_succeeded") == 1
    })
    .await;
    assert_eq!(harness.probe.completed(), ["interrupted"]);
    assert_eq!(harness.ledger.find("interrupted").await.unwrap().unwrap().attempts, 2);
    next.stop().await;
}

#[tokio::test]
async fn permanent_job_failures_are_dead_lettered_with_the_reason() {
    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-a").await;
    harness
        .publish(
            r#"{"job": "probe", "params": {"fail": "permanent"}, "idempotency_key": "denied"}"#,
            &[],
        )
        .await;
    eventually(Duration::from_secs(10), "dead-lettered", || async {
        worker.count("dead_letter_permanent") == 1
    })
    .await;
    assert_eq!(
        harness.probe.started.load(Ordering::SeqCst),
        1,
        "permanent errors are not retried"
    );
    assert_eq!(harness.status("denied").await, Some(RunStatus::DeadLettered));
    let letters = dead_letters::list(&harness.stack.dead_letter_subscription, &harness.stack.puller, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].error.as_deref().unwrap().contains("permission denied"));
    // The dead-letter copy never carries the job secret.
    let raw = PubSubStack::peek(&harness.stack.dead_letter_subscription).await;
    assert!(raw
        .iter()
        .all(|message| !message.attributes.contains_key("x-job-secret")));
    worker.stop().await;
}

#[tokio::test]
async fn the_worker_keeps_serving_after_the_stream_breaks() {
    let harness = Harness::start(StackOptions::default()).await;
    let worker = harness.start_worker("worker-a").await;
    harness
        .publish(r#"{"job": "probe", "idempotency_key": "before"}"#, &[])
        .await;
    eventually(Duration::from_secs(10), "first job", || async {
        worker.count("ack_succeeded") == 1
    })
    .await;
    // Deleting and recreating the subscription ends the open stream with an error.
    harness.stack.subscription.delete(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    harness
        .stack
        .client
        .create_subscription(
            JOBS_SUBSCRIPTION,
            common::pubsub::JOBS_TOPIC,
            google_cloud_pubsub::subscription::SubscriptionConfig::default(),
            None,
        )
        .await
        .unwrap();
    harness
        .publish(r#"{"job": "probe", "idempotency_key": "after"}"#, &[])
        .await;
    eventually(Duration::from_secs(30), "second job after reconnecting", || async {
        worker.count("ack_succeeded") == 2
    })
    .await;
    assert_eq!(harness.probe.completed(), ["before", "after"]);
    assert!(!worker.handle.is_finished());
    worker.stop().await;
}

// ---- HTTP ----

async fn start_http(harness: &Harness, worker: &Worker, metrics: Metrics) -> (String, CancellationToken) {
    use keshless_ops::runtime::http::{serve, HttpState};
    let state = Arc::new(HttpState {
        ledger: harness.ledger.clone(),
        metrics,
        health: worker.health(),
        jobs: harness.stack.jobs_topic.new_publisher(None),
        registry: harness.registry(),
        job_secret: SecretString::from(SECRET),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, state, stop.clone()));
    (address, stop)
}

#[tokio::test]
async fn http_submits_jobs_and_exposes_health_and_metrics() {
    let harness = Harness::start(StackOptions::default()).await;
    let (worker, metrics) = harness.worker(harness.registry(), harness.options("worker-http")).await;
    // As in `keshless-ops worker`: the HTTP surface shares the worker's metrics.
    let (base, stop_http) = start_http(&harness, &worker, metrics.clone()).await;
    let http = reqwest::Client::new();

    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    // Not ready until the subscription stream is open.
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 503);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    eventually(Duration::from_secs(10), "ready", || async {
        http.get(format!("{base}/readyz")).send().await.unwrap().status() == 200
    })
    .await;

    // Wrong or missing secret: 401 and nothing else.
    for secret in [Some("wrong"), None] {
        let mut request = http.post(format!("{base}/backup-jobs/probe"));
        if let Some(secret) = secret {
            request = request.header("X-Job-Secret", secret);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.text().await.unwrap().is_empty());
    }
    // Unknown job: 404 listing the jobs.
    let response = http
        .post(format!("{base}/backup-jobs/postgres-restore"))
        .header("X-Job-Secret", SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["jobs"], serde_json::json!(["postgres-backup", "probe"]));
    // Bad params: 400 naming the field, nothing published.
    let response = http
        .post(format!("{base}/backup-jobs/probe"))
        .header("X-Job-Secret", SECRET)
        .body(r#"{"params": {"sleep_ms": "long"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("sleep_ms"), "{body}");

    // A real submission: 202 with the message id, then the worker runs it.
    let response = http
        .post(format!("{base}/backup-jobs/probe"))
        .header("X-Job-Secret", SECRET)
        .body(r#"{"idempotency_key": "http-submitted"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(!body["message_id"].as_str().unwrap().is_empty());
    eventually(Duration::from_secs(10), "the submitted job ran", || async {
        metrics.messages.with_label_values(&["ack_succeeded"]).get() == 1
    })
    .await;
    let run = harness.ledger.find("http-submitted").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.source.as_deref(), Some("http"));

    // GET /metrics: Prometheus text with the worker's counters.
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for expected in [
        "keshless_ops_messages_total{action=\"ack_succeeded\"} 1",
        "keshless_ops_jobs_total{job=\"probe\",outcome=\"succeeded\"} 1",
        "keshless_ops_last_success_timestamp_seconds{job=\"probe\"}",
        "keshless_ops_job_duration_seconds_bucket{job=\"probe\",outcome=\"succeeded\",le=\"1\"} 1",
        "keshless_ops_messages_forged_total 2",
        "keshless_ops_messages_in_flight 0",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }

    shutdown.cancel();
    running.await.unwrap().unwrap();
    stop_http.cancel();
}

// ---- keshless-ops run (in this process, no Pub/Sub) ----

#[tokio::test]
async fn local_runs_use_the_same_ledger_and_contract() {
    use keshless_ops::runtime::local::{run_locally, LocalRun};
    let harness = Harness::start(StackOptions::default()).await;
    let registry = harness.registry();
    let params = |pairs: serde_json::Value| pairs.as_object().cloned().unwrap_or_default();
    let run = |job: &'static str, params: serde_json::Map<String, serde_json::Value>, key: Option<&str>| {
        let (ledger, registry) = (harness.ledger.clone(), registry.clone());
        let key = key.map(str::to_owned);
        async move {
            run_locally(
                &ledger,
                &registry,
                job,
                params,
                key,
                "cli-test",
                CancellationToken::new(),
            )
            .await
        }
    };

    match run("probe", params(serde_json::json!({})), Some("cli-key")).await {
        LocalRun::Succeeded { key, summary, .. } => {
            assert_eq!(key, "cli-key");
            assert!(summary.contains("probe ran"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        run("probe", params(serde_json::json!({})), Some("cli-key")).await,
        LocalRun::Duplicate { key: "cli-key".into() }
    );
    assert_eq!(harness.probe.completed(), ["cli-key"]);
    // Fresh key by default: runs again.
    assert!(matches!(
        run("probe", Default::default(), None).await,
        LocalRun::Succeeded { .. }
    ));
    assert_eq!(harness.probe.completed().len(), 2);

    // The message contract applies: unknown jobs and params are refused, naming what is accepted.
    match run("restore", Default::default(), None).await {
        LocalRun::Failed { kind, error, .. } => {
            assert_eq!(kind, "invalid-message");
            assert!(error.contains("accepted jobs: `postgres-backup`, `probe`"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    match run("probe", params(serde_json::json!({"sleep_ms": "soon"})), None).await {
        LocalRun::Failed { error, .. } => assert!(error.contains("sleep_ms"), "{error}"),
        other => panic!("{other:?}"),
    }
    // Failures are recorded; a permanent one says so.
    match run(
        "probe",
        params(serde_json::json!({"fail": "permanent"})),
        Some("cli-denied"),
    )
    .await
    {
        LocalRun::Failed { kind, error, .. } => {
            assert_eq!(kind, "permanent");
            assert!(error.contains("permission denied"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(harness.status("cli-denied").await, Some(RunStatus::Failed));
}

#[tokio::test]
async fn a_scheduled_message_pubsub_dead_lettered_itself_replays_under_its_period_key() {
    use google_cloud_googleapis::pubsub::v1::{ModifyAckDeadlineRequest, PullRequest};
    let harness = Harness::start(StackOptions {
        max_delivery_attempts: 5,
        ..StackOptions::default()
    })
    .await;
    // No worker: something else (a crash loop) nacks it until Pub/Sub gives up.
    harness
        .publish("", &[("source", "cloud-scheduler"), ("job", "postgres-backup")])
        .await;
    let subscription = &harness.stack.subscription;
    for _ in 0..5 {
        #[allow(deprecated)]
        let pulled = subscription
            .get_client()
            .pull(
                PullRequest {
                    subscription: subscription.fully_qualified_name().to_owned(),
                    return_immediately: false,
                    max_messages: 1,
                },
                None,
            )
            .await
            .unwrap()
            .into_inner()
            .received_messages;
        assert_eq!(pulled.len(), 1);
        subscription
            .get_client()
            .modify_ack_deadline(
                ModifyAckDeadlineRequest {
                    subscription: subscription.fully_qualified_name().to_owned(),
                    ack_ids: vec![pulled[0].ack_id.clone()],
                    ack_deadline_seconds: 0,
                },
                None,
            )
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(10), "Pub/Sub forwarded it", || async {
        dead_letters::list(&harness.stack.dead_letter_subscription, &harness.stack.puller, 10)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    let letters = dead_letters::list(&harness.stack.dead_letter_subscription, &harness.stack.puller, 10)
        .await
        .unwrap();
    let letter = &letters[0];
    assert_eq!(letter.error_kind.as_deref(), Some("delivery-limit"));
    assert_eq!(letter.job.as_deref(), Some("postgres-backup"));
    assert_eq!(letter.idempotency_key, None);
    assert!(
        !format!("{letter:?}").contains(SECRET),
        "the forwarded secret must not be printable"
    );

    let worker = harness.start_worker("worker-a").await;
    let report = dead_letters::replay(
        &harness.stack.dead_letter_subscription,
        &harness.stack.puller,
        &harness.stack.publisher,
        &SecretString::from(SECRET),
        &ReplaySelection {
            all: true,
            ..ReplaySelection::default()
        },
    )
    .await
    .unwrap();
    let key = format!("postgres-backup:{}", chrono::Utc::now().format("%Y-%m-%d"));
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    assert_eq!(report.replayed[0].idempotency_key.as_deref(), Some(key.as_str()));
    eventually(Duration::from_secs(10), "replayed and run", || async {
        worker.count("ack_succeeded") == 1
    })
    .await;
    assert_eq!(harness.probe.completed(), std::slice::from_ref(&key));
    worker.stop().await;
}

// ---- flow control, readiness, dead-letter listing ----

/// A worker reads eagerly (the next job starts at once) but holds at most
/// `WAITING_PER_SLOT` × concurrency waiting messages: the backlog stays in
/// Pub/Sub for another instance, even though the service reopens streams
/// (each with a fresh flow-control window) while the long job runs.
#[tokio::test]
async fn eager_reading_is_capped_and_the_backlog_stays_for_other_instances() {
    use keshless_ops::runtime::worker::WAITING_PER_SLOT;
    let harness = Harness::start(StackOptions {
        max_stream_lifetime: Some(Duration::from_millis(700)),
        ..StackOptions::default()
    })
    .await;
    let busy = harness.start_worker("worker-busy").await;
    let waiting = busy.metrics.waiting.clone();
    let most_waiting = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let most_waiting = Arc::clone(&most_waiting);
        async move {
            loop {
                most_waiting.fetch_max(waiting.get().max(0) as usize, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    harness
        .publish(
            r#"{"job": "probe", "params": {"sleep_ms": 8000}, "idempotency_key": "long"}"#,
            &[],
        )
        .await;
    eventually(Duration::from_secs(10), "the long job started", || async {
        harness.probe.started.load(Ordering::SeqCst) == 1
    })
    .await;
    for number in 0..8 {
        harness
            .publish(
                &format!(r#"{{"job": "probe", "idempotency_key": "short-{number}"}}"#),
                &[],
            )
            .await;
    }
    eventually(
        Duration::from_secs(5),
        "the busy worker holds the next jobs",
        || async { busy.metrics.waiting.get() == WAITING_PER_SLOT as i64 },
    )
    .await;
    // Streams are reopened every 0.7 s meanwhile: none may add to what it holds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(busy.metrics.waiting.get(), WAITING_PER_SLOT as i64);
    assert_eq!(harness.probe.started.load(Ordering::SeqCst), 1);

    // Another instance gets the rest at once, while the long job still runs.
    let other = harness.start_worker("worker-other").await;
    eventually(Duration::from_secs(4), "the other instance ran the backlog", || async {
        other.count("ack_succeeded") == 8 - WAITING_PER_SLOT as u64
    })
    .await;
    assert!(
        !harness.probe.completed().contains(&"long".to_owned()),
        "the long job was still running"
    );
    eventually(Duration::from_secs(20), "the busy worker ran what it held", || async {
        busy.count("ack_succeeded") == 1 + WAITING_PER_SLOT as u64
    })
    .await;
    sampler.abort();
    assert_eq!(
        most_waiting.load(Ordering::SeqCst),
        WAITING_PER_SLOT,
        "never more than 2 × WORKER_CONCURRENCY waiting"
    );
    let mut completed = harness.probe.completed();
    completed.sort();
    assert_eq!(completed.len(), 9, "{completed:?}");
    completed.dedup();
    assert_eq!(completed.len(), 9, "each job ran once");
    assert_eq!(busy.count("ack_duplicate") + other.count("ack_duplicate"), 0);
    let text = busy.metrics.render();
    assert!(text.contains("keshless_ops_messages_waiting 0"), "{text}");
    busy.stop().await;
    other.stop().await;
}

/// `/readyz` tolerates a StreamingPull outage shorter than the threshold
/// (the service closes streams from time to time), answers 503 with the
/// reason once it lasts longer, and 200 again when the stream is back.
#[tokio::test]
async fn readyz_is_503_with_the_reason_once_the_stream_fails_past_the_threshold() {
    let mut harness = Harness::start(StackOptions::default()).await;
    let threshold = Duration::from_secs(3);
    let options = WorkerOptions {
        stream_failure_threshold: threshold,
        ..harness.options("worker-ready")
    };
    let (worker, metrics) = harness.worker(harness.registry(), options).await;
    let (base, stop_http) = start_http(&harness, &worker, metrics.clone()).await;
    let http = reqwest::Client::new();
    let readyz = || async {
        let response = http.get(format!("{base}/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    eventually(Duration::from_secs(10), "ready", || async { readyz().await.0 == 200 }).await;

    // The emulator goes away: the stream fails and cannot be reopened.
    let address = harness.stack.emulator.local_addr();
    let placeholder = PubSubStack::start(StackOptions::default()).await;
    let old = std::mem::replace(&mut harness.stack, placeholder);
    old.emulator.shutdown().await;
    let down_at = std::time::Instant::now();
    let mut statuses = Vec::new();
    let (status, body) = loop {
        let (status, body) = readyz().await;
        statuses.push((down_at.elapsed().as_millis(), status));
        if status == 503 || down_at.elapsed() > Duration::from_secs(15) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "never unready: {statuses:?}");
    let unready_after = down_at.elapsed();
    assert!(
        unready_after > threshold,
        "unready after {unready_after:?}, before the {threshold:?} threshold: {statuses:?}"
    );
    assert!(
        statuses.iter().any(|(_, status)| *status == 200),
        "a short outage is tolerated: {statuses:?}"
    );
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the subscription stream has been failing for") && reason.contains("more than 3 s"),
        "{body}"
    );
    assert!(reason.contains("Unavailable"), "the cause is named: {body}");
    assert_eq!(body["ledger"], "ok");

    // Back on the same port: ready again, and serving.
    harness.stack = PubSubStack::start_on(address, StackOptions::default()).await;
    eventually(Duration::from_secs(20), "ready again", || async {
        readyz().await.0 == 200
    })
    .await;
    assert_eq!(readyz().await.1["subscription_stream"], "up");
    harness
        .publish(r#"{"job": "probe", "idempotency_key": "after-outage"}"#, &[])
        .await;
    eventually(Duration::from_secs(10), "served after the outage", || async {
        metrics.messages.with_label_values(&["ack_succeeded"]).get() == 1
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    stop_http.cancel();
}

/// Dead letters as the real service hands them out: a Pull answers with
/// fewer messages than asked for, and one with `return_immediately` finds
/// nothing. `list` (waiting Pulls, each with a gRPC deadline the emulator
/// ends it at) still sees every one without consuming any or leaving any
/// leased (the second listing sees them all again), ends once nothing new
/// comes, and `replay --all` takes them all.
#[tokio::test]
async fn dlq_list_and_replay_all_see_every_dead_letter_without_return_immediately() {
    let harness = Harness::start(StackOptions {
        max_messages_per_pull: Some(3),
        immediate_pulls_find_nothing: true,
        ..StackOptions::default()
    })
    .await;
    let dead_letter_publisher = harness.stack.dead_letter_topic.new_publisher(None);
    const LETTERS: usize = 20;
    for number in 0..LETTERS {
        let key = format!("dead-{number:02}");
        pubsub::publish(
            &dead_letter_publisher,
            format!(r#"{{"job": "probe", "idempotency_key": "{key}"}}"#).into_bytes(),
            std::collections::HashMap::from([
                ("job".to_owned(), "probe".to_owned()),
                ("idempotency_key".to_owned(), key),
                ("error".to_owned(), "storage answered 503".to_owned()),
                ("error_kind".to_owned(), "transient-exhausted".to_owned()),
            ]),
        )
        .await
        .unwrap();
    }
    let subscription = &harness.stack.dead_letter_subscription;
    for round in ["first", "second"] {
        let started = std::time::Instant::now();
        let letters = dead_letters::list(subscription, &harness.stack.puller, 1000)
            .await
            .unwrap();
        let took = started.elapsed();
        let mut keys: Vec<_> = letters
            .iter()
            .map(|letter| letter.idempotency_key.clone().unwrap())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), LETTERS, "{round} listing: {keys:?}");
        eprintln!("DLQ {round} listing of {LETTERS} letters (at most 3 a Pull): {took:?}");
        assert!(
            took < dead_letters::PULL_DEADLINE + Duration::from_secs(3),
            "{round} listing took {took:?}"
        );
    }
    let limited = dead_letters::list(subscription, &harness.stack.puller, 5)
        .await
        .unwrap();
    assert_eq!(limited.len(), 5, "--limit is honoured");

    let report = dead_letters::replay(
        subscription,
        &harness.stack.puller,
        &harness.stack.publisher,
        &SecretString::from(SECRET),
        &ReplaySelection {
            all: true,
            ..ReplaySelection::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.replayed.len(), LETTERS, "{report:?}");
    assert!(report.skipped.is_empty() && report.left == 0, "{report:?}");
    // Acked after the republish: an empty DLQ, and a listing of it ends.
    let started = std::time::Instant::now();
    assert!(dead_letters::list(subscription, &harness.stack.puller, 1000)
        .await
        .unwrap()
        .is_empty());
    let took = started.elapsed();
    eprintln!("DLQ listing of the empty DLQ: {took:?}");
    assert!(took < dead_letters::PULL_DEADLINE + Duration::from_secs(2), "{took:?}");
    // Every one is on the jobs topic, once, as a replay under its key.
    let replayed = dead_letters::list(&harness.stack.subscription, &harness.stack.puller, 1000)
        .await
        .unwrap();
    let mut keys: Vec<_> = replayed
        .iter()
        .map(|letter| letter.idempotency_key.clone().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, (0..LETTERS).map(|n| format!("dead-{n:02}")).collect::<Vec<_>>());
}
