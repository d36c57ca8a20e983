//! Recovery into a new environment from the vault and the offline keys alone
//! (SPEC section 9a; `keshless-ops recover`). It composes the restores that
//! exist on their own — `secret_manager::restore`, `postgres::restore`,
//! `documents::restore` — in the order a lost project is rebuilt:
//!
//! 1. `secrets`: the newest Secret Manager backup (`secrets/latest.json.encrypted`,
//!    decrypted with `SECRETS_ENCRYPTION_KEY`) into the new project;
//! 2. `database:<name>`: each database's newest complete daily backup into a
//!    database of the same name on the new server, creating the roles it
//!    needs (owners, grants, policies as in the backup);
//! 3. `documents`: the newest complete inventory's generations, copied from
//!    the mirror in the vault into the new documents bucket;
//! 4. `drill`: what was recovered checked against the backups: every
//!    secret's versions and payloads, every database's row counts, owners,
//!    privileges and sequences, every document's size and checksums.
//!
//! [`Recovery::plan`] changes nothing: for each step it reads the backup,
//! checks what it can (the key decrypts, the identity opens the dump, the
//! target is reachable and what is missing there, every mirrored generation
//! exists) and says what the step would create, or that it is already done,
//! or what blocks it. [`Recovery::apply`] refuses a plan with a blocked step,
//! then runs the steps in order; each is idempotent (a step whose result is
//! already in place is skipped and said so), and the first failure stops the
//! run with what to do next. A killed run is completed by running again: a
//! single-transaction `pg_restore` that did not finish left nothing but an
//! empty database, which the next run restores into.
//!
//! It never writes where the backups came from: a `--project` equal to the
//! backup's project and a documents bucket equal to the inventoried one (or
//! to the vault) are refused, and an existing database is only ever restored
//! into when it is empty.
//!
//! The report (each step's duration: the RTO; each backup's age: the RPO) is
//! written to the vault under `recoveries/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::{DatabaseUrl, DumpConfig};
use crate::crypto::Contents;
use crate::documents::{check, layout as documents_layout, restore as documents_restore};
use crate::jobs::secrets_backup::{self, LATEST_KEY};
use crate::postgres::layout::{self, Manifest};
use crate::postgres::restore::{self, Ownership, RestoreOptions, Selection};
use crate::postgres::{self as pg};
use crate::secret_manager::read::version_number;
use crate::secret_manager::restore::{self as secret_manager_restore, RestoreAction};
use crate::secret_manager::{SecretManagerBackup, SecretManagerClient, VersionState};
use crate::storage::{BlobStore, BlobStoreExt, StorageError, WriteMode};

/// Where recovery reports go in the vault.
pub const REPORT_PREFIX: &str = "recoveries/";
pub const REPORT_FORMAT: &str = "keshless-recovery-report";

/// Findings named in a step's detail; the counts stay exact beyond it.
const NAMED_LIMIT: usize = 10;

/// Where the recovered platform goes. Each is explicit: nothing defaults to
/// the environment the backups came from.
pub struct Targets {
    /// The Secret Manager project the secrets are created in.
    pub project: String,
    /// A connection to the new PostgreSQL server (its user may CREATE
    /// DATABASE and CREATE ROLE); each database is restored under its own name.
    pub server: DatabaseUrl,
    /// The new documents bucket.
    pub documents: Arc<dyn BlobStore>,
    /// Put before each database's name on the server (the full drill's
    /// `keshless_drill_<date>_<random>_`, so scratch databases on a shared
    /// server never take a real database's name and can be swept); empty for
    /// `recover`, which restores each database under its own name.
    pub database_prefix: String,
    /// Put before each secret's id in the project (the full drill's
    /// `keshless-drill-<date>-<random>-`); empty for `recover`.
    pub secret_id_prefix: String,
    /// Put on each role created on the server (`COMMENT ON ROLE`): the full
    /// drill's `keshless-drill:<run>`, so its teardown drops only roles it
    /// created; `None` for `recover`.
    pub role_comment: Option<String>,
    /// Restore the secrets without their `topics` and `rotation` (the full
    /// drill: a scratch secret must never publish rotation events to a
    /// production topic); `recover` keeps them.
    pub without_notifications: bool,
}

/// A recovery: the vault, the keys and the targets.
pub struct Recovery {
    pub vault: Arc<dyn BlobStore>,
    /// `SECRETS_ENCRYPTION_KEY`: opens the secrets backup.
    pub secrets_key: SecretString,
    /// Where an encrypted dump's age identity is read from.
    pub dumps: DumpConfig,
    pub secret_manager: SecretManagerClient,
    /// Databases to recover; empty: every database the vault has a backup of.
    pub databases: Vec<String>,
    pub targets: Targets,
    pub pg_restore: String,
    pub clock: crate::clock::Clock,
}

/// `backup` with no secret's `topics` or `rotation`: restored so, a
/// secret publishes no rotation events.
fn without_notifications(mut backup: SecretManagerBackup) -> SecretManagerBackup {
    for secret in &mut backup.secrets {
        if let Some(metadata) = secret.metadata.as_object_mut() {
            metadata.remove("topics");
            metadata.remove("rotation");
        }
    }
    backup
}

/// What the plan found a step to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanState {
    /// It can run: every precondition checked holds.
    Ready,
    /// Its result is already in place: `--apply` skips it.
    Done,
    /// It cannot run; `problems` says why.
    Blocked,
}

/// One step of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// `secrets`, `database:<name>`, `documents` or `drill`.
    pub name: String,
    /// What it writes to.
    pub target: String,
    /// The backup it recovers from.
    pub backup: Option<String>,
    pub backup_time: Option<DateTime<Utc>>,
    /// Age of that backup when planned: the recovery point.
    pub backup_age_seconds: Option<i64>,
    /// What it will create.
    pub creates: String,
    /// What it needs (keys, rights), and what of it was checked.
    pub needs: Vec<String>,
    pub state: PlanState,
    pub problems: Vec<String>,
    /// Roles the step creates on the server (they do not exist there now).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles_to_create: Vec<String>,
    /// The project a secrets backup was taken of, once read (even when
    /// the step is blocked).
    #[serde(skip)]
    source_project: Option<String>,
    #[serde(skip)]
    work: Work,
}

/// What a step works with, read once by the plan.
#[derive(Debug, Clone)]
enum Work {
    None,
    Secrets(Arc<SecretManagerBackup>),
    Database {
        id: String,
        manifest: Box<Manifest>,
        target: Box<DatabaseUrl>,
        exists: bool,
    },
    Documents {
        date: NaiveDate,
    },
    Drill,
}

impl PlannedStep {
    fn new(name: impl Into<String>, target: impl Into<String>) -> PlannedStep {
        PlannedStep {
            name: name.into(),
            target: target.into(),
            backup: None,
            backup_time: None,
            backup_age_seconds: None,
            creates: String::new(),
            needs: Vec::new(),
            state: PlanState::Ready,
            problems: Vec::new(),
            roles_to_create: Vec::new(),
            source_project: None,
            work: Work::None,
        }
    }

    fn block(&mut self, problem: impl Into<String>) {
        self.state = PlanState::Blocked;
        self.problems.push(problem.into());
    }

    fn backed_up(&mut self, backup: impl Into<String>, time: DateTime<Utc>, now: DateTime<Utc>) {
        self.backup = Some(backup.into());
        self.backup_time = Some(time);
        self.backup_age_seconds = Some((now - time).num_seconds());
    }
}

/// Every step, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub vault: String,
    pub planned_at: DateTime<Utc>,
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    /// Steps that stop `--apply`.
    pub fn blocked(&self) -> Vec<&PlannedStep> {
        self.steps
            .iter()
            .filter(|step| step.state == PlanState::Blocked)
            .collect()
    }

    /// The full names of the secrets the plan restores into the target project.
    pub fn secret_targets(&self, targets: &Targets) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|step| match &step.work {
                Work::Secrets(backup) => Some(backup),
                _ => None,
            })
            .flat_map(|backup| {
                backup.secrets.iter().map(move |secret| {
                    secret_manager_restore::target_name(&secret.name, &targets.project, &targets.secret_id_prefix)
                })
            })
            .collect()
    }

    /// The projects the plan's secrets backups were taken of.
    pub fn secrets_backup_projects(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|step| step.source_project.clone())
            .collect()
    }

    /// The roles the plan creates on the target server.
    pub fn roles_to_create(&self) -> Vec<String> {
        let mut roles: Vec<String> = self
            .steps
            .iter()
            .flat_map(|step| step.roles_to_create.iter().cloned())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    Done,
    /// Its result was already in place (an earlier run): nothing changed.
    AlreadyDone,
    Failed,
    /// An earlier step failed.
    NotRun,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Done => "done",
            StepOutcome::AlreadyDone => "already done",
            StepOutcome::Failed => "FAILED",
            StepOutcome::NotRun => "not run",
        }
    }
}

/// One step of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub target: String,
    pub outcome: StepOutcome,
    /// Wall time of the step: its share of the recovery time.
    pub duration_ms: u64,
    pub backup: Option<String>,
    pub backup_time: Option<DateTime<Utc>>,
    /// The backup's age when the recovery started: the recovery point.
    pub backup_age_seconds: Option<i64>,
    pub detail: String,
    /// After a failure: what to do next.
    pub next: Option<String>,
}

/// What `recoveries/<time>.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub version: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub passed: bool,
    /// Wall time of the whole recovery: the RTO it demonstrated.
    pub rto_seconds: f64,
    /// Age of the oldest backup recovered: the RPO it demonstrated.
    pub rpo_seconds: Option<i64>,
    pub vault: String,
    pub project: String,
    pub server: String,
    pub documents_bucket: String,
    pub steps: Vec<StepResult>,
    /// Key of the report in the vault (filled in when written).
    #[serde(default)]
    pub report: String,
}

/// A step's failure: why, and what to do next.
struct Failure {
    detail: String,
    next: String,
}

impl Failure {
    fn new(detail: impl Into<String>, next: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            next: next.into(),
        }
    }
}

impl Recovery {
    /// Reads every backup and checks every precondition it can; changes nothing.
    pub async fn plan(&self) -> Plan {
        let now = self.clock.now();
        let mut steps = vec![self.plan_secrets(now).await];
        steps.extend(self.plan_databases(now).await);
        steps.push(self.plan_documents(now).await);
        let mut drill = PlannedStep::new("drill", "what the steps above recovered");
        drill.creates = "nothing: checks every secret's versions and payloads, every database's row counts, owners, \
                         privileges and sequences, and every document against the backups"
            .into();
        drill.work = Work::Drill;
        steps.push(drill);
        Plan {
            vault: self.vault.location().to_string(),
            planned_at: now,
            steps,
        }
    }

    async fn plan_secrets(&self, now: DateTime<Utc>) -> PlannedStep {
        let project = &self.targets.project;
        let mut step = PlannedStep::new("secrets", format!("Secret Manager project {project}"));
        step.needs = vec![
            "SECRETS_ENCRYPTION_KEY (the offline copy)".into(),
            format!("roles/secretmanager.admin on project {project}, with secretmanager.googleapis.com enabled"),
        ];
        let (contents, created_at) =
            match secrets_backup::read_backup(self.vault.as_ref(), LATEST_KEY, &self.secrets_key).await {
                Ok(read) => read,
                Err(error) => {
                    step.block(format!("the secrets cannot be recovered: {error:#}"));
                    return step;
                }
            };
        step.needs[0] = "SECRETS_ENCRYPTION_KEY (checked: it decrypts the backup)".into();
        let backup = match &contents {
            Contents::SecretManager(bytes) => match SecretManagerBackup::from_json(bytes) {
                Ok(backup) if self.targets.without_notifications => without_notifications(backup),
                Ok(backup) => backup,
                Err(error) => {
                    step.block(format!("the secrets cannot be recovered: {LATEST_KEY}: {error}"));
                    return step;
                }
            },
            Contents::Map(_) => {
                step.block(format!(
                    "the secrets cannot be recovered into Secret Manager: {LATEST_KEY} holds environment or file \
                     secrets (SECRETS_SOURCE=env or file), not a Secret Manager backup; write them to a file with \
                     `keshless-ops restore secrets --latest --out FILE` and put them in place by hand"
                ));
                return step;
            }
        };
        let taken = DateTime::parse_from_rfc3339(&backup.taken_at)
            .or_else(|_| DateTime::parse_from_rfc3339(&created_at))
            .map(|time| time.with_timezone(&Utc))
            .unwrap_or(now);
        step.backed_up(format!("{LATEST_KEY} (project {})", backup.project), taken, now);
        step.source_project = Some(backup.project.clone());
        if backup.project == *project {
            step.block(format!(
                "--project {project} is the project the backup was taken of: recover writes only into a new \
                 project (to put secrets back into the same project use `restore secrets --to-secret-manager`)"
            ));
            return step;
        }
        let options = secret_manager_restore::RestoreOptions {
            project: project.clone(),
            only: Vec::new(),
            dry_run: true,
            now,
            id_prefix: self.targets.secret_id_prefix.clone(),
        };
        let rows = match secret_manager_restore::restore(&self.secret_manager, &backup, &options).await {
            Ok(rows) => rows,
            Err(error) => {
                step.block(error.to_string());
                return step;
            }
        };
        let count = |action| rows.iter().filter(|row| row.action == action).count();
        let failed: Vec<String> = rows
            .iter()
            .filter(|row| row.action == RestoreAction::Failed)
            .map(|row| format!("{}: {}", row.secret, row.detail.clone().unwrap_or_default()))
            .collect();
        let created = count(RestoreAction::Created);
        let added = count(RestoreAction::VersionsAdded);
        let versions: usize = rows
            .iter()
            .filter(|row| matches!(row.action, RestoreAction::Created | RestoreAction::VersionsAdded))
            .map(|row| row.versions)
            .sum();
        step.creates = format!(
            "{created} secrets created with their metadata and versions, {added} given the backup's versions \
             ({versions} versions in all); {} already as in the backup; {} expired, skipped",
            count(RestoreAction::Unchanged),
            count(RestoreAction::SkippedExpired)
        );
        if !failed.is_empty() {
            step.block(format!(
                "{} secrets cannot be checked in project {project} (does it exist, is the API enabled, may you \
                 administer its secrets?): {}",
                failed.len(),
                named(&failed)
            ));
        } else if created + added == 0 {
            step.state = PlanState::Done;
        }
        step.work = Work::Secrets(Arc::new(backup));
        step
    }

    async fn plan_databases(&self, now: DateTime<Utc>) -> Vec<PlannedStep> {
        let server = &self.targets.server;
        let databases = if self.databases.is_empty() {
            match layout::list(self.vault.as_ref(), Some(layout::Class::Daily)).await {
                Ok(listed) => {
                    let mut names: Vec<String> = listed
                        .iter()
                        .filter(|listed| listed.is_complete())
                        .filter_map(|listed| listed.manifest.as_ref().map(|manifest| manifest.database.clone()))
                        .collect();
                    names.sort();
                    names.dedup();
                    names
                }
                Err(error) => {
                    let mut step = PlannedStep::new("databases", format!("PostgreSQL server {server}"));
                    step.block(format!(
                        "the databases cannot be recovered: listing the backups: {error}"
                    ));
                    return vec![step];
                }
            }
        } else {
            self.databases.clone()
        };
        if databases.is_empty() {
            let mut step = PlannedStep::new("databases", format!("PostgreSQL server {server}"));
            step.block(format!(
                "the databases cannot be recovered: {} holds no complete PostgreSQL backup (postgresql/daily/)",
                self.vault.location()
            ));
            return vec![step];
        }
        let mut steps = Vec::new();
        for database in databases {
            steps.push(self.plan_database(&database, now).await);
        }
        steps
    }

    async fn plan_database(&self, database: &str, now: DateTime<Utc>) -> PlannedStep {
        let server = &self.targets.server;
        let backed_up_database = database;
        let target_name = format!("{}{database}", self.targets.database_prefix);
        let database = target_name.as_str();
        let mut step = PlannedStep::new(
            format!("database:{backed_up_database}"),
            format!("database {database} on {server}"),
        );
        if database.len() > 63 {
            step.block(format!(
                "database {backed_up_database} cannot be recovered as {database}: PostgreSQL names are at most 63 \
                 bytes"
            ));
            return step;
        }
        step.needs = vec![format!(
            "a user on {server} that may CREATE DATABASE and CREATE ROLE (Cloud SQL's postgres), and {} of the \
             server's major version or newer",
            self.pg_restore
        )];
        let (id, manifest) =
            match restore::select_for(self.vault.as_ref(), &Selection::Latest, Some(backed_up_database)).await {
                Ok(found) => found,
                Err(error) => {
                    step.block(format!("database {backed_up_database} cannot be recovered: {error:#}"));
                    return step;
                }
            };
        step.backed_up(id.clone(), manifest.finished_at, now);
        let target = match server.with_database(database) {
            Ok(target) => target,
            Err(problem) => {
                step.block(format!("--target-url: {problem}"));
                return step;
            }
        };
        if let Some(encryption) = &manifest.encoding.encryption {
            step.needs.push(format!(
                "an age identity of one of {} (BACKUP_AGE_IDENTITY_FILE: the break-glass key)",
                encryption.recipients.join(", ")
            ));
        }
        let identities = match self.dumps.identities_for(&manifest.encoding).await {
            Ok(identities) => identities,
            Err(error) => {
                step.block(format!("{id}: {error:#}"));
                return step;
            }
        };
        if identities.is_some() {
            if let Some(needs) = step.needs.last_mut() {
                needs.push_str(" — checked: it opens the dump");
            }
        }
        let rows: i64 = manifest.tables.iter().map(|table| table.rows).sum();
        let what = format!(
            "{} tables, {rows} rows, a {} dump ({})",
            manifest.tables.len(),
            human_bytes(manifest.size_bytes),
            manifest.encoding.describe()
        );
        let exists = match database_state(&target).await {
            Ok(DatabaseState::Missing) => false,
            Ok(DatabaseState::Empty) => true,
            Ok(DatabaseState::HasTables) => {
                match verify_database(&target, &manifest).await {
                    Ok(None) => {
                        step.state = PlanState::Done;
                        step.creates = format!("nothing: database {database} is already recovered ({what})");
                    }
                    Ok(Some(differences)) => step.block(format!(
                        "database {database} already exists on {server} and differs from {id} ({differences}); \
                         recover never restores over a database that is not empty: drop it if it is a leftover \
                         (DROP DATABASE {database}), or give another --target-url"
                    )),
                    Err(error) => step.block(format!("checking database {database} on {server}: {error:#}")),
                }
                step.work = Work::Database {
                    id,
                    manifest: Box::new(manifest),
                    target: Box::new(target),
                    exists: true,
                };
                return step;
            }
            Err(error) => {
                step.block(format!("cannot reach {server}: {error:#}"));
                return step;
            }
        };
        let options = RestoreOptions {
            create_database: !exists,
            ownership: Ownership::CreateRoles,
            identities,
            pg_restore: self.pg_restore.clone(),
            role_comment: self.targets.role_comment.clone(),
            ..RestoreOptions::default()
        };
        match restore::check_ready(self.vault.as_ref(), &id, &manifest, &target, &options).await {
            Ok(readiness) => {
                step.roles_to_create = readiness.roles_to_create.clone();
                step.creates = format!(
                    "{} {database} ({what}) with its owners and grants; {}",
                    if exists {
                        "into the existing empty database"
                    } else {
                        "database"
                    },
                    if readiness.roles_to_create.is_empty() {
                        "every role it needs exists".to_owned()
                    } else {
                        format!("roles created first: {}", readiness.roles_to_create.join(", "))
                    }
                );
                for note in readiness.notes {
                    step.creates.push_str(&format!("; {note}"));
                }
            }
            Err(error) => step.block(format!("{error:#}")),
        }
        step.work = Work::Database {
            id,
            manifest: Box::new(manifest),
            target: Box::new(target),
            exists,
        };
        step
    }

    async fn plan_documents(&self, now: DateTime<Utc>) -> PlannedStep {
        let bucket = self.targets.documents.location().to_string();
        let mut step = PlannedStep::new("documents", format!("documents bucket {bucket}"));
        step.needs = vec![format!(
            "roles/storage.objectUser on {bucket}, and read access to the vault {}",
            self.vault.location()
        )];
        let date = match documents_layout::newest_complete(self.vault.as_ref()).await {
            Ok(Some(date)) => date,
            Ok(None) => {
                step.block(format!(
                    "the documents cannot be recovered: {} holds no complete documents inventory \
                     (documents/inventory/)",
                    self.vault.location()
                ));
                return step;
            }
            Err(error) => {
                step.block(format!(
                    "the documents cannot be recovered: listing the inventories: {error}"
                ));
                return step;
            }
        };
        let summary = match documents_layout::read_summary(self.vault.as_ref(), date).await {
            Ok(summary) => summary,
            Err(error) => {
                step.block(format!("the documents cannot be recovered: {error}"));
                return step;
            }
        };
        step.backed_up(
            format!("{} ({})", documents_layout::summary_key(date), summary.documents_store),
            summary.started_at,
            now,
        );
        if bucket == summary.documents_store || bucket == self.vault.location().to_string() {
            step.block(format!(
                "--documents-bucket {bucket} is {}: recover writes only into a new bucket",
                if bucket == summary.documents_store {
                    "the bucket the inventory was taken of"
                } else {
                    "the vault itself"
                }
            ));
            return step;
        }
        let (counts, unavailable) = self.restore_documents(date, true).await;
        let counts = match counts {
            Ok(counts) => counts,
            Err(error) => {
                step.block(format!("checking the mirror and {bucket}: {error}"));
                return step;
            }
        };
        step.creates = format!(
            "{} documents copied from the mirror (the inventory of {date}: {} objects, {}); {} already there{}",
            counts.restored,
            summary.object_count,
            human_bytes(summary.total_bytes),
            counts.unchanged,
            if counts.newer_kept > 0 {
                format!("; {} objects the inventory does not know are kept", counts.newer_kept)
            } else {
                String::new()
            }
        );
        if !unavailable.is_empty() {
            step.block(format!(
                "{} documents cannot be recovered: the generation the inventory of {date} records is not in the \
                 mirror (documents/objects/): {}",
                unavailable.len(),
                named(&unavailable)
            ));
        } else if counts.restored == 0 {
            step.state = PlanState::Done;
        }
        step.work = Work::Documents { date };
        step
    }

    /// Runs a plan: refuses one with a blocked step, then every step in
    /// order, stopping at the first failure; writes the report to the vault.
    /// `on_step` hears each step as it starts.
    pub async fn apply(&self, plan: &Plan, on_step: impl FnMut(&PlannedStep)) -> anyhow::Result<Report> {
        let mut report = self.execute(plan, on_step).await?;
        report.report = self.write_report(&report).await?;
        Ok(report)
    }

    /// [`Recovery::apply`] without writing the report (the full drill keeps
    /// it in its own report).
    pub async fn execute(&self, plan: &Plan, mut on_step: impl FnMut(&PlannedStep)) -> anyhow::Result<Report> {
        let blocked = plan.blocked();
        if !blocked.is_empty() {
            anyhow::bail!(
                "nothing was changed: {} step{} cannot run ({}); see the plan (`keshless-ops recover --plan`)",
                blocked.len(),
                if blocked.len() == 1 { "" } else { "s" },
                blocked
                    .iter()
                    .map(|step| step.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let started_at = self.clock.now();
        let clock = Instant::now();
        let mut results = Vec::new();
        let mut failed = false;
        for step in &plan.steps {
            let mut result = StepResult {
                name: step.name.clone(),
                target: step.target.clone(),
                outcome: StepOutcome::NotRun,
                duration_ms: 0,
                backup: step.backup.clone(),
                backup_time: step.backup_time,
                backup_age_seconds: step.backup_time.map(|time| (started_at - time).num_seconds()),
                detail: String::new(),
                next: None,
            };
            if failed {
                results.push(result);
                continue;
            }
            on_step(step);
            let step_clock = Instant::now();
            let outcome = if step.state == PlanState::Done {
                Ok((
                    StepOutcome::AlreadyDone,
                    format!("skipped, already in place: {}", step.creates),
                ))
            } else {
                self.run_step(step, plan).await
            };
            result.duration_ms = step_clock.elapsed().as_millis() as u64;
            match outcome {
                Ok((outcome, detail)) => {
                    tracing::info!(recovery.step = %step.name, outcome = outcome.as_str(), duration_ms = result.duration_ms, %detail, "recovery step finished");
                    result.outcome = outcome;
                    result.detail = detail;
                }
                Err(failure) => {
                    tracing::error!(recovery.step = %step.name, duration_ms = result.duration_ms, error = %failure.detail, "recovery step failed");
                    result.outcome = StepOutcome::Failed;
                    result.detail = failure.detail;
                    result.next = Some(failure.next);
                    failed = true;
                }
            }
            results.push(result);
        }
        let rpo_seconds = results.iter().filter_map(|step| step.backup_age_seconds).max();
        let report = Report {
            format: REPORT_FORMAT.into(),
            version: 1,
            started_at,
            finished_at: self.clock.now(),
            passed: !failed,
            rto_seconds: clock.elapsed().as_secs_f64(),
            rpo_seconds,
            vault: self.vault.location().to_string(),
            project: self.targets.project.clone(),
            server: self.targets.server.to_string(),
            documents_bucket: self.targets.documents.location().to_string(),
            steps: results,
            report: String::new(),
        };
        Ok(report)
    }

    async fn run_step(&self, step: &PlannedStep, plan: &Plan) -> Result<(StepOutcome, String), Failure> {
        match &step.work {
            Work::None => Err(Failure::new(
                "the plan holds nothing for this step",
                "run `keshless-ops recover --plan` and report this",
            )),
            Work::Secrets(backup) => self.apply_secrets(backup).await,
            Work::Database {
                id,
                manifest,
                target,
                exists,
            } => self.apply_database(id, manifest, target, *exists).await,
            Work::Documents { date } => self.apply_documents(*date).await,
            Work::Drill => self.drill(plan).await,
        }
    }

    async fn apply_secrets(&self, backup: &SecretManagerBackup) -> Result<(StepOutcome, String), Failure> {
        let options = secret_manager_restore::RestoreOptions {
            project: self.targets.project.clone(),
            only: Vec::new(),
            dry_run: false,
            now: self.clock.now(),
            id_prefix: self.targets.secret_id_prefix.clone(),
        };
        let rows = secret_manager_restore::restore(&self.secret_manager, backup, &options)
            .await
            .map_err(|error| Failure::new(error.to_string(), "fix the backup selection and run again"))?;
        let count = |action| rows.iter().filter(|row| row.action == action).count();
        let failed: Vec<String> = rows
            .iter()
            .filter(|row| row.action == RestoreAction::Failed)
            .map(|row| format!("{}: {}", row.secret, row.detail.clone().unwrap_or_default()))
            .collect();
        if !failed.is_empty() {
            return Err(Failure::new(
                format!("{} secrets failed: {}", failed.len(), named(&failed)),
                "fix the cause and run `keshless-ops recover --apply` again: the secrets already restored are kept \
                 and found unchanged",
            ));
        }
        let (created, added, unchanged) = (
            count(RestoreAction::Created),
            count(RestoreAction::VersionsAdded),
            count(RestoreAction::Unchanged),
        );
        let outcome = if created + added == 0 {
            StepOutcome::AlreadyDone
        } else {
            StepOutcome::Done
        };
        Ok((
            outcome,
            format!(
                "{created} secrets created, {added} given versions, {unchanged} already as in the backup, {} expired \
                 skipped, into project {}",
                count(RestoreAction::SkippedExpired),
                self.targets.project
            ),
        ))
    }

    async fn apply_database(
        &self,
        id: &str,
        manifest: &Manifest,
        target: &DatabaseUrl,
        exists: bool,
    ) -> Result<(StepOutcome, String), Failure> {
        let database = target.database_name().unwrap_or(manifest.database.as_str());
        let again = "fix the cause and run `keshless-ops recover --apply` again";
        if exists {
            // An interrupted run's pg_restore may still be finishing (its
            // transaction rolls back when its input ends): never race it.
            match other_sessions(target).await {
                Ok(sessions) if !sessions.is_empty() => {
                    return Err(Failure::new(
                        format!(
                            "database {database} has other sessions ({}): a pg_restore of an interrupted run may \
                             still be running",
                            sessions.join(", ")
                        ),
                        "wait until they end (or terminate them), then run `keshless-ops recover --apply` again",
                    ))
                }
                Ok(_) => {}
                Err(error) => return Err(Failure::new(format!("{error:#}"), again)),
            }
        }
        let identities = self
            .dumps
            .identities_for(&manifest.encoding)
            .await
            .map_err(|error| Failure::new(format!("{error:#}"), again))?;
        let options = RestoreOptions {
            create_database: !exists,
            ownership: Ownership::CreateRoles,
            identities,
            pg_restore: self.pg_restore.clone(),
            role_comment: self.targets.role_comment.clone(),
            ..RestoreOptions::default()
        };
        let report = restore::restore_with(self.vault.as_ref(), id, manifest, target, &options)
            .await
            .map_err(|error| {
                Failure::new(
                    format!("{error:#}"),
                    format!(
                        "{again}: the restore runs in one transaction, so the database is left empty (or not \
                         created) and the next run restores it from the start"
                    ),
                )
            })?;
        if !report.is_faithful() {
            return Err(Failure::new(
                format!(
                    "database {database} was restored from {id} but differs from its manifest: {} tables, {} \
                     owners/privileges/sequences",
                    report.mismatches.len(),
                    report.fidelity_differences.len()
                ),
                format!(
                    "check the backup with `keshless-ops backups verify {id}`; drop database {database} on the \
                     target and run again, or recover from another backup with `restore postgres --id`"
                ),
            ));
        }
        let logins: Vec<&str> = report
            .created_roles
            .iter()
            .filter(|role| role.login)
            .map(|role| role.name.as_str())
            .collect();
        let roles = if report.created_roles.is_empty() {
            "no role created (all existed)".to_owned()
        } else {
            format!(
                "roles created (no passwords): {}",
                report
                    .created_roles
                    .iter()
                    .map(|role| role.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let passwords = if logins.is_empty() {
            String::new()
        } else {
            format!(
                "; set a password for each login role before the application connects: {}",
                logins
                    .iter()
                    .map(|name| format!("\\password {name}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Ok((
            StepOutcome::Done,
            format!(
                "{id} restored: {} tables with the backup's exact row counts, owners, privileges and sequences; \
                 {roles}{passwords}",
                report.tables
            ),
        ))
    }

    /// The inventory of `date` restored from the mirror into the new
    /// documents bucket (or only checked, `dry_run`), with the names the
    /// mirror lacks.
    async fn restore_documents(
        &self,
        date: NaiveDate,
        dry_run: bool,
    ) -> (
        Result<documents_restore::Counts, crate::documents::DocumentsError>,
        Vec<String>,
    ) {
        let request = documents_restore::Request {
            prefix: String::new(),
            point: documents_restore::Point::Inventory {
                date,
                from_mirror: true,
            },
            dry_run,
            delete_newer: false,
        };
        let mut unavailable = Vec::new();
        let counts = documents_restore::run(self.vault.as_ref(), self.targets.documents.as_ref(), &request, |line| {
            if line.result == documents_restore::ObjectResult::Unavailable {
                unavailable.push(line.name.clone());
            }
        })
        .await;
        (counts, unavailable)
    }

    async fn apply_documents(&self, date: NaiveDate) -> Result<(StepOutcome, String), Failure> {
        let (counts, unavailable) = self.restore_documents(date, false).await;
        let counts = counts.map_err(|error| {
            Failure::new(
                error.to_string(),
                "fix the cause and run `keshless-ops recover --apply` again: documents already copied are found \
                 unchanged",
            )
        })?;
        if !unavailable.is_empty() {
            return Err(Failure::new(
                format!(
                    "{} documents are not in the mirror: {}",
                    unavailable.len(),
                    named(&unavailable)
                ),
                "the rest was copied; recover these from another copy, then run the drill with `recover --apply`",
            ));
        }
        let outcome = if counts.restored == 0 {
            StepOutcome::AlreadyDone
        } else {
            StepOutcome::Done
        };
        Ok((
            outcome,
            format!(
                "{} documents copied from the mirror (inventory of {date}), {} already there",
                counts.restored, counts.unchanged
            ),
        ))
    }

    /// The drill against what was recovered: everything the plan's steps
    /// name, compared with its backup.
    async fn drill(&self, plan: &Plan) -> Result<(StepOutcome, String), Failure> {
        let mut passed = Vec::new();
        let mut problems = Vec::new();
        for step in &plan.steps {
            match &step.work {
                Work::Secrets(backup) => match self.verify_secrets(backup).await {
                    Ok(summary) => passed.push(summary),
                    Err(problem) => problems.push(problem),
                },
                Work::Database { manifest, target, .. } => match verify_database(target, manifest).await {
                    Ok(None) => passed.push(format!(
                        "database {} as in its backup ({} tables)",
                        manifest.database,
                        manifest.tables.len()
                    )),
                    Ok(Some(differences)) => problems.push(format!("database {}: {differences}", manifest.database)),
                    Err(error) => problems.push(format!("database {}: {error:#}", manifest.database)),
                },
                Work::Documents { date } => {
                    match check::run(
                        self.vault.as_ref(),
                        self.targets.documents.as_ref(),
                        Some(*date),
                        "",
                        None,
                    )
                    .await
                    {
                        Ok(report) if !report.has_findings() => {
                            passed.push(format!("{} documents match the inventory of {date}", report.unchanged))
                        }
                        Ok(report) => problems.push(format!(
                            "documents: {} missing, {} changed against the inventory of {date}: {}",
                            report.missing,
                            report.changed,
                            named(
                                &report
                                    .findings
                                    .iter()
                                    .map(|finding| finding.name.clone())
                                    .collect::<Vec<_>>()
                            )
                        )),
                        Err(error) => problems.push(format!("documents: {error}")),
                    }
                }
                Work::None | Work::Drill => {}
            }
        }
        if problems.is_empty() {
            Ok((StepOutcome::Done, passed.join("; ")))
        } else {
            Err(Failure::new(
                problems.join("; "),
                "what was recovered differs from the backups: look at the named objects before the application \
                 uses them; `keshless-ops recover --apply` again checks again",
            ))
        }
    }

    /// Every backed-up secret's versions in the target project: the same
    /// numbers and states, and the same payload for each ENABLED one.
    async fn verify_secrets(&self, backup: &SecretManagerBackup) -> Result<String, String> {
        let now = self.clock.now();
        let mut differences = Vec::new();
        let mut secrets = 0usize;
        let mut versions = 0usize;
        for secret in &backup.secrets {
            if secret.expire_time().is_some_and(|time| time <= now) {
                continue;
            }
            let target = secret_manager_restore::target_name(
                &secret.name,
                &self.targets.project,
                &self.targets.secret_id_prefix,
            );
            let found = match self.secret_manager.list_versions(&target).await {
                Ok(found) => found,
                Err(error) => {
                    differences.push(format!("{target}: {error}"));
                    continue;
                }
            };
            let states: BTreeMap<u64, VersionState> = found
                .iter()
                .filter_map(|version| Some((version_number(&version.name), state_of(&version.state)?)))
                .collect();
            secrets += 1;
            for version in &secret.versions {
                versions += 1;
                match states.get(&version.version) {
                    None => differences.push(format!("{target}: version {} missing", version.version)),
                    Some(state) if *state != version.state => differences.push(format!(
                        "{target}: version {} is {state}, the backup's was {}",
                        version.version, version.state
                    )),
                    Some(_) => {
                        if let Some(payload) = &version.payload {
                            match self
                                .secret_manager
                                .access(&format!("{target}/versions/{}", version.version))
                                .await
                            {
                                Ok(found) if found == *payload => {}
                                Ok(_) => differences
                                    .push(format!("{target}: version {} holds another payload", version.version)),
                                Err(error) => differences.push(format!("{target}: {error}")),
                            }
                        }
                    }
                }
            }
        }
        if differences.is_empty() {
            Ok(format!(
                "{secrets} secrets with their {versions} versions as in the backup in project {}",
                self.targets.project
            ))
        } else {
            Err(format!(
                "secrets: {} differences: {}",
                differences.len(),
                named(&differences)
            ))
        }
    }

    /// `recoveries/YYYY-MM-DDTHHMMSSZ.json`, never overwritten.
    async fn write_report(&self, report: &Report) -> anyhow::Result<String> {
        let base = report.started_at.format("%Y-%m-%dT%H%M%SZ");
        for attempt in 0..5 {
            let key = if attempt == 0 {
                format!("{REPORT_PREFIX}{base}.json")
            } else {
                format!("{REPORT_PREFIX}{base}-{attempt}.json")
            };
            let mut written = report.clone();
            written.report = key.clone();
            let body = serde_json::to_vec_pretty(&written)?;
            match self
                .vault
                .put_bytes(&key, Bytes::from(body), WriteMode::CreateOnly)
                .await
            {
                Ok(_) => return Ok(key),
                Err(StorageError::AlreadyExists { .. }) => continue,
                Err(error) => {
                    return Err(anyhow::Error::new(error).context("writing the recovery report into the vault"))
                }
            }
        }
        Err(anyhow!("five recovery reports for {base} already exist"))
    }
}

/// Whether a database exists on the target server, and has tables.
enum DatabaseState {
    Missing,
    Empty,
    HasTables,
}

async fn database_state(target: &DatabaseUrl) -> anyhow::Result<DatabaseState> {
    let database = target.database_name().unwrap_or_default().to_owned();
    let mut admin = target.postgres_config().clone();
    admin.dbname("postgres");
    let client = pg::connect(&admin).await?;
    let exists = !client
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await?
        .is_empty();
    if !exists {
        return Ok(DatabaseState::Missing);
    }
    let client = pg::connect(target.postgres_config()).await?;
    Ok(if pg::table_names(&client).await?.is_empty() {
        DatabaseState::Empty
    } else {
        DatabaseState::HasTables
    })
}

/// Compares a database with the backup's manifest; `None` when it is the
/// backup's, else a line naming the differences.
async fn verify_database(target: &DatabaseUrl, manifest: &Manifest) -> anyhow::Result<Option<String>> {
    let client = pg::connect(target.postgres_config()).await?;
    let (mismatches, differences) =
        restore::compare_with_manifest(target.postgres_config(), &client, manifest, Ownership::CreateRoles).await?;
    if mismatches.is_empty() && differences.is_empty() {
        return Ok(None);
    }
    let mut named_differences: Vec<String> = mismatches
        .iter()
        .map(|mismatch| {
            format!(
                "{} has {} rows, the backup {}",
                mismatch.table,
                mismatch.restored.map_or("no".into(), |rows| rows.to_string()),
                mismatch
                    .expected
                    .map_or("has no such table".into(), |rows| rows.to_string())
            )
        })
        .collect();
    named_differences.extend(
        differences
            .iter()
            .map(|difference| format!("{} {}: {}", difference.kind, difference.name, difference.problem)),
    );
    Ok(Some(format!(
        "{} tables and {} owners/privileges/sequences differ: {}",
        mismatches.len(),
        differences.len(),
        named(&named_differences)
    )))
}

/// Other sessions connected to the target database (`application_name (pid)`).
async fn other_sessions(target: &DatabaseUrl) -> anyhow::Result<Vec<String>> {
    let database = target.database_name().unwrap_or_default().to_owned();
    let mut admin = target.postgres_config().clone();
    admin.dbname("postgres");
    let client = pg::connect(&admin).await?;
    let rows = client
        .query(
            "SELECT coalesce(nullif(application_name, ''), 'unnamed') || ' (pid ' || pid || ')' FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
}

fn state_of(state: &google_cloud_secretmanager_v1::model::secret_version::State) -> Option<VersionState> {
    use google_cloud_secretmanager_v1::model::secret_version::State;
    match state {
        State::Enabled => Some(VersionState::Enabled),
        State::Disabled => Some(VersionState::Disabled),
        State::Destroyed => Some(VersionState::Destroyed),
        _ => None,
    }
}

/// The first few of a list, with how many more there are.
fn named(items: &[String]) -> String {
    let mut text = items.iter().take(NAMED_LIMIT).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > NAMED_LIMIT {
        text.push_str(&format!(" and {} more", items.len() - NAMED_LIMIT));
    }
    text
}

/// A byte count for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_cut_with_a_count() {
        let items: Vec<String> = (0..12).map(|index| format!("s{index}")).collect();
        assert_eq!(named(&items[..2]), "s0, s1");
        assert!(named(&items).ends_with("s9 and 2 more"), "{}", named(&items));
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
