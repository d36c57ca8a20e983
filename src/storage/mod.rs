//! Object storage: the one [`BlobStore`] trait every job writes through, and its
//! two backends — Google Cloud Storage (`gs://bucket[/prefix]`) and the local
//! filesystem (`file:///path`, the development default).
//!
//! The guarantees jobs build on, identical in both backends:
//! - uploads stream with constant memory and report SHA-256 and byte count;
//! - a half-written object is never visible under its final name;
//! - [`WriteMode::CreateOnly`] never replaces an existing object, so nothing
//!   complete is ever overwritten;
//! - every error carries an [`ErrorClass`] so the job runtime can choose between
//!   retrying and dead-lettering;
//! - a held object ([`Hold`], a pinned backup) is never deleted or replaced
//!   through a store, and the store's [`RetentionPolicy`] says which objects
//!   it would refuse to delete.

mod file;
mod gcs;
mod hashing;
mod key;
mod location;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncRead;

pub use file::FileStore;
pub use gcs::{GcsStore, GcsTimeouts};
pub use hashing::{HashingStream, StreamEnd};
pub use key::validate_key;
pub use location::{StoreLocation, StoreLocationError};

/// A stream of object bytes, the only body type the stores accept and return.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Chunk size used when turning an [`AsyncRead`] into a [`ByteStream`]: large
/// enough that per-chunk overhead is negligible, small enough to keep memory flat.
pub const STREAM_CHUNK_BYTES: usize = 256 * 1024;

/// Wraps a reader (a child's stdout, a file) as an upload body.
pub fn stream_from_reader(reader: impl AsyncRead + Send + 'static) -> ByteStream {
    tokio_util::io::ReaderStream::with_capacity(reader, STREAM_CHUNK_BYTES).boxed()
}

/// Wraps bytes already in memory (manifests, small reports) as an upload body.
pub fn stream_from_bytes(bytes: impl Into<Bytes>) -> ByteStream {
    futures::stream::once(futures::future::ready(Ok(bytes.into()))).boxed()
}

/// Whether a write may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Fail with [`StorageError::AlreadyExists`] if the key exists. Backups and
    /// manifests use this: a complete backup is never overwritten.
    CreateOnly,
    /// Replace atomically. Only for well-known pointers such as
    /// `secrets/latest.json.encrypted`.
    Overwrite,
}

/// What a listing should include.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Include non-current generations (versioned GCS buckets). Backends without
    /// versions list live objects only.
    pub versions: bool,
    /// Objects per page requested from the backend; `None` lets it choose.
    pub page_size: Option<u32>,
}

/// Metadata of one object (or one generation of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's prefix, e.g. `postgresql/daily/2026-11-26/manifest.json`.
    pub key: String,
    pub size: u64,
    /// GCS generation; `None` for backends without versions.
    pub generation: Option<i64>,
    /// `false` for a non-current (overwritten or deleted) generation.
    pub live: bool,
    pub updated: DateTime<Utc>,
    /// When this generation was created (GCS `timeCreated`; file: modification time).
    pub created: DateTime<Utc>,
    /// When this generation stopped being live, replaced or deleted (GCS
    /// `timeDeleted`); `None` while it is live. Point-in-time restore needs it.
    pub noncurrent_since: Option<DateTime<Utc>>,
    /// Base64 CRC32C as GCS reports it.
    pub crc32c: Option<String>,
    /// Base64 MD5 as GCS reports it (absent for composite objects).
    pub md5: Option<String>,
    pub content_type: Option<String>,
    /// The hold on this object, if it is held (see [`BlobStore::set_hold`]).
    pub hold: Option<Hold>,
}

/// A hold on an object: while it is held, nothing deletes or replaces it —
/// on GCS a temporary object hold (not even lifecycle rules delete a held
/// object), on the file store a marker the store itself honours.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    /// Why it is held, as the person who placed it said; empty for a hold
    /// placed outside keshless-ops (the console, `gcloud storage objects update`).
    pub reason: String,
    /// When it was placed, when known.
    pub since: Option<DateTime<Utc>>,
    /// Who placed it, when known.
    pub by: Option<String>,
}

impl Hold {
    /// The hold in one phrase: `pinned: REASON`.
    pub fn describe(&self) -> String {
        if self.reason.is_empty() {
            "a temporary hold placed outside keshless-ops".to_owned()
        } else {
            format!("pinned: {}", self.reason)
        }
    }
}

/// A store-wide rule that no object younger than `period` may be deleted or
/// replaced (a GCS bucket retention policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub period: chrono::Duration,
    /// A locked policy can never be removed or shortened.
    pub locked: bool,
}

impl RetentionPolicy {
    /// Until when an object created at `created` cannot be deleted.
    pub fn locked_until(&self, created: DateTime<Utc>) -> DateTime<Utc> {
        created + self.period
    }
}

/// The result of a completed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    pub object: ObjectInfo,
    /// Lower-case hex SHA-256 of the bytes that were streamed.
    pub sha256: String,
    pub bytes: u64,
}

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying: timeouts, 408/429/5xx, connection resets.
    Transient,
    /// Retrying cannot help: permissions, missing bucket, precondition failed, bad key.
    Permanent,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

/// Failures of a storage operation. Messages name the store and the key.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{location}: object {key:?} not found")]
    NotFound { location: String, key: String },

    #[error("{location}: object {key:?} already exists; refusing to overwrite it (create-only write)")]
    AlreadyExists { location: String, key: String },

    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    #[error("{location}: {operation} is not supported by this backend: {detail}")]
    Unsupported {
        location: String,
        operation: &'static str,
        detail: &'static str,
    },

    /// The body stream handed to `put` failed; nothing was stored.
    #[error("{location}: upload of {key:?} aborted because its source failed: {source}")]
    Source {
        location: String,
        key: String,
        #[source]
        source: std::io::Error,
    },

    /// The store's checksum or size disagrees with what was streamed.
    #[error("{location}: upload of {key:?} is corrupt: {detail}; the object was removed")]
    Integrity {
        location: String,
        key: String,
        detail: String,
    },

    /// The object is held ([`Hold`]): it cannot be deleted or replaced until
    /// the hold is released.
    #[error("{location}: object {key:?} is held ({reason}) and cannot be deleted or replaced; release it first (`keshless-ops backups unpin`)")]
    Held {
        location: String,
        key: String,
        reason: String,
    },

    /// The store's retention policy protects the object for now.
    #[error("{location}: object {key:?} is under the bucket's retention policy and cannot be deleted or replaced yet: {detail}")]
    Locked {
        location: String,
        key: String,
        detail: String,
    },

    #[error("{location}: {operation} {key:?} failed ({class}): {message}")]
    Backend {
        location: String,
        operation: &'static str,
        key: String,
        class: ErrorClass,
        /// HTTP status where the backend speaks HTTP.
        status: Option<u16>,
        message: String,
    },
}

impl StorageError {
    /// A download that failed part-way through the body (a reset, a stall):
    /// worth retrying.
    pub fn read_interrupted(location: &StoreLocation, key: &str, error: &dyn fmt::Display) -> StorageError {
        StorageError::Backend {
            location: location.to_string(),
            operation: "read",
            key: key.to_owned(),
            class: ErrorClass::Transient,
            status: None,
            message: error.to_string(),
        }
    }

    /// Whether retrying the operation may succeed.
    pub fn class(&self) -> ErrorClass {
        match self {
            StorageError::NotFound { .. }
            | StorageError::AlreadyExists { .. }
            | StorageError::InvalidKey { .. }
            | StorageError::Unsupported { .. }
            | StorageError::Held { .. } => ErrorClass::Permanent,
            // The policy's period ends: a retry after it succeeds. The weekly
            // secrets backup replaces `secrets/latest.json.encrypted` about
            // seven days after the last one, so with a 7-day policy it can
            // arrive seconds early; its retries bridge that.
            StorageError::Locked { .. } => ErrorClass::Transient,
            // A source that fails (pg_dump killed, network read) may work next
            // time; the caller knows better and can reclassify.
            StorageError::Source { .. } | StorageError::Integrity { .. } => ErrorClass::Transient,
            StorageError::Backend { class, .. } => *class,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// The storage operations every job uses. Keys are relative to the store's
/// location (`gs://bucket/prefix` or `file:///root`) and use `/` separators.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Where this store points; its `Display` is safe to log.
    fn location(&self) -> &StoreLocation;

    /// Whether objects have generations (versioned GCS buckets).
    fn supports_versions(&self) -> bool;

    /// Streams `body` into `key`, hashing on the way. On any failure nothing
    /// is visible under `key` (and, for `CreateOnly`, an existing object is untouched).
    async fn put(&self, key: &str, body: ByteStream, mode: WriteMode) -> Result<PutReport, StorageError>;

    /// Streams an object, or one generation of it.
    async fn get(&self, key: &str, generation: Option<i64>) -> Result<ByteStream, StorageError>;

    /// Metadata of the live object, `None` if absent.
    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError>;

    /// Objects whose key starts with `prefix`, in lexicographic key order,
    /// fetched page by page as the stream is consumed.
    fn list<'a>(&'a self, prefix: &'a str, options: ListOptions) -> BoxStream<'a, Result<ObjectInfo, StorageError>>;

    /// Copies inside the store without the bytes passing through this process
    /// (where the backend can), optionally from a specific source generation.
    async fn copy(
        &self,
        from: &str,
        from_generation: Option<i64>,
        to: &str,
        mode: WriteMode,
    ) -> Result<ObjectInfo, StorageError>;

    /// Deletes the live object, or one generation of it. A held object is
    /// refused with [`StorageError::Held`].
    async fn delete(&self, key: &str, generation: Option<i64>) -> Result<(), StorageError>;

    /// Places (`Some`) or releases (`None`) a [`Hold`] on the live object.
    async fn set_hold(&self, key: &str, hold: Option<&Hold>) -> Result<(), StorageError> {
        let _ = (key, hold);
        Err(StorageError::Unsupported {
            location: self.location().to_string(),
            operation: "holding an object",
            detail: "this store keeps no holds",
        })
    }

    /// The store's retention policy, `None` when it has none.
    async fn retention_policy(&self) -> Result<Option<RetentionPolicy>, StorageError> {
        Ok(None)
    }

    /// This store as a GCS store, so copies between two buckets can stay
    /// server-side ([`copy_between`]).
    fn as_gcs(&self) -> Option<&GcsStore> {
        None
    }
}

/// Copies `from` (optionally one generation of it) in `source` to `to` in
/// `destination`: server-side when both are GCS (the bytes never pass through
/// this process), otherwise streamed get → put with constant memory.
pub async fn copy_between(
    source: &dyn BlobStore,
    from: &str,
    from_generation: Option<i64>,
    destination: &dyn BlobStore,
    to: &str,
    mode: WriteMode,
) -> Result<ObjectInfo, StorageError> {
    if let (Some(source_gcs), Some(destination_gcs)) = (source.as_gcs(), destination.as_gcs()) {
        return destination_gcs
            .copy_from(source_gcs, from, from_generation, to, mode)
            .await;
    }
    if mode == WriteMode::CreateOnly && destination.stat(to).await?.is_some() {
        // Don't stream a whole object only to have the create-only write refuse it.
        return Err(StorageError::AlreadyExists {
            location: destination.location().to_string(),
            key: to.to_owned(),
        });
    }
    let body = source.get(from, from_generation).await?;
    Ok(destination.put(to, body, mode).await?.object)
}

/// Where [`server_time`] writes its probes: outside every backup prefix, so
/// retention, listings and `status` never see them.
pub const CLOCK_PROBE_PREFIX: &str = "keshless-ops/clock-probes/";

/// The store's own clock: the creation time it gives a small probe object
/// written now (GCS: the server's `timeCreated`; the file store: the file's
/// modification time as its filesystem, or its simulated clock, stamps it).
/// The probe is deleted again; under a bucket retention policy it is left
/// and a later call removes it once the policy allows.
pub async fn server_time(store: &dyn BlobStore) -> Result<DateTime<Utc>, StorageError> {
    let key = format!("{CLOCK_PROBE_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let written = store
        .put(&key, stream_from_bytes(&b"clock probe\n"[..]), WriteMode::CreateOnly)
        .await?;
    let at = written.object.created;
    // Best effort: a probe left behind is 12 bytes outside every backup
    // prefix. Never a deletion the bucket's retention policy would refuse.
    let retention = store.retention_policy().await.ok().flatten();
    let deletable = |created: DateTime<Utc>| retention.is_none_or(|policy| policy.locked_until(created) <= at);
    let mut probes = Vec::new();
    let mut listing = store.list(CLOCK_PROBE_PREFIX, ListOptions::default());
    while let Ok(Some(object)) = listing.try_next().await {
        if (object.key == key || object.created < at - chrono::Duration::days(1)) && deletable(object.created) {
            probes.push(object.key);
        }
    }
    drop(listing);
    for probe in probes {
        if let Err(error) = store.delete(&probe, None).await {
            tracing::debug!(object = %probe, error = %error, "clock probe left for a later run");
        }
    }
    Ok(at)
}

/// Convenience operations built on the trait, for small objects.
#[async_trait]
pub trait BlobStoreExt: BlobStore {
    /// Uploads an in-memory value (a manifest, a report).
    async fn put_bytes(&self, key: &str, bytes: Bytes, mode: WriteMode) -> Result<PutReport, StorageError> {
        self.put(key, stream_from_bytes(bytes), mode).await
    }

    /// Reads a whole object into memory, refusing anything over `limit` bytes so
    /// a mistaken key can't exhaust memory.
    async fn get_bytes(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        let mut stream = self.get(key, None).await?;
        let mut buffer = bytes::BytesMut::new();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|error| StorageError::read_interrupted(self.location(), key, &error))?
        {
            if (buffer.len() + chunk.len()) as u64 > limit {
                return Err(StorageError::Backend {
                    location: self.location().to_string(),
                    operation: "read",
                    key: key.to_owned(),
                    class: ErrorClass::Permanent,
                    status: None,
                    message: format!("object is larger than the {limit}-byte limit for in-memory reads"),
                });
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    }
}

impl<T: BlobStore + ?Sized> BlobStoreExt for T {}

/// Opens the store a [`StoreLocation`] names. `storage_emulator_host` (the
/// `STORAGE_EMULATOR_HOST` convention) points GCS at an emulator without
/// credentials; otherwise Application Default Credentials are used.
pub async fn open(location: &StoreLocation, storage_emulator_host: Option<&str>) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match location {
        StoreLocation::Gcs { .. } => Arc::new(GcsStore::connect(location.clone(), storage_emulator_host).await?),
        StoreLocation::File { .. } => Arc::new(FileStore::open(location.clone()).await?),
    })
}
