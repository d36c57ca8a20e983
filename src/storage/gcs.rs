//! Google Cloud Storage backend over the JSON API (`gcloud-storage`).
//!
//! Uploads are single streamed requests: GCS only makes an object visible when
//! the request completes, so a failed upload leaves nothing behind, and
//! `ifGenerationMatch=0` makes create-only writes atomic on the server.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use google_cloud_storage::client::{Client, ClientConfig};
use google_cloud_storage::http::objects::copy::CopyObjectRequest;
use google_cloud_storage::http::objects::delete::DeleteObjectRequest;
use google_cloud_storage::http::objects::download::Range;
use google_cloud_storage::http::objects::get::GetObjectRequest;
use google_cloud_storage::http::objects::list::ListObjectsRequest;
use google_cloud_storage::http::objects::patch::PatchObjectRequest;
use google_cloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use google_cloud_storage::http::objects::Object;
use google_cloud_storage::http::Error as GcsError;

use crate::telemetry::error_chain;

use super::hashing::{HashingStream, StreamEnd};
use super::key::checked;
use super::{
    BlobStore, ByteStream, ErrorClass, Hold, ListOptions, ObjectInfo, PutReport, RetentionPolicy, StorageError,
    StoreLocation, WriteMode,
};

/// Custom metadata a pin records next to the temporary hold: why, since
/// when, by whom. Metadata can be changed on held objects and under a
/// retention policy, so a pin never needs an object of its own.
const HOLD_REASON: &str = "keshless-pin-reason";
const HOLD_SINCE: &str = "keshless-pinned-at";
const HOLD_BY: &str = "keshless-pinned-by";

/// How long Cloud Storage may keep us waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcsTimeouts {
    /// Connecting to the endpoint.
    pub connect: std::time::Duration,
    /// Every request but a streamed upload: the wait for the response and
    /// between two reads of its body (a download may last hours, but not
    /// stand still this long).
    pub read: std::time::Duration,
    /// A streamed upload may last hours (a 50 GiB dump), but the connection
    /// may not go this long without taking the next chunk, nor Cloud Storage
    /// this long without answering once the body is sent. Time spent waiting
    /// for the source (pg_dump) does not count.
    pub upload_stall: std::time::Duration,
}

impl Default for GcsTimeouts {
    fn default() -> Self {
        GcsTimeouts {
            connect: std::time::Duration::from_secs(15),
            read: std::time::Duration::from_secs(120),
            upload_stall: std::time::Duration::from_secs(120),
        }
    }
}

/// A bucket (and optional prefix) in Google Cloud Storage.
#[derive(Clone)]
pub struct GcsStore {
    client: Client,
    /// For streamed uploads: no read timeout, because reqwest's runs from
    /// the start of the request and is not reset while the body is sent, so
    /// it would cut every upload longer than itself; [`GcsStore::put`] watches
    /// the body's progress instead.
    upload_client: Client,
    location: StoreLocation,
    bucket: String,
    upload_stall: std::time::Duration,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GcsStore")
            .field("location", &self.location.to_string())
            .finish()
    }
}

impl GcsStore {
    /// Connects to GCS, or to the emulator at `emulator_host` (`host:port` or a
    /// URL) without credentials.
    pub async fn connect(location: StoreLocation, emulator_host: Option<&str>) -> anyhow::Result<Self> {
        Self::connect_with(location, emulator_host, GcsTimeouts::default()).await
    }

    /// [`GcsStore::connect`] with other timeouts.
    pub async fn connect_with(
        location: StoreLocation,
        emulator_host: Option<&str>,
        timeouts: GcsTimeouts,
    ) -> anyhow::Result<Self> {
        let StoreLocation::Gcs { bucket, .. } = &location else {
            anyhow::bail!("{location} is not a gs:// location");
        };
        let bucket = bucket.clone();
        // No total timeout (a 50 GiB dump may upload for hours), but a
        // connection that stops moving bytes must fail instead of hanging
        // the job while its lease and message keep being renewed.
        let client = Client::new(client_config(emulator_host, timeouts.connect, Some(timeouts.read)).await?);
        let upload_client = Client::new(client_config(emulator_host, timeouts.connect, None).await?);
        Ok(GcsStore {
            client,
            upload_client,
            location,
            bucket,
            upload_stall: timeouts.upload_stall,
        })
    }

    /// The underlying client, for callers (tests, tools) that manage buckets.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn classify(&self, operation: &'static str, key: &str, error: GcsError) -> StorageError {
        let location = self.location.to_string();
        // A JSON error body and a bare HTTP status (streamed downloads) mean the same.
        let status = match &error {
            GcsError::Response(response) => Some(response.code),
            GcsError::HttpClient(inner) | GcsError::RawResponse(inner, _) => inner.status().map(|code| code.as_u16()),
            _ => None,
        };
        match status {
            // Only reads name an object; elsewhere a 404 means the bucket is missing.
            Some(404) if matches!(operation, "read" | "stat" | "delete") => {
                return StorageError::NotFound {
                    location,
                    key: key.to_owned(),
                }
            }
            Some(412) if matches!(operation, "create" | "copy") => {
                return StorageError::AlreadyExists {
                    location,
                    key: key.to_owned(),
                }
            }
            // Cloud Storage refuses to delete or replace a held object, or one
            // its bucket's retention policy still protects, with a 403 that
            // says which.
            Some(403) if matches!(operation, "delete" | "write") => {
                if let GcsError::Response(response) = &error {
                    let message = response.message.to_ascii_lowercase();
                    if message.contains("hold") {
                        return StorageError::Held {
                            location,
                            key: key.to_owned(),
                            reason: response.message.clone(),
                        };
                    }
                    if message.contains("retention") {
                        return StorageError::Locked {
                            location,
                            key: key.to_owned(),
                            detail: response.message.clone(),
                        };
                    }
                }
            }
            _ => {}
        }
        let class = match (&error, status) {
            (_, Some(408 | 429 | 500..=599)) => ErrorClass::Transient,
            (_, Some(_)) => ErrorClass::Permanent,
            (GcsError::HttpClient(inner), None) if inner.is_builder() => ErrorClass::Permanent,
            (GcsError::InvalidRangeHeader(_), None) => ErrorClass::Permanent,
            // No HTTP status: connection refused or reset, timeouts, token
            // refresh (metadata server) trouble. Bounded retries then
            // dead-lettering also handle a real misconfiguration.
            (_, None) => ErrorClass::Transient,
        };
        let message = match &error {
            GcsError::Response(response) => response.message.clone(),
            other => error_chain(other),
        };
        StorageError::Backend {
            location,
            operation,
            key: key.to_owned(),
            class,
            status,
            message,
        }
    }

    fn info(&self, object: Object) -> ObjectInfo {
        let key = match &self.location {
            StoreLocation::Gcs { prefix, .. } if !prefix.is_empty() => object
                .name
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(&object.name)
                .to_owned(),
            _ => object.name.clone(),
        };
        // Written out per field: naming the client's time type would need its crate.
        let updated = object
            .updated
            .or(object.time_created)
            .map(|time| chrono::DateTime::from_timestamp_nanos(time.unix_timestamp_nanos() as i64))
            .unwrap_or_default();
        let created = object
            .time_created
            .or(object.updated)
            .map(|time| chrono::DateTime::from_timestamp_nanos(time.unix_timestamp_nanos() as i64))
            .unwrap_or_default();
        let noncurrent_since = object
            .time_deleted
            .map(|time| chrono::DateTime::from_timestamp_nanos(time.unix_timestamp_nanos() as i64));
        ObjectInfo {
            key,
            size: object.size.max(0) as u64,
            generation: Some(object.generation),
            live: object.time_deleted.is_none(),
            updated,
            created,
            noncurrent_since,
            hold: hold_of(&object),
            crc32c: object.crc32c,
            md5: object.md5_hash,
            content_type: object.content_type,
        }
    }

    /// Refuses to delete or replace a held object. Cloud Storage refuses
    /// too (mapped in [`GcsStore::classify`]); asking first makes the refusal
    /// the same everywhere, fake-gcs-server included, which ignores holds.
    async fn refuse_if_held(&self, key: &str, generation: Option<i64>) -> Result<(), StorageError> {
        let request = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: self.location.object_name(checked(key)?),
            generation,
            ..Default::default()
        };
        match self.client.get_object(&request).await {
            Ok(object) => match hold_of(&object) {
                Some(hold) => Err(StorageError::Held {
                    location: self.location.to_string(),
                    key: key.to_owned(),
                    reason: hold.describe(),
                }),
                None => Ok(()),
            },
            Err(GcsError::Response(response)) if response.code == 404 => Ok(()),
            Err(error) => Err(self.classify("stat", key, error)),
        }
    }

    /// Best-effort removal of a just-written generation that failed verification.
    async fn discard(&self, name: &str, generation: i64) {
        let request = DeleteObjectRequest {
            bucket: self.bucket.clone(),
            object: name.to_owned(),
            generation: Some(generation),
            ..Default::default()
        };
        if let Err(error) = self.client.delete_object(&request).await {
            tracing::error!(object = name, generation, error = %error_chain(&error), "could not remove a corrupt upload");
        }
    }
}

impl GcsStore {
    /// Server-side copy from another bucket (`copyTo` across buckets) into this
    /// store. `copyTo` rather than `rewriteTo`: the client's rewrite request
    /// cannot carry `ifGenerationMatch`, and create-only must hold here too.
    /// Same-location buckets (ours) complete a copy in one call.
    pub async fn copy_from(
        &self,
        source: &GcsStore,
        from: &str,
        from_generation: Option<i64>,
        to: &str,
        mode: WriteMode,
    ) -> Result<ObjectInfo, StorageError> {
        if mode == WriteMode::Overwrite {
            self.refuse_if_held(to, None).await?;
        }
        if mode == WriteMode::CreateOnly && self.stat(to).await?.is_some() {
            // GCS enforces `ifGenerationMatch=0` below atomically; this early
            // check also covers fake-gcs-server, which ignores the precondition
            // on copies, and saves a copy that would be refused anyway.
            return Err(StorageError::AlreadyExists {
                location: self.location.to_string(),
                key: to.to_owned(),
            });
        }
        let request = CopyObjectRequest {
            source_bucket: source.bucket.clone(),
            source_object: source.location.object_name(checked(from)?),
            source_generation: from_generation,
            destination_bucket: self.bucket.clone(),
            destination_object: self.location.object_name(checked(to)?),
            if_generation_match: (mode == WriteMode::CreateOnly).then_some(0),
            ..Default::default()
        };
        match self.client.copy_object(&request).await {
            Ok(object) => Ok(self.info(object)),
            // A 404 names the source; a 412 names the destination.
            Err(GcsError::Response(response)) if response.code == 404 => Err(StorageError::NotFound {
                location: source.location.to_string(),
                key: from.to_owned(),
            }),
            Err(error) => Err(self.classify("copy", to, error)),
        }
    }
}

/// Content type recorded on upload, so objects read sensibly in the console.
/// Resolves once the upload's consumer (the HTTP connection) has gone
/// `limit` without taking data or, with the body sent, without an answer.
async fn stalled(observer: &super::hashing::HashObserver, limit: std::time::Duration) {
    let check_every = (limit / 8).clamp(std::time::Duration::from_millis(50), std::time::Duration::from_secs(5));
    loop {
        tokio::time::sleep(check_every).await;
        if observer.consumer_idle().is_some_and(|idle| idle >= limit) {
            return;
        }
    }
}

/// The hold an object resource shows: its temporary hold, or (fake-gcs-server
/// keeps custom metadata but not holds) the reason a pin recorded.
fn hold_of(object: &Object) -> Option<Hold> {
    let metadata = object.metadata.as_ref();
    let field = |name: &str| {
        metadata
            .and_then(|metadata| metadata.get(name))
            .filter(|value| !value.is_empty())
            .cloned()
    };
    let reason = field(HOLD_REASON);
    if object.temporary_hold != Some(true) && reason.is_none() {
        return None;
    }
    Some(Hold {
        reason: reason.unwrap_or_default(),
        since: field(HOLD_SINCE)
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(&text).ok())
            .map(|time| time.with_timezone(&chrono::Utc)),
        by: field(HOLD_BY),
    })
}

fn content_type_for(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, extension)| extension) {
        Some("json") => "application/json",
        Some("jsonl") => "application/x-ndjson",
        Some("gz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// A client configuration for the emulator (anonymous) or for Cloud Storage
/// (Application Default Credentials).
async fn client_config(
    emulator_host: Option<&str>,
    connect_timeout: std::time::Duration,
    read_timeout: Option<std::time::Duration>,
) -> anyhow::Result<ClientConfig> {
    let mut http = reqwest::Client::builder().connect_timeout(connect_timeout);
    if let Some(read_timeout) = read_timeout {
        http = http.read_timeout(read_timeout);
    }
    let http = http
        .build()
        .map_err(|error| anyhow::anyhow!("cannot build the HTTP client for Cloud Storage: {error}"))?;
    let http = Some(reqwest_middleware::ClientBuilder::new(http).build());
    Ok(match emulator_host.filter(|host| !host.is_empty()) {
        Some(host) => {
            let endpoint = if host.contains("://") {
                host.trim_end_matches('/').to_owned()
            } else {
                format!("http://{host}")
            };
            ClientConfig {
                storage_endpoint: endpoint,
                http,
                ..ClientConfig::default()
            }
            .anonymous()
        }
        None => {
            use anyhow::Context as _;
            ClientConfig {
                http,
                ..ClientConfig::default()
            }
            .with_auth()
            .await
            .context(
                "could not load Google Application Default Credentials for Cloud Storage \
                 (set GOOGLE_APPLICATION_CREDENTIALS, run on Google Cloud, or set STORAGE_EMULATOR_HOST)",
            )?
        }
    })
}

#[async_trait]
impl BlobStore for GcsStore {
    fn location(&self) -> &StoreLocation {
        &self.location
    }

    fn supports_versions(&self) -> bool {
        true
    }

    async fn put(&self, key: &str, body: ByteStream, mode: WriteMode) -> Result<PutReport, StorageError> {
        let name = self.location.object_name(checked(key)?);
        if mode == WriteMode::Overwrite {
            self.refuse_if_held(key, None).await?;
        }
        let hashing = HashingStream::new(body);
        let observer = hashing.observer();
        let request = UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match: (mode == WriteMode::CreateOnly).then_some(0),
            ..Default::default()
        };
        // Multipart rather than a simple media upload: both carry the body as
        // one streamed request, but fake-gcs-server only honours
        // `ifGenerationMatch` on multipart, and the create-only guarantee must
        // be tested against the emulator exactly as it runs in production.
        let upload_type = UploadType::Multipart(Box::new(Object {
            name: name.clone(),
            content_type: Some(content_type_for(key).to_owned()),
            ..Default::default()
        }));
        let operation = if mode == WriteMode::CreateOnly {
            "create"
        } else {
            "write"
        };
        let location = self.location.to_string();
        let upload = self
            .upload_client
            .upload_streamed_object(&request, hashing, &upload_type);
        let uploaded = tokio::select! {
            uploaded = upload => uploaded,
            () = stalled(&observer, self.upload_stall) => {
                // Dropping the request closes the connection: a body cut
                // short never becomes an object. One sent in full may still
                // be stored; a create-only retry then finds the name taken.
                let waited = if observer.finished() {
                    "sent the whole body, but Cloud Storage did not answer"
                } else {
                    "the connection to Cloud Storage took no data"
                };
                return Err(StorageError::Backend {
                    location,
                    operation,
                    key: key.to_owned(),
                    class: ErrorClass::Transient,
                    status: None,
                    message: format!("upload stalled: {waited} for {} s", self.upload_stall.as_secs_f32()),
                });
            }
        };
        let object = match (uploaded, observer.take()) {
            // The source's own failure explains an aborted request best.
            (_, StreamEnd::Failed(source)) => {
                return Err(StorageError::Source {
                    location,
                    key: key.to_owned(),
                    source,
                })
            }
            (Err(error), _) => return Err(self.classify(operation, key, error)),
            (Ok(object), StreamEnd::Unfinished { bytes }) => {
                // The server finished an object we did not finish sending.
                self.discard(&name, object.generation).await;
                return Err(StorageError::Integrity {
                    location,
                    key: key.to_owned(),
                    detail: format!("the server stored an object after only {bytes} bytes were streamed"),
                });
            }
            (Ok(object), StreamEnd::Complete(digests)) => {
                let expected_crc = digests.crc32c_base64();
                let size_ok = object.size.max(0) as u64 == digests.bytes;
                let crc_ok = object.crc32c.as_deref().is_none_or(|crc| crc == expected_crc);
                if !size_ok || !crc_ok {
                    self.discard(&name, object.generation).await;
                    return Err(StorageError::Integrity {
                        location,
                        key: key.to_owned(),
                        detail: format!(
                            "sent {} bytes with CRC32C {}, the store has {} bytes with CRC32C {}",
                            digests.bytes,
                            expected_crc,
                            object.size,
                            object.crc32c.as_deref().unwrap_or("(none)")
                        ),
                    });
                }
                (object, digests)
            }
        };
        let (object, digests) = object;
        Ok(PutReport {
            object: self.info(object),
            sha256: digests.sha256_hex,
            bytes: digests.bytes,
        })
    }

    async fn get(&self, key: &str, generation: Option<i64>) -> Result<ByteStream, StorageError> {
        let name = self.location.object_name(checked(key)?);
        let request = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: name,
            generation,
            ..Default::default()
        };
        let stream = self
            .client
            .download_streamed_object(&request, &Range::default())
            .await
            .map_err(|error| self.classify("read", key, error))?;
        Ok(stream
            .map_err(|error| std::io::Error::other(error_chain(&error)))
            .boxed())
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let name = self.location.object_name(checked(key)?);
        let request = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: name,
            ..Default::default()
        };
        match self.client.get_object(&request).await {
            Ok(object) => Ok(Some(self.info(object))),
            Err(GcsError::Response(response)) if response.code == 404 => Ok(None),
            Err(error) => Err(self.classify("stat", key, error)),
        }
    }

    fn list<'a>(&'a self, prefix: &'a str, options: ListOptions) -> BoxStream<'a, Result<ObjectInfo, StorageError>> {
        let full_prefix = match &self.location {
            StoreLocation::Gcs { prefix: base, .. } if !base.is_empty() => format!("{base}/{prefix}"),
            _ => prefix.to_owned(),
        };
        // One page in memory at a time: the next page is only requested once
        // the consumer has drained the current one.
        futures::stream::try_unfold(
            (Some(None::<String>), full_prefix),
            move |(page_token, full_prefix)| async move {
                let Some(page_token) = page_token else {
                    return Ok(None);
                };
                let request = ListObjectsRequest {
                    bucket: self.bucket.clone(),
                    prefix: (!full_prefix.is_empty()).then(|| full_prefix.clone()),
                    page_token,
                    max_results: options.page_size.map(|size| size.min(i32::MAX as u32) as i32),
                    versions: options.versions.then_some(true),
                    ..Default::default()
                };
                let response = self
                    .client
                    .list_objects(&request)
                    .await
                    .map_err(|error| self.classify("list", prefix, error))?;
                let items: Vec<ObjectInfo> = response
                    .items
                    .unwrap_or_default()
                    .into_iter()
                    .map(|object| self.info(object))
                    .collect();
                let next = response.next_page_token.filter(|token| !token.is_empty()).map(Some);
                Ok(Some((
                    futures::stream::iter(items.into_iter().map(Ok)),
                    (next, full_prefix),
                )))
            },
        )
        .try_flatten()
        .boxed()
    }

    async fn copy(
        &self,
        from: &str,
        from_generation: Option<i64>,
        to: &str,
        mode: WriteMode,
    ) -> Result<ObjectInfo, StorageError> {
        self.copy_from(self, from, from_generation, to, mode).await
    }

    fn as_gcs(&self) -> Option<&GcsStore> {
        Some(self)
    }

    async fn delete(&self, key: &str, generation: Option<i64>) -> Result<(), StorageError> {
        self.refuse_if_held(key, generation).await?;
        let request = DeleteObjectRequest {
            bucket: self.bucket.clone(),
            object: self.location.object_name(checked(key)?),
            generation,
            ..Default::default()
        };
        self.client
            .delete_object(&request)
            .await
            .map_err(|error| self.classify("delete", key, error))
    }

    async fn set_hold(&self, key: &str, hold: Option<&Hold>) -> Result<(), StorageError> {
        // One patch sets (or clears) the hold and its record together.
        let record = |hold: Option<&Hold>| {
            let since = hold.and_then(|hold| hold.since).map(|time| time.to_rfc3339());
            [
                (HOLD_REASON, hold.map(|hold| hold.reason.clone())),
                (HOLD_SINCE, since),
                (HOLD_BY, hold.and_then(|hold| hold.by.clone())),
            ]
            .into_iter()
            // A patch merges metadata; an empty value is how a released pin reads.
            .map(|(name, value)| (name.to_owned(), value.unwrap_or_default()))
            .collect()
        };
        let request = PatchObjectRequest {
            bucket: self.bucket.clone(),
            object: self.location.object_name(checked(key)?),
            metadata: Some(Object {
                temporary_hold: Some(hold.is_some()),
                metadata: Some(record(hold)),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.client.patch_object(&request).await {
            Ok(_) => Ok(()),
            Err(GcsError::Response(response)) if response.code == 404 => Err(StorageError::NotFound {
                location: self.location.to_string(),
                key: key.to_owned(),
            }),
            // fake-gcs-server answers a patch with a resource the client
            // cannot decode (no `etag`) after applying it: a 2xx all the
            // same, so read back whether the record is there.
            Err(GcsError::HttpClient(error)) if error.is_decode() => {
                let found = self.stat(key).await?.map(|object| object.hold);
                let wanted = hold.map(|hold| hold.reason.as_str());
                match found {
                    Some(found) if found.as_ref().map(|hold| hold.reason.as_str()) == wanted => Ok(()),
                    _ => Err(self.classify("hold", key, GcsError::HttpClient(error))),
                }
            }
            Err(error) => Err(self.classify("hold", key, error)),
        }
    }

    async fn retention_policy(&self) -> Result<Option<RetentionPolicy>, StorageError> {
        let request = google_cloud_storage::http::buckets::get::GetBucketRequest {
            bucket: self.bucket.clone(),
            ..Default::default()
        };
        let bucket = self
            .client
            .get_bucket(&request)
            .await
            .map_err(|error| self.classify("read the retention policy of", "", error))?;
        Ok(retention_policy_of(&bucket))
    }
}

/// A bucket resource's retention policy, as Cloud Storage reports it
/// (`retentionPolicy.retentionPeriod` in seconds, `isLocked`).
fn retention_policy_of(bucket: &google_cloud_storage::http::buckets::Bucket) -> Option<RetentionPolicy> {
    let policy = bucket.retention_policy.as_ref()?;
    (policy.retention_period > 0).then(|| RetentionPolicy {
        period: chrono::Duration::seconds(policy.retention_period.min(i64::MAX as u64) as i64),
        locked: policy.is_locked == Some(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_retention_policies_read_as_cloud_storage_reports_them() {
        // The bucket resource of https://cloud.google.com/storage/docs/json_api/v1/buckets
        let bucket: google_cloud_storage::http::buckets::Bucket = serde_json::from_value(serde_json::json!({
            "kind": "storage#bucket", "id": "keshless-backups", "name": "keshless-backups",
            "projectNumber": "1234", "metageneration": "3", "location": "EUROPE-WEST1",
            "storageClass": "STANDARD", "etag": "CAM=", "locationType": "region",
            "retentionPolicy": {"retentionPeriod": "604800", "effectiveTime": "2026-11-01T00:00:00.000Z", "isLocked": true}
        }))
        .expect("a bucket resource");
        assert_eq!(
            retention_policy_of(&bucket),
            Some(RetentionPolicy {
                period: chrono::Duration::days(7),
                locked: true
            })
        );
        let unlocked: google_cloud_storage::http::buckets::Bucket = serde_json::from_value(serde_json::json!({
            "name": "b", "id": "b", "location": "EU", "storageClass": "STANDARD", "etag": "x",
            "projectNumber": "1", "metageneration": "1", "locationType": "region",
            "retentionPolicy": {"retentionPeriod": "3600"}
        }))
        .unwrap();
        assert_eq!(retention_policy_of(&unlocked).map(|policy| policy.locked), Some(false));
    }

    #[test]
    fn a_hold_is_the_temporary_hold_or_the_recorded_pin() {
        let object = |hold: Option<bool>, reason: &str| Object {
            temporary_hold: hold,
            metadata: Some(
                [
                    (HOLD_REASON.to_owned(), reason.to_owned()),
                    (HOLD_BY.to_owned(), "ops@example.com".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        assert_eq!(hold_of(&object(None, "")), None);
        assert_eq!(hold_of(&object(Some(false), "")), None);
        let held = hold_of(&object(Some(true), "")).expect("held");
        assert_eq!(held.describe(), "a temporary hold placed outside keshless-ops");
        let pinned = hold_of(&object(None, "incident 42")).expect("pinned");
        assert_eq!(
            (pinned.reason.as_str(), pinned.by.as_deref()),
            ("incident 42", Some("ops@example.com"))
        );
        // What a patch sends: only the hold and the record.
        let patch = serde_json::to_value(Object {
            temporary_hold: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(patch, serde_json::json!({"temporaryHold": true}));
    }
}
