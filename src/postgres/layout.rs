//! Where PostgreSQL backups live in the store and what their manifest says.
//!
//! ```text
//! postgresql/daily/2026-11-26/keshless-20261126T020000Z.dump.zst.age
//! postgresql/daily/2026-11-26/keshless-20261126T020000Z.globals.json.age    (roles and extensions)
//! postgresql/daily/2026-11-26/keshless-20261126T020000Z.manifest.json       (written last, never encrypted)
//! postgresql/monthly/2026-11/keshless-20261126T020000Z.dump.zst.age          (server-side copy)
//! postgresql/monthly/2026-11/keshless-20261126T020000Z.globals.json.age
//! postgresql/monthly/2026-11/keshless-20261126T020000Z.manifest.json
//! ```
//!
//! The dump's name says what it is: `.dump` (pg_dump's own gzip, or not
//! compressed), `.dump.zst`, and `.age` when encrypted (see
//! [`crate::postgres::archive`]); the globals file is `.globals.json.age`
//! when encrypted.
//!
//! A backup is complete only when its manifest exists; the manifest records
//! the stored dump's size and SHA-256, the exact row counts under the
//! snapshot, (since version 2) the globals file's SHA-256 and every object's
//! owner and privileges and every sequence's position, to check a restore
//! against, and (since version 3) how the dump was compressed and encrypted,
//! to whom, and the plain archive's size and SHA-256.
//! Backups are named by id: `daily/2026-11-26/keshless-20261126T020000Z`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::postgres::archive::{Digest as ArchiveDigest, Encoding};
use crate::postgres::TableCount;
use crate::storage::{BlobStore, BlobStoreExt, ListOptions, ObjectInfo, StorageError};

pub const PREFIX: &str = "postgresql/";
/// Every name a dump may have, longest first (what [`Encoding::dump_suffix`] makes).
const DUMP_SUFFIXES: [&str; 4] = [".dump.zst.age", ".dump.age", ".dump.zst", ".dump"];
const MANIFEST_SUFFIX: &str = ".manifest.json";
const GLOBALS_SUFFIX: &str = ".globals.json";
const ENCRYPTED_GLOBALS_SUFFIX: &str = ".globals.json.age";
/// Manifests read concurrently when listing.
const MANIFEST_READS_AT_ONCE: usize = 8;
/// Manifests are small; anything larger is not one of ours.
const MANIFEST_LIMIT: u64 = 16 * 1024 * 1024;

/// Daily or monthly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Daily,
    Monthly,
}

/// What a complete backup records, written next to the dump after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub job: String,
    pub idempotency_key: String,
    pub database: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub server_version: String,
    pub pg_dump_version: String,
    pub database_size_bytes: i64,
    pub snapshot: String,
    /// Key of the dump, relative to the store.
    pub dump: String,
    /// Size and SHA-256 of the stored dump (what `backups verify` checks
    /// without a key; before version 3 also the plain archive's).
    pub size_bytes: u64,
    pub sha256: String,
    /// The store's own checksums of the dump (GCS: base64 CRC32C and MD5), so a
    /// restore can check the object at rest before touching the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_crc32c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_md5: Option<String>,
    pub tables: Vec<TableCount>,
    /// The roles and extensions the database needs from its cluster, stored
    /// next to the dump (version 2; `None` in backups made before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<StoredFile>,
    /// Owners, privileges and sequence positions under the snapshot
    /// (version 2; `None` in backups made before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<crate::postgres::fidelity::Fidelity>,
    /// How the stored dump was made from pg_dump's archive (version 3;
    /// before: pg_dump's gzip, not encrypted).
    #[serde(default)]
    pub encoding: Encoding,
}

impl Manifest {
    /// Size and SHA-256 of the plain archive pg_restore reads.
    pub fn archive_digest(&self) -> ArchiveDigest {
        self.encoding.archive.clone().unwrap_or_else(|| ArchiveDigest {
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
        })
    }
}

/// A small file of a backup, with what proves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Key relative to the store.
    pub key: String,
    pub size_bytes: u64,
    pub sha256: String,
}

pub const MANIFEST_FORMAT: &str = "keshless-postgres-backup";
/// The manifest version this build writes; it reads 1 (no globals), 2 (no
/// encoding: pg_dump's gzip, not encrypted) and 3.
pub const MANIFEST_VERSION: u32 = 3;

/// `postgresql/daily/YYYY-MM-DD/<database>-<timestamp>` without suffix.
pub fn daily_base(database: &str, started_at: DateTime<Utc>) -> String {
    format!(
        "{PREFIX}daily/{}/{database}-{}",
        started_at.format("%Y-%m-%d"),
        started_at.format("%Y%m%dT%H%M%SZ")
    )
}

/// The monthly copy's base for a daily base.
pub fn monthly_base(database: &str, started_at: DateTime<Utc>) -> String {
    format!(
        "{PREFIX}monthly/{}/{database}-{}",
        started_at.format("%Y-%m"),
        started_at.format("%Y%m%dT%H%M%SZ")
    )
}

/// The dump of a backup made before manifest version 3, or unencrypted
/// without zstd: `<base>.dump`.
pub fn dump_key(base: &str) -> String {
    dump_key_for(base, &Encoding::default())
}

/// The dump of a backup whose manifest says `encoding`.
pub fn dump_key_for(base: &str, encoding: &Encoding) -> String {
    format!("{base}{}", encoding.dump_suffix())
}

pub fn manifest_key(base: &str) -> String {
    format!("{base}{MANIFEST_SUFFIX}")
}

/// The globals file of an unencrypted backup.
pub fn globals_key(base: &str) -> String {
    globals_key_for(base, false)
}

/// The globals file of a backup, encrypted or not.
pub fn globals_key_for(base: &str, encrypted: bool) -> String {
    if encrypted {
        format!("{base}{ENCRYPTED_GLOBALS_SUFFIX}")
    } else {
        format!("{base}{GLOBALS_SUFFIX}")
    }
}

/// Every name a dump of `base` may have, whatever its encoding.
pub fn every_dump_key(base: &str) -> Vec<String> {
    DUMP_SUFFIXES.iter().map(|suffix| format!("{base}{suffix}")).collect()
}

/// The base of a dump's key, whichever of its names it has.
fn dump_base(key: &str) -> Option<&str> {
    DUMP_SUFFIXES.iter().find_map(|suffix| key.strip_suffix(suffix))
}

/// The id operators type: the base without the `postgresql/` prefix.
pub fn id_of(base: &str) -> &str {
    base.strip_prefix(PREFIX).unwrap_or(base)
}

/// The base for an id (accepts the id with or without prefix or suffix).
pub fn base_of(id: &str) -> String {
    let id = id
        .trim_end_matches(MANIFEST_SUFFIX)
        .trim_end_matches(ENCRYPTED_GLOBALS_SUFFIX)
        .trim_end_matches(GLOBALS_SUFFIX);
    let id = dump_base(id).unwrap_or(id);
    if id.starts_with(PREFIX) {
        id.to_owned()
    } else {
        format!("{PREFIX}{id}")
    }
}

/// The start time a base's name carries (`<database>-YYYYMMDDTHHMMSSZ`), if
/// it carries one. Only evidence for incomplete backups, which have no
/// manifest; complete ones are always timed by their manifest.
pub fn time_in_name(base: &str) -> Option<DateTime<Utc>> {
    let (_, stamp) = base.rsplit_once('-')?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|time| time.and_utc())
}

/// What a backup's base says of itself, when it is one this module writes:
/// `postgresql/daily/YYYY-MM-DD/<database>-<ts>` or
/// `postgresql/monthly/YYYY-MM/<database>-<ts>`. Anything else under the
/// prefix (an operator's hand-made dump, say) is `None`.
pub fn parse_base(base: &str) -> Option<(Class, String, DateTime<Utc>)> {
    let rest = base.strip_prefix(PREFIX)?;
    let (class, rest) = if let Some(rest) = rest.strip_prefix("daily/") {
        let (date, name) = rest.split_once('/')?;
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        (Class::Daily, name)
    } else if let Some(rest) = rest.strip_prefix("monthly/") {
        let (month, name) = rest.split_once('/')?;
        chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok()?;
        (Class::Monthly, name)
    } else {
        return None;
    };
    if rest.contains('/') {
        return None;
    }
    let (database, _) = rest.rsplit_once('-')?;
    let time = time_in_name(rest)?;
    (!database.is_empty()).then(|| (class, database.to_owned(), time))
}

/// One backup found in the store.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub id: String,
    pub class: Class,
    #[serde(skip)]
    pub base: String,
    /// `None` for an incomplete backup (no manifest).
    pub manifest: Option<Manifest>,
    /// The dump object, if present.
    #[serde(skip)]
    pub dump: Option<ObjectInfo>,
    /// The manifest object, if present (readable or not).
    #[serde(skip)]
    pub manifest_object: Option<ObjectInfo>,
    /// The globals file, if present (backups since manifest version 2).
    #[serde(skip)]
    pub globals_object: Option<ObjectInfo>,
    /// Why the manifest could not be read, if it could not.
    pub problem: Option<String>,
}

impl Listed {
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some() && self.dump.is_some()
    }

    /// Time of the backup: the manifest's start, else the dump's upload time.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.manifest
            .as_ref()
            .map(|manifest| manifest.started_at)
            .or(self.dump.as_ref().map(|dump| dump.updated))
    }
}

/// Every PostgreSQL backup under `postgresql/<class>/`, newest first,
/// incomplete ones included (flagged by `manifest: None`).
pub async fn list(store: &dyn BlobStore, class: Option<Class>) -> Result<Vec<Listed>, StorageError> {
    let prefix = match class {
        Some(Class::Daily) => format!("{PREFIX}daily/"),
        Some(Class::Monthly) => format!("{PREFIX}monthly/"),
        None => PREFIX.to_owned(),
    };
    list_under(store, &prefix, &|_| true).await
}

/// [`list`] of one database's backups of `class` (monthly ones: of one
/// month, `YYYY-MM`, when given), reading only their manifests: a backup's
/// own checks need no GET of every other database's manifests.
pub async fn list_of_database(
    store: &dyn BlobStore,
    class: Class,
    database: &str,
    month: Option<&str>,
) -> Result<Vec<Listed>, StorageError> {
    let prefix = match (class, month) {
        (Class::Daily, _) => format!("{PREFIX}daily/"),
        (Class::Monthly, None) => format!("{PREFIX}monthly/"),
        (Class::Monthly, Some(month)) => format!("{PREFIX}monthly/{month}/"),
    };
    let of_database = |base: &str| parse_base(base).is_some_and(|(_, named, _)| named == database);
    list_under(store, &prefix, &of_database).await
}

/// The backups under `prefix` whose base `wanted` accepts.
async fn list_under(
    store: &dyn BlobStore,
    prefix: &str,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<Listed>, StorageError> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut objects = store.list(prefix, ListOptions::default());
    while let Some(object) = objects.try_next().await? {
        if let Some(base) = dump_base(&object.key).map(str::to_owned) {
            groups.entry(base).or_default().dumps.push(object);
        } else if let Some(base) = object.key.strip_suffix(MANIFEST_SUFFIX).map(str::to_owned) {
            groups.entry(base).or_default().manifest = Some(object);
        } else if let Some(base) = object
            .key
            .strip_suffix(GLOBALS_SUFFIX)
            .or_else(|| object.key.strip_suffix(ENCRYPTED_GLOBALS_SUFFIX))
            .map(str::to_owned)
        {
            // A globals file alone (its dump never completed) is a leftover
            // of the backup, not a stray.
            groups.entry(base).or_default().globals = Some(object);
        }
    }
    drop(objects);
    groups.retain(|base, _| wanted(base));
    // Manifests are read a few at a time: a month of daily backups is dozens
    // of small GETs, and one after another they add up to seconds on GCS.
    let mut listed: Vec<Listed> = futures::stream::iter(groups)
        .map(|(base, group)| async move {
            let Group {
                dumps,
                manifest: manifest_object,
                globals: globals_object,
            } = group;
            let class = if base.starts_with(&format!("{PREFIX}monthly/")) {
                Class::Monthly
            } else {
                Class::Daily
            };
            // A storage error is not a verdict on the backup: fail the listing
            // rather than call a complete backup incomplete (and pick an older one).
            let mut manifest_object = manifest_object;
            let (manifest, problem) = match &manifest_object {
                None => (None, None),
                Some(object) => match store.get_bytes(&object.key, MANIFEST_LIMIT).await {
                    Ok(bytes) => match parse_manifest(&object.key, &bytes) {
                        Ok(manifest) => (Some(manifest), None),
                        Err(problem) => (None, Some(problem)),
                    },
                    // Deleted since it was listed (a cleanup running beside
                    // this listing): the backup is going, so list what is
                    // left of it, as a listing a moment later would. Failing
                    // would fail whatever listed: a backup's resume check
                    // dead-lettered a day's backup this way.
                    Err(StorageError::NotFound { .. }) => {
                        manifest_object = None;
                        (None, None)
                    }
                    Err(error) => return Err(error),
                },
            };
            // Normally one dump; should a backup with another encoding have
            // started in the same second, the manifest says which is its.
            let wanted = manifest
                .as_ref()
                .map(|manifest| dump_key_for(&base, &manifest.encoding));
            let mut dumps = dumps;
            let position = wanted
                .and_then(|wanted| dumps.iter().position(|dump| dump.key == wanted))
                .unwrap_or(0);
            let dump = (!dumps.is_empty()).then(|| dumps.swap_remove(position));
            Ok::<_, StorageError>(Listed {
                id: id_of(&base).to_owned(),
                class,
                base,
                manifest,
                dump,
                manifest_object,
                globals_object,
                problem,
            })
        })
        .buffered(MANIFEST_READS_AT_ONCE)
        .try_collect()
        .await?;
    listed.sort_by(|left, right| right.time().cmp(&left.time()).then_with(|| right.id.cmp(&left.id)));
    Ok(listed)
}

/// The objects of one backup found by listing.
#[derive(Default)]
struct Group {
    dumps: Vec<ObjectInfo>,
    manifest: Option<ObjectInfo>,
    globals: Option<ObjectInfo>,
}

/// Reads and parses a manifest; the error is a sentence for operators.
pub async fn read_manifest(store: &dyn BlobStore, key: &str) -> Result<Manifest, String> {
    let bytes = store
        .get_bytes(key, MANIFEST_LIMIT)
        .await
        .map_err(|error| error.to_string())?;
    parse_manifest(key, &bytes)
}

fn parse_manifest(key: &str, bytes: &[u8]) -> Result<Manifest, String> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|error| format!("{key} is not a valid manifest: {error}"))?;
    if manifest.format != MANIFEST_FORMAT || !(1..=MANIFEST_VERSION).contains(&manifest.version) {
        return Err(format!(
            "{key} has format {:?} version {}; this build reads {MANIFEST_FORMAT:?} versions 1 to {MANIFEST_VERSION}",
            manifest.format, manifest.version
        ));
    }
    Ok(manifest)
}

/// Reads one of a backup's small files and proves it: size and SHA-256 as
/// the manifest records them.
pub async fn read_stored_file(store: &dyn BlobStore, id: &str, stored: &StoredFile) -> anyhow::Result<bytes::Bytes> {
    let bytes = store.get_bytes(&stored.key, MANIFEST_LIMIT).await?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if sha256 != stored.sha256 || bytes.len() as u64 != stored.size_bytes {
        anyhow::bail!(
            "{id}: checksum mismatch: the manifest says {} has {} bytes with SHA-256 {}, the stored file has {} \
             bytes with SHA-256 {sha256}",
            stored.key,
            stored.size_bytes,
            stored.sha256,
            bytes.len()
        );
    }
    Ok(bytes)
}

/// Re-reads the dump and compares size and SHA-256 with the manifest.
pub async fn verify(store: &dyn BlobStore, id: &str) -> anyhow::Result<String> {
    let base = base_of(id);
    let manifest = read_manifest(store, &manifest_key(&base))
        .await
        .map_err(|problem| anyhow::anyhow!("{id}: {problem} (not a complete backup)"))?;
    // The dump next to the manifest is the one that counts, whatever the
    // manifest's own `dump` field says.
    let mut stream = store.get(&dump_key_for(&base, &manifest.encoding), None).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let sha256 = hex::encode(hasher.finalize());
    if size != manifest.size_bytes || sha256 != manifest.sha256 {
        anyhow::bail!(
            "{id}: checksum mismatch: the manifest says {} bytes with SHA-256 {}, the stored dump has {size} bytes \
             with SHA-256 {sha256}",
            manifest.size_bytes,
            manifest.sha256
        );
    }
    // The roles travel with the dump: a restore refuses a damaged globals file.
    let globals = match &manifest.globals {
        Some(globals) => {
            read_stored_file(store, id, globals).await?;
            "; globals verified"
        }
        None => "; no globals (made before manifest version 2: restore with --no-owner)",
    };
    Ok(format!(
        "{id}: OK ({size} bytes, SHA-256 {sha256}, {}{globals})",
        manifest.encoding.describe()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_and_ids() {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 7).unwrap();
        let base = daily_base("keshless", at);
        assert_eq!(base, "postgresql/daily/2026-11-26/keshless-20261126T020007Z");
        assert_eq!(
            dump_key(&base),
            "postgresql/daily/2026-11-26/keshless-20261126T020007Z.dump"
        );
        let encrypted = crate::postgres::archive::EncodeSettings {
            recipients: Some(
                crate::postgres::archive::Recipients::parse(
                    "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
                )
                .unwrap(),
            ),
            ..Default::default()
        }
        .encoding();
        assert_eq!(
            dump_key_for(&base, &encrypted),
            "postgresql/daily/2026-11-26/keshless-20261126T020007Z.dump.zst.age"
        );
        assert_eq!(
            manifest_key(&base),
            "postgresql/daily/2026-11-26/keshless-20261126T020007Z.manifest.json"
        );
        assert_eq!(
            monthly_base("keshless", at),
            "postgresql/monthly/2026-11/keshless-20261126T020007Z"
        );
        assert_eq!(id_of(&base), "daily/2026-11-26/keshless-20261126T020007Z");
        for id in [
            "daily/2026-11-26/keshless-20261126T020007Z",
            "postgresql/daily/2026-11-26/keshless-20261126T020007Z",
            "daily/2026-11-26/keshless-20261126T020007Z.dump",
            "daily/2026-11-26/keshless-20261126T020007Z.dump.zst",
            "daily/2026-11-26/keshless-20261126T020007Z.dump.zst.age",
            "daily/2026-11-26/keshless-20261126T020007Z.globals.json.age",
            "daily/2026-11-26/keshless-20261126T020007Z.manifest.json",
        ] {
            assert_eq!(base_of(id), base, "{id}");
        }
    }

    /// A store where a cleanup deletes every manifest between the listing
    /// and the read of it: the race of a backup's resume check with a
    /// cleanup running beside it.
    #[derive(Debug)]
    struct CleanupBetweenListAndRead(crate::storage::FileStore);

    #[async_trait::async_trait]
    impl BlobStore for CleanupBetweenListAndRead {
        fn location(&self) -> &crate::storage::StoreLocation {
            self.0.location()
        }
        fn supports_versions(&self) -> bool {
            false
        }
        async fn put(
            &self,
            key: &str,
            body: crate::storage::ByteStream,
            mode: crate::storage::WriteMode,
        ) -> Result<crate::storage::PutReport, StorageError> {
            self.0.put(key, body, mode).await
        }
        async fn get(&self, key: &str, generation: Option<i64>) -> Result<crate::storage::ByteStream, StorageError> {
            if key.ends_with(MANIFEST_SUFFIX) {
                self.0.delete(key, None).await?;
            }
            self.0.get(key, generation).await
        }
        async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
            self.0.stat(key).await
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
            options: ListOptions,
        ) -> futures::stream::BoxStream<'a, Result<ObjectInfo, StorageError>> {
            self.0.list(prefix, options)
        }
        async fn copy(
            &self,
            from: &str,
            from_generation: Option<i64>,
            to: &str,
            mode: crate::storage::WriteMode,
        ) -> Result<ObjectInfo, StorageError> {
            self.0.copy(from, from_generation, to, mode).await
        }
        async fn delete(&self, key: &str, generation: Option<i64>) -> Result<(), StorageError> {
            self.0.delete(key, generation).await
        }
    }

    #[tokio::test]
    async fn a_manifest_deleted_after_the_listing_saw_it_leaves_the_backup_incomplete_not_the_listing_failed() {
        let directory = tempfile::tempdir().unwrap();
        let location = format!("file://{}", directory.path().display()).parse().unwrap();
        let store = CleanupBetweenListAndRead(crate::storage::FileStore::open(location).await.unwrap());
        let base = daily_base("keshless", Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 7).unwrap());
        for key in [dump_key(&base), manifest_key(&base)] {
            store
                .put_bytes(
                    &key,
                    bytes::Bytes::from_static(b"{}"),
                    crate::storage::WriteMode::CreateOnly,
                )
                .await
                .unwrap();
        }
        let listed = list(&store, Some(Class::Daily))
            .await
            .expect("the listing survives the deletion");
        assert_eq!(listed.len(), 1, "{listed:?}");
        let backup = &listed[0];
        assert_eq!(backup.id, id_of(&base));
        assert!(!backup.is_complete(), "its manifest is gone: {backup:?}");
        assert!(
            backup.manifest_object.is_none() && backup.problem.is_none(),
            "{backup:?}"
        );
        assert!(backup.dump.is_some(), "its dump is still there");
        assert!(
            store.stat(&manifest_key(&base)).await.unwrap().is_none(),
            "the cleanup did delete it"
        );
    }

    #[tokio::test]
    async fn one_databases_listing_reads_only_its_own_backups_and_month() {
        let directory = tempfile::tempdir().unwrap();
        let location = format!("file://{}", directory.path().display()).parse().unwrap();
        let store = crate::storage::FileStore::open(location).await.unwrap();
        let at = |month: u32, day: u32| Utc.with_ymd_and_hms(2027, month, day, 2, 0, 7).unwrap();
        let bases = [
            daily_base("core", at(1, 5)),
            daily_base("core-eu", at(1, 5)),
            daily_base("payments", at(1, 5)),
            monthly_base("core", at(1, 1)),
            monthly_base("core", at(2, 1)),
            monthly_base("payments", at(2, 1)),
        ];
        for base in &bases {
            store
                .put_bytes(
                    &dump_key(base),
                    bytes::Bytes::from_static(b"dump"),
                    crate::storage::WriteMode::CreateOnly,
                )
                .await
                .unwrap();
        }
        let ids = |listed: Vec<Listed>| listed.into_iter().map(|listed| listed.id).collect::<Vec<_>>();
        assert_eq!(
            ids(list_of_database(&store, Class::Daily, "core", None).await.unwrap()),
            ["daily/2027-01-05/core-20270105T020007Z"],
            "not core-eu, whose name starts the same"
        );
        assert_eq!(
            ids(list_of_database(&store, Class::Monthly, "core", Some("2027-02"))
                .await
                .unwrap()),
            ["monthly/2027-02/core-20270201T020007Z"]
        );
        assert_eq!(
            ids(list_of_database(&store, Class::Monthly, "core", None).await.unwrap()),
            [
                "monthly/2027-02/core-20270201T020007Z",
                "monthly/2027-01/core-20270101T020007Z"
            ]
        );
        assert_eq!(list(&store, None).await.unwrap().len(), bases.len());
    }
}
