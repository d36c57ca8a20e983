//! `keshless-ops restore postgres`: the command around [`crate::postgres::restore`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::anyhow;

use crate::config::DatabaseUrl;
use crate::postgres::progress::Progress;
use crate::postgres::restore::{restore_with, select, RestoreOptions, Selection};

/// What the command line asked for.
#[derive(Debug)]
pub struct Arguments {
    pub selection: Selection,
    pub target_url: String,
    pub create_database: bool,
    pub clean: bool,
    pub jobs: u32,
    pub temp_dir: Option<PathBuf>,
    pub json: bool,
}

/// The CLI entry point.
pub async fn run(arguments: Arguments) -> anyhow::Result<ExitCode> {
    let target = DatabaseUrl::from_str(&arguments.target_url).map_err(|problem| anyhow!("--target-url: {problem}"))?;
    let store = match super::open_backup_store().await? {
        Ok(store) => store,
        Err(code) => return Ok(code),
    };
    let (id, manifest) = select(store.as_ref(), &arguments.selection).await?;
    eprintln!(
        "restoring {id} ({} bytes, {} tables, taken {}) into {target}{}",
        manifest.size_bytes,
        manifest.tables.len(),
        manifest.started_at,
        if arguments.jobs > 1 {
            format!(" with {} parallel jobs", arguments.jobs)
        } else {
            String::new()
        }
    );
    let progress = if arguments.json {
        Progress::hidden()
    } else {
        Progress::on_terminal()
    };
    let options = RestoreOptions {
        create_database: arguments.create_database,
        clean: arguments.clean,
        jobs: arguments.jobs,
        temp_dir: arguments.temp_dir,
        progress: progress.clone(),
        ..RestoreOptions::default()
    };
    // Ctrl-C drops the restore: pg_restore is killed and the temporary file
    // of a parallel restore removed (both are owned by guards).
    let outcome = tokio::select! {
        outcome = restore_with(store.as_ref(), &id, &manifest, &target, &options) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    progress.finish();
    let Some(outcome) = outcome else {
        eprintln!(
            "interrupted: pg_restore stopped and no temporary file left behind; the target database may be \
             incomplete{}",
            if arguments.jobs > 1 {
                " (a parallel restore is not one transaction): drop it or restore again with --clean"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(130));
    };
    let report = outcome?;
    if arguments.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.mismatches.is_empty() {
        println!(
            "restored {}: SHA-256 verified, {} tables with exactly the row counts of the backup",
            report.id, report.tables
        );
    } else {
        println!("{:<50} {:>12} {:>12}", "table", "backup", "restored");
        for mismatch in &report.mismatches {
            let restored = mismatch
                .restored
                .map(|rows| rows.to_string())
                .unwrap_or_else(|| "missing".into());
            let expected = mismatch
                .expected
                .map(|rows| rows.to_string())
                .unwrap_or_else(|| "not in backup".into());
            println!("{:<50} {:>12} {:>12}", mismatch.table, expected, restored);
        }
    }
    Ok(if report.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} tables differ from the backup", report.mismatches.len());
        ExitCode::FAILURE
    })
}
