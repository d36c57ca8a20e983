//! `keshless-ops restore documents`: the command around [`crate::documents::restore`].

use std::io::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};

use crate::documents::restore::{self, ObjectResult, Point, Request};

/// The CLI entry point. Exit codes: 0 done, 3 some objects were unavailable
/// (the rest was restored), 1 error, 78 configuration.
pub async fn run(
    prefix: String,
    as_of: Option<DateTime<Utc>>,
    inventory: Option<NaiveDate>,
    from_mirror: bool,
    dry_run: bool,
    delete_newer: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let point = match (as_of, inventory) {
        (Some(time), None) => Point::AsOf(time),
        (None, Some(date)) => Point::Inventory { date, from_mirror },
        _ => unreachable!("clap requires exactly one of --as-of and --inventory"),
    };
    let (backups, documents) = match super::open_backup_and_documents_stores().await? {
        Ok(stores) => stores,
        Err(code) => return Ok(code),
    };
    let request = Request {
        prefix,
        point,
        dry_run,
        delete_newer,
    };
    eprintln!(
        "restoring {} in {} to {}{}",
        if request.prefix.is_empty() {
            "every object".to_owned()
        } else {
            format!("{:?}", request.prefix)
        },
        documents.location(),
        match &request.point {
            Point::AsOf(time) => format!("its state at {}", time.to_rfc3339()),
            Point::Inventory {
                date,
                from_mirror: true,
            } => format!("the inventory of {date}, from the mirror"),
            Point::Inventory {
                date,
                from_mirror: false,
            } => format!("the inventory of {date}"),
        },
        if dry_run { " (dry run: nothing changes)" } else { "" }
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_failed = None;
    let counts = restore::run(backups.as_ref(), documents.as_ref(), &request, |line| {
        let written = if json {
            serde_json::to_string(line)
                .map_err(std::io::Error::other)
                .and_then(|text| writeln!(out, "{text}"))
        } else if line.result != ObjectResult::Unchanged {
            let verb = match (line.result, line.dry_run) {
                (ObjectResult::Restored, true) => "would restore",
                (ObjectResult::Restored, false) => "restored",
                (ObjectResult::Unavailable, _) => "unavailable",
                (ObjectResult::NewerKept, _) => "newer, kept",
                (ObjectResult::NewerDeleted, true) => "newer, would delete",
                (ObjectResult::NewerDeleted, false) => "newer, deleted",
                (ObjectResult::Unchanged, _) => "unchanged",
            };
            let generation = line
                .generation
                .map(|generation| format!(" @{generation}"))
                .unwrap_or_default();
            writeln!(out, "{verb:<20} {}{generation}", line.name)
        } else {
            Ok(())
        };
        if let Err(error) = written {
            write_failed.get_or_insert(error);
        }
    })
    .await?;
    if let Some(error) = write_failed {
        return Err(anyhow::anyhow!("cannot write the report: {error}"));
    }
    if json {
        writeln!(out, "{}", serde_json::json!({ "summary": counts, "dry_run": dry_run }))?;
    } else {
        writeln!(
            out,
            "{}restored {}, unchanged {}, unavailable {}, newer kept {}, newer deleted {}",
            if dry_run { "dry run: would have " } else { "" },
            counts.restored,
            counts.unchanged,
            counts.unavailable,
            counts.newer_kept,
            counts.newer_deleted
        )?;
    }
    Ok(if counts.unavailable > 0 {
        eprintln!(
            "{} objects could not be restored: their generation no longer exists",
            counts.unavailable
        );
        ExitCode::from(super::exit::FINDINGS)
    } else {
        ExitCode::SUCCESS
    })
}
