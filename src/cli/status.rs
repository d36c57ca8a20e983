//! `keshless-ops status`: ledger state and backup freshness, per scheduled
//! job, with an exit code an alert can watch. The decisions are in
//! [`crate::status`]; this file reads the two sources and prints.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::DatabaseUrl;
use crate::runtime::ledger::{JobSummaries, Ledger, LedgerError};
use crate::status::{self, LedgerView, Report, StorageView};

/// How long each source may take before it counts as unreadable: an alert
/// probe must answer, not hang on a dead database or bucket.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Show, per scheduled job, the last success (and where it was seen), the
/// last failure, the attempts of the latest run, whether it is running now,
/// and whether it is fresh or overdue.
///
/// Successes are read from the idempotency ledger (LEDGER_DATABASE_URL, else
/// DATABASE_URL; never modified) and from the backup store (BACKUP_STORE, else
/// GCS_BACKUPS_BUCKET; STORAGE_EMULATOR_HOST), so freshness still works when
/// the ledger was lost; the newer of the two counts. A job is overdue when its
/// last success is older than its limit: postgres-backup and
/// documents-inventory 26 h, secrets-backup and cleanup-old-backups 8 days,
/// dr-drill 35 days; FRESHNESS_<JOB>_HOURS overrides one (for example
/// FRESHNESS_POSTGRES_BACKUP_HOURS=30). If one source cannot be read, status
/// warns and reports from the other.
///
/// Exit codes: 0 every job fresh (jobs only an unreadable source could judge
/// are listed as unknown); 2 at least one job overdue, even when a source
/// could not be read, so it can drive an alert; 4 nothing overdue, but the
/// ledger or the store could not be read (judged from the other alone; a
/// broken ledger alerts too); 1 neither the ledger nor the store could be
/// read; 78 configuration error.
///
/// --prometheus prints the same figures in the Prometheus text format
/// (keshless_ops_last_success_timestamp_seconds, _last_success_age_seconds,
/// _freshness_limit_seconds, _job_overdue, _status_source_up), for a
/// node_exporter textfile or a Pushgateway; the exit codes stay the same.
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print Prometheus text instead of a table.
    #[arg(long)]
    pub prometheus: bool,
}

/// What status needs from the environment.
struct Inputs {
    limits: Vec<(&'static crate::schedule::ScheduledJob, Duration)>,
    /// `DATABASES` (else `DATABASE_URL`'s database): postgres-backup gets a
    /// row for each; none: one row for the job.
    databases: Vec<String>,
    ledger_url: DatabaseUrl,
    store: crate::storage::StoreLocation,
}

fn inputs() -> Result<Inputs, Vec<String>> {
    let mut problems = Vec::new();
    let limits = crate::schedule::freshness_limits(super::variable).unwrap_or_else(|mut bad| {
        problems.append(&mut bad);
        Vec::new()
    });
    let ledger_url = super::ledger_url().map_err(|problem| problems.push(problem)).ok();
    let store = super::backup_store_location()
        .map_err(|problem| problems.push(problem))
        .ok();
    let databases: Vec<String> = match super::variable("DATABASES") {
        Some(list) => crate::config::comma_separated(&list),
        None => super::variable("DATABASE_URL")
            .and_then(|url| url.parse::<DatabaseUrl>().ok())
            .and_then(|url| url.database_name().map(str::to_owned))
            .into_iter()
            .collect(),
    };
    match (ledger_url, store) {
        (Some(ledger_url), Some(store)) if problems.is_empty() => Ok(Inputs {
            limits,
            databases,
            ledger_url,
            store,
        }),
        _ => Err(problems),
    }
}

impl StatusCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Err(code) = super::check_environment("status") {
            return Ok(code);
        }
        let inputs = match inputs() {
            Ok(inputs) => inputs,
            Err(problems) => {
                let count = problems.len();
                let noun = if count == 1 { "problem" } else { "problems" };
                eprintln!("invalid configuration ({count} {noun}):");
                for problem in problems {
                    eprintln!("  - {problem}");
                }
                return Ok(ExitCode::from(super::exit::CONFIG));
            }
        };
        let (ledger, storage) = tokio::join!(read_ledger(&inputs.ledger_url), read_store(&inputs.store));
        let report = status::build_report(
            &inputs.limits,
            &inputs.databases,
            ledger.as_ref().map_err(Clone::clone),
            storage.as_ref().map_err(Clone::clone),
            chrono::Utc::now(),
        );
        if let Err(problem) = &ledger {
            eprintln!("warning: the ledger could not be read ({problem}); ledger columns show unknown");
        }
        if let Err(problem) = &storage {
            eprintln!("warning: the backup store could not be read ({problem}); storage columns show unknown");
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else if self.prometheus {
            print!("{}", status::prometheus::render(&report));
        } else {
            print_table(&report);
        }
        Ok(ExitCode::from(report.exit_code))
    }
}

async fn read_ledger(url: &DatabaseUrl) -> Result<JobSummaries, String> {
    let database = url.database_name().unwrap_or("?").to_owned();
    let read = async { Ledger::connect_without_migrating(url)?.job_summaries().await };
    match tokio::time::timeout(SOURCE_TIMEOUT, read).await {
        Ok(Ok(summaries)) => Ok(summaries),
        Ok(Err(error)) => Err(describe_ledger_error(&error, &database)),
        Err(_) => Err(format!(
            "no answer from database {database:?} within {} s",
            SOURCE_TIMEOUT.as_secs()
        )),
    }
}

fn describe_ledger_error(error: &LedgerError, database: &str) -> String {
    use tokio_postgres::error::SqlState;
    if let LedgerError::Query(query) = error {
        if matches!(
            query.code(),
            Some(&SqlState::UNDEFINED_TABLE) | Some(&SqlState::INVALID_SCHEMA_NAME)
        ) {
            return format!(
                "table keshless_ops.job_runs does not exist in database {database:?}: the ledger was lost, \
                 or no worker has run against this database"
            );
        }
    }
    format!("database {database:?}: {}", crate::telemetry::error_chain(error))
}

async fn read_store(
    location: &crate::storage::StoreLocation,
) -> Result<std::collections::BTreeMap<String, Option<status::Artefact>>, String> {
    let emulator = super::variable("STORAGE_EMULATOR_HOST");
    let read = async {
        let store = crate::storage::open(location, emulator.as_deref()).await?;
        anyhow::Ok(status::artefacts::newest_artefacts(store.as_ref()).await?)
    };
    match tokio::time::timeout(SOURCE_TIMEOUT, read).await {
        Ok(Ok(newest)) => Ok(newest),
        Ok(Err(error)) => Err(format!("{location}: {error:#}")),
        Err(_) => Err(format!("{location}: no answer within {} s", SOURCE_TIMEOUT.as_secs())),
    }
}

fn when(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M").to_string()
}

fn print_table(report: &Report) {
    println!(
        "{:<20} {:<36} {:<40} {:>8}  {:<36} freshness",
        "job", "last success (age, source)", "last failure", "attempts", "running"
    );
    for job in &report.jobs {
        let last_success = match &job.last_success {
            Some(success) => format!(
                "{} ({}, {})",
                when(success.at),
                status::human_duration(Duration::from_secs(job.age_seconds.unwrap_or(0))),
                match success.source {
                    status::Source::Ledger => "ledger",
                    status::Source::Storage => "storage",
                }
            ),
            None if job.freshness == "unknown" => "unknown".to_owned(),
            None => "never".to_owned(),
        };
        let (last_failure, attempts, running) = match &job.ledger {
            LedgerView::Read {
                last_failure,
                attempts,
                running,
                ..
            } => {
                let failure = match last_failure {
                    Some(failure) => {
                        let error = failure.error.as_deref().unwrap_or("no error recorded");
                        // The column stays readable; --json has the whole error.
                        let mut error: String = error.escape_debug().to_string();
                        if error.chars().count() > 22 {
                            error = error.chars().take(21).chain(['…']).collect();
                        }
                        format!("{} {error}", when(failure.at))
                    }
                    None => "-".to_owned(),
                };
                let attempts = attempts.map_or("-".to_owned(), |attempts| attempts.to_string());
                let running = running
                    .iter()
                    .map(|run| {
                        let owner = run.owner.as_deref().unwrap_or("?");
                        let since = run.since.map_or("?".to_owned(), when);
                        if run.lease_live {
                            format!("{owner} since {since}")
                        } else {
                            format!("stale lease of {owner} (since {since})")
                        }
                    })
                    .collect::<Vec<_>>();
                let running = if running.is_empty() {
                    "-".to_owned()
                } else {
                    running.join("; ")
                };
                (failure, attempts, running)
            }
            LedgerView::Unavailable => ("unknown".to_owned(), "?".to_owned(), "unknown".to_owned()),
        };
        println!(
            "{:<20} {:<36} {:<40} {:>8}  {:<36} {} ({})",
            job.name(),
            last_success,
            last_failure,
            attempts,
            running,
            job.freshness,
            job.reason
        );
    }
    println!();
    println!("sources:");
    for job in &report.jobs {
        let ledger = match &job.ledger {
            LedgerView::Read {
                last_success: Some(success),
                ..
            } => format!(
                "{} {}{}",
                when(success.at),
                success.idempotency_key.escape_debug(),
                success
                    .summary
                    .as_deref()
                    .map(|summary| format!(": {}", summary.escape_debug()))
                    .unwrap_or_default()
            ),
            LedgerView::Read { .. } => "no success".to_owned(),
            LedgerView::Unavailable => "unknown".to_owned(),
        };
        let storage = match &job.storage {
            StorageView::Read { newest: Some(artefact) } => {
                format!("{} {}", when(artefact.at), artefact.object.escape_debug())
            }
            StorageView::Read { newest: None } => "no complete artefact".to_owned(),
            StorageView::Unavailable => "unknown".to_owned(),
            StorageView::NotApplicable => "(writes none)".to_owned(),
        };
        println!("  {:<20} ledger: {ledger}", job.name());
        println!("  {:<20} storage: {storage}", "");
    }
    println!();
    println!("{}", report.summary);
}
