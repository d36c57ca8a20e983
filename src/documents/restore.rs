//! Point-in-time restore of the documents store, one object name at a time.
//!
//! The point is either a time (`--as-of`: the generation live then, from the
//! store's version listing) or an inventory date (the generation it records,
//! from the store's history or from the mirror in the backup store). A wanted
//! generation is brought back by a server-side copy onto the live name: a new
//! generation, history untouched. Names are visited in order, each decided by
//! [`selection::decide`], so memory does not grow with the prefix; a second
//! identical run finds every object unchanged (content is compared by size
//! and checksums, since a restored copy has a new generation number).

use std::pin::Pin;

use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::layout::{self, InventoryEntry};
use super::selection::{self, Content, Decision};
use super::DocumentsError;
use crate::storage::{copy_between, BlobStore, ListOptions, ObjectInfo, StorageError, WriteMode};

/// The point to go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    AsOf(DateTime<Utc>),
    Inventory { date: NaiveDate, from_mirror: bool },
}

/// One restore request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Only names starting with this (`kyc/`); empty means every object.
    pub prefix: String,
    pub point: Point,
    pub dry_run: bool,
    pub delete_newer: bool,
}

/// What happened to one object name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectResult {
    Restored,
    Unchanged,
    /// The wanted generation no longer exists (purged by lifecycle, not mirrored).
    Unavailable,
    NewerKept,
    NewerDeleted,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectLine {
    pub name: String,
    pub result: ObjectResult,
    /// The generation wanted (restored, unchanged, unavailable) or found (newer).
    pub generation: Option<i64>,
    pub dry_run: bool,
}

/// Totals of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub restored: u64,
    pub unchanged: u64,
    pub unavailable: u64,
    pub newer_kept: u64,
    pub newer_deleted: u64,
}

impl Counts {
    fn add(&mut self, result: ObjectResult) {
        match result {
            ObjectResult::Restored => self.restored += 1,
            ObjectResult::Unchanged => self.unchanged += 1,
            ObjectResult::Unavailable => self.unavailable += 1,
            ObjectResult::NewerKept => self.newer_kept += 1,
            ObjectResult::NewerDeleted => self.newer_deleted += 1,
        }
    }
}

/// Where a wanted generation is copied from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    History,
    Mirror,
}

/// Refuses requests the stores cannot serve, naming what is needed.
pub fn check_request(request: &Request, documents: &dyn BlobStore) -> Result<(), DocumentsError> {
    let needs_history = match request.point {
        Point::AsOf(_) => Some("--as-of"),
        Point::Inventory { from_mirror: false, .. } => Some("--inventory without --from-mirror"),
        Point::Inventory { from_mirror: true, .. } => None,
    };
    match needs_history {
        Some(what) if !documents.supports_versions() => Err(DocumentsError::Refused(format!(
            "{what} needs object generations, but the documents store {} keeps only live objects; \
             point it at a versioned gs:// bucket (DOCUMENTS_STORE), or restore from the mirror with \
             --inventory DATE --from-mirror",
            documents.location()
        ))),
        _ => Ok(()),
    }
}

/// Runs a restore, calling `on_object` for every name it reports.
pub async fn run(
    backups: &dyn BlobStore,
    documents: &dyn BlobStore,
    request: &Request,
    mut on_object: impl FnMut(&ObjectLine),
) -> Result<Counts, DocumentsError> {
    check_request(request, documents)?;
    let mut counts = Counts::default();
    let mut report = |line: ObjectLine, counts: &mut Counts| {
        counts.add(line.result);
        on_object(&line);
    };
    match request.point {
        Point::AsOf(time) => {
            let options = ListOptions {
                versions: true,
                page_size: Some(1000),
            };
            let mut versions = documents.list(&request.prefix, options).peekable();
            let mut group: Vec<ObjectInfo> = Vec::new();
            loop {
                // One name's generations are contiguous in the listing.
                let next = versions.try_next().await?;
                let ends_group = match (&next, group.first()) {
                    (Some(version), Some(first)) => version.key != first.key,
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
                if ends_group {
                    let wanted = selection::live_at(&group, time).cloned();
                    let live = group.iter().find(|version| version.live).cloned();
                    let name = group[0].key.clone();
                    let wanted = wanted.map(|version| (version.generation.unwrap_or_default(), Content::of(&version)));
                    if let Some(line) =
                        restore_one(backups, documents, request, Source::History, &name, wanted, live).await?
                    {
                        report(line, &mut counts);
                    }
                    group.clear();
                }
                match next {
                    Some(version) => group.push(version),
                    None => break,
                }
            }
        }
        Point::Inventory { date, from_mirror } => {
            let summary = match layout::read_summary(backups, date).await {
                Ok(summary) => summary,
                Err(layout::InventoryReadError::Storage(StorageError::NotFound { .. })) => {
                    return Err(no_such_inventory(backups, date).await)
                }
                Err(error) => return Err(error.into()),
            };
            // An inventory of another bucket would make every object here
            // "newer": never delete on its word.
            let inventoried = summary.documents_store.as_str();
            let restoring = documents.location().to_string();
            if request.delete_newer && inventoried != restoring {
                return Err(DocumentsError::Refused(format!(
                    "the inventory of {date} lists {inventoried}, not {restoring}; refusing --delete-newer \
                     (restore without it, or point DOCUMENTS_STORE at {inventoried})"
                )));
            }
            let source = if from_mirror { Source::Mirror } else { Source::History };
            let mut pairs = pair_by_name(backups, documents, &summary, &request.prefix);
            while let Some((name, entry, live)) = pairs.try_next().await? {
                let wanted = entry.map(|entry| {
                    (
                        entry.generation,
                        Content {
                            size: entry.size,
                            crc32c: entry.crc32c,
                            md5: entry.md5,
                        },
                    )
                });
                if let Some(line) = restore_one(backups, documents, request, source, &name, wanted, live).await? {
                    report(line, &mut counts);
                }
            }
        }
    }
    Ok(counts)
}

/// The error for an inventory date that is not complete, listing the ones that are.
pub(crate) async fn no_such_inventory(backups: &dyn BlobStore, date: NaiveDate) -> DocumentsError {
    let complete: Vec<String> = match layout::list_inventories(backups).await {
        Ok(listed) => listed
            .iter()
            .filter(|listed| listed.is_complete())
            .map(|listed| listed.date.to_string())
            .collect(),
        Err(error) => return error.into(),
    };
    DocumentsError::Refused(format!(
        "{}: no complete inventory for {date}; complete inventories: {}",
        backups.location(),
        if complete.is_empty() {
            "none".to_owned()
        } else {
            complete.join(", ")
        }
    ))
}

/// Decides and acts for one name.
async fn restore_one(
    backups: &dyn BlobStore,
    documents: &dyn BlobStore,
    request: &Request,
    source: Source,
    name: &str,
    wanted: Option<(i64, Content)>,
    live: Option<ObjectInfo>,
) -> Result<Option<ObjectLine>, DocumentsError> {
    let live = match live {
        Some(live) => Some(super::with_checksum(documents, live).await?),
        None => None,
    };
    let decision = selection::decide(
        wanted.as_ref().map(|(_, content)| content),
        live.as_ref().map(Content::of).as_ref(),
        request.delete_newer,
    );
    let line = |result, generation| {
        Some(ObjectLine {
            name: name.to_owned(),
            result,
            generation,
            dry_run: request.dry_run,
        })
    };
    let live_generation = live.as_ref().map(layout::generation_of);
    Ok(match decision {
        Decision::AbsentBoth => None,
        Decision::Unchanged => line(ObjectResult::Unchanged, wanted.map(|(generation, _)| generation)),
        Decision::NewerKept => line(ObjectResult::NewerKept, live_generation),
        Decision::NewerDeleted => {
            if !request.dry_run {
                match documents.delete(name, None).await {
                    // Gone already (a concurrent delete): the wanted state holds.
                    Ok(()) | Err(StorageError::NotFound { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            line(ObjectResult::NewerDeleted, live_generation)
        }
        Decision::Restore => {
            let (generation, content) = wanted.expect("a restore has a wanted generation");
            let available = match source {
                Source::Mirror => backups.stat(&layout::mirror_key(name, generation)).await?.is_some(),
                Source::History => true,
            };
            if !available {
                return Ok(line(ObjectResult::Unavailable, Some(generation)));
            }
            if request.dry_run {
                return Ok(line(ObjectResult::Restored, Some(generation)));
            }
            let copied = match source {
                Source::History => documents.copy(name, Some(generation), name, WriteMode::Overwrite).await,
                Source::Mirror => {
                    copy_between(
                        backups,
                        &layout::mirror_key(name, generation),
                        None,
                        documents,
                        name,
                        WriteMode::Overwrite,
                    )
                    .await
                }
            };
            match copied {
                Ok(copied) => {
                    let copied = super::with_checksum(documents, copied).await?;
                    if !Content::of(&copied).same_as(&content) {
                        return Err(DocumentsError::Refused(format!(
                            "{name}: the restored copy ({} bytes, CRC32C {:?}) differs from generation {generation} \
                             ({} bytes, CRC32C {:?})",
                            copied.size, copied.crc32c, content.size, content.crc32c
                        )));
                    }
                    line(ObjectResult::Restored, Some(generation))
                }
                Err(StorageError::NotFound { .. }) => line(ObjectResult::Unavailable, Some(generation)),
                Err(error) => return Err(error.into()),
            }
        }
    })
}

/// One name with its inventory entry and its live object, either may be absent.
pub(crate) type Paired = (String, Option<InventoryEntry>, Option<ObjectInfo>);

/// Walks an inventory's entries under `prefix` beside a listing of the live
/// objects under it; both are in name order, so this is a streaming merge.
pub(crate) fn pair_by_name<'a>(
    backups: &'a dyn BlobStore,
    documents: &'a dyn BlobStore,
    summary: &layout::Summary,
    prefix: &'a str,
) -> BoxStream<'a, Result<Paired, DocumentsError>> {
    let entries = layout::read_entries(
        backups,
        summary.inventory.clone(),
        Some(summary.inventory_sha256.clone()),
    )
    .map_err(DocumentsError::from)
    .try_filter(move |entry| futures::future::ready(entry.name.starts_with(prefix)))
    .boxed()
    .peekable();
    let options = ListOptions {
        versions: false,
        page_size: Some(1000),
    };
    let live = documents
        .list(prefix, options)
        .map_err(DocumentsError::from)
        .boxed()
        .peekable();
    futures::stream::try_unfold((entries, live), |(mut entries, mut live)| async move {
        let entry_name = match Pin::new(&mut entries).peek().await {
            Some(Ok(entry)) => Some(entry.name.clone()),
            Some(Err(_)) => return Err(entries.next().await.expect("peeked").expect_err("peeked an error")),
            None => None,
        };
        let live_name = match Pin::new(&mut live).peek().await {
            Some(Ok(object)) => Some(object.key.clone()),
            Some(Err(_)) => return Err(live.next().await.expect("peeked").expect_err("peeked an error")),
            None => None,
        };
        let take_entry = matches!((&entry_name, &live_name), (Some(entry), Some(live)) if entry <= live)
            || (entry_name.is_some() && live_name.is_none());
        let take_live = matches!((&entry_name, &live_name), (Some(entry), Some(live)) if live <= entry)
            || (live_name.is_some() && entry_name.is_none());
        if !take_entry && !take_live {
            return Ok(None);
        }
        let entry = if take_entry {
            entries.next().await.transpose()?
        } else {
            None
        };
        let object = if take_live {
            live.next().await.transpose()?
        } else {
            None
        };
        let name = entry
            .as_ref()
            .map(|entry| entry.name.clone())
            .or_else(|| object.as_ref().map(|object| object.key.clone()))
            .expect("one side was taken");
        Ok(Some(((name, entry, object), (entries, live))))
    })
    .boxed()
}
