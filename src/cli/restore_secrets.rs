//! `keshless-ops restore secrets`: decrypt a secrets backup into a file
//! created with mode 0600, or to standard output only when asked.
//!
//! Needs only `BACKUP_STORE` (or `GCS_BACKUPS_BUCKET`), `STORAGE_EMULATOR_HOST`
//! when an emulator is used, and `SECRETS_ENCRYPTION_KEY`: an operator
//! restoring at 3 a.m. may have nothing else. The same access serves
//! `secrets verify` and `secrets rekey`.
//!
//! `--to-secret-manager` puts a Secret Manager backup back into Secret
//! Manager (`crate::secret_manager::restore`) and prints one line per secret.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::NaiveDate;
use secrecy::{ExposeSecret, SecretString};

use crate::config::MINIMUM_ENCRYPTION_KEY_CHARACTERS;
use crate::crypto::Contents;
use crate::jobs::secrets_backup::{weekly_key, LATEST_KEY};
use crate::secret_manager::restore::{self as secret_manager_restore, RestoreAction, RestoreOptions};
use crate::secret_manager::{ClientSettings, SecretManagerBackup, SecretManagerClient};
use crate::storage::BlobStore;

/// How restored secrets are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecretsFormat {
    /// `NAME=value` lines, shell-quoted where needed (`set -a; . ./FILE` reads them).
    Env,
    /// One JSON object of names to values.
    Json,
}

/// The store and key the secrets commands work with.
pub(crate) struct SecretsAccess {
    pub store: Arc<dyn BlobStore>,
    pub key: SecretString,
}

/// Reads `BACKUP_STORE`/`GCS_BACKUPS_BUCKET`, `STORAGE_EMULATOR_HOST` and
/// `SECRETS_ENCRYPTION_KEY`; on a problem prints every one and gives exit code 78.
pub(crate) async fn open_from_env() -> anyhow::Result<Result<SecretsAccess, ExitCode>> {
    let mut problems = Vec::new();
    let variable = super::variable;
    let location = super::backup_store_location()
        .map_err(|problem| problems.push(problem))
        .ok();
    let key = read_key("SECRETS_ENCRYPTION_KEY")
        .map_err(|problem| problems.push(problem))
        .ok();
    let (Some(location), Some(key), true) = (location, key, problems.is_empty()) else {
        eprintln!(
            "invalid configuration ({} problem{}):\n  - {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  - ")
        );
        return Ok(Err(ExitCode::from(super::exit::CONFIG)));
    };
    let store = crate::storage::open(&location, variable("STORAGE_EMULATOR_HOST").as_deref())
        .await
        .with_context(|| format!("opening the backup store {location}"))?;
    Ok(Ok(SecretsAccess { store, key }))
}

/// A passphrase from the environment variable `name`, checked for length.
pub(crate) fn read_key(name: &str) -> Result<SecretString, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Err(format!(
            "{name} is not set: the passphrase the secrets backups are encrypted with"
        )),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
        Ok(value) if value.trim().is_empty() => Err(format!("{name} is empty")),
        Ok(value) if value.trim().chars().count() < MINIMUM_ENCRYPTION_KEY_CHARACTERS => Err(format!(
            "{name} is too short: it must be at least {MINIMUM_ENCRYPTION_KEY_CHARACTERS} characters long"
        )),
        // Trimmed as the worker's configuration trims it, so both derive the same key.
        Ok(value) => Ok(SecretString::from(value.trim().to_owned())),
    }
}

/// The object a `--date`/`--latest` choice names (default: latest).
pub(crate) fn object_for(date: Option<&str>) -> anyhow::Result<String> {
    match date {
        None => Ok(LATEST_KEY.to_owned()),
        Some(text) => {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| anyhow::anyhow!("--date {text:?} is not a date in the form YYYY-MM-DD"))?;
            Ok(weekly_key(date))
        }
    }
}

/// Names in a backup (environment names, or Secret Manager resource names)
/// and, for a Secret Manager backup, its parsed document.
pub(crate) fn names_of(contents: &Contents) -> anyhow::Result<(Vec<String>, Option<SecretManagerBackup>)> {
    match contents {
        Contents::Map(secrets) => Ok((secrets.names(), None)),
        Contents::SecretManager(bytes) => {
            let backup = SecretManagerBackup::from_json(bytes)?;
            Ok((backup.names(), Some(backup)))
        }
    }
}

/// Reads and decrypts one backup; returns its contents and its `created_at`.
pub(crate) async fn read_backup(access: &SecretsAccess, object: &str) -> anyhow::Result<(Contents, String)> {
    crate::jobs::secrets_backup::read_backup(access.store.as_ref(), object, &access.key).await
}

/// Runs `restore secrets`.
pub async fn run(
    date: Option<String>,
    latest: bool,
    out: Option<PathBuf>,
    format: SecretsFormat,
    stdout: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    debug_assert!(!(latest && date.is_some()), "clap forbids --date with --latest");
    let access = match open_from_env().await? {
        Ok(access) => access,
        Err(code) => return Ok(code),
    };
    let object = object_for(date.as_deref())?;
    let (contents, created_at) = read_backup(&access, &object).await?;
    let (names, _) = names_of(&contents)?;
    let text = match (&contents, format) {
        (Contents::Map(secrets), SecretsFormat::Env) => secrets.to_env()?,
        (Contents::Map(secrets), SecretsFormat::Json) => secrets.to_pretty_json(),
        // The whole document (metadata, versions, base64 payloads), for
        // reading by hand; `--to-secret-manager` is the way back in.
        (Contents::SecretManager(bytes), SecretsFormat::Json) => {
            let document: serde_json::Value = serde_json::from_slice(bytes).context("the decrypted document")?;
            let mut text = zeroize::Zeroizing::new(serde_json::to_string_pretty(&document)?);
            text.push('\n');
            text
        }
        (Contents::SecretManager(_), SecretsFormat::Env) => anyhow::bail!(
            "{object} is a Secret Manager backup (secrets with metadata and versions): put it back with \
             `restore secrets --to-secret-manager`, or read it with `--format json`"
        ),
    };
    let destination = match (&out, stdout) {
        (Some(path), _) => {
            write_private_file(path, text.as_bytes(), force)?;
            path.display().to_string()
        }
        (None, true) => {
            let mut output = std::io::stdout().lock();
            output
                .write_all(text.as_bytes())
                .context("writing to standard output")?;
            output.flush().context("writing to standard output")?;
            "standard output".to_owned()
        }
        (None, false) => anyhow::bail!("give --out FILE, or --stdout to print the values"),
    };
    tracing::info!(object = %object, secrets.count = names.len(), "secrets restored");
    // The summary goes to stderr so that `--stdout` output stays exactly the secrets.
    eprintln!(
        "restored {} secrets from {}/{object} (created {created_at}) to {destination}: {}",
        names.len(),
        access.store.location(),
        names.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// A Secret Manager client as the environment says: `SECRET_MANAGER_EMULATOR_HOST`
/// for a fake, `SECRET_MANAGER_REQUESTS_PER_MINUTE` for the pace (default 600).
pub(crate) async fn secret_manager_client_from_env() -> anyhow::Result<SecretManagerClient> {
    let requests_per_minute = match super::variable("SECRET_MANAGER_REQUESTS_PER_MINUTE") {
        None => crate::secret_manager::client::DEFAULT_REQUESTS_PER_MINUTE,
        Some(text) => match text.parse::<u32>() {
            Ok(value) if (1..=100_000).contains(&value) => value,
            _ => anyhow::bail!(
                "SECRET_MANAGER_REQUESTS_PER_MINUTE={text:?} is invalid: expected a whole number from 1 to 100000"
            ),
        },
    };
    Ok(SecretManagerClient::connect(ClientSettings {
        emulator_host: super::variable(crate::secret_manager::EMULATOR_HOST_VARIABLE),
        requests_per_minute,
        ..ClientSettings::default()
    })
    .await?)
}

/// Runs `restore secrets --to-secret-manager`.
pub async fn run_to_secret_manager(
    date: Option<String>,
    project: Option<String>,
    only: Vec<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let access = match open_from_env().await? {
        Ok(access) => access,
        Err(code) => return Ok(code),
    };
    let object = object_for(date.as_deref())?;
    let (contents, created_at) = read_backup(&access, &object).await?;
    let (_, backup) = names_of(&contents)?;
    let Some(backup) = backup else {
        anyhow::bail!(
            "{object} holds environment or file secrets (names and values), not a Secret Manager backup: \
             restore it with --out FILE"
        );
    };
    let environment_project = super::variable("GOOGLE_CLOUD_PROJECT");
    let target =
        secret_manager_restore::choose_project(&backup.project, project.as_deref(), environment_project.as_deref())?;
    let client = secret_manager_client_from_env().await?;
    let options = RestoreOptions {
        project: target.clone(),
        only,
        dry_run,
        now: chrono::Utc::now(),
        id_prefix: String::new(),
    };
    let report = secret_manager_restore::restore(&client, &backup, &options).await?;
    let failed = report.iter().filter(|row| row.action == RestoreAction::Failed).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "object": object,
                "created_at": created_at,
                "backup_project": backup.project,
                "project": target,
                "dry_run": dry_run,
                "ok": failed == 0,
                "secrets": report,
            }))?
        );
    } else {
        let width = report.iter().map(|row| row.secret.len()).max().unwrap_or(6).max(6);
        println!("{:<width$}  {:<16} {:>8}", "secret", "action", "versions");
        for row in &report {
            println!(
                "{:<width$}  {:<16} {:>8}{}",
                row.secret,
                row.action.as_str(),
                row.versions,
                row.detail
                    .as_ref()
                    .map(|detail| format!("  ({detail})"))
                    .unwrap_or_default()
            );
        }
        eprintln!(
            "{} {} secrets from {}/{object} (taken {}) into project {target}{}",
            if dry_run { "would restore" } else { "restored" },
            report.len(),
            access.store.location(),
            backup.taken_at,
            if failed > 0 {
                format!("; {failed} FAILED")
            } else {
                String::new()
            }
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes `contents` to a new file with mode 0600. Without `force` an existing
/// file is refused; with it, a 0600 temporary file beside it is renamed over it,
/// so the old file is replaced whole or not at all.
fn write_private_file(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    let create = |target: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
    };
    let write = |target: &Path| -> anyhow::Result<()> {
        let mut file = create(target).map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "{} already exists; refusing to overwrite it (use --force to replace it)",
                    target.display()
                )
            } else {
                anyhow::Error::new(error).context(format!("creating {}", target.display()))
            }
        })?;
        let result = file
            .write_all(contents)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", target.display()));
        if result.is_err() {
            let _ = std::fs::remove_file(target);
        }
        result
    };
    if !force {
        return write(path);
    }
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    write(&temporary)?;
    std::fs::rename(&temporary, path).map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        anyhow::Error::new(error).context(format!("replacing {}", path.display()))
    })
}

/// Compares two passphrases without leaking timing (they are never equal in practice).
pub(crate) fn same_key(left: &SecretString, right: &SecretString) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(left.expose_secret().as_bytes().ct_eq(right.expose_secret().as_bytes()))
}
