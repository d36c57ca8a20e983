//! The DR drill against real parts: a real PostgreSQL backup restored into a
//! real scratch database, real secrets envelopes, a real documents inventory.
//! A good drill passes and leaves no scratch database; a corrupted dump fails
//! naming the checksum, a deleted document fails naming the object, a missing
//! secrets backup fails rather than being skipped.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, Utc};
use common::TestDatabase;
use keshless_ops::config::DumpConfig;
use keshless_ops::crypto::{EnvelopeCodec, KdfParams, SecretMap};
use keshless_ops::jobs::dr_drill::{Documents, DrDrill, DrillParams, Report};
use keshless_ops::jobs::secrets_backup::weekly_key;
use keshless_ops::jobs::{documents_inventory::DocumentsInventory, PostgresBackup};
use keshless_ops::postgres::archive::{self, CompressionSetting, EncodeSettings, IdentitySource, Recipients};
use keshless_ops::postgres::layout;
use keshless_ops::postgres::process::pg_dump_program;
use keshless_ops::runtime::job::{Job, JobError, RunContext};
use keshless_ops::storage::{BlobStore, BlobStoreExt, FileStore, WriteMode};
use secrecy::SecretString;

const SCHEMA: &str = r#"
CREATE SCHEMA payments;
CREATE TABLE payments.transfers (id bigserial PRIMARY KEY, amount numeric(14, 2) NOT NULL, details jsonb NOT NULL);
CREATE TABLE public.users (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO payments.transfers (amount, details) SELECT i + 0.5, jsonb_build_object('i', i) FROM generate_series(1, 500) AS i;
INSERT INTO public.users SELECT i, 'user-' || i FROM generate_series(1, 40) AS i;
"#;

const PASSPHRASE: &str = "drill-test-passphrase-of-at-least-32-chars";

fn codec() -> EnvelopeCodec {
    EnvelopeCodec::with_params(KdfParams::INSECURE_FOR_TESTS, KdfParams::INSECURE_FOR_TESTS)
}

fn context(job: &'static str, key: &str) -> RunContext {
    RunContext {
        job,
        idempotency_key: key.to_owned(),
        message_id: None,
        source: "cli".into(),
        requested_by: None,
        attempt: 1,
        cancel: Default::default(),
    }
}

/// A database, its backup, two weekly secrets backups and a documents
/// inventory: everything a drill needs.
struct World {
    database: TestDatabase,
    backups: Arc<FileStore>,
    documents: Arc<FileStore>,
    _directories: (tempfile::TempDir, tempfile::TempDir),
}

async fn secrets_backup(store: &dyn BlobStore, days_ago: i64, names: &[&str]) {
    let mut secrets = SecretMap::new();
    for name in names {
        secrets.insert(*name, SecretString::from(format!("value-of-{name}")));
    }
    let created = Utc::now() - Duration::days(days_ago);
    let sealed = codec()
        .seal(&SecretString::from(PASSPHRASE), &secrets, created)
        .unwrap();
    store
        .put_bytes(&weekly_key(created.date_naive()), sealed.into(), WriteMode::CreateOnly)
        .await
        .unwrap();
}

async fn world() -> World {
    world_reached_by(|database| database.url.clone()).await
}

/// [`world`], with the backup connecting to the database by `url_of`.
async fn world_reached_by(url_of: impl Fn(&TestDatabase) -> String) -> World {
    world_with(url_of, EncodeSettings::default()).await
}

/// [`world`], with the dump stored as `encoding` says.
async fn world_with(url_of: impl Fn(&TestDatabase) -> String, encoding: EncodeSettings) -> World {
    common::init_test_logs();
    let database = TestDatabase::create().await;
    database.connect().await.batch_execute(SCHEMA).await.unwrap();
    let (backups, backups_directory) = common::file_store().await;
    let (documents, documents_directory) = common::file_store().await;

    let backup = PostgresBackup {
        backups: backups.clone(),
        database_url: url_of(&database).parse().unwrap(),
        databases: Vec::new(),
        pg_dump: pg_dump_program(),
        encoding,
        clock: Default::default(),
    };
    backup
        .run(&context("postgres-backup", "postgres-backup:drill"), Default::default())
        .await
        .expect("postgres backup");

    secrets_backup(backups.as_ref(), 7, &["API_TOKEN", "WEBHOOK_KEY"]).await;
    secrets_backup(backups.as_ref(), 0, &["API_TOKEN", "WEBHOOK_KEY", "NEW_ONE"]).await;

    for (name, body) in [
        ("kyc/user-1/passport.jpg", "passport of user 1"),
        ("kyc/user-2/id-card.png", "id card of user 2"),
        ("selfies/user-1.jpg", "selfie"),
    ] {
        documents
            .put_bytes(name, Bytes::from(body), WriteMode::CreateOnly)
            .await
            .unwrap();
    }
    DocumentsInventory::with_store(backups.clone(), documents.clone())
        .run(
            &context("documents-inventory", "documents-inventory:drill"),
            serde_json::from_value(serde_json::json!({"mirror": false})).unwrap(),
        )
        .await
        .expect("documents inventory");

    World {
        database,
        backups,
        documents,
        _directories: (backups_directory, documents_directory),
    }
}

fn drill(world: &World) -> DrDrill {
    DrDrill {
        backups: world.backups.clone(),
        scratch_server: world.database.url.parse().unwrap(),
        databases: Vec::new(),
        secrets_key: SecretString::from(PASSPHRASE),
        codec: codec(),
        documents: Documents::Open(world.documents.clone()),
        clock: Default::default(),
        secret_manager: None,
        dumps: Default::default(),
        full: Default::default(),
    }
}

/// Scratch database names mentioned in a report.
fn scratch_databases(report: &Report) -> Vec<String> {
    let text = serde_json::to_string(report).unwrap();
    let mut names = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("keshless_drill_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.push(name);
    }
    names.sort();
    names.dedup();
    names
}

async fn database_exists(world: &World, name: &str) -> bool {
    let client = world.database.connect().await;
    client
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// The report names exactly one scratch database, and it no longer exists.
async fn assert_one_scratch_database_gone(world: &World, report: &Report) {
    let scratch = scratch_databases(report);
    assert_eq!(scratch.len(), 1, "{scratch:?}");
    assert!(
        !database_exists(world, &scratch[0]).await,
        "{} still exists",
        scratch[0]
    );
}

fn step<'a>(report: &'a Report, name: &str) -> &'a keshless_ops::jobs::dr_drill::Step {
    report
        .steps
        .iter()
        .find(|step| step.name == name)
        .expect("step in report")
}

#[tokio::test]
async fn a_good_drill_passes_reports_rto_and_rpo_and_leaves_no_scratch_database() {
    let world = world().await;
    let report = drill(&world)
        .rehearse("dr-drill:2026-12", &DrillParams::default())
        .await
        .expect("drill runs");
    assert!(report.passed, "{report:#?}");
    assert_eq!(report.steps.len(), 3);
    for step in &report.steps {
        assert!(step.passed && step.error.is_none(), "{step:#?}");
        assert!(step.backup.is_some(), "every step names the backup it used: {step:#?}");
        let age = step.backup_age_seconds.expect("RPO");
        assert!((0..3600).contains(&age), "backups were taken just now: {age}");
    }
    let restore = step(&report, "postgres-restore");
    assert!(restore.detail.contains("2 tables"), "{}", restore.detail);
    let secrets = step(&report, "secrets-decrypt");
    assert!(
        secrets.detail.contains("3 secrets decrypted (2 in the previous backup"),
        "{}",
        secrets.detail
    );
    assert!(step(&report, "documents-check").detail.contains("3 objects checked"));

    // The scratch database was created and is gone.
    assert_one_scratch_database_gone(&world, &report).await;

    // The report is in the store, and a second drill the same day does not overwrite it.
    let stored: Report =
        serde_json::from_slice(&world.backups.get_bytes(&report.report, 1 << 20).await.unwrap()).unwrap();
    assert_eq!(stored, report);
    assert!(report.report.starts_with("drills/") && report.report.ends_with(".json"));
    let again = drill(&world)
        .rehearse("dr-drill:again", &DrillParams::default())
        .await
        .unwrap();
    assert!(again.passed);
    assert_ne!(again.report, report.report);
    assert!(world.backups.stat(&report.report).await.unwrap().is_some());

    // Through the job interface: an outcome that names the report.
    let outcome = drill(&world)
        .run(&context("dr-drill", "dr-drill:2026-12b"), Default::default())
        .await
        .expect("drill job");
    assert!(outcome.summary.starts_with("drill passed"), "{}", outcome.summary);
}

/// Production reaches Cloud SQL over a Unix socket
/// (`postgres://USER:PASSWORD@/DATABASE?host=/cloudsql/...`): an empty host,
/// which the scratch database's URL must keep.
#[tokio::test]
async fn a_drill_over_a_unix_socket_url_passes_and_drops_its_scratch_database() {
    let world = world_reached_by(|database| common::socket_url(&database.name)).await;
    let socket_server = common::socket_url("postgres");
    let report = DrDrill {
        scratch_server: socket_server.parse().unwrap(),
        ..drill(&world)
    }
    .rehearse("dr-drill:socket", &DrillParams::default())
    .await
    .expect("drill runs");
    assert!(report.passed, "{report:#?}");
    let restore = step(&report, "postgres-restore");
    assert!(restore.passed && restore.detail.contains("2 tables"), "{restore:#?}");
    assert_one_scratch_database_gone(&world, &report).await;
}

#[tokio::test]
async fn a_corrupted_newest_dump_fails_the_drill_naming_the_checksum() {
    let world = world().await;
    // Flip one byte of the dump on disk: same size, different content.
    let listed = layout::list(world.backups.as_ref(), Some(layout::Class::Daily))
        .await
        .unwrap();
    let dump = listed[0].dump.as_ref().unwrap().key.clone();
    let path = world.backups.location().to_string().replacen("file://", "", 1);
    let path = std::path::Path::new(&path).join(&dump);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let report = drill(&world)
        .rehearse("dr-drill:corrupt", &DrillParams::default())
        .await
        .unwrap();
    assert!(!report.passed);
    let restore = step(&report, "postgres-restore");
    let error = restore.error.as_deref().unwrap();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert_eq!(restore.failure, Some(keshless_ops::jobs::dr_drill::FailureKind::Data));
    // The other steps still ran and passed: a failure does not hide the rest.
    assert!(step(&report, "secrets-decrypt").passed);
    assert!(step(&report, "documents-check").passed);
    for name in scratch_databases(&report) {
        assert!(!database_exists(&world, &name).await, "{name} still exists");
    }

    // The job fails permanently: bad data needs a person.
    let error = drill(&world)
        .run(&context("dr-drill", "dr-drill:corrupt-job"), Default::default())
        .await
        .expect_err("drill job fails");
    assert!(matches!(error, JobError::Permanent(_)), "{error}");
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
}

#[tokio::test]
async fn a_row_count_mismatch_fails_after_the_restore_and_the_scratch_database_is_dropped() {
    let world = world().await;
    // The manifest claims one more transfer than the dump holds.
    let listed = layout::list(world.backups.as_ref(), Some(layout::Class::Daily))
        .await
        .unwrap();
    let manifest_key = layout::manifest_key(&layout::base_of(&listed[0].id));
    let root = world.backups.location().to_string().replacen("file://", "", 1);
    let path = std::path::Path::new(&root).join(&manifest_key);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for table in manifest["tables"].as_array_mut().unwrap() {
        if table["table"] == "transfers" {
            table["rows"] = serde_json::json!(501);
        }
    }
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let report = drill(&world)
        .rehearse("dr-drill:count-mismatch", &DrillParams::default())
        .await
        .unwrap();
    let restore = step(&report, "postgres-restore");
    let error = restore.error.as_deref().unwrap();
    assert!(error.contains("row counts differ"), "{error}");
    assert!(
        error.contains("payments.transfers (backup 501, restored 500)"),
        "{error}"
    );
    let scratch = scratch_databases(&report);
    assert_eq!(
        scratch.len(),
        1,
        "the restore created exactly one scratch database: {scratch:?}"
    );
    assert!(
        !database_exists(&world, &scratch[0]).await,
        "{} still exists",
        scratch[0]
    );
}

#[tokio::test]
async fn a_deleted_document_fails_the_drill_naming_the_object() {
    let world = world().await;
    world.documents.delete("kyc/user-2/id-card.png", None).await.unwrap();
    let report = drill(&world)
        .rehearse("dr-drill:deleted-document", &DrillParams::default())
        .await
        .unwrap();
    assert!(!report.passed);
    let documents = step(&report, "documents-check");
    let error = documents.error.as_deref().unwrap();
    assert!(error.contains("kyc/user-2/id-card.png (missing)"), "{error}");
    assert!(error.contains("1 objects missing"), "{error}");
    // The database step passed, and its scratch database is gone.
    assert!(step(&report, "postgres-restore").passed);
    let scratch = scratch_databases(&report);
    assert_eq!(scratch.len(), 1);
    assert!(!database_exists(&world, &scratch[0]).await);
}

#[tokio::test]
async fn a_missing_or_shrunken_secrets_backup_is_a_failure_not_a_skip() {
    let world = world().await;
    // A newest backup that lost a secret the previous one had.
    secrets_backup(world.backups.as_ref(), -1, &["API_TOKEN"]).await;
    let report = drill(&world)
        .rehearse("dr-drill:shrunk", &DrillParams::default())
        .await
        .unwrap();
    let secrets = step(&report, "secrets-decrypt");
    let error = secrets.error.as_deref().unwrap();
    assert!(error.contains("missing now: NEW_ONE, WEBHOOK_KEY"), "{error}");

    // No secrets backups at all.
    for key in keshless_ops::jobs::secrets_backup::list_secrets_backups(world.backups.as_ref())
        .await
        .unwrap()
    {
        world.backups.delete(&key, None).await.unwrap();
    }
    let report = drill(&world)
        .rehearse("dr-drill:no-secrets", &DrillParams::default())
        .await
        .unwrap();
    assert!(!report.passed);
    let error = step(&report, "secrets-decrypt").error.as_deref().unwrap();
    assert!(error.contains("no weekly secrets backup"), "{error}");
}

/// Rewrites the newest backup's manifest in place (the file store's file).
fn edit_newest_manifest(world: &World, listed_id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let manifest_key = layout::manifest_key(&layout::base_of(listed_id));
    let root = world.backups.location().to_string().replacen("file://", "", 1);
    let path = std::path::Path::new(&root).join(&manifest_key);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[tokio::test]
async fn an_owner_or_privilege_differing_from_the_manifest_fails_the_drill_naming_the_relation() {
    let world = world().await;
    let listed = layout::list(world.backups.as_ref(), Some(layout::Class::Daily))
        .await
        .unwrap();
    // The manifest says another role owned the table and a reader could
    // select from the view: what a restore that lost them would look like.
    edit_newest_manifest(&world, &listed[0].id, |manifest| {
        for object in manifest["fidelity"]["objects"].as_array_mut().unwrap() {
            if object["name"] == "payments.transfers" {
                object["owner"] = serde_json::json!("app_owner");
            }
            if object["name"] == "public.users" {
                object["acl"] = serde_json::json!(["app_reader=r/postgres", "postgres=arwdDxt/postgres"]);
            }
        }
        // The digest no longer matches what was restored.
        manifest["fidelity"]["privileges_sha256"] = serde_json::json!("0".repeat(64));
    });
    let report = drill(&world)
        .rehearse("dr-drill:owner-mismatch", &DrillParams::default())
        .await
        .unwrap();
    assert!(!report.passed);
    let restore = step(&report, "postgres-restore");
    let error = restore.error.as_deref().unwrap();
    assert!(
        error.contains("owners, privileges or sequence positions differ"),
        "{error}"
    );
    assert!(
        error.contains("table payments.transfers: owner app_owner in the backup, postgres restored"),
        "{error}"
    );
    assert!(
        error.contains("table public.users: privileges app_reader=r/postgres postgres=arwdDxt/postgres in the backup, default restored"),
        "{error}"
    );
    assert_eq!(restore.failure, Some(keshless_ops::jobs::dr_drill::FailureKind::Data));
    assert_one_scratch_database_gone(&world, &report).await;
}

/// The world's dump as the previous releases made it: pg_dump's gzip.
async fn gzip_world() -> World {
    let gzip = EncodeSettings {
        compression: "gzip".parse::<CompressionSetting>().unwrap(),
        ..EncodeSettings::default()
    };
    world_with(|database| database.url.clone(), gzip).await
}

#[tokio::test]
async fn a_version_2_backup_still_lists_verifies_restores_and_drills() {
    let world = gzip_world().await;
    let listed = layout::list(world.backups.as_ref(), Some(layout::Class::Daily))
        .await
        .unwrap();
    assert!(listed[0].manifest.as_ref().unwrap().dump.ends_with(".dump"));
    // Exactly what the previous release wrote: version 2, no encoding.
    edit_newest_manifest(&world, &listed[0].id, |manifest| {
        let fields = manifest.as_object_mut().unwrap();
        fields.remove("encoding");
        fields.insert("version".into(), serde_json::json!(2));
    });
    let listed = layout::list(world.backups.as_ref(), Some(layout::Class::Daily))
        .await
        .unwrap();
    assert!(listed[0].is_complete(), "{:?}", listed[0].problem);
    let manifest = listed[0].manifest.as_ref().unwrap();
    assert_eq!(manifest.version, 2);
    assert_eq!(manifest.encoding, archive::Encoding::default());
    let verified = layout::verify(world.backups.as_ref(), &listed[0].id).await.unwrap();
    assert!(verified.contains("pg_dump gzip, not encrypted"), "{verified}");
    let report = drill(&world)
        .rehearse("dr-drill:version-2", &DrillParams::default())
        .await
        .unwrap();
    assert!(report.passed, "{report:#?}");
}

#[tokio::test]
async fn an_encrypted_backup_drills_with_its_identity_and_fails_clearly_without() {
    let (identity, public) = archive::generate_identity();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), identity.as_bytes()).unwrap();
    let encrypted = EncodeSettings {
        recipients: Some(Recipients::parse(&public).unwrap()),
        ..EncodeSettings::default()
    };
    let world = world_with(|database| database.url.clone(), encrypted).await;
    let with_key = DrDrill {
        dumps: DumpConfig {
            identity: Some(IdentitySource::File(key_file.path().to_owned())),
            ..DumpConfig::default()
        },
        ..drill(&world)
    };
    let report = with_key
        .rehearse("dr-drill:encrypted", &DrillParams::default())
        .await
        .unwrap();
    assert!(report.passed, "{report:#?}");
    assert_one_scratch_database_gone(&world, &report).await;

    let report = drill(&world)
        .rehearse("dr-drill:no-key", &DrillParams::default())
        .await
        .unwrap();
    let restore = step(&report, "postgres-restore");
    assert!(!restore.passed);
    let error = restore.error.clone().unwrap_or_default();
    assert!(
        error.contains(&public) && error.contains("BACKUP_AGE_IDENTITY_FILE"),
        "names who can decrypt and what to set: {error}"
    );
}

#[tokio::test]
async fn a_backup_made_before_globals_still_restores_and_drills_without_owners() {
    let world = gzip_world().await;
    let listed = layout::list(world.backups.as_ref(), Some(layout::Class::Daily))
        .await
        .unwrap();
    // What a backup of the previous release looks like: version 1, no
    // globals, no fidelity (its globals file never existed).
    let globals_key = listed[0]
        .manifest
        .as_ref()
        .unwrap()
        .globals
        .as_ref()
        .unwrap()
        .key
        .clone();
    world.backups.delete(&globals_key, None).await.unwrap();
    edit_newest_manifest(&world, &listed[0].id, |manifest| {
        let fields = manifest.as_object_mut().unwrap();
        fields.remove("globals");
        fields.remove("fidelity");
        fields.remove("encoding");
        fields.insert("version".into(), serde_json::json!(1));
    });

    let report = drill(&world)
        .rehearse("dr-drill:version-1", &DrillParams::default())
        .await
        .unwrap();
    let restore = step(&report, "postgres-restore");
    assert!(restore.passed, "{restore:#?}");
    assert!(
        restore.detail.contains("owners and privileges not checked"),
        "{restore:#?}"
    );

    // The command refuses to pretend it keeps owners, and says what to do.
    let target = format!("keshless_test_{}", common::unique_suffix());
    let target_url = world.database.url.replace(&world.database.name, &target);
    let store = world.backups.location().to_string();
    let environment = [("BACKUP_STORE", store.as_str()), ("PATH", env!("PATH"))];
    let restore = |extra: &[&str]| {
        let mut arguments = vec![
            "restore",
            "postgres",
            "--latest",
            "--target-url",
            &target_url,
            "--create-db",
        ];
        arguments.extend_from_slice(extra);
        common::keshless_ops(&arguments, &environment)
    };
    let refused = restore(&[]);
    let stderr = common::text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("made before keshless-ops recorded the roles") && stderr.contains("--no-owner"),
        "{stderr}"
    );
    assert!(!database_exists(&world, &target).await, "nothing was created");
    let restored = restore(&["--no-owner"]);
    let stdout = common::text(&restored.stdout);
    assert!(restored.status.success(), "{stdout}{}", common::text(&restored.stderr));
    assert!(stdout.contains("not recorded in this backup"), "{stdout}");
    let admin = world.database.connect().await;
    admin
        .batch_execute(&format!("DROP DATABASE {target} WITH (FORCE)"))
        .await
        .unwrap();
}

/// A crashed drill's scratch database (dated before yesterday) is dropped by
/// the next drill; one somebody is still connected to is left alone, and the
/// connection is not cut (another drill may be using it).
#[tokio::test]
async fn stale_scratch_databases_are_swept_unless_someone_is_connected() {
    let world = world().await;
    let admin = world.database.connect().await;
    let suffix = || format!("{:08x}", rand::random::<u32>());
    let idle = format!("keshless_drill_20200101_{}", suffix());
    let in_use = format!("keshless_drill_20200101_{}", suffix());
    for name in [&idle, &in_use] {
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    }
    let mut config: tokio_postgres::Config = common::admin_database_url().parse().unwrap();
    config.dbname(&in_use);
    let (holder, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let connection = tokio::spawn(connection);

    let report = drill(&world)
        .rehearse("dr-drill:sweep", &DrillParams::default())
        .await
        .expect("drill runs");
    assert!(report.passed, "{report:#?}");
    assert!(!database_exists(&world, &idle).await, "{idle} was not swept");
    assert!(
        database_exists(&world, &in_use).await,
        "{in_use} was dropped while in use"
    );
    let one: i32 = holder
        .query_one("SELECT 1", &[])
        .await
        .expect("connection intact")
        .get(0);
    assert_eq!(one, 1);

    drop(holder);
    connection.await.unwrap().unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {in_use} WITH (FORCE)"))
        .await
        .unwrap();
}
