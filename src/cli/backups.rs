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
        /// Only this database's backups.
        #[arg(long, value_name = "DATABASE")]
        database: Option<String>,
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
            BackupsCmd::List { json, database, .. } => {
                let mut listed = layout::list(store.as_ref(), None).await?;
                if let Some(database) = &database {
                    listed.retain(|backup| database_of(backup).as_deref() == Some(database.as_str()));
                }
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

/// The database a backup is of: its manifest's, else what its name says.
fn database_of(backup: &Listed) -> Option<String> {
    backup
        .manifest
        .as_ref()
        .map(|manifest| manifest.database.clone())
        .or_else(|| layout::parse_base(&backup.base).map(|(_, database, _)| database))
}

fn print_table(listed: &[Listed]) {
    if listed.is_empty() {
        println!("no PostgreSQL backups");
        return;
    }
    let now = chrono::Utc::now();
    println!(
        "{:<55} {:<20} {:>8} {:>12} {:>7} {:<6}  state",
        "id", "database", "age", "size", "tables", "roles"
    );
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
        // Whether the backup carries its roles (manifest version 2): one
        // without can only be restored with --no-owner.
        let roles = match &backup.manifest {
            Some(manifest) if manifest.globals.is_some() => "yes",
            Some(_) => "no",
            None => "-",
        };
        let database = database_of(backup).unwrap_or_else(|| "-".into());
        println!(
            "{:<55} {database:<20} {age:>8} {size:>12} {tables:>7} {roles:<6}  {state}",
            backup.id
        );
    }
}
