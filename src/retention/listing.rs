//! Reads the backup store into the listing the policy decides over: every
//! PostgreSQL backup, secrets backup, documents inventory and drill report,
//! each with the time its manifest records.
//!
//! ```text
//! postgresql/daily/YYYY-MM-DD/<db>-<ts>.dump + .manifest.json   started_at of the manifest
//! postgresql/monthly/YYYY-MM/<db>-<ts>.dump + .manifest.json    started_at of the manifest
//! secrets/weekly/YYYY-MM-DD.json.encrypted                      created_at of the envelope (authenticated)
//! secrets/latest.json.encrypted                                 never deleted
//! documents/inventory/YYYY-MM-DD.jsonl.gz + .summary.json       started_at of the summary
//! drills/YYYY-MM-DD.json                                        started_at of the report
//! documents/objects/<name>@<generation>                         store `updated`; see [`super::mirror`]
//! ```
//!
//! The whole listing is read before anything is decided: a listing that fails
//! half-way returns an error and nothing is deleted. A storage error while
//! reading a manifest is also an error (never "incomplete"): calling a
//! complete backup incomplete could get it deleted.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Deserialize;

use super::mirror::{self, Protection, ReferenceCollector, References};
use super::policy::{Backup, Class, Decision, State, StoredObject};
use crate::documents::layout::{self, InventoryReadError};
use crate::jobs::secrets_backup::{self, LATEST_KEY, WEEKLY_PREFIX};
use crate::postgres::layout as postgres_layout;
use crate::storage::{BlobStore, BlobStoreExt, ListOptions, ObjectInfo, StorageError};

/// Where documents inventories live.
pub const INVENTORY_PREFIX: &str = "documents/inventory/";
const INVENTORY_DATA_SUFFIX: &str = ".jsonl.gz";
const INVENTORY_SUMMARY_SUFFIX: &str = ".summary.json";
/// Where DR drill reports live.
pub const DRILL_PREFIX: &str = "drills/";
const DRILL_SUFFIX: &str = ".json";
/// Manifests, summaries, envelopes and reports are small; larger is not ours.
const SMALL_OBJECT_LIMIT: u64 = 16 * 1024 * 1024;

/// Every backup in the store, in the order classes are listed.
pub async fn list_backups(store: &dyn BlobStore) -> Result<Vec<Backup>, StorageError> {
    Ok(list_everything(store).await?.backups)
}

/// [`list_backups`], with the PostgreSQL listing it was made from (the
/// manifests), for callers that show more than retention needs.
pub struct Listing {
    pub backups: Vec<Backup>,
    pub postgres: Vec<postgres_layout::Listed>,
}

/// Lists the store once: every backup, and the PostgreSQL manifests read on the way.
pub async fn list_everything(store: &dyn BlobStore) -> Result<Listing, StorageError> {
    let postgres = postgres_layout::list(store, None).await?;
    let mut backups = list_postgres(store, &postgres).await?;
    backups.extend(list_secrets(store).await?);
    backups.extend(list_inventories(store).await?);
    backups.extend(list_drill_reports(store).await?);
    Ok(Listing { backups, postgres })
}

fn stored(object: &ObjectInfo) -> StoredObject {
    StoredObject::of(object)
}

async fn list_postgres(
    store: &dyn BlobStore,
    listing: &[postgres_layout::Listed],
) -> Result<Vec<Backup>, StorageError> {
    let mut backups = Vec::new();
    let mut known_keys = std::collections::HashSet::new();
    for listed in listing {
        // Deleted in this order: the manifest last, so a failed deletion
        // leaves an incomplete backup, never a manifest without its dump.
        let objects: Vec<StoredObject> = listed
            .dump
            .iter()
            .chain(listed.globals_object.iter())
            .chain(listed.manifest_object.iter())
            .map(stored)
            .collect();
        known_keys.extend(objects.iter().map(|object| object.key.clone()));
        // Only what the backup job writes is ours to expire: a hand-made
        // `postgresql/manual/pre-migration.dump` has no manifest and would
        // otherwise look like an abandoned daily.
        let Some((class, database, named_time)) = postgres_layout::parse_base(&listed.base) else {
            backups.push(Backup {
                class: Class::Unrecognised,
                series: String::new(),
                id: listed.base.clone(),
                objects,
                state: State::Untimed,
            });
            continue;
        };
        let class = match class {
            postgres_layout::Class::Daily => Class::PostgresDaily,
            postgres_layout::Class::Monthly => Class::PostgresMonthly,
        };
        let last_written = listed
            .dump
            .iter()
            .chain(listed.globals_object.iter())
            .chain(listed.manifest_object.iter())
            .map(|object| object.updated)
            .chain([named_time])
            .max();
        let state = match (&listed.manifest, &listed.problem) {
            (Some(manifest), _)
                if manifest.database != database
                    || manifest.dump != postgres_layout::dump_key_for(&listed.base, &manifest.encoding) =>
            {
                State::Unreadable {
                    problem: format!(
                        "the manifest describes {:?} of database {:?}, not this object of database {database:?}",
                        manifest.dump, manifest.database
                    ),
                }
            }
            (Some(manifest), _) if listed.dump.is_some() => State::Complete {
                at: manifest.started_at,
            },
            (_, Some(problem)) => State::Unreadable {
                problem: problem.clone(),
            },
            // No manifest, or a manifest whose dump is gone (an interrupted
            // deletion): incomplete either way.
            _ => State::Incomplete {
                last_written: last_written.unwrap_or(named_time),
            },
        };
        backups.push(Backup {
            class,
            series: database,
            id: listed.id.clone(),
            objects,
            state,
        });
    }
    // Objects under the prefix that are neither a dump nor a manifest.
    let strays: Vec<ObjectInfo> = store
        .list(postgres_layout::PREFIX, ListOptions::default())
        .try_filter(|object| futures::future::ready(!known_keys.contains(&object.key)))
        .try_collect()
        .await?;
    backups.extend(strays.iter().map(unrecognised));
    Ok(backups)
}

fn unrecognised(object: &ObjectInfo) -> Backup {
    Backup {
        class: Class::Unrecognised,
        series: String::new(),
        id: object.key.clone(),
        objects: vec![stored(object)],
        state: State::Untimed,
    }
}

/// Only the envelope's header field is read; nothing is decrypted.
#[derive(Deserialize)]
struct EnvelopeTime {
    created_at: DateTime<Utc>,
}

async fn list_secrets(store: &dyn BlobStore) -> Result<Vec<Backup>, StorageError> {
    let objects: Vec<ObjectInfo> = store.list("secrets/", ListOptions::default()).try_collect().await?;
    let mut backups = Vec::with_capacity(objects.len());
    for object in objects {
        let (class, state) = if object.key == LATEST_KEY {
            (Class::SecretsLatest, State::Untimed)
        } else if object.key.starts_with(WEEKLY_PREFIX) && secrets_backup::weekly_date(&object.key).is_some() {
            let bytes = store.get_bytes(&object.key, SMALL_OBJECT_LIMIT).await?;
            let state = match serde_json::from_slice::<EnvelopeTime>(&bytes) {
                Ok(envelope) => State::Complete {
                    at: envelope.created_at,
                },
                Err(error) => State::Unreadable {
                    problem: format!("not a secrets envelope with a created_at time: {error}"),
                },
            };
            (Class::SecretsWeekly, state)
        } else {
            backups.push(unrecognised(&object));
            continue;
        };
        backups.push(Backup {
            class,
            series: String::new(),
            id: object.key.clone(),
            objects: vec![stored(&object)],
            state,
        });
    }
    Ok(backups)
}

/// The time field of a summary or a report.
#[derive(Deserialize)]
struct StartedAt {
    started_at: DateTime<Utc>,
}

async fn read_started_at(store: &dyn BlobStore, key: &str) -> Result<State, StorageError> {
    let bytes = store.get_bytes(key, SMALL_OBJECT_LIMIT).await?;
    Ok(match serde_json::from_slice::<StartedAt>(&bytes) {
        Ok(parsed) => State::Complete { at: parsed.started_at },
        Err(error) => State::Unreadable {
            problem: format!("{key}: not JSON with a started_at time: {error}"),
        },
    })
}

async fn list_inventories(store: &dyn BlobStore) -> Result<Vec<Backup>, StorageError> {
    // stem -> (data, summary)
    let mut groups: BTreeMap<String, (Option<ObjectInfo>, Option<ObjectInfo>)> = BTreeMap::new();
    let mut unrecognised = Vec::new();
    let mut objects = store.list(INVENTORY_PREFIX, ListOptions::default());
    while let Some(object) = objects.try_next().await? {
        if let Some(stem) = object.key.strip_suffix(INVENTORY_DATA_SUFFIX).map(str::to_owned) {
            groups.entry(stem).or_default().0 = Some(object);
        } else if let Some(stem) = object.key.strip_suffix(INVENTORY_SUMMARY_SUFFIX).map(str::to_owned) {
            groups.entry(stem).or_default().1 = Some(object);
        } else {
            unrecognised.push(object);
        }
    }
    drop(objects);

    let mut backups = Vec::with_capacity(groups.len() + unrecognised.len());
    for (stem, (data, summary)) in groups {
        let objects: Vec<StoredObject> = data.iter().chain(summary.iter()).map(stored).collect();
        let state = match (&data, &summary) {
            (Some(_), Some(summary)) => read_started_at(store, &summary.key).await?,
            _ => State::Incomplete {
                last_written: data
                    .iter()
                    .chain(summary.iter())
                    .map(|object| object.updated)
                    .max()
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            },
        };
        backups.push(Backup {
            class: Class::Inventory,
            series: String::new(),
            id: format!("{stem}{INVENTORY_DATA_SUFFIX}"),
            objects,
            state,
        });
    }
    backups.extend(unrecognised.iter().map(self::unrecognised));
    Ok(backups)
}

async fn list_drill_reports(store: &dyn BlobStore) -> Result<Vec<Backup>, StorageError> {
    let objects: Vec<ObjectInfo> = store.list(DRILL_PREFIX, ListOptions::default()).try_collect().await?;
    let mut backups = Vec::with_capacity(objects.len());
    for object in objects {
        if !object.key.ends_with(DRILL_SUFFIX) {
            backups.push(unrecognised(&object));
            continue;
        }
        let (class, state) = (Class::DrillReport, read_started_at(store, &object.key).await?);
        backups.push(Backup {
            class,
            series: String::new(),
            id: object.key.clone(),
            objects: vec![stored(&object)],
            state,
        });
    }
    Ok(backups)
}

/// Reads the entries of every inventory this run keeps into a
/// [`ReferenceCollector`], one entry at a time. An inventory that cannot be
/// read or verified (summary not an inventory summary, corrupt gzip, SHA-256
/// other than its summary's) is returned with the problem; a storage error
/// fails the whole run, before anything is deleted.
pub async fn collect_mirror_references(
    store: &dyn BlobStore,
    planned: &[(&Backup, &Decision)],
) -> Result<(References, Vec<(String, String)>), StorageError> {
    let mut collector = ReferenceCollector::default();
    let mut unreadable = Vec::new();
    for (backup, decision) in planned {
        match mirror::protection(backup, decision) {
            Protection::Nothing => continue,
            Protection::Unknowable => {
                // Already an anomaly (its summary is unreadable); it only
                // has to block the mirror.
                collector.inventory_unreadable(&backup.id);
                continue;
            }
            Protection::Read => {}
        }
        match read_references(store, backup, &mut collector).await? {
            Ok(()) => collector.inventory_read(),
            Err(problem) => {
                tracing::warn!(inventory = %backup.id, %problem, "inventory unreadable: no mirrored object is deleted");
                collector.inventory_unreadable(&backup.id);
                unreadable.push((backup.id.clone(), problem));
            }
        }
    }
    Ok((collector.finish(), unreadable))
}

/// Streams one complete inventory's entries into `collector`; the inner
/// `Err` is the problem that makes it unreadable.
async fn read_references(
    store: &dyn BlobStore,
    inventory: &Backup,
    collector: &mut ReferenceCollector,
) -> Result<Result<(), String>, StorageError> {
    let entries_key = inventory.id.clone();
    let Some(summary_key) = inventory
        .objects
        .iter()
        .map(|object| &object.key)
        .find(|key| key.ends_with(INVENTORY_SUMMARY_SUFFIX))
    else {
        return Ok(Err("no summary".to_owned()));
    };
    let bytes = store.get_bytes(summary_key, SMALL_OBJECT_LIMIT).await?;
    let summary = match serde_json::from_slice::<layout::Summary>(&bytes) {
        Ok(summary) if summary.format == layout::SUMMARY_FORMAT && summary.inventory == entries_key => summary,
        Ok(summary) => {
            return Ok(Err(format!(
                "{summary_key}: describes {:?} of format {:?}, not this inventory",
                summary.inventory, summary.format
            )))
        }
        Err(error) => return Ok(Err(format!("{summary_key}: not an inventory summary: {error}"))),
    };
    let mut entries = layout::read_entries(store, entries_key, Some(summary.inventory_sha256));
    loop {
        match entries.try_next().await {
            Ok(Some(entry)) => collector.add(&entry.name, entry.generation),
            Ok(None) => return Ok(Ok(())),
            Err(InventoryReadError::Storage(error)) => return Err(error),
            Err(error @ InventoryReadError::Corrupt { .. }) => return Ok(Err(error.to_string())),
        }
    }
}

/// A listed object under `documents/objects/`, as the report shows it.
pub fn mirror_object(object: &ObjectInfo) -> Backup {
    match mirror::class_of(&object.key) {
        Class::DocumentsMirror => Backup {
            class: Class::DocumentsMirror,
            series: String::new(),
            id: object.key.clone(),
            objects: vec![stored(object)],
            state: State::Mirrored {
                updated: object.updated,
            },
        },
        _ => unrecognised(object),
    }
}
