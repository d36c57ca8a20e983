//! The jobs of SPEC section 2, one file per job, all registered in
//! [`registry`]. Nothing here knows about Pub/Sub: the runtime hands each job
//! a [`crate::runtime::job::RunContext`] and its typed parameters.
//!
//! A message naming a job that is not registered here is dead-lettered as an
//! unknown job rather than acked as if it had run.

pub mod cleanup_old_backups;
pub mod documents_inventory;
pub mod dr_drill;
pub mod postgres_backup;
pub mod secrets_backup;
pub mod secrets_source;

use std::sync::Arc;

pub use cleanup_old_backups::CleanupOldBackups;
pub use postgres_backup::PostgresBackup;

use crate::clock::Clock;
use crate::config::Config;
use crate::runtime::job::Registry;
use crate::storage::BlobStore;

/// Every job this build can run, wired to the configuration and the backup
/// store (`BACKUP_STORE`).
pub fn registry(config: &Config, backups: Arc<dyn BlobStore>) -> Registry {
    registry_with_clock(config, backups, Clock::system())
}

/// [`registry`] with every job reading "now" from `clock` (the year simulation).
pub fn registry_with_clock(config: &Config, backups: Arc<dyn BlobStore>, clock: Clock) -> Registry {
    let mut drill = dr_drill::DrDrill::from_config(&config.drill(), Arc::clone(&backups));
    drill.clock = clock.clone();
    Registry::new()
        .with(PostgresBackup {
            backups: Arc::clone(&backups),
            database_url: config.database_url.clone(),
            databases: config.databases.clone(),
            pg_dump: crate::postgres::process::pg_dump_program(),
            encoding: config.dumps.encode_settings(),
            clock: clock.clone(),
        })
        .with(secrets_backup::SecretsBackup::from_config(config, Arc::clone(&backups)).with_clock(clock.clone()))
        .with(
            CleanupOldBackups::new(
                Arc::clone(&backups),
                crate::retention::Policy::from_config(&config.retention),
            )
            .with_clock(clock.clone()),
        )
        .with(
            documents_inventory::DocumentsInventory::new(
                Arc::clone(&backups),
                config.documents_store.clone(),
                config.storage_emulator_host.clone(),
            )
            .with_clock(clock),
        )
        .with(drill)
}

/// The registry as the worker builds it, for checking a message before it
/// is published (`keshless-ops publish`): parameter rules need no connection,
/// so inert settings stand in for everything except `databases`, the names
/// postgres-backup accepts.
pub async fn registry_for_checking(databases: &[String]) -> anyhow::Result<Registry> {
    let directory = tempfile::tempdir()?;
    let location = format!("file://{}", directory.path().display());
    let mut variables = vec![
        ("JOB_SECRET", "not-used-for-checking".to_owned()),
        (
            "SECRETS_ENCRYPTION_KEY",
            "not-used-for-checking-0123456789abcdef".to_owned(),
        ),
        ("DATABASE_URL", "postgres://localhost/postgres".to_owned()),
        ("BACKUP_STORE", location.clone()),
        ("DOCUMENTS_STORE", location.clone()),
        ("SECRETS_ENV_PREFIX", "NOT_USED_".to_owned()),
    ];
    if !databases.is_empty() {
        variables.push(("DATABASES", databases.join(",")));
    }
    let config = Config::from_vars(variables).map_err(anyhow::Error::msg)?;
    let store = Arc::new(crate::storage::FileStore::open(location.parse()?).await?);
    Ok(registry(&config, store))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn registered_job_names() {
        let config = crate::config::Config::from_vars([
            ("JOB_SECRET", "secret"),
            ("SECRETS_ENCRYPTION_KEY", "0123456789abcdef0123456789abcdef"),
            ("DATABASE_URL", "postgres://u@localhost/app"),
            ("GCS_BACKUPS_BUCKET", "keshless-backups"),
            ("GCS_DOCUMENTS_BUCKET", "keshless-documents"),
            ("SECRETS_ENV_PREFIX", "APP_"),
        ])
        .expect("config");
        let directory = tempfile::tempdir().unwrap();
        let location = format!("file://{}", directory.path().display()).parse().unwrap();
        let store = std::sync::Arc::new(crate::storage::FileStore::open(location).await.unwrap());
        // Grows with each job's issue; every name must also be in the schedule.
        let names = super::registry(&config, store).names();
        assert_eq!(
            names,
            [
                "cleanup-old-backups",
                "documents-inventory",
                "dr-drill",
                "postgres-backup",
                "secrets-backup"
            ]
        );
        for name in names {
            assert!(crate::schedule::scheduled(name).is_some(), "{name} is not scheduled");
        }
    }
}
