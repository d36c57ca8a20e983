//! `cleanup-old-backups` (SPEC sections 2 and 6): apply the retention policy
//! to the backup store. All the deciding is in [`crate::retention`]; this job
//! only runs it and turns the report into an [`Outcome`] or a [`JobError`].
//!
//! A failed deletion does not stop the rest; the run reports everything and
//! then fails (transient if any failure was) so Pub/Sub redelivers it and the
//! next attempt deletes what is left. A listing failure deletes nothing.
//!
//! Before deciding, the store's clock is read ([`crate::storage::server_time`]):
//! when it and this host's clock differ by more than an hour, the run decides
//! and reports as a dry run would, deletes nothing, and fails permanently
//! saying why (dead-lettered for a person: a clock does not fix itself in
//! the minutes a redelivery takes; replay once it agrees).

use std::sync::Arc;

use anyhow::anyhow;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::retention::{self, Policy};
use crate::runtime::job::{Job, JobError, Outcome, RunContext};
use crate::storage::{BlobStore, ErrorClass};

/// Retention over the backup store.
pub struct CleanupOldBackups {
    backups: Arc<dyn BlobStore>,
    policy: Policy,
    clock: Clock,
}

impl std::fmt::Debug for CleanupOldBackups {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CleanupOldBackups")
            .field("backups", &self.backups.location().to_string())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// `{"dry_run": true}` decides and reports without deleting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanupParams {
    pub dry_run: bool,
}

impl CleanupOldBackups {
    pub fn new(backups: Arc<dyn BlobStore>, policy: Policy) -> CleanupOldBackups {
        CleanupOldBackups {
            backups,
            policy,
            clock: Clock::system(),
        }
    }

    /// Another clock (tests pinning "now", the year simulation).
    pub fn with_clock(mut self, clock: Clock) -> CleanupOldBackups {
        self.clock = clock;
        self
    }
}

#[async_trait]
impl Job for CleanupOldBackups {
    const NAME: &'static str = "cleanup-old-backups";
    type Params = CleanupParams;

    async fn run(&self, context: &RunContext, params: CleanupParams) -> Result<Outcome, JobError> {
        let now = self.clock.now();
        // A dry run writes nothing, not even the probe, and deletes nothing anyway.
        let skew = match params.dry_run {
            true => None,
            false => {
                let store_time = crate::storage::server_time(self.backups.as_ref()).await?;
                retention::clock_skew(now, store_time, retention::max_clock_skew())
            }
        };
        if let Some(skew) = &skew {
            tracing::error!(
                local = %skew.local, store = %skew.store, skew_seconds = skew.skew_seconds,
                "{skew}; deciding as a dry run"
            );
        }
        let planned = retention::plan(self.backups.as_ref(), &self.policy, now).await?;
        if context.cancel.is_cancelled() {
            return Err(JobError::transient(anyhow!("cancelled before deleting anything")));
        }
        let dry_run = params.dry_run || skew.is_some();
        let report = retention::execute(self.backups.as_ref(), planned, now, dry_run).await;
        let deleted: Vec<&str> = report
            .entries
            .iter()
            .filter(|entry| entry.deleted)
            .map(|entry| entry.id.as_str())
            .collect();
        let anomalies: Vec<serde_json::Value> = report
            .entries
            .iter()
            .filter(|entry| entry.anomaly)
            .map(|entry| serde_json::json!({"class": entry.class, "id": entry.id, "reason": entry.reason}))
            .collect();
        let mirror = report
            .entries
            .iter()
            .filter(|entry| entry.class == retention::Class::DocumentsMirror);
        let (mut mirror_kept, mut mirror_to_delete, mut mirror_deleted) = (0, 0, 0);
        for entry in mirror {
            match (entry.decision, entry.deleted) {
                ("delete", true) => (mirror_to_delete, mirror_deleted) = (mirror_to_delete + 1, mirror_deleted + 1),
                ("delete", false) => mirror_to_delete += 1,
                _ => mirror_kept += 1,
            }
        }
        tracing::info!(
            kept = report.kept,
            mirror_kept,
            mirror_deleted,
            deleted = report.deleted,
            failed = report.failed,
            bytes_freed = report.bytes_freed,
            anomalies = report.anomalies,
            pinned = report.pinned,
            locked = report.locked,
            dry_run = report.dry_run,
            "retention applied"
        );
        if let Some(skew) = &skew {
            return Err(JobError::Permanent(anyhow!(
                "refused to delete {} backups ({} bytes): {skew}; check NTP on the worker, then replay this \
                 message (`keshless-ops dlq replay`)",
                report.to_delete,
                report.bytes_to_free
            )));
        }
        if let Some(class) = report.failure_class {
            let failures: Vec<String> = report
                .entries
                .iter()
                .filter_map(|entry| entry.error.as_ref().map(|error| format!("{}: {error}", entry.id)))
                .collect();
            let error = anyhow!(
                "{} of {} deletions failed ({}); first: {}",
                report.failed,
                report.to_delete,
                report.summary(),
                failures.first().map(String::as_str).unwrap_or("?")
            );
            return Err(match class {
                ErrorClass::Transient => JobError::Transient(error),
                ErrorClass::Permanent => JobError::Permanent(error),
            });
        }
        Ok(Outcome::new(report.summary()).with_details(serde_json::json!({
            "dry_run": report.dry_run,
            "kept": report.kept,
            "deleted": report.deleted,
            "to_delete": report.to_delete,
            "bytes_freed": report.bytes_freed,
            "bytes_to_free": report.bytes_to_free,
            "anomalies": anomalies,
            "pinned": report.pinned,
            "locked": report.locked,
            "clock_skew": skew,
            // The time every age was judged by: with a skewed or jumped
            // clock, what makes the decisions above readable afterwards.
            "judged_at": now,
            // The documents mirror, also counted in the totals above.
            "mirror": {"kept": mirror_kept, "to_delete": mirror_to_delete, "deleted": mirror_deleted},
            // Ids only, capped: the ledger row stays small however much went.
            "deleted_ids": deleted.iter().take(200).collect::<Vec<_>>(),
        })))
    }
}
