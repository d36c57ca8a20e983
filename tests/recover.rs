//! `keshless-ops recover` (issue 23, SPEC section 9a): a whole environment
//! rebuilt from nothing but a vault and the keys. The vault is a
//! fake-gcs-server bucket holding an encrypted PostgreSQL backup (with its
//! roles), a Secret Manager backup and a documents inventory with its
//! mirror; the targets are a fresh project in the Secret Manager fake, a
//! PostgreSQL cluster of the test's own (where the backup's roles do not
//! exist) and a fresh documents bucket.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::cluster::PrivateCluster;
use common::{text, unique_suffix, TestDatabase};
use futures::TryStreamExt;
use keshless_ops::documents::layout as documents_layout;
use keshless_ops::emulator::secret_manager::{EnumEncoding, FakeConfig, SecretManagerFake};
use keshless_ops::jobs::documents_inventory::{DocumentsInventory, Params};
use keshless_ops::jobs::secrets_backup::SecretsBackup;
use keshless_ops::jobs::secrets_source::{SecretManagerSource, Source};
use keshless_ops::jobs::PostgresBackup;
use keshless_ops::postgres::archive::{self, EncodeSettings, Recipients};
use keshless_ops::postgres::process::pg_dump_program;
use keshless_ops::runtime::job::{Job, RunContext};
use keshless_ops::secret_manager::{ClientSettings, ProjectSelection};
use keshless_ops::storage::{BlobStore, BlobStoreExt, GcsStore, ListOptions, WriteMode};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_postgres::Client;

const KEY: &str = "recovery-test-passphrase-0123456789-abcdef";

fn context(job: &'static str) -> RunContext {
    RunContext {
        job,
        idempotency_key: format!("{job}:recover:{}", unique_suffix()),
        message_id: None,
        source: "cli".into(),
        requested_by: None,
        attempt: 1,
        cancel: Default::default(),
    }
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("connect {url}: {error}"));
    tokio::spawn(connection);
    client
}

/// What a lost project leaves behind: a vault, the keys, and (for the
/// comparisons only) the originals.
struct World {
    source: TestDatabase,
    owner: String,
    app: String,
    fake: SecretManagerFake,
    source_project: String,
    documents: Arc<GcsStore>,
    vault: Arc<GcsStore>,
    _key_file: tempfile::NamedTempFile,
    key_path: String,
    /// The targets.
    cluster: PrivateCluster,
    project: String,
    new_documents: Arc<GcsStore>,
    /// The full drill's scratch store: unversioned, as the README advises
    /// (fake-gcs-server keeps a deleted generation of a versioned bucket as
    /// noncurrent, where GCS deletes it).
    scratch: Arc<GcsStore>,
    rows: i64,
}

/// A secrets backup of `project` into `vault` (the latest one).
async fn back_up_secrets(vault: &Arc<GcsStore>, fake: &SecretManagerFake, project: &str) {
    let secrets = SecretsBackup::with_source(
        vault.clone(),
        Source::SecretManager(SecretManagerSource {
            selection: ProjectSelection {
                project: project.to_owned(),
                filter: None,
                locations: Vec::new(),
            },
            client: ClientSettings {
                emulator_host: Some(fake.host()),
                requests_per_minute: 600_000,
                ..ClientSettings::default()
            },
        }),
        SecretString::from(KEY.to_owned()),
        chrono_tz::UTC,
    );
    secrets
        .run(&context("secrets-backup"), Default::default())
        .await
        .expect("secrets-backup");
}

impl World {
    /// `rows` rows in the big table; `inventory: false` leaves the vault
    /// without any documents backup.
    async fn create(rows: i64, inventory: bool) -> World {
        common::init_test_logs();
        let suffix = unique_suffix();
        let (owner, app) = (format!("recover_owner_{suffix}"), format!("recover_app_{suffix}"));
        let source = TestDatabase::create().await;
        source
            .connect()
            .await
            .batch_execute(&format!(
                r#"
CREATE ROLE {owner} NOLOGIN;
CREATE ROLE {app} LOGIN;
CREATE SCHEMA app AUTHORIZATION {owner};
GRANT USAGE ON SCHEMA app TO {app};
SET ROLE {owner};
CREATE TABLE app.accounts (id bigserial PRIMARY KEY, name text NOT NULL, balance numeric(12, 2) NOT NULL DEFAULT 0);
CREATE TABLE app.ledger (id bigserial PRIMARY KEY, account bigint NOT NULL REFERENCES app.accounts, entry text NOT NULL);
GRANT SELECT, INSERT, UPDATE ON app.accounts, app.ledger TO {app};
GRANT USAGE ON SEQUENCE app.accounts_id_seq, app.ledger_id_seq TO {app};
INSERT INTO app.accounts (name, balance) SELECT 'account ' || i, i FROM generate_series(1, 50) i;
INSERT INTO app.ledger (account, entry) SELECT 1 + i % 50, md5(i::text) || md5((i * 7)::text) FROM generate_series(1, {rows}) i;
RESET ROLE;
"#
            ))
            .await
            .expect("the platform's schema");

        let vault = common::gcs_store(false).await;
        let (identity, public) = archive::generate_identity();
        let key_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key_file.path(), identity.as_bytes()).unwrap();
        let backup = PostgresBackup {
            backups: vault.clone(),
            database_url: source.url.parse().unwrap(),
            databases: Vec::new(),
            pg_dump: pg_dump_program(),
            encoding: EncodeSettings {
                recipients: Some(Recipients::parse(&public).unwrap()),
                ..EncodeSettings::default()
            },
            clock: Default::default(),
        };
        backup
            .run(&context("postgres-backup"), Default::default())
            .await
            .expect("postgres-backup");

        // Named by project number in what it returns, as the real service does.
        let fake = SecretManagerFake::start(
            ([127, 0, 0, 1], 0).into(),
            FakeConfig {
                numbered_names: true,
                ..FakeConfig::default()
            },
        )
        .await
        .unwrap();
        let source_project = format!("prod-{suffix}");
        fake.with_store(|store| {
            for (index, id) in ["DATABASE_URL", "JOB_SECRET", "payment-gateway-api-key"].iter().enumerate() {
                let parent = format!("projects/{source_project}");
                store
                    .create_secret(
                        &parent,
                        id,
                        json!({"replication": {"automatic": {}}, "labels": {"app": "keshless", "index": index.to_string()}}),
                    )
                    .unwrap();
                let name = format!("{parent}/secrets/{id}");
                for version in 1..=index + 1 {
                    let data = BASE64.encode(format!("{id}-value-{version}-{suffix}"));
                    store
                        .add_version(&name, &json!({"payload": {"data": data}}), EnumEncoding::Names)
                        .unwrap();
                }
                if index == 2 {
                    store.change_state(&name, "1", "disable", EnumEncoding::Names).unwrap();
                }
            }
        });
        back_up_secrets(&vault, &fake, &source_project).await;

        let documents = common::gcs_store(true).await;
        for (name, body) in [
            ("kyc/u-1/passport.jpg", "passport of u-1".repeat(100)),
            ("kyc/u-2/id-card.png", "id card of u-2".repeat(50)),
            ("selfies/u-1.jpg", "selfie".to_owned()),
        ] {
            documents
                .put_bytes(name, bytes::Bytes::from(body), WriteMode::Overwrite)
                .await
                .unwrap();
        }
        if inventory {
            DocumentsInventory::with_store(vault.clone(), documents.clone())
                .run(&context("documents-inventory"), Params::default())
                .await
                .expect("documents-inventory");
        }

        let key_path = key_file.path().display().to_string();
        World {
            project: format!("recovery-{suffix}"),
            source,
            owner,
            app,
            fake,
            source_project,
            documents,
            vault,
            _key_file: key_file,
            key_path,
            cluster: PrivateCluster::start(),
            new_documents: common::gcs_store(true).await,
            scratch: common::gcs_store(false).await,
            rows,
        }
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BACKUP_STORE", self.vault.location().to_string()),
            ("STORAGE_EMULATOR_HOST", common::storage_emulator_host()),
            ("SECRETS_ENCRYPTION_KEY", KEY.to_owned()),
            ("BACKUP_AGE_IDENTITY_FILE", self.key_path.clone()),
            ("SECRET_MANAGER_EMULATOR_HOST", self.fake.host()),
            ("SECRET_MANAGER_REQUESTS_PER_MINUTE", "100000".to_owned()),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", std::env::var("HOME").unwrap_or_default()),
        ]
    }

    fn arguments<'a>(&'a self, mode: &'a str) -> Vec<String> {
        vec![
            "recover".into(),
            mode.into(),
            "--project".into(),
            self.project.clone(),
            "--target-url".into(),
            self.cluster.url(),
            "--documents-bucket".into(),
            self.new_documents.location().to_string(),
            "--json".into(),
        ]
    }

    fn command(&self, mode: &str) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"));
        command.args(self.arguments(mode)).env_clear().envs(self.environment());
        command
    }

    /// Runs `recover MODE --json`; gives its exit code, parsed output and stderr.
    fn recover(&self, mode: &str) -> (Option<i32>, Value, String) {
        let output = self.command(mode).output().expect("run keshless-ops");
        let stdout = text(&output.stdout);
        let stderr = text(&output.stderr);
        let parsed = serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}\n{stderr}"));
        (output.status.code(), parsed, stderr)
    }

    fn database_url(&self, user: &str) -> String {
        let url = self.cluster.url();
        let (server, _) = url.rsplit_once('/').expect("a URL with a database");
        format!(
            "{}/{}",
            server.replacen("://postgres@", &format!("://{user}@"), 1),
            self.source.name
        )
    }

    async fn cluster_roles(&self) -> usize {
        connect(&self.cluster.url())
            .await
            .query(
                "SELECT 1 FROM pg_roles WHERE rolname = ANY($1)",
                &[&vec![self.owner.clone(), self.app.clone()]],
            )
            .await
            .unwrap()
            .len()
    }

    /// `None`: the database does not exist on the new cluster; else its tables.
    async fn cluster_tables(&self) -> Option<i64> {
        let admin = connect(&self.cluster.url()).await;
        let exists = !admin
            .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&self.source.name])
            .await
            .unwrap()
            .is_empty();
        if !exists {
            return None;
        }
        let client = connect(&self.database_url("postgres")).await;
        Some(
            client
                .query_one(
                    "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                    &[],
                )
                .await
                .unwrap()
                .get(0),
        )
    }

    async fn new_documents_count(&self) -> usize {
        common::all_keys(self.new_documents.as_ref()).await.len()
    }

    fn new_project_secrets(&self) -> usize {
        self.fake.with_store(|store| store.dump(&self.project).len())
    }

    /// Everything a recovered environment must be.
    async fn assert_recovered(&self, report: &Value) {
        // The application, connecting as its own role, reads and writes.
        let app = connect(&self.database_url(&self.app)).await;
        let accounts: i64 = app
            .query_one("SELECT count(*) FROM app.accounts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(accounts, 50);
        let ledger: i64 = app
            .query_one("SELECT count(*) FROM app.ledger", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(ledger, self.rows);
        app.execute(
            "INSERT INTO app.accounts (name) VALUES ('opened after the recovery')",
            &[],
        )
        .await
        .expect("the application's role inserts");
        app.execute("UPDATE app.accounts SET balance = balance + 1 WHERE id = 1", &[])
            .await
            .expect("the application's role updates");
        app.execute("INSERT INTO app.ledger (account, entry) VALUES (1, 'after')", &[])
            .await
            .expect("the application's role inserts with its sequence");
        let denied = app.execute("DELETE FROM app.ledger", &[]).await;
        assert!(denied.is_err(), "the application's role has only the backup's grants");
        let owner: String = app
            .query_one(
                "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'app' AND tablename = 'accounts'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(owner, self.owner, "owners as in the backup");

        // Every secret and version, with the same numbers, states and payloads.
        let (source, recovered) = self
            .fake
            .with_store(|store| (store.dump(&self.source_project), store.dump(&self.project)));
        assert_eq!(source.len(), 3);
        assert_eq!(
            source.keys().collect::<Vec<_>>(),
            recovered.keys().collect::<Vec<_>>(),
            "the same secrets"
        );
        for (name, original) in &source {
            let restored = &recovered[name];
            // A DISABLED version's payload was never readable, so it is not
            // backed up: its number and state come back, with a placeholder.
            let visible = |versions: &[keshless_ops::emulator::secret_manager::DumpedVersion]| {
                versions
                    .iter()
                    .map(|version| {
                        (
                            version.number,
                            version.state,
                            (version.state == "ENABLED").then(|| version.payload.clone()),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                visible(&original.versions),
                visible(&restored.versions),
                "{name}: versions"
            );
            assert_eq!(
                original.metadata.get("labels"),
                restored.metadata.get("labels"),
                "{name}"
            );
        }

        // Every document of the inventory, byte for byte.
        let date = documents_layout::newest_complete(self.vault.as_ref())
            .await
            .unwrap()
            .expect("an inventory");
        let summary = documents_layout::read_summary(self.vault.as_ref(), date).await.unwrap();
        let entries: Vec<documents_layout::InventoryEntry> =
            documents_layout::read_entries(self.vault.as_ref(), summary.inventory.clone(), None)
                .try_collect()
                .await
                .unwrap();
        assert_eq!(entries.len(), 3);
        for entry in &entries {
            let original = self.documents.get_bytes(&entry.name, 1 << 20).await.unwrap();
            let restored = self.new_documents.get_bytes(&entry.name, 1 << 20).await.unwrap();
            assert_eq!(original, restored, "{}", entry.name);
            assert_eq!(restored.len() as u64, entry.size, "{}", entry.name);
        }

        // The report: RTO and RPO, per step and in all, and in the vault.
        assert_eq!(report["passed"], true, "{report:#}");
        assert!(report["rto_seconds"].as_f64().unwrap() > 0.0, "{report:#}");
        assert!(report["rpo_seconds"].as_i64().unwrap() >= 0, "{report:#}");
        let steps = report["steps"].as_array().unwrap();
        let names: Vec<&str> = steps.iter().map(|step| step["name"].as_str().unwrap()).collect();
        let database_step = format!("database:{}", self.source.name);
        assert_eq!(names, ["secrets", database_step.as_str(), "documents", "drill"]);
        for step in steps {
            assert!(step["duration_ms"].is_u64(), "{step}");
            if step["name"] != "drill" {
                assert!(step["backup_age_seconds"].as_i64().unwrap() >= 0, "{step}");
                assert!(step["backup"].is_string(), "{step}");
            }
        }
        let key = report["report"].as_str().unwrap();
        assert!(key.starts_with("recoveries/"), "{key}");
        let stored: Value = serde_json::from_slice(&self.vault.get_bytes(key, 1 << 20).await.unwrap()).unwrap();
        assert_eq!(stored["steps"], report["steps"]);
    }

    fn outcome<'a>(report: &'a Value, step: &str) -> &'a str {
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|candidate| candidate["name"] == step)
            .unwrap_or_else(|| panic!("no step {step}: {report:#}"))["outcome"]
            .as_str()
            .unwrap()
    }

    async fn cleanup(self) {
        let World {
            source,
            owner,
            app,
            cluster,
            fake,
            ..
        } = self;
        drop(source);
        let admin = connect(&common::admin_database_url()).await;
        for role in [owner, app] {
            admin
                .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
                .await
                .unwrap();
        }
        drop(cluster);
        fake.shutdown();
    }
}

// The Secret Manager fake serves from this runtime while the binary runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_environment_is_recovered_from_the_vault_and_the_keys_alone() {
    let world = World::create(2_000, true).await;

    let (code, plan, stderr) = world.recover("--plan");
    assert_eq!(code, Some(0), "{plan:#}\n{stderr}");
    let states: BTreeMap<String, String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            (
                step["name"].as_str().unwrap().to_owned(),
                step["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(states.values().all(|state| state == "ready"), "{plan:#}");
    let database = &plan["steps"][1];
    let creates = database["creates"].as_str().unwrap();
    assert!(
        creates.contains(&world.owner) && creates.contains(&world.app),
        "the plan names the roles it will create: {creates}"
    );
    assert!(
        database["needs"].to_string().contains("checked: it opens the dump"),
        "{database:#}"
    );
    assert_eq!(world.cluster_roles().await, 0, "--plan changes nothing");
    assert_eq!(world.cluster_tables().await, None);
    assert_eq!(world.new_project_secrets(), 0);

    let (code, report, stderr) = world.recover("--apply");
    assert_eq!(code, Some(0), "{report:#}\n{stderr}");
    for step in [
        "secrets",
        &format!("database:{}", world.source.name),
        "documents",
        "drill",
    ] {
        assert_eq!(World::outcome(&report, step), "done", "{step}: {report:#}");
    }

    // A second run finds everything in place and says so.
    let (code, again, stderr) = world.recover("--apply");
    assert_eq!(code, Some(0), "{again:#}\n{stderr}");
    for step in ["secrets", &format!("database:{}", world.source.name), "documents"] {
        assert_eq!(World::outcome(&again, step), "already-done", "{step}: {again:#}");
    }
    assert_eq!(World::outcome(&again, "drill"), "done");
    assert_ne!(again["report"], report["report"], "each run writes its own report");
    // (The application writes from here on.)
    world.assert_recovered(&report).await;

    // It never writes where the backups came from.
    let arguments: Vec<String> = world
        .arguments("--plan")
        .into_iter()
        .map(|argument| {
            if argument == world.project {
                world.source_project.clone()
            } else {
                argument
            }
        })
        .collect();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(&arguments)
        .env_clear()
        .envs(world.environment())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("is the project the backup was taken of"),
        "{}",
        text(&output.stdout)
    );
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_against_a_vault_missing_one_class_names_it_exits_non_zero_and_changes_nothing() {
    let world = World::create(100, false).await;

    let (code, plan, stderr) = world.recover("--plan");
    assert_eq!(code, Some(3), "{plan:#}\n{stderr}");
    let steps = plan["steps"].as_array().unwrap();
    let blocked: Vec<&Value> = steps.iter().filter(|step| step["state"] == "blocked").collect();
    assert_eq!(blocked.len(), 1, "only the documents are missing: {plan:#}");
    assert_eq!(blocked[0]["name"], "documents");
    let problem = blocked[0]["problems"].to_string();
    assert!(
        problem.contains("the documents cannot be recovered") && problem.contains("no complete documents inventory"),
        "{problem}"
    );
    for step in steps.iter().filter(|step| step["name"] != "documents") {
        assert_eq!(step["state"], "ready", "{step:#}");
    }

    // The table says it too, and --apply refuses without changing anything.
    let arguments: Vec<String> = world
        .arguments("--plan")
        .into_iter()
        .filter(|argument| argument != "--json")
        .collect();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(&arguments)
        .env_clear()
        .envs(world.environment())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("CANNOT RECOVER") && stdout.contains("documents: the documents cannot be recovered"),
        "{stdout}"
    );
    let (code, _, stderr) = world.recover("--apply");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(world.cluster_roles().await, 0);
    assert_eq!(world.cluster_tables().await, None);
    assert_eq!(world.new_project_secrets(), 0);
    assert_eq!(world.new_documents_count().await, 0);
    let reports: Vec<_> = world
        .vault
        .list("recoveries/", ListOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert!(reports.is_empty(), "no report for a recovery that did not run");
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_killed_mid_database_completes_on_the_second_run() {
    let world = World::create(300_000, true).await;
    let cluster = connect(&world.cluster.url()).await;
    let restoring = || async {
        cluster
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_restore'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    let mut child = world.command("--apply").spawn().expect("start recover --apply");
    let deadline = Instant::now() + Duration::from_secs(120);
    while restoring().await == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "recover --apply ended before pg_restore was seen"
        );
        assert!(Instant::now() < deadline, "pg_restore never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9 recover --apply");
    child.wait().unwrap();
    // The orphaned pg_restore sees its input end and rolls back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while restoring().await > 0 {
        assert!(
            Instant::now() < deadline,
            "pg_restore did not stop after its parent was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(world.new_project_secrets(), 3, "killed after the secrets step");
    let tables = world.cluster_tables().await;
    assert!(
        tables.is_none() || tables == Some(0),
        "killed mid-database: nothing of it committed ({tables:?} tables)"
    );
    assert_eq!(world.new_documents_count().await, 0, "killed before the documents step");

    let (code, report, stderr) = world.recover("--apply");
    assert_eq!(code, Some(0), "{report:#}\n{stderr}");
    assert_eq!(World::outcome(&report, "secrets"), "already-done", "{report:#}");
    assert_eq!(
        World::outcome(&report, &format!("database:{}", world.source.name)),
        "done",
        "{report:#}"
    );
    assert_eq!(World::outcome(&report, "documents"), "done");
    world.assert_recovered(&report).await;
    drop(cluster);
    world.cleanup().await;
}

// ---------------------------------------------------------------------------
// dr-drill in full mode (issue 23 point 3): the same recovery, into scratch
// targets — the world's fresh project, its own cluster as the drill's
// scratch server (the backup's roles absent there), a fresh bucket as the
// scratch store — and torn down afterwards.

impl World {
    /// Everything `keshless-ops drill --mode full` reads, production as the
    /// world has it (GOOGLE_CLOUD_PROJECT, DOCUMENTS_STORE) and the scratch
    /// targets; `overrides` replace variables.
    fn drill_environment(&self, overrides: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut environment = self.environment();
        environment.extend([
            ("DOCUMENTS_STORE", self.documents.location().to_string()),
            // Production's server, the drill's scratch server another one.
            ("DATABASE_URL", self.source.url.clone()),
            ("DRILL_DATABASE_URL", self.cluster.url()),
            ("DATABASES", self.source.name.clone()),
            ("GOOGLE_CLOUD_PROJECT", self.source_project.clone()),
            ("DRILL_SECRET_MANAGER_PROJECT", self.project.clone()),
            ("DRILL_DOCUMENTS_STORE", self.scratch.location().to_string()),
        ]);
        for (name, value) in overrides {
            environment.retain(|(existing, _)| existing != name);
            environment.push((*name, value.clone()));
        }
        environment
    }

    /// Runs `drill --mode full --json`; its exit code, stdout and stderr.
    fn full_drill(&self, overrides: &[(&'static str, String)]) -> (Option<i32>, String, String) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
            .args(["drill", "--mode", "full", "--json"])
            .env_clear()
            .envs(self.drill_environment(overrides))
            .output()
            .expect("run keshless-ops drill");
        (output.status.code(), text(&output.stdout), text(&output.stderr))
    }

    /// Databases on the scratch cluster named like a drill's.
    async fn scratch_databases(&self) -> Vec<String> {
        connect(&self.cluster.url())
            .await
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, 'keshless_drill_') ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Every generation of every object in the scratch store.
    async fn scratch_objects(&self) -> Vec<String> {
        self.scratch
            .list(
                "",
                ListOptions {
                    versions: true,
                    ..ListOptions::default()
                },
            )
            .map_ok(|object| object.key)
            .try_collect()
            .await
            .unwrap()
    }

    /// What production holds: the source project's secrets and the documents bucket's keys.
    async fn production(
        &self,
    ) -> (
        BTreeMap<String, keshless_ops::emulator::secret_manager::DumpedSecret>,
        Vec<String>,
    ) {
        let secrets = self.fake.with_store(|store| store.dump(&self.source_project));
        let documents = common::all_keys(self.documents.as_ref()).await.into_iter().collect();
        (secrets, documents)
    }

    /// Nothing of a full drill is left in the scratch targets.
    async fn assert_scratch_empty(&self) {
        assert_eq!(
            self.scratch_databases().await,
            Vec::<String>::new(),
            "scratch databases left"
        );
        assert_eq!(self.cluster_roles().await, 0, "roles the drill created are left");
        assert_eq!(self.new_project_secrets(), 0, "scratch secrets left");
        assert_eq!(
            self.scratch_objects().await,
            Vec::<String>::new(),
            "scratch objects left"
        );
    }
}

fn drill_step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drill_recovers_into_scratch_targets_checks_them_and_leaves_nothing_behind() {
    let world = World::create(1_000, true).await;
    let production = world.production().await;

    // What a crashed full drill of 2020 left: its journal, a database, a
    // role, a secret and a document; the next full drill tears them down.
    let cluster = connect(&world.cluster.url()).await;
    let crashed_role = format!("recover_crashed_{}", unique_suffix());
    // A role the journal names that the crashed drill did not create
    // (someone made it between its plan and its restore): it stays.
    let bystander = format!("recover_bystander_{}", unique_suffix());
    // A crashed drill whose journal is gone (the bucket's lifecycle rule
    // deleted it): its marked role and its secret are swept by name.
    let orphan_role = format!("recover_orphan_{}", unique_suffix());
    for statement in [
        "CREATE DATABASE keshless_drill_20200101_0000000a_app".to_owned(),
        format!("CREATE ROLE {crashed_role} NOLOGIN"),
        format!("COMMENT ON ROLE {crashed_role} IS 'keshless-drill:keshless-drill-20200101-0000000a'"),
        format!("CREATE ROLE {bystander} NOLOGIN"),
        format!("CREATE ROLE {orphan_role} NOLOGIN"),
        format!("COMMENT ON ROLE {orphan_role} IS 'keshless-drill:keshless-drill-20200102-0000000b'"),
    ] {
        cluster.batch_execute(&statement).await.unwrap();
    }
    let crashed_secret = format!(
        "projects/{}/secrets/keshless-drill-20200101-0000000a-JOB_SECRET",
        world.project
    );
    world.fake.with_store(|store| {
        for id in [
            "keshless-drill-20200101-0000000a-JOB_SECRET",
            "keshless-drill-20200102-0000000b-DATABASE_URL",
        ] {
            store
                .create_secret(
                    &format!("projects/{}", world.project),
                    id,
                    json!({"replication": {"automatic": {}}}),
                )
                .unwrap();
        }
    });
    world
        .scratch
        .put_bytes(
            "keshless-drill-20200101-0000000a/kyc/u-1/passport.jpg",
            bytes::Bytes::from_static(b"left behind"),
            WriteMode::Overwrite,
        )
        .await
        .unwrap();
    let journal = keshless_ops::jobs::dr_drill::Scratch {
        format: "keshless-drill-scratch".into(),
        run: "keshless-drill-20200101-0000000a".into(),
        started_at: "2020-01-01T06:00:00Z".parse().unwrap(),
        server: world
            .cluster
            .url()
            .parse::<keshless_ops::config::DatabaseUrl>()
            .unwrap()
            .to_string(),
        database_prefix: "keshless_drill_20200101_0000000a_".into(),
        roles: vec![crashed_role.clone(), bystander.clone()],
        project: world.project.clone(),
        secrets: vec![crashed_secret.clone()],
        documents: world.scratch.location().to_string(),
    };
    world
        .scratch
        .put_bytes(
            &format!(
                "{}keshless-drill-20200101-0000000a.json",
                keshless_ops::jobs::dr_drill::JOURNAL_PREFIX
            ),
            serde_json::to_vec(&journal).unwrap().into(),
            WriteMode::CreateOnly,
        )
        .await
        .unwrap();

    let (code, stdout, stderr) = world.full_drill(&[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["mode"], "full");
    let names: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["name"].as_str().unwrap())
        .collect();
    let database_step = format!("recover:database:{}", world.source.name);
    assert_eq!(
        names,
        [
            "scratch-sweep",
            "recover:secrets",
            database_step.as_str(),
            "recover:documents",
            "recover:drill",
            "teardown"
        ]
    );
    // The crashed drill's leftovers were torn down first.
    let sweep = drill_step(&report, "scratch-sweep")["detail"].as_str().unwrap();
    assert!(sweep.contains("keshless-drill-20200101-0000000a"), "{sweep}");
    assert!(
        sweep.contains(&format!("kept, not the run's: role {bystander}")),
        "{sweep}"
    );
    assert!(
        sweep.contains(&format!("role {orphan_role}"))
            && sweep.contains("keshless-drill-20200102-0000000b-DATABASE_URL"),
        "{sweep}"
    );
    // Each recovery step into scratch targets, with its time and its backup's age.
    let secrets = drill_step(&report, "recover:secrets")["detail"].as_str().unwrap();
    assert!(
        secrets.contains("3 secrets created") && secrets.contains(&world.project),
        "{secrets}"
    );
    let database = drill_step(&report, &database_step)["detail"].as_str().unwrap();
    assert!(
        database.contains("keshless_drill_"),
        "a scratch database, never the backup's name: {database}"
    );
    assert!(
        database.contains(&world.owner) && database.contains(&world.app),
        "the backup's roles were created on the scratch server: {database}"
    );
    let checked = drill_step(&report, "recover:drill")["detail"].as_str().unwrap();
    assert!(
        checked.contains("3 secrets with their 6 versions as in the backup")
            && checked.contains("as in its backup")
            && checked.contains("3 documents match the inventory"),
        "{checked}"
    );
    for step in ["recover:secrets", database_step.as_str(), "recover:documents"] {
        let step = drill_step(&report, step);
        assert!(step["duration_ms"].is_u64(), "{step}");
        assert!(step["backup_age_seconds"].as_i64().unwrap() >= 0, "{step}");
    }
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(report["rpo_seconds"].as_i64().unwrap() >= 0, "{report:#}");
    let teardown = drill_step(&report, "teardown")["detail"].as_str().unwrap();
    assert!(
        teardown.contains("secret projects/") && teardown.contains("database keshless_drill_"),
        "{teardown}"
    );

    // Nothing is left in the scratch targets, the crashed drill's included.
    world.assert_scratch_empty().await;
    let role_left = cluster
        .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&crashed_role])
        .await
        .unwrap();
    assert!(role_left.is_empty(), "the crashed drill's role was swept");
    for (role, left) in [(&orphan_role, false), (&bystander, true)] {
        let found = !cluster
            .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role])
            .await
            .unwrap()
            .is_empty();
        assert_eq!(found, left, "role {role}");
    }
    // Production was never written: the same secrets and documents, no
    // recovery report among the recover command's.
    assert_eq!(world.production().await, production);
    let recoveries: Vec<_> = world
        .vault
        .list("recoveries/", ListOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert!(recoveries.is_empty(), "{recoveries:?}");
    // The report is in the vault.
    let key = report["report"].as_str().unwrap();
    assert!(key.starts_with("drills/"), "{key}");
    let stored: Value = serde_json::from_slice(&world.vault.get_bytes(key, 1 << 20).await.unwrap()).unwrap();
    assert_eq!(stored["steps"], report["steps"]);
    assert_eq!(stored["recovery"]["rto_seconds"], report["rto_seconds"]);
    drop(cluster);
    world.cleanup().await;
}

/// Journals planted in the scratch store (anyone with write access to it
/// can): naming an empty database prefix, a production database's name, a
/// foreign secret, an unmarked role. The sweep refuses each, leaves it and
/// reports it; nothing they name is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_journals_naming_what_no_drill_created_change_nothing() {
    let world = World::create(100, true).await;
    let cluster = connect(&world.cluster.url()).await;
    let role = format!("recover_payments_{}", unique_suffix());
    for statement in [
        "CREATE DATABASE payments".to_owned(),
        format!("CREATE ROLE {role} LOGIN"),
    ] {
        cluster.batch_execute(&statement).await.unwrap();
    }
    let foreign = format!("projects/{}/secrets/JOB_SECRET", world.project);
    world.fake.with_store(|store| {
        store
            .create_secret(
                &format!("projects/{}", world.project),
                "JOB_SECRET",
                json!({"replication": {"automatic": {}}}),
            )
            .unwrap();
    });
    let server = world
        .cluster
        .url()
        .parse::<keshless_ops::config::DatabaseUrl>()
        .unwrap()
        .to_string();
    let journal =
        |run: &str, prefix: &str, secrets: Vec<String>, project: &str| keshless_ops::jobs::dr_drill::Scratch {
            format: "keshless-drill-scratch".into(),
            run: run.into(),
            started_at: "2020-01-01T06:00:00Z".parse().unwrap(),
            server: server.clone(),
            database_prefix: prefix.into(),
            roles: vec![role.clone()],
            project: project.into(),
            secrets,
            documents: world.scratch.location().to_string(),
        };
    let planted = [
        journal("keshless-drill-20200101-0000000b", "", Vec::new(), &world.project),
        journal(
            "keshless-drill-20200101-0000000c",
            "payments",
            Vec::new(),
            &world.project,
        ),
        journal(
            "keshless-drill-20200101-0000000d",
            "keshless_drill_20200101_0000000d_",
            vec![foreign.clone()],
            &world.project,
        ),
        // A production secret, the journal naming production as its project.
        journal(
            "keshless-drill-20200101-0000000e",
            "keshless_drill_20200101_0000000e_",
            vec![format!("projects/{}/secrets/DATABASE_URL", world.source_project)],
            &world.source_project,
        ),
    ];
    let mut keys = Vec::new();
    for scratch in &planted {
        let key = format!("{}{}.json", keshless_ops::jobs::dr_drill::JOURNAL_PREFIX, scratch.run);
        world
            .scratch
            .put_bytes(&key, serde_json::to_vec(scratch).unwrap().into(), WriteMode::CreateOnly)
            .await
            .unwrap();
        keys.push(key);
    }
    let production = world.production().await;

    let (code, stdout, stderr) = world.full_drill(&[]);
    assert_eq!(code, Some(1), "the sweep failed: {stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let sweep = drill_step(&report, "scratch-sweep");
    assert_eq!(sweep["passed"], false, "{report:#}");
    let error = sweep["error"].as_str().unwrap();
    assert_eq!(error.matches("refused and left in place").count(), 4, "{error}");
    for expected in [
        "database_prefix \"\" is not the run's",
        "database_prefix \"payments\"",
        &format!("secret \"{foreign}\""),
        &format!("project \"{}\" is not the scratch project", world.source_project),
    ] {
        assert!(error.contains(expected), "{expected}: {error}");
    }
    // The drill itself ran and tore its own down.
    for step in ["recover:secrets", "recover:drill", "teardown"] {
        assert_eq!(drill_step(&report, step)["passed"], true, "{step}: {report:#}");
    }
    // Nothing a planted journal names was touched; the journals are left.
    let databases: Vec<String> = cluster
        .query("SELECT datname FROM pg_database ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for database in ["payments", "postgres"] {
        assert!(databases.iter().any(|name| name == database), "{databases:?}");
    }
    let roles = cluster
        .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap();
    assert_eq!(roles.len(), 1, "role {role} was dropped");
    let scratch_secrets = world.fake.with_store(|store| store.dump(&world.project));
    assert_eq!(
        scratch_secrets.keys().cloned().collect::<Vec<_>>(),
        ["secrets/JOB_SECRET"],
        "the scratch project keeps only the foreign secret"
    );
    assert_eq!(world.production().await, production, "production untouched");
    let mut left = world.scratch_objects().await;
    left.sort();
    assert_eq!(left, keys);
    drop(cluster);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drill_whose_step_fails_reports_failed_and_still_tears_down() {
    let world = World::create(1_000, true).await;
    // The manifest claims one more account than the dump holds: the plan
    // cannot see it; the database step finds it after restoring (so the
    // secrets, the roles and the scratch database exist by then).
    let listed =
        keshless_ops::postgres::layout::list(world.vault.as_ref(), Some(keshless_ops::postgres::layout::Class::Daily))
            .await
            .unwrap();
    let manifest_key =
        keshless_ops::postgres::layout::manifest_key(&keshless_ops::postgres::layout::base_of(&listed[0].id));
    let mut manifest: Value =
        serde_json::from_slice(&world.vault.get_bytes(&manifest_key, 1 << 20).await.unwrap()).unwrap();
    for table in manifest["tables"].as_array_mut().unwrap() {
        if table["table"] == "accounts" {
            table["rows"] = json!(51);
        }
    }
    world
        .vault
        .put_bytes(
            &manifest_key,
            serde_json::to_vec(&manifest).unwrap().into(),
            WriteMode::Overwrite,
        )
        .await
        .unwrap();

    let (code, stdout, stderr) = world.full_drill(&[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], false, "{report:#}");
    assert_eq!(drill_step(&report, "recover:secrets")["passed"], true, "{report:#}");
    let database = drill_step(&report, &format!("recover:database:{}", world.source.name));
    assert_eq!(database["passed"], false, "{report:#}");
    let error = database["error"].as_str().unwrap();
    assert!(error.contains("differs from its manifest"), "{error}");
    assert_eq!(database["failure"], "data");
    assert_eq!(
        drill_step(&report, "recover:documents")["error"],
        "not run: an earlier step failed"
    );
    // The teardown ran anyway and removed everything the run created.
    let teardown = drill_step(&report, "teardown");
    assert_eq!(teardown["passed"], true, "{report:#}");
    let removed = teardown["detail"].as_str().unwrap();
    assert_eq!(removed.matches("secret projects/").count(), 3, "{removed}");
    assert!(removed.contains("database keshless_drill_"), "{removed}");
    for role in [&world.owner, &world.app] {
        assert!(removed.contains(&format!("role {role}")), "{removed}");
    }
    world.assert_scratch_empty().await;
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drill_aimed_at_production_refuses_before_creating_anything() {
    let world = World::create(100, true).await;
    let production = world.production().await;
    let (code, stdout, stderr) = world.full_drill(&[
        ("DRILL_SECRET_MANAGER_PROJECT", world.source_project.clone()),
        (
            "DRILL_DOCUMENTS_STORE",
            format!("{}/drill-scratch", world.documents.location()),
        ),
    ]);
    assert_eq!(code, Some(78), "a configuration error: {stdout}\n{stderr}");
    assert!(stderr.contains("nothing was created and no report written"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "DRILL_SECRET_MANAGER_PROJECT={} is the production project (GOOGLE_CLOUD_PROJECT)",
            world.source_project
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("is in the documents bucket {}", world.documents.location())),
        "{stderr}"
    );
    // Not set at all: the refusal names the variables.
    let (code, _, stderr) = world.full_drill(&[("DRILL_SECRET_MANAGER_PROJECT", String::new())]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("DRILL_SECRET_MANAGER_PROJECT is not set"), "{stderr}");
    // No DRILL_DATABASE_URL: never the production cluster of DATABASE_URL.
    let (code, _, stderr) = world.full_drill(&[("DRILL_DATABASE_URL", String::new())]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("DRILL_DATABASE_URL is not set: the full drill creates databases and roles"),
        "{stderr}"
    );
    // Another database of production's server is production still.
    let (code, _, stderr) = world.full_drill(&[("DRILL_DATABASE_URL", common::admin_database_url())]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("is on the server of DATABASE_URL"), "{stderr}");
    // The project the secrets backup was taken of, GOOGLE_CLOUD_PROJECT
    // unset: refused once the plan has read the backup, before its journal.
    let (code, _, stderr) = world.full_drill(&[
        ("DRILL_SECRET_MANAGER_PROJECT", world.source_project.clone()),
        ("GOOGLE_CLOUD_PROJECT", String::new()),
    ]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "DRILL_SECRET_MANAGER_PROJECT={} is the project the secrets backup was taken of",
            world.source_project
        )) && stderr.contains("nothing was created"),
        "{stderr}"
    );

    world.assert_scratch_empty().await;
    assert_eq!(world.production().await, production, "production untouched");
    let reports: Vec<_> = world
        .vault
        .list("drills/", ListOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert!(reports.is_empty(), "{reports:?}");
    world.cleanup().await;
}

#[test]
fn a_drill_mode_other_than_database_or_full_is_refused_naming_both() {
    let output = common::keshless_ops(&["drill", "--mode", "fulll"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("fulll") && stderr.contains("[possible values: database, full]"),
        "{stderr}"
    );

    // The job message: refused before it is published, with the worker's words.
    let output = common::keshless_ops(
        &["publish", "dr-drill", "--param", "mode=fulll"],
        &[("JOB_SECRET", "a-job-secret-for-the-test")],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("mode: unknown variant `fulll`, expected `database` or `full`"),
        "{stderr}"
    );
}

/// A full drill cancelled mid-database (the worker drops a job whose lease
/// it lost, or that outlived the shutdown grace) tears its scratch targets
/// down on its way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drill_cancelled_mid_database_tears_down_on_its_way_out() {
    use keshless_ops::jobs::dr_drill::{Documents, DrDrill, DrillMode, DrillParams, FullTargets};
    let world = World::create(300_000, true).await;
    // A secret that publishes rotation events to a production topic: its
    // scratch copy must not.
    world.fake.with_store(|store| {
        let parent = format!("projects/{}", world.source_project);
        store
            .create_secret(
                &parent,
                "rotated",
                json!({
                    "replication": {"automatic": {}},
                    "topics": [{"name": format!("{parent}/topics/rotations")}],
                    "rotation": {"nextRotationTime": "2099-01-01T00:00:00Z", "rotationPeriod": "86400s"},
                }),
            )
            .unwrap();
        store
            .add_version(
                &format!("{parent}/secrets/rotated"),
                &json!({"payload": {"data": BASE64.encode("rotated-value")}}),
                EnumEncoding::Names,
            )
            .unwrap();
    });
    back_up_secrets(&world.vault, &world.fake, &world.source_project).await;
    let drill = DrDrill {
        backups: world.vault.clone(),
        scratch_server: world.cluster.url().parse().unwrap(),
        databases: vec![world.source.name.clone()],
        secrets_key: SecretString::from(KEY.to_owned()),
        codec: keshless_ops::crypto::EnvelopeCodec::standard(),
        documents: Documents::Open(world.documents.clone()),
        clock: Default::default(),
        secret_manager: None,
        dumps: keshless_ops::config::DumpConfig {
            identity: Some(archive::IdentitySource::File(world.key_path.clone().into())),
            ..Default::default()
        },
        full: FullTargets {
            project: Some(world.project.clone()),
            documents: Some(world.scratch.location().clone()),
            production_project: Some(world.source_project.clone()),
            secret_manager: ClientSettings {
                emulator_host: Some(world.fake.host()),
                requests_per_minute: 600_000,
                ..ClientSettings::default()
            },
            storage_emulator_host: Some(common::storage_emulator_host()),
            pg_restore: keshless_ops::postgres::process::pg_restore_program(),
            drill_database_url_set: true,
            production_server: Some(
                world
                    .source
                    .url
                    .parse::<keshless_ops::config::DatabaseUrl>()
                    .unwrap()
                    .server(),
            ),
        },
    };
    let params = DrillParams {
        mode: DrillMode::Full,
        ..DrillParams::default()
    };
    let running = tokio::spawn(async move { drill.rehearse("dr-drill:cancelled", &params).await });

    let cluster = connect(&world.cluster.url()).await;
    let restoring = || async {
        cluster
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_restore'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while restoring().await == 0 {
        assert!(!running.is_finished(), "the drill ended before pg_restore was seen");
        assert!(Instant::now() < deadline, "pg_restore never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(world.new_project_secrets(), 4, "cancelled after the secrets step");
    let restored = world.fake.with_store(|store| store.dump(&world.project));
    let rotated = restored
        .iter()
        .find(|(name, _)| name.ends_with("-rotated"))
        .map(|(_, secret)| secret.metadata.clone())
        .expect("the rotated secret in the scratch project");
    assert!(
        !rotated.contains_key("topics") && !rotated.contains_key("rotation"),
        "the scratch copy publishes no rotation events: {rotated:?}"
    );
    assert_eq!(
        world.fake.with_store(|store| store.dump(&world.source_project))["secrets/rotated"].metadata["topics"][0]
            ["name"],
        format!("projects/{}/topics/rotations", world.source_project),
        "production keeps its topics"
    );
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());

    // The guard's teardown runs on its own task: wait for it to finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let journals = world
            .scratch
            .list(keshless_ops::jobs::dr_drill::JOURNAL_PREFIX, ListOptions::default())
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        if journals.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the teardown did not finish: {journals:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.assert_scratch_empty().await;
    let reports: Vec<_> = world
        .vault
        .list("drills/", ListOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert!(reports.is_empty(), "a cancelled drill writes no report: {reports:?}");
    drop(cluster);
    world.cleanup().await;
}
