//! Retention (SPEC section 6): list every backup, decide with the pure
//! [`policy::decide`], then delete what it says, reporting every backup with
//! its decision and reason. The dry run and the real run share everything up
//! to the deletion itself, so a dry run shows exactly what a real run deletes.
//!
//! The documents mirror (`documents/objects/`) follows the inventories: a
//! mirrored generation goes once no inventory this run keeps references it
//! (see [`mirror`] for the safety rules).
//!
//! Pinned backups (a hold on their objects) are kept with the pin's reason,
//! and a deletion the bucket's retention policy would refuse is kept as
//! "locked until …" (the store's policy is read first): a run never fails on
//! either.
//!
//! Deleting a backup removes its data object first and its manifest last, so
//! a deletion interrupted half-way leaves a backup that is visibly
//! incomplete (and is cleaned up by a later run), never one that looks
//! complete without its data.

pub mod listing;
pub mod mirror;
pub mod policy;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::storage::{BlobStore, ErrorClass, ListOptions, StorageError};
pub use policy::{Backup, Class, Decision, Policy, Reason, State};

/// How far this host's clock and the store's may differ before retention
/// refuses to delete: every age is measured against "now", and a clock that
/// jumped ahead would make young backups look expired.
pub fn max_clock_skew() -> chrono::Duration {
    chrono::Duration::hours(1)
}

/// This host's clock and the store's disagree: retention deletes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockSkew {
    /// This host's time.
    pub local: DateTime<Utc>,
    /// The time the store gave an object written at `local` (see
    /// [`crate::storage::server_time`]).
    pub store: DateTime<Utc>,
    /// `local - store`, in seconds (positive: this host is ahead).
    pub skew_seconds: i64,
    pub limit_seconds: i64,
}

impl std::fmt::Display for ClockSkew {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // To the minute: a skew of 7199.6 s reads as the 2 h it is.
        let seconds = self.skew_seconds.unsigned_abs().div_ceil(60) * 60;
        write!(
            formatter,
            "this host's clock ({}) is {} {} the backup store's ({}), more than the {} allowed: retention \
             deletes nothing until the clocks agree",
            self.local.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            crate::status::human_duration(std::time::Duration::from_secs(seconds)),
            if self.skew_seconds > 0 { "ahead of" } else { "behind" },
            self.store.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            crate::status::human_duration(std::time::Duration::from_secs(self.limit_seconds.unsigned_abs())),
        )
    }
}

/// `Some` when `local` and `store` differ by more than `limit` (either way).
pub fn clock_skew(local: DateTime<Utc>, store: DateTime<Utc>, limit: chrono::Duration) -> Option<ClockSkew> {
    let skew = local - store;
    (skew.abs() > limit).then(|| ClockSkew {
        local,
        store,
        skew_seconds: skew.num_seconds(),
        limit_seconds: limit.num_seconds(),
    })
}

/// A backup with its decision: the plan a run carries out.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    #[serde(flatten)]
    pub backup: Backup,
    #[serde(flatten)]
    pub decision: Decision,
}

/// Lists the store and decides every backup, then the documents mirror
/// (after the inventories' decisions, which it follows). Fails before
/// anything is decided if a listing or a read fails, so a partial listing
/// never deletes.
pub async fn plan(store: &dyn BlobStore, policy: &Policy, now: DateTime<Utc>) -> Result<Vec<Planned>, StorageError> {
    let retention = store.retention_policy().await?;
    let backups = listing::list_backups(store).await?;
    let decisions = policy::decide(&backups, policy, now);
    let mut planned: Vec<Planned> = backups
        .into_iter()
        .zip(decisions)
        .map(|(backup, decision)| Planned { backup, decision })
        .collect();

    let decided: Vec<(&Backup, &Decision)> = planned.iter().map(|item| (&item.backup, &item.decision)).collect();
    let (references, unreadable) = listing::collect_mirror_references(store, &decided).await?;
    // A kept inventory that cannot be read stays kept, now as an anomaly.
    for (id, problem) in unreadable {
        if let Some(item) = planned
            .iter_mut()
            .find(|item| item.backup.class == Class::Inventory && item.backup.id == id)
        {
            item.decision = Decision::Keep(Reason::InventoryUnreadable { problem });
        }
    }

    // Streamed page by page: each object is decided as it arrives, and only
    // its small plan entry is kept for the report.
    let mut objects = store.list(
        crate::documents::layout::OBJECTS_PREFIX,
        ListOptions {
            versions: false,
            page_size: Some(MIRROR_PAGE_SIZE),
        },
    );
    while let Some(object) = objects.try_next().await? {
        let decision = mirror::decide(&object.key, object.updated, &references, policy.mirror_grace, now);
        planned.push(Planned {
            backup: listing::mirror_object(&object),
            decision,
        });
    }
    // Last, so the mirror's references above follow what retention decided,
    // not what the bucket happens to protect this week.
    for item in &mut planned {
        let decision = std::mem::replace(&mut item.decision, Decision::Keep(Reason::NeverDeleted));
        item.decision = policy::hold_back_locked(&item.backup, decision, retention.as_ref(), now);
    }
    Ok(planned)
}

/// Objects per page of the mirror listing.
const MIRROR_PAGE_SIZE: u32 = 1000;

/// What happened to one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub class: Class,
    pub id: String,
    /// The manifest's time (or, when incomplete, the newest write).
    pub time: Option<DateTime<Utc>>,
    /// Whole days between `time` and the run.
    pub age_days: Option<i64>,
    pub decision: &'static str,
    pub reason: String,
    pub rule: Reason,
    pub anomaly: bool,
    pub bytes: u64,
    /// Objects, in deletion order.
    pub objects: Vec<String>,
    /// Whether the objects were deleted (always false in a dry run).
    pub deleted: bool,
    /// Why a deletion failed; the backup's remaining objects were left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub kept: usize,
    pub deleted: usize,
    /// Deletions a dry run would make.
    pub to_delete: usize,
    pub failed: usize,
    pub bytes_freed: u64,
    /// Bytes of the backups decided `delete` (what a dry run would free).
    pub bytes_to_free: u64,
    pub anomalies: usize,
    /// Kept because they are pinned.
    pub pinned: usize,
    /// Kept because the bucket's retention policy protects them for now.
    pub locked: usize,
    pub entries: Vec<Entry>,
    /// Transient if any deletion failed transiently, else permanent; `None`
    /// when nothing failed.
    #[serde(skip)]
    pub failure_class: Option<ErrorClass>,
}

impl Report {
    /// One line for logs and the ledger.
    pub fn summary(&self) -> String {
        let mut kept = self.kept.to_string();
        if self.pinned > 0 || self.locked > 0 {
            kept = format!(
                "{kept} ({} pinned, {} locked by the bucket's retention policy)",
                self.pinned, self.locked
            );
        }
        if self.dry_run {
            format!(
                "dry run: {} to delete ({} bytes), {kept} kept, {} anomalies",
                self.to_delete, self.bytes_to_free, self.anomalies
            )
        } else {
            format!(
                "{} deleted ({} bytes freed), {kept} kept, {} failed, {} anomalies",
                self.deleted, self.bytes_freed, self.failed, self.anomalies
            )
        }
    }
}

/// Plans and, unless `dry_run`, deletes. A failed deletion does not stop the
/// others; it is recorded in its entry and in `failed`.
pub async fn run(
    store: &dyn BlobStore,
    policy: &Policy,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Report, StorageError> {
    let planned = plan(store, policy, now).await?;
    Ok(execute(store, planned, now, dry_run).await)
}

/// Carries out a plan.
pub async fn execute(store: &dyn BlobStore, planned: Vec<Planned>, now: DateTime<Utc>, dry_run: bool) -> Report {
    let mut report = Report {
        dry_run,
        now,
        kept: 0,
        deleted: 0,
        to_delete: 0,
        failed: 0,
        bytes_freed: 0,
        bytes_to_free: 0,
        anomalies: 0,
        pinned: 0,
        locked: 0,
        entries: Vec::with_capacity(planned.len()),
        failure_class: None,
    };
    for Planned { backup, decision } in planned {
        let time = backup.time();
        let mut entry = Entry {
            class: backup.class,
            id: backup.id.clone(),
            time,
            age_days: time.map(|time| (now - time).num_days()),
            decision: decision.label(),
            reason: decision.reason().to_string(),
            rule: decision.reason().clone(),
            anomaly: decision.reason().is_anomaly(),
            bytes: backup.bytes(),
            objects: backup.objects.iter().map(|object| object.key.clone()).collect(),
            deleted: false,
            error: None,
        };
        if entry.anomaly {
            report.anomalies += 1;
            tracing::warn!(backup.class = %backup.class, backup.id = %backup.id, reason = %entry.reason, "retention anomaly");
        }
        match decision.reason() {
            Reason::Pinned { .. } => report.pinned += 1,
            Reason::LockedUntil { .. } => report.locked += 1,
            _ => {}
        }
        if !decision.is_delete() {
            report.kept += 1;
        } else if dry_run {
            report.to_delete += 1;
            report.bytes_to_free += entry.bytes;
        } else {
            report.to_delete += 1;
            report.bytes_to_free += entry.bytes;
            match delete_backup(store, &backup).await {
                Ok(freed) => {
                    entry.deleted = true;
                    report.deleted += 1;
                    report.bytes_freed += freed;
                    tracing::info!(
                        backup.class = %backup.class, backup.id = %backup.id, bytes = entry.bytes,
                        reason = %entry.reason, "deleted backup"
                    );
                }
                Err(error) => {
                    report.failed += 1;
                    // Transient if any failure is: a retry makes progress on
                    // those, and a permanent one fails again until the
                    // message is dead-lettered for a person.
                    report.failure_class = match (report.failure_class, error.class()) {
                        (Some(ErrorClass::Transient), _) | (_, ErrorClass::Transient) => Some(ErrorClass::Transient),
                        _ => Some(ErrorClass::Permanent),
                    };
                    tracing::error!(
                        backup.class = %backup.class, backup.id = %backup.id,
                        error = %crate::telemetry::error_chain(&error), "could not delete backup"
                    );
                    entry.error = Some(error.to_string());
                }
            }
        }
        report.entries.push(entry);
    }
    report
}

/// Deletes a backup's objects in order; stops at the first failure so the
/// manifest (last) survives any failed data deletion. An object already gone
/// (a previous run deleted it) counts as deleted but frees nothing. Returns
/// the bytes freed.
async fn delete_backup(store: &dyn BlobStore, backup: &Backup) -> Result<u64, StorageError> {
    let mut freed = 0;
    for object in &backup.objects {
        match store.delete(&object.key, None).await {
            Ok(()) => freed += object.size,
            Err(StorageError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_more_than_an_hour_apart_either_way_stop_deletions() {
        let store = DateTime::parse_from_rfc3339("2027-03-28T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let hour = chrono::Duration::hours(1);
        let second = chrono::Duration::seconds(1);
        // (why, local clock, refused)
        let cases = [
            ("same time", store, false),
            ("exactly an hour ahead is still allowed", store + hour, false),
            ("exactly an hour behind is still allowed", store - hour, false),
            ("an hour and a second ahead", store + hour + second, true),
            ("an hour and a second behind", store - hour - second, true),
            ("forty days ahead", store + chrono::Duration::days(40), true),
        ];
        for (why, local, refused) in cases {
            assert_eq!(clock_skew(local, store, max_clock_skew()).is_some(), refused, "{why}");
        }
        let skew = clock_skew(store + chrono::Duration::days(40), store, max_clock_skew()).unwrap();
        assert_eq!(skew.skew_seconds, 40 * 86_400);
        assert_eq!(
            skew.to_string(),
            "this host's clock (2027-05-07T03:00:00Z) is 40 d ahead of the backup store's (2027-03-28T03:00:00Z), \
             more than the 1 h allowed: retention deletes nothing until the clocks agree"
        );
    }
}
