//! `dr-drill` (SPEC sections 2 and 8; also `keshless-ops drill`): rehearse
//! disaster recovery with the real backups and report how long each recovery
//! step took (its RTO) and how old the backup it used was (its RPO).
//!
//! Steps, all run even when an earlier one fails (a drill that stops at the
//! first problem hides the second):
//! 1. `postgres-restore`: the newest complete PostgreSQL backup restored into
//!    a scratch database `keshless_drill_<date>_<random>`, created for the
//!    drill and always dropped afterwards, with its SHA-256 and every table's
//!    row count checked against the manifest.
//! 2. `secrets-decrypt`: the newest weekly secrets backup decrypted in memory
//!    with the configured key; its secrets are compared by name with the
//!    previous weekly backup (a secret that disappeared fails the step).
//! 3. `documents-check`: the newest documents inventory compared with the
//!    documents bucket (every entry, or a sample).
//! 4. `secret-manager-coverage` (only with `SECRETS_SOURCE=secret-manager`):
//!    every secret Secret Manager holds now is in the newest weekly backup; one
//!    created after the backup was taken is reported, one that existed before
//!    and is missing fails the step.
//!
//! A missing backup is a failure, never a skipped step. The report goes to
//! `drills/YYYY-MM-DD.json` (create-only; a second drill the same day gets
//! its time appended) and the run fails if any step failed: permanent when
//! the data is bad (a checksum, a count, a decryption), transient when
//! infrastructure was down (so Pub/Sub retries it).

mod full;

use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::DatabaseUrl;
use crate::crypto::EnvelopeCodec;
use crate::documents::check;
use crate::documents::layout as documents_layout;
use crate::jobs::secrets_backup::{self, MAXIMUM_ENVELOPE_BYTES};
use crate::postgres::layout;
use crate::postgres::restore::{self, Selection};
use crate::postgres::{self as pg};
use crate::runtime::job::{Job, JobError, Outcome, RunContext};
use crate::storage::{BlobStore, BlobStoreExt, ErrorClass, StorageError, WriteMode};

pub use full::{refusals, tear_down, FullTargets, Scratch, TeardownResult, JOURNAL_PREFIX};

/// Where drill reports go.
pub const REPORT_PREFIX: &str = "drills/";
pub const REPORT_FORMAT: &str = "keshless-drill-report";

/// The rehearsal.
pub struct DrDrill {
    pub backups: Arc<dyn BlobStore>,
    /// The server scratch databases are created on (`DRILL_DATABASE_URL`,
    /// default `DATABASE_URL`); its user needs CREATEDB.
    pub scratch_server: DatabaseUrl,
    /// `DATABASES`: each one's newest backup is restored; empty: the newest
    /// backup in the store, whatever its database.
    pub databases: Vec<String>,
    pub secrets_key: SecretString,
    pub codec: EnvelopeCodec,
    /// The documents bucket, for the inventory check: an open store, or
    /// where to open one (and the storage emulator) when the step runs.
    pub documents: Documents,
    /// "Now" of the drill: its date, the backups' ages (RPO).
    pub clock: crate::clock::Clock,
    /// The Secret Manager project the secrets backups protect, when that is the source.
    pub secret_manager: Option<crate::jobs::secrets_source::SecretManagerSource>,
    /// Where an encrypted backup's age identity is read from when the drill
    /// restores it (`BACKUP_AGE_IDENTITY_FILE` / `_SECRET`).
    pub dumps: crate::config::DumpConfig,
    /// The `full` mode's scratch targets (`DRILL_SECRET_MANAGER_PROJECT`, `DRILL_DOCUMENTS_STORE`).
    pub full: FullTargets,
}

/// How the drill reaches the documents bucket.
#[derive(Clone)]
pub enum Documents {
    Open(Arc<dyn BlobStore>),
    At {
        location: crate::storage::StoreLocation,
        storage_emulator_host: Option<String>,
    },
}

impl DrDrill {
    /// The production drill: stores, scratch server and key from the configuration.
    pub fn from_config(config: &crate::config::DrillConfig, backups: Arc<dyn BlobStore>) -> DrDrill {
        DrDrill {
            backups,
            scratch_server: config.drill_database_url.clone(),
            databases: config.databases.clone(),
            secrets_key: config.secrets_encryption_key.clone(),
            codec: EnvelopeCodec::standard(),
            documents: Documents::At {
                location: config.documents_store.clone(),
                storage_emulator_host: config.storage_emulator_host.clone(),
            },
            clock: crate::clock::Clock::system(),
            secret_manager: config
                .secret_manager
                .as_ref()
                .map(crate::jobs::secrets_source::SecretManagerSource::from_config),
            dumps: config.dumps.clone(),
            full: FullTargets::from_config(config),
        }
    }
}

impl std::fmt::Debug for DrDrill {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DrDrill")
            .field("backups", &self.backups.location().to_string())
            .field("scratch_server", &self.scratch_server)
            .finish_non_exhaustive()
    }
}

/// `{"documents_sample": N}` checks N inventory entries instead of all;
/// `{"mode": "full"}` rehearses the whole recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillParams {
    pub documents_sample: Option<u64>,
    pub mode: DrillMode,
}

/// What a drill rehearses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DrillMode {
    /// Each database restored into a scratch database and checked, the
    /// secrets backup decrypted, the inventory checked against the bucket.
    #[default]
    Database,
    /// `recover --apply` into scratch targets (Secret Manager project,
    /// databases, documents), checked, then torn down.
    Full,
}

/// Whether a failed step means bad data or unavailable infrastructure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The backup is missing, corrupt or incomplete: a person must look.
    Data,
    /// Something was down: retrying may pass.
    Infrastructure,
    /// The drill's own settings are wrong (a refused password): a person
    /// must fix them; it says nothing about the backups.
    Configuration,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub passed: bool,
    /// Wall time of the step: the recovery time objective it demonstrates.
    pub duration_ms: u64,
    /// The backup used (object or id), if one was found.
    pub backup: Option<String>,
    /// When that backup was taken.
    pub backup_time: Option<DateTime<Utc>>,
    /// Its age at the start of the drill: the recovery point it demonstrates.
    pub backup_age_seconds: Option<i64>,
    /// What was checked, in one line.
    pub detail: String,
    /// Why it failed.
    pub error: Option<String>,
    pub failure: Option<FailureKind>,
}

/// What `drills/YYYY-MM-DD.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub version: u32,
    pub idempotency_key: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub passed: bool,
    pub steps: Vec<Step>,
    /// Key of the report in the store (filled in when written).
    #[serde(default)]
    pub report: String,
    #[serde(default)]
    pub mode: DrillMode,
    /// Full mode: wall time of the whole recovery, the RTO it demonstrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    /// Full mode: age of the oldest backup recovered, the RPO it demonstrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<i64>,
    /// Full mode: the recovery's own report (its steps, targets and times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<crate::recovery::Report>,
}

impl Report {
    pub fn summary(&self) -> String {
        let failed: Vec<&str> = self
            .steps
            .iter()
            .filter(|step| !step.passed)
            .map(|step| step.name.as_str())
            .collect();
        if failed.is_empty() {
            format!("drill passed: {} steps", self.steps.len())
        } else {
            format!("drill FAILED: {}", failed.join(", "))
        }
    }
}

/// A step's failure with its kind.
struct StepFailure {
    kind: FailureKind,
    error: anyhow::Error,
}

impl StepFailure {
    fn data(error: impl Into<anyhow::Error>) -> StepFailure {
        StepFailure {
            kind: FailureKind::Data,
            error: error.into(),
        }
    }

    /// Classifies by the error chain: refused credentials are
    /// configuration, transient storage and connection failures are
    /// infrastructure, everything else is the data's fault.
    fn classify(error: anyhow::Error) -> StepFailure {
        if error
            .chain()
            .any(|cause| cause.downcast_ref::<pg::AuthenticationError>().is_some())
        {
            return StepFailure {
                kind: FailureKind::Configuration,
                error,
            };
        }
        let infrastructure = error.chain().any(|cause| {
            cause
                .downcast_ref::<StorageError>()
                .is_some_and(|storage| storage.class() == ErrorClass::Transient)
                || cause.downcast_ref::<JobError>().is_some_and(JobError::is_transient)
                || cause.downcast_ref::<std::io::Error>().is_some()
        });
        StepFailure {
            kind: if infrastructure {
                FailureKind::Infrastructure
            } else {
                FailureKind::Data
            },
            error,
        }
    }
}

impl From<StorageError> for StepFailure {
    fn from(error: StorageError) -> StepFailure {
        StepFailure::classify(error.into())
    }
}

/// Runs one step, timing it and turning its result into a [`Step`].
async fn step<F>(name: &str, started: DateTime<Utc>, work: F) -> Step
where
    F: std::future::Future<Output = (Option<(String, DateTime<Utc>)>, Result<String, StepFailure>)>,
{
    let clock = Instant::now();
    let (backup, result) = work.await;
    let duration_ms = clock.elapsed().as_millis() as u64;
    let backup_time = backup.as_ref().map(|(_, time)| *time);
    let backup = backup.map(|(id, _)| id);
    let backup_age_seconds = backup_time.map(|time| (started - time).num_seconds());
    match result {
        Ok(detail) => {
            tracing::info!(drill.step = name, duration_ms, %detail, "drill step passed");
            Step {
                name: name.to_owned(),
                passed: true,
                duration_ms,
                backup,
                backup_time,
                backup_age_seconds,
                detail,
                error: None,
                failure: None,
            }
        }
        Err(failure) => {
            let error = format!("{:#}", failure.error);
            tracing::error!(drill.step = name, duration_ms, error = %error, kind = ?failure.kind, "drill step failed");
            Step {
                name: name.to_owned(),
                passed: false,
                duration_ms,
                backup,
                backup_time,
                backup_age_seconds,
                detail: String::new(),
                error: Some(error),
                failure: Some(failure.kind),
            }
        }
    }
}

impl DrDrill {
    /// Runs every step and writes the report; the report says whether it
    /// passed. A drill that cannot start (its scratch server refuses the
    /// credentials, or cannot be reached) is an error and writes no report:
    /// it would record a failed rehearsal that never rehearsed anything.
    pub async fn rehearse(&self, idempotency_key: &str, params: &DrillParams) -> Result<Report, JobError> {
        if params.mode == DrillMode::Full {
            return self.rehearse_full(idempotency_key).await;
        }
        self.check_scratch_server().await?;
        let started_at = self.clock.now();
        let mut steps = Vec::new();
        let databases: Vec<Option<&str>> = if self.databases.is_empty() {
            vec![None]
        } else {
            self.databases.iter().map(|database| Some(database.as_str())).collect()
        };
        for database in databases {
            steps.push(step("postgres-restore", started_at, self.postgres_step(started_at, database)).await);
        }
        steps.push(step("secrets-decrypt", started_at, self.secrets_step()).await);
        steps.push(step("documents-check", started_at, self.documents_step(params)).await);
        if let Some(source) = &self.secret_manager {
            steps.push(step("secret-manager-coverage", started_at, self.secret_manager_step(source)).await);
        }
        self.finish(idempotency_key, started_at, steps, DrillMode::Database, None)
            .await
    }

    /// The report of a drill whose steps are done, written to the store; a
    /// full drill's carries its recovery's report, RTO and RPO.
    async fn finish(
        &self,
        idempotency_key: &str,
        started_at: DateTime<Utc>,
        steps: Vec<Step>,
        mode: DrillMode,
        recovery: Option<crate::recovery::Report>,
    ) -> Result<Report, JobError> {
        let mut report = Report {
            format: REPORT_FORMAT.into(),
            version: 1,
            idempotency_key: idempotency_key.to_owned(),
            started_at,
            finished_at: self.clock.now(),
            passed: steps.iter().all(|step| step.passed),
            steps,
            report: String::new(),
            mode,
            rto_seconds: recovery.as_ref().map(|report| report.rto_seconds),
            rpo_seconds: recovery.as_ref().and_then(|report| report.rpo_seconds),
            recovery,
        };
        report.report = self.write_report(&report).await?;
        Ok(report)
    }

    /// Connects to the scratch server as the restore will, before anything
    /// is written or created.
    async fn check_scratch_server(&self) -> Result<(), JobError> {
        let mut admin = self.scratch_server.postgres_config().clone();
        admin.dbname("postgres");
        let context = |what: &str| {
            format!(
                "the drill did not start: {what} its scratch server {} (DRILL_DATABASE_URL, else DATABASE_URL); \
                 no scratch database was created and no report written",
                self.scratch_server
            )
        };
        match pg::connect(&admin).await {
            Ok(_) => Ok(()),
            Err(JobError::Transient(error)) => Err(JobError::Transient(error.context(context("cannot reach")))),
            Err(JobError::Permanent(error)) => Err(JobError::Permanent(error.context(context("refused by")))),
        }
    }

    /// `drills/YYYY-MM-DD.json`, or with the start time appended when a drill
    /// already reported that day (reports are never overwritten).
    async fn write_report(&self, report: &Report) -> Result<String, JobError> {
        let date = report.started_at.format("%Y-%m-%d");
        let candidates = [
            format!("{REPORT_PREFIX}{date}.json"),
            format!("{REPORT_PREFIX}{date}T{}.json", report.started_at.format("%H%M%S%.3fZ")),
        ];
        for key in candidates {
            let mut written = report.clone();
            written.report = key.clone();
            let body = serde_json::to_vec_pretty(&written).map_err(JobError::permanent)?;
            match self
                .backups
                .put_bytes(&key, Bytes::from(body), WriteMode::CreateOnly)
                .await
            {
                Ok(_) => return Ok(key),
                Err(StorageError::AlreadyExists { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(JobError::permanent(anyhow!(
            "a drill report for {date} at this very time already exists"
        )))
    }

    async fn postgres_step(
        &self,
        started: DateTime<Utc>,
        database: Option<&str>,
    ) -> (Option<(String, DateTime<Utc>)>, Result<String, StepFailure>) {
        // The newest daily backup must be readable: a garbled newest manifest
        // would otherwise make `select` fall back to an older backup and pass.
        let of_database = |listed: &&layout::Listed| {
            database
                .is_none_or(|database| layout::parse_base(&listed.base).is_some_and(|(_, named, _)| named == database))
        };
        match layout::list(self.backups.as_ref(), Some(layout::Class::Daily)).await {
            Ok(listed) => {
                if let Some(newest) = listed
                    .iter()
                    .filter(of_database)
                    .find(|listed| listed.manifest.is_some() || listed.problem.is_some())
                {
                    if let Some(problem) = &newest.problem {
                        return (
                            None,
                            Err(StepFailure::data(anyhow!(
                                "the newest backup {} has an unreadable manifest: {problem}",
                                newest.id
                            ))),
                        );
                    }
                }
            }
            Err(error) => return (None, Err(error.into())),
        }
        let (id, manifest) = match restore::select_for(self.backups.as_ref(), &Selection::Latest, database).await {
            Ok(found) => found,
            Err(error) => return (None, Err(StepFailure::classify(error))),
        };
        let backup = Some((id.clone(), manifest.finished_at));
        if manifest.tables.is_empty() {
            return (
                backup,
                Err(StepFailure::data(anyhow!(
                    "{id}: the manifest records no tables; a backup of an empty database proves nothing"
                ))),
            );
        }
        let swept = self.sweep_stale_scratch_databases(started).await;
        let scratch = format!(
            "keshless_drill_{}_{:08x}",
            started.format("%Y%m%d"),
            rand::thread_rng().gen::<u32>()
        );
        let target = match self.scratch_server.with_database(&scratch) {
            Ok(target) => target,
            Err(problem) => return (backup, Err(StepFailure::data(anyhow!(problem)))),
        };
        // If this future is dropped (the worker cancels a job whose lease is
        // lost, or shuts down) or panics, the guard still drops the database.
        let guard = ScratchGuard {
            server: self.scratch_server.postgres_config().clone(),
            name: scratch.clone(),
            armed: true,
        };
        // With owners and privileges, as a real recovery would be; a backup
        // made before roles were recorded can only be restored without.
        let ownership = if manifest.globals.is_some() {
            restore::Ownership::KeepOwners
        } else {
            restore::Ownership::NoOwner
        };
        let identities = match self.dumps.identities_for(&manifest.encoding).await {
            Ok(identities) => identities,
            Err(error) => return (backup, Err(StepFailure::classify(error))),
        };
        let options = restore::RestoreOptions {
            create_database: true,
            ownership,
            identities,
            ..restore::RestoreOptions::default()
        };
        let restored = restore::restore_with(self.backups.as_ref(), &id, &manifest, &target, &options).await;
        // Always drop the scratch database, whatever happened above; failing
        // to drop it fails the step (it would fill the server over months).
        let dropped = drop_database(self.scratch_server.postgres_config(), &scratch).await;
        let mut guard = guard;
        guard.armed = false;
        let result = match (restored, dropped) {
            (Err(error), Ok(())) => Err(StepFailure::classify(
                error.context(format!("restoring {id} into the scratch database {scratch} (dropped)")),
            )),
            (Err(error), Err(drop_error)) => Err(StepFailure::classify(error.context(format!(
                "restoring {id} into the scratch database {scratch}, which could not be checked or dropped \
                 ({drop_error:#}); if it exists, the next drill drops it (or DROP DATABASE {scratch})"
            )))),
            (Ok(_), Err(error)) => Err(StepFailure::classify(error.context(format!(
                "scratch database {scratch}, which this drill created, could not be dropped; drop it by hand \
                 (DROP DATABASE {scratch}) or let the next drill drop it"
            )))),
            (Ok(report), Ok(())) if !report.mismatches.is_empty() => Err(StepFailure::data(anyhow!(
                "row counts differ from the manifest in {} tables (restored into {scratch}, dropped): {}",
                report.mismatches.len(),
                report
                    .mismatches
                    .iter()
                    .map(|mismatch| format!(
                        "{} (backup {}, restored {})",
                        mismatch.table,
                        mismatch.expected.map_or("-".into(), |rows| rows.to_string()),
                        mismatch.restored.map_or("missing".into(), |rows| rows.to_string())
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            (Ok(report), Ok(())) if !report.fidelity_differences.is_empty() => Err(StepFailure::data(anyhow!(
                "owners, privileges or sequence positions differ from the manifest in {} objects (restored into \
                 {scratch}, dropped): {}",
                report.fidelity_differences.len(),
                report
                    .fidelity_differences
                    .iter()
                    .map(|difference| format!("{} {}: {}", difference.kind, difference.name, difference.problem))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
            (Ok(report), Ok(())) => Ok(format!(
                "{id}: {} bytes restored into {scratch} (dropped), SHA-256 verified, {} tables with the backup's exact \
                 row counts, {}{swept}",
                report.bytes,
                report.tables,
                if !report.fidelity_checked {
                    "owners and privileges not checked (backup made before manifest version 2, restored with --no-owner)"
                } else {
                    "every owner, privilege and sequence position as recorded"
                }
            )),
        };
        (backup, result)
    }

    /// Drops scratch databases a crashed drill left behind (named with a
    /// date before yesterday, so a drill running now is never touched; a
    /// full drill's `keshless_drill_<date>_<random>_<database>` too);
    /// returns a note for the step's detail.
    async fn sweep_stale_scratch_databases(&self, started: DateTime<Utc>) -> String {
        let cutoff = (started - chrono::Duration::days(1)).format("%Y%m%d").to_string();
        let mut admin = self.scratch_server.postgres_config().clone();
        admin.dbname("postgres");
        let names: Vec<String> = match pg::connect(&admin).await {
            Ok(client) => match client
                .query(
                    "SELECT datname FROM pg_database WHERE datname ~ '^keshless_drill_[0-9]{8}_[0-9a-f]{8}(_.+)?$'",
                    &[],
                )
                .await
            {
                Ok(rows) => rows.iter().map(|row| row.get::<_, String>(0)).collect(),
                Err(error) => return format!("; could not look for stale scratch databases: {error}"),
            },
            Err(error) => return format!("; could not look for stale scratch databases: {error}"),
        };
        let stale: Vec<String> = names
            .into_iter()
            .filter(|name| name["keshless_drill_".len().."keshless_drill_".len() + 8] < *cutoff)
            .collect();
        let mut dropped = Vec::new();
        for name in stale {
            // Without FORCE: a database someone is still connected to (a
            // drill running now with a clock far ahead, a person looking at
            // it) is left alone and reported, never pulled from under them.
            match drop_database_unless_in_use(self.scratch_server.postgres_config(), &name).await {
                Ok(()) => dropped.push(name),
                Err(error) => {
                    tracing::warn!(database = %name, error = %format!("{error:#}"), "left a stale scratch database in place")
                }
            }
        }
        if dropped.is_empty() {
            String::new()
        } else {
            tracing::warn!(databases = ?dropped, "dropped scratch databases a crashed drill left behind");
            format!(
                "; dropped stale scratch databases left by an earlier drill: {}",
                dropped.join(", ")
            )
        }
    }

    async fn secrets_step(&self) -> (Option<(String, DateTime<Utc>)>, Result<String, StepFailure>) {
        let keys = match secrets_backup::list_secrets_backups(self.backups.as_ref()).await {
            Ok(keys) => keys,
            Err(error) => return (None, Err(error.into())),
        };
        let weekly: Vec<&String> = keys
            .iter()
            .filter(|key| secrets_backup::weekly_date(key).is_some())
            .collect();
        let Some(newest) = weekly.last() else {
            return (
                None,
                Err(StepFailure::data(anyhow!(
                    "no weekly secrets backup in {} (secrets/weekly/ is empty)",
                    self.backups.location()
                ))),
            );
        };
        let opened = match self.open(newest).await {
            Ok(opened) => opened,
            Err(failure) => return (None, Err(failure)),
        };
        let backup = Some(((*newest).clone(), opened.1));
        let secrets = opened.0;
        if secrets.is_empty() {
            return (
                backup,
                Err(StepFailure::data(anyhow!("{newest} decrypts but holds no secrets"))),
            );
        }
        let Some(previous) = weekly.len().checked_sub(2).map(|index| weekly[index]) else {
            return (
                backup,
                Ok(format!(
                    "{newest}: {} secrets decrypted; no earlier weekly backup to compare with",
                    secrets.len()
                )),
            );
        };
        let result = match self.open(previous).await {
            Err(failure) => Err(StepFailure {
                kind: failure.kind,
                error: failure.error.context(format!("the previous backup {previous}")),
            }),
            Ok((earlier, _)) => {
                let missing: Vec<String> = earlier
                    .iter()
                    .filter(|name| !secrets.contains(*name))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    Ok(format!(
                        "{newest}: {} secrets decrypted ({} in the previous backup {previous})",
                        secrets.len(),
                        earlier.len()
                    ))
                } else {
                    Err(StepFailure::data(anyhow!(
                        "{newest} has {} secrets but the previous backup {previous} had {}; missing now: {}",
                        secrets.len(),
                        earlier.len(),
                        missing.join(", ")
                    )))
                }
            }
        };
        (backup, result)
    }

    /// Decrypts a secrets backup in memory; returns its secrets' names (a
    /// Secret Manager backup: resource names) with its creation time.
    async fn open(&self, key: &str) -> Result<(std::collections::BTreeSet<String>, DateTime<Utc>), StepFailure> {
        let (contents, created) = self.open_contents(key).await?;
        let names = match &contents {
            crate::crypto::Contents::Map(secrets) => secrets.names(),
            crate::crypto::Contents::SecretManager(bytes) => {
                crate::secret_manager::SecretManagerBackup::from_json(bytes)
                    .map_err(|error| StepFailure::data(anyhow!("{key}: {error}")))?
                    .names()
            }
        };
        Ok((names.into_iter().collect(), created))
    }

    /// Decrypts a secrets backup in memory; returns it with its creation time.
    async fn open_contents(&self, key: &str) -> Result<(crate::crypto::Contents, DateTime<Utc>), StepFailure> {
        let bytes = self.backups.get_bytes(key, MAXIMUM_ENVELOPE_BYTES).await?;
        #[derive(Deserialize)]
        struct Created {
            created_at: DateTime<Utc>,
        }
        let created = serde_json::from_slice::<Created>(&bytes)
            .map_err(|error| StepFailure::data(anyhow!("{key} is not a secrets envelope: {error}")))?
            .created_at;
        let secrets = self
            .codec
            .open_contents_in_background(&self.secrets_key, &bytes)
            .await
            .map_err(|error| StepFailure::data(anyhow!("{key}: {error}")))?;
        Ok((secrets, created))
    }

    /// Step 4: what Secret Manager holds now against the newest weekly backup.
    async fn secret_manager_step(
        &self,
        source: &crate::jobs::secrets_source::SecretManagerSource,
    ) -> (Option<(String, DateTime<Utc>)>, Result<String, StepFailure>) {
        let keys = match secrets_backup::list_secrets_backups(self.backups.as_ref()).await {
            Ok(keys) => keys,
            Err(error) => return (None, Err(error.into())),
        };
        let Some(newest) = keys.iter().rev().find(|key| secrets_backup::weekly_date(key).is_some()) else {
            return (
                None,
                Err(StepFailure::data(anyhow!(
                    "no weekly secrets backup in {} to check Secret Manager against",
                    self.backups.location()
                ))),
            );
        };
        let (contents, created) = match self.open_contents(newest).await {
            Ok(opened) => opened,
            Err(failure) => return (None, Err(failure)),
        };
        let backup_reference = Some((newest.clone(), created));
        let crate::crypto::Contents::SecretManager(bytes) = contents else {
            return (
                backup_reference,
                Err(StepFailure::data(anyhow!(
                    "{newest} holds environment or file secrets, but SECRETS_SOURCE is secret-manager: the \
                     project's secrets have no backup yet"
                ))),
            );
        };
        let backup = match crate::secret_manager::SecretManagerBackup::from_json(&bytes) {
            Ok(backup) => backup,
            Err(error) => return (backup_reference, Err(StepFailure::data(anyhow!("{newest}: {error}")))),
        };
        let taken_at = DateTime::parse_from_rfc3339(&backup.taken_at)
            .map(|time| time.with_timezone(&Utc))
            .unwrap_or(created);
        let current = match current_secrets(source).await {
            Ok(current) => current,
            Err(error) => {
                let kind = if error.is_retryable() {
                    FailureKind::Infrastructure
                } else {
                    FailureKind::Data
                };
                return (
                    backup_reference,
                    Err(StepFailure {
                        kind,
                        error: anyhow::Error::new(error).context("listing the secrets Secret Manager holds now"),
                    }),
                );
            }
        };
        let backed_up: std::collections::BTreeSet<String> = backup.names().into_iter().collect();
        let coverage = compare_coverage(&backed_up, &current, taken_at);
        let summary = format!(
            "{newest}: all {} secrets Secret Manager held before the backup ({}) are in it{}{}",
            coverage.covered,
            backup.taken_at,
            if coverage.created_since.is_empty() {
                String::new()
            } else {
                format!("; created since: {}", coverage.created_since.join(", "))
            },
            if coverage.deleted_since.is_empty() {
                String::new()
            } else {
                format!("; deleted since: {}", coverage.deleted_since.join(", "))
            },
        );
        if coverage.missing.is_empty() {
            (backup_reference, Ok(summary))
        } else {
            (
                backup_reference,
                Err(StepFailure::data(anyhow!(
                    "{newest} lacks {} secrets that existed before it was taken ({}): {}",
                    coverage.missing.len(),
                    backup.taken_at,
                    coverage.missing.join(", ")
                ))),
            )
        }
    }

    async fn documents_step(
        &self,
        params: &DrillParams,
    ) -> (Option<(String, DateTime<Utc>)>, Result<String, StepFailure>) {
        let documents = match &self.documents {
            Documents::Open(store) => Arc::clone(store),
            Documents::At {
                location,
                storage_emulator_host,
            } => match crate::storage::open(location, storage_emulator_host.as_deref()).await {
                Ok(store) => store,
                Err(error) => {
                    return (
                        None,
                        Err(StepFailure {
                            kind: FailureKind::Infrastructure,
                            error: error.context(format!("opening the documents store {location}")),
                        }),
                    )
                }
            },
        };
        let date = match documents_layout::newest_complete(self.backups.as_ref()).await {
            Ok(Some(date)) => date,
            Ok(None) => {
                return (
                    None,
                    Err(StepFailure::data(anyhow!(
                        "no complete documents inventory in {} (documents/inventory/ has no summary)",
                        self.backups.location()
                    ))),
                )
            }
            Err(error) => return (None, Err(error.into())),
        };
        let summary = match documents_layout::read_summary(self.backups.as_ref(), date).await {
            Ok(summary) => summary,
            Err(error) => return (None, Err(documents_failure(error.into()))),
        };
        let backup = Some((documents_layout::inventory_key(date), summary.finished_at));
        let checked = check::run(
            self.backups.as_ref(),
            documents.as_ref(),
            Some(date),
            "",
            params.documents_sample,
        )
        .await;
        let result = match checked {
            Err(error) => Err(documents_failure(error)),
            Ok(report) if report.has_findings() => {
                let shown: Vec<String> = report
                    .findings
                    .iter()
                    .take(20)
                    .map(|finding| format!("{} ({})", finding.name, format!("{:?}", finding.problem).to_lowercase()))
                    .collect();
                Err(StepFailure::data(anyhow!(
                    "{} objects missing and {} changed in {} since the inventory of {date}: {}{}",
                    report.missing,
                    report.changed,
                    documents.location(),
                    shown.join(", "),
                    if report.findings.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                )))
            }
            Ok(report) if report.unchanged == 0 && (summary.object_count > 0 || report.added > 0) => {
                Err(StepFailure::data(anyhow!(
                    "the inventory of {date} lists {} objects and the bucket has {} others, but none could be checked",
                    summary.object_count,
                    report.added
                )))
            }
            Ok(report) => Ok(format!(
                "inventory of {date}: {} objects checked{} in {}, none missing or changed ({} added since)",
                report.unchanged,
                match params.documents_sample {
                    Some(sample) if sample > 0 => format!(" (sample of about {sample} of {})", summary.object_count),
                    _ => String::new(),
                },
                documents.location(),
                report.added
            )),
        };
        (backup, result)
    }
}

/// `DROP DATABASE ... WITH (FORCE)` through the server's `postgres` database.
async fn drop_database(server: &tokio_postgres::Config, name: &str) -> anyhow::Result<()> {
    drop_database_with(server, name, " WITH (FORCE)").await
}

/// Fails with PostgreSQL's "is being accessed by other users" when anyone is
/// connected to it.
async fn drop_database_unless_in_use(server: &tokio_postgres::Config, name: &str) -> anyhow::Result<()> {
    drop_database_with(server, name, "").await
}

async fn drop_database_with(server: &tokio_postgres::Config, name: &str, options: &str) -> anyhow::Result<()> {
    let mut admin = server.clone();
    admin.dbname("postgres");
    let client = pg::connect(&admin).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {}{options}",
            pg::quote_identifier(name)
        ))
        .await
        .map_err(pg::classify)?;
    Ok(())
}

/// Drops the scratch database when the drill's future is dropped before it
/// could (cancellation, panic). Best effort on a spawned task; the next
/// drill's sweep catches what this misses (a killed process).
struct ScratchGuard {
    server: tokio_postgres::Config,
    name: String,
    armed: bool,
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (server, name) = (self.server.clone(), std::mem::take(&mut self.name));
        tracing::warn!(database = %name, "drill interrupted: dropping its scratch database");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = drop_database(&server, &name).await {
                    tracing::error!(database = %name, error = %format!("{error:#}"), "could not drop the scratch database; drop it by hand");
                }
            });
        }
    }
}

fn documents_failure(error: crate::documents::DocumentsError) -> StepFailure {
    StepFailure {
        kind: if error.class() == ErrorClass::Transient {
            FailureKind::Infrastructure
        } else {
            FailureKind::Data
        },
        error: error.into(),
    }
}

/// The names and creation times of every secret the source selects now.
async fn current_secrets(
    source: &crate::jobs::secrets_source::SecretManagerSource,
) -> Result<Vec<(String, Option<DateTime<Utc>>)>, crate::secret_manager::SecretManagerError> {
    let client = crate::secret_manager::SecretManagerClient::connect(source.client.clone()).await?;
    let mut current = Vec::new();
    for parent in source.selection.parents() {
        let mut page_token = String::new();
        loop {
            let (secrets, next) = client
                .list_secrets_page(&parent, source.selection.filter.as_deref(), &page_token)
                .await?;
            for secret in secrets {
                let created = serde_json::to_value(secret.create_time)
                    .ok()
                    .and_then(|value| value.as_str().and_then(|text| DateTime::parse_from_rfc3339(text).ok()))
                    .map(|time| time.with_timezone(&Utc));
                current.push((
                    crate::secret_manager::document::by_project_id(&secret.name, &source.selection.project),
                    created,
                ));
            }
            if next.is_empty() {
                break;
            }
            page_token = next;
        }
    }
    Ok(current)
}

/// How the secrets held now compare with a backup taken at `taken_at`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub covered: usize,
    /// Not in the backup, created after it was taken: reported.
    pub created_since: Vec<String>,
    /// Not in the backup though they existed before it (or their creation time is unknown): a failure.
    pub missing: Vec<String>,
    /// In the backup, gone now: reported.
    pub deleted_since: Vec<String>,
}

/// Decides [`Coverage`]; pure, so the cases are tested alone.
pub fn compare_coverage(
    backed_up: &std::collections::BTreeSet<String>,
    current: &[(String, Option<DateTime<Utc>>)],
    taken_at: DateTime<Utc>,
) -> Coverage {
    let mut coverage = Coverage::default();
    for (name, created) in current {
        if backed_up.contains(name) {
            coverage.covered += 1;
        } else if created.is_some_and(|created| created > taken_at) {
            coverage.created_since.push(name.clone());
        } else {
            coverage.missing.push(name.clone());
        }
    }
    let now: std::collections::BTreeSet<&String> = current.iter().map(|(name, _)| name).collect();
    coverage.deleted_since = backed_up.iter().filter(|name| !now.contains(name)).cloned().collect();
    coverage.created_since.sort();
    coverage.missing.sort();
    coverage
}

#[async_trait]
impl Job for DrDrill {
    const NAME: &'static str = "dr-drill";
    type Params = DrillParams;

    async fn run(&self, context: &RunContext, params: DrillParams) -> Result<Outcome, JobError> {
        let report = self.rehearse(&context.idempotency_key, &params).await?;
        let details = serde_json::to_value(&report).map_err(JobError::permanent)?;
        if report.passed {
            return Ok(Outcome::new(format!("{} ({})", report.summary(), report.report)).with_details(details));
        }
        let failures: Vec<String> = report
            .steps
            .iter()
            .filter_map(|step| step.error.as_ref().map(|error| format!("{}: {error}", step.name)))
            .collect();
        let error = anyhow!(
            "{}; report {}; {}",
            report.summary(),
            report.report,
            failures.join("; ")
        );
        // Bad data needs a person (dead letter); only a drill that failed
        // purely because something was down is worth retrying.
        let infrastructure_only = report
            .steps
            .iter()
            .filter(|step| !step.passed)
            .all(|step| step.failure == Some(FailureKind::Infrastructure));
        Err(if infrastructure_only {
            JobError::Transient(error)
        } else {
            JobError::Permanent(error)
        })
    }
}

#[cfg(test)]
mod secret_manager_coverage_tests {
    use super::*;

    #[test]
    fn created_since_is_reported_missing_before_fails() {
        let taken_at = DateTime::parse_from_rfc3339("2026-11-29T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |text: &str| Some(DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc));
        let backed_up = ["projects/p/secrets/a", "projects/p/secrets/gone"]
            .map(str::to_owned)
            .into_iter()
            .collect();
        let current = vec![
            ("projects/p/secrets/a".to_owned(), at("2026-01-01T00:00:00Z")),
            ("projects/p/secrets/new".to_owned(), at("2026-11-30T00:00:00Z")),
            ("projects/p/secrets/old".to_owned(), at("2026-11-01T00:00:00Z")),
            ("projects/p/secrets/unknown".to_owned(), None),
        ];
        assert_eq!(
            compare_coverage(&backed_up, &current, taken_at),
            Coverage {
                covered: 1,
                created_since: vec!["projects/p/secrets/new".into()],
                missing: vec!["projects/p/secrets/old".into(), "projects/p/secrets/unknown".into()],
                deleted_since: vec!["projects/p/secrets/gone".into()],
            }
        );
    }
}
