//! `keshless-ops backups`: list and verify stored backups.

use std::process::ExitCode;

use crate::postgres::layout::{self, Listed};

/// List and verify stored backups (reads BACKUP_STORE only).
#[derive(Debug, clap::Subcommand)]
pub enum BackupsCmd {
    /// Complete backups, newest first, with age, size and tables; incomplete ones flagged.
    List {
        /// Backup class: postgres.
        #[arg(value_parser = ["postgres"])]
        class: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read a backup and check its size and SHA-256 against its manifest.
    Verify {
        /// Backup id as shown by `backups list`, e.g. daily/2026-11-26/keshless-20261126T020000Z.
        id: String,
    },
}

impl BackupsCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let store = match super::open_backup_store().await? {
            Ok(store) => store,
            Err(code) => return Ok(code),
        };
        match self {
            BackupsCmd::List { json, .. } => {
                let listed = layout::list(store.as_ref(), None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&listed)?);
                } else {
                    print_table(&listed);
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupsCmd::Verify { id } => match layout::verify(store.as_ref(), &id).await {
                Ok(summary) => {
                    println!("{summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(problem) => {
                    eprintln!("verification failed: {problem:#}");
                    Ok(ExitCode::FAILURE)
                }
            },
        }
    }
}

fn print_table(listed: &[Listed]) {
    if listed.is_empty() {
        println!("no PostgreSQL backups");
        return;
    }
    let now = chrono::Utc::now();
    println!("{:<55} {:>8} {:>12} {:>7}  state", "id", "age", "size", "tables");
    for backup in listed {
        let age = backup
            .time()
            .map(|time| {
                let hours = (now - time).num_hours();
                if hours < 48 {
                    format!("{hours}h")
                } else {
                    format!("{}d", hours / 24)
                }
            })
            .unwrap_or_else(|| "-".into());
        let size = backup
            .manifest
            .as_ref()
            .map(|manifest| manifest.size_bytes)
            .or(backup.dump.as_ref().map(|dump| dump.size))
            .map(|bytes| bytes.to_string())
            .unwrap_or_else(|| "-".into());
        let tables = backup
            .manifest
            .as_ref()
            .map(|manifest| manifest.tables.len().to_string())
            .unwrap_or_else(|| "-".into());
        let state = match (&backup.manifest, &backup.dump, &backup.problem) {
            (Some(_), Some(_), _) => "complete".to_owned(),
            (_, _, Some(problem)) => format!("INCOMPLETE: {problem}"),
            (Some(_), None, _) => "INCOMPLETE: manifest without dump".to_owned(),
            (None, _, None) => "INCOMPLETE: no manifest".to_owned(),
        };
        println!("{:<55} {age:>8} {size:>12} {tables:>7}  {state}", backup.id);
    }
}
