//! What `keshless-ops status` decides: per scheduled job, whether its newest
//! success is recent enough ([`freshness`], a pure function), and the report
//! built from the two places a success leaves a trace — the ledger and the
//! backup store ([`build_report`], pure too). Reading those two places is in
//! [`artefacts`] (the store) and `Ledger::job_summaries` (the ledger); the CLI
//! only prints.
//!
//! Two sources because either can be lost: a restored or recreated ledger
//! database forgets every run, while the store keeps the backups; a job like
//! `cleanup-old-backups` leaves nothing in the store but its ledger row.

pub mod artefacts;
pub mod prometheus;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::runtime::ledger::{JobSummaries, JobSummary, Run};
use crate::schedule::ScheduledJob;
pub use artefacts::Artefact;

/// Exit code when every job is fresh.
pub const EXIT_FRESH: u8 = 0;
/// Exit code when neither the ledger nor the store could be read.
pub const EXIT_CANNOT_TELL: u8 = 1;
/// Exit code when at least one job is overdue (drives an alert).
pub const EXIT_OVERDUE: u8 = 2;
/// Exit code when nothing is overdue but the ledger or the store could not
/// be read: freshness came from the other alone, and the broken source must
/// alert too (a lost ledger would otherwise go unnoticed while backups run).
pub const EXIT_SOURCE_UNREADABLE: u8 = 4;

/// Where a success was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Ledger,
    Storage,
}

/// What one source says of a job's newest success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The source answered: the newest success, or `None` if it has none.
    Known(Option<DateTime<Utc>>),
    /// The source could not be read.
    Unavailable,
    /// The job leaves nothing in this source (cleanup writes no artefact).
    NotApplicable,
}

/// The verdict on one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh {
        age: Duration,
        last_success: DateTime<Utc>,
        source: Source,
    },
    /// Too old, or `last_success: None`: never succeeded as far as any
    /// readable source knows.
    Overdue {
        age: Option<Duration>,
        last_success: Option<(DateTime<Utc>, Source)>,
        limit: Duration,
    },
    /// Every source that could tell was unreadable.
    Unknown,
}

/// Decides one job from what the ledger and the store say, at `now`, against
/// `limit`. The newer success counts (a lost ledger does not make a job
/// overdue while the store holds a fresh backup, nor the reverse); a job is
/// overdue when that success is older than `limit`, or when no readable
/// source has one. Only when no source could be read is the answer unknown.
/// A success dated after `now` (clock skew) counts as age zero.
pub fn freshness(ledger: Evidence, storage: Evidence, now: DateTime<Utc>, limit: Duration) -> Freshness {
    let mut readable = false;
    let mut newest: Option<(DateTime<Utc>, Source)> = None;
    for (evidence, source) in [(ledger, Source::Ledger), (storage, Source::Storage)] {
        if let Evidence::Known(seen) = evidence {
            readable = true;
            // Strictly newer: on a tie the ledger is named (it has the key).
            if let Some(at) = seen.filter(|at| newest.is_none_or(|(best, _)| *at > best)) {
                newest = Some((at, source));
            }
        }
    }
    if !readable {
        return Freshness::Unknown;
    }
    let Some((at, source)) = newest else {
        return Freshness::Overdue {
            age: None,
            last_success: None,
            limit,
        };
    };
    let age = (now - at).to_std().unwrap_or(Duration::ZERO);
    if age > limit {
        Freshness::Overdue {
            age: Some(age),
            last_success: Some((at, source)),
            limit,
        }
    } else {
        Freshness::Fresh {
            age,
            last_success: at,
            source,
        }
    }
}

/// A duration as operators read it: minutes under an hour, hours under two
/// days, days beyond.
pub fn human_duration(duration: Duration) -> String {
    let minutes = duration.as_secs() / 60;
    let hours = minutes / 60;
    if minutes < 60 {
        format!("{minutes} min")
    } else if hours < 48 {
        format!("{hours} h")
    } else {
        format!("{} d", hours / 24)
    }
}

/// One source's health, for the report header and the warnings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceState {
    pub available: bool,
    /// Why it could not be read.
    pub problem: Option<String>,
}

/// A success as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerSuccess {
    pub at: DateTime<Utc>,
    pub idempotency_key: String,
    pub summary: Option<String>,
}

/// A failure as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerFailure {
    pub at: DateTime<Utc>,
    pub idempotency_key: String,
    /// `failed` (will be retried) or `dead_lettered` (needs a replay).
    pub status: crate::runtime::ledger::RunStatus,
    pub error: Option<String>,
}

/// A run in status `running`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningRun {
    pub idempotency_key: String,
    pub owner: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// `false`: the owner stopped renewing (crashed); the next delivery takes over.
    pub lease_live: bool,
}

/// What the ledger says of one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LedgerView {
    Read {
        last_success: Option<LedgerSuccess>,
        last_failure: Option<LedgerFailure>,
        /// Attempts of the latest run; `None` when the job never ran.
        attempts: Option<u32>,
        running: Vec<RunningRun>,
    },
    Unavailable,
}

/// What the store says of one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StorageView {
    Read { newest: Option<Artefact> },
    Unavailable,
    NotApplicable,
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub job: String,
    /// For a job run once per database (postgres-backup), the database
    /// this row is about; each database has its own row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub cron: String,
    pub max_age_seconds: u64,
    /// `fresh`, `overdue` or `unknown`.
    pub freshness: &'static str,
    /// The newer of the ledger's and the store's successes.
    pub last_success: Option<EffectiveSuccess>,
    pub age_seconds: Option<u64>,
    /// One phrase: "last success 30 h ago, limit 26 h", "never succeeded".
    pub reason: String,
    pub ledger: LedgerView,
    pub storage: StorageView,
}

impl JobStatus {
    /// `postgres-backup`, or `postgres-backup keshless` for one database's row.
    pub fn name(&self) -> String {
        match &self.database {
            Some(database) => format!("{} {database}", self.job),
            None => self.job.clone(),
        }
    }
}

/// The success freshness is measured from, and where it was seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EffectiveSuccess {
    pub at: DateTime<Utc>,
    pub source: Source,
}

/// The whole answer of `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub checked_at: DateTime<Utc>,
    pub ledger: SourceState,
    pub storage: SourceState,
    pub jobs: Vec<JobStatus>,
    pub overdue: Vec<String>,
    pub unknown: Vec<String>,
    pub exit_code: u8,
    pub summary: String,
}

fn run_time(run: &Run) -> DateTime<Utc> {
    run.finished_at.unwrap_or(run.updated_at)
}

fn ledger_success(run: &Run) -> LedgerSuccess {
    LedgerSuccess {
        at: run_time(run),
        idempotency_key: run.idempotency_key.clone(),
        summary: run
            .result
            .as_ref()
            .and_then(|result| result.get("summary"))
            .and_then(|summary| summary.as_str())
            .map(str::to_owned),
    }
}

fn ledger_view(summary: Option<&JobSummary>, database_now: DateTime<Utc>) -> LedgerView {
    let Some(summary) = summary else {
        return LedgerView::Read {
            last_success: None,
            last_failure: None,
            attempts: None,
            running: Vec::new(),
        };
    };
    LedgerView::Read {
        last_success: summary.last_success.as_ref().map(ledger_success),
        last_failure: summary.last_failure.as_ref().map(|run| LedgerFailure {
            at: run_time(run),
            idempotency_key: run.idempotency_key.clone(),
            status: run.status,
            error: run.last_error.clone(),
        }),
        attempts: Some(summary.latest.attempts),
        running: summary
            .running
            .iter()
            .map(|run| RunningRun {
                idempotency_key: run.idempotency_key.clone(),
                owner: run.lease_owner.clone(),
                since: run.started_at,
                lease_expires_at: run.lease_expires_at,
                // The database's clock, as the workers' claims use it.
                lease_live: run.lease_expires_at.is_some_and(|until| until > database_now),
            })
            .collect(),
    }
}

/// Builds the report for `limits` (the schedule with its freshness limits)
/// from what each source gave: the ledger's summaries or why it could not be
/// read, and the store's newest artefact per job (jobs absent from the map
/// leave none) or why it could not be read.
/// A job divided by its database (postgres-backup) gets one row per
/// database when `databases` lists several, each judged by that database's
/// own newest success (with one, every success of the job is that
/// database's, including those recorded before results named it).
pub fn build_report(
    limits: &[(&ScheduledJob, Duration)],
    databases: &[String],
    ledger: Result<&JobSummaries, String>,
    storage: Result<&std::collections::BTreeMap<String, Option<Artefact>>, String>,
    now: DateTime<Utc>,
) -> Report {
    let mut jobs = Vec::with_capacity(limits.len());
    let series = limits.iter().flat_map(|(row, limit)| {
        let per_database: Vec<Option<&String>> = if row.scope == Some("database") && databases.len() > 1 {
            databases.iter().map(Some).collect()
        } else {
            vec![None]
        };
        per_database.into_iter().map(move |database| (row, limit, database))
    });
    for (row, limit, database) in series {
        let (ledger_view, ledger_evidence) = match &ledger {
            Ok(summaries) => {
                let summary = summaries.jobs.iter().find(|summary| summary.job == row.job);
                let mut view = ledger_view(summary, summaries.database_now);
                if let (Some(database), LedgerView::Read { last_success, .. }) = (database, &mut view) {
                    // The job's failures and running keys stay job-wide; the
                    // success that counts is this database's.
                    *last_success = summary
                        .and_then(|summary| summary.last_success_by_database.get(database))
                        .map(ledger_success);
                }
                let seen = match &view {
                    LedgerView::Read { last_success, .. } => last_success.as_ref().map(|success| success.at),
                    LedgerView::Unavailable => None,
                };
                (view, Evidence::Known(seen))
            }
            Err(_) => (LedgerView::Unavailable, Evidence::Unavailable),
        };
        let series_key = match database {
            Some(database) => artefacts::database_series(row.job, database),
            None => row.job.to_owned(),
        };
        let (storage_view, storage_evidence) = match &storage {
            Ok(newest) => match newest.get(&series_key) {
                // A database with no backup at all: the store answered "none".
                None if database.is_some() && artefacts::leaves_artefact(row.job) => {
                    (StorageView::Read { newest: None }, Evidence::Known(None))
                }
                Some(artefact) => (
                    StorageView::Read {
                        newest: artefact.clone(),
                    },
                    Evidence::Known(artefact.as_ref().map(|artefact| artefact.at)),
                ),
                None => (StorageView::NotApplicable, Evidence::NotApplicable),
            },
            Err(_) if artefacts::leaves_artefact(row.job) => (StorageView::Unavailable, Evidence::Unavailable),
            Err(_) => (StorageView::NotApplicable, Evidence::NotApplicable),
        };
        let verdict = freshness(ledger_evidence, storage_evidence, now, *limit);
        let unreadable: Vec<&str> = [
            (ledger_evidence == Evidence::Unavailable).then_some("ledger"),
            (storage_evidence == Evidence::Unavailable).then_some("storage"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let caveat = if unreadable.is_empty() {
            String::new()
        } else {
            format!("; {} unreadable", unreadable.join(" and "))
        };
        let (label, last_success, age, reason) = match verdict {
            Freshness::Fresh {
                age,
                last_success,
                source,
            } => (
                "fresh",
                Some(EffectiveSuccess {
                    at: last_success,
                    source,
                }),
                Some(age),
                format!(
                    "last success {} ago, limit {}{caveat}",
                    human_duration(age),
                    human_duration(*limit)
                ),
            ),
            Freshness::Overdue {
                age: Some(age),
                last_success,
                limit,
            } => (
                "overdue",
                last_success.map(|(at, source)| EffectiveSuccess { at, source }),
                Some(age),
                format!(
                    "last success {} ago, limit {}{caveat}",
                    human_duration(age),
                    human_duration(limit)
                ),
            ),
            Freshness::Overdue { age: None, .. } => ("overdue", None, None, format!("never succeeded{caveat}")),
            Freshness::Unknown => ("unknown", None, None, format!("cannot tell{caveat}")),
        };
        jobs.push(JobStatus {
            job: row.job.to_owned(),
            database: database.cloned(),
            cron: row.cron.to_owned(),
            max_age_seconds: limit.as_secs(),
            freshness: label,
            last_success,
            age_seconds: age.map(|age| age.as_secs()),
            reason,
            ledger: ledger_view,
            storage: storage_view,
        });
    }
    let named = |state: &str| -> Vec<String> {
        jobs.iter()
            .filter(|job| job.freshness == state)
            .map(JobStatus::name)
            .collect()
    };
    let overdue = named("overdue");
    let unknown = named("unknown");
    let both_unreadable = ledger.is_err() && storage.is_err();
    let exit_code = if !overdue.is_empty() {
        EXIT_OVERDUE
    } else if both_unreadable {
        EXIT_CANNOT_TELL
    } else if ledger.is_err() || storage.is_err() {
        EXIT_SOURCE_UNREADABLE
    } else {
        EXIT_FRESH
    };
    let list = |state: &str| -> String {
        jobs.iter()
            .filter(|job| job.freshness == state)
            .map(|job| format!("{} ({})", job.name(), job.reason))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !overdue.is_empty() {
        parts.push(format!("{} overdue: {}", overdue.len(), list("overdue")));
    }
    if !unknown.is_empty() {
        parts.push(format!("{} unknown: {}", unknown.len(), list("unknown")));
    }
    if parts.is_empty() {
        parts.push(format!("all {} jobs fresh", jobs.len()));
    }
    let source_state = |result: Result<(), &String>| SourceState {
        available: result.is_ok(),
        problem: result.err().cloned(),
    };
    Report {
        checked_at: now,
        ledger: source_state(ledger.as_ref().map(|_| ())),
        storage: source_state(storage.as_ref().map(|_| ())),
        jobs,
        overdue,
        unknown,
        exit_code,
        summary: parts.join("; "),
    }
}

#[cfg(test)]
mod tests;
