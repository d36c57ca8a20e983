//! `keshless-ops backups`: list, show, verify and pin stored backups of
//! every class (reads BACKUP_STORE only).

use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};

use crate::backups::catalog::{self, Catalog, Completeness, Entry, Kind};
use crate::backups::pins;
use crate::backups::verify::{self, Filter, Mode, Options, Sample, Selection, Verified};

/// List, show, verify and pin stored backups. Ids are the ones
/// `backups list` prints; any object key of a backup, or a part of its id
/// that names it alone, works too.
#[derive(Debug, clap::Subcommand)]
pub enum BackupsCmd {
    /// Every backup, newest first: id, class, database, age, size, state
    /// (incomplete and unreadable ones flagged) and pin.
    List {
        /// Which backups.
        #[arg(value_enum, default_value_t = Kind::All)]
        class: Kind,
        /// Only this database's PostgreSQL backups.
        #[arg(long, value_name = "DATABASE")]
        database: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One backup in detail: its objects, manifest (tables and row counts,
    /// checksums), globals (roles, extensions) or encryption header where it
    /// has them, size, age and pin.
    Show {
        /// Backup id, e.g. daily/2026-11-26/keshless-20261126T020000Z or secrets/weekly/2026-11-22.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-read backups and prove them against what was recorded: size and
    /// SHA-256 against the manifest, and for PostgreSQL the archive's table of
    /// contents read to the end by `pg_restore --list` (no database needed).
    /// Exits 3 when anything fails, with a table of what and why.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["latest", "all", "ids"])))]
    Verify {
        /// The newest complete backup of each class (and of each database).
        #[arg(long)]
        latest: bool,
        /// Every backup (incomplete ones are skipped and counted).
        #[arg(long)]
        all: bool,
        /// These backups.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        /// Only backups of this class.
        #[arg(long, value_enum, default_value_t = Kind::All)]
        class: Kind,
        /// Only backups taken on or after this day (YYYY-MM-DD, UTC).
        #[arg(long, value_name = "DATE", value_parser = super::parse_date)]
        since: Option<NaiveDate>,
        /// Only the Nth of M fixed slices of the selected backups (by a hash of
        /// their ids): `--sample 1/4` … `4/4` on four runs verify each once.
        #[arg(long, value_name = "N/M")]
        sample: Option<Sample>,
        /// Compare the store's own size and CRC32C with the manifests instead
        /// of downloading (for --all over a large store).
        #[arg(long)]
        quick: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Keep a backup past retention: place a hold on each of its objects
    /// (on GCS a temporary object hold, which not even lifecycle rules
    /// override) with the reason recorded next to it. `cleanup` keeps it as
    /// "pinned: REASON" and fills its safety floors with other backups.
    Pin {
        /// Backup id.
        id: String,
        /// Why it is kept (an incident, a ticket): shown by list, show and cleanup.
        #[arg(long)]
        reason: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Release a pinned backup's holds: retention decides it again on its next run.
    Unpin {
        /// Backup id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl BackupsCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let command = match &self {
            BackupsCmd::List { .. } => "backups list",
            BackupsCmd::Show { .. } => "backups show",
            BackupsCmd::Verify { .. } => "backups verify",
            BackupsCmd::Pin { .. } => "backups pin",
            BackupsCmd::Unpin { .. } => "backups unpin",
        };
        if let Err(code) = super::check_environment(command) {
            return Ok(code);
        }
        if let BackupsCmd::Pin { reason, .. } = &self {
            if let Err(problem) = pins::reason(reason) {
                eprintln!("{problem}");
                return Ok(ExitCode::from(2));
            }
        }
        let store = match super::open_backup_store().await? {
            Ok(store) => store,
            Err(code) => return Ok(code),
        };
        let catalog = Catalog::load(store.as_ref()).await?;
        let now = Utc::now();
        match self {
            BackupsCmd::List { class, database, json } => {
                let listed: Vec<&Entry> = catalog.of(class, database.as_deref()).collect();
                if json {
                    println!("{}", serde_json::to_string_pretty(&listed)?);
                } else {
                    print_list(&listed, now);
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupsCmd::Show { id, json } => {
                let entry = match catalog.resolve(&id) {
                    Ok(entry) => entry,
                    Err(problem) => return refuse(&problem),
                };
                let details = catalog::details(store.as_ref(), entry).await?;
                if json {
                    let mut shown = serde_json::to_value(entry)?;
                    if let (Some(shown), Some(details)) = (shown.as_object_mut(), details.as_object()) {
                        shown.extend(details.clone());
                    }
                    println!("{}", serde_json::to_string_pretty(&shown)?);
                } else {
                    print_show(entry, &details, now);
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupsCmd::Verify {
                latest,
                all,
                ids,
                class,
                since,
                sample,
                quick,
                json,
            } => {
                let selection = match (latest, all) {
                    (true, _) => Selection::Latest,
                    (_, true) => Selection::All,
                    _ => Selection::Ids(ids),
                };
                let filter = Filter {
                    kind: class,
                    since,
                    sample,
                };
                let selected = match verify::select(&catalog, &selection, &filter) {
                    Ok(selected) => selected,
                    Err(problem) => return refuse(&problem),
                };
                let dumps = match crate::config::DumpConfig::for_restore_from_env() {
                    Ok(dumps) => dumps,
                    Err(error) => {
                        eprintln!("{error}");
                        return Ok(ExitCode::from(super::exit::CONFIG));
                    }
                };
                let options = Options {
                    mode: if quick { Mode::Quick } else { Mode::Full },
                    pg_restore: crate::postgres::process::pg_restore_program(),
                    secrets_key: super::variable("SECRETS_ENCRYPTION_KEY").map(Into::into),
                    // Configured: the operator wants encrypted dumps read through.
                    identities: if quick { None } else { dumps.identities().await? },
                };
                let results = verify::verify_all(store.as_ref(), &selected.verify, &options).await;
                let failed: Vec<&Verified> = results.iter().filter(|result| !result.ok).collect();
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "mode": options.mode,
                            "sample": sample.map(|sample| sample.to_string()),
                            "candidates": selected.candidates,
                            "verified": results.len(),
                            "failed": failed.len(),
                            "skipped": selected.skipped.iter().map(|entry| &entry.id).collect::<Vec<_>>(),
                            "bytes_read": results.iter().map(|result| result.bytes_read).sum::<u64>(),
                            "results": results,
                        }))?
                    );
                } else {
                    print_verified(&results, &selected.skipped, sample, selected.candidates);
                }
                for result in &failed {
                    eprintln!("FAILED {}: {}", result.id, result.why());
                }
                Ok(if failed.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(super::exit::FINDINGS)
                })
            }
            BackupsCmd::Pin { id, reason, json } => {
                let entry = match catalog.resolve(&id) {
                    Ok(entry) => entry,
                    Err(problem) => return refuse(&problem),
                };
                let reason = pins::reason(&reason).expect("checked above");
                match pins::pin(store.as_ref(), entry, &reason, super::operator(), now).await {
                    Ok(report) if json => println!("{}", serde_json::to_string_pretty(&report)?),
                    Ok(report) => println!(
                        "pinned {}: {} objects held (\"{reason}\"); cleanup keeps it until `keshless-ops backups unpin {}`",
                        report.id,
                        report.objects.len(),
                        report.id
                    ),
                    Err(error) => {
                        eprintln!("{error}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupsCmd::Unpin { id, json } => {
                let entry = match catalog.resolve(&id) {
                    Ok(entry) => entry,
                    Err(problem) => return refuse(&problem),
                };
                match pins::unpin(store.as_ref(), entry).await {
                    Ok(report) if json => println!("{}", serde_json::to_string_pretty(&report)?),
                    Ok(report) => match &report.released {
                        Some(hold) => println!(
                            "unpinned {} ({}): {} objects released; retention decides it again on its next run",
                            report.id,
                            hold.describe(),
                            report.objects.len()
                        ),
                        None => println!("{} was not pinned: nothing held, nothing changed", report.id),
                    },
                    Err(error) => {
                        eprintln!("{error}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// An id that names no backup, or several: said, exit 2 (a usage error).
fn refuse(problem: &catalog::IdError) -> anyhow::Result<ExitCode> {
    eprintln!("{problem}");
    Ok(ExitCode::from(2))
}

fn age(time: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    time.map(|time| {
        let hours = (now - time).num_hours();
        if hours < 48 {
            format!("{hours}h")
        } else {
            format!("{}d", hours / 24)
        }
    })
    .unwrap_or_else(|| "-".into())
}

fn state(entry: &Entry) -> String {
    match (entry.state, &entry.problem) {
        (Completeness::Complete, _) => "complete".to_owned(),
        (Completeness::Incomplete, _) => "INCOMPLETE: no manifest".to_owned(),
        (Completeness::Unreadable, Some(problem)) => format!("UNREADABLE: {problem}"),
        (Completeness::Unreadable, None) => "UNREADABLE".to_owned(),
    }
}

fn print_list(listed: &[&Entry], now: DateTime<Utc>) {
    if listed.is_empty() {
        println!("no backups");
        return;
    }
    println!(
        "{:<55} {:<17} {:<20} {:>6} {:>22}  {:<9} state",
        "id", "class", "database", "age", "size", "pinned"
    );
    for entry in listed {
        let pinned = match &entry.pinned {
            Some(_) => "PINNED",
            None => "-",
        };
        println!(
            "{:<55} {:<17} {:<20} {:>6} {:>22}  {pinned:<9} {}",
            entry.id,
            entry.class.as_str(),
            entry.database.as_deref().unwrap_or("-"),
            age(entry.time, now),
            super::bytes_and_human(entry.size_bytes),
            state(entry)
        );
    }
}

fn print_show(entry: &Entry, details: &serde_json::Value, now: DateTime<Utc>) {
    let line = |label: &str, value: String| println!("{label:<12} {value}");
    line("id", entry.id.clone());
    line("class", entry.class.as_str().to_owned());
    if let Some(database) = &entry.database {
        line("database", database.clone());
    }
    line("state", state(entry));
    line(
        "taken",
        entry
            .time
            .map(|time| format!("{} ({} ago)", time.to_rfc3339(), age(Some(time), now)))
            .unwrap_or_else(|| "-".into()),
    );
    line(
        "size",
        format!(
            "{} bytes ({}) in {} objects",
            entry.size_bytes,
            super::human_bytes(entry.size_bytes),
            entry.objects.len()
        ),
    );
    line(
        "pinned",
        match &entry.pinned {
            None => "no".to_owned(),
            Some(hold) => format!(
                "yes: {} (since {}, by {})",
                if hold.reason.is_empty() {
                    "a hold placed outside keshless-ops"
                } else {
                    hold.reason.as_str()
                },
                hold.since.map(|time| time.to_rfc3339()).unwrap_or_else(|| "?".into()),
                hold.by.as_deref().unwrap_or("?")
            ),
        },
    );
    for object in &entry.objects {
        let held = if object.hold.is_some() { "  [held]" } else { "" };
        line("object", format!("{} ({} bytes){held}", object.key, object.size));
    }
    if let Some(manifest) = &entry.manifest {
        line(
            "manifest",
            format!(
                "version {}, {} of PostgreSQL {}, {}",
                manifest.version, manifest.pg_dump_version, manifest.server_version, manifest.idempotency_key
            ),
        );
        line(
            "dump",
            format!(
                "{} bytes, SHA-256 {}{}",
                manifest.size_bytes,
                manifest.sha256,
                manifest
                    .dump_crc32c
                    .as_ref()
                    .map(|crc| format!(", CRC32C {crc}"))
                    .unwrap_or_default()
            ),
        );
        let rows: i64 = manifest.tables.iter().map(|table| table.rows).sum();
        line("tables", format!("{} tables, {rows} rows", manifest.tables.len()));
        for table in &manifest.tables {
            println!("{:<12}   {}.{}: {}", "", table.schema, table.table, table.rows);
        }
        match &manifest.globals {
            Some(globals) => line(
                "globals",
                format!(
                    "{} ({} bytes, SHA-256 {})",
                    globals.key, globals.size_bytes, globals.sha256
                ),
            ),
            None => line(
                "globals",
                "none (manifest version 1: restore with --no-owner)".to_owned(),
            ),
        }
    }
    if let Some(globals) = details.get("globals") {
        let names = |field: &str| {
            globals[field]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| item.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|names| !names.is_empty())
                .unwrap_or_else(|| "-".to_owned())
        };
        line("owner", globals["database_owner"].as_str().unwrap_or("-").to_owned());
        line("roles", names("roles"));
        line("extensions", names("extensions"));
    }
    if let Some(encryption) = details.get("encryption") {
        line(
            "encryption",
            format!(
                "{} (envelope {} v{}), key fingerprint {}",
                encryption["cipher"].as_str().unwrap_or("?"),
                encryption["format"].as_str().unwrap_or("?"),
                encryption["version"],
                encryption["key_fingerprint"].as_str().unwrap_or("?")
            ),
        );
        line(
            "kdf",
            format!(
                "{} m={} t={} p={}",
                encryption["kdf"]["alg"].as_str().unwrap_or("?"),
                encryption["kdf"]["m"],
                encryption["kdf"]["t"],
                encryption["kdf"]["p"]
            ),
        );
        line("created", encryption["created_at"].as_str().unwrap_or("?").to_owned());
    }
    if let Some(summary) = details.get("summary") {
        line(
            "inventory",
            format!(
                "{} objects, {} bytes of {}",
                summary["object_count"],
                summary["total_bytes"],
                summary["documents_store"].as_str().unwrap_or("?")
            ),
        );
    }
    if let Some(report) = details.get("report") {
        let steps = report["steps"].as_array().map_or(0, Vec::len);
        line("drill", format!("passed: {}, {steps} steps", report["passed"]));
    }
}

fn print_verified(results: &[Verified], skipped: &[&Entry], sample: Option<Sample>, candidates: usize) {
    if let Some(sample) = sample {
        println!(
            "sample {sample}: {} of {candidates} backups",
            results.len() + skipped.len()
        );
    }
    if results.is_empty() {
        println!("nothing to verify");
    } else {
        println!("{:<55} {:<17} {:<7} detail", "id", "class", "result");
        for result in results {
            let (verdict, detail) = if result.ok {
                let checks: Vec<String> = result
                    .checks
                    .iter()
                    .map(|check| format!("{} {}", check.name, check.detail))
                    .collect();
                ("OK", checks.join("; "))
            } else {
                ("FAILED", result.why())
            };
            println!("{:<55} {:<17} {verdict:<7} {detail}", result.id, result.class.as_str());
        }
    }
    for entry in skipped {
        println!(
            "{:<55} {:<17} {:<7} incomplete (no manifest)",
            entry.id,
            entry.class.as_str(),
            "skipped"
        );
    }
    let failed = results.iter().filter(|result| !result.ok).count();
    let read: u64 = results.iter().map(|result| result.bytes_read).sum();
    println!(
        "{} verified ({} read): {} OK, {failed} FAILED{}",
        results.len(),
        super::bytes_and_human(read),
        results.len() - failed,
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; {} incomplete skipped", skipped.len())
        }
    );
}
