//! `secrets-backup` (SPEC sections 2 and 7): read the configured secrets,
//! encrypt them into one envelope, write `secrets/weekly/YYYY-MM-DD.json.encrypted`
//! (create-only) and then `secrets/latest.json.encrypted` (overwrite). The
//! ledger gets the count and names; values never leave the envelope.
//!
//! A rerun on a day whose weekly object already exists (a manual run, a new
//! idempotency key) does not fail: the existing object is checked to decrypt
//! with the current key; it stays as the day's backup, and `latest` is
//! replaced with the fresh envelope so it always holds the newest secrets. An
//! existing object that does not decrypt is a permanent error: something
//! (a key change, corruption) needs a person.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::secrets_source::{self, SecretsSource};
use crate::config::Config;
use crate::crypto::{EnvelopeCodec, SecretMap};
use crate::runtime::job::{Job, JobError, Outcome, RunContext};
use crate::storage::{BlobStore, BlobStoreExt, ListOptions, StorageError, WriteMode};

/// The pointer to the newest secrets backup; retention never deletes it.
pub const LATEST_KEY: &str = "secrets/latest.json.encrypted";
/// Where the weekly backups live.
pub const WEEKLY_PREFIX: &str = "secrets/weekly/";
const WEEKLY_SUFFIX: &str = ".json.encrypted";
/// Secrets envelopes are a few KiB; anything far larger is not one.
pub const MAXIMUM_ENVELOPE_BYTES: u64 = 4 * 1024 * 1024;

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

/// Encrypted weekly copy of the configured secrets.
pub struct SecretsBackup {
    backups: Arc<dyn BlobStore>,
    source: Box<dyn SecretsSource>,
    key: SecretString,
    time_zone: chrono_tz::Tz,
    codec: EnvelopeCodec,
    clock: fn() -> DateTime<Utc>,
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
        SecretsBackup::new(
            backups,
            secrets_source::from_config(&config.secrets_source),
            config.secrets_encryption_key.clone(),
            config.schedule_time_zone,
        )
    }

    pub fn new(
        backups: Arc<dyn BlobStore>,
        source: Box<dyn SecretsSource>,
        key: SecretString,
        time_zone: chrono_tz::Tz,
    ) -> SecretsBackup {
        SecretsBackup {
            backups,
            source,
            key,
            time_zone,
            codec: EnvelopeCodec::standard(),
            clock: Utc::now,
        }
    }

    /// Other KDF parameters (tests: production Argon2 is too slow to run per test).
    pub fn with_codec(mut self, codec: EnvelopeCodec) -> SecretsBackup {
        self.codec = codec;
        self
    }

    /// Another clock (tests pinning the date).
    pub fn with_clock(mut self, clock: fn() -> DateTime<Utc>) -> SecretsBackup {
        self.clock = clock;
        self
    }

    /// What happened to the weekly object: created now, or already there.
    async fn write_weekly(
        &self,
        weekly: &str,
        sealed: &Bytes,
        secrets: &SecretMap,
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
                    .open_in_background(&self.key, &existing)
                    .await
                    .map_err(|error| {
                        JobError::permanent(anyhow::anyhow!(
                            "{weekly} already exists in {} but cannot be read with the current \
                             SECRETS_ENCRYPTION_KEY ({error}); it is kept as it is and latest was not updated: \
                             check the key (`keshless-ops secrets verify --date ...`) or run `secrets rekey`",
                            self.backups.location()
                        ))
                    })?;
                let names = secrets.names();
                let stored_names = stored.names();
                let changed: Vec<String> = secrets
                    .iter()
                    .filter(|(name, value)| {
                        stored
                            .get(name)
                            .is_some_and(|old| old.expose_secret() != value.expose_secret())
                    })
                    .map(|(name, _)| name.to_owned())
                    .collect();
                let added: Vec<&String> = names.iter().filter(|name| !stored.contains(name)).collect();
                let removed: Vec<&String> = stored_names.iter().filter(|name| !secrets.contains(name)).collect();
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
        let now = (self.clock)();
        let date = now.with_timezone(&self.time_zone).date_naive();
        let secrets = self.source.read().await.map_err(JobError::permanent)?;
        let names = secrets.names();
        tracing::info!(
            job.key = %context.idempotency_key,
            secrets.count = names.len(),
            source = %self.source.describe(),
            "read secrets"
        );

        let sealed = self
            .codec
            .seal_in_background(&self.key, &secrets, now)
            .await
            .map_err(JobError::permanent)?;
        // A backup that cannot be restored is worse than none: prove it
        // decrypts to the same secrets before storing it.
        let check = self
            .codec
            .open_in_background(&self.key, &sealed)
            .await
            .map_err(|error| JobError::permanent(anyhow::anyhow!("the new envelope does not decrypt: {error}")))?;
        if !check.same_contents(&secrets) {
            return Err(JobError::permanent(anyhow::anyhow!(
                "the new envelope decrypts to other secrets than were read"
            )));
        }
        let sealed = Bytes::from(sealed);
        let size_bytes = sealed.len();

        let weekly = weekly_key(date);
        let weekly_result = self.write_weekly(&weekly, &sealed, &secrets).await?;
        if context.cancel.is_cancelled() {
            return Err(JobError::transient(anyhow::anyhow!(
                "cancelled after writing {weekly}, before updating {LATEST_KEY}"
            )));
        }
        // Only now is the weekly object complete, so the pointer may move.
        let latest = self.backups.put_bytes(LATEST_KEY, sealed, WriteMode::Overwrite).await?;
        tracing::info!(object = %weekly, secrets.count = names.len(), "secrets backup written");

        Ok(
            Outcome::new(format!("backed up {} secrets to {weekly}", names.len())).with_details(serde_json::json!({
                "count": names.len(),
                "names": names,
                // The weekly envelope's size: the worker logs it as the run's `bytes`.
                "size_bytes": size_bytes,
                "date": date.to_string(),
                "weekly": { "key": weekly, "result": weekly_result },
                "latest": { "key": LATEST_KEY, "sha256": latest.sha256, "bytes": latest.bytes },
                "kdf": self.codec.write_params(),
            })),
        )
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
