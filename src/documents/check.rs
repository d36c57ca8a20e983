//! `documents check`: compares the live documents store with an inventory and
//! reports what is missing or changed (the DR drill's documents step).

use chrono::NaiveDate;
use futures::TryStreamExt;
use serde::Serialize;

use super::layout;
use super::restore::{no_such_inventory, pair_by_name};
use super::selection::{self, Comparison, Content};
use super::DocumentsError;
use crate::storage::{BlobStore, StorageError};

/// Findings kept in the report; the counts stay exact beyond it.
pub const FINDINGS_LIMIT: usize = 1000;

/// One missing or changed object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub name: String,
    pub problem: Comparison,
    /// The generation the inventory records.
    pub generation: i64,
}

/// The result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub inventory_date: NaiveDate,
    pub prefix: String,
    pub unchanged: u64,
    pub missing: u64,
    pub changed: u64,
    /// Live objects the inventory does not know (created since): not findings.
    pub added: u64,
    pub findings: Vec<Finding>,
    pub findings_truncated: bool,
}

impl CheckReport {
    pub fn has_findings(&self) -> bool {
        self.missing > 0 || self.changed > 0
    }
}

/// Checks the store against the inventory of `date` (default: the newest
/// complete one). `sample` checks about that many entries, spread evenly over
/// the inventory (every k-th), instead of all of them.
pub async fn run(
    backups: &dyn BlobStore,
    documents: &dyn BlobStore,
    date: Option<NaiveDate>,
    prefix: &str,
    sample: Option<u64>,
) -> Result<CheckReport, DocumentsError> {
    let date = match date {
        Some(date) => date,
        None => layout::newest_complete(backups).await?.ok_or_else(|| {
            DocumentsError::Refused(format!(
                "{}: there is no complete documents inventory yet",
                backups.location()
            ))
        })?,
    };
    let summary = match layout::read_summary(backups, date).await {
        Ok(summary) => summary,
        Err(layout::InventoryReadError::Storage(StorageError::NotFound { .. })) => {
            return Err(no_such_inventory(backups, date).await)
        }
        Err(error) => return Err(error.into()),
    };
    let mut report = CheckReport {
        inventory_date: date,
        prefix: prefix.to_owned(),
        unchanged: 0,
        missing: 0,
        changed: 0,
        added: 0,
        findings: Vec::new(),
        findings_truncated: false,
    };
    let stride = match sample {
        Some(0) | None => 1,
        Some(wanted) => summary.object_count.div_ceil(wanted).max(1),
    };
    // Sample inventory entries only (objects added since are not part of
    // the stride), from a random offset so repeated drills cover different
    // objects.
    let offset = if stride > 1 { rand::random::<u64>() % stride } else { 0 };
    let mut index = 0u64;
    let mut pairs = pair_by_name(backups, documents, &summary, prefix);
    while let Some((name, entry, live)) = pairs.try_next().await? {
        if entry.is_some() {
            index += 1;
            if (index - 1) % stride != offset {
                continue;
            }
        }
        let live = match live {
            Some(live) => Some(super::with_checksum(documents, live).await?),
            None => None,
        };
        let recorded = entry.as_ref().map(|entry| Content {
            size: entry.size,
            crc32c: entry.crc32c.clone(),
            md5: entry.md5.clone(),
        });
        let Some(comparison) = selection::compare(recorded.as_ref(), live.as_ref().map(Content::of).as_ref()) else {
            continue;
        };
        match comparison {
            Comparison::Unchanged => report.unchanged += 1,
            Comparison::Added => report.added += 1,
            Comparison::Missing | Comparison::Changed => {
                if comparison == Comparison::Missing {
                    report.missing += 1;
                } else {
                    report.changed += 1;
                }
                if report.findings.len() < FINDINGS_LIMIT {
                    report.findings.push(Finding {
                        name,
                        problem: comparison,
                        generation: entry.map(|entry| entry.generation).unwrap_or_default(),
                    });
                } else {
                    report.findings_truncated = true;
                }
            }
        }
    }
    Ok(report)
}
