//! `keshless-ops status` through the binary, against a real ledger database
//! and real stores: exit codes from fresh and stale fixtures, freshness from
//! the store when the ledger is lost, running jobs, limit overrides and
//! configuration errors. Plus `Ledger::job_summaries`, the query it reads.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::{keshless_ops, text, TestDatabase};
use keshless_ops::config::DatabaseUrl;
use keshless_ops::crypto::{EnvelopeCodec, KdfParams, SecretMap};
use keshless_ops::jobs::secrets_backup::weekly_key;
use keshless_ops::postgres::layout::{self, Manifest};
use keshless_ops::runtime::job::Outcome;
use keshless_ops::runtime::ledger::{ClaimRequest, DeadLetteredKeys, Ledger, LedgerError, RunStatus};
use keshless_ops::schedule::SCHEDULE;
use keshless_ops::storage::{BlobStore, BlobStoreExt, WriteMode};
use secrecy::SecretString;

const LEASE: Duration = Duration::from_secs(300);

async fn ledger(database: &TestDatabase) -> Ledger {
    let url: DatabaseUrl = database.url.parse().expect("database URL");
    Ledger::connect(&url).await.expect("connect and migrate")
}

fn claim<'a>(job: &'a str, key: &'a str, owner: &'a str) -> ClaimRequest<'a> {
    ClaimRequest {
        idempotency_key: key,
        job,
        owner,
        lease: LEASE,
        message_id: None,
        source: "cli",
        dead_lettered: DeadLetteredKeys::Respect,
    }
}

/// Claims and succeeds `key`, then moves its times `hours_ago` into the past.
async fn succeeded(ledger: &Ledger, database: &TestDatabase, job: &str, key: &str, hours_ago: i64) {
    ledger.claim(&claim(job, key, "fixture")).await.expect("claim");
    assert!(ledger
        .succeed(key, "fixture", &Outcome::new(format!("{job} fixture")))
        .await
        .expect("succeed"));
    age_row(database, key, hours_ago).await;
}

async fn age_row(database: &TestDatabase, key: &str, hours_ago: i64) {
    let updated = database
        .connect()
        .await
        .execute(
            "UPDATE keshless_ops.job_runs SET
                 started_at = now() - make_interval(hours => $2::int) - interval '1 minute',
                 finished_at = CASE WHEN finished_at IS NULL THEN NULL ELSE now() - make_interval(hours => $2::int) END,
                 updated_at = now() - make_interval(hours => $2::int)
             WHERE idempotency_key = $1",
            &[&key, &(hours_ago as i32)],
        )
        .await
        .expect("age row");
    assert_eq!(updated, 1, "{key}");
}

/// Every scheduled job succeeded `hours_ago`, except those in `overrides`.
async fn ledger_with_successes(database: &TestDatabase, overrides: &[(&str, i64)]) -> Ledger {
    let ledger = ledger(database).await;
    for row in SCHEDULE {
        let hours = overrides
            .iter()
            .find(|(job, _)| *job == row.job)
            .map_or(1, |(_, hours)| *hours);
        succeeded(&ledger, database, row.job, &format!("{}:fixture", row.job), hours).await;
    }
    ledger
}

fn environment<'a>(database_url: &'a str, store_url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut environment = vec![
        ("DATABASE_URL", database_url),
        ("BACKUP_STORE", store_url),
        // Stored in a static so the borrowed str lives long enough.
        ("STORAGE_EMULATOR_HOST", emulator_host()),
    ];
    environment.extend_from_slice(extra);
    environment
}

fn emulator_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(common::storage_emulator_host)
}

/// Runs `status --json`; returns the exit code, the parsed report and stderr.
fn status_json(environment: &[(&str, &str)]) -> (Option<i32>, serde_json::Value, String) {
    let output = keshless_ops(&["status", "--json"], environment);
    let stderr = text(&output.stderr);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "status --json printed no JSON ({error}):\n{}\n{stderr}",
            text(&output.stdout)
        )
    });
    (output.status.code(), report, stderr)
}

fn job<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|job| job["job"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {report:#}"))
}

/// Writes, with the jobs' own layouts, a complete artefact of every job that
/// leaves one, each finished `hours_ago`.
async fn write_artefacts(store: &dyn BlobStore, hours_ago: i64) {
    let at: DateTime<Utc> = Utc::now() - chrono::Duration::hours(hours_ago);
    let started = at - chrono::Duration::minutes(3);
    let put = |key: String, bytes: Vec<u8>| async move {
        store
            .put_bytes(&key, Bytes::from(bytes), WriteMode::CreateOnly)
            .await
            .unwrap_or_else(|error| panic!("put {key}: {error}"));
    };
    // PostgreSQL: dump, then manifest.
    let base = layout::daily_base("keshless", started);
    put(layout::dump_key(&base), b"PGDMP".to_vec()).await;
    let manifest = Manifest {
        format: layout::MANIFEST_FORMAT.into(),
        version: 1,
        job: "postgres-backup".into(),
        idempotency_key: format!("postgres-backup:{}", started.format("%Y-%m-%d")),
        database: "keshless".into(),
        started_at: started,
        finished_at: at,
        server_version: "17.2".into(),
        pg_dump_version: "17.2".into(),
        database_size_bytes: 1_000,
        snapshot: "00000003-0000001B-1".into(),
        dump: layout::dump_key(&base),
        size_bytes: 5,
        sha256: "0".repeat(64),
        dump_crc32c: None,
        dump_md5: None,
        tables: Vec::new(),
        globals: None,
        fidelity: None,
        encoding: Default::default(),
    };
    put(layout::manifest_key(&base), serde_json::to_vec(&manifest).unwrap()).await;
    // Secrets: a real envelope (only its created_at header is read).
    let codec = EnvelopeCodec::with_params(KdfParams::INSECURE_FOR_TESTS, KdfParams::INSECURE_FOR_TESTS);
    let mut secrets = SecretMap::new();
    secrets.insert("API_TOKEN", SecretString::from("value"));
    let passphrase = SecretString::from("status-test-passphrase-of-32-characters!");
    let envelope = codec.seal(&passphrase, &secrets, at).expect("seal");
    put(weekly_key(at.date_naive()), envelope.to_vec()).await;
    // Documents inventory: data and summary.
    let stem = format!("documents/inventory/{}", at.format("%Y-%m-%d"));
    put(format!("{stem}.jsonl.gz"), b"\x1f\x8b".to_vec()).await;
    let summary = serde_json::json!({"started_at": started, "finished_at": at, "objects": 0});
    put(format!("{stem}.summary.json"), serde_json::to_vec(&summary).unwrap()).await;
    // A passed drill.
    let report = serde_json::json!({"started_at": started, "finished_at": at, "passed": true, "steps": []});
    put(
        format!("drills/{}.json", at.format("%Y-%m-%d")),
        serde_json::to_vec(&report).unwrap(),
    )
    .await;
}

#[tokio::test]
async fn fresh_ledger_exits_zero() {
    common::init_test_logs();
    let database = TestDatabase::create().await;
    ledger_with_successes(&database, &[]).await;
    let (store, _directory) = common::file_store().await;
    let store_url = store.location().to_string();
    let (code, report, stderr) = status_json(&environment(&database.url, &store_url, &[]));
    assert_eq!(code, Some(0), "{report:#}\n{stderr}");
    assert_eq!(report["summary"], "all 5 jobs fresh");
    let postgres = job(&report, "postgres-backup");
    assert_eq!(postgres["freshness"], "fresh");
    assert_eq!(postgres["last_success"]["source"], "ledger");
    assert_eq!(
        postgres["ledger"]["last_success"]["idempotency_key"],
        "postgres-backup:fixture"
    );
    assert_eq!(postgres["ledger"]["last_success"]["summary"], "postgres-backup fixture");
    assert_eq!(postgres["ledger"]["attempts"], 1);
    // The store answered: it simply holds nothing yet.
    assert_eq!(postgres["storage"]["status"], "read");
    assert!(postgres["storage"]["newest"].is_null());
    assert!(stderr.is_empty(), "{stderr}");

    // The table says the same, and ends with the summary line.
    let output = keshless_ops(&["status"], &environment(&database.url, &store_url, &[]));
    assert_eq!(output.status.code(), Some(0));
    let table = text(&output.stdout);
    assert!(table.starts_with("job "), "{table}");
    assert!(table.contains("(1 h, ledger)"), "{table}");
    assert!(table.trim_end().ends_with("all 5 jobs fresh"), "{table}");
}

#[tokio::test]
async fn stale_postgres_backup_exits_two_naming_it() {
    let database = TestDatabase::create().await;
    ledger_with_successes(&database, &[("postgres-backup", 30)]).await;
    let (store, _directory) = common::file_store().await;
    let store_url = store.location().to_string();
    let output = keshless_ops(&["status"], &environment(&database.url, &store_url, &[]));
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(
        table
            .trim_end()
            .ends_with("1 overdue: postgres-backup (last success 30 h ago, limit 26 h)"),
        "{table}"
    );
    let (code, report, _) = status_json(&environment(&database.url, &store_url, &[]));
    assert_eq!(code, Some(2));
    assert_eq!(report["overdue"], serde_json::json!(["postgres-backup"]));
    assert_eq!(job(&report, "postgres-backup")["freshness"], "overdue");
    assert_eq!(job(&report, "secrets-backup")["freshness"], "fresh");
}

/// Parses Prometheus text into `name{labels}` -> value, checking every
/// sample line has that shape and every metric a TYPE line.
fn prometheus_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(kind, "gauge", "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(typed.contains(name), "{name} has no TYPE line:\n{text}");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

#[tokio::test]
async fn prometheus_output_has_the_freshness_figures_and_the_same_exit_code() {
    let database = TestDatabase::create().await;
    let ledger = ledger_with_successes(&database, &[("postgres-backup", 30)]).await;
    let (store, _directory) = common::file_store().await;
    let store_url = store.location().to_string();
    let output = keshless_ops(
        &["status", "--prometheus"],
        &environment(&database.url, &store_url, &[]),
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "overdue still exits 2: {}",
        text(&output.stderr)
    );
    let samples = prometheus_samples(&text(&output.stdout));
    let sample = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from {samples:#?}"))
    };
    let finished_at = ledger
        .find("postgres-backup:fixture")
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .unwrap();
    // The worker's gauge name and label, with the ledger's time.
    assert_eq!(
        sample(r#"keshless_ops_last_success_timestamp_seconds{job="postgres-backup"}"#),
        finished_at.timestamp() as f64
    );
    assert_eq!(sample(r#"keshless_ops_job_overdue{job="postgres-backup"}"#), 1.0);
    assert_eq!(sample(r#"keshless_ops_job_overdue{job="secrets-backup"}"#), 0.0);
    let age = sample(r#"keshless_ops_last_success_age_seconds{job="postgres-backup"}"#);
    assert!((30.0 * 3600.0..31.0 * 3600.0).contains(&age), "{age}");
    for row in SCHEDULE {
        assert_eq!(
            sample(&format!(r#"keshless_ops_freshness_limit_seconds{{job="{}"}}"#, row.job)),
            row.max_age.as_secs() as f64,
            "{}",
            row.job
        );
    }
    assert_eq!(sample(r#"keshless_ops_status_source_up{source="ledger"}"#), 1.0);
    assert_eq!(sample(r#"keshless_ops_status_source_up{source="storage"}"#), 1.0);
    let checked = sample("keshless_ops_status_checked_timestamp_seconds");
    assert!((Utc::now().timestamp() as f64 - checked).abs() < 120.0, "{checked}");

    // --json and --prometheus are one or the other.
    let output = keshless_ops(
        &["status", "--json", "--prometheus"],
        &environment(&database.url, &store_url, &[]),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("cannot be used with"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn a_job_that_never_succeeded_is_overdue() {
    let database = TestDatabase::create().await;
    // Migrated, empty ledger: no job ever ran.
    ledger(&database).await;
    let (store, _directory) = common::file_store().await;
    let store_url = store.location().to_string();
    let (code, report, _) = status_json(&environment(&database.url, &store_url, &[]));
    assert_eq!(code, Some(2));
    assert_eq!(report["overdue"].as_array().unwrap().len(), SCHEDULE.len());
    assert_eq!(job(&report, "dr-drill")["reason"], "never succeeded");
    assert!(job(&report, "dr-drill")["ledger"]["attempts"].is_null());
}

#[tokio::test]
async fn environment_override_changes_the_verdict() {
    let database = TestDatabase::create().await;
    ledger_with_successes(&database, &[("postgres-backup", 30)]).await;
    let (store, _directory) = common::file_store().await;
    let store_url = store.location().to_string();
    let relaxed = environment(&database.url, &store_url, &[("FRESHNESS_POSTGRES_BACKUP_HOURS", "31")]);
    let (code, report, _) = status_json(&relaxed);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(job(&report, "postgres-backup")["max_age_seconds"], 31 * 3600);
    // And the other way: a 2 h limit makes a 3 h old cleanup overdue.
    let database = TestDatabase::create().await;
    ledger_with_successes(&database, &[("cleanup-old-backups", 3)]).await;
    let tight = environment(
        &database.url,
        &store_url,
        &[("FRESHNESS_CLEANUP_OLD_BACKUPS_HOURS", "2")],
    );
    let (code, report, _) = status_json(&tight);
    assert_eq!(code, Some(2));
    assert_eq!(report["overdue"], serde_json::json!(["cleanup-old-backups"]));
}

#[test]
fn bad_freshness_value_is_a_configuration_error() {
    let output = keshless_ops(
        &["status"],
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            ("BACKUP_STORE", "file:///tmp/keshless-status-never-read"),
            ("FRESHNESS_DR_DRILL_HOURS", "35d"),
        ],
    );
    assert_eq!(output.status.code(), Some(78));
    let errors = text(&output.stderr);
    assert!(
        errors.contains("FRESHNESS_DR_DRILL_HOURS=\"35d\" is not a whole number of hours from 1 to 8784"),
        "{errors}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn missing_sources_are_configuration_errors() {
    let output = keshless_ops(&["status"], &[]);
    assert_eq!(output.status.code(), Some(78));
    let errors = text(&output.stderr);
    assert!(errors.contains("invalid configuration (2 problems)"), "{errors}");
    assert!(
        errors.contains("LEDGER_DATABASE_URL and DATABASE_URL are not set"),
        "{errors}"
    );
    assert!(errors.contains("BACKUP_STORE is not set"), "{errors}");
    let output = keshless_ops(
        &["status"],
        &[
            ("LEDGER_DATABASE_URL", "mysql://root:hunter2@db/app"),
            ("BACKUP_STORE", "file:///tmp"),
        ],
    );
    assert_eq!(output.status.code(), Some(78));
    let errors = text(&output.stderr);
    assert!(errors.contains("LEDGER_DATABASE_URL: "), "{errors}");
    assert!(!errors.contains("hunter2"), "{errors}");
}

async fn lost_ledger_uses_storage(store: Arc<impl BlobStore + 'static>) {
    // An empty database: the ledger schema does not exist (lost, or restored
    // from before the worker ran).
    let database = TestDatabase::create().await;
    let store_url = store.location().to_string();

    // Artefacts 30 h old: the daily jobs are overdue on storage evidence alone.
    write_artefacts(store.as_ref(), 30).await;
    let (code, report, stderr) = status_json(&environment(&database.url, &store_url, &[]));
    assert_eq!(code, Some(2), "{report:#}\n{stderr}");
    assert_eq!(
        report["overdue"],
        serde_json::json!(["postgres-backup", "documents-inventory"])
    );
    assert_eq!(
        job(&report, "postgres-backup")["reason"],
        "last success 30 h ago, limit 26 h; ledger unreadable"
    );

    // A newer set 3 h old: every job that leaves an artefact is fresh.
    write_artefacts(store.as_ref(), 3).await;
    let (code, report, stderr) = status_json(&environment(&database.url, &store_url, &[]));
    // Nothing is overdue, but the lost ledger has its own exit code, so it alerts.
    assert_eq!(code, Some(4), "{report:#}\n{stderr}");
    assert!(
        stderr.contains("warning: the ledger could not be read (table keshless_ops.job_runs does not exist"),
        "{stderr}"
    );
    assert_eq!(report["ledger"]["available"], false);
    assert_eq!(report["storage"]["available"], true);
    for name in ["postgres-backup", "secrets-backup", "documents-inventory", "dr-drill"] {
        let status = job(&report, name);
        assert_eq!(status["freshness"], "fresh", "{name}: {status:#}");
        assert_eq!(status["last_success"]["source"], "storage", "{name}");
        assert_eq!(status["ledger"]["status"], "unavailable", "{name}");
        assert_eq!(
            status["age_seconds"].as_u64().map(|seconds| seconds / 3600),
            Some(3),
            "{name}"
        );
    }
    let newest = job(&report, "postgres-backup")["storage"]["newest"]["object"]
        .as_str()
        .expect("object")
        .to_owned();
    assert!(
        newest.starts_with("postgresql/daily/") && newest.ends_with(".manifest.json"),
        "{newest}"
    );
    // Only the ledger knows cleanup: it is named unknown, not called fresh.
    assert_eq!(job(&report, "cleanup-old-backups")["freshness"], "unknown");
    assert_eq!(report["unknown"], serde_json::json!(["cleanup-old-backups"]));

    // Status reads; it never creates the ledger it reports lost.
    let schema = database
        .connect()
        .await
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'keshless_ops'", &[])
        .await
        .unwrap();
    assert!(schema.is_none(), "status created the ledger schema");
}

common::on_both_backends!(lost_ledger_uses_storage);

#[tokio::test]
async fn failed_drills_and_incomplete_backups_are_not_successes() {
    let database = TestDatabase::create().await;
    let (store, _directory) = common::file_store().await;
    let now = Utc::now();
    // A failed drill today, a passed one 40 days ago.
    for (age_days, passed) in [(0, false), (40, true)] {
        let at = now - chrono::Duration::days(age_days);
        let report = serde_json::json!({"started_at": at, "finished_at": at, "passed": passed});
        store
            .put_bytes(
                &format!("drills/{}.json", at.format("%Y-%m-%d")),
                serde_json::to_vec(&report).unwrap().into(),
                WriteMode::CreateOnly,
            )
            .await
            .unwrap();
    }
    // A dump without its manifest (incomplete) and an inventory without data.
    let base = layout::daily_base("keshless", now);
    store
        .put_bytes(
            &layout::dump_key(&base),
            Bytes::from_static(b"PGDMP"),
            WriteMode::CreateOnly,
        )
        .await
        .unwrap();
    let summary = serde_json::json!({"started_at": now, "finished_at": now});
    store
        .put_bytes(
            &format!("documents/inventory/{}.summary.json", now.format("%Y-%m-%d")),
            serde_json::to_vec(&summary).unwrap().into(),
            WriteMode::CreateOnly,
        )
        .await
        .unwrap();
    let store_url = store.location().to_string();
    let (code, report, _) = status_json(&environment(&database.url, &store_url, &[]));
    assert_eq!(code, Some(2));
    let drill = job(&report, "dr-drill");
    assert_eq!(drill["freshness"], "overdue");
    assert_eq!(drill["age_seconds"].as_u64().map(|seconds| seconds / 86_400), Some(40));
    assert!(job(&report, "postgres-backup")["storage"]["newest"].is_null());
    assert!(job(&report, "documents-inventory")["storage"]["newest"].is_null());
}

#[tokio::test]
async fn a_running_job_is_shown_as_running() {
    let database = TestDatabase::create().await;
    let ledger = ledger_with_successes(&database, &[]).await;
    ledger
        .claim(&claim("dr-drill", "dr-drill:live", "worker-7"))
        .await
        .expect("claim");
    let (store, _directory) = common::file_store().await;
    let store_url = store.location().to_string();
    let (code, report, _) = status_json(&environment(&database.url, &store_url, &[]));
    assert_eq!(code, Some(0), "{report:#}");
    let running = &job(&report, "dr-drill")["ledger"]["running"];
    assert_eq!(running.as_array().map(Vec::len), Some(1), "{running:#}");
    assert_eq!(running[0]["owner"], "worker-7");
    assert_eq!(running[0]["idempotency_key"], "dr-drill:live");
    assert_eq!(running[0]["lease_live"], true);
    assert!(running[0]["lease_expires_at"].is_string());
    let output = keshless_ops(&["status"], &environment(&database.url, &store_url, &[]));
    let table = text(&output.stdout);
    let row = table
        .lines()
        .find(|line| line.starts_with("dr-drill "))
        .expect("dr-drill row");
    assert!(row.contains("worker-7 since "), "{row}");
}

#[tokio::test]
async fn both_sources_unreadable_exits_one() {
    let output = keshless_ops(
        &["status"],
        &[
            // Nothing listens on port 1; /proc refuses new directories.
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/keshless"),
            ("BACKUP_STORE", "file:///proc/keshless-status-test"),
        ],
    );
    let errors = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{errors}");
    assert!(errors.contains("warning: the ledger could not be read"), "{errors}");
    assert!(
        errors.contains("warning: the backup store could not be read"),
        "{errors}"
    );
    assert!(text(&output.stdout).contains("5 unknown"), "{}", text(&output.stdout));
}

#[tokio::test]
async fn an_unreadable_store_still_reports_the_ledger() {
    let database = TestDatabase::create().await;
    ledger_with_successes(&database, &[("secrets-backup", 24 * 9)]).await;
    let (code, report, stderr) = status_json(&environment(&database.url, "file:///proc/keshless-status-test", &[]));
    assert_eq!(code, Some(2), "{report:#}");
    assert!(
        stderr.contains("warning: the backup store could not be read"),
        "{stderr}"
    );
    assert_eq!(report["overdue"], serde_json::json!(["secrets-backup"]));
    assert_eq!(job(&report, "postgres-backup")["storage"]["status"], "unavailable");
    assert_eq!(job(&report, "postgres-backup")["freshness"], "fresh");
}

#[tokio::test]
async fn job_summaries_pick_the_latest_of_each_kind() {
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    let job = "postgres-backup";
    succeeded(&ledger, &database, job, "postgres-backup:old", 50).await;
    succeeded(&ledger, &database, job, "postgres-backup:new", 2).await;
    // A failure, retried twice, still failed.
    for _ in 0..3 {
        ledger.claim(&claim(job, "postgres-backup:broken", "w")).await.unwrap();
        assert!(ledger
            .fail("postgres-backup:broken", "w", "connection refused")
            .await
            .unwrap());
    }
    age_row(&database, "postgres-backup:broken", 5).await;
    // An older dead-lettered one does not hide the newer failure.
    ledger.claim(&claim(job, "postgres-backup:dead", "w")).await.unwrap();
    assert!(ledger
        .dead_letter("postgres-backup:dead", "w", "permission denied")
        .await
        .unwrap());
    age_row(&database, "postgres-backup:dead", 20).await;
    // Running now, and another job's run.
    ledger
        .claim(&claim(job, "postgres-backup:now", "worker-1"))
        .await
        .unwrap();
    ledger
        .claim(&claim("secrets-backup", "secrets-backup:x", "w"))
        .await
        .unwrap();

    let summaries = ledger.job_summaries().await.expect("summaries");
    let names: Vec<&str> = summaries.jobs.iter().map(|summary| summary.job.as_str()).collect();
    assert_eq!(names, ["postgres-backup", "secrets-backup"]);
    let postgres = &summaries.jobs[0];
    assert_eq!(postgres.latest.idempotency_key, "postgres-backup:now");
    assert_eq!(
        postgres.last_success.as_ref().map(|run| run.idempotency_key.as_str()),
        Some("postgres-backup:new")
    );
    let failure = postgres.last_failure.as_ref().expect("failure");
    assert_eq!(failure.idempotency_key, "postgres-backup:broken");
    assert_eq!(failure.status, RunStatus::Failed);
    assert_eq!(failure.attempts, 3);
    assert_eq!(failure.last_error.as_deref(), Some("connection refused"));
    assert_eq!(postgres.running.len(), 1);
    assert_eq!(postgres.running[0].lease_owner.as_deref(), Some("worker-1"));
    assert!(postgres.running[0].lease_expires_at.unwrap() > summaries.database_now);
    let secrets = &summaries.jobs[1];
    assert!(secrets.last_success.is_none() && secrets.last_failure.is_none());

    // An empty ledger answers with no jobs; a missing one is an error.
    let empty = TestDatabase::create().await;
    assert!(self::ledger(&empty)
        .await
        .job_summaries()
        .await
        .unwrap()
        .jobs
        .is_empty());
    let lost = TestDatabase::create().await;
    let url: DatabaseUrl = lost.url.parse().unwrap();
    let error = Ledger::connect_without_migrating(&url)
        .unwrap()
        .job_summaries()
        .await
        .expect_err("no schema");
    match &error {
        LedgerError::Query(query) => assert_eq!(
            query.code(),
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE),
            "{query:?}"
        ),
        other => panic!("{other:?}"),
    }
    let schema = lost
        .connect()
        .await
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'keshless_ops'", &[])
        .await
        .unwrap();
    assert!(schema.is_none(), "reading created the ledger schema");
}

#[test]
fn help_documents_the_exit_codes_and_the_default_limits() {
    let output = keshless_ops(&["status", "--help"], &[]);
    assert!(output.status.success());
    let help = text(&output.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "0 every job fresh",
        "2 at least one job overdue",
        "1 neither the ledger nor the store could be read",
        "4 nothing overdue, but the ledger or the store could not be read",
        "78 configuration error",
        "FRESHNESS_<JOB>_HOURS",
    ] {
        assert!(help.contains(expected), "{expected:?} missing from:\n{help}");
    }
    // The limits the help names are the schedule's.
    for row in SCHEDULE {
        let limit = keshless_ops::status::human_duration(row.max_age).replace(" d", " days");
        let phrase = help
            .split(row.job)
            .nth(1)
            .unwrap_or_else(|| panic!("{} missing from the help", row.job));
        let sentence = phrase.split(';').next().unwrap();
        assert!(sentence.contains(&limit), "{}: {limit:?} not in {sentence:?}", row.job);
    }
}
