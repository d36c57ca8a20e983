//! `postgres-backup`: a consistent `pg_dump` streamed into the store —
//! compressed with zstd and encrypted to age recipients on the way
//! ([`crate::postgres::archive`]) — with a manifest (written last) that
//! records its checksums and the exact row count of every table under the
//! same snapshot; the first complete backup of a month is also copied to
//! `postgresql/monthly/`.

use std::sync::Arc;

use anyhow::anyhow;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

use crate::config::DatabaseUrl;
use crate::postgres::archive::{self, EncodeSettings, Encoding};
use crate::postgres::globals::{self, Globals};
use crate::postgres::layout::{self, Class, Manifest, StoredFile, MANIFEST_FORMAT, MANIFEST_VERSION};
use crate::postgres::{self as pg, fidelity, process};
use crate::runtime::job::{Job, JobError, Outcome, RunContext};
use crate::storage::{BlobStore, BlobStoreExt, StorageError, WriteMode};

/// Whether this run's backup is also kept as the month's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Monthly {
    /// Copy when the month has no complete monthly backup of this database yet.
    #[default]
    Auto,
    /// Copy even if the month has one.
    Force,
    /// Never copy.
    Skip,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Database to back up; default: the one `DATABASE_URL` names.
    pub database: Option<String>,
    pub monthly: Monthly,
}

pub struct PostgresBackup {
    pub backups: Arc<dyn BlobStore>,
    /// The server, and the default database when `databases` is empty.
    pub database_url: DatabaseUrl,
    /// `DATABASES`: the databases this job may back up; a message without
    /// one backs up the first.
    pub databases: Vec<String>,
    /// The `pg_dump` to run (`PG_DUMP`, default from `PATH`).
    pub pg_dump: String,
    /// `BACKUP_COMPRESSION` and `BACKUP_ENCRYPTION_RECIPIENTS`.
    pub encoding: EncodeSettings,
    /// Dates the backup (its folder, its manifest's times).
    pub clock: crate::clock::Clock,
}

#[async_trait]
impl Job for PostgresBackup {
    const NAME: &'static str = "postgres-backup";
    type Params = Params;

    /// The database is always named after this: the default filled in (so it
    /// is part of the scheduled key) and anything outside `DATABASES` refused.
    fn normalise(&self, mut params: Params) -> Result<Params, String> {
        let allowed: Vec<&str> = if self.databases.is_empty() {
            self.database_url.database_name().into_iter().collect()
        } else {
            self.databases.iter().map(String::as_str).collect()
        };
        match &params.database {
            None => match allowed.first() {
                Some(first) => params.database = Some((*first).to_owned()),
                None => return Err("database: DATABASE_URL names no database and DATABASES is not set".to_owned()),
            },
            Some(database) if !allowed.contains(&database.as_str()) => {
                return Err(format!(
                    "database: {database:?} is not one this worker backs up; accepted (DATABASES): {}",
                    allowed.join(", ")
                ))
            }
            Some(_) => {}
        }
        Ok(params)
    }

    async fn run(&self, context: &RunContext, params: Params) -> Result<Outcome, JobError> {
        // The runtime hands over normalised parameters; a direct call may not.
        let params = self
            .normalise(params)
            .map_err(|problem| JobError::permanent(anyhow!("params: {problem}")))?;
        let database = params.database.clone().expect("normalise names the database");
        validate_database_name(&database)?;
        let mut config = self.database_url.postgres_config().clone();
        config.dbname(&database);
        // Phase durations at debug level: what `scripts/bench-postgres` reads
        // to find where a run's time goes.
        let clock = std::time::Instant::now();
        let phase = |name: &str| {
            tracing::debug!(
                phase = name,
                elapsed_ms = clock.elapsed().as_millis() as u64,
                "postgres-backup phase done"
            )
        };

        // `pg_dump --version` (a Perl wrapper on Debian: tens of
        // milliseconds) runs beside everything up to the end of the dump; the
        // dump's upload cannot complete before the version is known good.
        let pg_dump_version = version_of(self.pg_dump.clone());
        tokio::spawn(pg_dump_version.clone());

        // A retry after the backup was complete (say the monthly copy failed)
        // must not dump the database again: finish what is left. Connecting
        // starts meanwhile (both are waits), but only a run that dumps waits
        // for it: finishing a complete backup does not need the database.
        let connecting = {
            let config = config.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let client = pg::connect(&config).await?;
                let version = pg::server_version(&client).await?;
                Ok::<_, JobError>((client, version))
            }))
        };
        let existing = self.complete_backup_of(&context.idempotency_key, &database).await?;
        phase("resume check");
        if let Some(manifest) = existing {
            tracing::info!(dump = %manifest.dump, "this key's backup is already complete; finishing the monthly step");
            let monthly = self.copy_monthly(&database, &manifest, params.monthly).await?;
            let mut details = details_of(&manifest, monthly);
            details["resumed"] = serde_json::json!(true);
            return Ok(Outcome::new(format!("{} (already complete)", manifest.dump)).with_details(details));
        }
        let (client, (server_major, server_version)) = connecting
            .await
            .map_err(|error| JobError::transient(anyhow!("connecting to PostgreSQL: {error}")))??;
        phase("connect");
        let started_at = self.clock.now();

        // Counting takes a share lock on every table until the snapshot is
        // released; an ALTER queued behind it would queue pg_dump behind the
        // ALTER. Bounded waits turn that into a retryable failure, not a hang.
        // The counts run beside pg_dump and should take as little as possible
        // from it and from the server: no parallel workers (a pool the
        // application shares; the count finishes long before the dump) and no
        // JIT compilation (a count(*) gains nothing from it).
        pg::quiet_counting(&client, true).await?;
        client
            .batch_execute("SET lock_timeout = '60s'; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(pg::classify)?;
        // The snapshot every fact below and pg_dump itself are taken under.
        let snapshot: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(pg::classify)?
            .get(0);
        let database_size_bytes: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .map_err(pg::classify)?
            .get(0);
        // Sequences are not under the snapshot: read before pg_dump reads
        // them, so the restored position is at or past the recorded one.
        let sequences = fidelity::read_sequences(&client).await?;
        phase("snapshot exported");
        let base = layout::daily_base(&database, started_at);
        let encoding = self.encoding.encoding();
        let dump_key = layout::dump_key_for(&base, &encoding);
        tracing::info!(object = %dump_key, %snapshot, encoding = %encoding.describe(), "starting pg_dump");
        // The name carries the start time to the second: a backup of this
        // database that started in the same second under another encoding
        // owns it (the create-only upload only sees the same suffix).
        for sibling in layout::every_dump_key(&base) {
            if sibling != dump_key && self.backups.stat(&sibling).await?.is_some() {
                return Err(JobError::transient(anyhow!(
                    "{sibling} exists: another backup of {database} started in the same second; a retry starts \
                     under a new name"
                )));
            }
        }
        let archive = process::spawn_dump(
            &self.pg_dump,
            &pg::libpq_environment(&config),
            &snapshot,
            self.encoding.compression.pg_dump_argument(),
        )?;
        // The last item of the body: an error (so the upload is abandoned and
        // nothing becomes visible) unless this pg_dump can dump this server.
        let gate = {
            let version = pg_dump_version.clone();
            futures::stream::once(async move {
                match version.await {
                    Ok((major, _)) if major >= server_major => None,
                    Ok((_, text)) => Some(Err(std::io::Error::other(format!("{text} is older than the server")))),
                    Err(error) => Some(Err(std::io::Error::other(error))),
                }
            })
            .filter_map(futures::future::ready)
        };
        // Compressed and encrypted on the way: the store never sees the
        // plain archive when recipients are configured.
        let encoded = archive::encode(archive.chain(gate).boxed(), &self.encoding);
        let body = encoded.body;
        // Count rows on the exporting connection while pg_dump streams: same
        // snapshot, and the counting costs no wall time. The first failure
        // drops the other side (dropping the upload kills pg_dump).
        let counted_and_uploaded = futures::future::try_join(
            async {
                let counts = pg::table_counts(&client).await?;
                phase("row counts");
                // What the database needs from its cluster, and who owns
                // and may use what, under the same snapshot.
                let globals = globals::read(&client, &database).await?;
                let fidelity = fidelity::read_privileges(&client, sequences).await?;
                phase("globals and privileges");
                Ok::<_, JobError>((counts, globals, fidelity))
            },
            async {
                let uploaded = self
                    .backups
                    .put(&dump_key, body, WriteMode::CreateOnly)
                    .await
                    .map_err(dump_failure);
                phase("pg_dump streamed and upload finished");
                uploaded
            },
        );
        let result = tokio::select! {
            result = counted_and_uploaded => result,
            _ = context.cancel.cancelled() => return Err(JobError::transient(anyhow!("cancelled during pg_dump"))),
        };
        // The snapshot may be released only once pg_dump is done with it.
        let _ = client.batch_execute("COMMIT").await;
        // An old or missing pg_dump explains any failure above.
        let (dump_major, pg_dump_version) = pg_dump_version
            .await
            .map_err(|error| JobError::permanent(anyhow!(error)))?;
        if dump_major < server_major {
            return Err(JobError::permanent(anyhow!(
                "pg_dump is older than the server: found {pg_dump_version:?} for server {server_version}; \
                 install pg_dump {server_major} or newer (or point PG_DUMP at it)"
            )));
        }
        let ((tables, globals, fidelity), report) = result?;
        let archive = encoded
            .archive
            .await
            .map_err(|_| JobError::transient(anyhow!("the dump pipeline ended without the archive's digest")))?;
        let globals = self.write_globals(&base, &globals).await?;

        let manifest = Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            version: MANIFEST_VERSION,
            job: Self::NAME.to_owned(),
            idempotency_key: context.idempotency_key.clone(),
            database: database.clone(),
            started_at,
            finished_at: self.clock.now(),
            server_version,
            pg_dump_version,
            database_size_bytes,
            snapshot,
            dump: dump_key.clone(),
            size_bytes: report.bytes,
            sha256: report.sha256.clone(),
            dump_crc32c: report.object.crc32c.clone(),
            dump_md5: report.object.md5.clone(),
            tables,
            globals: Some(globals),
            fidelity: Some(fidelity),
            encoding: Encoding {
                archive: Some(archive),
                ..encoding
            },
        };
        self.write_manifest(&layout::manifest_key(&base), &manifest)
            .await
            .map_err(dump_failure)?;
        tracing::info!(object = %dump_key, bytes = report.bytes, sha256 = %report.sha256, "backup complete");

        phase("manifest written");
        let monthly = self.copy_monthly(&database, &manifest, params.monthly).await?;
        phase("monthly step");
        Ok(Outcome::new(format!(
            "{} ({} bytes, {} tables){}",
            layout::id_of(&base),
            report.bytes,
            manifest.tables.len(),
            monthly
                .as_deref()
                .map(|id| format!(", kept as {id}"))
                .unwrap_or_default()
        ))
        .with_details(details_of(&manifest, monthly)))
    }
}

/// What the ledger records of a complete backup (never a secret).
fn details_of(manifest: &Manifest, monthly: Option<String>) -> serde_json::Value {
    serde_json::json!({
        "database": manifest.database,
        "id": layout::id_of(layout::base_of(&manifest.dump).as_str()),
        "dump": manifest.dump,
        "size_bytes": manifest.size_bytes,
        "sha256": manifest.sha256,
        "tables": manifest.tables.len(),
        "rows": manifest.tables.iter().map(|table| table.rows).sum::<i64>(),
        "monthly": monthly,
    })
}

impl PostgresBackup {
    /// The complete daily backup this key already made of `database`, if any.
    async fn complete_backup_of(&self, key: &str, database: &str) -> Result<Option<Manifest>, JobError> {
        Ok(
            layout::list_of_database(self.backups.as_ref(), Class::Daily, database, None)
                .await?
                .into_iter()
                .filter(|listed| listed.is_complete())
                .filter_map(|listed| listed.manifest)
                .find(|manifest| manifest.idempotency_key == key && manifest.database == database),
        )
    }

    /// Writes a manifest (create-only): the step that makes a backup complete.
    async fn write_manifest(&self, key: &str, manifest: &Manifest) -> Result<(), StorageError> {
        let bytes = Bytes::from(serde_json::to_vec_pretty(manifest).expect("manifests serialise"));
        self.backups
            .put_bytes(key, bytes, WriteMode::CreateOnly)
            .await
            .map(|_| ())
    }

    /// Stores the globals next to the dump (before the manifest, which
    /// records their SHA-256), encrypted like the dump.
    async fn write_globals(&self, base: &str, globals: &Globals) -> Result<StoredFile, JobError> {
        let plain = serde_json::to_vec_pretty(globals).map_err(JobError::permanent)?;
        let recipients = self.encoding.active_recipients();
        let bytes = Bytes::from(match recipients {
            Some(keys) => archive::encrypt_small(&plain, keys).map_err(JobError::permanent)?,
            None => plain,
        });
        let key = layout::globals_key_for(base, recipients.is_some());
        let stored = StoredFile {
            key: key.clone(),
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        };
        self.backups.put_bytes(&key, bytes, WriteMode::CreateOnly).await?;
        Ok(stored)
    }

    /// Copies the backup to `postgresql/monthly/YYYY-MM/` when asked to, dump
    /// first and manifest last, so the copy is complete or invisible.
    async fn copy_monthly(
        &self,
        database: &str,
        manifest: &Manifest,
        mode: Monthly,
    ) -> Result<Option<String>, JobError> {
        if mode == Monthly::Skip {
            return Ok(None);
        }
        let month = manifest.started_at.format("%Y-%m").to_string();
        let already = layout::list_of_database(self.backups.as_ref(), Class::Monthly, database, Some(&month))
            .await?
            .into_iter()
            .any(|listed| {
                listed.is_complete()
                    && listed.id.starts_with(&format!("monthly/{month}/"))
                    && listed.manifest.as_ref().is_some_and(|found| found.database == database)
            });
        let copy = match mode {
            Monthly::Skip => false,
            Monthly::Force => true,
            Monthly::Auto => !already,
        };
        if !copy {
            return Ok(None);
        }
        let monthly_base = layout::monthly_base(database, manifest.started_at);
        let monthly_dump = layout::dump_key_for(&monthly_base, &manifest.encoding);
        let copied = match self
            .backups
            .copy(&manifest.dump, None, &monthly_dump, WriteMode::CreateOnly)
            .await
        {
            Ok(copied) => copied,
            // A rerun after a crash between the two writes: the copy is there.
            Err(StorageError::AlreadyExists { .. }) => self
                .backups
                .stat(&monthly_dump)
                .await?
                .ok_or_else(|| JobError::transient(anyhow!("{monthly_dump} vanished after being copied")))?,
            Err(error) => return Err(error.into()),
        };
        if copied.size != manifest.size_bytes {
            return Err(JobError::transient(anyhow!(
                "the monthly copy {monthly_dump} has {} bytes, the backup {}",
                copied.size,
                manifest.size_bytes
            )));
        }
        // The monthly manifest names the monthly dump: it must stay
        // restorable after retention deletes the daily one.
        if copied.crc32c.is_some() && copied.crc32c != manifest.dump_crc32c {
            return Err(JobError::transient(anyhow!(
                "the monthly copy {monthly_dump} has CRC32C {:?}, the backup {:?}",
                copied.crc32c,
                manifest.dump_crc32c
            )));
        }
        // The globals travel with the dump: the monthly backup must restore
        // with its roles after the daily one is gone.
        let globals = match &manifest.globals {
            Some(globals) => {
                let key = layout::globals_key_for(&monthly_base, manifest.encoding.is_encrypted());
                match self.backups.copy(&globals.key, None, &key, WriteMode::CreateOnly).await {
                    Ok(_) | Err(StorageError::AlreadyExists { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
                Some(StoredFile { key, ..globals.clone() })
            }
            None => None,
        };
        let monthly_manifest = Manifest {
            dump: monthly_dump,
            dump_crc32c: copied.crc32c.clone(),
            dump_md5: copied.md5.clone(),
            globals,
            ..manifest.clone()
        };
        match self
            .write_manifest(&layout::manifest_key(&monthly_base), &monthly_manifest)
            .await
        {
            Ok(_) | Err(StorageError::AlreadyExists { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        tracing::info!(monthly = %layout::id_of(&monthly_base), "kept as the month's backup");
        Ok(Some(layout::id_of(&monthly_base).to_owned()))
    }
}

/// Database names become object names: keep them to what needs no escaping.
fn validate_database_name(database: &str) -> Result<(), JobError> {
    if crate::config::is_object_name_safe(database) {
        Ok(())
    } else {
        Err(JobError::permanent(anyhow!(
            "database name {database:?} cannot be used in object names: use 1-63 letters, digits, '_' or '-'"
        )))
    }
}

/// `pg_dump --version` as a future any number of places can await (errors
/// are permanent: the program is missing or prints no version).
fn version_of(
    program: String,
) -> futures::future::Shared<futures::future::BoxFuture<'static, Result<(u32, String), String>>> {
    async move { pg::tool_version(&program).await.map_err(|error| error.to_string()) }
        .boxed()
        .shared()
}

/// An upload that failed because pg_dump failed is classified by pg_dump's
/// own message; storage failures keep their class, except a name collision.
fn dump_failure(error: StorageError) -> JobError {
    match &error {
        StorageError::Source { source, .. } if process::is_permanent_failure(&source.to_string()) => {
            JobError::Permanent(error.into())
        }
        // The dump's name carries its start time to the second, so another
        // key's backup of this database that started in the same second owns
        // the name. Never overwrite it: a retry starts later, under a new name.
        StorageError::AlreadyExists { .. } => JobError::Transient(error.into()),
        _ => error.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_failures_are_classified_by_what_happens_next() {
        let location = || "gs://keshless-backups".to_owned();
        let key = || "postgresql/daily/2026-11-26/app-20261126T020000Z.dump".to_owned();
        let pg_dump = |stderr: &str| StorageError::Source {
            location: location(),
            key: key(),
            source: std::io::Error::other(stderr.to_owned()),
        };
        let cases = [
            (
                "same-second name collision",
                StorageError::AlreadyExists {
                    location: location(),
                    key: key(),
                },
                true,
            ),
            (
                "pg_dump refused by permissions",
                pg_dump("pg_dump: error: permission denied for table users"),
                false,
            ),
            (
                "server restarted under pg_dump",
                pg_dump("FATAL:  terminating connection due to administrator command"),
                true,
            ),
        ];
        for (situation, error, transient) in cases {
            assert_eq!(dump_failure(error).is_transient(), transient, "{situation}");
        }
    }
}
