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
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::PrivateCluster;
use common::pubsub::{eventually, PubSubStack, StackOptions, PROJECT};
use common::{storage_emulator_host, unique_suffix, TestDatabase};
use fault_proxy::{Fault, FaultPlan, FaultProxy};
use keshless_ops::config::DatabaseUrl;
use keshless_ops::postgres::layout::{self, Class};
use keshless_ops::runtime::ledger::{Ledger, RunStatus};
use keshless_ops::storage::{BlobStore, GcsStore, StoreLocation};

const JOB_SECRET: &str = "faults-job-secret-31c9";
const ENCRYPTION_KEY: &str = "faults-encryption-key-0123456789abcdef";

// ---- harness ----

/// Everything one scenario's workers share: the emulator, a database to back
/// up (also the ledger), a bucket.
struct Scenario {
    stack: PubSubStack,
    database: TestDatabase,
    ledger: Ledger,
    bucket: String,
    /// The store as the test sees it (straight to fake-gcs-server).
    store: Arc<GcsStore>,
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
                // md5 text barely compresses: the dump is ~100 KiB, so an
                // upload is still going when the proxy holds it after 4 KiB.
                "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric NOT NULL, reference text NOT NULL);
                 INSERT INTO payments SELECT n, n * 1.5, md5(n::text) FROM generate_series(1, 3000) AS n;",
            )
            .await
            .expect("seed the database");
        let url: DatabaseUrl = database.url.parse().unwrap();
        let ledger = Ledger::connect(&url).await.expect("ledger");
        let storage_host = storage_emulator_host();
        let store = common::gcs_store(false).await;
        let StoreLocation::Gcs { bucket, .. } = store.location().clone() else {
            unreachable!("a gs:// store")
        };
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
        let port = common::free_port();
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
        let listed = layout::list(self.store.as_ref(), Some(Class::Daily))
            .await
            .expect("list backups");
        let complete = listed.iter().filter(|backup| backup.is_complete()).count();
        (complete, listed.len() - complete)
    }

    /// Every manifest in the bucket names a dump that exists with the
    /// manifest's size and checksum (never a manifest without a verified object).
    async fn assert_every_manifest_has_its_verified_dump(&self) {
        for listed in layout::list(self.store.as_ref(), None).await.expect("list backups") {
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
            assert_eq!(
                dump.size, manifest.size_bytes,
                "{}: size differs from the manifest",
                listed.id
            );
            let verified = layout::verify(self.store.as_ref(), &listed.id).await;
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
        common::process_status_kib(&self.pid().to_string(), "VmHWM")
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
                assert!(
                    status.success(),
                    "worker {} exited with {status}:\n{}",
                    self.name,
                    self.logs()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not stop on SIGTERM",
                self.name
            );
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
    eventually(Duration::from_secs(90), "every copy is acked", || async move {
        let mut all = Vec::new();
        for worker in workers {
            all.push(worker.message_counts().await);
        }
        let acked = sum(&all, "ack_succeeded") + sum(&all, "ack_duplicate");
        acked >= COPIES as u64
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
    assert_eq!(
        total(&counts),
        COPIES as u64,
        "every handled message is an ack: {counts:?}"
    );

    eprintln!(
        "FAULTS duplicate-storm: published {COPIES} copies of one key to 2 workers; \
         jobs completed 1 (ledger attempts {}), duplicates avoided {}, messages lost {left}, \
         dead-lettered {dead_lettered}; per worker {counts:?}",
        run.attempts,
        sum(&counts, "ack_duplicate"),
    );
}

// ---- 2. abuse ----

/// Publishes raw bytes (not necessarily UTF-8) to the jobs topic.
async fn publish_bytes(stack: &PubSubStack, data: Vec<u8>, attributes: Vec<(String, String)>) -> String {
    stack
        .publisher
        .publish(google_cloud_googleapis::pubsub::v1::PubsubMessage {
            data,
            attributes: attributes.into_iter().collect(),
            ..Default::default()
        })
        .await
        .get()
        .await
        .expect("publish")
}

/// Every message on a subscription, pulled until it answers nothing (each
/// pull leases what it returns, so nothing comes back twice meanwhile).
async fn drain(
    subscription: &google_cloud_pubsub::subscription::Subscription,
) -> Vec<google_cloud_googleapis::pubsub::v1::PubsubMessage> {
    let mut all = Vec::new();
    loop {
        let batch = PubSubStack::peek(subscription).await;
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// What an abusive message is and where SPEC section 4 says it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Abuse {
    RandomBytes,
    Oversized,
    BadSecret,
    MissingSecret,
    UnknownJob,
    UnknownParam,
    DeeplyNested,
    WrongType,
    NotAnObject,
}

impl Abuse {
    const ALL: [Abuse; 9] = [
        Abuse::RandomBytes,
        Abuse::Oversized,
        Abuse::BadSecret,
        Abuse::MissingSecret,
        Abuse::UnknownJob,
        Abuse::UnknownParam,
        Abuse::DeeplyNested,
        Abuse::WrongType,
        Abuse::NotAnObject,
    ];

    /// Forged messages are acked and never dead-lettered (not replayable).
    fn is_forged(self) -> bool {
        matches!(self, Abuse::BadSecret | Abuse::MissingSecret)
    }

    /// Data and attributes of the `index`th message of this kind.
    fn message(self, index: usize, random: &mut impl rand::Rng) -> (Vec<u8>, Vec<(String, String)>) {
        let secret = ("x-job-secret".to_owned(), JOB_SECRET.to_owned());
        let key = ("idempotency_key".to_owned(), format!("abuse-{self:?}-{index}"));
        let valid_job = br#"{"job":"postgres-backup","params":{"monthly":"skip"}}"#.to_vec();
        match self {
            Abuse::RandomBytes => {
                let length = random.gen_range(1..2048);
                ((0..length).map(|_| random.gen()).collect(), vec![secret, key])
            }
            Abuse::Oversized => {
                // Mostly just over the 64 KiB limit, sometimes far over it.
                let padding = if index.is_multiple_of(10) { 4 << 20 } else { 65 * 1024 };
                let data = format!(
                    r#"{{"job":"postgres-backup","requested_by":"{}"}}"#,
                    "x".repeat(padding)
                );
                (data.into_bytes(), vec![secret, key])
            }
            // A perfectly valid job: only the secret is wrong, so it must never run.
            Abuse::BadSecret => {
                let wrong = ["", "wrong", "faults-job-secret-31c", "faults-job-secret-31c9 "][index % 4];
                (valid_job, vec![("x-job-secret".to_owned(), wrong.to_owned()), key])
            }
            Abuse::MissingSecret => (valid_job, vec![key]),
            Abuse::UnknownJob => {
                let job = ["drop-database", "postgres-restore", "", "POSTGRES-BACKUP"][index % 4];
                (format!(r#"{{"job":"{job}"}}"#).into_bytes(), vec![secret, key])
            }
            Abuse::UnknownParam => (
                br#"{"job":"postgres-backup","params":{"shell":"rm -rf /"}}"#.to_vec(),
                vec![secret, key],
            ),
            Abuse::DeeplyNested => {
                let depth = random.gen_range(200..20_000);
                let data = if index.is_multiple_of(2) {
                    format!(
                        r#"{{"job":"postgres-backup","params":{}{}}}"#,
                        "[".repeat(depth),
                        "]".repeat(depth)
                    )
                } else {
                    format!(
                        r#"{{"job":"postgres-backup","params":{}1{}}}"#,
                        r#"{"a":"#.repeat(depth),
                        "}".repeat(depth)
                    )
                };
                (data.into_bytes(), vec![secret, key])
            }
            Abuse::WrongType => {
                let data = [
                    r#"{"job":"postgres-backup","params":{"monthly":42}}"#,
                    r#"{"job":"postgres-backup","params":"monthly"}"#,
                    r#"{"job":123}"#,
                    r#"{"job":"postgres-backup","idempotency_key":["a"]}"#,
                ][index % 4];
                (data.as_bytes().to_vec(), vec![secret, key])
            }
            Abuse::NotAnObject => {
                let data = ["[1,2,3]", "\"postgres-backup\"", "null", "{\"job\":", ""][index % 5];
                (data.as_bytes().to_vec(), vec![secret, key])
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_is_acked_or_dead_lettered_while_valid_jobs_still_run() {
    use rand::{Rng as _, SeedableRng as _};
    const ABUSIVE: usize = 1000;
    const VALID: usize = 4;
    let scenario = Scenario::start(StackOptions::default()).await;
    let worker = scenario.spawn_worker("abused").await;

    let mut random = rand::rngs::StdRng::seed_from_u64(0x6b65_7368);
    let mut expected: BTreeMap<Abuse, usize> = BTreeMap::new();
    let mut messages = Vec::new();
    for index in 0..ABUSIVE {
        let kind = Abuse::ALL[random.gen_range(0..Abuse::ALL.len())];
        *expected.entry(kind).or_default() += 1;
        messages.push(kind.message(index, &mut random));
    }
    // Valid jobs go in at the start, the middle and the end of the stream.
    let valid_keys: Vec<String> = (0..VALID).map(|index| format!("abuse-valid-{index}")).collect();
    for (index, key) in valid_keys.iter().enumerate() {
        let attributes = vec![
            ("x-job-secret".to_owned(), JOB_SECRET.to_owned()),
            ("idempotency_key".to_owned(), key.clone()),
        ];
        let data = br#"{"job":"postgres-backup","params":{"monthly":"skip"}}"#.to_vec();
        messages.insert(index * messages.len() / VALID, (data, attributes));
    }
    for chunk in messages.chunks(100) {
        let publishes = chunk
            .iter()
            .cloned()
            .map(|(data, attributes)| publish_bytes(&scenario.stack, data, attributes));
        futures::future::join_all(publishes).await;
    }

    let invalid = expected
        .iter()
        .filter(|(kind, _)| !kind.is_forged())
        .map(|(_, count)| *count as u64)
        .sum::<u64>();
    let forged = ABUSIVE as u64 - invalid;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let counts = loop {
        let counts = worker.message_counts().await;
        if total(std::slice::from_ref(&counts)) >= (ABUSIVE + VALID) as u64 {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "not every message was handled in time: {counts:?}\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let handling = started.elapsed();
    let peak_rss_mib = worker.peak_rss_kib() / 1024;

    for key in &valid_keys {
        let run = scenario
            .ledger
            .find(key)
            .await
            .unwrap()
            .expect("valid job in the ledger");
        assert_eq!((run.status, run.attempts), (RunStatus::Succeeded, 1), "{run:?}");
    }
    assert_eq!(scenario.daily_backups().await, (VALID, 0));
    scenario.assert_every_manifest_has_its_verified_dump().await;
    // Forged messages carried a valid job: none of them ran.
    for index in 0..ABUSIVE {
        for kind in [Abuse::BadSecret, Abuse::MissingSecret] {
            let key = format!("abuse-{kind:?}-{index}");
            assert!(scenario.ledger.find(&key).await.unwrap().is_none(), "{key} ran");
        }
    }

    let logs = worker.stop().await;
    assert!(!logs.contains(JOB_SECRET), "the job secret leaked into the logs");
    let left = Scenario::left_on(&scenario.stack.subscription).await;
    let letters = drain(&scenario.stack.dead_letter_subscription).await;
    for letter in &letters {
        let attributes = &letter.attributes;
        assert_eq!(
            attributes.get("error_kind").map(String::as_str),
            Some("invalid-message"),
            "{attributes:?}"
        );
        let error = attributes.get("error").expect("error attribute");
        assert!(!error.is_empty() && error.len() < 4096, "{error:?}");
        assert_ne!(
            attributes.get("x-job-secret").map(String::as_str),
            Some(""),
            "a forged message reached the DLQ"
        );
    }
    let letter_kinds: BTreeMap<String, usize> = letters.iter().fold(BTreeMap::new(), |mut kinds, letter| {
        let key = letter.attributes.get("idempotency_key").cloned().unwrap_or_default();
        let kind = key.split('-').nth(1).unwrap_or("?").to_owned();
        *kinds.entry(kind).or_default() += 1;
        kinds
    });
    // The error names the problem (samples printed below).
    let mut samples: BTreeMap<String, String> = BTreeMap::new();
    for letter in &letters {
        let key = letter.attributes.get("idempotency_key").cloned().unwrap_or_default();
        let kind = key.split('-').nth(1).unwrap_or("?").to_owned();
        let error = letter.attributes["error"].clone();
        let names_it = match kind.as_str() {
            "Oversized" => error.contains("64 KiB"),
            "UnknownJob" => error.contains("job"),
            "UnknownParam" => error.contains("shell") && error.contains("monthly"),
            "WrongType" | "DeeplyNested" | "NotAnObject" | "RandomBytes" => {
                error.contains("data")
                    || error.contains("job")
                    || error.contains("params")
                    || error.contains("idempotency_key")
            }
            _ => false,
        };
        assert!(names_it, "{kind}: unclear error {error:?}");
        samples.entry(kind).or_insert(error);
    }
    eprintln!("FAULTS abuse: one dead-letter reason per kind: {samples:#?}");
    let letters_from_forged =
        letter_kinds.get("BadSecret").copied().unwrap_or(0) + letter_kinds.get("MissingSecret").copied().unwrap_or(0);

    eprintln!(
        "FAULTS abuse: {ABUSIVE} abusive messages {expected:?} + {VALID} valid jobs handled in {:.1} s; \
         jobs completed {VALID}, forged acked {}, dead-lettered {} (DLQ holds {}), messages lost {left}; \
         worker peak RSS {peak_rss_mib} MiB; counts {counts:?}",
        handling.as_secs_f64(),
        counts.get("ack_forged").copied().unwrap_or(0),
        counts.get("dead_letter_invalid-message").copied().unwrap_or(0),
        letters.len(),
    );
    assert_eq!(counts.get("ack_succeeded").copied(), Some(VALID as u64), "{counts:?}");
    assert_eq!(counts.get("ack_forged").copied(), Some(forged), "{counts:?}");
    assert_eq!(
        counts.get("dead_letter_invalid-message").copied(),
        Some(invalid),
        "{counts:?}"
    );
    assert_eq!(
        total(std::slice::from_ref(&counts)),
        (ABUSIVE + VALID) as u64,
        "{counts:?}"
    );
    assert_eq!(letters.len() as u64, invalid, "{letter_kinds:?}");
    assert_eq!(letters_from_forged, 0, "forged messages in the DLQ: {letter_kinds:?}");
    assert_eq!(left, 0, "messages left on the subscription");
    assert!(peak_rss_mib < 256, "worker peak RSS {peak_rss_mib} MiB");
}

// ---- 3. kill -9 mid-upload ----

/// Makes the ledger lease of `key` expire now: stands in for the two minutes
/// a dead worker's lease takes to run out (the claim logic is unchanged).
async fn expire_lease(database: &TestDatabase, key: &str) {
    let updated = database
        .connect()
        .await
        .execute(
            "UPDATE keshless_ops.job_runs SET lease_expires_at = now() - interval '1 second' \
             WHERE idempotency_key = $1 AND status = 'running'",
            &[&key],
        )
        .await
        .expect("expire the lease");
    assert_eq!(updated, 1, "no running ledger row for {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_upload_then_a_new_worker_completes_the_backup_exactly_once() {
    let mut scenario = Scenario::start(StackOptions::default()).await;
    let proxy = FaultProxy::start(&storage_emulator_host(), FaultPlan::none(), 3).await;
    scenario.worker_storage_host = proxy.host();
    proxy.hold_uploads(true);
    let mut killed = scenario.spawn_worker("killed").await;
    let key = format!("kill-{}", unique_suffix());
    let message_id = publish_backup(&scenario.stack, &key).await;

    eventually(Duration::from_secs(30), "the dump upload is under way", || async {
        proxy
            .counts()
            .held_upload_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 4096
    })
    .await;
    let killed_at = Instant::now();
    assert!(killed.is_running());
    killed.kill_9();
    let run = scenario.ledger.find(&key).await.unwrap().expect("ledger row");
    assert_eq!((run.status, run.attempts), (RunStatus::Running, 1), "{run:?}");
    proxy.hold_uploads(false);
    // Give fake-gcs-server the chance to (wrongly) finish the object.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (complete, _) = scenario.daily_backups().await;
    assert_eq!(complete, 0, "the killed attempt left a complete backup");

    expire_lease(&scenario.database, &key).await;
    let successor = scenario.spawn_worker("successor").await;
    // The message comes back when the dead stream's ack deadline (60 s) runs out.
    eventually(Duration::from_secs(100), "the successor completes the key", || {
        let ledger = scenario.ledger.clone();
        let key = key.clone();
        async move { matches!(ledger.find(&key).await, Ok(Some(run)) if run.status == RunStatus::Succeeded) }
    })
    .await;
    let run = scenario.ledger.find(&key).await.unwrap().unwrap();
    let recovered_after = killed_at.elapsed();
    let (complete, incomplete) = scenario.daily_backups().await;
    scenario.assert_every_manifest_has_its_verified_dump().await;
    let counts = successor.message_counts().await;
    successor.stop().await;
    let left = Scenario::left_on(&scenario.stack.subscription).await;
    let dead_lettered = Scenario::left_on(&scenario.stack.dead_letter_subscription).await;
    eprintln!(
        "FAULTS kill-9: SIGKILL during the dump upload (message {message_id}); successor completed it \
         {:.1} s later; ledger {:?} after {} attempts; complete backups {complete}, incomplete leftovers \
         {incomplete}; messages lost {left}; dead-lettered {dead_lettered}; successor {counts:?}; proxy {}",
        recovered_after.as_secs_f64(),
        run.status,
        run.attempts,
        proxy.counts().summary(),
    );
    assert_eq!(run.attempts, 2, "{run:?}");
    assert_eq!(complete, 1, "exactly one complete backup");
    assert_eq!(counts.get("ack_succeeded").copied(), Some(1), "{counts:?}");
    assert_eq!((left, dead_lettered), (0, 0));
}

// ---- 4. storage faults through the proxy ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_are_retried_and_never_leave_a_manifest_without_its_object() {
    const JOBS: usize = 2;
    let mut scenario = Scenario::start(StackOptions::default()).await;
    let proxy = FaultProxy::start(
        &storage_emulator_host(),
        FaultPlan {
            queued: vec![
                (false, Fault::Unavailable),
                (true, Fault::ResetMidUpload),
                (false, Fault::TooManyRequests),
                (true, Fault::Stall(Duration::from_secs(10))),
                (false, Fault::Reset),
                (true, Fault::Unavailable),
            ],
            fraction: 0.1,
            faults: vec![
                Fault::Unavailable,
                Fault::TooManyRequests,
                Fault::Reset,
                Fault::Stall(Duration::from_secs(10)),
            ],
            upload_fraction: 0.2,
            upload_faults: vec![
                Fault::Unavailable,
                Fault::ResetMidUpload,
                Fault::ResetMidUpload,
                Fault::Stall(Duration::from_secs(10)),
            ],
        },
        0x5eed,
    )
    .await;
    scenario.worker_storage_host = proxy.host();
    let worker = scenario.spawn_worker("faulted").await;
    let keys: Vec<String> = (0..JOBS)
        .map(|index| format!("storage-{index}-{}", unique_suffix()))
        .collect();
    // One after the other, so the request sequence (and with the seed, the
    // faults each job meets) is the same on every run.
    let started = Instant::now();
    for key in &keys {
        publish_backup(&scenario.stack, key).await;
        loop {
            let run = scenario.ledger.find(key).await.unwrap();
            if run.as_ref().is_some_and(|run| run.status == RunStatus::Succeeded) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(150),
                "{key} not done: {run:#?}\nproxy {}\nworker {:?}\nlogs:\n{}",
                proxy.counts().summary(),
                worker.message_counts().await,
                worker.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let elapsed = started.elapsed();
    let mut attempts = Vec::new();
    for key in &keys {
        attempts.push(scenario.ledger.find(key).await.unwrap().unwrap().attempts);
    }
    let (complete, incomplete) = scenario.daily_backups().await;
    scenario.assert_every_manifest_has_its_verified_dump().await;
    let counts = worker.message_counts().await;
    worker.stop().await;
    let left = Scenario::left_on(&scenario.stack.subscription).await;
    let dead_lettered = Scenario::left_on(&scenario.stack.dead_letter_subscription).await;
    eprintln!(
        "FAULTS storage: {}; {JOBS} jobs completed in {:.1} s, ledger attempts {attempts:?}; complete backups \
         {complete}, incomplete leftovers {incomplete}; messages lost {left}; dead-lettered {dead_lettered}; \
         worker {counts:?}",
        proxy.counts().summary(),
        elapsed.as_secs_f64(),
    );
    let injected = proxy.counts();
    for (kind, count) in [
        ("503", &injected.unavailable),
        ("429", &injected.too_many_requests),
        ("reset", &injected.resets),
        ("mid-upload reset", &injected.mid_upload_resets),
        ("stall", &injected.stalls),
    ] {
        assert!(
            count.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "no {kind} was injected: {}",
            injected.summary()
        );
    }
    assert_eq!(complete, JOBS, "one complete backup per job");
    assert_eq!(counts.get("ack_succeeded").copied(), Some(JOBS as u64), "{counts:?}");
    assert_eq!((left, dead_lettered), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_that_keeps_failing_is_a_transient_failure_and_no_manifest() {
    let mut scenario = Scenario::start(StackOptions::default()).await;
    let proxy = FaultProxy::start(
        &storage_emulator_host(),
        FaultPlan::uniform(1.0, vec![Fault::Unavailable]),
        7,
    )
    .await;
    scenario.worker_storage_host = proxy.host();
    let worker = scenario.spawn_worker("storage-down").await;
    let key = format!("down-{}", unique_suffix());
    publish_backup(&scenario.stack, &key).await;
    // Four runs (2 + 4 + 8 s of backoff) then the ledger says failed and the message is nacked.
    eventually(Duration::from_secs(60), "the delivery gives up with a nack", || async {
        worker
            .message_counts()
            .await
            .get("nack_transient")
            .copied()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let run = scenario.ledger.find(&key).await.unwrap().expect("ledger row");
    let counts = worker.message_counts().await;
    worker.stop().await;
    proxy.set_plan(FaultPlan::none());
    let (complete, incomplete) = scenario.daily_backups().await;
    let dead_lettered = Scenario::left_on(&scenario.stack.dead_letter_subscription).await;
    eprintln!(
        "FAULTS storage-down: {}; ledger {:?} after {} attempts: {:?}; complete backups {complete}, \
         incomplete {incomplete}; dead-lettered {dead_lettered}; worker {counts:?}",
        proxy.counts().summary(),
        run.status,
        run.attempts,
        run.last_error,
    );
    // Nacked for redelivery: by now the ledger says `failed`, or the
    // redelivery has already claimed the key again.
    assert!(matches!(run.status, RunStatus::Failed | RunStatus::Running), "{run:?}");
    let error = run.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("transient:") && error.contains("503"),
        "the error should be transient and name the storage answer: {error}"
    );
    assert_eq!(complete + incomplete, 0, "nothing may be written while storage is down");
    assert_eq!(
        dead_lettered, 0,
        "a transient failure is not dead-lettered on its first delivery"
    );
}

// ---- 5. emulator restarted mid-stream ----

async fn publish_backup(stack: &PubSubStack, key: &str) -> String {
    stack
        .publish(
            r#"{"job":"postgres-backup","params":{"monthly":"skip"}}"#,
            &[("x-job-secret", JOB_SECRET), ("idempotency_key", key)],
        )
        .await
}

async fn wait_for_success(ledger: &Ledger, key: &str, timeout: Duration, worker: &WorkerProcess) {
    let deadline = Instant::now() + timeout;
    loop {
        let run = ledger.find(key).await.unwrap();
        if run.as_ref().is_some_and(|run| run.status == RunStatus::Succeeded) {
            return;
        }
        assert!(
            run.as_ref().is_none_or(|run| run.status != RunStatus::DeadLettered),
            "{key} was dead-lettered: {run:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "{key} not done after {timeout:?}: {run:#?}\nlogs:\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_restart_mid_stream_the_worker_reconnects_and_serves_the_next_job() {
    let options = StackOptions::default();
    let mut scenario = Scenario::start(options).await;
    let mut worker = scenario.spawn_worker("reconnecting").await;
    let before = format!("before-restart-{}", unique_suffix());
    publish_backup(&scenario.stack, &before).await;
    wait_for_success(&scenario.ledger, &before, Duration::from_secs(30), &worker).await;

    // Down for a few seconds, then back on the same port with the topology
    // recreated (the in-memory emulator forgets everything, as it does in CI).
    let address = scenario.stack.emulator.local_addr();
    let placeholder = PubSubStack::start(options).await;
    let old = std::mem::replace(&mut scenario.stack, placeholder);
    old.emulator.shutdown().await;
    let down_at = Instant::now();
    let readyz = format!("http://127.0.0.1:{}/readyz", worker.port);
    let mut seen_unready = false;
    while down_at.elapsed() < Duration::from_secs(3) {
        if let Ok(response) = reqwest::get(&readyz).await {
            seen_unready |= response.status() != 200;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        worker.is_running(),
        "the worker exited when the emulator went away:\n{}",
        worker.logs()
    );
    // A fresh emulator: the message below exists only there, so serving it
    // proves the worker's stream was reopened against the new server.
    scenario.stack = PubSubStack::start_on(address, options).await;

    let after = format!("after-restart-{}", unique_suffix());
    publish_backup(&scenario.stack, &after).await;
    wait_for_success(&scenario.ledger, &after, Duration::from_secs(60), &worker).await;
    let reconnected_after = down_at.elapsed();
    assert!(worker.is_running());
    let counts = worker.message_counts().await;
    let logs = worker.stop().await;
    let left = Scenario::left_on(&scenario.stack.subscription).await;
    eprintln!(
        "FAULTS emulator-restart: emulator down 3 s (readyz reported unready: {seen_unready}); the same worker \
         process served the next job {:.1} s after the outage began; jobs completed 2; messages lost {left}; \
         worker {counts:?}",
        reconnected_after.as_secs_f64()
    );
    assert_eq!(counts.get("ack_succeeded").copied(), Some(2), "{counts:?}");
    assert_eq!(left, 0);
    assert_eq!(scenario.daily_backups().await, (2, 0));
    assert!(logs.contains("worker stopped"));
}

// ---- 6. PostgreSQL restarted during pg_dump ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_pg_dump_fails_transiently_then_succeeds() {
    let mut scenario = Scenario::start(StackOptions::default()).await;
    let cluster = PrivateCluster::start();
    let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the private cluster");
    tokio::spawn(connection);
    // Big enough (~15 MiB dumped) that pg_dump is still copying when the
    // held upload stops draining its pipe: the pipe, our chunking and the
    // kernel's TCP buffers between worker and proxy absorb a few MiB (a
    // 1 MiB dump once finished before the restart on a clean CI clone).
    client
        .batch_execute(
            "CREATE TABLE ledger_entries (id bigint PRIMARY KEY, reference text NOT NULL);
             INSERT INTO ledger_entries SELECT n, md5(n::text) || md5((n + 1)::text) FROM generate_series(1, 600000) AS n;",
        )
        .await
        .expect("seed the private cluster");
    drop(client);

    let proxy = FaultProxy::start(&storage_emulator_host(), FaultPlan::none(), 11).await;
    scenario.worker_storage_host = proxy.host();
    proxy.hold_uploads(true);
    let cluster_url = cluster.url();
    let worker = scenario
        .spawn_worker_with(
            "pg-restart",
            &[
                ("DATABASE_URL", cluster_url.as_str()),
                ("LEDGER_DATABASE_URL", scenario.database.url.as_str()),
            ],
        )
        .await;
    let key = format!("pg-restart-{}", unique_suffix());
    publish_backup(&scenario.stack, &key).await;
    eventually(Duration::from_secs(30), "pg_dump is streaming", || async {
        proxy
            .counts()
            .held_upload_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 4096
    })
    .await;
    // pg_dump must still be connected (blocked on its full pipe), or the
    // restart would not hit it.
    eventually(Duration::from_secs(30), "pg_dump is connected to the cluster", || {
        let url = cluster.url();
        async move {
            let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                return false;
            };
            tokio::spawn(connection);
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'",
                    &[],
                )
                .await
                .map(|row| row.get::<_, i64>(0) > 0)
                .unwrap_or(false)
        }
    })
    .await;
    let restart_started = Instant::now();
    cluster.restart();
    let restart_took = restart_started.elapsed();
    proxy.hold_uploads(false);

    wait_for_success(&scenario.ledger, &key, Duration::from_secs(60), &worker).await;
    let run = scenario.ledger.find(&key).await.unwrap().unwrap();
    let (complete, incomplete) = scenario.daily_backups().await;
    scenario.assert_every_manifest_has_its_verified_dump().await;
    let counts = worker.message_counts().await;
    let logs = worker.stop().await;
    let retried = logs.matches("transient failure; retrying in-process").count();
    let first_failure = logs
        .lines()
        .find(|line| line.contains("transient failure; retrying in-process"))
        .and_then(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .and_then(|line| line["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let left = Scenario::left_on(&scenario.stack.subscription).await;
    eprintln!(
        "FAULTS postgres-restart: private cluster restarted (-m fast, {:.1} s) during pg_dump; in-process \
         retries {retried}; ledger {:?} after {} attempts; complete backups {complete}, incomplete leftovers \
         {incomplete}; messages lost {left}; worker {counts:?}; the failure: {first_failure}",
        restart_took.as_secs_f64(),
        run.status,
        run.attempts,
    );
    assert!(retried >= 1, "the restart did not fail the dump:\n{logs}");
    assert!(first_failure.starts_with("transient:"), "{first_failure}");
    assert_eq!(complete, 1, "one complete backup, none for the failed attempt");
    assert_eq!(counts.get("ack_succeeded").copied(), Some(1), "{counts:?}");
    assert_eq!(left, 0);
}

// ---- found by the storage-fault scenario: same-second backups ----

/// Two keys backing up the same database at once: backup names carry the
/// start time to the second, so both runs pick the same object name. The
/// loser must retry under a new name, not be dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backups_of_one_database_in_the_same_second_both_complete() {
    let scenario = Scenario::start(StackOptions::default()).await;
    let worker = scenario
        .spawn_worker_with("concurrent", &[("WORKER_CONCURRENCY", "2")])
        .await;
    let keys = [
        format!("same-second-a-{}", unique_suffix()),
        format!("same-second-b-{}", unique_suffix()),
    ];
    futures::future::join_all(keys.iter().map(|key| publish_backup(&scenario.stack, key))).await;
    for key in &keys {
        wait_for_success(&scenario.ledger, key, Duration::from_secs(45), &worker).await;
    }
    let counts = worker.message_counts().await;
    worker.stop().await;
    let (complete, incomplete) = scenario.daily_backups().await;
    scenario.assert_every_manifest_has_its_verified_dump().await;
    eprintln!(
        "FAULTS same-second: 2 concurrent backups of one database; complete {complete}, incomplete \
         {incomplete}; worker {counts:?}"
    );
    assert_eq!(complete, 2);
    assert_eq!(counts.get("ack_succeeded").copied(), Some(2), "{counts:?}");
    assert_eq!(Scenario::left_on(&scenario.stack.dead_letter_subscription).await, 0);
}

// ---- SIGTERM during a long backup: Cloud Run's 10 s ----

/// Cloud Run kills the container 10 s after SIGTERM. With the production
/// grace period (7 s) a backup that cannot finish in it (here pg_dump waits on
/// a lock the test holds) is interrupted, its message nacked and its key
/// released, and the process is gone within the 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_backup_exits_within_cloud_runs_10_seconds() {
    let scenario = Scenario::start(StackOptions::default()).await;
    let worker = scenario
        .spawn_worker_with("long-backup", &[("SHUTDOWN_GRACE_SECONDS", "7")])
        .await;
    // The backup blocks on this lock for as long as the test holds it.
    let mut locker = scenario.database.connect().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let key = format!("long-backup-{}", unique_suffix());
    publish_backup(&scenario.stack, &key).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while scenario.ledger.find(&key).await.unwrap().map(|run| run.status) != Some(RunStatus::Running) {
        assert!(
            Instant::now() < deadline,
            "the backup never started:\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Well into pg_dump, waiting on the lock.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let terminated_at = Instant::now();
    let logs = worker.stop().await;
    let took = terminated_at.elapsed();
    eprintln!(
        "FAULTS sigterm-long-backup: SHUTDOWN_GRACE_SECONDS=7, the process exited {:.2} s after SIGTERM",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "exit took {took:?}:\n{logs}");
    assert!(
        took >= Duration::from_secs(7),
        "the running backup got its 7 s grace period ({took:?}):\n{logs}"
    );
    assert!(logs.contains("grace period over: interrupting running jobs"), "{logs}");
    assert!(logs.contains("nack_interrupted"), "{logs}");
    // The key is released for the next worker...
    let run = scenario.ledger.find(&key).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
    assert!(run.lease_owner.is_none(), "{run:#?}");
    // The message was nacked (logged above). Known gap, left to a follow-up:
    // the disposed StreamingPull stays half-open until the process exits
    // (the client keeps pinging it), and the emulator, like the service, may
    // lease the nacked message to it, so it comes back only when that
    // stream's deadline expires instead of at once.
    lock.rollback().await.unwrap();
    let (complete, incomplete) = scenario.daily_backups().await;
    assert_eq!((complete, incomplete), (0, 0), "a cut-off backup leaves no object");
}
