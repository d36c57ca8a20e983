//! `keshless-ops restore postgres`: the command around [`crate::postgres::restore`].

use std::process::ExitCode;
use std::str::FromStr;

use anyhow::anyhow;

use crate::config::DatabaseUrl;
use crate::postgres::restore::{restore, select, Selection};

/// The CLI entry point.
pub async fn run(
    selection: Selection,
    target_url: &str,
    create_database: bool,
    clean: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let target = DatabaseUrl::from_str(target_url).map_err(|problem| anyhow!("--target-url: {problem}"))?;
    let store = match super::open_backup_store().await? {
        Ok(store) => store,
        Err(code) => return Ok(code),
    };
    let (id, manifest) = select(store.as_ref(), &selection).await?;
    eprintln!(
        "restoring {id} ({} bytes, {} tables, taken {}) into {target}",
        manifest.size_bytes,
        manifest.tables.len(),
        manifest.started_at
    );
    let report = restore(store.as_ref(), &id, &manifest, &target, create_database, clean).await?;
    if json {
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
