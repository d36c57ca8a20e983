//! `backups verify`: re-reads backups and proves them against what was
//! recorded when they were made, without a database.
//!
//! In full (the default), per class:
//! - PostgreSQL: the dump's size and SHA-256 against the manifest, and its
//!   structure: the archive (as [`crate::postgres::archive::plain_archive`]
//!   opens it) is fed to `pg_restore --list`, which must read its table of
//!   contents to the end, while the whole dump is hashed in the same pass;
//!   the globals file's size and SHA-256 too;
//! - secrets: the envelope parses (format, version, algorithms, KDF
//!   parameters) and, when `SECRETS_ENCRYPTION_KEY` is given, decrypts (the
//!   cipher authenticates every byte);
//! - inventories: the entries' size and SHA-256 against the summary, and
//!   every entry decompresses and parses, as many as the summary counted;
//! - drill reports: the report parses as one.
//!
//! Quick ([`Mode::Quick`]) compares the store's own metadata (size, and the
//! CRC32C Cloud Storage keeps) with what was recorded, downloading nothing
//! but small manifests: for `--all` over a large store.
//!
//! [`Sample`] (`--sample N/M`) picks the Nth of M fixed slices of the backups
//! by a hash of their ids: M runs, one per slice, together verify every
//! backup exactly once, and a backup stays in its slice as others come and go
//! (restic's `check --read-data-subset n/m`).

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::catalog::{Catalog, Completeness, Entry, IdError, Kind};
use crate::postgres::layout::Manifest;
use crate::retention::Class;
use crate::storage::{BlobStore, BlobStoreExt, HashingStream, StreamEnd};

/// How much to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Download and prove every byte (and the structure).
    Full,
    /// Compare the store's metadata with the records; download nothing big.
    Quick,
}

/// `--sample N/M`: the Nth (1-based) of M slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub slice: u32,
    pub of: u32,
}

/// The most slices a sample may have.
pub const MAXIMUM_SLICES: u32 = 10_000;

impl FromStr for Sample {
    type Err = String;

    fn from_str(text: &str) -> Result<Sample, String> {
        let problem = || format!("--sample takes N/M with 1 <= N <= M <= {MAXIMUM_SLICES} (e.g. 1/4), not {text:?}");
        let (slice, of) = text.split_once('/').ok_or_else(problem)?;
        let (slice, of): (u32, u32) = (
            slice.trim().parse().map_err(|_| problem())?,
            of.trim().parse().map_err(|_| problem())?,
        );
        if slice == 0 || of == 0 || slice > of || of > MAXIMUM_SLICES {
            return Err(problem());
        }
        Ok(Sample { slice, of })
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.slice, self.of)
    }
}

impl Sample {
    /// Whether the backup `id` is in this slice.
    pub fn contains(&self, id: &str) -> bool {
        slice_of(id, self.of) == self.slice - 1
    }
}

/// The 0-based slice of `slices` an id falls in: the first 8 bytes of its
/// SHA-256, modulo the slice count. Depends on nothing but the id.
pub fn slice_of(id: &str, slices: u32) -> u32 {
    let digest = Sha256::digest(id.as_bytes());
    let number = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (number % u64::from(slices.max(1))) as u32
}

/// Which backups to verify.
#[derive(Debug, Clone)]
pub enum Selection {
    /// The newest complete backup of each series (each database's dailies,
    /// its monthlies, the weekly secrets, the latest pointer, …).
    Latest,
    /// Every backup (incomplete ones are skipped and listed).
    All,
    /// These ids.
    Ids(Vec<String>),
}

/// Narrowing a selection.
#[derive(Debug, Clone, Copy)]
pub struct Filter {
    pub kind: Kind,
    /// Only backups taken on or after this day (UTC).
    pub since: Option<NaiveDate>,
    pub sample: Option<Sample>,
}

/// What [`select`] chose.
#[derive(Debug)]
pub struct Selected<'a> {
    pub verify: Vec<&'a Entry>,
    /// Incomplete backups `--all` does not verify (retention handles them).
    pub skipped: Vec<&'a Entry>,
    /// Backups the filters left before the sample took its slice.
    pub candidates: usize,
}

/// Chooses the backups to verify.
pub fn select<'a>(catalog: &'a Catalog, selection: &Selection, filter: &Filter) -> Result<Selected<'a>, IdError> {
    let since = filter
        .since
        .map(|date| date.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    let recent = |entry: &&Entry| since.is_none_or(|since| entry.time.is_some_and(|time| time >= since));
    let chosen: Vec<&Entry> = match selection {
        Selection::Ids(ids) => ids
            .iter()
            .map(|id| catalog.resolve(id))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|entry| filter.kind.includes(entry.class))
            .filter(recent)
            .collect(),
        Selection::All => catalog.of(filter.kind, None).filter(recent).collect(),
        Selection::Latest => {
            // Entries are newest first: the first complete one of each series.
            let mut seen = std::collections::HashSet::new();
            catalog
                .of(filter.kind, None)
                .filter(|entry| entry.is_complete())
                .filter(recent)
                .filter(|entry| seen.insert(entry.series()))
                .collect()
        }
    };
    let explicit = matches!(selection, Selection::Ids(_));
    let candidates = chosen.len();
    let (verify, skipped) = chosen
        .into_iter()
        .filter(|entry| filter.sample.is_none_or(|sample| sample.contains(&entry.id)))
        .partition(|entry| explicit || entry.state != Completeness::Incomplete);
    Ok(Selected {
        verify,
        skipped,
        candidates,
    })
}

/// One check of one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    fn failed(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
        }
    }

    fn compare<T: PartialEq + std::fmt::Display>(name: &'static str, recorded: T, found: T, of: &str) -> Check {
        if recorded == found {
            Check::ok(name, format!("{found}"))
        } else {
            Check::failed(name, format!("{of} records {recorded}, the store has {found}"))
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub id: String,
    pub class: Class,
    pub ok: bool,
    pub checks: Vec<Check>,
    /// Bytes downloaded to verify it.
    pub bytes_read: u64,
    pub time: Option<DateTime<Utc>>,
}

impl Verified {
    /// Why it failed: every failed check, in one line.
    pub fn why(&self) -> String {
        self.checks
            .iter()
            .filter(|check| !check.ok)
            .map(|check| format!("{}: {}", check.name, check.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How to verify.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// The `pg_restore` that reads the archives' structure.
    pub pg_restore: String,
    /// Decrypt secrets backups with this passphrase, when given.
    pub secrets_key: Option<SecretString>,
    /// Decrypt encrypted dumps with these, when given, to read their
    /// structure; without them an encrypted dump's size and SHA-256 are
    /// still proven.
    pub identities: Option<std::sync::Arc<crate::postgres::archive::Identities>>,
}

/// Verifies one backup. Never fails: a problem, even reading, is a failed check.
pub async fn verify(store: &dyn BlobStore, entry: &Entry, options: &Options) -> Verified {
    let mut bytes_read = 0;
    let checks = match entry.state {
        Completeness::Incomplete => vec![Check::failed(
            "complete",
            entry.problem.clone().unwrap_or_else(|| "no manifest".into()),
        )],
        Completeness::Unreadable => vec![Check::failed(
            "manifest",
            entry.problem.clone().unwrap_or_else(|| "unreadable".into()),
        )],
        Completeness::Complete => match (entry.class, options.mode) {
            (Class::PostgresDaily | Class::PostgresMonthly, Mode::Full) => {
                postgres_full(store, entry, options, &mut bytes_read).await
            }
            (Class::PostgresDaily | Class::PostgresMonthly, Mode::Quick) => postgres_quick(store, entry).await,
            (Class::Inventory, mode) => inventory(store, entry, mode, &mut bytes_read).await,
            (Class::SecretsWeekly | Class::SecretsLatest, Mode::Full) => {
                secrets(store, entry, options, &mut bytes_read).await
            }
            (Class::DrillReport, Mode::Full) => drill_report(store, entry, &mut bytes_read).await,
            (Class::SecretsWeekly | Class::SecretsLatest | Class::DrillReport, Mode::Quick) => {
                present(store, entry).await
            }
            (Class::Unrecognised | Class::DocumentsMirror, _) => {
                vec![Check::failed("class", "not a backup keshless-ops verifies")]
            }
        },
    };
    Verified {
        id: entry.id.clone(),
        class: entry.class,
        ok: checks.iter().all(|check| check.ok),
        checks,
        bytes_read,
        time: entry.time,
    }
}

fn manifest_of(entry: &Entry) -> Result<&Manifest, Check> {
    entry
        .manifest
        .as_ref()
        .ok_or_else(|| Check::failed("manifest", "no manifest was read"))
}

async fn postgres_full(store: &dyn BlobStore, entry: &Entry, options: &Options, bytes_read: &mut u64) -> Vec<Check> {
    let manifest = match manifest_of(entry) {
        Ok(manifest) => manifest,
        Err(check) => return vec![check],
    };
    let dump = entry.main_key().to_owned();
    let mut checks = Vec::new();
    match store.get(&dump, None).await {
        Err(error) => checks.push(Check::failed("read", error.to_string())),
        Ok(stored) => {
            // One pass: the stored bytes are hashed as they go by, on their
            // way through the archive's decoding into pg_restore --list.
            let hashing = HashingStream::new(stored);
            let observer = hashing.observer();
            let readable = crate::postgres::archive::require_identities(
                &entry.id,
                &manifest.encoding,
                options.identities.as_deref(),
            );
            let listed = match readable {
                Ok(_) => {
                    let plain = crate::postgres::archive::decode(
                        hashing.boxed(),
                        &manifest.encoding,
                        options.identities.clone(),
                        manifest.archive_digest(),
                    );
                    Some(crate::postgres::process::table_of_contents_reading_all(&options.pg_restore, plain).await)
                }
                // Proven by size and SHA-256 alone: the bytes are read and
                // hashed all the same.
                Err(_) => {
                    let mut hashing = hashing;
                    while let Some(chunk) = hashing.next().await {
                        if chunk.is_err() {
                            break;
                        }
                    }
                    None
                }
            };
            match observer.take() {
                StreamEnd::Complete(digests) => {
                    *bytes_read += digests.bytes;
                    checks.push(Check::compare(
                        "size",
                        manifest.size_bytes,
                        digests.bytes,
                        "the manifest",
                    ));
                    checks.push(Check::compare(
                        "sha256",
                        manifest.sha256.as_str(),
                        digests.sha256_hex.as_str(),
                        "the manifest",
                    ));
                }
                StreamEnd::Failed(error) => checks.push(Check::failed("read", format!("reading {dump}: {error}"))),
                StreamEnd::Unfinished { bytes } => {
                    *bytes_read += bytes;
                    checks.push(Check::failed(
                        "read",
                        format!("reading {dump} stopped after {bytes} bytes"),
                    ));
                }
            }
            checks.push(match listed {
                None => Check::ok(
                    "structure",
                    "not read: the dump is encrypted and no identity is configured (BACKUP_AGE_IDENTITY_FILE or \
                     BACKUP_AGE_IDENTITY_SECRET reads it too)",
                ),
                Some(Ok(listing)) => structure(&listing, manifest),
                Some(Err(error)) => Check::failed(
                    "structure",
                    format!("pg_restore --list cannot read the archive's table of contents: {error:#}"),
                ),
            });
        }
    }
    checks.push(match &manifest.globals {
        None => Check::ok("globals", "none recorded (manifest version 1: restore with --no-owner)"),
        Some(stored) => match crate::postgres::layout::read_stored_file(store, &entry.id, stored).await {
            Ok(bytes) => {
                *bytes_read += bytes.len() as u64;
                Check::ok("globals", format!("{} bytes, SHA-256 as recorded", bytes.len()))
            }
            Err(error) => Check::failed("globals", format!("{error:#}")),
        },
    });
    checks
}

/// What a `pg_restore --list` listing says of the archive: entries, and the
/// database it was dumped from (a swapped dump names another one).
fn structure(listing: &str, manifest: &Manifest) -> Check {
    let entries = listing
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with(';'))
        .count();
    let dumped_from = listing
        .lines()
        .find_map(|line| line.trim_start_matches(';').trim().strip_prefix("dbname:"))
        .map(str::trim);
    match dumped_from {
        Some(database) if database != manifest.database => Check::failed(
            "structure",
            format!(
                "the archive is a dump of database {database:?}, the manifest says {:?}",
                manifest.database
            ),
        ),
        _ if entries == 0 => Check::failed("structure", "the archive's table of contents lists nothing"),
        _ => Check::ok(
            "structure",
            format!("table of contents read to the end: {entries} entries"),
        ),
    }
}

async fn postgres_quick(store: &dyn BlobStore, entry: &Entry) -> Vec<Check> {
    let manifest = match manifest_of(entry) {
        Ok(manifest) => manifest,
        Err(check) => return vec![check],
    };
    let dump = entry.main_key();
    let mut checks = Vec::new();
    match store.stat(dump).await {
        Err(error) => checks.push(Check::failed("stat", error.to_string())),
        Ok(None) => checks.push(Check::failed("stat", format!("{dump} is missing"))),
        Ok(Some(object)) => {
            checks.push(Check::compare("size", manifest.size_bytes, object.size, "the manifest"));
            checks.push(match (&manifest.dump_crc32c, &object.crc32c) {
                (Some(recorded), Some(found)) => Check::compare("crc32c", recorded, found, "the manifest"),
                (None, _) => Check::ok("crc32c", "not recorded (made on a store without CRC32C): size only"),
                (Some(_), None) => Check::ok("crc32c", "the store reports no CRC32C: size only"),
            });
        }
    }
    if let Some(globals) = &manifest.globals {
        checks.push(match store.stat(&globals.key).await {
            Ok(Some(object)) => Check::compare("globals", globals.size_bytes, object.size, "the manifest"),
            Ok(None) => Check::failed("globals", format!("{} is missing", globals.key)),
            Err(error) => Check::failed("globals", error.to_string()),
        });
    }
    checks
}

async fn inventory(store: &dyn BlobStore, entry: &Entry, mode: Mode, bytes_read: &mut u64) -> Vec<Check> {
    use crate::documents::layout::{read_entries, Summary};
    let (Some(entries_key), Some(summary_key)) = (entry.key_ending(".jsonl.gz"), entry.key_ending(".summary.json"))
    else {
        return vec![Check::failed("complete", "the entries or the summary are missing")];
    };
    let summary: Summary = match store.get_bytes(summary_key, 16 * 1024 * 1024).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(summary) => summary,
            Err(error) => return vec![Check::failed("summary", format!("{summary_key}: {error}"))],
        },
        Err(error) => return vec![Check::failed("summary", error.to_string())],
    };
    let stored_size = entry
        .objects
        .iter()
        .find(|object| object.key == entries_key)
        .map_or(0, |object| object.size);
    let mut checks = vec![Check::compare(
        "size",
        summary.inventory_size_bytes,
        stored_size,
        "the summary",
    )];
    if mode == Mode::Quick {
        return checks;
    }
    let mut entries = read_entries(store, entries_key.to_owned(), Some(summary.inventory_sha256.clone()));
    let mut count = 0u64;
    loop {
        match entries.try_next().await {
            Ok(Some(_)) => count += 1,
            Ok(None) => {
                *bytes_read += stored_size;
                checks.push(Check::ok("sha256", "as the summary records"));
                checks.push(Check::compare("entries", summary.object_count, count, "the summary"));
                break;
            }
            Err(error) => {
                checks.push(Check::failed("entries", error.to_string()));
                break;
            }
        }
    }
    checks
}

async fn secrets(store: &dyn BlobStore, entry: &Entry, options: &Options, bytes_read: &mut u64) -> Vec<Check> {
    use crate::crypto::{Envelope, EnvelopeCodec};
    let bytes = match store
        .get_bytes(entry.main_key(), crate::jobs::secrets_backup::MAXIMUM_ENVELOPE_BYTES)
        .await
    {
        Ok(bytes) => bytes,
        Err(error) => return vec![Check::failed("read", error.to_string())],
    };
    *bytes_read += bytes.len() as u64;
    let codec = EnvelopeCodec::standard();
    if let Err(error) = Envelope::parse(&bytes, &codec.minimum_params()) {
        return vec![Check::failed("envelope", error.to_string())];
    }
    let mut checks = vec![Check::ok("envelope", "format, version, algorithms and KDF parameters")];
    checks.push(match &options.secrets_key {
        None => Check::ok(
            "decrypts",
            "not tried: set SECRETS_ENCRYPTION_KEY to decrypt (authenticates every byte)",
        ),
        Some(key) => {
            let key = key.clone();
            match codec.open_contents_in_background(&key, &bytes).await {
                Ok(_) => Check::ok("decrypts", "with SECRETS_ENCRYPTION_KEY: every byte authenticated"),
                Err(error) => Check::failed("decrypts", error.to_string()),
            }
        }
    });
    checks
}

async fn drill_report(store: &dyn BlobStore, entry: &Entry, bytes_read: &mut u64) -> Vec<Check> {
    use crate::jobs::dr_drill::{Report, REPORT_FORMAT};
    match store.get_bytes(entry.main_key(), 16 * 1024 * 1024).await {
        Err(error) => vec![Check::failed("read", error.to_string())],
        Ok(bytes) => {
            *bytes_read += bytes.len() as u64;
            vec![match serde_json::from_slice::<Report>(&bytes) {
                Ok(report) if report.format == REPORT_FORMAT => Check::ok(
                    "report",
                    format!("{} steps, passed: {}", report.steps.len(), report.passed),
                ),
                Ok(report) => Check::failed("report", format!("format {:?}, not {REPORT_FORMAT:?}", report.format)),
                Err(error) => Check::failed("report", format!("not a drill report: {error}")),
            }]
        }
    }
}

/// Quick mode for what records no size or checksum of itself (secrets
/// envelopes, drill reports): the object is there and not empty.
async fn present(store: &dyn BlobStore, entry: &Entry) -> Vec<Check> {
    let key = entry.main_key();
    vec![match store.stat(key).await {
        Ok(Some(object)) if object.size > 0 => Check::ok(
            "present",
            format!("{} bytes (nothing recorded to compare without reading it)", object.size),
        ),
        Ok(Some(_)) => Check::failed("present", format!("{key} is empty")),
        Ok(None) => Check::failed("present", format!("{key} is missing")),
        Err(error) => Check::failed("present", error.to_string()),
    }]
}

/// Verifies `entries` a few at a time (each full verification is one
/// download and, for PostgreSQL, one pg_restore), in the given order.
pub async fn verify_all(store: &dyn BlobStore, entries: &[&Entry], options: &Options) -> Vec<Verified> {
    const AT_ONCE: usize = 2;
    futures::stream::iter(entries.iter().map(|entry| verify(store, entry, options)))
        .buffered(AT_ONCE)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_as_n_of_m() {
        assert_eq!("2/4".parse::<Sample>(), Ok(Sample { slice: 2, of: 4 }));
        assert_eq!("1/1".parse::<Sample>(), Ok(Sample { slice: 1, of: 1 }));
        for bad in ["0/4", "5/4", "1/0", "4", "a/b", "1/10001", ""] {
            let problem = bad.parse::<Sample>().unwrap_err();
            assert!(problem.contains("N/M"), "{bad}: {problem}");
        }
    }

    #[test]
    fn the_slices_of_a_sample_cover_every_id_exactly_once() {
        let ids: Vec<String> = (0..500).map(|day| format!("daily/2026-{day:03}/keshless")).collect();
        for slices in [1, 2, 4, 7] {
            let mut counted = vec![0; ids.len()];
            for slice in 1..=slices {
                let sample = Sample { slice, of: slices };
                for (index, id) in ids.iter().enumerate() {
                    if sample.contains(id) {
                        counted[index] += 1;
                    }
                }
            }
            assert!(counted.iter().all(|count| *count == 1), "{slices} slices");
        }
        // Roughly even, and fixed for an id whatever else is in the store.
        let in_first = ids.iter().filter(|id| slice_of(id, 4) == 0).count();
        assert!((90..=160).contains(&in_first), "{in_first} of 500 in slice 1/4");
        assert_eq!(
            slice_of("daily/2026-11-26/keshless-20261126T020000Z", 4),
            slice_of("daily/2026-11-26/keshless-20261126T020000Z", 4)
        );
    }
}
