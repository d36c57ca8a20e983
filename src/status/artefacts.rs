//! The store's side of `status`: per job, the newest complete artefact and
//! the time it records, so freshness survives a lost ledger. Only small
//! header documents are read (manifests, envelope headers, summaries,
//! reports); nothing is decrypted and no dump is downloaded.
//!
//! ```text
//! postgres-backup      newest complete postgresql/daily/ backup   manifest finished_at
//! secrets-backup       newest readable secrets/weekly/ envelope   created_at (header)
//! documents-inventory  newest documents/inventory/ summary        finished_at, else started_at
//!                      whose .jsonl.gz exists
//! dr-drill             newest drills/*.json with "passed": true   finished_at, else started_at
//! ```
//!
//! `cleanup-old-backups` leaves no artefact: the ledger alone knows it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::jobs::secrets_backup::{self, MAXIMUM_ENVELOPE_BYTES};
use crate::postgres::layout;
use crate::retention::listing::{DRILL_PREFIX, INVENTORY_PREFIX};
use crate::storage::{BlobStore, BlobStoreExt, ListOptions, StorageError};

const INVENTORY_DATA_SUFFIX: &str = ".jsonl.gz";
const INVENTORY_SUMMARY_SUFFIX: &str = ".summary.json";
const DRILL_SUFFIX: &str = ".json";
/// Summaries and reports are small; anything larger is not one of ours.
const SMALL_OBJECT_LIMIT: u64 = 16 * 1024 * 1024;

/// The jobs whose success leaves an artefact in the store.
pub const JOBS_WITH_ARTEFACTS: &[&str] = &["postgres-backup", "secrets-backup", "documents-inventory", "dr-drill"];

/// Whether `job` leaves an artefact this module reads.
pub fn leaves_artefact(job: &str) -> bool {
    JOBS_WITH_ARTEFACTS.contains(&job)
}

/// The newest complete artefact of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artefact {
    /// The object whose time is used (a manifest, an envelope, a summary, a report).
    pub object: String,
    pub at: DateTime<Utc>,
}

/// For every job of [`JOBS_WITH_ARTEFACTS`], its newest complete artefact
/// (`None` if the store holds none). A storage error fails the whole answer:
/// a half-read store must not call a job overdue (or fresh) by accident.
/// Also `postgres-backup/<database>`: the newest of each database found.
pub async fn newest_artefacts(store: &dyn BlobStore) -> Result<BTreeMap<String, Option<Artefact>>, StorageError> {
    let mut newest = BTreeMap::from([
        ("secrets-backup".to_owned(), newest_secrets_backup(store).await?),
        ("documents-inventory".to_owned(), newest_inventory(store).await?),
        ("dr-drill".to_owned(), newest_passed_drill(store).await?),
    ]);
    let by_database = newest_postgres_backups(store).await?;
    newest.insert(
        "postgres-backup".to_owned(),
        by_database.values().max_by_key(|artefact| artefact.at).cloned(),
    );
    for (database, artefact) in by_database {
        newest.insert(database_series("postgres-backup", &database), Some(artefact));
    }
    Ok(newest)
}

/// The key of one database's series of a job, in [`newest_artefacts`].
pub fn database_series(job: &str, database: &str) -> String {
    format!("{job}/{database}")
}

/// The newest complete daily backup of each database.
async fn newest_postgres_backups(store: &dyn BlobStore) -> Result<BTreeMap<String, Artefact>, StorageError> {
    // Monthly objects are copies of dailies: the daily is the backup.
    let mut newest: BTreeMap<String, Artefact> = BTreeMap::new();
    for listed in layout::list(store, Some(layout::Class::Daily)).await? {
        if !listed.is_complete() {
            continue;
        }
        let Some(manifest) = listed.manifest else { continue };
        let artefact = Artefact {
            object: layout::manifest_key(&listed.base),
            at: manifest.finished_at,
        };
        match newest.get(&manifest.database) {
            Some(found) if found.at >= artefact.at => {}
            _ => {
                newest.insert(manifest.database, artefact);
            }
        }
    }
    Ok(newest)
}

/// Only the envelope's header field is read; nothing is decrypted.
#[derive(Deserialize)]
struct EnvelopeTime {
    created_at: DateTime<Utc>,
}

async fn newest_secrets_backup(store: &dyn BlobStore) -> Result<Option<Artefact>, StorageError> {
    let weekly: Vec<String> = secrets_backup::list_secrets_backups(store)
        .await?
        .into_iter()
        .filter(|key| secrets_backup::weekly_date(key).is_some())
        .collect();
    // Oldest first by date: walk back from the newest to the first envelope
    // that carries a time (an unreadable one is not a success).
    for key in weekly.into_iter().rev() {
        let bytes = store.get_bytes(&key, MAXIMUM_ENVELOPE_BYTES).await?;
        if let Ok(envelope) = serde_json::from_slice::<EnvelopeTime>(&bytes) {
            return Ok(Some(Artefact {
                object: key,
                at: envelope.created_at,
            }));
        }
    }
    Ok(None)
}

/// The times a summary or a drill report carries.
#[derive(Deserialize)]
struct Timed {
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    passed: Option<bool>,
}

impl Timed {
    fn time(&self) -> Option<DateTime<Utc>> {
        self.finished_at.or(self.started_at)
    }
}

async fn read_timed(store: &dyn BlobStore, key: &str) -> Result<Option<Timed>, StorageError> {
    let bytes = store.get_bytes(key, SMALL_OBJECT_LIMIT).await?;
    Ok(serde_json::from_slice::<Timed>(&bytes).ok())
}

async fn keys_under(store: &dyn BlobStore, prefix: &str) -> Result<BTreeSet<String>, StorageError> {
    store
        .list(prefix, ListOptions::default())
        .map_ok(|object| object.key)
        .try_collect()
        .await
}

async fn newest_inventory(store: &dyn BlobStore) -> Result<Option<Artefact>, StorageError> {
    let keys = keys_under(store, INVENTORY_PREFIX).await?;
    // Names are dated (YYYY-MM-DD), so key order is time order; an inventory
    // is complete when both its data and its summary exist.
    let summaries = keys.iter().rev().filter(|key| {
        key.strip_suffix(INVENTORY_SUMMARY_SUFFIX)
            .is_some_and(|stem| keys.contains(&format!("{stem}{INVENTORY_DATA_SUFFIX}")))
    });
    for key in summaries {
        if let Some(at) = read_timed(store, key).await?.and_then(|timed| timed.time()) {
            return Ok(Some(Artefact {
                object: key.clone(),
                at,
            }));
        }
    }
    Ok(None)
}

async fn newest_passed_drill(store: &dyn BlobStore) -> Result<Option<Artefact>, StorageError> {
    let keys = keys_under(store, DRILL_PREFIX).await?;
    // A failed drill is not a success: walk back to the newest that passed.
    for key in keys.iter().rev().filter(|key| key.ends_with(DRILL_SUFFIX)) {
        let Some(report) = read_timed(store, key).await? else {
            continue;
        };
        if let (Some(true), Some(at)) = (report.passed, report.time()) {
            return Ok(Some(Artefact {
                object: key.clone(),
                at,
            }));
        }
    }
    Ok(None)
}
