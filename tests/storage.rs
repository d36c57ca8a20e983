//! The storage behaviour suite: the same tests run against the GCS backend
//! (fake-gcs-server over HTTP) and the file backend, so the development
//! default behaves like production.

mod common;
#[allow(dead_code)]
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use keshless_ops::storage::{
    BlobStore, BlobStoreExt, ByteStream, ErrorClass, GcsStore, GcsTimeouts, Hold, ListOptions, StorageError,
    StoreLocation, WriteMode,
};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

common::on_both_backends!(
    round_trip_of_200_mib_stream,
    listing_paginates_past_1000_objects,
    listing_honours_the_prefix,
    copy_is_create_only,
    delete_removes_the_object,
    create_only_refuses_to_overwrite,
    overwrite_replaces_atomically,
    failing_upload_leaves_nothing_visible,
    cancelled_upload_leaves_nothing_visible,
    invalid_keys_are_refused,
    missing_objects_are_not_found,
    a_held_object_cannot_be_deleted_or_replaced,
);

/// Deterministic pseudo-random bytes in 1 MiB chunks, and their SHA-256.
fn generated_stream(total: usize, seed: u64) -> (ByteStream, String) {
    let mut expected = Sha256::new();
    for chunk in generated_chunks(total, seed) {
        expected.update(&chunk);
    }
    let stream = futures::stream::iter(generated_chunks(total, seed).map(Ok)).boxed();
    (stream, hex::encode(expected.finalize()))
}

fn generated_chunks(total: usize, seed: u64) -> impl Iterator<Item = Bytes> {
    let mut state = seed | 1;
    let mut remaining = total;
    std::iter::from_fn(move || {
        if remaining == 0 {
            return None;
        }
        let length = remaining.min(MIB);
        remaining -= length;
        let mut chunk = Vec::with_capacity(length + 8);
        while chunk.len() < length {
            // xorshift64: cheap, deterministic, incompressible enough.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes());
        }
        chunk.truncate(length);
        Some(Bytes::from(chunk))
    })
}

async fn sha256_of(stream: ByteStream) -> (String, u64) {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut stream = stream;
    while let Some(chunk) = stream.try_next().await.expect("download chunk") {
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (hex::encode(hasher.finalize()), bytes)
}

async fn keys_under(store: &dyn BlobStore, prefix: &str, options: ListOptions) -> Vec<String> {
    store
        .list(prefix, options)
        .map_ok(|object| object.key)
        .try_collect()
        .await
        .expect("list")
}

async fn put_text(store: &dyn BlobStore, key: &str, text: &str, mode: WriteMode) -> Result<(), StorageError> {
    store
        .put_bytes(key, Bytes::copy_from_slice(text.as_bytes()), mode)
        .await
        .map(|_| ())
}

async fn read_text(store: &dyn BlobStore, key: &str) -> String {
    String::from_utf8(store.get_bytes(key, 1 << 20).await.expect("read").to_vec()).expect("utf-8")
}

async fn round_trip_of_200_mib_stream(store: Arc<impl BlobStore>) {
    let total = 200 * MIB;
    let (stream, expected_sha256) = generated_stream(total, 0x5eed);
    let key = "postgresql/daily/2026-11-26/app.dump";
    let report = store.put(key, stream, WriteMode::CreateOnly).await.expect("upload");
    assert_eq!(report.bytes, total as u64);
    assert_eq!(report.sha256, expected_sha256);
    assert_eq!(report.object.size, total as u64);
    assert_eq!(report.object.key, key);

    let (downloaded_sha256, downloaded_bytes) = sha256_of(store.get(key, None).await.expect("download")).await;
    assert_eq!(downloaded_bytes, total as u64);
    assert_eq!(downloaded_sha256, expected_sha256);
}

async fn listing_paginates_past_1000_objects(store: Arc<impl BlobStore>) {
    let count = 1100;
    futures::stream::iter(0..count)
        .map(|index| {
            let store = Arc::clone(&store);
            async move { put_text(&*store, &format!("many/{index:05}"), "x", WriteMode::CreateOnly).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("upload many");
    let expected: Vec<String> = (0..count).map(|index| format!("many/{index:05}")).collect();

    // The backend's default page size (1000 on GCS) and a small one: both
    // must return every object exactly once, in key order.
    assert_eq!(keys_under(&*store, "many/", ListOptions::default()).await, expected);
    let small_pages = ListOptions {
        page_size: Some(97),
        ..Default::default()
    };
    assert_eq!(keys_under(&*store, "many/", small_pages).await, expected);
}

async fn listing_honours_the_prefix(store: Arc<impl BlobStore>) {
    for key in ["a/1", "a/2", "a.txt", "ab/1", "b/1"] {
        put_text(&*store, key, key, WriteMode::CreateOnly).await.expect("put");
    }
    // Byte order of whole keys, as GCS lists: '.' sorts before '/'.
    assert_eq!(
        keys_under(&*store, "a", ListOptions::default()).await,
        ["a.txt", "a/1", "a/2", "ab/1"]
    );
    assert_eq!(keys_under(&*store, "a/", ListOptions::default()).await, ["a/1", "a/2"]);
    assert_eq!(keys_under(&*store, "", ListOptions::default()).await.len(), 5);
    assert!(keys_under(&*store, "nothing/", ListOptions::default()).await.is_empty());
}

async fn copy_is_create_only(store: Arc<impl BlobStore>) {
    put_text(&*store, "daily/backup.dump", "dump bytes", WriteMode::CreateOnly)
        .await
        .expect("put");
    let copied = store
        .copy("daily/backup.dump", None, "monthly/backup.dump", WriteMode::CreateOnly)
        .await
        .expect("copy");
    assert_eq!(copied.key, "monthly/backup.dump");
    assert_eq!(copied.size, 10);
    assert_eq!(read_text(&*store, "monthly/backup.dump").await, "dump bytes");

    put_text(&*store, "daily/other.dump", "other", WriteMode::CreateOnly)
        .await
        .expect("put");
    let refused = store
        .copy("daily/other.dump", None, "monthly/backup.dump", WriteMode::CreateOnly)
        .await
        .expect_err("copy onto an existing object must be refused");
    assert!(matches!(refused, StorageError::AlreadyExists { .. }), "{refused}");
    assert_eq!(refused.class(), ErrorClass::Permanent);
    assert_eq!(read_text(&*store, "monthly/backup.dump").await, "dump bytes");

    let missing = store
        .copy(
            "daily/missing.dump",
            None,
            "monthly/missing.dump",
            WriteMode::CreateOnly,
        )
        .await
        .expect_err("copy of a missing object");
    assert!(
        matches!(missing, StorageError::NotFound { ref key, .. } if key == "daily/missing.dump"),
        "{missing}"
    );
}

async fn delete_removes_the_object(store: Arc<impl BlobStore>) {
    put_text(&*store, "old/backup.dump", "old", WriteMode::CreateOnly)
        .await
        .expect("put");
    assert!(store.stat("old/backup.dump").await.expect("stat").is_some());
    store.delete("old/backup.dump", None).await.expect("delete");
    assert!(store.stat("old/backup.dump").await.expect("stat").is_none());
    assert!(keys_under(&*store, "old/", ListOptions::default()).await.is_empty());
    let again = store.delete("old/backup.dump", None).await.expect_err("second delete");
    assert!(matches!(again, StorageError::NotFound { .. }), "{again}");
}

async fn create_only_refuses_to_overwrite(store: Arc<impl BlobStore>) {
    put_text(&*store, "manifest.json", "first", WriteMode::CreateOnly)
        .await
        .expect("first write");
    let refused = put_text(&*store, "manifest.json", "second", WriteMode::CreateOnly)
        .await
        .expect_err("second create-only write must be refused");
    assert!(matches!(refused, StorageError::AlreadyExists { .. }), "{refused}");
    assert_eq!(refused.class(), ErrorClass::Permanent);
    assert!(refused.to_string().contains("refusing to overwrite"), "{refused}");
    assert_eq!(read_text(&*store, "manifest.json").await, "first");
}

async fn overwrite_replaces_atomically(store: Arc<impl BlobStore>) {
    put_text(&*store, "secrets/latest.json.encrypted", "v1", WriteMode::Overwrite)
        .await
        .expect("first");
    put_text(&*store, "secrets/latest.json.encrypted", "v2", WriteMode::Overwrite)
        .await
        .expect("second");
    assert_eq!(read_text(&*store, "secrets/latest.json.encrypted").await, "v2");
    assert_eq!(
        keys_under(&*store, "secrets/", ListOptions::default()).await,
        ["secrets/latest.json.encrypted"]
    );
}

/// A body that yields some data and then fails, as a dying `pg_dump` would.
fn failing_stream(good_bytes: usize) -> ByteStream {
    let (good, _) = generated_stream(good_bytes, 7);
    good.chain(futures::stream::once(async {
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "pg_dump exited with status 1",
        ))
    }))
    .boxed()
}

async fn failing_upload_leaves_nothing_visible(store: Arc<impl BlobStore>) {
    let error = store
        .put("daily/broken.dump", failing_stream(3 * MIB), WriteMode::CreateOnly)
        .await
        .expect_err("a failing source must fail the upload");
    assert!(matches!(error, StorageError::Source { .. }), "{error}");
    assert!(error.to_string().contains("pg_dump exited with status 1"), "{error}");
    assert!(store.stat("daily/broken.dump").await.expect("stat").is_none());
    assert!(keys_under(&*store, "", ListOptions::default()).await.is_empty());

    // Overwriting: the previous object survives a failed replacement.
    put_text(&*store, "latest", "good", WriteMode::Overwrite)
        .await
        .expect("put");
    store
        .put("latest", failing_stream(MIB), WriteMode::Overwrite)
        .await
        .expect_err("failing overwrite");
    assert_eq!(read_text(&*store, "latest").await, "good");
    let listed = keys_under(
        &*store,
        "",
        ListOptions {
            versions: true,
            page_size: None,
        },
    )
    .await;
    assert_eq!(listed, ["latest"], "no extra object or generation may appear");
}

async fn cancelled_upload_leaves_nothing_visible(store: Arc<impl BlobStore + 'static>) {
    // A source that produces a few chunks and then stalls forever, like a
    // pg_dump waiting on a lock; the upload is then cancelled (timeout, SIGKILL
    // of the task).
    let (head, _) = generated_stream(2 * MIB, 11);
    let stalled = head.chain(futures::stream::pending()).boxed();
    let upload = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.put("daily/stalled.dump", stalled, WriteMode::CreateOnly).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    upload.abort();
    assert!(upload.await.expect_err("aborted").is_cancelled());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.stat("daily/stalled.dump").await.expect("stat").is_none());
    assert!(keys_under(
        &*store,
        "",
        ListOptions {
            versions: true,
            page_size: None
        }
    )
    .await
    .is_empty());
}

async fn invalid_keys_are_refused(store: Arc<impl BlobStore>) {
    for key in ["", "/abs", "a//b", "../escape", "dir/", ".keshless-tmp/x", "a\nb"] {
        let error = put_text(&*store, key, "x", WriteMode::CreateOnly).await.expect_err(key);
        assert!(matches!(error, StorageError::InvalidKey { .. }), "{key:?}: {error}");
        assert_eq!(error.class(), ErrorClass::Permanent);
    }
}

async fn missing_objects_are_not_found(store: Arc<impl BlobStore>) {
    let error = match store.get("nope/missing.dump", None).await {
        Err(error) => error,
        Ok(_) => panic!("get of a missing object must fail"),
    };
    assert!(matches!(error, StorageError::NotFound { .. }), "{error}");
    assert!(error.to_string().contains("nope/missing.dump"), "{error}");
    assert!(store.stat("nope/missing.dump").await.expect("stat").is_none());
}

// ---- GCS-only behaviour: generations and error classes ----

/// Pins hold every object of a backup: the store itself must refuse to
/// delete or replace a held object, whoever asks, until it is released.
async fn a_held_object_cannot_be_deleted_or_replaced(store: Arc<impl BlobStore>) {
    put_text(store.as_ref(), "postgresql/daily/x.dump", "dump", WriteMode::CreateOnly)
        .await
        .unwrap();
    put_text(
        store.as_ref(),
        "secrets/latest.json.encrypted",
        "v1",
        WriteMode::Overwrite,
    )
    .await
    .unwrap();
    let hold = Hold {
        reason: "incident 2026-11-26".into(),
        since: Some("2026-11-26T03:00:00Z".parse().unwrap()),
        by: Some("oncall@example.com".into()),
    };
    for key in ["postgresql/daily/x.dump", "secrets/latest.json.encrypted"] {
        store.set_hold(key, Some(&hold)).await.unwrap();
    }
    let listed: Vec<_> = store.list("", ListOptions::default()).try_collect().await.unwrap();
    assert_eq!(listed.len(), 2, "hold markers are not objects: {listed:?}");
    assert!(
        listed.iter().all(|object| object.hold.as_ref() == Some(&hold)),
        "{listed:?}"
    );
    assert_eq!(
        store.stat("postgresql/daily/x.dump").await.unwrap().unwrap().hold,
        Some(hold.clone())
    );

    let refused = store.delete("postgresql/daily/x.dump", None).await.unwrap_err();
    assert!(
        matches!(&refused, StorageError::Held { reason, .. } if reason == "pinned: incident 2026-11-26"),
        "{refused}"
    );
    assert_eq!(refused.class(), ErrorClass::Permanent);
    let replaced = put_text(
        store.as_ref(),
        "secrets/latest.json.encrypted",
        "v2",
        WriteMode::Overwrite,
    )
    .await;
    assert!(matches!(replaced, Err(StorageError::Held { .. })), "{replaced:?}");
    assert_eq!(read_text(store.as_ref(), "secrets/latest.json.encrypted").await, "v1");
    assert!(store.stat("postgresql/daily/x.dump").await.unwrap().is_some());

    store.set_hold("postgresql/daily/x.dump", None).await.unwrap();
    assert_eq!(store.stat("postgresql/daily/x.dump").await.unwrap().unwrap().hold, None);
    store.delete("postgresql/daily/x.dump", None).await.unwrap();
    assert!(store.stat("postgresql/daily/x.dump").await.unwrap().is_none());
    let missing = store.set_hold("postgresql/daily/gone.dump", Some(&hold)).await;
    assert!(matches!(missing, Err(StorageError::NotFound { .. })), "{missing:?}");
}

/// What fake-gcs-server (the version `scripts/test` installs) does with
/// holds and retention policies: it keeps neither. It drops `temporaryHold`
/// from a patch and `retentionPolicy` from a new bucket, and deletes a
/// "held" object. So the pins' guarantee is the store's own refusal
/// (above), and Cloud Storage's own (403 on a held object) is mapped to the
/// same error; if a later fake-gcs-server keeps them, this test says so.
#[tokio::test]
async fn gcs_what_fake_gcs_server_keeps_of_holds_and_retention_policies() {
    use google_cloud_storage::http::buckets::get::GetBucketRequest;
    use google_cloud_storage::http::buckets::insert::{
        BucketCreationConfig, InsertBucketParam, InsertBucketRequest, RetentionPolicyCreationConfig,
    };
    use google_cloud_storage::http::objects::get::GetObjectRequest;
    use google_cloud_storage::http::objects::patch::PatchObjectRequest;
    use google_cloud_storage::http::objects::Object;

    let store = common::gcs_store(false).await;
    let StoreLocation::Gcs { bucket, .. } = store.location().clone() else {
        unreachable!()
    };
    put_text(store.as_ref(), "a.txt", "a", WriteMode::CreateOnly)
        .await
        .unwrap();
    store
        .client()
        .patch_object(&PatchObjectRequest {
            bucket: bucket.clone(),
            object: "a.txt".into(),
            metadata: Some(Object {
                temporary_hold: Some(true),
                metadata: Some([("note".to_owned(), "kept".to_owned())].into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .or_else(|error| match error {
            // It applies the patch, then answers without an `etag`.
            google_cloud_storage::http::Error::HttpClient(error) if error.is_decode() => Ok(()),
            other => Err(other),
        })
        .unwrap();
    let object = store
        .client()
        .get_object(&GetObjectRequest {
            bucket: bucket.clone(),
            object: "a.txt".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        object.metadata.unwrap_or_default().get("note").map(String::as_str),
        Some("kept")
    );
    assert_eq!(
        object.temporary_hold, None,
        "fake-gcs-server now keeps temporary holds: test against them"
    );
    // Straight to the API, past our store's own refusal: the fake deletes it.
    store
        .client()
        .delete_object(&google_cloud_storage::http::objects::delete::DeleteObjectRequest {
            bucket: bucket.clone(),
            object: "a.txt".into(),
            ..Default::default()
        })
        .await
        .expect("fake-gcs-server deletes a held object");

    let locked = format!("keshless-test-{}", common::unique_suffix());
    store
        .client()
        .insert_bucket(&InsertBucketRequest {
            name: locked.clone(),
            param: InsertBucketParam {
                project: "keshless-test".into(),
                ..Default::default()
            },
            bucket: BucketCreationConfig {
                retention_policy: Some(RetentionPolicyCreationConfig {
                    retention_period: 604_800,
                }),
                ..Default::default()
            },
        })
        .await
        .unwrap();
    let created = store
        .client()
        .get_bucket(&GetBucketRequest {
            bucket: locked.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        created.retention_policy, None,
        "fake-gcs-server now keeps retention policies: test against them"
    );
    let store = GcsStore::connect(
        StoreLocation::gcs(&locked, "").unwrap(),
        Some(&common::storage_emulator_host()),
    )
    .await
    .unwrap();
    assert_eq!(store.retention_policy().await.unwrap(), None);
}

#[tokio::test]
async fn gcs_versions_are_listed_and_old_generations_readable() {
    common::init_test_logs();
    let store = common::gcs_store(true).await;
    assert!(store.supports_versions());
    let first = store
        .put_bytes(
            "kyc/user-1/passport.jpg",
            Bytes::from_static(b"version one"),
            WriteMode::Overwrite,
        )
        .await
        .expect("first");
    let second = store
        .put_bytes(
            "kyc/user-1/passport.jpg",
            Bytes::from_static(b"version two"),
            WriteMode::Overwrite,
        )
        .await
        .expect("second");
    let first_generation = first.object.generation.expect("generation");
    let second_generation = second.object.generation.expect("generation");
    assert_ne!(first_generation, second_generation);

    let live_only: Vec<_> = store
        .list("kyc/", ListOptions::default())
        .try_collect()
        .await
        .expect("list");
    assert_eq!(live_only.len(), 1);
    assert_eq!(live_only[0].generation, Some(second_generation));

    let versions: Vec<_> = store
        .list(
            "kyc/",
            ListOptions {
                versions: true,
                page_size: None,
            },
        )
        .try_collect()
        .await
        .expect("list versions");
    let mut seen: Vec<(i64, bool)> = versions
        .iter()
        .map(|object| (object.generation.expect("generation"), object.live))
        .collect();
    seen.sort();
    assert_eq!(seen, [(first_generation, false), (second_generation, true)]);

    let old = store
        .get("kyc/user-1/passport.jpg", Some(first_generation))
        .await
        .expect("old generation");
    let old: Vec<Bytes> = old.try_collect().await.expect("read");
    assert_eq!(old.concat(), b"version one");

    // Restoring = copying the old generation over the live one.
    store
        .copy(
            "kyc/user-1/passport.jpg",
            Some(first_generation),
            "kyc/user-1/passport.jpg",
            WriteMode::Overwrite,
        )
        .await
        .expect("restore old generation");
    assert_eq!(read_text(&*store, "kyc/user-1/passport.jpg").await, "version one");

    // Deleting one specific generation is not asserted here: fake-gcs-server
    // ignores `generation` on DELETE and removes the live object instead.
}

#[tokio::test]
async fn gcs_prefix_scopes_every_operation() {
    common::init_test_logs();
    let store = common::gcs_store_with_prefix(false, "prod/eu").await;
    put_text(&*store, "a/b.json", "{}", WriteMode::CreateOnly)
        .await
        .expect("put");
    assert_eq!(keys_under(&*store, "a/", ListOptions::default()).await, ["a/b.json"]);
    let info = store.stat("a/b.json").await.expect("stat").expect("exists");
    assert_eq!(info.key, "a/b.json");
    assert!(info.crc32c.is_some() && info.md5.is_some(), "{info:?}");
}

#[tokio::test]
async fn gcs_missing_bucket_is_permanent() {
    common::init_test_logs();
    let location = StoreLocation::gcs(&format!("keshless-missing-{}", common::unique_suffix()), "").expect("name");
    let store = GcsStore::connect(location, Some(&common::storage_emulator_host()))
        .await
        .expect("client");
    let error = put_text(&store, "x", "x", WriteMode::CreateOnly)
        .await
        .expect_err("upload into a missing bucket");
    assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
    let error = store
        .list("", ListOptions::default())
        .try_collect::<Vec<_>>()
        .await
        .expect_err("listing a missing bucket");
    assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
}

#[tokio::test]
async fn gcs_unreachable_endpoint_is_transient() {
    common::init_test_logs();
    // Bind and drop a listener to get a port nothing listens on.
    let port = common::free_port();
    let location = StoreLocation::gcs("keshless-backups", "").expect("name");
    let store = GcsStore::connect(location, Some(&format!("127.0.0.1:{port}")))
        .await
        .expect("client");
    let error = put_text(&store, "x", "x", WriteMode::CreateOnly)
        .await
        .expect_err("nothing listens there");
    assert_eq!(error.class(), ErrorClass::Transient, "{error}");
    let error = store.stat("x").await.expect_err("stat");
    assert_eq!(error.class(), ErrorClass::Transient, "{error}");
}

#[tokio::test]
async fn file_store_has_no_generations() {
    let (store, _directory) = common::file_store().await;
    assert!(!store.supports_versions());
    put_text(&*store, "a", "x", WriteMode::CreateOnly).await.expect("put");
    let error = match store.get("a", Some(1)).await {
        Err(error) => error,
        Ok(_) => panic!("a generation on a file store must be refused"),
    };
    assert!(matches!(error, StorageError::Unsupported { .. }), "{error}");
    assert_eq!(error.class(), ErrorClass::Permanent);
}

/// A bucket in fake-gcs-server reached at `host` (fake-gcs-server itself or a
/// proxy in front of it) with `timeouts`.
async fn gcs_store_via(host: &str, timeouts: GcsTimeouts) -> GcsStore {
    let created = common::gcs_store(false).await;
    GcsStore::connect_with(created.location().clone(), Some(host), timeouts)
        .await
        .expect("client")
}

fn short_timeouts() -> GcsTimeouts {
    GcsTimeouts {
        connect: Duration::from_secs(5),
        read: Duration::from_secs(1),
        upload_stall: Duration::from_secs(1),
    }
}

/// A dump streams for as long as pg_dump takes (hours for a big database):
/// neither the read timeout nor the stall limit may cut an upload whose
/// source is slow. (reqwest's read timeout runs from the start of a request
/// and is not reset while its body is sent, so it must not apply here.)
#[tokio::test]
async fn gcs_an_upload_slower_than_every_timeout_completes() {
    common::init_test_logs();
    // The read timeout is what used to cut uploads; the stall limit gets
    // room for a loaded machine (the source's pauses never count).
    let timeouts = GcsTimeouts {
        upload_stall: Duration::from_secs(5),
        ..short_timeouts()
    };
    let store = gcs_store_via(&common::storage_emulator_host(), timeouts).await;
    let chunks: Vec<Bytes> = generated_chunks(3 * MIB, 21).collect();
    let expected = hex::encode(Sha256::digest(chunks.concat()));
    // Each chunk comes 1.5 s after the last: longer than the read timeout.
    let slow = futures::stream::iter(chunks)
        .then(|chunk| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(chunk)
        })
        .boxed();
    let started = std::time::Instant::now();
    let report = store
        .put("daily/slow.dump", slow, WriteMode::CreateOnly)
        .await
        .expect("a slow source is not a stalled connection");
    assert!(started.elapsed() > Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(
        (report.bytes, report.sha256.as_str()),
        (3 * MIB as u64, expected.as_str())
    );
    let (downloaded, _) = sha256_of(store.get("daily/slow.dump", None).await.expect("download")).await;
    assert_eq!(downloaded, expected);
}

/// A connection that stops taking the body (a network partition, a stuck
/// proxy) fails the upload as transient after the stall limit instead of
/// hanging the job while its lease and message are renewed; nothing appears.
#[tokio::test]
async fn gcs_a_stalled_upload_fails_transiently_and_stores_nothing() {
    common::init_test_logs();
    let proxy =
        fault_proxy::FaultProxy::start(&common::storage_emulator_host(), fault_proxy::FaultPlan::none(), 7).await;
    let store = gcs_store_via(&proxy.host(), short_timeouts()).await;
    proxy.hold_uploads(true);
    // Far more than the socket buffers between us and the held proxy hold.
    let (body, _) = generated_stream(64 * MIB, 22);
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        store.put("daily/held.dump", body, WriteMode::CreateOnly),
    )
    .await
    .expect("the upload must fail, not hang")
    .expect_err("a held upload cannot succeed");
    let waited = started.elapsed();
    assert!(error.to_string().contains("upload stalled"), "{error}");
    assert_eq!(error.class(), ErrorClass::Transient, "{error}");
    assert!(waited < Duration::from_secs(30), "failed only after {waited:?}");
    proxy.hold_uploads(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.stat("daily/held.dump").await.expect("stat").is_none());
}
