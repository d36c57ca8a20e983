//! `postgres-backup` and `restore postgres` against a real PostgreSQL, real
//! `pg_dump`/`pg_restore`, fake-gcs-server and the file store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::TestDatabase;
use futures::stream::BoxStream;
use futures::StreamExt;
use keshless_ops::config::DatabaseUrl;
use keshless_ops::jobs::PostgresBackup;
use keshless_ops::postgres::archive;
use keshless_ops::postgres::layout::{self, Class};
use keshless_ops::postgres::process::pg_dump_program;
use keshless_ops::postgres::restore::{restore, select, Selection};
use keshless_ops::runtime::job::{Job, JobError, RunContext};
use keshless_ops::storage::{
    BlobStore, BlobStoreExt, ByteStream, ErrorClass, ListOptions, ObjectInfo, PutReport, StorageError, StoreLocation,
    WriteMode,
};
use tokio_util::sync::CancellationToken;

/// A database with several schemas and the types a payments platform uses.
const SCHEMA: &str = r#"
CREATE SCHEMA payments;
CREATE SCHEMA kyc;
CREATE TYPE payments.status AS ENUM ('pending', 'settled', 'refunded');
CREATE SEQUENCE payments.receipt_number START 1000;
CREATE TABLE payments.transfers (
    id bigserial PRIMARY KEY,
    amount numeric(14, 2) NOT NULL,
    status payments.status NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    details jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE kyc.documents (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    scan bytea NOT NULL
);
CREATE TABLE public.settings (key text PRIMARY KEY, value text);
CREATE TABLE "Odd ""Name""" (n int);
CREATE VIEW payments.settled AS SELECT id, amount FROM payments.transfers WHERE status = 'settled';
CREATE FUNCTION payments.total() RETURNS numeric LANGUAGE sql AS 'SELECT coalesce(sum(amount), 0) FROM payments.transfers';
INSERT INTO payments.transfers (amount, status, tags, details)
    SELECT (i % 1000) + 0.25, (ARRAY['pending','settled','refunded']::payments.status[])[1 + i % 3],
           ARRAY['t' || (i % 7), 'batch'], jsonb_build_object('i', i, 'note', repeat('x', i % 50))
    FROM generate_series(1, 3000) AS i;
INSERT INTO kyc.documents
    SELECT md5(i::text)::uuid, 'user-' || i, decode(repeat(md5(i::text), 8), 'hex')
    FROM generate_series(1, 200) AS i;
INSERT INTO public.settings VALUES ('currency', 'SZL'), ('fee', NULL);
INSERT INTO "Odd ""Name""" SELECT generate_series(1, 5);
SELECT nextval('payments.receipt_number') FROM generate_series(1, 42);
"#;

/// Per table: row count and an order-independent checksum of every row.
const FINGERPRINT: &str = r#"
SELECT n.nspname || '.' || c.relname,
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text,
       (xpath('/row/h/text()', query_to_xml(format('SELECT md5(coalesce(string_agg(t::text, ''|'' ORDER BY t::text), '''')) AS h FROM %I.%I t', n.nspname, c.relname), false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'keshless_ops') AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
"#;

async fn fingerprint(client: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    client
        .query(FINGERPRINT, &[])
        .await
        .expect("fingerprint")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

async fn populated_database() -> TestDatabase {
    let database = TestDatabase::create().await;
    database.connect().await.batch_execute(SCHEMA).await.expect("schema");
    database
}

/// A populated database and its backup (monthly copy skipped) under `key`,
/// selected as the latest: the start of every restore test.
async fn backed_up(store: &Arc<dyn BlobStore>, key: &str) -> (TestDatabase, String, layout::Manifest) {
    let source = populated_database().await;
    backup_job(Arc::clone(store), &source)
        .run(&context(key), params(serde_json::json!({"monthly": "skip"})))
        .await
        .expect("backup");
    let (id, manifest) = select(store.as_ref(), &Selection::Latest).await.unwrap();
    (source, id, manifest)
}

fn backup_job(store: Arc<dyn BlobStore>, database: &TestDatabase) -> PostgresBackup {
    PostgresBackup {
        backups: store,
        database_url: database.url.parse().expect("url"),
        databases: Vec::new(),
        pg_dump: pg_dump_program(),
        encoding: Default::default(),
        clock: Default::default(),
    }
}

fn context(key: &str) -> RunContext {
    RunContext {
        job: "postgres-backup",
        idempotency_key: key.to_owned(),
        message_id: None,
        source: "cli".into(),
        requested_by: None,
        attempt: 1,
        cancel: CancellationToken::new(),
    }
}

fn params(json: serde_json::Value) -> keshless_ops::jobs::postgres_backup::Params {
    serde_json::from_value(json).expect("params")
}

async fn all_keys(store: &dyn BlobStore) -> Vec<String> {
    store
        .list("", ListOptions::default())
        .map(|object| object.expect("list").key)
        .collect()
        .await
}

common::on_both_backends!(
    backup_and_restore_prove_equality,
    tampered_dumps_are_detected,
    list_show_and_verify_find_every_kind_of_damage
);

async fn backup_and_restore_prove_equality(store: Arc<impl BlobStore + 'static>) {
    let store: Arc<dyn BlobStore> = store;
    let source = populated_database().await;
    let outcome = backup_job(Arc::clone(&store), &source)
        .run(&context("postgres-backup:2026-11-26"), params(serde_json::json!({})))
        .await
        .expect("backup");
    assert_eq!(outcome.details["tables"], 4);
    assert_eq!(outcome.details["rows"], 3000 + 200 + 2 + 5);

    let listed = layout::list(store.as_ref(), None).await.expect("list");
    let daily: Vec<_> = listed.iter().filter(|backup| backup.class == Class::Daily).collect();
    assert_eq!(daily.len(), 1);
    assert!(daily[0].is_complete());
    let manifest = daily[0].manifest.as_ref().unwrap();
    assert_eq!(manifest.idempotency_key, "postgres-backup:2026-11-26");
    assert_eq!(manifest.database, source.name);
    assert!(manifest.server_version.starts_with("15") || !manifest.server_version.is_empty());
    // The first backup of the month is kept as the month's.
    assert!(listed
        .iter()
        .any(|backup| backup.class == Class::Monthly && backup.is_complete()));

    layout::verify(store.as_ref(), &daily[0].id).await.expect("verify");

    let target = TestDatabase::create().await;
    let (id, manifest) = select(store.as_ref(), &Selection::Latest).await.expect("select");
    let target_url: DatabaseUrl = target.url.parse().unwrap();
    let report = restore(store.as_ref(), &id, &manifest, &target_url, false, false)
        .await
        .expect("restore");
    assert!(report.sha256_matches);
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);

    let original = source.connect().await;
    let restored = target.connect().await;
    assert_eq!(fingerprint(&restored).await, fingerprint(&original).await);
    // Sequences, views and functions come back too.
    let sequence = |client: tokio_postgres::Client| async move {
        let row = client
            .query_one("SELECT last_value FROM payments.receipt_number", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert_eq!(sequence(target.connect().await).await, 1041);
    let view_rows: i64 = restored
        .query_one("SELECT count(*) FROM payments.settled", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(view_rows, 1000);
    let total: String = restored
        .query_one("SELECT payments.total()::text", &[])
        .await
        .unwrap()
        .get(0);
    let expected_total: String = original
        .query_one("SELECT payments.total()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, expected_total);

    // A non-empty target is refused without --clean, accepted with it.
    let refused = restore(store.as_ref(), &id, &manifest, &target_url, false, false)
        .await
        .expect_err("non-empty target");
    assert!(refused.to_string().contains("is not empty"), "{refused}");
    let again = restore(store.as_ref(), &id, &manifest, &target_url, false, true)
        .await
        .expect("restore with --clean");
    assert!(again.mismatches.is_empty());
}

async fn tampered_dumps_are_detected(store: Arc<impl BlobStore + 'static>) {
    let store: Arc<dyn BlobStore> = store;
    let (_source, id, manifest) = backed_up(&store, "k").await;
    let mut bytes = store.get_bytes(&manifest.dump, 1 << 30).await.unwrap().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    store
        .put_bytes(&manifest.dump, Bytes::from(bytes), WriteMode::Overwrite)
        .await
        .unwrap();
    let error = layout::verify(store.as_ref(), &id).await.expect_err("tampered");
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
    let target = TestDatabase::create().await;
    let error = restore(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        false,
        false,
    )
    .await
    .expect_err("tampered restore");
    assert!(format!("{error:#}").contains("checksum mismatch"), "{error:#}");
}

#[tokio::test]
async fn concurrent_writes_do_not_break_the_snapshot() {
    common::init_test_logs();
    let (store, _directory) = common::file_store().await;
    let store: Arc<dyn BlobStore> = store;
    let source = populated_database().await;
    source
        .connect()
        .await
        .batch_execute(
            "INSERT INTO payments.transfers (amount, status, details)
             SELECT 1, 'pending', jsonb_build_object('pad', repeat('y', 500)) FROM generate_series(1, 100000)",
        )
        .await
        .unwrap();
    let writer_stop = CancellationToken::new();
    let writer = {
        let client = source.connect().await;
        let stop = writer_stop.clone();
        tokio::spawn(async move {
            let mut inserted = 0u64;
            while !stop.is_cancelled() {
                client
                    .batch_execute(
                        "INSERT INTO payments.transfers (amount, status, details) VALUES (7, 'settled', '{}')",
                    )
                    .await
                    .unwrap();
                inserted += 1;
            }
            inserted
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    backup_job(Arc::clone(&store), &source)
        .run(&context("concurrent"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .expect("backup");
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer_stop.cancel();
    let inserted = writer.await.unwrap();
    assert!(inserted > 0, "the writer must have run during the backup");

    let (id, manifest) = select(store.as_ref(), &Selection::Latest).await.unwrap();
    let in_manifest = manifest
        .tables
        .iter()
        .find(|table| table.schema == "payments" && table.table == "transfers")
        .unwrap()
        .rows;
    let live: i64 = source
        .connect()
        .await
        .query_one("SELECT count(*) FROM payments.transfers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        live > in_manifest,
        "rows written after the snapshot are not in the manifest"
    );
    let target = TestDatabase::create().await;
    let report = restore(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        false,
        false,
    )
    .await
    .unwrap();
    assert!(
        report.mismatches.is_empty(),
        "restored rows match the snapshot: {:?}",
        report.mismatches
    );
}

/// A `pg_dump` stand-in: a shell script in a temporary directory.
fn fake_pg_dump(directory: &tempfile::TempDir, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = directory.path().join("pg_dump");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn a_pg_dump_killed_mid_stream_leaves_no_backup() {
    let (store, _directory) = common::file_store().await;
    let source = populated_database().await;
    let scripts = tempfile::tempdir().unwrap();
    let real = pg_dump_program();
    // Real output for 64 KiB, then the process dies by SIGKILL.
    let killed = fake_pg_dump(
        &scripts,
        &format!(
            "if [ \"$1\" = --version ]; then exec {real} --version; fi\n{real} \"$@\" | head -c 65536\nkill -9 $$"
        ),
    );
    let job = PostgresBackup {
        pg_dump: killed,
        encoding: Default::default(),
        ..backup_job(store.clone(), &source)
    };
    let error = job
        .run(&context("killed"), params(serde_json::json!({})))
        .await
        .expect_err("a killed pg_dump fails the job");
    assert!(matches!(error, JobError::Transient(_)), "{error}");
    assert!(error.to_string().contains("killed by signal 9"), "{error}");
    assert!(all_keys(store.as_ref()).await.is_empty(), "nothing may be visible");
}

#[tokio::test]
async fn an_old_pg_dump_is_a_permanent_error_naming_both_versions() {
    let (store, _directory) = common::file_store().await;
    let source = populated_database().await;
    let scripts = tempfile::tempdir().unwrap();
    let old = fake_pg_dump(&scripts, "echo 'pg_dump (PostgreSQL) 12.18'");
    let job = PostgresBackup {
        pg_dump: old,
        encoding: Default::default(),
        ..backup_job(store.clone(), &source)
    };
    let error = job
        .run(&context("old"), params(serde_json::json!({})))
        .await
        .expect_err("old");
    assert!(matches!(error, JobError::Permanent(_)), "{error}");
    let text = error.to_string();
    assert!(text.contains("12.18") && text.contains("for server 15"), "{text}");
    assert!(all_keys(store.as_ref()).await.is_empty());
}

#[tokio::test]
async fn unreachable_database_is_transient_and_unknown_role_or_database_permanent() {
    let (store, _directory) = common::file_store().await;
    let port = common::free_port();
    let cases = [
        (format!("postgres://postgres@127.0.0.1:{port}/app"), false),
        ("postgres://no_such_role_x@127.0.0.1:5432/postgres".to_owned(), true),
        ("postgres://postgres@127.0.0.1:5432/no_such_database_x".to_owned(), true),
    ];
    for (url, permanent) in cases {
        let job = PostgresBackup {
            backups: store.clone(),
            database_url: url.parse().unwrap(),
            databases: Vec::new(),
            pg_dump: pg_dump_program(),
            encoding: Default::default(),
            clock: Default::default(),
        };
        let error = job
            .run(&context("x"), params(serde_json::json!({})))
            .await
            .expect_err(&url);
        assert_eq!(matches!(error, JobError::Permanent(_)), permanent, "{url}: {error}");
    }
    assert!(all_keys(store.as_ref()).await.is_empty());
}

/// Fails uploads after a number of bytes, like a storage outage mid-upload.
#[derive(Debug)]
struct FailingStore {
    inner: Arc<dyn BlobStore>,
    fail_after: u64,
}

#[async_trait]
impl BlobStore for FailingStore {
    fn location(&self) -> &StoreLocation {
        self.inner.location()
    }
    fn supports_versions(&self) -> bool {
        self.inner.supports_versions()
    }
    async fn put(&self, key: &str, mut body: ByteStream, _mode: WriteMode) -> Result<PutReport, StorageError> {
        let mut seen = 0u64;
        while let Some(chunk) = body.next().await {
            seen += chunk.map(|chunk| chunk.len() as u64).unwrap_or(0);
            if seen >= self.fail_after {
                break;
            }
        }
        Err(StorageError::Backend {
            location: self.location().to_string(),
            operation: "create",
            key: key.to_owned(),
            class: ErrorClass::Transient,
            status: Some(503),
            message: "Service Unavailable".into(),
        })
    }
    async fn get(&self, key: &str, generation: Option<i64>) -> Result<ByteStream, StorageError> {
        self.inner.get(key, generation).await
    }
    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        self.inner.stat(key).await
    }
    fn list<'a>(&'a self, prefix: &'a str, options: ListOptions) -> BoxStream<'a, Result<ObjectInfo, StorageError>> {
        self.inner.list(prefix, options)
    }
    async fn copy(
        &self,
        from: &str,
        generation: Option<i64>,
        to: &str,
        mode: WriteMode,
    ) -> Result<ObjectInfo, StorageError> {
        self.inner.copy(from, generation, to, mode).await
    }
    async fn delete(&self, key: &str, generation: Option<i64>) -> Result<(), StorageError> {
        self.inner.delete(key, generation).await
    }
}

#[tokio::test]
async fn a_storage_failure_mid_upload_is_transient_and_leaves_no_manifest() {
    let (inner, _directory) = common::file_store().await;
    let store = Arc::new(FailingStore {
        inner: inner.clone(),
        fail_after: 32 * 1024,
    });
    let source = populated_database().await;
    let job = PostgresBackup {
        backups: store,
        database_url: source.url.parse().unwrap(),
        databases: Vec::new(),
        pg_dump: pg_dump_program(),
        encoding: Default::default(),
        clock: Default::default(),
    };
    let error = job
        .run(&context("x"), params(serde_json::json!({})))
        .await
        .expect_err("503");
    assert!(matches!(error, JobError::Transient(_)), "{error}");
    assert!(error.to_string().contains("Service Unavailable"), "{error}");
    assert!(all_keys(inner.as_ref()).await.is_empty());
    // pg_dump did not linger after the upload gave up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = std::process::Command::new("pgrep")
        .args(["-f", &format!("pg_dump.*{}", source.name)])
        .output()
        .map(|output| !output.stdout.is_empty())
        .unwrap_or(false);
    assert!(!running, "pg_dump must be killed when the upload fails");
}

#[tokio::test]
async fn monthly_copies_follow_the_mode() {
    let (store, _directory) = common::file_store().await;
    let store: Arc<dyn BlobStore> = store;
    let source = populated_database().await;
    let job = backup_job(Arc::clone(&store), &source);
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let run = |mode: &str| {
        let job = &job;
        let mode = mode.to_owned();
        let key = format!("{mode}-{}", runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        async move {
            tokio::time::sleep(Duration::from_millis(1100)).await; // distinct timestamps
            job.run(&context(&key), params(serde_json::json!({ "monthly": mode })))
                .await
                .expect("backup")
        }
    };
    let monthly_count = || async {
        layout::list(store.as_ref(), Some(Class::Monthly))
            .await
            .unwrap()
            .iter()
            .filter(|backup| backup.is_complete())
            .count()
    };
    assert!(run("auto").await.details["monthly"].is_string());
    assert_eq!(monthly_count().await, 1);
    assert!(
        run("auto").await.details["monthly"].is_null(),
        "the month already has one"
    );
    assert!(run("skip").await.details["monthly"].is_null());
    assert_eq!(monthly_count().await, 1);
    assert!(run("force").await.details["monthly"].is_string());
    assert_eq!(monthly_count().await, 2);
    assert_eq!(
        layout::list(store.as_ref(), Some(Class::Daily)).await.unwrap().len(),
        4,
        "every run made its own daily backup"
    );
}

#[tokio::test]
async fn listing_flags_incomplete_backups() {
    let (store, _directory) = common::file_store().await;
    store
        .put_bytes(
            "postgresql/daily/2026-11-20/app-20261120T020000Z.dump",
            Bytes::from_static(b"partial"),
            WriteMode::CreateOnly,
        )
        .await
        .unwrap();
    let listed = layout::list(store.as_ref(), None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].is_complete());
    let error = select(store.as_ref(), &Selection::Latest)
        .await
        .expect_err("no complete backup");
    assert!(error.to_string().contains("no complete daily backup"), "{error}");
}

#[tokio::test]
async fn restore_command_end_to_end() {
    let (store, directory) = common::file_store().await;
    let source = populated_database().await;
    backup_job(store.clone(), &source)
        .run(&context("cli"), params(serde_json::json!({})))
        .await
        .unwrap();
    let target_name = format!("keshless_restore_{}", common::unique_suffix());
    let mut target_url: url::Url = source.url.parse().unwrap();
    target_url.set_path(&target_name);
    let backup_store = format!("file://{}", directory.path().display());
    let command = |arguments: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
            .args(arguments)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("BACKUP_STORE", &backup_store)
            .output()
            .unwrap()
    };
    let target = target_url.to_string();
    let output = command(&[
        "restore",
        "postgres",
        "--latest",
        "--target-url",
        &target,
        "--create-db",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("SHA-256 verified") && stdout.contains("4 tables with exactly the row counts"),
        "{stdout}"
    );
    // Again without --clean: refused, and says how to proceed.
    let output = command(&["restore", "postgres", "--latest", "--target-url", &target]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--clean"));
    // Choosing a backup is required.
    let output = command(&["restore", "postgres", "--target-url", &target]);
    assert_eq!(output.status.code(), Some(2));
    let listed = command(&["backups", "list", "postgres", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let verified = command(&["backups", "verify", &id]);
    assert!(verified.status.success());
    assert!(String::from_utf8_lossy(&verified.stdout).contains("OK"));
    // Clean up the database the command created.
    let admin = source.connect().await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {target_name} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn run_command_backs_up_once_per_key() {
    let source = populated_database().await;
    let directory = tempfile::tempdir().unwrap();
    let backup_store = format!("file://{}", directory.path().display());
    let command = |arguments: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
            .args(arguments)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("JOB_SECRET", "run-command-secret")
            .env("SECRETS_ENCRYPTION_KEY", "run-command-key-0123456789abcdef0123")
            .env("DATABASE_URL", &source.url)
            .env("GCS_BACKUPS_BUCKET", "keshless-backups")
            .env("GCS_DOCUMENTS_BUCKET", "keshless-documents")
            .env("SECRETS_ENV_PREFIX", "KESHLESS_TEST_")
            .env("BACKUP_STORE", &backup_store)
            .output()
            .unwrap()
    };
    let first = command(&["run", "postgres-backup", "--key", "manual-1", "--param", "monthly=skip"]);
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.starts_with("succeeded (manual-1): daily/"), "{stdout}");
    let second = command(&["run", "postgres-backup", "--key", "manual-1"]);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("already succeeded (manual-1): not run again"));
    let store = keshless_ops::storage::FileStore::open(backup_store.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        layout::list(&store, None).await.unwrap().len(),
        1,
        "one backup, not two"
    );
    let bad = command(&["run", "postgres-backup", "--param", "monthly=sometimes"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown variant `sometimes`"));
}

/// What `run postgres-backup` and `restore postgres` need, for a source at
/// `database_url` and backups under `backup_store`.
fn cli_environment(database_url: &str, backup_store: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", std::env::var("PATH").unwrap()),
        ("JOB_SECRET", "cli-secret".to_owned()),
        (
            "SECRETS_ENCRYPTION_KEY",
            "cli-key-0123456789abcdef0123456789abcd".to_owned(),
        ),
        ("DATABASE_URL", database_url.to_owned()),
        ("GCS_BACKUPS_BUCKET", "keshless-backups".to_owned()),
        ("GCS_DOCUMENTS_BUCKET", "keshless-documents".to_owned()),
        ("SECRETS_ENV_PREFIX", "KESHLESS_TEST_".to_owned()),
        ("BACKUP_STORE", backup_store.to_owned()),
    ]
}

/// Backs `source` up with `run postgres-backup --key KEY`, reaching it by
/// `source_url`, then restores it with `restore postgres --latest
/// --create-db` into `target_name` at `target_url` (dropped afterwards):
/// both must succeed and the restore must prove the row counts.
async fn backup_and_restore_through_the_cli(
    source: &TestDatabase,
    source_url: &str,
    (target_name, target_url): (&str, &str),
    key: &str,
) {
    let directory = tempfile::tempdir().unwrap();
    let backup_store = format!("file://{}", directory.path().display());
    let environment = cli_environment(source_url, &backup_store);
    let backup = common::keshless_ops_with(
        &["run", "postgres-backup", "--key", key, "--param", "monthly=skip"],
        &environment,
    );
    let stdout = common::text(&backup.stdout);
    assert!(backup.status.success(), "{stdout}{}", common::text(&backup.stderr));
    assert!(stdout.starts_with(&format!("succeeded ({key}): daily/")), "{stdout}");
    let restored = common::keshless_ops_with(
        &[
            "restore",
            "postgres",
            "--latest",
            "--target-url",
            target_url,
            "--create-db",
        ],
        &environment,
    );
    let stdout = common::text(&restored.stdout);
    let stderr = common::text(&restored.stderr);
    source
        .connect()
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {target_name} WITH (FORCE)"))
        .await
        .unwrap();
    assert!(restored.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("SHA-256 verified") && stdout.contains("4 tables with exactly the row counts"),
        "{stdout}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("cli-key-"),
        "no secret in the output"
    );
    // The ledger knows the key: a second run is a duplicate.
    let again = common::keshless_ops_with(&["run", "postgres-backup", "--key", key], &environment);
    assert!(common::text(&again.stdout).contains(&format!("already succeeded ({key})")));
}

/// The ledger, pg_dump, pg_restore and `--create-db` over a Unix socket URL,
/// the form production reaches Cloud SQL by (an empty host, `?host=/dir`).
#[tokio::test]
async fn backup_and_restore_through_a_unix_socket_url() {
    let source = populated_database().await;
    let target_name = format!("keshless_restore_{}", common::unique_suffix());
    backup_and_restore_through_the_cli(
        &source,
        &common::socket_url(&source.name),
        (&target_name, &common::socket_url(&target_name)),
        "socket-1",
    )
    .await;
}

/// `sslmode` as libpq means it, on our own connections and pg_dump's:
/// `require` gets TLS (or fails), `disable` never asks, the default uses TLS
/// when the server offers it; a Unix socket never does.
#[tokio::test]
async fn connections_follow_the_urls_sslmode() {
    let database = TestDatabase::create().await;
    let with = |mode: &str| format!("{}?sslmode={mode}", database.url);
    let cases = [
        (with("require"), true),
        (with("disable"), false),
        (database.url.clone(), true),
        (common::socket_url(&database.name), false),
    ];
    for (url, encrypted) in cases {
        let url: DatabaseUrl = url.parse().unwrap();
        let client = keshless_ops::postgres::connect(url.postgres_config())
            .await
            .unwrap_or_else(|error| panic!("{url}: {error}"));
        let ssl: bool = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(ssl, encrypted, "{url}");
    }
}

/// The ledger, the snapshot connection, pg_dump, pg_restore and the row
/// counts with `sslmode=require` in every URL.
#[tokio::test]
async fn backup_and_restore_with_sslmode_require() {
    let source = populated_database().await;
    let target_name = format!("keshless_restore_{}", common::unique_suffix());
    let mut target_url: url::Url = source.url.parse().unwrap();
    target_url.set_path(&target_name);
    target_url.set_query(Some("sslmode=require"));
    backup_and_restore_through_the_cli(
        &source,
        &format!("{}?sslmode=require", source.url),
        (&target_name, target_url.as_str()),
        "tls-1",
    )
    .await;
}

#[tokio::test]
async fn monthly_backups_stay_restorable_after_the_daily_is_deleted() {
    let (store, _directory) = common::file_store().await;
    let store: Arc<dyn BlobStore> = store;
    let source = populated_database().await;
    backup_job(Arc::clone(&store), &source)
        .run(&context("monthly"), params(serde_json::json!({})))
        .await
        .unwrap();
    let listed = layout::list(store.as_ref(), None).await.unwrap();
    let daily = listed.iter().find(|backup| backup.class == Class::Daily).unwrap();
    let monthly = listed.iter().find(|backup| backup.class == Class::Monthly).unwrap();
    // What retention will do after 30 days.
    store
        .delete(&daily.manifest.as_ref().unwrap().dump, None)
        .await
        .unwrap();
    store.delete(&layout::manifest_key(&daily.base), None).await.unwrap();
    layout::verify(store.as_ref(), &monthly.id)
        .await
        .expect("the monthly copy verifies on its own");
    let (id, manifest) = select(store.as_ref(), &Selection::Id(monthly.id.clone()))
        .await
        .unwrap();
    assert_eq!(manifest.dump, layout::dump_key_for(&monthly.base, &manifest.encoding));
    let target = TestDatabase::create().await;
    let report = restore(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        false,
        false,
    )
    .await
    .expect("restore the monthly copy");
    assert!(report.mismatches.is_empty());
}

#[tokio::test]
async fn a_retry_after_a_complete_backup_does_not_dump_again() {
    let (store, _directory) = common::file_store().await;
    let store: Arc<dyn BlobStore> = store;
    let source = populated_database().await;
    let job = backup_job(Arc::clone(&store), &source);
    job.run(&context("retried-key"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    // The database is down for the retry (a failover, maintenance): the
    // backup is complete, so finishing it does not need the database.
    let port = common::free_port();
    let database_down = PostgresBackup {
        database_url: format!("postgres://postgres@127.0.0.1:{port}/{}", source.name)
            .parse()
            .unwrap(),
        ..backup_job(Arc::clone(&store), &source)
    };
    let again = database_down
        .run(&context("retried-key"), params(serde_json::json!({})))
        .await
        .expect("the monthly step needs only storage");
    assert_eq!(again.details["resumed"], true);
    assert!(
        again.details["monthly"].is_string(),
        "the pending monthly step is finished"
    );
    assert_eq!(layout::list(store.as_ref(), Some(Class::Daily)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn counting_sessions_turn_off_jit_and_optionally_parallel_workers() {
    let database = TestDatabase::create().await;
    let url: DatabaseUrl = database.url.parse().unwrap();
    for (serial, workers) in [(true, "0"), (false, "2")] {
        let client = keshless_ops::postgres::connect(url.postgres_config()).await.unwrap();
        client
            .batch_execute("SET max_parallel_workers_per_gather = 2")
            .await
            .unwrap();
        keshless_ops::postgres::quiet_counting(&client, serial).await.unwrap();
        let show = |name: &'static str| {
            let client = &client;
            async move {
                client
                    .query_one(&format!("SHOW {name}"), &[])
                    .await
                    .unwrap()
                    .get::<_, String>(0)
            }
        };
        assert_eq!(show("jit").await, "off");
        assert_eq!(
            show("max_parallel_workers_per_gather").await,
            workers,
            "serial: {serial}"
        );
    }
}

#[tokio::test]
async fn a_clean_restore_reports_tables_the_backup_does_not_have() {
    let (store, _directory) = common::file_store().await;
    let source = populated_database().await;
    backup_job(store.clone(), &source)
        .run(&context("extra"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    let target = TestDatabase::create().await;
    target
        .connect()
        .await
        .batch_execute("CREATE TABLE public.leftover (n int); INSERT INTO public.leftover VALUES (1)")
        .await
        .unwrap();
    let (id, manifest) = select(store.as_ref(), &Selection::Latest).await.unwrap();
    let report = restore(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        false,
        true,
    )
    .await
    .unwrap();
    assert_eq!(report.mismatches.len(), 1, "{:?}", report.mismatches);
    assert_eq!(report.mismatches[0].table, "public.leftover");
    assert_eq!(report.mismatches[0].expected, None);
}

// ---- restore postgres --jobs N (parallel pg_restore through a verified temporary file)

use keshless_ops::postgres::restore::{restore_with, validate_jobs, RestoreOptions};

/// A database name that does not exist yet, dropped (if it came to exist) when the guard is.
fn database_to_create() -> TestDatabase {
    let name = format!("keshless_test_{}", common::unique_suffix());
    let mut url: url::Url = common::admin_database_url().parse().unwrap();
    url.set_path(&name);
    TestDatabase {
        name,
        url: url.to_string(),
    }
}

async fn database_exists(name: &str) -> bool {
    let (client, connection) = tokio_postgres::connect(&common::admin_database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let found: i64 = client
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    found == 1
}

async fn table_count(database: &TestDatabase) -> i64 {
    database
        .connect()
        .await
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn files_in(directory: &tempfile::TempDir) -> Vec<String> {
    std::fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn parallel(jobs: u32, temp_dir: &tempfile::TempDir) -> RestoreOptions {
    RestoreOptions {
        jobs,
        temp_dir: Some(temp_dir.path().to_owned()),
        ..RestoreOptions::default()
    }
}

common::on_both_backends!(
    parallel_restore_proves_equality,
    a_tampered_dump_fails_a_parallel_restore_before_the_target_is_touched
);

async fn parallel_restore_proves_equality(store: Arc<impl BlobStore + 'static>) {
    let store: Arc<dyn BlobStore> = store;
    let (source, id, manifest) = backed_up(&store, "parallel").await;
    let temp_dir = tempfile::tempdir().unwrap();

    // Into an existing empty database.
    let target = TestDatabase::create().await;
    let report = restore_with(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        &parallel(2, &temp_dir),
    )
    .await
    .expect("parallel restore");
    assert!(report.sha256_matches);
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(report.tables, 4);
    let original = fingerprint(&source.connect().await).await;
    assert_eq!(fingerprint(&target.connect().await).await, original);
    assert!(files_in(&temp_dir).is_empty(), "the temporary dump is removed");

    // Into a database it creates, with more jobs than tables.
    let created = database_to_create();
    let options = RestoreOptions {
        create_database: true,
        ..parallel(8, &temp_dir)
    };
    let report = restore_with(store.as_ref(), &id, &manifest, &created.url.parse().unwrap(), &options)
        .await
        .expect("parallel restore into a new database");
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(fingerprint(&created.connect().await).await, original);
    assert!(files_in(&temp_dir).is_empty());

    // A non-empty target is refused before anything is downloaded; --clean replaces.
    let refused = restore_with(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        &parallel(2, &temp_dir),
    )
    .await
    .expect_err("non-empty target");
    assert!(refused.to_string().contains("is not empty"), "{refused}");
    let cleaned = RestoreOptions {
        clean: true,
        ..parallel(2, &temp_dir)
    };
    let report = restore_with(store.as_ref(), &id, &manifest, &target.url.parse().unwrap(), &cleaned)
        .await
        .expect("parallel restore with --clean");
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(fingerprint(&target.connect().await).await, original);
    assert!(files_in(&temp_dir).is_empty());
}

async fn a_tampered_dump_fails_a_parallel_restore_before_the_target_is_touched(store: Arc<impl BlobStore + 'static>) {
    let store: Arc<dyn BlobStore> = store;
    let (_source, id, manifest) = backed_up(&store, "tampered-parallel").await;
    let mut bytes = store.get_bytes(&manifest.dump, 1 << 30).await.unwrap().to_vec();
    // Late in the file: the table data, after the schema pg_restore would already have run.
    let late = bytes.len() * 9 / 10;
    bytes[late] ^= 0x01;
    store
        .put_bytes(&manifest.dump, Bytes::from(bytes), WriteMode::Overwrite)
        .await
        .unwrap();
    let temp_dir = tempfile::tempdir().unwrap();

    let target = TestDatabase::create().await;
    let error = restore_with(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        &parallel(2, &temp_dir),
    )
    .await
    .expect_err("tampered");
    let message = format!("{error:#}");
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(message.contains("nothing was restored"), "{message}");
    assert_eq!(table_count(&target).await, 0, "the target was not touched");
    assert!(
        files_in(&temp_dir).is_empty(),
        "the temporary dump is removed on failure too"
    );

    let never_created = database_to_create();
    let options = RestoreOptions {
        create_database: true,
        ..parallel(2, &temp_dir)
    };
    let error = restore_with(
        store.as_ref(),
        &id,
        &manifest,
        &never_created.url.parse().unwrap(),
        &options,
    )
    .await
    .expect_err("tampered");
    assert!(format!("{error:#}").contains("checksum mismatch"), "{error:#}");
    assert!(
        !database_exists(&never_created.name).await,
        "no database is created for a dump that fails its checksum"
    );
    assert!(files_in(&temp_dir).is_empty());
}

/// A `pg_restore` that restores everything, then fails, as a crash late in a
/// parallel restore would.
fn failing_pg_restore(scripts: &tempfile::TempDir) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = scripts.path().join("pg_restore");
    let real = keshless_ops::postgres::process::pg_restore_program();
    std::fs::write(
        &path,
        format!("#!/bin/sh\n{real} \"$@\" || exit $?\necho 'pg_restore: error: worker process crashed' >&2\nexit 1\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn a_failed_parallel_restore_drops_the_database_it_created_and_warns_otherwise() {
    let (store, _directory) = common::file_store().await;
    let (_source, id, manifest) = backed_up(&(store.clone() as Arc<dyn BlobStore>), "failing").await;
    let temp_dir = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let pg_restore = failing_pg_restore(&scripts);

    let created = database_to_create();
    let options = RestoreOptions {
        create_database: true,
        pg_restore: pg_restore.clone(),
        ..parallel(2, &temp_dir)
    };
    let error = restore_with(store.as_ref(), &id, &manifest, &created.url.parse().unwrap(), &options)
        .await
        .expect_err("pg_restore failed");
    let message = format!("{error:#}");
    assert!(message.contains("was dropped again"), "{message}");
    assert!(
        message.contains("worker process crashed"),
        "pg_restore's stderr is in the error: {message}"
    );
    assert!(
        !database_exists(&created.name).await,
        "the half-restored database is gone"
    );
    assert!(files_in(&temp_dir).is_empty());

    let existing = TestDatabase::create().await;
    let options = RestoreOptions {
        pg_restore,
        ..parallel(2, &temp_dir)
    };
    let error = restore_with(store.as_ref(), &id, &manifest, &existing.url.parse().unwrap(), &options)
        .await
        .expect_err("pg_restore failed");
    let message = format!("{error:#}");
    assert!(message.contains("may be partly restored"), "{message}");
    assert!(message.contains("--clean"), "{message}");
    assert!(
        database_exists(&existing.name).await,
        "a database it did not create is left alone"
    );
    assert!(files_in(&temp_dir).is_empty());
}

#[tokio::test]
async fn jobs_outside_one_to_sixty_four_are_rejected() {
    for (jobs, accepted) in [
        (0, false),
        (1, true),
        (2, true),
        (64, true),
        (65, false),
        (u32::MAX, false),
    ] {
        let result = validate_jobs(jobs);
        assert_eq!(result.is_ok(), accepted, "{jobs}");
        if let Err(problem) = result {
            assert!(problem.contains("between 1 and 64"), "{problem}");
        }
    }
    // The library refuses too, before touching anything.
    let (store, _directory) = common::file_store().await;
    let (_source, id, manifest) = backed_up(&(store.clone() as Arc<dyn BlobStore>), "jobs").await;
    let temp_dir = tempfile::tempdir().unwrap();
    let target = TestDatabase::create().await;
    let error = restore_with(
        store.as_ref(),
        &id,
        &manifest,
        &target.url.parse().unwrap(),
        &parallel(0, &temp_dir),
    )
    .await
    .expect_err("--jobs 0");
    assert!(error.to_string().contains("between 1 and 64"), "{error}");
    // And the command line, as a usage error.
    for bad in ["0", "65", "many"] {
        let output = common::keshless_ops(
            &[
                "restore",
                "postgres",
                "--latest",
                "--target-url",
                &target.url,
                "--jobs",
                bad,
            ],
            &[("PATH", &std::env::var("PATH").unwrap())],
        );
        assert_eq!(output.status.code(), Some(2), "--jobs {bad}");
        let stderr = common::text(&output.stderr);
        assert!(
            stderr.contains("--jobs") && stderr.contains("1") && stderr.contains("64"),
            "{stderr}"
        );
    }
}

#[test]
fn free_space_is_checked_against_the_dump_size() {
    use keshless_ops::postgres::restore::free_space_problem;
    let directory = std::path::Path::new("/var/tmp");
    assert_eq!(free_space_problem(directory, 100, 100), None);
    assert_eq!(free_space_problem(directory, 1 << 40, 1 << 30), None);
    let problem = free_space_problem(directory, 99, 100).expect("too little");
    assert!(problem.contains("/var/tmp") && problem.contains("100 bytes") && problem.contains("99 are free"));
    assert!(
        problem.contains("--temp-dir") && problem.contains("--jobs 1"),
        "{problem}"
    );
}

#[tokio::test]
async fn restore_command_with_jobs_end_to_end() {
    let (store, directory) = common::file_store().await;
    let source = populated_database().await;
    backup_job(store.clone(), &source)
        .run(&context("cli-jobs"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    let target = database_to_create();
    let temp_dir = tempfile::tempdir().unwrap();
    let backup_store = format!("file://{}", directory.path().display());
    let path = std::env::var("PATH").unwrap();
    let temp = temp_dir.path().display().to_string();
    let output = common::keshless_ops(
        &[
            "restore",
            "postgres",
            "--latest",
            "--target-url",
            &target.url,
            "--create-db",
            "--jobs",
            "3",
            "--temp-dir",
            &temp,
            "--json",
        ],
        &[("PATH", &path), ("BACKUP_STORE", &backup_store)],
    );
    let stdout = common::text(&output.stdout);
    let stderr = common::text(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints only the report");
    assert_eq!(report["mismatches"], serde_json::json!([]));
    assert_eq!(report["tables"], 4);
    // Not a terminal: no progress drawing, just the one announcement line.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("with 3 parallel jobs"), "{stderr}");
    assert!(files_in(&temp_dir).is_empty());
    assert_eq!(
        fingerprint(&target.connect().await).await,
        fingerprint(&source.connect().await).await
    );
}

#[tokio::test]
async fn restore_shows_progress_on_a_terminal() {
    let (store, directory) = common::file_store().await;
    let source = populated_database().await;
    backup_job(store.clone(), &source)
        .run(&context("terminal"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    let backup_store = format!("file://{}", directory.path().display());
    let path = std::env::var("PATH").unwrap();
    let binary = env!("CARGO_BIN_EXE_keshless-ops");
    for (jobs, phases) in [
        ("1", &["checking the dump at rest", "restoring", "counting rows"][..]),
        (
            "2",
            &["downloading", "restoring with 2 parallel jobs", "counting rows"][..],
        ),
    ] {
        let target = database_to_create();
        // util-linux `script` runs the command on a pseudo-terminal.
        let command = format!(
            "{binary} restore postgres --latest --create-db --jobs {jobs} --target-url {}",
            target.url
        );
        let output = std::process::Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .env_clear()
            .env("PATH", &path)
            // Without TERM (or with TERM=dumb) nothing is drawn.
            .env("TERM", "xterm")
            .env("BACKUP_STORE", &backup_store)
            .output()
            .expect("run script(1)");
        let terminal = common::text(&output.stdout);
        assert!(output.status.success(), "{terminal}");
        for phase in phases {
            assert!(terminal.contains(phase), "phase {phase:?} not shown: {terminal}");
        }
        assert!(terminal.contains("SHA-256 verified"), "{terminal}");
    }
}

#[tokio::test]
async fn ctrl_c_stops_a_parallel_restore_with_its_workers_and_removes_the_temporary_file() {
    use std::os::unix::fs::PermissionsExt;
    let (store, directory) = common::file_store().await;
    let source = populated_database().await;
    backup_job(store.clone(), &source)
        .run(&context("interrupted"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    // A pg_restore whose "worker" (a child in its process group) runs until killed.
    let scripts = tempfile::tempdir().unwrap();
    let marker = scripts.path().join("started");
    let worker_marker = scripts.path().join("worker");
    let pg_restore = scripts.path().join("pg_restore");
    std::fs::write(
        &pg_restore,
        format!(
            "#!/bin/sh\nsleep 60 &\necho $! > {worker}\necho $$ > {marker}\nwait\n",
            worker = worker_marker.display(),
            marker = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pg_restore, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = database_to_create();
    let temp_dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args([
            "restore",
            "postgres",
            "--latest",
            "--create-db",
            "--jobs",
            "2",
            "--target-url",
            &target.url,
            "--temp-dir",
            &temp_dir.path().display().to_string(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("BACKUP_STORE", format!("file://{}", directory.path().display()))
        .env("PG_RESTORE", &pg_restore)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !(marker.exists() && worker_marker.exists()) {
        assert!(started.elapsed() < Duration::from_secs(30), "pg_restore never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        files_in(&temp_dir).len(),
        1,
        "the verified dump waits in the temporary directory"
    );
    let worker: u32 = std::fs::read_to_string(&worker_marker).unwrap().trim().parse().unwrap();
    // Running: neither gone nor a zombie waiting for a reaper (in a container PID 1 may never reap it).
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    assert!(running(worker));
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let output = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert_eq!(output.0.code(), Some(130), "{}", output.1);
    assert!(output.1.contains("interrupted"), "{}", output.1);
    assert!(
        files_in(&temp_dir).is_empty(),
        "the temporary dump is removed on Ctrl-C"
    );
    let stopped = std::time::Instant::now();
    while running(worker) {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "pg_restore's worker processes are stopped with it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- Issue 19: zstd in the worker, age encryption, failing closed ------------

/// An age key pair: the identity in a file (as `age-keygen` writes it) and
/// loaded, and the public key.
struct AgeKey {
    file: tempfile::NamedTempFile,
    public: String,
    identities: Arc<archive::Identities>,
}

fn age_key() -> AgeKey {
    let (identity, public) = archive::generate_identity();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), identity.as_bytes()).unwrap();
    AgeKey {
        identities: Arc::new(archive::Identities::parse(&identity, "test key").unwrap()),
        file,
        public,
    }
}

fn encoded_backup_job(
    store: Arc<dyn BlobStore>,
    database: &TestDatabase,
    compression: &str,
    recipient: Option<&str>,
) -> PostgresBackup {
    PostgresBackup {
        encoding: archive::EncodeSettings {
            compression: compression.parse().unwrap(),
            recipients: recipient.map(|key| archive::Recipients::parse(key).unwrap()),
            threads: 2,
        },
        ..backup_job(store, database)
    }
}

/// The complete daily backup `key` made.
async fn backup_of(store: &dyn BlobStore, key: &str) -> (String, layout::Manifest) {
    let listed = layout::list(store, Some(Class::Daily)).await.unwrap();
    let backup = listed
        .into_iter()
        .find(|backup| {
            backup
                .manifest
                .as_ref()
                .is_some_and(|manifest| manifest.idempotency_key == key)
        })
        .expect("the backup exists");
    assert!(backup.is_complete());
    (backup.id, backup.manifest.unwrap())
}

fn with_identities(identities: Option<Arc<archive::Identities>>) -> RestoreOptions {
    RestoreOptions {
        identities,
        ..RestoreOptions::default()
    }
}

common::on_both_backends!(every_compression_and_encryption_round_trips);

async fn every_compression_and_encryption_round_trips(store: Arc<impl BlobStore + 'static>) {
    let store: Arc<dyn BlobStore> = store;
    let source = populated_database().await;
    let original = fingerprint(&source.connect().await).await;
    let key = age_key();
    for compression in ["zstd:3", "gzip", "none"] {
        for encrypted in [false, true] {
            let case = format!("{compression} encrypted={encrypted}");
            let idempotency_key = format!("{compression}-{encrypted}");
            common::next_second().await;
            encoded_backup_job(
                Arc::clone(&store),
                &source,
                compression,
                encrypted.then_some(key.public.as_str()),
            )
            .run(
                &context(&idempotency_key),
                params(serde_json::json!({"monthly": "skip"})),
            )
            .await
            .unwrap_or_else(|error| panic!("{case}: {error}"));
            let (id, manifest) = backup_of(store.as_ref(), &idempotency_key).await;
            assert_eq!(manifest.version, 3);
            let suffix = match (compression, encrypted) {
                ("zstd:3", false) => ".dump.zst",
                ("zstd:3", true) => ".dump.zst.age",
                (_, false) => ".dump",
                (_, true) => ".dump.age",
            };
            assert!(manifest.dump.ends_with(suffix), "{case}: {}", manifest.dump);
            let archive = manifest.encoding.archive.clone().expect("the archive's digest");
            let stored = store.get_bytes(&manifest.dump, 1 << 30).await.unwrap();
            assert_eq!(stored.len() as u64, manifest.size_bytes);
            assert!(stored.starts_with(manifest.encoding.stored_magic()), "{case}");
            let globals = manifest.globals.as_ref().unwrap();
            let globals_bytes = store.get_bytes(&globals.key, 1 << 20).await.unwrap();
            if encrypted {
                let recipients = &manifest.encoding.encryption.as_ref().unwrap().recipients;
                assert_eq!(recipients, std::slice::from_ref(&key.public));
                // Nothing of the plain archive or the roles is in the store.
                assert!(
                    !stored.windows(5).any(|window| window == archive::PGDMP_MAGIC),
                    "{case}"
                );
                assert!(globals.key.ends_with(".globals.json.age"), "{}", globals.key);
                assert!(globals_bytes.starts_with(archive::AGE_MAGIC));
                assert!(!String::from_utf8_lossy(&globals_bytes).contains("database_owner"));
            } else {
                assert!(manifest.encoding.encryption.is_none());
                assert!(globals_bytes.starts_with(b"{"), "{case}");
            }
            if compression == "gzip" && !encrypted {
                assert_eq!(archive.sha256, manifest.sha256, "the stored dump is the archive");
            }
            // Verifying needs no key.
            let verified = layout::verify(store.as_ref(), &id).await.unwrap();
            assert!(verified.contains(&manifest.encoding.describe()), "{verified}");

            let target = TestDatabase::create().await;
            let options = with_identities(encrypted.then(|| Arc::clone(&key.identities)));
            let report = restore_with(store.as_ref(), &id, &manifest, &target.url.parse().unwrap(), &options)
                .await
                .unwrap_or_else(|error| panic!("{case}: {error:#}"));
            assert!(
                report.mismatches.is_empty() && report.is_faithful(),
                "{case}: {report:?}"
            );
            assert_eq!(fingerprint(&target.connect().await).await, original, "{case}");
        }
    }
    // A parallel restore decrypts and decompresses into its temporary file.
    let (id, manifest) = backup_of(store.as_ref(), "zstd:3-true").await;
    let temp_dir = tempfile::tempdir().unwrap();
    let created = database_to_create();
    let options = RestoreOptions {
        create_database: true,
        identities: Some(Arc::clone(&key.identities)),
        ..parallel(2, &temp_dir)
    };
    let report = restore_with(store.as_ref(), &id, &manifest, &created.url.parse().unwrap(), &options)
        .await
        .expect("parallel restore of an encrypted zstd dump");
    assert!(report.mismatches.is_empty());
    assert_eq!(fingerprint(&created.connect().await).await, original);
    assert!(files_in(&temp_dir).is_empty());
}

/// [`populated_database`] with a few MiB more, so the archive is several
/// times what the decoder holds back.
async fn large_database() -> TestDatabase {
    let database = populated_database().await;
    database
        .connect()
        .await
        .batch_execute(
            "CREATE TABLE payments.ledger (id int PRIMARY KEY, entry text NOT NULL);
             INSERT INTO payments.ledger SELECT i, md5(i::text) || md5((i * 7)::text) || repeat('-', i % 40)
                 FROM generate_series(1, 60000) AS i;",
        )
        .await
        .unwrap();
    database
}

#[tokio::test]
async fn damaged_or_unreadable_encrypted_dumps_are_refused_each_with_its_own_error() {
    let (store, _directory) = common::file_store().await;
    let store: Arc<dyn BlobStore> = store;
    let source = large_database().await;
    let key = age_key();
    encoded_backup_job(Arc::clone(&store), &source, "zstd:3", Some(&key.public))
        .run(&context("damaged"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    let (id, manifest) = backup_of(store.as_ref(), "damaged").await;
    assert!(
        manifest.size_bytes > 2 * archive::HOLDBACK_BYTES as u64,
        "{}",
        manifest.size_bytes
    );
    let original = store.get_bytes(&manifest.dump, 1 << 30).await.unwrap();
    let target = TestDatabase::create().await;
    let target_url: DatabaseUrl = target.url.parse().unwrap();
    let attempt = |manifest: layout::Manifest, identities: Option<Arc<archive::Identities>>| {
        let store = Arc::clone(&store);
        let id = id.clone();
        let target_url = target_url.clone();
        async move {
            let options = with_identities(identities);
            let error = restore_with(store.as_ref(), &id, &manifest, &target_url, &options)
                .await
                .expect_err("refused");
            format!("{error:#}")
        }
    };
    let mut seen = Vec::new();

    // No identity configured: names the recipients and the variables.
    let error = attempt(manifest.clone(), None).await;
    assert!(
        error.contains(&format!("is encrypted (age) to {}", key.public))
            && error.contains("BACKUP_AGE_IDENTITY_FILE")
            && error.contains("BACKUP_AGE_IDENTITY_SECRET"),
        "{error}"
    );
    seen.push(error);

    // The wrong identity: names whose it is and whose it needs.
    let other = age_key();
    let error = attempt(manifest.clone(), Some(Arc::clone(&other.identities))).await;
    assert!(
        error.contains("cannot be decrypted with") && error.contains(&key.public) && error.contains(&other.public),
        "{error}"
    );
    seen.push(error);

    // A truncated object: refused at rest, before the target is touched.
    store
        .put_bytes(
            &manifest.dump,
            original.slice(..original.len() / 2),
            WriteMode::Overwrite,
        )
        .await
        .unwrap();
    let error = attempt(manifest.clone(), Some(Arc::clone(&key.identities))).await;
    assert!(
        error.contains("checksum mismatch") && error.contains("nothing was restored"),
        "{error}"
    );
    seen.push(error);

    // A ciphertext chunk altered by someone who also rewrote the manifest's
    // checksums of the stored bytes: age's authentication catches it while
    // streaming, pg_restore is stopped before the end, nothing is committed.
    let mut tampered = original.to_vec();
    let late = tampered.len() * 3 / 4;
    tampered[late] ^= 0x01;
    let rewritten = layout::Manifest {
        size_bytes: tampered.len() as u64,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tampered)),
        dump_crc32c: None,
        dump_md5: None,
        ..manifest.clone()
    };
    store
        .put_bytes(&manifest.dump, Bytes::from(tampered), WriteMode::Overwrite)
        .await
        .unwrap();
    store
        .put_bytes(
            &layout::manifest_key(&layout::base_of(&id)),
            Bytes::from(serde_json::to_vec(&rewritten).unwrap()),
            WriteMode::Overwrite,
        )
        .await
        .unwrap();
    let error = attempt(rewritten.clone(), Some(Arc::clone(&key.identities))).await;
    assert!(
        error.contains("failed authentication") && error.contains("rolled back"),
        "{error}"
    );
    assert_eq!(table_count(&target).await, 0, "nothing of the stream was committed");
    seen.push(error);
    // The same into a database the restore creates: it is dropped again.
    let created = database_to_create();
    let options = RestoreOptions {
        create_database: true,
        ..with_identities(Some(Arc::clone(&key.identities)))
    };
    let error = restore_with(store.as_ref(), &id, &rewritten, &created.url.parse().unwrap(), &options)
        .await
        .expect_err("tampered");
    assert!(format!("{error:#}").contains("was dropped again"), "{error:#}");
    assert!(!database_exists(&created.name).await);

    // Four distinct errors.
    for (index, error) in seen.iter().enumerate() {
        for other in &seen[index + 1..] {
            assert_ne!(error, other);
        }
    }
}

#[tokio::test]
async fn required_encryption_without_recipients_refuses_to_start_and_nothing_is_stored() {
    let source = populated_database().await;
    let directory = tempfile::tempdir().unwrap();
    let backup_store = format!("file://{}", directory.path().display());
    for recipients in [None, Some(" , ")] {
        let mut environment = cli_environment(&source.url, &backup_store);
        environment.push(("BACKUP_ENCRYPTION", "required".to_owned()));
        if let Some(list) = recipients {
            environment.push(("BACKUP_ENCRYPTION_RECIPIENTS", list.to_owned()));
        }
        for command in [&["worker"][..], &["run", "postgres-backup", "--key", "plain"]] {
            let output = common::keshless_ops_with(command, &environment);
            let stderr = common::text(&output.stderr);
            assert_eq!(output.status.code(), Some(78), "{command:?}: {stderr}");
            assert!(
                stderr.contains("BACKUP_ENCRYPTION=required but BACKUP_ENCRYPTION_RECIPIENTS"),
                "{stderr}"
            );
        }
    }
    let mut environment = cli_environment(&source.url, &backup_store);
    environment.push(("BACKUP_ENCRYPTION_RECIPIENTS", "age1notakey".to_owned()));
    let output = common::keshless_ops_with(&["run", "postgres-backup", "--key", "bad"], &environment);
    assert_eq!(output.status.code(), Some(78));
    assert!(common::text(&output.stderr).contains("is not an age X25519 public key"));
    assert!(files_in(&directory).is_empty(), "nothing was written");
}

#[tokio::test]
async fn the_runbooks_manual_restore_with_debians_age_and_zstd_works() {
    let store = common::gcs_store(false).await;
    let source = populated_database().await;
    let key = age_key();
    encoded_backup_job(store.clone(), &source, "zstd:3", Some(&key.public))
        .run(&context("manual"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    let (_, manifest) = backup_of(store.as_ref(), "manual").await;
    let bucket = store.location().to_string();
    let bucket = bucket.trim_start_matches("gs://").trim_end_matches('/');
    let object = url::form_urlencoded::byte_serialize(manifest.dump.as_bytes()).collect::<String>();
    let target = TestDatabase::create().await;
    // The runbook's line, with curl in place of `gcloud storage cat` (no
    // gcloud here; fake-gcs-server serves the same bytes).
    let pipeline = format!(
        "set -o pipefail; curl -sf 'http://{}/storage/v1/b/{bucket}/o/{object}?alt=media' | age -d -i '{}' | zstd -d \
         | pg_restore --no-owner --no-privileges --single-transaction --exit-on-error -d '{}'",
        common::storage_emulator_host(),
        key.file.path().display(),
        target.url
    );
    let output = std::process::Command::new("bash")
        .args(["-c", &pipeline])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output.stderr));
    assert_eq!(
        fingerprint(&target.connect().await).await,
        fingerprint(&source.connect().await).await
    );
}

#[tokio::test]
async fn the_restore_command_reads_the_identity_file_and_says_what_is_missing() {
    let source = populated_database().await;
    let directory = tempfile::tempdir().unwrap();
    let backup_store = format!("file://{}", directory.path().display());
    let key = age_key();
    let mut environment = cli_environment(&source.url, &backup_store);
    environment.push(("BACKUP_ENCRYPTION", "required".to_owned()));
    environment.push(("BACKUP_ENCRYPTION_RECIPIENTS", key.public.clone()));
    let backup = common::keshless_ops_with(
        &["run", "postgres-backup", "--key", "cli-age", "--param", "monthly=skip"],
        &environment,
    );
    assert!(backup.status.success(), "{}", common::text(&backup.stderr));
    let target = database_to_create();
    let restore = |identity: Option<&std::path::Path>| {
        let mut environment = vec![
            ("PATH", std::env::var("PATH").unwrap()),
            ("BACKUP_STORE", backup_store.clone()),
        ];
        if let Some(path) = identity {
            environment.push(("BACKUP_AGE_IDENTITY_FILE", path.display().to_string()));
        }
        common::keshless_ops_with(
            &[
                "restore",
                "postgres",
                "--latest",
                "--target-url",
                &target.url,
                "--create-db",
            ],
            &environment,
        )
    };
    // Verifying needs no key; with one it reads the archive's structure too.
    let verify = |identity: Option<&std::path::Path>| {
        let mut environment = vec![
            ("PATH", std::env::var("PATH").unwrap()),
            ("BACKUP_STORE", backup_store.clone()),
        ];
        if let Some(path) = identity {
            environment.push(("BACKUP_AGE_IDENTITY_FILE", path.display().to_string()));
        }
        let output = common::keshless_ops_with(&["backups", "verify", "--latest", "--json"], &environment);
        assert!(output.status.success(), "{}", common::text(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let checks = report["results"][0]["checks"].as_array().unwrap().clone();
        let structure = checks
            .iter()
            .find(|check| check["name"] == "structure")
            .unwrap()
            .clone();
        structure["detail"].as_str().unwrap_or_default().to_owned()
    };
    assert!(verify(None).contains("not read: the dump is encrypted"));
    assert!(!verify(Some(key.file.path())).contains("not read"));
    let refused = restore(None);
    let stderr = common::text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BACKUP_AGE_IDENTITY_FILE") && stderr.contains(&key.public),
        "{stderr}"
    );
    assert!(!database_exists(&target.name).await, "nothing was created");
    let restored = restore(Some(key.file.path()));
    let stdout = common::text(&restored.stdout);
    let stderr = common::text(&restored.stderr);
    assert!(restored.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("zstd:3, age to 1 recipient"), "{stderr}");
    assert!(
        !format!("{stdout}{stderr}").contains("AGE-SECRET-KEY"),
        "no key in the output"
    );
    assert_eq!(
        fingerprint(&target.connect().await).await,
        fingerprint(&source.connect().await).await
    );
}

#[tokio::test]
async fn a_backup_started_in_the_same_second_under_another_encoding_is_not_overwritten_or_mixed() {
    let (store, _directory) = common::file_store().await;
    let store: Arc<dyn BlobStore> = store;
    let source = populated_database().await;
    // A gzip backup's dump for each of the next seconds: whichever second
    // the zstd backup starts in, its name is taken.
    let now = chrono::Utc::now();
    for second in 0..20 {
        let base = layout::daily_base(&source.name, now + chrono::Duration::seconds(second));
        store
            .put_bytes(
                &layout::dump_key(&base),
                Bytes::from_static(b"PGDMP"),
                WriteMode::CreateOnly,
            )
            .await
            .unwrap();
    }
    let error = encoded_backup_job(Arc::clone(&store), &source, "zstd:3", None)
        .run(&context("same-second"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .expect_err("the name is taken");
    assert!(error.is_transient(), "a retry starts under a new name: {error}");
    assert!(format!("{error:#}").contains("started in the same second"), "{error:#}");
    assert!(
        all_keys(store.as_ref()).await.iter().all(|key| key.ends_with(".dump")),
        "nothing of the refused backup was written"
    );
}

/// What a fabricated backup's manifest says of its dump.
enum Recorded {
    /// The real dump's size and checksums: the stored bytes differ from them.
    Original,
    /// The stored bytes' own: only reading the archive can tell.
    TheseBytes,
}

/// Another daily backup `days` before `manifest`'s, whose dump is `dump`,
/// with a manifest recording what `recorded` says. Returns its id.
async fn fabricated_backup(
    store: &dyn BlobStore,
    manifest: &layout::Manifest,
    globals: &Bytes,
    days: i64,
    dump: Vec<u8>,
    recorded: Recorded,
) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let at = manifest.started_at - chrono::Duration::days(days);
    let base = layout::daily_base(&manifest.database, at);
    let mut fabricated = manifest.clone();
    fabricated.started_at = at;
    fabricated.finished_at = at + chrono::Duration::minutes(1);
    fabricated.dump = layout::dump_key(&base);
    if let Recorded::TheseBytes = recorded {
        fabricated.size_bytes = dump.len() as u64;
        fabricated.sha256 = hex::encode(sha2::Sha256::digest(&dump));
        // Not encoded (pg_dump's gzip): the archive is the stored bytes.
        fabricated.encoding.archive = Some(archive::Digest {
            size_bytes: fabricated.size_bytes,
            sha256: fabricated.sha256.clone(),
        });
        fabricated.dump_crc32c = fabricated
            .dump_crc32c
            .as_ref()
            .map(|_| base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&dump).to_be_bytes()));
    }
    let mut stored_globals = fabricated.globals.clone().expect("version 2 records globals");
    stored_globals.key = layout::globals_key(&base);
    fabricated.globals = Some(stored_globals.clone());
    store
        .put_bytes(&fabricated.dump, Bytes::from(dump), WriteMode::CreateOnly)
        .await
        .unwrap();
    store
        .put_bytes(&stored_globals.key, globals.clone(), WriteMode::CreateOnly)
        .await
        .unwrap();
    store
        .put_bytes(
            &layout::manifest_key(&base),
            serde_json::to_vec(&fabricated).unwrap().into(),
            WriteMode::CreateOnly,
        )
        .await
        .unwrap();
    layout::id_of(&base).to_owned()
}

/// The verdicts of a `backups verify … --json` run, by id: (ok, failed check names).
fn verdicts(report: &serde_json::Value) -> std::collections::BTreeMap<String, (bool, Vec<String>)> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| {
            let failed = result["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|check| check["ok"] == false)
                .map(|check| check["name"].as_str().unwrap().to_owned())
                .collect();
            (
                result["id"].as_str().unwrap().to_owned(),
                (result["ok"].as_bool().unwrap(), failed),
            )
        })
        .collect()
}

/// `backups list`, `show` and `verify` through the binary: every class
/// listed with ids that `show` and `verify` take, and `verify` telling a
/// flipped byte, a truncated dump and a corrupt table of contents (whose
/// manifest matches its bytes) from intact backups, in full and quick mode,
/// and in four samples that together cover every backup once.
async fn list_show_and_verify_find_every_kind_of_damage(store: Arc<impl BlobStore + 'static>) {
    let store: Arc<dyn BlobStore> = store;
    // pg_dump's own format (the fabricated copies below keep its name).
    let _source = populated_database().await;
    encoded_backup_job(Arc::clone(&store), &_source, "gzip", None)
        .run(&context("verify-1"), params(serde_json::json!({"monthly": "skip"})))
        .await
        .unwrap();
    let (real, manifest) = backup_of(store.as_ref(), "verify-1").await;
    let dump = store
        .get_bytes(&manifest.dump, 64 * 1024 * 1024)
        .await
        .unwrap()
        .to_vec();
    let globals = store
        .get_bytes(&manifest.globals.as_ref().unwrap().key, 1 << 20)
        .await
        .unwrap();
    let mut intact = vec![real.clone()];
    for days in 1..=3 {
        intact.push(
            fabricated_backup(
                store.as_ref(),
                &manifest,
                &globals,
                days,
                dump.clone(),
                Recorded::Original,
            )
            .await,
        );
    }
    let mut flipped_dump = dump.clone();
    flipped_dump[dump.len() / 2] ^= 0x01;
    let flipped = fabricated_backup(store.as_ref(), &manifest, &globals, 4, flipped_dump, Recorded::Original).await;
    let truncated_dump = dump[..dump.len() - 1000].to_vec();
    let truncated = fabricated_backup(
        store.as_ref(),
        &manifest,
        &globals,
        5,
        truncated_dump,
        Recorded::Original,
    )
    .await;
    let mut corrupt_dump = dump.clone();
    corrupt_dump[100..300].fill(0xff);
    let corrupt = fabricated_backup(
        store.as_ref(),
        &manifest,
        &globals,
        6,
        corrupt_dump,
        Recorded::TheseBytes,
    )
    .await;
    // A secrets backup beside them.
    let passphrase = secrecy::SecretString::from("verify-passphrase-0123456789abcdefghij");
    let secrets: keshless_ops::crypto::SecretMap =
        [("KESHLESS_API_KEY", "value-never-shown-7c1d")].into_iter().collect();
    let sealed = keshless_ops::crypto::EnvelopeCodec::standard()
        .seal(&passphrase, &secrets, manifest.started_at)
        .unwrap();
    store
        .put_bytes(
            "secrets/weekly/2026-11-22.json.encrypted",
            Bytes::from(sealed),
            WriteMode::CreateOnly,
        )
        .await
        .unwrap();

    let mut environment = vec![
        ("PATH", std::env::var("PATH").unwrap()),
        ("BACKUP_STORE", store.location().to_string()),
    ];
    if store.as_gcs().is_some() {
        environment.push(("STORAGE_EMULATOR_HOST", common::storage_emulator_host()));
    }
    let run = |arguments: &[&str], extra: &[(&'static str, String)]| {
        let mut environment = environment.clone();
        environment.extend(extra.iter().cloned());
        common::keshless_ops_with(arguments, &environment)
    };
    let json = |output: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "no JSON ({error}): {}{}",
                common::text(&output.stdout),
                common::text(&output.stderr)
            )
        })
    };

    let listed = run(&["backups", "list", "--json"], &[]);
    assert!(listed.status.success(), "{}", common::text(&listed.stderr));
    let listed = json(&listed);
    let ids: std::collections::BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: std::collections::BTreeSet<String> = intact.iter().cloned().collect();
    expected.extend([
        flipped.clone(),
        truncated.clone(),
        corrupt.clone(),
        "secrets/weekly/2026-11-22".into(),
    ]);
    assert_eq!(ids, expected);
    assert_eq!(listed[0]["id"], real.as_str(), "newest first");
    assert_eq!(listed[0]["class"], "postgres-daily");
    assert_eq!(listed[0]["state"], "complete");
    let only_secrets = json(&run(&["backups", "list", "secrets", "--json"], &[]));
    assert_eq!(only_secrets.as_array().unwrap().len(), 1);

    // show: the manifest's tables and counts, the globals; a secrets
    // backup's encryption header and nothing of its contents.
    let shown = json(&run(&["backups", "show", &real, "--json"], &[]));
    assert_eq!(shown["manifest"]["tables"].as_array().unwrap().len(), 4, "{shown}");
    assert!(shown["globals"]["roles"].is_array(), "{shown}");
    assert_eq!(shown["pinned"], serde_json::Value::Null);
    let text_shown = run(&["backups", "show", &real], &[]);
    assert!(
        common::text(&text_shown.stdout).contains("payments.transfers: 3000"),
        "{}",
        common::text(&text_shown.stdout)
    );
    let secrets_shown = run(&["backups", "show", "2026-11-22", "--json"], &[]);
    let secrets_json = json(&secrets_shown);
    assert_eq!(secrets_json["encryption"]["cipher"], "AES-256-GCM", "{secrets_json}");
    assert!(secrets_json["encryption"].get("ciphertext").is_none());
    assert!(!common::text(&secrets_shown.stdout).contains("value-never-shown"));
    // Unknown and ambiguous ids say what they could have meant.
    let unknown = run(&["backups", "show", "daily/2019-01-01/keshless"], &[]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        common::text(&unknown.stderr).contains("the closest: daily/"),
        "{}",
        common::text(&unknown.stderr)
    );
    let ambiguous = run(&["backups", "verify", "daily/"], &[]);
    assert_eq!(ambiguous.status.code(), Some(2));
    assert!(
        common::text(&ambiguous.stderr).contains("matches 7 backups"),
        "{}",
        common::text(&ambiguous.stderr)
    );

    // Full verification of everything: exit 3, and each damage named.
    let key = [(
        "SECRETS_ENCRYPTION_KEY",
        "verify-passphrase-0123456789abcdefghij".to_owned(),
    )];
    let all = run(&["backups", "verify", "--all", "--json"], &key);
    assert_eq!(all.status.code(), Some(3), "{}", common::text(&all.stderr));
    let report = json(&all);
    let full = verdicts(&report);
    assert_eq!(full.len(), 8);
    for id in &intact {
        assert_eq!(full[id], (true, vec![]), "{id}");
    }
    assert_eq!(full["secrets/weekly/2026-11-22"], (true, vec![]));
    // The structural read proves the archive's digest too.
    assert_eq!(
        full[&flipped],
        (false, vec!["sha256".to_owned(), "structure".to_owned()])
    );
    assert_eq!(
        full[&truncated],
        (
            false,
            vec!["size".to_owned(), "sha256".to_owned(), "structure".to_owned()]
        )
    );
    assert_eq!(full[&corrupt], (false, vec!["structure".to_owned()]));
    let stderr = common::text(&all.stderr);
    assert!(
        stderr.contains(&format!("FAILED {corrupt}: structure: pg_restore --list")),
        "{stderr}"
    );
    assert!(stderr.contains("corrupt TOC"), "{stderr}");
    assert!(report["bytes_read"].as_u64().unwrap() >= 7 * dump.len() as u64 - 1000);
    let table = common::text(&run(&["backups", "verify", "--all"], &key).stdout);
    assert!(table.contains("8 verified") && table.contains("3 FAILED"), "{table}");

    // Quick: the store's metadata only. GCS keeps a CRC32C, which sees the
    // flipped byte; the file store has sizes only. Neither reads the archive.
    let quick = run(&["backups", "verify", "--all", "--quick", "--json"], &[]);
    assert_eq!(quick.status.code(), Some(3));
    let quick = json(&quick);
    assert_eq!(quick["bytes_read"], 0);
    let quick = verdicts(&quick);
    assert!(quick[&corrupt].0, "quick mode cannot see inside the archive");
    if store.as_gcs().is_some() {
        assert_eq!(quick[&flipped].1, ["crc32c"]);
        assert_eq!(quick[&truncated].1, ["size", "crc32c"]);
    } else {
        assert!(quick[&flipped].0, "same size, and no CRC32C in a file store");
        assert_eq!(quick[&truncated].1, ["size"]);
    }

    // --latest: the newest of each series. By id: just those.
    let latest = json(&run(&["backups", "verify", "--latest", "--json"], &[]));
    assert_eq!(
        verdicts(&latest).keys().cloned().collect::<Vec<_>>(),
        [real.clone(), "secrets/weekly/2026-11-22".into()]
    );
    let one = run(&["backups", "verify", &flipped], &[]);
    assert_eq!(one.status.code(), Some(3));
    let since = json(&run(
        &[
            "backups",
            "verify",
            "--all",
            "--class",
            "postgres",
            "--since",
            &(manifest.started_at - chrono::Duration::days(2))
                .format("%Y-%m-%d")
                .to_string(),
            "--quick",
            "--json",
        ],
        &[],
    ));
    assert_eq!(since["verified"], 3, "today and the two days before");

    // Four samples: each backup verified exactly once.
    let mut seen = Vec::new();
    for slice in 1..=4 {
        let sample = format!("{slice}/4");
        let output = run(
            &["backups", "verify", "--all", "--quick", "--sample", &sample, "--json"],
            &[],
        );
        assert!(
            matches!(output.status.code(), Some(0 | 3)),
            "{}",
            common::text(&output.stderr)
        );
        let report = json(&output);
        assert_eq!(report["sample"], sample.as_str());
        seen.extend(verdicts(&report).into_keys());
    }
    seen.sort();
    assert_eq!(seen, expected.into_iter().collect::<Vec<_>>(), "every backup once");
    let bad = run(&["backups", "verify", "--all", "--sample", "5/4"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(common::text(&bad.stderr).contains("N/M"));
}
