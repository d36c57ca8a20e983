//! `secrets-backup` (SPEC sections 2 and 7): read the configured secrets,
//! encrypt them into one envelope, write `secrets/weekly/YYYY-MM-DD.json.encrypted`
//! (create-only) and then `secrets/latest.json.encrypted` (overwrite). The
//! ledger gets the counts and names; values never leave the envelope.
//!
//! Names and values (env, file) go in as a secret map (envelope version 1); a
//! Secret Manager project goes in as its backup document (version 2, see
//! `crate::secret_manager::document`), whose result also counts versions and
//! payload bytes.
//!
//! A rerun on a day whose weekly object already exists (a manual run, a new
//! idempotency key) does not fail: the existing object is checked to decrypt
//! with the current key; it stays as the day's backup, and `latest` is
//! replaced with the fresh envelope so it always holds the newest secrets. An
//! existing object that does not decrypt is a permanent error: something
//! (a key change, corruption) needs a person.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::secrets_source::{self, SecretsSource, Source};
use crate::config::Config;
use crate::crypto::{Contents, EnvelopeCodec, SecretMap};
use crate::runtime::job::{Job, JobError, Outcome, RunContext};
use crate::secret_manager::SecretManagerBackup;
use crate::storage::{BlobStore, BlobStoreExt, ListOptions, StorageError, WriteMode};

/// The pointer to the newest secrets backup; retention never deletes it.
pub const LATEST_KEY: &str = "secrets/latest.json.encrypted";
/// Where the weekly backups live.
pub const WEEKLY_PREFIX: &str = "secrets/weekly/";
const WEEKLY_SUFFIX: &str = ".json.encrypted";
/// Envelopes of env and file secrets are a few KiB; a Secret Manager backup
/// of thousands of secrets is up to `MAXIMUM_DOCUMENT_BYTES` (48 MiB) of JSON,
/// about 1.4 times that once encrypted and base64-encoded. Anything larger is
/// not an envelope.
pub const MAXIMUM_ENVELOPE_BYTES: u64 = 72 * 1024 * 1024;

/// `secrets/weekly/YYYY-MM-DD.json.encrypted`.
pub fn weekly_key(date: NaiveDate) -> String {
    format!("{WEEKLY_PREFIX}{}{WEEKLY_SUFFIX}", date.format("%Y-%m-%d"))
}

/// The date of a weekly backup key, `None` for anything else under the prefix.
pub fn weekly_date(key: &str) -> Option<NaiveDate> {
    let date = key.strip_prefix(WEEKLY_PREFIX)?.strip_suffix(WEEKLY_SUFFIX)?;
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
}

/// Every stored secrets backup: weekly objects oldest first, then `latest` if present.
pub async fn list_secrets_backups(store: &dyn BlobStore) -> Result<Vec<String>, StorageError> {
    let mut keys: Vec<String> = store
        .list(WEEKLY_PREFIX, ListOptions::default())
        .try_filter_map(|object| async move { Ok(weekly_date(&object.key).map(|_| object.key)) })
        .try_collect()
        .await?;
    keys.sort();
    if store.stat(LATEST_KEY).await?.is_some() {
        keys.push(LATEST_KEY.to_owned());
    }
    Ok(keys)
}

/// Reads and decrypts one secrets backup (`object`, e.g. [`LATEST_KEY`]);
/// returns its contents and its `created_at`. A missing object is an error
/// listing the backups that exist.
pub async fn read_backup(
    store: &dyn BlobStore,
    object: &str,
    key: &SecretString,
) -> anyhow::Result<(Contents, String)> {
    use anyhow::Context as _;
    let location = store.location().to_string();
    let bytes = match store.get_bytes(object, MAXIMUM_ENVELOPE_BYTES).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => {
            let available = list_secrets_backups(store).await.unwrap_or_default();
            anyhow::bail!(
                "no secrets backup {object} in {location}; available: {}",
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                }
            );
        }
        Err(error) => return Err(error.into()),
    };
    let codec = EnvelopeCodec::standard();
    let created_at = crate::crypto::Envelope::parse(&bytes, &codec.minimum_params())
        .with_context(|| format!("{location}/{object}"))?
        .created_at()
        .to_owned();
    let contents = codec
        .open_contents_in_background(key, &bytes)
        .await
        .with_context(|| format!("{location}/{object}"))?;
    Ok((contents, created_at))
}

/// Encrypted weekly copy of the configured secrets.
pub struct SecretsBackup {
    backups: Arc<dyn BlobStore>,
    source: Source,
    key: SecretString,
    time_zone: chrono_tz::Tz,
    codec: EnvelopeCodec,
    clock: crate::clock::Clock,
}

impl std::fmt::Debug for SecretsBackup {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SecretsBackup")
            .field("backups", &self.backups.location().to_string())
            .field("source", &self.source.describe())
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// No parameters: the source and key come from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsBackupParams {}

impl SecretsBackup {
    /// The production job: source, key and time zone from the configuration.
    pub fn from_config(config: &Config, backups: Arc<dyn BlobStore>) -> SecretsBackup {
        SecretsBackup::with_source(
            backups,
            secrets_source::from_config(&config.secrets_source),
            config.secrets_encryption_key.clone(),
            config.schedule_time_zone,
        )
    }

    /// A backup of names and values (env, file).
    pub fn new(
        backups: Arc<dyn BlobStore>,
        source: Box<dyn SecretsSource>,
        key: SecretString,
        time_zone: chrono_tz::Tz,
    ) -> SecretsBackup {
        SecretsBackup::with_source(backups, Source::Values(source), key, time_zone)
    }

    /// A backup of any source.
    pub fn with_source(
        backups: Arc<dyn BlobStore>,
        source: Source,
        key: SecretString,
        time_zone: chrono_tz::Tz,
    ) -> SecretsBackup {
        SecretsBackup {
            backups,
            source,
            key,
            time_zone,
            codec: EnvelopeCodec::standard(),
            clock: crate::clock::Clock::system(),
        }
    }

    /// Other KDF parameters (tests: production Argon2 is too slow to run per test).
    pub fn with_codec(mut self, codec: EnvelopeCodec) -> SecretsBackup {
        self.codec = codec;
        self
    }

    /// Another clock (tests pinning the date, the year simulation).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> SecretsBackup {
        self.clock = clock;
        self
    }

    /// What happened to the weekly object: created now, or already there.
    async fn write_weekly(
        &self,
        weekly: &str,
        sealed: &Bytes,
        digests: &BTreeMap<String, [u8; 32]>,
    ) -> Result<serde_json::Value, JobError> {
        match self
            .backups
            .put_bytes(weekly, sealed.clone(), WriteMode::CreateOnly)
            .await
        {
            Ok(report) => Ok(serde_json::json!({
                "status": "created",
                "sha256": report.sha256,
                "bytes": report.bytes,
            })),
            Err(StorageError::AlreadyExists { .. }) => {
                let existing = self.backups.get_bytes(weekly, MAXIMUM_ENVELOPE_BYTES).await?;
                let stored = self
                    .codec
                    .open_contents_in_background(&self.key, &existing)
                    .await
                    .map_err(|error| error.to_string())
                    .and_then(|contents| digests_of(&contents))
                    .map_err(|error| {
                        JobError::permanent(anyhow::anyhow!(
                            "{weekly} already exists in {} but cannot be read with the current \
                             SECRETS_ENCRYPTION_KEY ({error}); it is kept as it is and latest was not updated: \
                             check the key (`keshless-ops secrets verify --date ...`) or run `secrets rekey`",
                            self.backups.location()
                        ))
                    })?;
                let changed: Vec<&String> = digests
                    .iter()
                    .filter(|(name, digest)| stored.get(*name).is_some_and(|old| old != *digest))
                    .map(|(name, _)| name)
                    .collect();
                let added: Vec<&String> = digests.keys().filter(|name| !stored.contains_key(*name)).collect();
                let removed: Vec<&String> = stored.keys().filter(|name| !digests.contains_key(*name)).collect();
                if added.is_empty() && removed.is_empty() && changed.is_empty() {
                    tracing::info!(
                        object = weekly,
                        "weekly secrets backup already exists with the same secrets"
                    );
                    Ok(serde_json::json!({ "status": "existing" }))
                } else {
                    tracing::warn!(
                        object = weekly,
                        added = ?added,
                        removed = ?removed,
                        changed = ?changed,
                        "weekly secrets backup of today already exists with other secrets; it is kept, and \
                         latest gets the current secrets"
                    );
                    Ok(serde_json::json!({
                        "status": "existing-differs",
                        "added": added,
                        "removed": removed,
                        "changed": changed,
                    }))
                }
            }
            Err(error) => Err(error.into()),
        }
    }
}

#[async_trait]
impl Job for SecretsBackup {
    const NAME: &'static str = "secrets-backup";
    type Params = SecretsBackupParams;

    async fn run(&self, context: &RunContext, _params: SecretsBackupParams) -> Result<Outcome, JobError> {
        let now = self.clock.now();
        let date = now.with_timezone(&self.time_zone).date_naive();
        let read = self.read(now).await?;
        tracing::info!(
            job.key = %context.idempotency_key,
            secrets.count = read.names.len(),
            source = %self.source.describe(),
            "read secrets"
        );

        let sealed = self
            .codec
            .seal_contents_in_background(&self.key, &read.contents, now)
            .await
            .map_err(JobError::permanent)?;
        // A backup that cannot be restored is worse than none: prove it
        // decrypts to the same secrets before storing it.
        let check = self
            .codec
            .open_contents_in_background(&self.key, &sealed)
            .await
            .map_err(|error| JobError::permanent(anyhow::anyhow!("the new envelope does not decrypt: {error}")))?;
        if !check.same_contents(&read.contents) {
            return Err(JobError::permanent(anyhow::anyhow!(
                "the new envelope decrypts to other secrets than were read"
            )));
        }
        let sealed = Bytes::from(sealed);
        let size_bytes = sealed.len();

        let weekly = weekly_key(date);
        let weekly_result = self.write_weekly(&weekly, &sealed, &read.digests).await?;
        if context.cancel.is_cancelled() {
            return Err(JobError::transient(anyhow::anyhow!(
                "cancelled after writing {weekly}, before updating {LATEST_KEY}"
            )));
        }
        // Only now is the weekly object complete, so the pointer may move.
        let latest = self.backups.put_bytes(LATEST_KEY, sealed, WriteMode::Overwrite).await?;
        tracing::info!(object = %weekly, secrets.count = read.names.len(), "secrets backup written");

        let count = read.names.len();
        let mut details = serde_json::json!({
            "count": count,
            "names": read.names,
            // The weekly envelope's size: the worker logs it as the run's `bytes`.
            "size_bytes": size_bytes,
            "date": date.to_string(),
            "weekly": { "key": weekly, "result": weekly_result },
            "latest": { "key": LATEST_KEY, "sha256": latest.sha256, "bytes": latest.bytes },
            "kdf": self.codec.write_params(),
        });
        if let Some(extra) = read.details {
            details["secret_manager"] = extra;
        }
        Ok(Outcome::new(format!("backed up {count} secrets to {weekly}")).with_details(details))
    }
}

/// What was read, ready to seal.
struct ReadSecrets {
    contents: Contents,
    /// Sorted names: environment names, or Secret Manager resource names.
    names: Vec<String>,
    digests: BTreeMap<String, [u8; 32]>,
    /// Secret Manager's counts (secrets, versions, bytes) for the result.
    details: Option<serde_json::Value>,
}

impl SecretsBackup {
    async fn read(&self, now: DateTime<Utc>) -> Result<ReadSecrets, JobError> {
        match &self.source {
            Source::Values(source) => {
                let secrets = source.read().await.map_err(JobError::permanent)?;
                Ok(ReadSecrets {
                    names: secrets.names(),
                    digests: map_digests(&secrets),
                    contents: Contents::Map(secrets),
                    details: None,
                })
            }
            Source::SecretManager(source) => {
                let backup = source.read(now).await.map_err(|error| {
                    // Quota, network and damaged payloads pass; the rest needs a person.
                    let transient = error.is_transient();
                    let error = anyhow::Error::new(error).context(format!("reading {}", source.describe()));
                    if transient {
                        JobError::transient(error)
                    } else {
                        JobError::permanent(error)
                    }
                })?;
                if backup.secrets.is_empty() {
                    return Err(JobError::permanent(anyhow::anyhow!(
                        "the secrets source ({}) is empty: there is nothing to back up",
                        source.describe()
                    )));
                }
                let counts = backup.counts();
                Ok(ReadSecrets {
                    names: backup.names(),
                    digests: backup.digests(),
                    contents: Contents::SecretManager(backup.to_json()),
                    details: Some(serde_json::json!({
                        "project": backup.project,
                        "secrets": counts.secrets,
                        "versions": counts.versions,
                        "enabled_versions": counts.enabled_versions,
                        "payload_bytes": counts.payload_bytes,
                    })),
                })
            }
        }
    }
}

/// One digest per name over its value: compares two maps without keeping values side by side.
fn map_digests(secrets: &SecretMap) -> BTreeMap<String, [u8; 32]> {
    secrets
        .iter()
        .map(|(name, value)| (name.to_owned(), Sha256::digest(value.expose_secret().as_bytes()).into()))
        .collect()
}

/// Digests of whatever a stored envelope holds.
fn digests_of(contents: &Contents) -> Result<BTreeMap<String, [u8; 32]>, String> {
    match contents {
        Contents::Map(secrets) => Ok(map_digests(secrets)),
        Contents::SecretManager(bytes) => SecretManagerBackup::from_json(bytes)
            .map(|backup| backup.digests())
            .map_err(|error| error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekly_keys_round_trip() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 29).unwrap();
        assert_eq!(weekly_key(date), "secrets/weekly/2026-11-29.json.encrypted");
        assert_eq!(weekly_date(&weekly_key(date)), Some(date));
        assert_eq!(weekly_date("secrets/weekly/notes.txt"), None);
        assert_eq!(weekly_date(LATEST_KEY), None);
    }
}
