//! Writing the daily inventory of the documents store and mirroring the
//! generations it names into the backup store.
//!
//! The inventory streams: the documents store is listed page by page, every
//! entry goes through a gzip encoder, and compressed chunks flow through a
//! small channel into a streamed create-only upload, so memory does not grow
//! with the number of objects. The summary is written right after the
//! entries (it is what makes the inventory complete), then the mirror pass
//! runs; its figures go to the job's result. One object that cannot be
//! mirrored fails the run but never leaves the day without an inventory.
//!
//! Reruns (see [`plan`]): a day whose inventory is complete is never
//! rewritten; the run reports it and still does the mirror pass over it (a
//! retry after the summary was written but the outcome was not recorded, or a
//! manual rerun, finishes the mirror and changes nothing else). An entries
//! file without a summary is a killed attempt's leftover and is replaced.
//!
//! The mirror pass reads back the inventory just written (so it copies exactly
//! the generations the inventory references, even if objects change during the
//! run) and walks it beside a listing of `documents/objects/`: a streaming
//! merge on the mirror key, constant memory. The two orders agree except where
//! one name is a prefix of another followed by a character sorting before `@`
//! (`kyc/1` and `kyc/10`); there the merge may miss an existing copy, and the
//! create-only copy then reports it as already mirrored, so the result is
//! right and the cost is one extra request.

use std::pin::Pin;

use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::layout::{self, InventoryEntry, InventoryWriter, MirrorStats, PrefixCount, Summary, SUMMARY_FORMAT};
use super::DocumentsError;
use crate::storage::{copy_between, BlobStore, BlobStoreExt, ListOptions, StorageError, WriteMode};

/// Server-side copies in flight during the mirror pass.
const MIRROR_CONCURRENCY: usize = 16;
/// Objects per listing page.
const PAGE_SIZE: u32 = 1000;

/// What to do about today's inventory, from what already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing there: write it create-only.
    Write,
    /// Entries without a summary (a killed attempt): replace them.
    ReplaceLeftover,
    /// Complete: leave it, only mirror.
    AlreadyComplete,
    /// A summary whose entries are gone: someone deleted part of a backup.
    SummaryWithoutEntries,
}

pub fn plan(entries_exist: bool, summary_exists: bool) -> Plan {
    match (entries_exist, summary_exists) {
        (false, false) => Plan::Write,
        (true, false) => Plan::ReplaceLeftover,
        (true, true) => Plan::AlreadyComplete,
        (false, true) => Plan::SummaryWithoutEntries,
    }
}

/// What a run is, for the summary.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub job: String,
    pub idempotency_key: String,
    pub started_at: DateTime<Utc>,
    /// Copy referenced generations into `documents/objects/`.
    pub mirror: bool,
    /// Where the finish time comes from.
    pub clock: crate::clock::Clock,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct InventoryOutcome {
    pub date: NaiveDate,
    /// The day's inventory was complete before this run; it was left as it was.
    pub already_complete: bool,
    /// The day's summary (this run's, or the existing one).
    pub summary: Summary,
    /// This run's mirror pass.
    pub mirror: Option<MirrorStats>,
}

/// Writes (or finds) the inventory of the day `run.started_at` falls on, then mirrors.
pub async fn run(
    backups: &dyn BlobStore,
    documents: &dyn BlobStore,
    run: &RunInfo,
) -> Result<InventoryOutcome, DocumentsError> {
    let date = run.started_at.date_naive();
    let entries_key = layout::inventory_key(date);
    let summary_key = layout::summary_key(date);
    let step = plan(
        backups.stat(&entries_key).await?.is_some(),
        backups.stat(&summary_key).await?.is_some(),
    );
    match step {
        Plan::SummaryWithoutEntries => {
            return Err(DocumentsError::Refused(format!(
                "{summary_key} exists but {entries_key} does not: the inventory of {date} was partly deleted; \
                 remove the summary by hand to write the day again"
            )))
        }
        Plan::AlreadyComplete => {
            let summary = layout::read_summary(backups, date).await?;
            tracing::info!(inventory = %entries_key, "the day's inventory is already complete; mirroring only");
            let mirror = if run.mirror {
                Some(mirror(backups, documents, &entries_key, Some(summary.inventory_sha256.clone())).await?)
            } else {
                None
            };
            return Ok(InventoryOutcome {
                date,
                already_complete: true,
                summary,
                mirror,
            });
        }
        Plan::Write | Plan::ReplaceLeftover => {}
    }
    let mode = if step == Plan::ReplaceLeftover {
        tracing::warn!(inventory = %entries_key, "replacing the entries of an earlier attempt that did not finish");
        WriteMode::Overwrite
    } else {
        WriteMode::CreateOnly
    };
    let (totals, report) = write_entries(backups, documents, &entries_key, mode).await?;
    tracing::info!(inventory = %entries_key, objects = totals.object_count, bytes = totals.total_bytes, "inventory written");
    // The summary goes first: the inventory is complete (and usable by
    // restores, checks and the drill) even when one object cannot be
    // mirrored; a failed mirror pass fails the run and the retry, finding
    // the day complete, only mirrors.
    let inventory_sha256 = report.sha256.clone();
    let summary = Summary {
        format: SUMMARY_FORMAT.to_owned(),
        version: 1,
        job: run.job.clone(),
        idempotency_key: run.idempotency_key.clone(),
        started_at: run.started_at,
        finished_at: run.clock.now(),
        documents_store: documents.location().to_string(),
        object_count: totals.object_count,
        total_bytes: totals.total_bytes,
        prefixes: totals.prefixes,
        inventory: entries_key.clone(),
        inventory_size_bytes: report.bytes,
        inventory_sha256: report.sha256,
        generations: if documents.supports_versions() {
            "gcs"
        } else {
            "modification-time"
        }
        .to_owned(),
        mirror: None,
    };
    let bytes = serde_json::to_vec_pretty(&summary).expect("a summary serializes");
    backups
        .put_bytes(&summary_key, bytes.into(), WriteMode::CreateOnly)
        .await?;
    let mirror_stats = if run.mirror {
        Some(mirror(backups, documents, &entries_key, Some(inventory_sha256)).await?)
    } else {
        None
    };
    Ok(InventoryOutcome {
        date,
        already_complete: false,
        summary,
        mirror: mirror_stats,
    })
}

#[derive(Debug, Default)]
struct Totals {
    object_count: u64,
    total_bytes: u64,
    prefixes: std::collections::BTreeMap<String, PrefixCount>,
}

/// Lists every live object and streams the gzip JSON-lines entries into `key`.
async fn write_entries(
    backups: &dyn BlobStore,
    documents: &dyn BlobStore,
    key: &str,
    mode: WriteMode,
) -> Result<(Totals, crate::storage::PutReport), DocumentsError> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let body = ReceiverStream::new(receiver).boxed();
    let produce = async move {
        let mut writer = InventoryWriter::default();
        let mut totals = Totals::default();
        let options = ListOptions {
            versions: false,
            page_size: Some(PAGE_SIZE),
        };
        let mut listing = documents.list("", options);
        let upload_gone = || DocumentsError::Refused("the inventory upload stopped".to_owned());
        while let Some(object) = listing.try_next().await? {
            let object = super::with_checksum(documents, object).await?;
            let entry = InventoryEntry {
                name: object.key.clone(),
                generation: layout::generation_of(&object),
                size: object.size,
                crc32c: object.crc32c,
                md5: object.md5,
                content_type: object.content_type,
                updated: object.updated,
            };
            totals.object_count += 1;
            totals.total_bytes += entry.size;
            let prefix = totals
                .prefixes
                .entry(layout::top_level_prefix(&entry.name).to_owned())
                .or_default();
            prefix.objects += 1;
            prefix.bytes += entry.size;
            let chunk = writer
                .push(&entry)
                .map_err(|error| DocumentsError::Refused(error.to_string()))?;
            if let Some(chunk) = chunk {
                sender.send(Ok(chunk)).await.map_err(|_| upload_gone())?;
            }
        }
        let last = writer
            .finish()
            .map_err(|error| DocumentsError::Refused(error.to_string()))?;
        sender.send(Ok(last)).await.map_err(|_| upload_gone())?;
        Ok::<_, DocumentsError>(totals)
    };
    let upload = async { backups.put(key, body, mode).await.map_err(DocumentsError::from) };
    // The first failure drops the other side: a failed listing aborts the
    // upload (nothing becomes visible), a failed upload stops the listing.
    futures::future::try_join(produce, upload).await
}

/// Copies every generation the inventory at `inventory_key` references that
/// `documents/objects/` does not hold yet.
pub async fn mirror(
    backups: &dyn BlobStore,
    documents: &dyn BlobStore,
    inventory_key: &str,
    expected_sha256: Option<String>,
) -> Result<MirrorStats, DocumentsError> {
    let mut stats = MirrorStats::default();
    let mut mirrored = backups
        .list(
            layout::OBJECTS_PREFIX,
            ListOptions {
                versions: false,
                page_size: Some(PAGE_SIZE),
            },
        )
        .map_ok(|object| object.key)
        .peekable();
    // The copies can be slower than reading the inventory; a download left
    // idle behind them would time out (found by the 20 000-object benchmark),
    // so the compressed inventory is spooled to a local temporary store first.
    let spool = Spool::create().await?;
    copy_between(
        backups,
        inventory_key,
        None,
        &spool.store,
        SPOOL_KEY,
        WriteMode::Overwrite,
    )
    .await?;
    let mut entries = layout::read_entries(&spool.store, SPOOL_KEY.to_owned(), expected_sha256);
    let mut in_flight = FuturesUnordered::new();
    while let Some(entry) = entries.try_next().await? {
        let wanted = layout::mirror_key(&entry.name, entry.generation);
        let mut found = false;
        loop {
            match Pin::new(&mut mirrored).peek().await {
                Some(Ok(key)) if key.as_str() < wanted.as_str() => {}
                Some(Ok(key)) if *key == wanted => found = true,
                Some(Ok(_)) | None => break,
                Some(Err(_)) => {
                    let error = mirrored.next().await.expect("peeked").expect_err("peeked an error");
                    return Err(error.into());
                }
            }
            mirrored.next().await;
            if found {
                break;
            }
        }
        if found {
            stats.already_mirrored += 1;
            continue;
        }
        if in_flight.len() >= MIRROR_CONCURRENCY {
            tally(&mut stats, in_flight.next().await.expect("not empty"))?;
        }
        in_flight.push(copy_one(backups, documents, entry, wanted));
    }
    while let Some(result) = in_flight.next().await {
        tally(&mut stats, result)?;
    }
    Ok(stats)
}

const SPOOL_KEY: &str = "inventory.jsonl.gz";

/// A temporary file store holding one inventory, removed when dropped.
struct Spool {
    store: crate::storage::FileStore,
    directory: std::path::PathBuf,
}

impl Spool {
    async fn create() -> Result<Spool, DocumentsError> {
        let directory = std::env::temp_dir().join(format!("keshless-inventory-{}", uuid::Uuid::new_v4().simple()));
        let location = crate::storage::StoreLocation::File {
            root: directory.clone(),
        };
        let store = crate::storage::FileStore::open(location)
            .await
            .map_err(|error| DocumentsError::Refused(format!("cannot create a temporary spool: {error:#}")))?;
        Ok(Spool { store, directory })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

enum MirrorResult {
    Copied(u64),
    Already,
    Vanished,
    InvalidName,
}

async fn copy_one(
    backups: &dyn BlobStore,
    documents: &dyn BlobStore,
    entry: InventoryEntry,
    mirror_key: String,
) -> Result<MirrorResult, StorageError> {
    // A store without versions has only the live bytes to copy.
    let generation = documents.supports_versions().then_some(entry.generation);
    match copy_between(
        documents,
        &entry.name,
        generation,
        backups,
        &mirror_key,
        WriteMode::CreateOnly,
    )
    .await
    {
        Ok(copied) => Ok(MirrorResult::Copied(copied.size)),
        Err(StorageError::AlreadyExists { .. }) => Ok(MirrorResult::Already),
        Err(StorageError::NotFound { .. }) => {
            tracing::warn!(object = %entry.name, generation = entry.generation, "generation vanished before it could be mirrored");
            Ok(MirrorResult::Vanished)
        }
        Err(StorageError::InvalidKey { reason, .. }) => {
            tracing::warn!(object = %entry.name, %reason, "not mirrored: the name cannot be a store key");
            Ok(MirrorResult::InvalidName)
        }
        Err(error) => Err(error),
    }
}

fn tally(stats: &mut MirrorStats, result: Result<MirrorResult, StorageError>) -> Result<(), DocumentsError> {
    match result? {
        MirrorResult::Copied(bytes) => {
            stats.copied += 1;
            stats.copied_bytes += bytes;
        }
        MirrorResult::Already => stats.already_mirrored += 1,
        MirrorResult::Vanished => stats.vanished += 1,
        MirrorResult::InvalidName => stats.skipped_invalid_names += 1,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerun_plans() {
        let cases = [
            (false, false, Plan::Write),
            (true, false, Plan::ReplaceLeftover),
            (true, true, Plan::AlreadyComplete),
            (false, true, Plan::SummaryWithoutEntries),
        ];
        for (entries, summary, expected) in cases {
            assert_eq!(plan(entries, summary), expected, "entries {entries}, summary {summary}");
        }
    }
}
