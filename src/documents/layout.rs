//! Where the documents inventory and the mirror live in the backup store, what
//! an inventory entry and its summary say, and how to read them back.
//!
//! ```text
//! documents/inventory/2026-11-26.jsonl.gz          gzip JSON lines, one InventoryEntry per live object, name order
//! documents/inventory/2026-11-26.summary.json      written LAST: the inventory is complete only with it
//! documents/objects/kyc/u-1/passport.jpg@1795682593403939   mirror: one object per generation, create-only
//! ```
//!
//! The date is the UTC date the run started. A complete inventory (summary
//! present) is never overwritten; an entries file without a summary is the
//! leftover of a killed attempt and may be replaced. Mirror keys end in
//! `@<generation>` (split with `rsplit_once('@')`): object names may contain
//! `@`, generations never do. Mirrored copies are kept while a retained
//! inventory references them ([`read_entries`] streams those references).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::{BlobStore, BlobStoreExt, ByteStream, ListOptions, ObjectInfo, StorageError};

pub const INVENTORY_PREFIX: &str = "documents/inventory/";
pub const OBJECTS_PREFIX: &str = "documents/objects/";
const ENTRIES_SUFFIX: &str = ".jsonl.gz";
const SUMMARY_SUFFIX: &str = ".summary.json";
pub const SUMMARY_FORMAT: &str = "keshless-documents-inventory";
/// Summaries are small; anything larger is not one of ours.
const SUMMARY_LIMIT: u64 = 4 * 1024 * 1024;
/// Compressed bytes buffered before they are handed to the upload.
const FLUSH_BYTES: usize = 256 * 1024;

/// `documents/inventory/YYYY-MM-DD.jsonl.gz`.
pub fn inventory_key(date: NaiveDate) -> String {
    format!("{INVENTORY_PREFIX}{}{ENTRIES_SUFFIX}", date.format("%Y-%m-%d"))
}

/// `documents/inventory/YYYY-MM-DD.summary.json`.
pub fn summary_key(date: NaiveDate) -> String {
    format!("{INVENTORY_PREFIX}{}{SUMMARY_SUFFIX}", date.format("%Y-%m-%d"))
}

/// `documents/objects/<name>@<generation>`.
pub fn mirror_key(name: &str, generation: i64) -> String {
    format!("{OBJECTS_PREFIX}{name}@{generation}")
}

/// The object name and generation a mirror key stands for.
pub fn parse_mirror_key(key: &str) -> Option<(&str, i64)> {
    let (name, generation) = key.strip_prefix(OBJECTS_PREFIX)?.rsplit_once('@')?;
    let generation = generation.parse().ok()?;
    (!name.is_empty()).then_some((name, generation))
}

/// Which of an inventory's two objects a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryPart {
    Entries,
    Summary,
}

/// The date and part an inventory key stands for.
pub fn parse_inventory_key(key: &str) -> Option<(NaiveDate, InventoryPart)> {
    let rest = key.strip_prefix(INVENTORY_PREFIX)?;
    let (date, part) = if let Some(date) = rest.strip_suffix(ENTRIES_SUFFIX) {
        (date, InventoryPart::Entries)
    } else {
        (rest.strip_suffix(SUMMARY_SUFFIX)?, InventoryPart::Summary)
    };
    Some((NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?, part))
}

/// One live object, one line of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub name: String,
    /// GCS generation; on a store without versions, the modification time in
    /// microseconds (see [`generation_of`]).
    pub generation: i64,
    pub size: u64,
    /// Base64 CRC32C (GCS format; computed from the bytes on a file store).
    pub crc32c: Option<String>,
    /// Base64 MD5 (GCS only; absent for composite objects).
    pub md5: Option<String>,
    pub content_type: Option<String>,
    pub updated: DateTime<Utc>,
}

/// The generation an inventory records for an object: GCS's own, or, on a
/// store without versions, the modification time in microseconds, which also
/// changes on every overwrite.
pub fn generation_of(object: &ObjectInfo) -> i64 {
    object.generation.unwrap_or_else(|| object.updated.timestamp_micros())
}

/// Objects and bytes under one top-level prefix (`kyc/`, `selfies/`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCount {
    pub objects: u64,
    pub bytes: u64,
}

/// What the mirror pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorStats {
    /// Generations copied by this pass.
    pub copied: u64,
    pub copied_bytes: u64,
    /// Generations that were mirrored already.
    pub already_mirrored: u64,
    /// Generations gone from the documents store before they could be copied
    /// (overwritten and purged between listing and copying).
    pub vanished: u64,
    /// Names the storage layer refuses as keys (a console's `folder/`
    /// placeholder, `..` segments): listed in the inventory, not mirrored.
    #[serde(default)]
    pub skipped_invalid_names: u64,
}

/// Written last, next to the entries: its presence makes the inventory complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub format: String,
    pub version: u32,
    pub job: String,
    pub idempotency_key: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The documents store that was listed (`gs://...` or `file://...`).
    pub documents_store: String,
    pub object_count: u64,
    pub total_bytes: u64,
    /// Per top-level prefix (`kyc/`); names without `/` count under `""`.
    pub prefixes: BTreeMap<String, PrefixCount>,
    /// Key of the entries object, its compressed size and SHA-256.
    pub inventory: String,
    pub inventory_size_bytes: u64,
    pub inventory_sha256: String,
    /// `gcs` (real generations) or `modification-time` (store without versions).
    pub generations: String,
    /// Not written any more: the summary is written before the mirror pass
    /// (whose figures go to the job's result), so one object that cannot be
    /// mirrored never leaves the day without a complete inventory.
    pub mirror: Option<MirrorStats>,
}

/// The top-level prefix an object is counted under.
pub fn top_level_prefix(name: &str) -> &str {
    name.split_once('/').map_or("", |(first, _)| &name[..first.len() + 1])
}

/// An inventory date found in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedInventory {
    pub date: NaiveDate,
    pub entries: Option<ObjectInfo>,
    pub summary: Option<ObjectInfo>,
}

impl ListedInventory {
    /// Complete: both the entries and the summary (written last) exist.
    pub fn is_complete(&self) -> bool {
        self.entries.is_some() && self.summary.is_some()
    }
}

/// Every inventory date in the store, oldest first (one listing of
/// `documents/inventory/`; a few hundred objects at most).
pub async fn list_inventories(store: &dyn BlobStore) -> Result<Vec<ListedInventory>, StorageError> {
    let mut found: BTreeMap<NaiveDate, ListedInventory> = BTreeMap::new();
    let mut listing = store.list(INVENTORY_PREFIX, ListOptions::default());
    while let Some(object) = listing.try_next().await? {
        let Some((date, part)) = parse_inventory_key(&object.key) else {
            continue;
        };
        let listed = found.entry(date).or_insert_with(|| ListedInventory {
            date,
            entries: None,
            summary: None,
        });
        match part {
            InventoryPart::Entries => listed.entries = Some(object),
            InventoryPart::Summary => listed.summary = Some(object),
        }
    }
    Ok(found.into_values().collect())
}

/// The newest complete inventory's date.
pub async fn newest_complete(store: &dyn BlobStore) -> Result<Option<NaiveDate>, StorageError> {
    Ok(list_inventories(store)
        .await?
        .into_iter()
        .rev()
        .find(ListedInventory::is_complete)
        .map(|listed| listed.date))
}

/// Failures reading an inventory back.
#[derive(Debug, thiserror::Error)]
pub enum InventoryReadError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{key}: {detail}")]
    Corrupt { key: String, detail: String },
}

/// Reads the summary of the inventory of `date`.
pub async fn read_summary(store: &dyn BlobStore, date: NaiveDate) -> Result<Summary, InventoryReadError> {
    let key = summary_key(date);
    let bytes = store.get_bytes(&key, SUMMARY_LIMIT).await?;
    serde_json::from_slice(&bytes).map_err(|error| InventoryReadError::Corrupt {
        key,
        detail: format!("not an inventory summary: {error}"),
    })
}

/// Streams the entries of the inventory at `key`, decompressing chunk by
/// chunk (constant memory). With `expected_sha256` (from the summary), the
/// stream ends in an error if the compressed bytes do not match it.
/// Retention calls this to learn which mirrored generations are referenced.
pub fn read_entries<'a>(
    store: &'a dyn BlobStore,
    key: String,
    expected_sha256: Option<String>,
) -> BoxStream<'a, Result<InventoryEntry, InventoryReadError>> {
    struct State {
        key: String,
        body: Option<ByteStream>,
        decoder: flate2::write::GzDecoder<Vec<u8>>,
        partial_line: Vec<u8>,
        ready: VecDeque<InventoryEntry>,
        line_number: u64,
        hasher: Sha256,
        finished: bool,
    }
    let state = State {
        key,
        body: None,
        decoder: flate2::write::GzDecoder::new(Vec::new()),
        partial_line: Vec::new(),
        ready: VecDeque::new(),
        line_number: 0,
        hasher: Sha256::new(),
        finished: false,
    };
    futures::stream::try_unfold(state, move |mut state| {
        let expected_sha256 = expected_sha256.clone();
        async move {
            let corrupt = |key: &str, detail: String| InventoryReadError::Corrupt {
                key: key.to_owned(),
                detail,
            };
            loop {
                if let Some(entry) = state.ready.pop_front() {
                    return Ok(Some((entry, state)));
                }
                if state.finished {
                    return Ok(None);
                }
                if state.body.is_none() {
                    state.body = Some(store.get(&state.key, None).await?);
                }
                let chunk = state
                    .body
                    .as_mut()
                    .expect("opened above")
                    .try_next()
                    .await
                    .map_err(|error| corrupt(&state.key, format!("reading failed: {error}")))?;
                match chunk {
                    Some(chunk) => {
                        state.hasher.update(&chunk);
                        state
                            .decoder
                            .write_all(&chunk)
                            .map_err(|error| corrupt(&state.key, format!("not valid gzip: {error}")))?;
                    }
                    None => {
                        state
                            .decoder
                            .try_finish()
                            .map_err(|error| corrupt(&state.key, format!("truncated gzip: {error}")))?;
                        state.finished = true;
                        let sha256 = hex::encode(std::mem::take(&mut state.hasher).finalize());
                        if let Some(expected) = expected_sha256.as_ref().filter(|expected| **expected != sha256) {
                            return Err(corrupt(
                                &state.key,
                                format!(
                                    "SHA-256 is {sha256}, the summary records {expected}: the inventory was altered"
                                ),
                            ));
                        }
                    }
                }
                let decoded = std::mem::take(state.decoder.get_mut());
                state.partial_line.extend_from_slice(&decoded);
                let mut start = 0;
                while let Some(end) = state.partial_line[start..].iter().position(|byte| *byte == b'\n') {
                    let line = &state.partial_line[start..start + end];
                    start += end + 1;
                    state.line_number += 1;
                    if line.is_empty() {
                        continue;
                    }
                    let entry = serde_json::from_slice(line)
                        .map_err(|error| corrupt(&state.key, format!("line {}: {error}", state.line_number)))?;
                    state.ready.push_back(entry);
                }
                state.partial_line.drain(..start);
                if state.finished && !state.partial_line.is_empty() {
                    return Err(corrupt(&state.key, "the last line is not terminated".to_owned()));
                }
            }
        }
    })
    .boxed()
}

/// Gzip-compresses inventory lines as they come, handing out compressed
/// chunks of about [`FLUSH_BYTES`] so memory stays flat whatever the count.
pub struct InventoryWriter {
    encoder: flate2::write::GzEncoder<Vec<u8>>,
}

impl Default for InventoryWriter {
    fn default() -> Self {
        InventoryWriter {
            encoder: flate2::write::GzEncoder::new(Vec::with_capacity(FLUSH_BYTES * 2), flate2::Compression::default()),
        }
    }
}

impl InventoryWriter {
    /// Adds one entry; returns a compressed chunk when enough has accumulated.
    pub fn push(&mut self, entry: &InventoryEntry) -> std::io::Result<Option<Bytes>> {
        serde_json::to_writer(&mut self.encoder, entry)?;
        self.encoder.write_all(b"\n")?;
        if self.encoder.get_ref().len() >= FLUSH_BYTES {
            return Ok(Some(Bytes::from(std::mem::take(self.encoder.get_mut()))));
        }
        Ok(None)
    }

    /// Ends the gzip stream; returns the last chunk.
    pub fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(self.encoder.finish()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        assert_eq!(inventory_key(date), "documents/inventory/2026-11-26.jsonl.gz");
        assert_eq!(summary_key(date), "documents/inventory/2026-11-26.summary.json");
        assert_eq!(
            parse_inventory_key(&inventory_key(date)),
            Some((date, InventoryPart::Entries))
        );
        assert_eq!(
            parse_inventory_key(&summary_key(date)),
            Some((date, InventoryPart::Summary))
        );
        for key in [
            "documents/inventory/2026-11-26.json",
            "documents/inventory/latest.jsonl.gz",
            "documents/objects/a@1",
        ] {
            assert_eq!(parse_inventory_key(key), None, "{key}");
        }
    }

    #[test]
    fn mirror_keys() {
        let cases: &[(&str, Option<(&str, i64)>)] = &[
            (
                "documents/objects/kyc/u-1/passport.jpg@1795682593403939",
                Some(("kyc/u-1/passport.jpg", 1795682593403939)),
            ),
            (
                "documents/objects/kyc/me@example.com/id.png@42",
                Some(("kyc/me@example.com/id.png", 42)),
            ),
            ("documents/objects/kyc/a@", None),
            ("documents/objects/kyc/a@x1", None),
            ("documents/objects/@1", None),
            ("documents/objects/kyc/a", None),
            ("documents/inventory/a@1", None),
        ];
        for (key, expected) in cases {
            assert_eq!(parse_mirror_key(key), *expected, "{key}");
        }
        assert_eq!(
            mirror_key("kyc/me@example.com/id.png", 42),
            "documents/objects/kyc/me@example.com/id.png@42"
        );
    }

    #[test]
    fn top_level_prefixes() {
        for (name, prefix) in [
            ("kyc/a/b.jpg", "kyc/"),
            ("vendor-media/x", "vendor-media/"),
            ("loose.txt", ""),
        ] {
            assert_eq!(top_level_prefix(name), prefix, "{name}");
        }
    }
}
