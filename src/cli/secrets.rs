//! `keshless-ops secrets`: check and re-key secrets backups. Both print names
//! and counts only, never values.

use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::restore_secrets::{names_of, object_for, open_from_env, read_backup, read_key, same_key, SecretsAccess};
use crate::crypto::{Envelope, EnvelopeCodec, EnvelopeError};
use crate::jobs::secrets_backup::{list_secrets_backups, MAXIMUM_ENVELOPE_BYTES};
use crate::storage::{BlobStoreExt, WriteMode};

/// Check and re-key secrets backups.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCmd {
    /// Decrypt a secrets backup in memory and print its secret names and count
    /// (never values). Needs BACKUP_STORE and SECRETS_ENCRYPTION_KEY.
    Verify {
        /// Weekly backup date (YYYY-MM-DD); default: secrets/latest.json.encrypted.
        #[arg(long, value_parser = super::parse_date_text)]
        date: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt every stored secrets backup (weekly and latest) from the key in
    /// SECRETS_ENCRYPTION_KEY to the key in another variable. Each object is
    /// decrypted, encrypted under the new key, checked to decrypt, then replaced
    /// atomically and read back. Objects already on the new key are skipped, so
    /// an interrupted run can simply be repeated.
    Rekey {
        /// Environment variable holding the new key (at least 32 characters).
        #[arg(long, value_name = "VAR")]
        new_key_env: String,
        /// Check every object decrypts and report what would be re-encrypted, writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl SecretsCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let command = match &self {
            SecretsCmd::Verify { .. } => "secrets verify",
            SecretsCmd::Rekey { .. } => "secrets rekey",
        };
        if let Err(code) = super::check_environment(command) {
            return Ok(code);
        }
        let access = match open_from_env().await? {
            Ok(access) => access,
            Err(code) => return Ok(code),
        };
        match self {
            SecretsCmd::Verify { date, json } => verify(&access, date.as_deref(), json).await,
            SecretsCmd::Rekey {
                new_key_env,
                dry_run,
                json,
            } => rekey(&access, &new_key_env, dry_run, json).await,
        }
    }
}

async fn verify(access: &SecretsAccess, date: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let object = object_for(date)?;
    let (contents, created_at) = read_backup(access, &object).await?;
    let (names, secret_manager) = names_of(&contents)?;
    if json {
        let mut report = serde_json::json!({
            "object": object,
            "store": access.store.location().to_string(),
            "created_at": created_at,
            "count": names.len(),
            "names": names,
        });
        if let Some(backup) = &secret_manager {
            report["secret_manager"] = serde_json::json!({"project": backup.project, "counts": backup.counts()});
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "ok: {}/{object} (created {created_at}) decrypts: {} secrets: {}",
            access.store.location(),
            names.len(),
            names.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What rekey did (or would do) to one object, and which key it is on now.
#[derive(Debug, Serialize)]
struct RekeyedObject {
    object: String,
    action: String,
    /// `old`, `new`, or a description when it could not be told.
    key_now: String,
    secrets: Option<usize>,
}

async fn rekey(access: &SecretsAccess, new_key_env: &str, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let new_key = match read_key(new_key_env) {
        Ok(key) => key,
        Err(problem) => {
            eprintln!("invalid configuration (1 problem):\n  - {problem}");
            return Ok(ExitCode::from(super::exit::CONFIG));
        }
    };
    if same_key(&access.key, &new_key) {
        anyhow::bail!("{new_key_env} holds the same key as SECRETS_ENCRYPTION_KEY: nothing to re-key");
    }
    let objects = list_secrets_backups(access.store.as_ref()).await?;
    if objects.is_empty() {
        anyhow::bail!("no secrets backups under secrets/ in {}", access.store.location());
    }
    let mut report = Vec::new();
    let mut failure = None;
    for (index, object) in objects.iter().enumerate() {
        match rekey_one(access, &new_key, object, dry_run).await {
            Ok(done) => report.push(done),
            Err(error) => {
                let key_now = probe(access, &new_key, object).await;
                report.push(RekeyedObject {
                    object: object.clone(),
                    action: format!("failed: {error:#}"),
                    key_now,
                    secrets: None,
                });
                for rest in &objects[index + 1..] {
                    report.push(RekeyedObject {
                        object: rest.clone(),
                        action: "not processed".into(),
                        key_now: "unchanged by this run".into(),
                        secrets: None,
                    });
                }
                failure = Some(error);
                break;
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "store": access.store.location().to_string(),
                "dry_run": dry_run,
                "ok": failure.is_none(),
                "objects": report,
            }))?
        );
    } else {
        for entry in &report {
            let count = entry
                .secrets
                .map(|count| format!(" ({count} secrets)"))
                .unwrap_or_default();
            println!(
                "{:<45} {}{count}; key now: {}",
                entry.object, entry.action, entry.key_now
            );
        }
    }
    if let Some(error) = failure {
        eprintln!(
            "error: rekey stopped: {error:#}\nEvery object listed above decrypts with the key shown; nothing was \
             left without a working key. Fix the problem and run the same command again: objects already on \
             the new key are skipped."
        );
        return Ok(ExitCode::FAILURE);
    }
    if !dry_run {
        eprintln!(
            "every secrets backup in {} now decrypts with the key in {new_key_env}: make it the worker's \
             SECRETS_ENCRYPTION_KEY. A versioned bucket keeps the replaced generations (old key) as noncurrent \
             versions: delete them if the old key is compromised.",
            access.store.location()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rekey_one(
    access: &SecretsAccess,
    new_key: &secrecy::SecretString,
    object: &str,
    dry_run: bool,
) -> anyhow::Result<RekeyedObject> {
    let codec = EnvelopeCodec::standard();
    let bytes = access.store.get_bytes(object, MAXIMUM_ENVELOPE_BYTES).await?;
    let envelope = Envelope::parse(&bytes, &codec.minimum_params())?;
    let count = |contents: &crate::crypto::Contents| names_of(contents).map(|(names, _)| names.len()).ok();
    let secrets = match codec.open_contents_in_background(&access.key, &bytes).await {
        Ok(secrets) => secrets,
        Err(EnvelopeError::WrongKey) => {
            return match codec.open_contents_in_background(new_key, &bytes).await {
                Ok(secrets) => Ok(RekeyedObject {
                    object: object.to_owned(),
                    action: "already on the new key, skipped".into(),
                    key_now: "new".into(),
                    secrets: count(&secrets),
                }),
                Err(error) => Err(anyhow::anyhow!(
                    "decrypts with neither key (SECRETS_ENCRYPTION_KEY: wrong key; new key: {error})"
                )),
            };
        }
        Err(error) => return Err(error.into()),
    };
    if dry_run {
        return Ok(RekeyedObject {
            object: object.to_owned(),
            action: "would re-encrypt".into(),
            key_now: "old".into(),
            secrets: count(&secrets),
        });
    }
    // The backup keeps the time it was taken, not the time it was re-keyed.
    let created_at = DateTime::parse_from_rfc3339(envelope.created_at())
        .map(|time| time.with_timezone(&Utc))
        .context("created_at")?;
    let sealed = codec.seal_contents_in_background(new_key, &secrets, created_at).await?;
    let check = codec.open_contents_in_background(new_key, &sealed).await?;
    anyhow::ensure!(
        check.same_contents(&secrets),
        "the re-encrypted envelope decrypts to other secrets; the object was not replaced"
    );
    // Overwrite replaces the object atomically: readers see the old envelope
    // or the new one, never neither.
    access
        .store
        .put_bytes(object, Bytes::from(sealed), WriteMode::Overwrite)
        .await?;
    let stored = access.store.get_bytes(object, MAXIMUM_ENVELOPE_BYTES).await?;
    let reread = codec
        .open_contents_in_background(new_key, &stored)
        .await
        .context("reading the replaced object back")?;
    anyhow::ensure!(
        reread.same_contents(&secrets),
        "the replaced object reads back with other secrets"
    );
    Ok(RekeyedObject {
        object: object.to_owned(),
        action: "re-encrypted".into(),
        key_now: "new".into(),
        secrets: count(&secrets),
    })
}

/// Which key an object decrypts with now, after a failure.
async fn probe(access: &SecretsAccess, new_key: &secrecy::SecretString, object: &str) -> String {
    let codec = EnvelopeCodec::standard();
    let bytes = match access.store.get_bytes(object, MAXIMUM_ENVELOPE_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => return format!("unknown (cannot read it: {error})"),
    };
    if codec.open_contents_in_background(&access.key, &bytes).await.is_ok() {
        "old".into()
    } else if codec.open_contents_in_background(new_key, &bytes).await.is_ok() {
        "new".into()
    } else {
        "neither (it did not decrypt before this run either)".into()
    }
}
