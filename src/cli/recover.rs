//! `keshless-ops recover`: the command around [`crate::recovery`].
//!
//! Reads only what a recovery after losing the project can have: the vault
//! (`BACKUP_STORE` or `GCS_BACKUPS_BUCKET`, `STORAGE_EMULATOR_HOST` for an
//! emulator), the offline keys (`SECRETS_ENCRYPTION_KEY`, and for encrypted
//! dumps `BACKUP_AGE_IDENTITY_FILE` or `BACKUP_AGE_IDENTITY_SECRET`), Secret
//! Manager's `SECRET_MANAGER_EMULATOR_HOST` and `SECRET_MANAGER_REQUESTS_PER_MINUTE`,
//! `RECOVER_TARGET_URL` (instead of `--target-url`), and `PG_RESTORE`.

use crate::recovery::{Plan, PlanState, PlannedStep, Recovery, Report, StepOutcome, Targets};
use std::process::ExitCode;

/// Rebuild the platform's data in a new environment from the vault and the
/// offline keys alone: Secret Manager's secrets into --project, each database
/// (with its roles, owners and grants) onto the --target-url server, the
/// documents into --documents-bucket from the mirror, then a drill against
/// what was recovered.
///
/// --plan (the default) prints every step with what it will create, from which
/// backup, how old it is, and what it needs, checking every precondition it can
/// without changing anything; it exits 3 when a step cannot run, naming what
/// cannot be recovered. --apply runs the plan (refusing one with a blocked
/// step): every step is idempotent and a second run skips what is done and
/// says so; the first failed step stops the run with what to do next. It
/// prints each step's duration and the total (the RTO) and each backup's age
/// (the RPO), and writes the report to recoveries/ in the vault. It never
/// writes to the project or bucket the backups came from.
///
/// Reads BACKUP_STORE (or GCS_BACKUPS_BUCKET), STORAGE_EMULATOR_HOST,
/// SECRETS_ENCRYPTION_KEY, BACKUP_AGE_IDENTITY_FILE or BACKUP_AGE_IDENTITY_SECRET
/// (encrypted dumps), SECRET_MANAGER_EMULATOR_HOST, SECRET_MANAGER_REQUESTS_PER_MINUTE,
/// RECOVER_TARGET_URL and PG_RESTORE.
#[derive(Debug, clap::Args)]
pub struct RecoverCmd {
    /// Print the plan and check it; change nothing (the default).
    #[arg(long, conflicts_with = "apply")]
    pub plan: bool,
    /// Run the plan.
    #[arg(long)]
    pub apply: bool,
    /// The new Secret Manager project (never the backup's own).
    #[arg(long)]
    pub project: String,
    /// The new PostgreSQL server: postgres://USER@HOST[:PORT]/postgres, a user
    /// that may create databases and roles; each database is restored under
    /// its own name. Prefer RECOVER_TARGET_URL (or PGPASSWORD) for a password.
    #[arg(long, env = "RECOVER_TARGET_URL", hide_env_values = true)]
    pub target_url: String,
    /// The new documents bucket: BUCKET, gs://BUCKET[/PREFIX] or file:///PATH.
    #[arg(long, value_name = "BUCKET")]
    pub documents_bucket: String,
    /// Recover only these databases (repeat or comma-separate); default: every
    /// database the vault holds a backup of.
    #[arg(long = "database", value_name = "NAME", value_delimiter = ',')]
    pub databases: Vec<String>,
    /// Print the plan or the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RecoverCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let mut problems = Vec::new();
        let vault = super::backup_store_location()
            .map_err(|problem| problems.push(problem))
            .ok();
        let key = super::restore_secrets::read_key("SECRETS_ENCRYPTION_KEY")
            .map_err(|problem| problems.push(problem))
            .ok();
        let server = self
            .target_url
            .parse::<crate::config::DatabaseUrl>()
            .map_err(|problem| problems.push(format!("--target-url: {problem}")))
            .ok();
        let documents = parse_bucket(&self.documents_bucket)
            .map_err(|problem| problems.push(format!("--documents-bucket: {problem}")))
            .ok();
        let dumps = match crate::config::DumpConfig::for_restore_from_env() {
            Ok(dumps) => Some(dumps),
            Err(error) => {
                problems.extend(error.problems.iter().map(ToString::to_string));
                None
            }
        };
        if self.project.trim().is_empty() {
            problems.push("--project is empty: the new Secret Manager project".into());
        }
        let (Some(vault), Some(key), Some(server), Some(documents), Some(dumps), true) =
            (vault, key, server, documents, dumps, problems.is_empty())
        else {
            eprintln!(
                "invalid configuration ({} problem{}):\n  - {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n  - ")
            );
            return Ok(ExitCode::from(super::exit::CONFIG));
        };
        let emulator = super::variable("STORAGE_EMULATOR_HOST");
        let vault = crate::storage::open(&vault, emulator.as_deref()).await?;
        let documents = crate::storage::open(&documents, emulator.as_deref()).await?;
        let recovery = Recovery {
            vault,
            secrets_key: key,
            dumps,
            secret_manager: super::restore_secrets::secret_manager_client_from_env().await?,
            databases: self.databases,
            targets: Targets {
                project: self.project.trim().to_owned(),
                server,
                documents,
                database_prefix: String::new(),
                secret_id_prefix: String::new(),
                role_comment: None,
                without_notifications: false,
            },
            pg_restore: crate::postgres::process::pg_restore_program(),
            clock: crate::clock::Clock::system(),
        };
        let plan = recovery.plan().await;
        let apply = self.apply && !self.plan;
        if !apply {
            if self.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&plan);
            }
            return Ok(if plan.blocked().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(super::exit::FINDINGS)
            });
        }
        if !plan.blocked().is_empty() {
            if self.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&plan);
            }
            eprintln!("refusing to apply: nothing was changed; resolve the blocked steps above, then run again");
            return Ok(ExitCode::from(super::exit::FINDINGS));
        }
        let json = self.json;
        let report = recovery
            .apply(&plan, |step| {
                if !json {
                    eprintln!("==> {} → {}", step.name, step.target);
                }
            })
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        Ok(if report.passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// `--documents-bucket`: a bare bucket name, or a store URL.
fn parse_bucket(text: &str) -> Result<crate::storage::StoreLocation, String> {
    if text.contains("://") {
        text.parse()
            .map_err(|error: crate::storage::StoreLocationError| error.to_string())
    } else {
        crate::storage::StoreLocation::gcs(text.trim(), "").map_err(|error| error.to_string())
    }
}

fn age(seconds: Option<i64>) -> String {
    seconds.map(super::drill::human_seconds).unwrap_or_else(|| "-".into())
}

fn print_plan(plan: &Plan) {
    println!("recovery plan from {} ({})", plan.vault, plan.planned_at.to_rfc3339());
    for (index, step) in plan.steps.iter().enumerate() {
        print_step(index + 1, step);
    }
    let blocked = plan.blocked();
    println!();
    if blocked.is_empty() {
        println!("every step can run: `keshless-ops recover --apply` with the same flags runs it");
    } else {
        println!("CANNOT RECOVER, {} step(s) blocked:", blocked.len());
        for step in blocked {
            for problem in &step.problems {
                println!("  - {}: {problem}", step.name);
            }
        }
    }
}

fn print_step(number: usize, step: &PlannedStep) {
    let state = match step.state {
        PlanState::Ready => "ready",
        PlanState::Done => "already done",
        PlanState::Blocked => "BLOCKED",
    };
    println!();
    println!("{number}. {} → {}  [{state}]", step.name, step.target);
    if let Some(backup) = &step.backup {
        println!(
            "   {:<9} {backup} (taken {}, {} old)",
            "from",
            step.backup_time.map(|time| time.to_rfc3339()).unwrap_or_default(),
            age(step.backup_age_seconds)
        );
    }
    if !step.creates.is_empty() {
        println!("   {:<9} {}", "creates", step.creates);
    }
    for need in &step.needs {
        println!("   {:<9} {need}", "needs");
    }
    for problem in &step.problems {
        println!("   {:<9} {problem}", "problem");
    }
}

fn print_report(report: &Report) {
    let width = report
        .steps
        .iter()
        .map(|step| step.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:<width$}  {:<12} {:>9} {:>9}  detail", "step", "result", "RTO", "RPO");
    for step in &report.steps {
        println!(
            "{:<width$}  {:<12} {:>9} {:>9}  {}",
            step.name,
            step.outcome.as_str(),
            format!("{:.1}s", step.duration_ms as f64 / 1000.0),
            age(step.backup_age_seconds),
            step.detail
        );
        if let Some(next) = &step.next {
            println!("{:<width$}  {:<12} {:>9} {:>9}  next: {next}", "", "", "", "");
        }
    }
    println!();
    println!(
        "{}: total {:.1}s (the RTO this recovery demonstrated), oldest backup {} old (the RPO); report {}",
        if report.passed { "recovered" } else { "recovery FAILED" },
        report.rto_seconds,
        age(report.rpo_seconds),
        report.report
    );
    if report.steps.iter().any(|step| step.outcome == StepOutcome::Failed) {
        eprintln!("the run stopped at the failed step; follow its `next:` line, then run `recover --apply` again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_names_or_urls() {
        assert_eq!(
            parse_bucket("keshless-documents-new").unwrap().to_string(),
            "gs://keshless-documents-new"
        );
        assert_eq!(parse_bucket("gs://b-new/docs").unwrap().to_string(), "gs://b-new/docs");
        assert!(parse_bucket("file:///tmp/new").is_ok());
        assert!(parse_bucket("Bad_Bucket!").unwrap_err().contains("accepted"));
    }
}
