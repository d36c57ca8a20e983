//! Restoring a PostgreSQL backup: stream it into `pg_restore`, then prove
//! the result: SHA-256 of what was streamed against the manifest, and exact
//! row counts per table against the counts taken under the backup's snapshot.

use anyhow::{anyhow, bail, Context as _};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::DatabaseUrl;
use crate::postgres::layout::{self, Class, Manifest};
use crate::postgres::{self as pg, process, TableCount};
use crate::storage::BlobStore;

/// Which backup to restore.
#[derive(Debug, Clone)]
pub enum Selection {
    Latest,
    /// The newest complete daily backup of that day.
    Date(chrono::NaiveDate),
    Id(String),
}

/// What a restore found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub bytes: u64,
    pub sha256_matches: bool,
    /// Tables whose restored row count differs from the manifest (or that are missing).
    pub mismatches: Vec<Mismatch>,
    pub tables: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Mismatch {
    pub table: String,
    /// `None`: the table is not in the backup.
    pub expected: Option<i64>,
    /// `None`: the table is missing from the restored database.
    pub restored: Option<i64>,
}

/// Finds the manifest of the backup a selection names.
pub async fn select(store: &dyn BlobStore, selection: &Selection) -> anyhow::Result<(String, Manifest)> {
    let complete = |listed: &layout::Listed| listed.is_complete();
    match selection {
        Selection::Id(id) => {
            let base = layout::base_of(id);
            let manifest = layout::read_manifest(store, &layout::manifest_key(&base))
                .await
                .map_err(|problem| anyhow!("{problem} (is {id:?} a complete backup? see `backups list postgres`)"))?;
            Ok((layout::id_of(&base).to_owned(), manifest))
        }
        Selection::Latest | Selection::Date(_) => {
            let listed = layout::list(store, Some(Class::Daily)).await?;
            let found = listed.into_iter().filter(complete).find(|listed| match selection {
                Selection::Date(date) => listed.id.starts_with(&format!("daily/{}/", date.format("%Y-%m-%d"))),
                _ => true,
            });
            match found {
                Some(listed) => Ok((listed.id, listed.manifest.expect("complete backups have a manifest"))),
                None => match selection {
                    Selection::Date(date) => bail!("no complete daily backup for {date} (see `backups list postgres`)"),
                    _ => bail!("no complete daily backup in the store (see `backups list postgres`)"),
                },
            }
        }
    }
}

/// Restores `manifest`'s dump into `target` and verifies it.
pub async fn restore(
    store: &dyn BlobStore,
    id: &str,
    manifest: &Manifest,
    target: &DatabaseUrl,
    create_database: bool,
    clean: bool,
) -> anyhow::Result<RestoreReport> {
    let target_config = target.postgres_config();
    let database = target
        .database_name()
        .ok_or_else(|| anyhow!("--target-url names no database"))?
        .to_owned();
    let dump = layout::dump_key(&layout::base_of(id));
    check_before_restoring(store, id, &dump, manifest).await?;
    if create_database {
        let mut admin = target_config.clone();
        admin.dbname("postgres");
        let client = pg::connect(&admin).await.map_err(|error| anyhow!("{error}"))?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", pg::quote_identifier(&database)))
            .await
            .with_context(|| format!("cannot create database {database:?}"))?;
    }
    let client = pg::connect(target_config).await.map_err(|error| anyhow!("{error}"))?;
    let existing = pg::table_counts(&client).await.map_err(|error| anyhow!("{error}"))?;
    if !existing.is_empty() && !clean {
        bail!(
            "target database {database:?} is not empty ({} tables, e.g. {}.{}); restore into an empty database \
             or pass --clean to drop and replace the backup's objects",
            existing.len(),
            existing[0].schema,
            existing[0].table
        );
    }

    let restore = process::spawn_restore(
        &process::pg_restore_program(),
        &pg::libpq_environment(target_config),
        &database,
        clean,
    )?;
    let mut restore = restore;
    let mut stdin = restore.child.stdin.take().expect("stdin is piped");
    let mut download = store.get(&dump, None).await?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut write_error = None;
    while let Some(chunk) = download.try_next().await.context("reading the dump from the store")? {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        if write_error.is_none() {
            if let Err(error) = stdin.write_all(&chunk).await {
                // pg_restore stopped reading (its own error explains why);
                // keep hashing so a corrupt dump is named as such.
                write_error = Some(error);
            }
        }
    }
    drop(stdin);
    let restored = restore.finish().await;
    let sha256 = hex::encode(hasher.finalize());
    let sha256_matches = sha256 == manifest.sha256 && bytes == manifest.size_bytes;
    if !sha256_matches {
        let also = match &restored {
            Err(error) => format!(" (pg_restore also failed and rolled back: the target is unchanged; {error})"),
            Ok(()) => " — the target database WAS modified by this restore: do not use it".to_owned(),
        };
        bail!(
            "{id}: checksum mismatch: the manifest says {} bytes with SHA-256 {}, the stored dump has {bytes} bytes \
             with SHA-256 {sha256}; do not trust this backup{also}",
            manifest.size_bytes,
            manifest.sha256
        );
    }
    restored.context("pg_restore failed; the target is unchanged (single transaction)")?;
    if let Some(error) = write_error {
        bail!("pg_restore stopped reading its input: {error}");
    }

    let restored = pg::table_counts(&client).await.map_err(|error| anyhow!("{error}"))?;
    let mismatches = compare(&manifest.tables, &restored);
    Ok(RestoreReport {
        id: id.to_owned(),
        bytes,
        sha256_matches,
        mismatches,
        tables: manifest.tables.len(),
    })
}

/// Proves the dump at rest before the target is touched (pg_restore commits
/// when its input ends, before a streamed checksum could stop it): size, then
/// the store's own checksum when the manifest recorded one, else a full
/// SHA-256 pass.
async fn check_before_restoring(
    store: &dyn BlobStore,
    id: &str,
    dump: &str,
    manifest: &Manifest,
) -> anyhow::Result<()> {
    let stored = store
        .stat(dump)
        .await?
        .ok_or_else(|| anyhow!("{id}: the dump {dump} is missing; nothing was restored"))?;
    if stored.size != manifest.size_bytes {
        bail!(
            "{id}: checksum mismatch: the manifest says {} bytes, the stored dump has {}; nothing was restored",
            manifest.size_bytes,
            stored.size
        );
    }
    match (&manifest.dump_crc32c, &stored.crc32c) {
        (Some(expected), Some(found)) if expected != found => bail!(
            "{id}: checksum mismatch: the manifest says CRC32C {expected}, the stored dump has {found}; \
             nothing was restored"
        ),
        (Some(_), Some(_)) => Ok(()),
        _ => layout::verify(store, id)
            .await
            .map(|_| ())
            .map_err(|error| anyhow!("{error:#}; nothing was restored")),
    }
}

/// Tables whose restored count differs from the manifest's, and tables the
/// target has that the backup does not (left over from before a `--clean`).
pub fn compare(expected: &[TableCount], restored: &[TableCount]) -> Vec<Mismatch> {
    let same = |left: &TableCount, right: &TableCount| left.schema == right.schema && left.table == right.table;
    let mut mismatches: Vec<Mismatch> = expected
        .iter()
        .filter_map(|table| {
            let found = restored
                .iter()
                .find(|candidate| same(candidate, table))
                .map(|candidate| candidate.rows);
            (found != Some(table.rows)).then(|| Mismatch {
                table: format!("{}.{}", table.schema, table.table),
                expected: Some(table.rows),
                restored: found,
            })
        })
        .collect();
    mismatches.extend(
        restored
            .iter()
            .filter(|table| !expected.iter().any(|candidate| same(candidate, table)))
            .map(|table| Mismatch {
                table: format!("{}.{}", table.schema, table.table),
                expected: None,
                restored: Some(table.rows),
            }),
    );
    mismatches
}
