//! Fault injection and abuse against the real `keshless-ops worker` binary:
//! child processes on real PostgreSQL, fake-gcs-server and our Pub/Sub
//! emulator, with duplicate storms, garbage messages, `kill -9`, storage
//! faults and restarts. Each scenario prints its figures (faults injected,
//! jobs completed, duplicates avoided, messages lost) on stderr; run with
//! `--no-capture` (or nextest `--success-output immediate`) to see them.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pubsub::{eventually, PubSubStack, StackOptions, PROJECT};
use common::{storage_emulator_host, unique_suffix, TestDatabase};
use google_cloud_storage::http::buckets::insert::{BucketCreationConfig, InsertBucketParam, InsertBucketRequest};
use keshless_ops::config::DatabaseUrl;
use keshless_ops::postgres::layout::{self, Class};
use keshless_ops::runtime::ledger::{Ledger, RunStatus};
use keshless_ops::storage::{GcsStore, StoreLocation};

const JOB_SECRET: &str = "faults-job-secret-31c9";
const ENCRYPTION_KEY: &str = "faults-encryption-key-0123456789abcdef";

// ---- harness ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh fake-gcs-server bucket, returned with its name.
async fn new_bucket(storage_host: &str) -> (String, GcsStore) {
    let bucket = format!("keshless-faults-{}", unique_suffix());
    let store = GcsStore::connect(StoreLocation::gcs(&bucket, "").unwrap(), Some(storage_host))
        .await
        .expect("connect to fake-gcs-server");
    store
        .client()
        .insert_bucket(&InsertBucketRequest {
            name: bucket.clone(),
            param: InsertBucketParam {
                project: "keshless-test".into(),
                ..Default::default()
            },
            bucket: BucketCreationConfig::default(),
        })
        .await
        .unwrap_or_else(|error| panic!("create bucket {bucket}: {error}"));
    (bucket, store)
}

/// Everything one scenario's workers share: the emulator, a database to back
/// up (also the ledger), a bucket.
struct Scenario {
    stack: PubSubStack,
    database: TestDatabase,
    ledger: Ledger,
    bucket: String,
    /// The store as the test sees it (straight to fake-gcs-server).
    store: GcsStore,
    /// Where workers find fake-gcs-server (possibly through a proxy).
    worker_storage_host: String,
    logs: tempfile::TempDir,
}

impl Scenario {
    async fn start(options: StackOptions) -> Scenario {
        common::init_test_logs();
        let stack = PubSubStack::start(options).await;
        let database = TestDatabase::create().await;
        database
            .connect()
            .await
            .batch_execute(
                "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric NOT NULL);
                 INSERT INTO payments SELECT n, n * 1.5 FROM generate_series(1, 500) AS n;",
            )
            .await
            .expect("seed the database");
        let url: DatabaseUrl = database.url.parse().unwrap();
        let ledger = Ledger::connect(&url).await.expect("ledger");
        let storage_host = storage_emulator_host();
        let (bucket, store) = new_bucket(&storage_host).await;
        Scenario {
            stack,
            database,
            ledger,
            bucket,
            store,
            worker_storage_host: storage_host,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    /// The worker's environment (nothing inherited but `PATH`, for `pg_dump`).
    fn environment(&self, port: u16) -> Vec<(String, String)> {
        [
            ("JOB_SECRET", JOB_SECRET.to_owned()),
            ("SECRETS_ENCRYPTION_KEY", ENCRYPTION_KEY.to_owned()),
            ("DATABASE_URL", self.database.url.clone()),
            ("GCS_BACKUPS_BUCKET", self.bucket.clone()),
            ("GCS_DOCUMENTS_BUCKET", format!("{}-documents", self.bucket)),
            ("BACKUP_STORE", format!("gs://{}", self.bucket)),
            ("STORAGE_EMULATOR_HOST", self.worker_storage_host.clone()),
            ("PUBSUB_EMULATOR_HOST", self.stack.host()),
            ("GOOGLE_CLOUD_PROJECT", PROJECT.to_owned()),
            ("PORT", port.to_string()),
            ("SECRETS_ENV_PREFIX", "KESHLESS_FAULTS_".to_owned()),
            ("KESHLESS_FAULTS_API_TOKEN", "faults-api-token-value".to_owned()),
            ("SHUTDOWN_GRACE_SECONDS", "2".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Starts a worker child process and waits until it is ready.
    async fn spawn_worker(&self, name: &str) -> WorkerProcess {
        self.spawn_worker_with(name, &[]).await
    }

    async fn spawn_worker_with(&self, name: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        let port = free_port();
        let mut environment = self.environment(port);
        environment.extend(extra.iter().map(|(name, value)| (name.to_string(), value.to_string())));
        let log_path = self.logs.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("worker log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
            .arg("worker")
            .env_clear()
            .envs(environment)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the worker");
        let worker = WorkerProcess {
            name: name.to_owned(),
            child,
            port,
            log_path,
        };
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http.get(&ready).send().await, Ok(response) if response.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker {name} not ready after 30 s; logs:\n{}",
                worker.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worker
    }

    /// Complete and incomplete daily backups in the bucket.
    async fn daily_backups(&self) -> (usize, usize) {
        let listed = layout::list(&self.store, Some(Class::Daily)).await.expect("list backups");
        let complete = listed.iter().filter(|backup| backup.is_complete()).count();
        (complete, listed.len() - complete)
    }

    /// Every manifest in the bucket names a dump that exists with the
    /// manifest's size and checksum (never a manifest without a verified object).
    async fn assert_every_manifest_has_its_verified_dump(&self) {
        for listed in layout::list(&self.store, None).await.expect("list backups") {
            if listed.manifest_object.is_none() {
                continue;
            }
            let manifest = listed
                .manifest
                .as_ref()
                .unwrap_or_else(|| panic!("{}: unreadable manifest: {:?}", listed.id, listed.problem));
            let dump = listed
                .dump
                .as_ref()
                .unwrap_or_else(|| panic!("{}: a manifest without its dump", listed.id));
            assert_eq!(dump.size, manifest.size_bytes, "{}: size differs from the manifest", listed.id);
            let verified = layout::verify(&self.store, &listed.id).await;
            assert!(verified.is_ok(), "{}: {verified:?}", listed.id);
        }
    }

    /// Messages on a subscription once every lease has been given back.
    async fn left_on(subscription: &google_cloud_pubsub::subscription::Subscription) -> usize {
        PubSubStack::peek(subscription).await.len()
    }
}

/// A `keshless-ops worker` child, killed (SIGKILL) when dropped so no exit
/// path of a test leaks processes.
struct WorkerProcess {
    name: String,
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl WorkerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Peak resident memory (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("worker status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// `action -> count` from the worker's `keshless_ops_messages_total`.
    async fn message_counts(&self) -> BTreeMap<String, u64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter_map(|line| line.strip_prefix("keshless_ops_messages_total{action=\""))
            .filter_map(|rest| {
                let (action, count) = rest.split_once("\"} ")?;
                Some((action.to_owned(), count.trim().parse().ok()?))
            })
            .collect()
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the worker nacks what it still holds and exits 0.
    async fn stop(mut self) -> String {
        assert!(Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "worker {} exited with {status}:\n{}", self.name, self.logs());
                break;
            }
            assert!(Instant::now() < deadline, "worker {} did not stop on SIGTERM", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.logs()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn sum(counts: &[BTreeMap<String, u64>], action: &str) -> u64 {
    counts.iter().filter_map(|counts| counts.get(action)).sum()
}

fn total(counts: &[BTreeMap<String, u64>]) -> u64 {
    counts.iter().flat_map(|counts| counts.values()).sum()
}

// ---- 1. duplicate storm ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_storm_runs_the_job_once_and_acks_every_copy() {
    const COPIES: usize = 200;
    let scenario = Scenario::start(StackOptions::default()).await;
    let first = scenario.spawn_worker("first").await;
    let second = scenario.spawn_worker("second").await;
    let key = format!("storm-{}", unique_suffix());

    let data = r#"{"job":"postgres-backup","params":{"monthly":"skip"}}"#;
    let attributes = [
        ("x-job-secret", JOB_SECRET),
        ("idempotency_key", key.as_str()),
        ("source", "cli"),
    ];
    let publishes = (0..COPIES).map(|_| scenario.stack.publish(data, &attributes));
    futures::future::join_all(publishes).await;

    let workers = [&first, &second];
    let mut counts = Vec::new();
    eventually(Duration::from_secs(90), "every copy is acked", || {
        let workers = workers;
        async move {
            let mut all = Vec::new();
            for worker in workers {
                all.push(worker.message_counts().await);
            }
            let acked = sum(&all, "ack_succeeded") + sum(&all, "ack_duplicate");
            acked >= COPIES as u64
        }
    })
    .await;
    for worker in workers {
        counts.push(worker.message_counts().await);
    }

    let run = scenario.ledger.find(&key).await.unwrap().expect("ledger row");
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(run.attempts, 1, "{run:?}");
    assert_eq!(scenario.daily_backups().await, (1, 0), "exactly one complete backup");
    scenario.assert_every_manifest_has_its_verified_dump().await;

    // Stopping nacks anything still leased, so whatever was not acked would
    // be deliverable again right away.
    first.stop().await;
    second.stop().await;
    let left = Scenario::left_on(&scenario.stack.subscription).await;
    let dead_lettered = Scenario::left_on(&scenario.stack.dead_letter_subscription).await;
    assert_eq!(left, 0, "messages left on the subscription");
    assert_eq!(dead_lettered, 0, "messages dead-lettered");
    assert_eq!(sum(&counts, "ack_succeeded"), 1, "{counts:?}");
    assert_eq!(sum(&counts, "ack_duplicate"), COPIES as u64 - 1, "{counts:?}");
    assert_eq!(total(&counts), COPIES as u64, "every handled message is an ack: {counts:?}");

    eprintln!(
        "FAULTS duplicate-storm: published {COPIES} copies of one key to 2 workers; \
         jobs completed 1 (ledger attempts {}), duplicates avoided {}, messages lost {left}, \
         dead-lettered {dead_lettered}; per worker {counts:?}",
        run.attempts,
        sum(&counts, "ack_duplicate"),
    );
}
