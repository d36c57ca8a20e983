//! The documents bucket's backup and restore against fake-gcs-server with a
//! versioned bucket (and the file store where the feature must work there
//! too): the inventory job and its mirror, `restore documents` as of a time and
//! from an inventory, `documents check`, and `doctor`.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use keshless_ops::documents::layout::{self, InventoryEntry};
use keshless_ops::jobs::documents_inventory::{DocumentsInventory, Params};
use keshless_ops::runtime::job::{Job, RunContext};
use keshless_ops::storage::{BlobStore, BlobStoreExt, ListOptions, WriteMode};

use common::text;

fn context(key: &str) -> RunContext {
    RunContext {
        job: "documents-inventory",
        idempotency_key: key.to_owned(),
        message_id: None,
        source: "cli".to_owned(),
        requested_by: None,
        attempt: 1,
        cancel: Default::default(),
    }
}

/// The environment the CLI needs to reach both stores.
fn environment(backups: &dyn BlobStore, documents: &dyn BlobStore) -> Vec<(&'static str, String)> {
    vec![
        ("BACKUP_STORE", backups.location().to_string()),
        ("DOCUMENTS_STORE", documents.location().to_string()),
        ("STORAGE_EMULATOR_HOST", common::storage_emulator_host()),
    ]
}

fn run_cli(arguments: &[&str], environment: &[(&'static str, String)]) -> std::process::Output {
    common::keshless_ops_with(arguments, environment)
}

async fn put(store: &dyn BlobStore, key: &str, body: &str) {
    store
        .put_bytes(key, Bytes::from(body.to_owned()), WriteMode::Overwrite)
        .await
        .unwrap_or_else(|error| panic!("put {key}: {error}"));
}

async fn read(store: &dyn BlobStore, key: &str) -> Option<String> {
    match store.get_bytes(key, 1 << 20).await {
        Ok(bytes) => Some(String::from_utf8(bytes.to_vec()).unwrap()),
        Err(keshless_ops::storage::StorageError::NotFound { .. }) => None,
        Err(error) => panic!("read {key}: {error}"),
    }
}

async fn version_count(store: &dyn BlobStore) -> usize {
    let options = ListOptions {
        versions: true,
        page_size: None,
    };
    store.list("", options).try_collect::<Vec<_>>().await.unwrap().len()
}

/// The JSON lines of `restore documents --json`: per-object lines and the summary.
fn json_lines(output: &std::process::Output) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut lines: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}")))
        .collect();
    let summary = lines.pop().expect("a summary line");
    (lines, summary["summary"].clone())
}

async fn run_inventory(backups: Arc<dyn BlobStore>, documents: Arc<dyn BlobStore>, key: &str) -> serde_json::Value {
    let job = DocumentsInventory::with_store(backups, documents);
    job.run(&context(key), Params::default())
        .await
        .unwrap_or_else(|error| panic!("documents-inventory: {error}"))
        .details
}

#[tokio::test]
async fn restore_as_of_brings_back_overwritten_and_deleted_objects() {
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let backups = common::gcs_store(true).await;
    let originals = [
        ("kyc/u-1/passport.jpg", "passport of u-1"),
        ("kyc/u-2/id.png", "id of u-2"),
        ("kyc/u-3/proof.pdf", "proof of u-3"),
        ("selfies/u-1.jpg", "selfie of u-1"),
    ];
    for (key, body) in originals {
        put(documents.as_ref(), key, body).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let point = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    put(documents.as_ref(), "kyc/u-1/passport.jpg", "forged passport").await;
    put(documents.as_ref(), "kyc/u-1/passport.jpg", "forged again").await;
    documents.delete("kyc/u-2/id.png", None).await.unwrap();
    put(documents.as_ref(), "kyc/u-4/new.jpg", "created after the point").await;
    put(documents.as_ref(), "selfies/u-1.jpg", "outside the prefix").await;

    let environment = environment(backups.as_ref(), documents.as_ref());
    let as_of = point.to_rfc3339();
    let arguments = |extra: &[&'static str]| {
        let mut arguments = vec![
            "restore",
            "documents",
            "--prefix",
            "kyc/",
            "--as-of",
            as_of.as_str(),
            "--json",
        ];
        arguments.extend_from_slice(extra);
        arguments
    };

    // Dry run: reports what it would do and changes nothing.
    let versions_before = version_count(documents.as_ref()).await;
    let output = run_cli(&arguments(&["--dry-run"]), &environment);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let (lines, summary) = json_lines(&output);
    assert_eq!(
        summary,
        serde_json::json!({"restored": 2, "unchanged": 1, "unavailable": 0, "newer_kept": 1, "newer_deleted": 0})
    );
    assert!(lines.iter().all(|line| line["dry_run"] == true), "{lines:?}");
    assert_eq!(version_count(documents.as_ref()).await, versions_before);
    assert_eq!(
        read(documents.as_ref(), "kyc/u-1/passport.jpg").await.as_deref(),
        Some("forged again")
    );
    assert_eq!(read(documents.as_ref(), "kyc/u-2/id.png").await, None);

    // The restore itself: byte-for-byte the originals, newer object kept.
    let output = run_cli(&arguments(&[]), &environment);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let (lines, summary) = json_lines(&output);
    assert_eq!(
        summary,
        serde_json::json!({"restored": 2, "unchanged": 1, "unavailable": 0, "newer_kept": 1, "newer_deleted": 0})
    );
    let result_of = |name: &str| {
        lines
            .iter()
            .find(|line| line["name"] == name)
            .map(|line| line["result"].as_str().unwrap().to_owned())
    };
    assert_eq!(result_of("kyc/u-1/passport.jpg").as_deref(), Some("restored"));
    assert_eq!(result_of("kyc/u-2/id.png").as_deref(), Some("restored"));
    assert_eq!(result_of("kyc/u-3/proof.pdf").as_deref(), Some("unchanged"));
    assert_eq!(result_of("kyc/u-4/new.jpg").as_deref(), Some("newer_kept"));
    for (key, body) in &originals[..3] {
        assert_eq!(read(documents.as_ref(), key).await.as_deref(), Some(*body), "{key}");
    }
    assert_eq!(
        read(documents.as_ref(), "kyc/u-4/new.jpg").await.as_deref(),
        Some("created after the point")
    );
    assert_eq!(
        read(documents.as_ref(), "selfies/u-1.jpg").await.as_deref(),
        Some("outside the prefix")
    );
    // History is kept: the restore added generations, it removed none.
    assert_eq!(version_count(documents.as_ref()).await, versions_before + 2);

    // A second identical run is a no-op.
    let versions_after = version_count(documents.as_ref()).await;
    let output = run_cli(&arguments(&[]), &environment);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let (_, summary) = json_lines(&output);
    assert_eq!(
        summary,
        serde_json::json!({"restored": 0, "unchanged": 3, "unavailable": 0, "newer_kept": 1, "newer_deleted": 0})
    );
    assert_eq!(version_count(documents.as_ref()).await, versions_after);

    // --delete-newer removes what was created after the point (it stays in history).
    let output = run_cli(&arguments(&["--delete-newer"]), &environment);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let (_, summary) = json_lines(&output);
    assert_eq!(summary["newer_deleted"], 1);
    assert_eq!(read(documents.as_ref(), "kyc/u-4/new.jpg").await, None);
    assert_eq!(version_count(documents.as_ref()).await, versions_after);
}

#[tokio::test]
async fn as_of_on_a_store_without_versions_is_refused_clearly() {
    common::init_test_logs();
    let (documents, _documents_directory) = common::file_store().await;
    let (backups, _backups_directory) = common::file_store().await;
    let output = run_cli(
        &[
            "restore",
            "documents",
            "--prefix",
            "kyc/",
            "--as-of",
            "2026-11-01T00:00:00Z",
        ],
        &environment(backups.as_ref(), documents.as_ref()),
    );
    assert_eq!(output.status.code(), Some(1));
    let errors = text(&output.stderr);
    assert!(errors.contains("--as-of needs object generations"), "{errors}");
    assert!(errors.contains(&documents.location().to_string()), "{errors}");
    assert!(errors.contains("versioned gs:// bucket"), "{errors}");
}

#[tokio::test]
async fn inventory_lists_every_object_and_the_mirror_is_incremental() {
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let backups = common::gcs_store(true).await;
    let count: usize = std::env::var("KESHLESS_TEST_INVENTORY_OBJECTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1000);
    let prefixes = ["kyc/", "selfies/", "vendor-kyc/", "vendor-media/"];
    // Bounded concurrency keeps the emulator responsive.
    futures::stream::iter(0..count)
        .map(|index| {
            let documents = Arc::clone(&documents);
            async move {
                let key = format!("{}object-{index:06}.bin", prefixes[index % prefixes.len()]);
                put(documents.as_ref(), &key, &"x".repeat(index % 97)).await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    let details = run_inventory(backups.clone(), documents.clone(), "documents-inventory:first").await;
    assert_eq!(details["objects"], count as u64, "{details}");
    assert_eq!(details["already_complete"], false);
    assert_eq!(details["mirror"]["copied"], count as u64, "{details}");
    assert_eq!(details["mirror"]["already_mirrored"], 0);

    // Every live object is in the inventory, with its generation and checksums.
    let date = chrono::Utc::now().date_naive();
    let summary = layout::read_summary(backups.as_ref(), date).await.unwrap();
    assert_eq!(summary.object_count, count as u64);
    let expected_bytes: u64 = (0..count).map(|index| (index % 97) as u64).sum();
    assert_eq!(summary.total_bytes, expected_bytes);
    for prefix in prefixes {
        let expected = (0..count)
            .filter(|index| prefixes[index % prefixes.len()] == prefix)
            .count() as u64;
        assert_eq!(summary.prefixes[prefix].objects, expected, "{prefix}");
    }
    let entries: Vec<InventoryEntry> = layout::read_entries(
        backups.as_ref(),
        summary.inventory.clone(),
        Some(summary.inventory_sha256.clone()),
    )
    .try_collect()
    .await
    .unwrap();
    let live: Vec<_> = documents.list("", ListOptions::default()).try_collect().await.unwrap();
    assert_eq!(entries.len(), live.len());
    for (entry, object) in entries.iter().zip(&live) {
        assert_eq!(entry.name, object.key);
        assert_eq!(Some(entry.generation), object.generation);
        assert_eq!(entry.size, object.size);
        assert_eq!(entry.crc32c, object.crc32c);
        assert_eq!(entry.md5, object.md5);
    }
    // Every generation is mirrored once, under name@generation.
    let mirrored: Vec<_> = backups
        .list(layout::OBJECTS_PREFIX, ListOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(mirrored.len(), count);
    let sample = &entries[count / 2];
    let copy = backups
        .stat(&layout::mirror_key(&sample.name, sample.generation))
        .await
        .unwrap()
        .expect("mirrored");
    assert_eq!(copy.crc32c, sample.crc32c);

    // A rerun the same day leaves the complete inventory alone and copies nothing.
    let summary_before = backups.stat(&layout::summary_key(date)).await.unwrap().unwrap();
    let details = run_inventory(backups.clone(), documents.clone(), "documents-inventory:second").await;
    assert_eq!(details["already_complete"], true, "{details}");
    assert_eq!(details["mirror"]["copied"], 0, "{details}");
    assert_eq!(details["mirror"]["already_mirrored"], count as u64, "{details}");
    let summary_after = backups.stat(&layout::summary_key(date)).await.unwrap().unwrap();
    assert_eq!(
        summary_after.generation, summary_before.generation,
        "the summary was rewritten"
    );
}

#[tokio::test]
async fn a_killed_attempts_leftover_is_replaced() {
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let backups = common::gcs_store(true).await;
    put(documents.as_ref(), "kyc/a.jpg", "a").await;
    let date = chrono::Utc::now().date_naive();
    put(backups.as_ref(), &layout::inventory_key(date), "half a gzip stream").await;
    let details = run_inventory(backups.clone(), documents.clone(), "documents-inventory:retry").await;
    assert_eq!(details["already_complete"], false, "{details}");
    assert_eq!(details["objects"], 1);
    let summary = layout::read_summary(backups.as_ref(), date).await.unwrap();
    let entries: Vec<InventoryEntry> = layout::read_entries(
        backups.as_ref(),
        summary.inventory.clone(),
        Some(summary.inventory_sha256.clone()),
    )
    .try_collect()
    .await
    .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "kyc/a.jpg");
}

#[tokio::test]
async fn restore_from_the_mirror_reports_a_purged_generation_and_restores_the_rest() {
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let backups = common::gcs_store(true).await;
    put(documents.as_ref(), "kyc/a.jpg", "original a").await;
    put(documents.as_ref(), "kyc/b.jpg", "original b").await;
    run_inventory(backups.clone(), documents.clone(), "documents-inventory:day").await;
    let date = chrono::Utc::now().date_naive();
    let summary = layout::read_summary(backups.as_ref(), date).await.unwrap();
    let entries: Vec<InventoryEntry> = layout::read_entries(backups.as_ref(), summary.inventory.clone(), None)
        .try_collect()
        .await
        .unwrap();
    // The mirrored copy of a's generation is purged (as retention would).
    let a = entries.iter().find(|entry| entry.name == "kyc/a.jpg").unwrap();
    backups
        .delete(&layout::mirror_key(&a.name, a.generation), None)
        .await
        .unwrap();
    put(documents.as_ref(), "kyc/a.jpg", "ransomed a").await;
    put(documents.as_ref(), "kyc/b.jpg", "ransomed b").await;

    let environment = environment(backups.as_ref(), documents.as_ref());
    let date_text = date.to_string();
    let arguments = [
        "restore",
        "documents",
        "--prefix",
        "kyc/",
        "--inventory",
        date_text.as_str(),
        "--from-mirror",
        "--json",
    ];
    let output = run_cli(&arguments, &environment);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let (lines, summary) = json_lines(&output);
    assert_eq!(
        summary,
        serde_json::json!({"restored": 1, "unchanged": 0, "unavailable": 1, "newer_kept": 0, "newer_deleted": 0})
    );
    let a_line = lines.iter().find(|line| line["name"] == "kyc/a.jpg").unwrap();
    assert_eq!(a_line["result"], "unavailable");
    assert_eq!(a_line["generation"], a.generation);
    assert_eq!(
        read(documents.as_ref(), "kyc/b.jpg").await.as_deref(),
        Some("original b")
    );
    assert_eq!(
        read(documents.as_ref(), "kyc/a.jpg").await.as_deref(),
        Some("ransomed a")
    );
    assert!(
        text(&output.stderr).contains("1 objects could not be restored"),
        "{}",
        text(&output.stderr)
    );

    // From the bucket's own history instead, a's generation is still there.
    let history_arguments = [
        "restore",
        "documents",
        "--prefix",
        "kyc/",
        "--inventory",
        date_text.as_str(),
        "--json",
    ];
    let output = run_cli(&history_arguments, &environment);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let (_, summary) = json_lines(&output);
    assert_eq!(summary["restored"], 1);
    assert_eq!(summary["unchanged"], 1);
    assert_eq!(
        read(documents.as_ref(), "kyc/a.jpg").await.as_deref(),
        Some("original a")
    );
}

#[tokio::test]
async fn restore_from_an_inventory_whose_generation_is_gone_from_history() {
    // fake-gcs-server cannot delete one non-current generation (it ignores
    // `generation` on DELETE), so the inventory names a generation that the
    // bucket's history no longer has, as after a lifecycle purge.
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let backups = common::gcs_store(true).await;
    put(documents.as_ref(), "kyc/a.jpg", "original a").await;
    put(documents.as_ref(), "kyc/b.jpg", "original b").await;
    let live: Vec<_> = documents.list("", ListOptions::default()).try_collect().await.unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
    let mut writer = layout::InventoryWriter::default();
    let mut body = Vec::new();
    for object in &live {
        let purged = object.key == "kyc/a.jpg";
        let entry = InventoryEntry {
            name: object.key.clone(),
            generation: object.generation.unwrap() - if purged { 1_000_000 } else { 0 },
            size: object.size,
            crc32c: object.crc32c.clone(),
            md5: object.md5.clone(),
            content_type: object.content_type.clone(),
            updated: object.updated,
        };
        if let Some(chunk) = writer.push(&entry).unwrap() {
            body.extend_from_slice(&chunk);
        }
    }
    body.extend_from_slice(&writer.finish().unwrap());
    let report = backups
        .put_bytes(&layout::inventory_key(date), body.into(), WriteMode::CreateOnly)
        .await
        .unwrap();
    let summary = layout::Summary {
        format: layout::SUMMARY_FORMAT.into(),
        version: 1,
        job: "documents-inventory".into(),
        idempotency_key: "test".into(),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        documents_store: documents.location().to_string(),
        object_count: 2,
        total_bytes: 20,
        prefixes: Default::default(),
        inventory: layout::inventory_key(date),
        inventory_size_bytes: report.bytes,
        inventory_sha256: report.sha256,
        generations: "gcs".into(),
        mirror: None,
    };
    backups
        .put_bytes(
            &layout::summary_key(date),
            serde_json::to_vec(&summary).unwrap().into(),
            WriteMode::CreateOnly,
        )
        .await
        .unwrap();
    put(documents.as_ref(), "kyc/a.jpg", "ransomed a").await;
    put(documents.as_ref(), "kyc/b.jpg", "ransomed b").await;

    let output = run_cli(
        &[
            "restore",
            "documents",
            "--prefix",
            "kyc/",
            "--inventory",
            "2026-01-15",
            "--json",
        ],
        &environment(backups.as_ref(), documents.as_ref()),
    );
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let (_, summary) = json_lines(&output);
    assert_eq!(summary["unavailable"], 1);
    assert_eq!(summary["restored"], 1);
    assert_eq!(
        read(documents.as_ref(), "kyc/b.jpg").await.as_deref(),
        Some("original b")
    );
}

#[tokio::test]
async fn file_stores_inventory_mirror_and_restore_from_the_mirror() {
    common::init_test_logs();
    let (documents, _documents_directory) = common::file_store().await;
    let (backups, _backups_directory) = common::file_store().await;
    put(documents.as_ref(), "kyc/a.jpg", "original a").await;
    put(documents.as_ref(), "selfies/b.jpg", "original b").await;
    let details = run_inventory(backups.clone(), documents.clone(), "documents-inventory:file").await;
    assert_eq!(details["objects"], 2, "{details}");
    assert_eq!(details["mirror"]["copied"], 2, "{details}");
    let details = run_inventory(backups.clone(), documents.clone(), "documents-inventory:file-again").await;
    assert_eq!(details["mirror"]["copied"], 0, "{details}");

    put(documents.as_ref(), "kyc/a.jpg", "ransomed a").await;
    documents.delete("selfies/b.jpg", None).await.unwrap();
    let environment = environment(backups.as_ref(), documents.as_ref());
    let date = chrono::Utc::now().date_naive().to_string();
    let arguments = [
        "restore",
        "documents",
        "--prefix",
        "",
        "--inventory",
        date.as_str(),
        "--from-mirror",
        "--json",
    ];
    let output = run_cli(&arguments, &environment);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let (_, summary) = json_lines(&output);
    assert_eq!(summary["restored"], 2);
    assert_eq!(
        read(documents.as_ref(), "kyc/a.jpg").await.as_deref(),
        Some("original a")
    );
    assert_eq!(
        read(documents.as_ref(), "selfies/b.jpg").await.as_deref(),
        Some("original b")
    );
    let output = run_cli(&arguments, &environment);
    let (_, summary) = json_lines(&output);
    assert_eq!(summary["restored"], 0, "second run");
    assert_eq!(summary["unchanged"], 2, "second run");
}

#[tokio::test]
async fn documents_check_reports_missing_and_changed_objects() {
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let backups = common::gcs_store(true).await;
    for key in ["kyc/a.jpg", "kyc/b.jpg", "kyc/c.jpg"] {
        put(documents.as_ref(), key, key).await;
    }
    let job_details = run_inventory(backups.clone(), documents.clone(), "documents-inventory:check").await;
    assert_eq!(job_details["objects"], 3);
    let environment = environment(backups.as_ref(), documents.as_ref());

    let output = run_cli(&["documents", "check", "--json"], &environment);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["unchanged"], 3, "{report}");

    documents.delete("kyc/a.jpg", None).await.unwrap();
    put(documents.as_ref(), "kyc/b.jpg", "tampered").await;
    put(documents.as_ref(), "kyc/d.jpg", "new").await;
    let output = run_cli(&["documents", "check", "--json"], &environment);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["missing"], 1, "{report}");
    assert_eq!(report["changed"], 1, "{report}");
    assert_eq!(report["added"], 1, "{report}");
    assert_eq!(report["unchanged"], 1, "{report}");
    let findings: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|finding| {
            (
                finding["name"].as_str().unwrap().into(),
                finding["problem"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        findings,
        [
            ("kyc/a.jpg".into(), "missing".into()),
            ("kyc/b.jpg".into(), "changed".into())
        ]
    );

    let output = run_cli(&["documents", "check", "--inventory", "2020-01-01"], &environment);
    assert_eq!(output.status.code(), Some(1));
    let errors = text(&output.stderr);
    assert!(errors.contains("no complete inventory for 2020-01-01"), "{errors}");
    assert!(
        errors.contains(&chrono::Utc::now().date_naive().to_string()),
        "lists the complete ones: {errors}"
    );
}

#[tokio::test]
async fn doctor_reports_bucket_hardening_and_exits_3_on_a_finding() {
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let backups = common::gcs_store(false).await;
    let check_of = |report: &serde_json::Value, role: &str, setting: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["role"] == role && check["setting"] == setting)
            .cloned()
            .unwrap()
    };
    let status_of = |report: &serde_json::Value, role: &str, setting: &str| {
        check_of(report, role, setting)["status"].as_str().unwrap().to_owned()
    };

    // fake-gcs-server does not report iamConfiguration, so public access
    // prevention and uniform access cannot be confirmed there, and it keeps
    // no retention policy (tests/storage.rs): findings.
    let output = run_cli(
        &["doctor", "--json"],
        &environment(backups.as_ref(), documents.as_ref()),
    );
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status_of(&report, "documents", "versioning"), "ok");
    assert_eq!(status_of(&report, "documents", "public_access_prevention"), "finding");
    assert_eq!(
        status_of(&report, "documents", "uniform_bucket_level_access"),
        "finding"
    );
    let retention = check_of(&report, "backups", "retention_policy");
    assert_eq!(retention["status"], "finding");
    assert!(
        retention["detail"]
            .as_str()
            .unwrap()
            .contains("can delete every backup"),
        "{retention}"
    );
    assert_eq!(report["findings"], 3);

    let (file_documents, _documents_directory) = common::file_store().await;
    let (file_backups, _backups_directory) = common::file_store().await;
    let output = run_cli(
        &["doctor"],
        &environment(file_backups.as_ref(), file_documents.as_ref()),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("not applicable"),
        "{}",
        text(&output.stdout)
    );
}

const DUMMY_KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gcs-conformance/test_service_account.not-a-test.json"
);

/// `documents url` through the binary, signing with a key file (Google's
/// published dummy key) against fake-gcs-server: the URL names the document
/// (an `&` in its name escaped), serves its bytes, lasts what was asked (at
/// most 7 days: longer is clamped and said), and the log says who asked for
/// which document until when, never the URL's signature.
#[tokio::test]
async fn documents_url_signs_one_document_and_logs_no_signature() {
    common::init_test_logs();
    let documents = common::gcs_store(true).await;
    let name = "kyc/u-1/passport&scan.jpg";
    put(documents.as_ref(), name, "scan-bytes").await;
    let generation = documents.stat(name).await.unwrap().unwrap().generation.unwrap();
    let host = common::storage_emulator_host();
    let keshless_ops::storage::StoreLocation::Gcs { bucket, .. } = documents.location().clone() else {
        unreachable!()
    };
    let environment = vec![
        ("DOCUMENTS_STORE", documents.location().to_string()),
        ("STORAGE_EMULATOR_HOST", host.clone()),
        ("GOOGLE_APPLICATION_CREDENTIALS", DUMMY_KEY_FILE.to_owned()),
        ("USER", "oncall-ana".to_owned()),
    ];
    let output = run_cli(&["documents", "url", name, "--expires", "15m", "--json"], &environment);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let issued: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let url = issued["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "http://{host}/{bucket}/kyc/u-1/passport%26scan.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256\
             &X-Goog-Credential=test-iam-credentials%40dummy-project-id.iam.gserviceaccount.com%2F"
        )),
        "{url}"
    );
    assert!(url.contains("&X-Goog-Expires=900&"), "{url}");
    assert_eq!(
        (issued["expires_seconds"].as_u64(), issued["generation"].as_i64()),
        (Some(900), Some(generation))
    );
    let signature = url.rsplit_once("X-Goog-Signature=").unwrap().1;
    assert_eq!(signature.len(), 512, "a 2048-bit RSA signature in hex");
    let logs = text(&output.stderr);
    assert!(
        logs.contains("signed URL issued") && logs.contains(name) && logs.contains("oncall-ana"),
        "{logs}"
    );
    assert!(logs.contains(&issued["expires_at"].as_str().unwrap()[..19]), "{logs}");
    assert!(
        !logs.contains(signature) && !logs.contains("X-Goog-Signature"),
        "{logs}"
    );
    // fake-gcs-server serves path-style URLs for its public host name (it
    // checks no signature: Google's vectors prove those, in the unit tests).
    let served = reqwest::Client::new()
        .get(url)
        .header(reqwest::header::HOST, "storage.googleapis.com")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), "scan-bytes");

    // A generation that exists is signed into the URL; one that does not is refused.
    let output = run_cli(
        &[
            "documents",
            "url",
            name,
            "--generation",
            &generation.to_string(),
            "--expires",
            "8d",
        ],
        &environment,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let url = text(&output.stdout);
    assert!(
        url.contains(&format!("&generation={generation}&")) && url.contains("X-Goog-Expires=604800&"),
        "{url}"
    );
    assert!(
        text(&output.stderr).contains("clamped to 604800 s (7 days)"),
        "{}",
        text(&output.stderr)
    );
    for (arguments, code, says) in [
        (
            vec!["documents", "url", name, "--generation", "1"],
            1,
            "has no generation 1",
        ),
        (
            vec!["documents", "url", "kyc/u-2/none.jpg"],
            1,
            "no document \"kyc/u-2/none.jpg\"",
        ),
        (
            vec!["documents", "url", name, "--method", "PUT"],
            2,
            "possible values: GET, HEAD",
        ),
        (vec!["documents", "url", name, "--expires", "soon"], 2, "15m"),
    ] {
        let output = run_cli(&arguments, &environment);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{arguments:?}: {}",
            text(&output.stderr)
        );
        assert!(
            text(&output.stderr).contains(says),
            "{arguments:?}: {}",
            text(&output.stderr)
        );
        assert!(output.stdout.is_empty());
    }
    let (files, _directory) = common::file_store().await;
    let mut on_files = environment.clone();
    on_files[0].1 = files.location().to_string();
    let output = run_cli(&["documents", "url", name], &on_files);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("not a gs:// documents store"),
        "{}",
        text(&output.stderr)
    );
}

/// The signBlob path against a local fake of IAM's iamcredentials API: the
/// request names the service account and carries its token, and the URL it
/// gives is byte for byte Google's published vector; a refusal says which
/// role is missing.
#[tokio::test]
async fn iam_sign_blob_signs_as_the_service_account() {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use base64::Engine as _;
    use keshless_ops::documents::signed_url::{self, AccessTokens, IamSigner, KeySigner, Signer, UrlRequest, UrlStyle};

    let email = "test-iam-credentials@dummy-project-id.iam.gserviceaccount.com";
    let key = Arc::new(KeySigner::from_json(&std::fs::read(DUMMY_KEY_FILE).unwrap()).unwrap());
    async fn sign_blob(
        State(key): State<Arc<KeySigner>>,
        Path(path): Path<String>,
        headers: HeaderMap,
        body: axum::Json<serde_json::Value>,
    ) -> (StatusCode, axum::Json<serde_json::Value>) {
        let engine = base64::engine::general_purpose::STANDARD;
        let allowed = path == format!("projects/-/serviceAccounts/{}:signBlob", key.access_id())
            && headers.get("authorization").and_then(|value| value.to_str().ok()) == Some("Bearer fake-access-token");
        if !allowed {
            let error = serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                "message": format!("Permission 'iam.serviceAccounts.signBlob' denied on resource {path}")}});
            return (StatusCode::FORBIDDEN, axum::Json(error));
        }
        let payload = engine.decode(body["payload"].as_str().unwrap()).unwrap();
        let signed = key.sign(&payload).await.unwrap();
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"keyId": "ffffffff", "signedBlob": engine.encode(signed)})),
        )
    }
    let app = axum::Router::new()
        .route("/v1/{*path}", axum::routing::post(sign_blob))
        .with_state(key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    struct Fixed;
    #[async_trait::async_trait]
    impl AccessTokens for Fixed {
        async fn access_token(&self) -> anyhow::Result<secrecy::SecretString> {
            Ok("fake-access-token".into())
        }
    }
    let vectors: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gcs-conformance/v4_signatures.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let vector = &vectors["signingV4Tests"][0];
    assert_eq!(vector["description"], "Simple GET");
    let request = UrlRequest {
        method: "GET",
        scheme: "https",
        host: "storage.googleapis.com",
        style: UrlStyle::Path,
        bucket: "test-bucket",
        object: Some("test-object"),
        headers: &[],
        query: &[],
        timestamp: "2019-02-01T09:00:00Z".parse().unwrap(),
        expires_seconds: 10,
        access_id: "",
    };
    let signer = IamSigner::new(&endpoint, email, Box::new(Fixed)).unwrap();
    let url = signed_url::sign(&signer, &request).await.unwrap();
    assert_eq!(url, vector["expectedUrl"].as_str().unwrap());

    let other = IamSigner::new(
        &endpoint,
        "someone-else@dummy-project-id.iam.gserviceaccount.com",
        Box::new(Fixed),
    )
    .unwrap();
    let refused = signed_url::sign(&other, &request).await.unwrap_err().to_string();
    assert!(
        refused.contains("refused (403 Forbidden)") && refused.contains("roles/iam.serviceAccountTokenCreator"),
        "{refused}"
    );
}
