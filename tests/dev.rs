//! `keshless-ops dev --once` through the binary, on a fresh demo database and
//! an empty state directory: every artefact of SPEC section 2 is written and
//! verifies, and a second run the same day runs nothing again.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use keshless_ops::crypto::EnvelopeCodec;
use keshless_ops::jobs::secrets_backup::LATEST_KEY;
use keshless_ops::postgres::layout;
use keshless_ops::storage::{BlobStore, BlobStoreExt, FileStore};
use secrecy::SecretString;

fn dev_once(state: &std::path::Path, demo_database: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(["dev", "--once", "--state-dir"])
        .arg(state)
        .args(["--demo-database", demo_database])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEV_POSTGRES_URL", common::admin_database_url())
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run keshless-ops dev")
}

async fn keys(store: &dyn BlobStore) -> BTreeSet<String> {
    common::all_keys(store).await
}

#[tokio::test]
async fn dev_once_writes_every_artefact_and_is_idempotent_the_same_day() {
    common::init_test_logs();
    let state = tempfile::tempdir().unwrap();
    let demo = format!("keshless_test_dev_{}", common::unique_suffix());
    // Dropped (WITH FORCE) at the end of the test, even on failure; dev creates it.
    let _guard = common::TestDatabase {
        name: demo.clone(),
        url: String::new(),
    };

    let output = dev_once(state.path(), &demo);
    let stdout = common::text(&output.stdout);
    assert!(
        output.status.success(),
        "dev --once failed:\n{stdout}\n{}",
        common::text(&output.stderr)
    );
    for job in [
        "postgres-backup",
        "secrets-backup",
        "documents-inventory",
        "cleanup-old-backups",
        "dr-drill",
    ] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(job))
            .unwrap_or_else(|| panic!("{job} missing from the summary:\n{stdout}"));
        assert!(line.contains(" ok ") && line.contains("succeeded"), "{line}");
    }

    let backups = FileStore::open(
        format!("file://{}", state.path().join("backups").display())
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();

    // PostgreSQL: one complete daily backup that verifies.
    let listed = layout::list(&backups, Some(layout::Class::Daily)).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].is_complete());
    let manifest = listed[0].manifest.as_ref().unwrap();
    assert_eq!(manifest.database, demo);
    assert!(manifest
        .tables
        .iter()
        .any(|table| table.table == "transfers" && table.rows == 2000));
    layout::verify(&backups, &listed[0].id).await.expect("backup verifies");
    // The month's first backup was copied to monthly/.
    assert_eq!(
        layout::list(&backups, Some(layout::Class::Monthly))
            .await
            .unwrap()
            .len(),
        1
    );

    // Secrets: the weekly and latest envelopes decrypt with the dev key.
    let dev_env = std::fs::read_to_string(state.path().join("dev.env")).unwrap();
    let key = dev_env
        .lines()
        .find_map(|line| line.strip_prefix("SECRETS_ENCRYPTION_KEY="))
        .expect("dev.env holds the key");
    let latest = backups.get_bytes(LATEST_KEY, 1 << 20).await.unwrap();
    // dev backs up its Secret Manager fake's demo secrets (4 global, 1 regional).
    let contents = EnvelopeCodec::standard()
        .open_contents(&SecretString::from(key.to_owned()), &latest)
        .expect("latest decrypts");
    let keshless_ops::crypto::Contents::SecretManager(document) = contents else {
        panic!("dev's secrets backup is of Secret Manager");
    };
    let backup = keshless_ops::secret_manager::SecretManagerBackup::from_json(&document).unwrap();
    assert_eq!(backup.secrets.len(), 5, "{:?}", backup.names());
    assert_eq!(backup.counts().versions, 3 + 4 + 1);
    assert_eq!(backup.counts().enabled_versions, 3 + 2 + 1);

    // Documents: a complete inventory of the seeded documents.
    let date = keshless_ops::documents::layout::newest_complete(&backups)
        .await
        .unwrap()
        .expect("a complete inventory");
    let summary = keshless_ops::documents::layout::read_summary(&backups, date)
        .await
        .unwrap();
    assert_eq!(summary.object_count, 5);

    // The drill passed and wrote its report.
    let reports: Vec<String> = keys(&backups)
        .await
        .into_iter()
        .filter(|key| key.starts_with("drills/"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&backups.get_bytes(&reports[0], 1 << 20).await.unwrap()).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");
    let coverage = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["name"] == "secret-manager-coverage")
        .expect("the drill checks Secret Manager against the backup");
    assert!(
        coverage["detail"].as_str().unwrap().contains("all 5 secrets"),
        "{coverage:#}"
    );

    // Again the same day: every job's period already succeeded; nothing new is written.
    let before = keys(&backups).await;
    let output = dev_once(state.path(), &demo);
    let stdout = common::text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", common::text(&output.stderr));
    assert_eq!(stdout.matches("already succeeded this period").count(), 5, "{stdout}");
    assert_eq!(keys(&backups).await, before);
}
