//! `keshless-ops drill`: the disaster-recovery rehearsal, run here and now
//! with the same code as the `dr-drill` job.

use std::process::ExitCode;

use crate::jobs::dr_drill::{DrDrill, DrillMode, DrillParams, Report};

/// Rehearse disaster recovery now: restore the newest PostgreSQL backup into
/// a scratch database (always dropped) and verify its SHA-256 and row counts,
/// decrypt the newest secrets backup and compare it with the previous one,
/// check the newest documents inventory against the documents bucket. Prints
/// each step's duration (RTO) and backup age (RPO), writes the report to
/// drills/YYYY-MM-DD.json, and exits 1 if any step failed.
///
/// --mode full rehearses the whole recovery instead: `recover --apply` into
/// the scratch Secret Manager project (DRILL_SECRET_MANAGER_PROJECT), scratch
/// databases keshless_drill_<date>_<random>_<database> on the drill's server
/// and the scratch store (DRILL_DOCUMENTS_STORE), recover's own checks, then
/// a teardown of everything it created, whatever failed. It refuses
/// production targets before creating anything.
#[derive(Debug, clap::Args)]
pub struct DrillCmd {
    /// What to rehearse: database (restore each backup into a scratch
    /// database, decrypt the secrets, check the inventory) or full (the
    /// whole recovery into scratch targets, torn down afterwards).
    #[arg(long, value_enum, default_value_t = DrillMode::Database)]
    pub mode: DrillMode,
    /// Check about N documents of the inventory (spread evenly) instead of all.
    #[arg(long, value_name = "N")]
    pub documents_sample: Option<u64>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl DrillCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = match crate::config::DrillConfig::from_env() {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{error}");
                return Ok(ExitCode::from(super::exit::CONFIG));
            }
        };
        let backups = crate::storage::open(&config.backup_store, config.storage_emulator_host.as_deref()).await?;
        let drill = DrDrill::from_config(&config, backups);
        let key = format!("dr-drill:cli:{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
        let params = DrillParams {
            documents_sample: self.documents_sample,
            mode: self.mode,
        };
        let report = match drill.rehearse(&key, &params).await {
            Ok(report) => report,
            Err(error) => {
                let configuration = !error.is_transient();
                eprintln!("{}", crate::telemetry::error_chain(&error));
                // Refused credentials are the operator's settings to fix.
                return Ok(if configuration {
                    ExitCode::from(super::exit::CONFIG)
                } else {
                    ExitCode::FAILURE
                });
            }
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_table(&report);
        }
        Ok(if report.passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// A duration or an age, in the largest unit that reads well.
pub(crate) fn human_seconds(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn print_table(report: &Report) {
    println!("{:<18} {:<6} {:>9} {:>9}  detail", "step", "result", "RTO", "RPO");
    for step in &report.steps {
        let rto = format!("{:.1}s", step.duration_ms as f64 / 1000.0);
        let rpo = step.backup_age_seconds.map(human_seconds).unwrap_or_else(|| "-".into());
        let (result, detail) = match &step.error {
            None => ("pass", step.detail.clone()),
            Some(error) => ("FAIL", error.clone()),
        };
        println!("{:<18} {:<6} {:>9} {:>9}  {detail}", step.name, result, rto, rpo);
    }
    println!();
    if let (Some(rto), rpo) = (report.rto_seconds, report.rpo_seconds) {
        println!(
            "whole recovery: {rto:.1}s (the RTO this drill demonstrated), oldest backup {} old (the RPO)",
            rpo.map(human_seconds).unwrap_or_else(|| "-".into())
        );
    }
    println!("{} — report {}", report.summary(), report.report);
}
