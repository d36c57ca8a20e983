//! `keshless-ops restore postgres`: the command around [`crate::postgres::restore`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::anyhow;

use crate::config::DatabaseUrl;
use crate::postgres::progress::Progress;
use crate::postgres::restore::{restore_with, select_for, Ownership, RestoreOptions, RestoreReport, Selection};

/// What the command line asked for.
#[derive(Debug)]
pub struct Arguments {
    pub selection: Selection,
    /// `--database`: whose backup `--latest`/`--date` pick.
    pub database: Option<String>,
    pub target_url: String,
    pub ownership: Ownership,
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
    let dumps = match crate::config::DumpConfig::for_restore_from_env() {
        Ok(dumps) => dumps,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(super::exit::CONFIG));
        }
    };
    let (id, manifest) = select_for(store.as_ref(), &arguments.selection, arguments.database.as_deref()).await?;
    let identities = dumps.identities_for(&manifest.encoding).await?;
    eprintln!(
        "restoring {id} (database {}, {} bytes, {}, {} tables, taken {}) into {target}{}; {}",
        manifest.database,
        manifest.size_bytes,
        manifest.encoding.describe(),
        manifest.tables.len(),
        manifest.started_at,
        if arguments.jobs > 1 {
            format!(" with {} parallel jobs", arguments.jobs)
        } else {
            String::new()
        },
        arguments.ownership.describe()
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
        ownership: arguments.ownership,
        identities,
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
    } else {
        print_report(&report);
    }
    Ok(if report.is_faithful() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "the restored database differs from the backup: {} tables, {} owners/privileges/sequences",
            report.mismatches.len(),
            report.fidelity_differences.len()
        );
        ExitCode::FAILURE
    })
}

/// The summary table: what was restored how, what was created, what differs.
fn print_report(report: &RestoreReport) {
    println!("{:<22} {}", "backup", report.id);
    println!("{:<22} {}", "database", report.database);
    println!(
        "{:<22} {}, SHA-256 verified",
        "dump",
        super::bytes_and_human(report.bytes)
    );
    println!("{:<22} {}", "ownership", report.ownership.describe());
    let rows = if report.mismatches.is_empty() {
        format!("{} tables with exactly the row counts of the backup", report.tables)
    } else {
        format!("{} of {} tables DIFFER (below)", report.mismatches.len(), report.tables)
    };
    println!("{:<22} {rows}", "rows");
    let fidelity = match (
        report.fidelity_checked,
        report.fidelity_differences.len(),
        report.ownership,
    ) {
        (false, _, _) => "not recorded in this backup (made before manifest version 2)".to_owned(),
        (true, 0, Ownership::NoOwner) => {
            "sequence positions as in the backup (owners not compared: --no-owner)".to_owned()
        }
        (true, 0, _) => "every owner, privilege and sequence position as in the backup".to_owned(),
        (true, differences, _) => format!("{differences} DIFFER (below)"),
    };
    println!("{:<22} {fidelity}", "owners and privileges");
    for note in &report.notes {
        println!("{:<22} {note}", "note");
    }
    if !report.created_roles.is_empty() {
        println!();
        println!("created roles (no passwords):");
        for role in &report.created_roles {
            let left_out = if role.attributes_left_out.is_empty() {
                String::new()
            } else {
                format!(
                    " (without {}: the restoring user may not grant it)",
                    role.attributes_left_out.join(", ")
                )
            };
            println!("  {}{}{left_out}", role.name, if role.login { " (LOGIN)" } else { "" });
            for refused in &role.settings_left_out {
                println!("    left out, the target refused it: {refused}");
            }
        }
        let logins: Vec<&str> = report
            .created_roles
            .iter()
            .filter(|role| role.login)
            .map(|role| role.name.as_str())
            .collect();
        if !logins.is_empty() {
            println!("set a password for each login role before the application connects, e.g.:");
            for name in logins {
                println!("  psql \"$RESTORE_TARGET_URL\" -c '\\password {name}'");
            }
        }
    }
    if !report.mismatches.is_empty() {
        println!();
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
    if !report.fidelity_differences.is_empty() {
        println!();
        println!("{:<20} {:<40} problem", "kind", "object");
        for difference in &report.fidelity_differences {
            println!("{:<20} {:<40} {}", difference.kind, difference.name, difference.problem);
        }
    }
}
