//! `keshless-ops cleanup`: apply the retention policy from the command line,
//! with exactly the decision code the `cleanup-old-backups` job runs.

use std::process::ExitCode;

use std::collections::BTreeMap;

use crate::retention::{self, Class, Entry, Policy, Report};

/// Apply retention to the backup store: delete expired backups and abandoned
/// incomplete ones, always keeping the safety floors and
/// secrets/latest.json.encrypted, and print every backup with its decision
/// and reason; mirrored documents (documents/objects/) only when they are
/// deleted, plus a count of those kept (--json lists every one). Reads BACKUP_STORE (or GCS_BACKUPS_BUCKET) and the RETENTION_*
/// variables only. Exits 1 if any deletion failed, or if this host's clock and
/// the store's (the creation time of a probe object it writes and deletes
/// under keshless-ops/clock-probes/) differ by more than an hour: then nothing
/// is deleted and the table shows what a dry run decides.
#[derive(Debug, clap::Args)]
pub struct CleanupCmd {
    /// Decide and report, delete nothing. A real run right after deletes exactly
    /// what this lists (unless the store changed in between).
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl CleanupCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Err(code) = super::check_environment("cleanup") {
            return Ok(code);
        }
        let retention_config = match crate::config::RetentionConfig::from_env() {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{error}");
                return Ok(ExitCode::from(super::exit::CONFIG));
            }
        };
        let store = match super::open_backup_store().await? {
            Ok(store) => store,
            Err(code) => return Ok(code),
        };
        let policy = Policy::from_config(&retention_config);
        let now = chrono::Utc::now();
        // Ages are measured against this host's clock: a wrong one deletes
        // the wrong backups. A dry run writes nothing, not even the probe.
        let skew = match self.dry_run {
            true => None,
            false => retention::clock_skew(
                now,
                crate::storage::server_time(store.as_ref()).await?,
                retention::max_clock_skew(),
            ),
        };
        if let Some(skew) = &skew {
            eprintln!("refusing to delete anything: {skew}; below is what a dry run decides");
        }
        let report = retention::run(store.as_ref(), &policy, now, self.dry_run || skew.is_some()).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_table(&report);
        }
        Ok(if report.failed > 0 || skew.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn print_table(report: &Report) {
    // Thousands of kept mirror copies would drown everything else: they are
    // counted by reason below instead of listed.
    let is_kept_mirror = |entry: &&Entry| entry.class == Class::DocumentsMirror && entry.decision != "delete";
    let mut kept_mirror: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in report.entries.iter().filter(is_kept_mirror) {
        *kept_mirror.entry(entry.reason.as_str()).or_default() += 1;
    }
    if report.entries.is_empty() {
        println!("no backups found");
    } else {
        let decision_width = if report.dry_run { 15 } else { 8 };
        println!(
            "{:<16} {:<72} {:>6}  {:<decision_width$} reason",
            "class", "object", "age", "decision"
        );
        for entry in report.entries.iter().filter(|entry| !is_kept_mirror(entry)) {
            let age = entry
                .age_days
                .map(|days| format!("{days}d"))
                .unwrap_or_else(|| "-".into());
            let decision = match (entry.decision, report.dry_run, entry.deleted, &entry.error) {
                ("delete", true, _, _) => "would delete",
                ("delete", false, true, _) => "deleted",
                ("delete", false, false, Some(_)) => "DELETE FAILED",
                (label, _, _, _) => label,
            };
            let reason = match &entry.error {
                Some(error) => format!("{}; {error}", entry.reason),
                None => entry.reason.clone(),
            };
            // The data object (its manifest goes with it); names are escaped
            // because object names may hold control characters.
            let object = entry.objects.first().unwrap_or(&entry.id);
            let more = match entry.objects.len() {
                0 | 1 => String::new(),
                count => format!(" (+{} more)", count - 1),
            };
            println!(
                "{:<16} {:<72} {:>6}  {:<decision_width$} {reason}",
                entry.class.as_str(),
                format!("{}{more}", object.escape_debug()),
                age,
                decision
            );
        }
    }
    if !kept_mirror.is_empty() {
        let total: usize = kept_mirror.values().sum();
        let reasons: Vec<String> = kept_mirror
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        println!(
            "{:<16} {total} mirrored objects kept (not listed; --json lists them): {}",
            Class::DocumentsMirror.as_str(),
            reasons.join("; ")
        );
    }
    let anomalies: Vec<_> = report.entries.iter().filter(|entry| entry.anomaly).collect();
    if !anomalies.is_empty() {
        println!();
        println!("{} anomalies (kept; a person should look):", anomalies.len());
        for entry in anomalies {
            println!(
                "  {} {}: {}",
                entry.class.as_str(),
                entry.id.escape_debug(),
                entry.reason
            );
        }
    }
    println!();
    println!("{}", report.summary());
}
