//! `dr-drill` in `full` mode (`{"mode": "full"}`, `keshless-ops drill --mode full`):
//! the whole recovery rehearsed. It runs what `recover --apply` runs
//! ([`crate::recovery`]) into scratch targets, then tears them down:
//!
//! - the secrets into the scratch Secret Manager project
//!   (`DRILL_SECRET_MANAGER_PROJECT`), each id prefixed `keshless-drill-<date>-<random>-`;
//! - each database onto the drill's scratch server (`DRILL_DATABASE_URL`) as
//!   `keshless_drill_<date>_<random>_<database>`, creating the roles it needs
//!   there when they are missing;
//! - the documents from the mirror into `keshless-drill-<date>-<random>/` of
//!   the scratch store (`DRILL_DOCUMENTS_STORE`);
//! - then recover's own drill over what was recovered.
//!
//! Before anything is created it refuses scratch targets that are production
//! (the project of `GOOGLE_CLOUD_PROJECT` or of the secrets backups, the
//! documents bucket, the vault, no `DRILL_DATABASE_URL` or one on
//! `DATABASE_URL`'s server, a planned secret outside the scratch project),
//! marks each role it creates (`COMMENT ON ROLE … IS 'keshless-drill:<run>'`)
//! and drops only roles so marked, and writes a journal
//! `keshless-drill-journal/<run>.json` into the scratch store naming
//! everything the run will create. The teardown always runs, whatever failed,
//! removes what the journal names and deletes the journal last; what it could
//! not remove is reported with the command that removes it by hand. A drill
//! that crashed leaves its journal behind: the next full drill (after a day,
//! so a drill still running is never touched) tears down what it names, once
//! it has checked the journal names only a run's own things. The scratch
//! databases, the stale runs' secrets and marked roles are also swept by
//! name, so nothing relies on the journal.

use std::sync::Arc;

use anyhow::anyhow;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{step, DrDrill, FailureKind, Report, Step, StepFailure};
use crate::config::DatabaseUrl;
use crate::postgres::{self as pg};
use crate::recovery::{self, Recovery, StepOutcome, Targets};
use crate::runtime::job::JobError;
use crate::secret_manager::{ClientSettings, SecretManagerClient};
use crate::storage::{BlobStore, BlobStoreExt, ListOptions, StoreLocation, WriteMode};

/// Where the journals of full drills go in the scratch store.
pub const JOURNAL_PREFIX: &str = "keshless-drill-journal/";
const JOURNAL_FORMAT: &str = "keshless-drill-scratch";
/// The largest journal read back.
const MAXIMUM_JOURNAL_BYTES: u64 = 4 << 20;

/// Where a full drill recovers into (`DRILL_*`); see [`crate::config::FullDrillConfig`].
#[derive(Debug, Clone, Default)]
pub struct FullTargets {
    /// `DRILL_SECRET_MANAGER_PROJECT`.
    pub project: Option<String>,
    /// `DRILL_DOCUMENTS_STORE`.
    pub documents: Option<StoreLocation>,
    /// `GOOGLE_CLOUD_PROJECT`: refused as the scratch project.
    pub production_project: Option<String>,
    /// How the scratch project is reached (`SECRET_MANAGER_EMULATOR_HOST`, quota).
    pub secret_manager: ClientSettings,
    /// `STORAGE_EMULATOR_HOST`, for the scratch store.
    pub storage_emulator_host: Option<String>,
    pub pg_restore: String,
    /// Whether `DRILL_DATABASE_URL` is set (full mode refuses the fallback to `DATABASE_URL`).
    pub drill_database_url_set: bool,
    /// The server of `DATABASE_URL`: refused as the scratch server.
    pub production_server: Option<String>,
}

impl FullTargets {
    pub fn from_config(config: &crate::config::DrillConfig) -> FullTargets {
        FullTargets {
            project: config.full.project.clone(),
            documents: config.full.documents.clone(),
            production_project: config.full.production_project.clone(),
            secret_manager: ClientSettings {
                emulator_host: config.full.emulator_host.clone(),
                requests_per_minute: config.full.requests_per_minute,
                ..ClientSettings::default()
            },
            storage_emulator_host: config.storage_emulator_host.clone(),
            pg_restore: crate::postgres::process::pg_restore_program(),
            drill_database_url_set: config.full.drill_database_url_set,
            production_server: config.full.production_server.clone(),
        }
    }
}

/// What one full drill creates: its journal, written before anything is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scratch {
    pub format: String,
    /// `keshless-drill-<YYYYMMDD>-<random>`: the documents prefix and the secrets' id prefix.
    pub run: String,
    pub started_at: DateTime<Utc>,
    /// The scratch server (no password), where `database_prefix` databases live.
    pub server: String,
    /// `keshless_drill_<YYYYMMDD>_<random>_`: every database it creates starts so.
    pub database_prefix: String,
    /// Roles it creates on the scratch server (they did not exist there before).
    pub roles: Vec<String>,
    /// The scratch Secret Manager project.
    pub project: String,
    /// Full names of the secrets it creates there.
    pub secrets: Vec<String>,
    /// The scratch store (its root; the documents are under `<run>/`).
    pub documents: String,
}

impl Scratch {
    fn journal_key(&self) -> String {
        journal_key(&self.run)
    }

    /// What the run's roles carry (`COMMENT ON ROLE`).
    fn role_marker(&self) -> String {
        role_marker(&self.run)
    }

    fn documents_prefix(&self) -> String {
        format!("{}/", self.run)
    }
}

/// The journal of `run` in the scratch store.
fn journal_key(run: &str) -> String {
    format!("{JOURNAL_PREFIX}{run}.json")
}

/// The comment a run puts on each role it creates; its teardown drops a
/// role only when the role carries exactly this.
fn role_marker(run: &str) -> String {
    format!("keshless-drill:{run}")
}

/// The run name `keshless-drill-<YYYYMMDD>-<random>` ([`run_name`]) and its date.
fn run_date(run: &str) -> Option<&str> {
    let rest = run.strip_prefix("keshless-drill-")?;
    let (date, random) = rest.split_once('-')?;
    let valid = date.len() == 8
        && date.bytes().all(|byte| byte.is_ascii_digit())
        && random.len() == 8
        && random.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    valid.then_some(date)
}

/// Whether `run` is a run's name dated before `cutoff` (`YYYYMMDD`).
fn is_stale_run(run: &str, cutoff: &str) -> bool {
    run_date(run).is_some_and(|date| date < cutoff)
}

/// The length of a run's name.
const RUN_LENGTH: usize = "keshless-drill-YYYYMMDD-xxxxxxxx".len();

/// A run's name: `keshless-drill-<YYYYMMDD>-<8 hex digits>`.
fn run_name(date: &str, random: u32) -> String {
    format!("keshless-drill-{date}-{random:08x}")
}

/// The prefix of every database `run` creates: `keshless_drill_<YYYYMMDD>_<random>_`.
fn database_prefix(run: &str) -> String {
    format!("{}_", run.replace('-', "_"))
}

/// The secret id of a full name `projects/P/[locations/L/]secrets/ID` in
/// `project`; `None` for any other name.
fn secret_id_in<'a>(name: &'a str, project: &str) -> Option<&'a str> {
    let parts: Vec<&str> = name.split('/').collect();
    let id = match parts.as_slice() {
        ["projects", p, "secrets", id] if *p == project => *id,
        ["projects", p, "locations", location, "secrets", id] if *p == project && !location.is_empty() => *id,
        _ => return None,
    };
    (!id.is_empty()).then_some(id)
}

/// Why `scratch` cannot be what a full drill wrote, one line each; empty:
/// it names only a run's own things (its databases by its prefix, its
/// secrets by its id prefix in its project). [`tear_down`] removes nothing
/// else; the sweep also checks the journal against the configuration.
fn scratch_problems(scratch: &Scratch) -> Vec<String> {
    let mut problems = Vec::new();
    if scratch.format != JOURNAL_FORMAT {
        problems.push(format!("format {:?} is not {JOURNAL_FORMAT:?}", scratch.format));
    }
    if run_date(&scratch.run).is_none() {
        problems.push(format!(
            "run {:?} is not keshless-drill-<YYYYMMDD>-<8 lowercase hex digits>",
            scratch.run
        ));
        return problems;
    }
    let prefix = database_prefix(&scratch.run);
    if scratch.database_prefix != prefix {
        problems.push(format!(
            "database_prefix {:?} is not the run's {prefix:?}",
            scratch.database_prefix
        ));
    }
    let secret_prefix = format!("{}-", scratch.run);
    for secret in &scratch.secrets {
        if !secret_id_in(secret, &scratch.project).is_some_and(|id| id.starts_with(&secret_prefix)) {
            problems.push(format!(
                "secret {secret:?} is not projects/{}/[locations/L/]secrets/{secret_prefix}…",
                scratch.project
            ));
        }
    }
    problems
}

/// Why the sweep refuses the journal read from `key`, one line each: it
/// must be a run's own ([`scratch_problems`]), stored under its run's name,
/// for this drill's scratch project and server (from the configuration,
/// never from the journal).
fn journal_problems(key: &str, scratch: &Scratch, project: &str, server: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if key != journal_key(&scratch.run) {
        problems.push(format!("it names run {:?}, not the run of its key", scratch.run));
    }
    if scratch.project != project {
        problems.push(format!(
            "project {:?} is not the scratch project {project} (DRILL_SECRET_MANAGER_PROJECT)",
            scratch.project
        ));
    }
    if scratch.server != server {
        problems.push(format!(
            "server {:?} is not this drill's scratch server {server} (DRILL_DATABASE_URL)",
            scratch.server
        ));
    }
    problems.extend(scratch_problems(scratch));
    problems
}

/// The scratch location `name` under `root`.
fn child_location(root: &StoreLocation, name: &str) -> StoreLocation {
    match root {
        StoreLocation::Gcs { bucket, prefix } => StoreLocation::Gcs {
            bucket: bucket.clone(),
            prefix: if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            },
        },
        StoreLocation::File { root } => StoreLocation::File { root: root.join(name) },
    }
}

/// Whether writing to `scratch` could touch `other`: the same bucket (any
/// prefix), or one directory inside the other.
fn overlaps(scratch: &StoreLocation, other: &StoreLocation) -> bool {
    match (scratch, other) {
        (StoreLocation::Gcs { bucket: one, .. }, StoreLocation::Gcs { bucket: two, .. }) => one == two,
        (StoreLocation::File { root: one }, StoreLocation::File { root: two }) => {
            one.starts_with(two) || two.starts_with(one)
        }
        _ => false,
    }
}

/// The checked scratch targets of one run.
struct Checked {
    project: String,
    documents: StoreLocation,
}

/// Why a full drill refuses its configuration, one line each; empty: it may run.
pub fn refusals(
    targets: &FullTargets,
    source_project: Option<&str>,
    documents: &StoreLocation,
    vault: &StoreLocation,
    scratch_server: &DatabaseUrl,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !targets.drill_database_url_set {
        problems.push(
            "DRILL_DATABASE_URL is not set: the full drill creates databases and roles (with LOGIN and their \
             memberships) on its scratch server, so it never falls back to DATABASE_URL; set DRILL_DATABASE_URL \
             to a PostgreSQL server of its own (postgres://USER[:PASSWORD]@HOST[:PORT]/postgres)"
                .to_owned(),
        );
    } else if targets.production_server.as_deref() == Some(scratch_server.server().as_str()) {
        problems.push(format!(
            "DRILL_DATABASE_URL={scratch_server} is on the server of DATABASE_URL ({}): the full drill creates and \
             drops databases and roles there, so it must be a PostgreSQL server of its own",
            scratch_server.server()
        ));
    }
    match &targets.project {
        None => problems.push(
            "DRILL_SECRET_MANAGER_PROJECT is not set: the scratch Secret Manager project the full drill recovers the \
             secrets into (a project of its own, never production)"
                .to_owned(),
        ),
        Some(project) => {
            for (production, variable) in [
                (targets.production_project.as_deref(), "GOOGLE_CLOUD_PROJECT"),
                (source_project, "the project SECRETS_SOURCE=secret-manager backs up"),
            ] {
                if production == Some(project.as_str()) {
                    problems.push(format!(
                        "DRILL_SECRET_MANAGER_PROJECT={project} is the production project ({variable}): the full \
                         drill creates and deletes secrets there, so it must be a scratch project of its own"
                    ));
                    break;
                }
            }
        }
    }
    match &targets.documents {
        None => problems.push(
            "DRILL_DOCUMENTS_STORE is not set: the scratch bucket the full drill recovers the documents into \
             (gs://BUCKET[/PREFIX] or file:///PATH, never the documents bucket or the backups bucket)"
                .to_owned(),
        ),
        Some(scratch) => {
            if overlaps(scratch, documents) {
                problems.push(format!(
                    "DRILL_DOCUMENTS_STORE={scratch} is in the documents bucket {documents} (DOCUMENTS_STORE or \
                     GCS_DOCUMENTS_BUCKET): the full drill writes and deletes objects there, so it must be a \
                     scratch bucket of its own"
                ));
            }
            if overlaps(scratch, vault) {
                problems.push(format!(
                    "DRILL_DOCUMENTS_STORE={scratch} is in the backups bucket {vault} (BACKUP_STORE or \
                     GCS_BACKUPS_BUCKET): the full drill writes and deletes objects there, so it must be a scratch \
                     bucket of its own"
                ));
            }
        }
    }
    problems
}

impl DrDrill {
    fn documents_location(&self) -> StoreLocation {
        match &self.documents {
            super::Documents::Open(store) => store.location().clone(),
            super::Documents::At { location, .. } => location.clone(),
        }
    }

    /// The scratch targets, or a permanent error naming every refusal.
    fn checked_full_targets(&self) -> Result<Checked, JobError> {
        let source_project = self
            .secret_manager
            .as_ref()
            .map(|source| source.selection.project.as_str());
        let problems = refusals(
            &self.full,
            source_project,
            &self.documents_location(),
            self.backups.location(),
            &self.scratch_server,
        );
        match (&self.full.project, &self.full.documents, problems.is_empty()) {
            (Some(project), Some(documents), true) => Ok(Checked {
                project: project.clone(),
                documents: documents.clone(),
            }),
            _ => Err(JobError::Permanent(anyhow!(
                "the full drill refused to start; nothing was created and no report written: {}",
                problems.join("; ")
            ))),
        }
    }

    /// The full drill; see the module documentation.
    pub(super) async fn rehearse_full(&self, idempotency_key: &str) -> Result<Report, JobError> {
        let checked = self.checked_full_targets()?;
        self.check_scratch_server().await?;
        let not_started = |what: String| {
            move |error: anyhow::Error| {
                JobError::Transient(error.context(format!(
                    "the full drill did not start: {what}; nothing was created and no report written"
                )))
            }
        };
        let root = crate::storage::open(&checked.documents, self.full.storage_emulator_host.as_deref())
            .await
            .map_err(not_started(format!(
                "cannot open the scratch store {}",
                checked.documents
            )))?;
        let client = SecretManagerClient::connect(self.full.secret_manager.clone())
            .await
            .map_err(|error| not_started("cannot build the Secret Manager client".into())(error.into()))?;

        let started_at = self.clock.now();
        let mut steps = vec![
            step(
                "scratch-sweep",
                started_at,
                self.sweep_stale_full_drills(started_at, root.as_ref(), &client),
            )
            .await,
        ];

        let run = run_name(
            &started_at.format("%Y%m%d").to_string(),
            rand::thread_rng().gen::<u32>(),
        );
        let documents = crate::storage::open(
            &child_location(&checked.documents, &run),
            self.full.storage_emulator_host.as_deref(),
        )
        .await
        .map_err(not_started(format!(
            "cannot open the scratch store {}",
            checked.documents
        )))?;
        let recovery = Recovery {
            vault: Arc::clone(&self.backups),
            secrets_key: self.secrets_key.clone(),
            dumps: self.dumps.clone(),
            secret_manager: client,
            databases: self.databases.clone(),
            targets: Targets {
                project: checked.project.clone(),
                server: self.scratch_server.clone(),
                documents,
                database_prefix: database_prefix(&run),
                secret_id_prefix: format!("{run}-"),
                role_comment: Some(role_marker(&run)),
                without_notifications: true,
            },
            pg_restore: self.full.pg_restore.clone(),
            clock: self.clock.clone(),
        };
        let plan = recovery.plan().await;
        let scratch = Scratch {
            format: JOURNAL_FORMAT.into(),
            run,
            started_at,
            server: self.scratch_server.to_string(),
            database_prefix: recovery.targets.database_prefix.clone(),
            roles: plan.roles_to_create(),
            project: checked.project.clone(),
            secrets: plan.secret_targets(&recovery.targets),
            documents: checked.documents.to_string(),
        };
        let problems = planned_refusals(&plan, &scratch);
        if !problems.is_empty() {
            return Err(JobError::Permanent(anyhow!(
                "the full drill refused to start; nothing was created and no report written: {}",
                problems.join("; ")
            )));
        }
        let journal = serde_json::to_vec_pretty(&scratch).map_err(JobError::permanent)?;
        root.put_bytes(&scratch.journal_key(), Bytes::from(journal), WriteMode::CreateOnly)
            .await
            .map_err(|error| {
                not_started(format!(
                    "cannot write its journal {} into the scratch store {}",
                    scratch.journal_key(),
                    checked.documents
                ))(error.into())
            })?;
        // From here on everything created is named by the journal; if this
        // future is dropped (a lost lease, a shutdown) the guard tears down.
        let mut guard = TeardownGuard {
            server: self.scratch_server.clone(),
            secret_manager: self.full.secret_manager.clone(),
            root: Arc::clone(&root),
            scratch: Some(scratch.clone()),
        };

        let recovered = if plan.blocked().is_empty() {
            match recovery
                .execute(&plan, |planned| {
                    tracing::info!(drill.step = %planned.name, target = %planned.target, "full drill: recovering");
                })
                .await
            {
                Ok(report) => Ok(report),
                Err(error) => Err(format!("{error:#}")),
            }
        } else {
            Err(format!(
                "nothing was recovered: {}",
                plan.blocked()
                    .iter()
                    .flat_map(|step| step
                        .problems
                        .iter()
                        .map(move |problem| format!("{}: {problem}", step.name)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        };
        let recovery_report = match recovered {
            Ok(report) => {
                steps.extend(report.steps.iter().map(recovery_step));
                Some(report)
            }
            Err(problem) => {
                steps.push(Step {
                    name: "recover".into(),
                    passed: false,
                    duration_ms: 0,
                    backup: None,
                    backup_time: None,
                    backup_age_seconds: None,
                    detail: String::new(),
                    error: Some(problem),
                    failure: Some(FailureKind::Data),
                });
                None
            }
        };

        let teardown = step("teardown", started_at, async {
            let result = tear_down(&self.scratch_server, &recovery.secret_manager, root.as_ref(), &scratch).await;
            (None, result.into_step_result())
        })
        .await;
        guard.scratch = None;
        steps.push(teardown);

        self.finish(
            idempotency_key,
            started_at,
            steps,
            super::DrillMode::Full,
            recovery_report,
        )
        .await
    }

    /// Tears down what crashed full drills left (journals dated before
    /// yesterday), and drops stale scratch databases by name.
    async fn sweep_stale_full_drills(
        &self,
        started: DateTime<Utc>,
        root: &dyn BlobStore,
        client: &SecretManagerClient,
    ) -> (Option<(String, DateTime<Utc>)>, Result<String, StepFailure>) {
        let databases = self.sweep_stale_scratch_databases(started).await;
        let cutoff = (started - chrono::Duration::days(1)).format("%Y%m%d").to_string();
        let journals: Vec<String> = match root
            .list(JOURNAL_PREFIX, ListOptions::default())
            .map_ok(|object| object.key)
            .try_collect()
            .await
        {
            Ok(keys) => keys,
            Err(error) => return (None, Err(StepFailure::from(error))),
        };
        let mut swept = Vec::new();
        let mut left = Vec::new();
        for key in journals {
            let date = key
                .strip_prefix(JOURNAL_PREFIX)
                .and_then(|name| name.strip_prefix("keshless-drill-"))
                .and_then(|name| name.get(..8))
                .unwrap_or_default();
            if date.len() != 8 || date >= cutoff.as_str() {
                continue;
            }
            let scratch = match root
                .get_bytes(&key, MAXIMUM_JOURNAL_BYTES)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|bytes| serde_json::from_slice::<Scratch>(&bytes).map_err(anyhow::Error::from))
            {
                Ok(scratch) => scratch,
                Err(error) => {
                    left.push(format!(
                        "{key} cannot be read ({error:#}); look at it and delete it by hand"
                    ));
                    continue;
                }
            };
            let project = self.full.project.as_deref().unwrap_or_default();
            let problems = journal_problems(&key, &scratch, project, &self.scratch_server.to_string());
            if !problems.is_empty() {
                tracing::warn!(journal = %key, problems = ?problems, "refused a journal: it names what no full drill of this configuration creates; left in place");
                left.push(format!(
                    "{key} refused and left in place, nothing it names was touched ({}): look at what it names, \
                     remove what is a drill's by hand, then delete {key}",
                    problems.join("; ")
                ));
                continue;
            }
            let result = tear_down(&self.scratch_server, client, root, &scratch).await;
            if result.left.is_empty() {
                swept.push(if result.kept.is_empty() {
                    format!("{} ({})", scratch.run, result.removed.len())
                } else {
                    format!(
                        "{} ({}; kept, not the run's: {})",
                        scratch.run,
                        result.removed.len(),
                        result.kept.join(", ")
                    )
                });
            } else {
                left.extend(result.left.into_iter().map(|line| format!("{}: {line}", scratch.run)));
            }
        }
        // Nothing relies on the journal: the scratch bucket's lifecycle rule
        // may have deleted a crashed run's, so its secrets (by id) and its
        // roles (by marker) are swept by name too.
        let by_name = self.sweep_stale_by_name(&cutoff, client, &mut left).await;
        if !by_name.is_empty() {
            swept.push(format!("by name (no journal): {}", by_name.join(", ")));
        }
        let summary = format!(
            "{}{}",
            if swept.is_empty() {
                "no crashed full drill to clean up".to_owned()
            } else {
                format!(
                    "tore down what crashed full drills left (things removed): {}",
                    swept.join(", ")
                )
            },
            databases
        );
        if left.is_empty() {
            (None, Ok(summary))
        } else {
            (
                None,
                Err(StepFailure {
                    kind: FailureKind::Infrastructure,
                    error: anyhow!(
                        "{summary}; could not remove what earlier full drills left: {}",
                        left.join("; ")
                    ),
                }),
            )
        }
    }
}

/// Why a full drill refuses what its plan would create, before its journal:
/// the secrets backup taken of the scratch project itself, or a secret
/// planned outside the scratch project.
fn planned_refusals(plan: &recovery::Plan, scratch: &Scratch) -> Vec<String> {
    let mut problems = Vec::new();
    for project in plan.secrets_backup_projects() {
        if project == scratch.project {
            problems.push(format!(
                "DRILL_SECRET_MANAGER_PROJECT={project} is the project the secrets backup was taken of: the full \
                 drill creates and deletes secrets there, so it must be a scratch project of its own"
            ));
        }
    }
    let inside = format!("projects/{}/", scratch.project);
    let outside: Vec<&String> = scratch
        .secrets
        .iter()
        .filter(|secret| !secret.starts_with(&inside))
        .collect();
    if !outside.is_empty() {
        problems.push(format!(
            "{} planned secrets are outside the scratch project {} (DRILL_SECRET_MANAGER_PROJECT): {}",
            outside.len(),
            scratch.project,
            outside
                .iter()
                .take(5)
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    problems
}

impl DrDrill {
    /// Deletes the scratch project's secrets whose id starts with the name
    /// of a run dated before `cutoff` (`YYYYMMDD`), and drops the scratch
    /// server's roles marked by such a run; returns what it removed, adds to
    /// `left` what it could not.
    async fn sweep_stale_by_name(
        &self,
        cutoff: &str,
        client: &SecretManagerClient,
        left: &mut Vec<String>,
    ) -> Vec<String> {
        let mut removed = Vec::new();
        if let Some(project) = &self.full.project {
            let parent = format!("projects/{project}");
            let mut names = Vec::new();
            let mut token = String::new();
            loop {
                match client.list_secrets_page(&parent, None, &token).await {
                    Ok((secrets, next)) => {
                        // The service names them by project number: read them by id.
                        names.extend(
                            secrets
                                .into_iter()
                                .map(|secret| crate::secret_manager::document::by_project_id(&secret.name, project)),
                        );
                        if next.is_empty() {
                            break;
                        }
                        token = next;
                    }
                    Err(error) => {
                        left.push(format!(
                            "cannot list the secrets of {parent} to sweep stale ones: {error}"
                        ));
                        break;
                    }
                }
            }
            for name in names {
                let run = secret_id_in(&name, project)
                    .and_then(|id| id.get(..RUN_LENGTH).filter(|_| id[RUN_LENGTH..].starts_with('-')));
                if !run.is_some_and(|run| is_stale_run(run, cutoff)) {
                    continue;
                }
                match client.delete_secret(&name).await {
                    Ok(true) => removed.push(format!("secret {name}")),
                    Ok(false) => {}
                    Err(error) => left.push(format!("secret {name} ({error}): {}", delete_secret_command(&name))),
                }
            }
        }
        let mut admin = self.scratch_server.postgres_config().clone();
        admin.dbname("postgres");
        let server = &self.scratch_server;
        let database = match pg::connect(&admin).await {
            Ok(database) => database,
            Err(error) => {
                left.push(format!(
                    "cannot connect to {server} to sweep stale marked roles: {error:#}"
                ));
                return removed;
            }
        };
        let marked = match database
            .query(
                "SELECT rolname, substr(shobj_description(oid, 'pg_authid'), length('keshless-drill:') + 1) \
                 FROM pg_roles WHERE shobj_description(oid, 'pg_authid') ~ '^keshless-drill:keshless-drill-[0-9]{8}-[0-9a-f]{8}$' \
                 ORDER BY 1",
                &[],
            )
            .await
        {
            Ok(rows) => rows
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
                .collect::<Vec<_>>(),
            Err(error) => {
                left.push(format!("cannot list the marked roles on {server}: {error}"));
                return removed;
            }
        };
        for (role, run) in marked {
            if !is_stale_run(&run, cutoff) {
                continue;
            }
            match database
                .batch_execute(&format!("DROP ROLE IF EXISTS {}", pg::quote_identifier(&role)))
                .await
            {
                Ok(()) => removed.push(format!("role {role}")),
                Err(error) => left.push(format!(
                    "role {role} of {run} on {server} ({}): DROP ROLE {}",
                    error
                        .as_db_error()
                        .map_or_else(|| error.to_string(), |db| db.message().to_owned()),
                    pg::quote_identifier(&role)
                )),
            }
        }
        removed
    }
}

/// A recovery step as a drill step: its time, its backup and age.
fn recovery_step(result: &recovery::StepResult) -> Step {
    let passed = matches!(result.outcome, StepOutcome::Done | StepOutcome::AlreadyDone);
    Step {
        name: format!("recover:{}", result.name),
        passed,
        duration_ms: result.duration_ms,
        backup: result.backup.clone(),
        backup_time: result.backup_time,
        backup_age_seconds: result.backup_age_seconds,
        detail: if passed {
            format!("{} → {}: {}", result.outcome.as_str(), result.target, result.detail)
        } else {
            String::new()
        },
        error: (!passed).then(|| match result.outcome {
            StepOutcome::NotRun => "not run: an earlier step failed".to_owned(),
            _ => match &result.next {
                Some(next) => format!("{} (next: {next})", result.detail),
                None => result.detail.clone(),
            },
        }),
        failure: (!passed).then_some(FailureKind::Data),
    }
}

/// What a teardown removed and what it left, each left line with how to
/// remove it by hand.
#[derive(Debug, Default)]
pub struct TeardownResult {
    pub removed: Vec<String>,
    pub left: Vec<String>,
    /// What the journal names but is not the run's (a role without its marker): kept.
    pub kept: Vec<String>,
}

impl TeardownResult {
    fn into_step_result(self) -> Result<String, StepFailure> {
        let mut removed = if self.removed.is_empty() {
            "nothing was left to remove".to_owned()
        } else {
            format!("removed {}: {}", self.removed.len(), self.removed.join(", "))
        };
        if !self.kept.is_empty() {
            removed.push_str(&format!("; kept, not the run's: {}", self.kept.join(", ")));
        }
        if self.left.is_empty() {
            Ok(removed)
        } else {
            Err(StepFailure {
                kind: FailureKind::Infrastructure,
                error: anyhow!(
                    "{removed}; COULD NOT REMOVE {} (the next full drill tries again after a day): {}",
                    self.left.len(),
                    self.left.join("; ")
                ),
            })
        }
    }
}

/// Removes everything `scratch` names: its databases (by prefix) and
/// roles, its secrets, its documents; then its journal, when nothing is left.
pub async fn tear_down(
    server: &DatabaseUrl,
    client: &SecretManagerClient,
    root: &dyn BlobStore,
    scratch: &Scratch,
) -> TeardownResult {
    let mut result = TeardownResult::default();
    let problems = scratch_problems(scratch);
    if !problems.is_empty() {
        result.left.push(format!(
            "nothing torn down: the journal names what no full drill creates ({})",
            problems.join("; ")
        ));
        return result;
    }
    tear_down_databases(server, scratch, &mut result).await;
    for secret in &scratch.secrets {
        match client.delete_secret(secret).await {
            Ok(true) => result.removed.push(format!("secret {secret}")),
            Ok(false) => {}
            Err(error) => result
                .left
                .push(format!("secret {secret} ({error}): {}", delete_secret_command(secret))),
        }
    }
    let prefix = scratch.documents_prefix();
    let by_hand = format!(
        "gcloud storage rm --recursive --all-versions '{}/{prefix}**'",
        scratch.documents
    );
    match delete_every_generation(root, &prefix, |_| true).await {
        Ok(0) => {}
        Ok(documents) => result.removed.push(format!(
            "{documents} document generations under {}/{prefix}",
            scratch.documents
        )),
        Err(error) => result.left.push(format!(
            "documents under {}/{prefix} ({error}): {by_hand}",
            scratch.documents
        )),
    }
    if result.left.is_empty() {
        // Every generation: a versioned scratch bucket keeps deleted ones.
        let journal = scratch.journal_key();
        if let Err(error) = delete_every_generation(root, &journal, |key| key == journal).await {
            result.left.push(format!(
                "its journal {}/{journal} ({error}): delete it by hand",
                scratch.documents
            ));
        }
    }
    result
}

/// Deletes every generation of the objects under `prefix` that `wanted`
/// selects; returns how many it deleted. A versioned bucket (or an emulator)
/// may keep a deleted live generation as a noncurrent one: it lists again
/// until nothing is left, a few times at most.
async fn delete_every_generation(
    root: &dyn BlobStore,
    prefix: &str,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<usize> {
    let mut deleted = 0;
    for _ in 0..4 {
        let generations: Vec<(String, Option<i64>)> = root
            .list(
                prefix,
                ListOptions {
                    versions: true,
                    ..ListOptions::default()
                },
            )
            .try_filter(|object| std::future::ready(wanted(&object.key)))
            .map_ok(|object| (object.key, object.generation))
            .try_collect()
            .await?;
        if generations.is_empty() {
            return Ok(deleted);
        }
        for (key, generation) in generations {
            match root.delete(&key, generation).await {
                Ok(()) => deleted += 1,
                Err(crate::storage::StorageError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Err(anyhow!(
        "generations under {prefix} are still listed after four rounds of deleting them"
    ))
}

async fn tear_down_databases(server: &DatabaseUrl, scratch: &Scratch, result: &mut TeardownResult) {
    let mut admin = server.postgres_config().clone();
    admin.dbname("postgres");
    let client = match pg::connect(&admin).await {
        Ok(client) => client,
        Err(error) => {
            result.left.push(format!(
                "every database named {}* and the roles {} on {server} (cannot connect: {error:#}): DROP DATABASE \
                 each WITH (FORCE), then DROP ROLE each",
                scratch.database_prefix,
                scratch.roles.join(", ")
            ));
            return;
        }
    };
    let databases: Vec<String> = match client
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
            &[&scratch.database_prefix],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
        Err(error) => {
            result.left.push(format!(
                "every database named {}* on {server} (cannot list them: {error}): DROP DATABASE each WITH (FORCE)",
                scratch.database_prefix
            ));
            return;
        }
    };
    for database in databases {
        match super::drop_database(server.postgres_config(), &database).await {
            Ok(()) => result.removed.push(format!("database {database}")),
            Err(error) => result.left.push(format!(
                "database {database} on {server} ({error:#}): DROP DATABASE {} WITH (FORCE)",
                pg::quote_identifier(&database)
            )),
        }
    }
    let marker = scratch.role_marker();
    for role in &scratch.roles {
        // Only a role carrying the run's marker is the run's: one created
        // by someone else since the plan (or after a crash) is kept.
        let comment: Option<String> = match client
            .query(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
                &[role],
            )
            .await
        {
            Ok(rows) => match rows.first() {
                None => continue,
                Some(row) => row.get(0),
            },
            Err(error) => {
                result.left.push(format!(
                    "role {role} on {server} (cannot read its comment: {error}): if its comment is {marker}, DROP \
                     ROLE {}",
                    pg::quote_identifier(role)
                ));
                continue;
            }
        };
        if comment.as_deref() != Some(marker.as_str()) {
            tracing::warn!(role = %role, "kept a role the journal names: it does not carry the run's marker");
            result.kept.push(format!("role {role} (not marked {marker})"));
            continue;
        }
        match client
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", pg::quote_identifier(role)))
            .await
        {
            Ok(()) => result.removed.push(format!("role {role}")),
            Err(error) => result.left.push(format!(
                "role {role} on {server} ({}): DROP ROLE {}",
                error
                    .as_db_error()
                    .map_or_else(|| error.to_string(), |db| db.message().to_owned()),
                pg::quote_identifier(role)
            )),
        }
    }
}

/// `gcloud secrets delete` for a secret's full name.
fn delete_secret_command(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["projects", project, "secrets", id] => format!("gcloud secrets delete {id} --project {project} --quiet"),
        ["projects", project, "locations", location, "secrets", id] => {
            format!("gcloud secrets delete {id} --project {project} --location {location} --quiet")
        }
        _ => format!("delete the secret {name}"),
    }
}

/// Tears a full drill's scratch down when its future is dropped before it
/// could (cancellation, panic): best effort on a spawned task; the next full
/// drill's sweep catches what this misses (a killed process).
struct TeardownGuard {
    server: DatabaseUrl,
    secret_manager: ClientSettings,
    root: Arc<dyn BlobStore>,
    scratch: Option<Scratch>,
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        let Some(scratch) = self.scratch.take() else {
            return;
        };
        tracing::warn!(drill.run = %scratch.run, "full drill interrupted: tearing down its scratch targets");
        let (server, settings, root) = (self.server.clone(), self.secret_manager.clone(), Arc::clone(&self.root));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let client = match SecretManagerClient::connect(settings).await {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::error!(drill.run = %scratch.run, error = %error, "could not tear down; the next full drill will");
                        return;
                    }
                };
                let result = tear_down(&server, &client, root.as_ref(), &scratch).await;
                if !result.left.is_empty() {
                    tracing::error!(drill.run = %scratch.run, left = ?result.left, "could not remove everything; the next full drill will try again");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(text: &str) -> StoreLocation {
        text.parse().unwrap()
    }

    fn server(text: &str) -> DatabaseUrl {
        text.parse().unwrap()
    }

    fn scratch() -> Scratch {
        let run = run_name("20261201", 0x0a0b0c0d);
        Scratch {
            format: JOURNAL_FORMAT.into(),
            started_at: "2026-12-01T06:00:00Z".parse().unwrap(),
            server: "postgres://drill@scratch:5432/postgres".into(),
            database_prefix: database_prefix(&run),
            roles: vec!["app".into()],
            project: "keshless-drill".into(),
            secrets: vec![
                format!("projects/keshless-drill/secrets/{run}-JOB_SECRET"),
                format!("projects/keshless-drill/locations/europe-west1/secrets/{run}-DATABASE_URL"),
            ],
            documents: "gs://scratch".into(),
            run,
        }
    }

    #[test]
    fn a_run_names_its_journal_its_databases_and_its_role_marker() {
        let scratch = scratch();
        assert_eq!(scratch.run, "keshless-drill-20261201-0a0b0c0d");
        assert_eq!(scratch.database_prefix, "keshless_drill_20261201_0a0b0c0d_");
        assert_eq!(
            scratch.journal_key(),
            "keshless-drill-journal/keshless-drill-20261201-0a0b0c0d.json"
        );
        assert_eq!(scratch.role_marker(), "keshless-drill:keshless-drill-20261201-0a0b0c0d");
        assert_eq!(run_date(&run_name("20261201", 0)), Some("20261201"));
        assert!(is_stale_run("keshless-drill-20261130-0a0b0c0d", "20261201"));
        assert!(!is_stale_run("keshless-drill-20261201-0a0b0c0d", "20261201"));
        assert!(!is_stale_run("keshless-drill-2026113-0a0b0c0d", "20261201"));
        for run in [
            "",
            "keshless-drill-",
            "keshless-drill-2026120-0a0b0c0d",
            "keshless-drill-20261201-0A0B0C0D",
            "keshless-drill-20261201-0a0b0c0",
            "keshless-drill-20261201-0a0b0c0d-x",
            "other-20261201-0a0b0c0d",
        ] {
            assert_eq!(run_date(run), None, "{run}");
        }
        assert!(journal_problems(
            &scratch.journal_key(),
            &scratch,
            "keshless-drill",
            "postgres://drill@scratch:5432/postgres"
        )
        .is_empty());
    }

    #[test]
    fn a_journal_naming_anything_but_its_runs_own_is_refused() {
        let key = scratch().journal_key();
        let (project, server) = ("keshless-drill", "postgres://drill@scratch:5432/postgres");
        type Change = Box<dyn Fn(&mut Scratch)>;
        let cases: Vec<(&str, Change, &str)> = vec![
            ("format", Box::new(|s| s.format = "other".into()), "format \"other\""),
            (
                "empty prefix",
                Box::new(|s| s.database_prefix = String::new()),
                "database_prefix \"\"",
            ),
            (
                "another run's prefix",
                Box::new(|s| s.database_prefix = "keshless_drill_20261201_ffffffff_".into()),
                "is not the run's",
            ),
            (
                "run",
                Box::new(|s| s.run = "payments".into()),
                "run \"payments\" is not",
            ),
            (
                "another run",
                Box::new(|s| s.run = "keshless-drill-20261201-ffffffff".into()),
                "not the run of its key",
            ),
            (
                "project",
                Box::new(|s| s.project = "keshless-prod".into()),
                "is not the scratch project",
            ),
            (
                "foreign secret",
                Box::new(|s| s.secrets.push("projects/keshless-drill/secrets/JOB_SECRET".into())),
                "secret \"projects/keshless-drill/secrets/JOB_SECRET\"",
            ),
            (
                "secret of another project",
                Box::new(|s| {
                    let other = s.secrets[0].replace("keshless-drill/", "keshless-prod/");
                    s.secrets.push(other)
                }),
                "is not projects/keshless-drill/",
            ),
            (
                "nested secret name",
                Box::new(|s| {
                    let nested = format!("{}/versions/1", s.secrets[0]);
                    s.secrets.push(nested)
                }),
                "/versions/1",
            ),
            (
                "server",
                Box::new(|s| s.server = "postgres://app@production:5432/app".into()),
                "is not this drill's scratch server",
            ),
        ];
        for (case, change, expected) in cases {
            let mut journal = scratch();
            change(&mut journal);
            let problems = journal_problems(&key, &journal, project, server);
            assert!(
                problems.iter().any(|problem| problem.contains(expected)),
                "{case}: {problems:?}"
            );
        }
    }

    #[test]
    fn full_mode_refuses_the_production_server_or_none() {
        let documents = location("gs://keshless-documents");
        let vault = location("gs://keshless-backups");
        let mut targets = FullTargets {
            project: Some("keshless-drill".into()),
            documents: Some(location("gs://keshless-drill-scratch")),
            production_server: Some(server("postgres://app:secret@Production:5432/app").server()),
            ..FullTargets::default()
        };
        let production = server("postgres://drill:other@production/postgres");
        let problems = refusals(&targets, None, &documents, &vault, &production);
        assert!(problems[0].starts_with("DRILL_DATABASE_URL is not set"), "{problems:?}");
        targets.drill_database_url_set = true;
        let problems = refusals(&targets, None, &documents, &vault, &production);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("is on the server of DATABASE_URL (production:5432)")
                && !problems[0].contains("other"),
            "{problems:?}"
        );
        for scratch in [
            "postgres://drill@production:5433/postgres",
            "postgres://drill@scratch/postgres",
            "postgres://drill@/postgres?host=/cloudsql/scratch",
        ] {
            assert!(
                refusals(&targets, None, &documents, &vault, &server(scratch)).is_empty(),
                "{scratch}"
            );
        }
        targets.production_server = Some(server("postgres://app@/app?host=/cloudsql/scratch").server());
        assert_eq!(
            refusals(
                &targets,
                None,
                &documents,
                &vault,
                &server("postgres://drill@/postgres?host=/cloudsql/scratch")
            )
            .len(),
            1
        );
    }

    #[test]
    fn production_targets_are_refused_naming_why() {
        let targets = FullTargets {
            project: Some("keshless-prod".into()),
            documents: Some(location("gs://keshless-documents/scratch")),
            production_project: Some("keshless-prod".into()),
            drill_database_url_set: true,
            ..FullTargets::default()
        };
        let problems = refusals(
            &targets,
            None,
            &location("gs://keshless-documents"),
            &location("gs://keshless-backups"),
            &server("postgres://drill@scratch:5432/postgres"),
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("is the production project (GOOGLE_CLOUD_PROJECT)"));
        assert!(problems[1].contains("is in the documents bucket gs://keshless-documents"));

        let vault = FullTargets {
            project: Some("keshless-drill".into()),
            documents: Some(location("gs://keshless-backups/drill")),
            drill_database_url_set: true,
            ..FullTargets::default()
        };
        let problems = refusals(
            &vault,
            Some("keshless-drill"),
            &location("gs://keshless-documents"),
            &location("gs://keshless-backups"),
            &server("postgres://drill@scratch:5432/postgres"),
        );
        assert!(
            problems[0].contains("the project SECRETS_SOURCE=secret-manager backs up"),
            "{problems:?}"
        );
        assert!(problems[1].contains("is in the backups bucket"), "{problems:?}");

        let missing = refusals(
            &FullTargets::default(),
            None,
            &location("gs://keshless-documents"),
            &location("gs://keshless-backups"),
            &server("postgres://drill@scratch:5432/postgres"),
        );
        assert!(missing[0].starts_with("DRILL_DATABASE_URL is not set"));
        assert!(missing[1].starts_with("DRILL_SECRET_MANAGER_PROJECT is not set"));
        assert!(missing[2].starts_with("DRILL_DOCUMENTS_STORE is not set"));

        let scratch = FullTargets {
            project: Some("keshless-drill".into()),
            documents: Some(location("gs://keshless-drill-scratch")),
            production_project: Some("keshless-prod".into()),
            drill_database_url_set: true,
            ..FullTargets::default()
        };
        assert!(refusals(
            &scratch,
            Some("keshless-prod"),
            &location("gs://keshless-documents"),
            &location("gs://keshless-backups"),
            &server("postgres://drill@scratch:5432/postgres"),
        )
        .is_empty());
    }

    #[test]
    fn file_stores_overlap_when_one_holds_the_other() {
        assert!(overlaps(
            &location("file:///srv/documents/drill"),
            &location("file:///srv/documents")
        ));
        assert!(overlaps(&location("file:///srv"), &location("file:///srv/documents")));
        assert!(!overlaps(
            &location("file:///srv/drill"),
            &location("file:///srv/documents")
        ));
    }

    #[test]
    fn scratch_locations_and_commands() {
        assert_eq!(
            child_location(&location("gs://scratch/drills"), "keshless-drill-20261201-0a0b0c0d").to_string(),
            "gs://scratch/drills/keshless-drill-20261201-0a0b0c0d"
        );
        assert_eq!(
            child_location(&location("file:///tmp/scratch"), "run").to_string(),
            "file:///tmp/scratch/run"
        );
        assert_eq!(
            delete_secret_command("projects/p/locations/europe-west1/secrets/s"),
            "gcloud secrets delete s --project p --location europe-west1 --quiet"
        );
    }
}
