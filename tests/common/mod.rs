//! Shared integration-test harness: every test gets its own PostgreSQL
//! database and its own bucket (or directory), so the suite runs in parallel.
//!
//! The endpoints come from the environment that `scripts/test` sets up:
//! - `KESHLESS_TEST_DATABASE_URL`: an admin connection to the test server
//!   (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! - `KESHLESS_TEST_STORAGE_EMULATOR_HOST`: fake-gcs-server's `host:port`
//!   (required: a missing emulator fails the test, it is never skipped).
//!
//! Logs stay quiet unless `TEST_LOG` is set.
#![allow(dead_code)]

pub mod cluster;
pub mod pubsub;

/// Runs one behaviour test against both backends, as `NAME::gcs` (a fresh
/// fake-gcs-server bucket) and `NAME::file` (a fresh directory). The test is an
/// `async fn NAME(store: Arc<impl BlobStore + 'static>)` in the test crate's root.
#[allow(unused_macros)] // not every test binary runs backend suites
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn gcs() {
                super::common::init_test_logs();
                let store = super::common::gcs_store(false).await;
                super::$name(store).await;
            }

            #[tokio::test]
            async fn file() {
                super::common::init_test_logs();
                let (store, _directory) = super::common::file_store().await;
                super::$name(store).await;
            }
        }
    )*};
}
#[allow(unused_imports)] // not every test binary runs backend suites
pub(crate) use on_both_backends;

use std::sync::{Arc, Once};

use google_cloud_storage::http::buckets::insert::{BucketCreationConfig, InsertBucketParam, InsertBucketRequest};
use google_cloud_storage::http::buckets::Versioning;
use keshless_ops::storage::{FileStore, GcsStore, StoreLocation};

pub const DEFAULT_ADMIN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Turns on logs for a test run when `TEST_LOG` is set (to a `RUST_LOG` filter or `1`).
pub fn init_test_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let filter = if filter == "1" { "debug".to_owned() } else { filter };
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// Runs the `keshless-ops` binary with exactly `environment` (nothing inherited).
pub fn keshless_ops(arguments: &[&str], environment: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(arguments)
        .env_clear()
        .envs(environment.iter().copied())
        .output()
        .expect("run keshless-ops")
}

/// Keeps everything a tracing subscriber writes, for tests that read the
/// logs (`.with_writer(logs.clone())`).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }

    /// Every JSON line whose `message` is `message`.
    pub fn lines_with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("one JSON object per line"))
            .filter(|line| line["message"] == message)
            .collect()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}

/// [`keshless_ops`] with an environment of owned values.
pub fn keshless_ops_with(arguments: &[&str], environment: &[(&str, String)]) -> std::process::Output {
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    keshless_ops(arguments, &environment)
}

/// Command output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A local TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// A short random suffix for database, bucket and topic names.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

pub fn admin_database_url() -> String {
    std::env::var("KESHLESS_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_DATABASE_URL.to_owned())
}

/// A URL for `database` on the test server over its Unix socket, in the form
/// production reaches Cloud SQL by (`postgres://USER@/DATABASE?host=/dir`).
/// `scripts/test` finds the socket and a role that may use it.
pub fn socket_url(database: &str) -> String {
    let admin = std::env::var("KESHLESS_TEST_SOCKET_URL")
        .unwrap_or_else(|_| "postgres://postgres@/postgres?host=/var/run/postgresql".to_owned());
    assert!(
        admin.contains("@/postgres?"),
        "KESHLESS_TEST_SOCKET_URL should look like postgres://USER@/postgres?host=DIR, not {admin}"
    );
    admin.replacen("@/postgres?", &format!("@/{database}?"), 1)
}

pub fn storage_emulator_host() -> String {
    std::env::var("KESHLESS_TEST_STORAGE_EMULATOR_HOST").expect(
        "KESHLESS_TEST_STORAGE_EMULATOR_HOST is not set: run the suite with scripts/test, \
         which starts fake-gcs-server and exports it",
    )
}

async fn admin_client() -> tokio_postgres::Client {
    let url = admin_database_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot reach the test PostgreSQL server: {error} (run scripts/test)"));
    tokio::spawn(connection);
    client
}

/// A database created for one test and dropped when the value is dropped.
pub struct TestDatabase {
    pub name: String,
    /// Connection URL for the new database.
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = format!("keshless_test_{}", unique_suffix());
        admin_client()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let mut config: url::Url = admin_database_url().parse().expect("admin URL");
        config.set_path(&name);
        TestDatabase {
            name,
            url: config.to_string(),
        }
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context we can rely on; use a thread
        // with its own small runtime so the database is gone when the test ends.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime
                .block_on(async move {
                    admin_client()
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                })
                .map_err(std::io::Error::other)
        })
        .join();
    }
}

/// A new, empty bucket in fake-gcs-server, opened as a [`GcsStore`].
pub async fn gcs_store(versioned: bool) -> Arc<GcsStore> {
    gcs_store_with_prefix(versioned, "").await
}

pub async fn gcs_store_with_prefix(versioned: bool, prefix: &str) -> Arc<GcsStore> {
    let bucket = format!("keshless-test-{}", unique_suffix());
    let location = StoreLocation::gcs(&bucket, prefix).expect("bucket name");
    let host = storage_emulator_host();
    let store = GcsStore::connect(location, Some(&host))
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
            bucket: BucketCreationConfig {
                versioning: Some(Versioning { enabled: versioned }),
                ..Default::default()
            },
        })
        .await
        .unwrap_or_else(|error| panic!("create bucket {bucket} in fake-gcs-server at {host}: {error}"));
    Arc::new(store)
}

/// A new, empty directory opened as a [`FileStore`]; the directory is removed
/// when the returned guard is dropped.
pub async fn file_store() -> (Arc<FileStore>, tempfile::TempDir) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let location: StoreLocation = format!("file://{}", directory.path().display())
        .parse()
        .expect("file URL");
    let store = FileStore::open(location).await.expect("open file store");
    (Arc::new(store), directory)
}

/// Every key in a store (live objects), sorted.
pub async fn all_keys(store: &dyn keshless_ops::storage::BlobStore) -> std::collections::BTreeSet<String> {
    use futures::TryStreamExt;
    store
        .list("", keshless_ops::storage::ListOptions::default())
        .map_ok(|object| object.key)
        .try_collect()
        .await
        .expect("list store")
}

/// A `/proc/<process>/status` field in KiB (`process` = a pid or `self`),
/// e.g. `VmHWM` (peak RSS) or `VmRSS`.
pub fn process_status_kib(process: &str, field: &str) -> u64 {
    let path = format!("/proc/{process}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from {path}"))
}

/// Waits for the next second of the wall clock: backups are named to the
/// second, and two of one database in the same second are refused as
/// transient (production retries under a new name); tests that back up the
/// same database back to back start each in its own second.
pub async fn next_second() {
    let now = chrono::Utc::now();
    let rest = 1_000_000_000 - u64::from(now.timestamp_subsec_nanos());
    tokio::time::sleep(std::time::Duration::from_nanos(rest + 10_000_000)).await;
}
