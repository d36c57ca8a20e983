//! Putting a Secret Manager backup back (`restore secrets --to-secret-manager`).
//!
//! Per secret, in the backup's order:
//! - its `expireTime` has passed: skipped and reported (`skipped-expired`);
//! - it is missing: created with its metadata (replication, labels,
//!   annotations, rotation, topics, expiry, version-destroy TTL, tags), then
//!   every version re-created oldest first so the numbers match the backup's:
//!   ENABLED with its payload, DISABLED and DESTROYED ones (whose payloads were
//!   never readable) with a placeholder payload that is disabled or destroyed
//!   at once; then the aliases are pointed at the same numbers (`created`);
//! - it exists and its newest ENABLED payload equals the backup's: nothing
//!   (`unchanged`), so a second run changes nothing;
//! - it exists with another current payload: the backup's ENABLED versions
//!   are added oldest first and aliases re-pointed to the new numbers
//!   (`versions added`).
//!
//! Secrets are restored into the target project: names (and topics in the
//! backup's project) are rewritten from the backup's project to it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::client::{SecretBytes, SecretManagerClient, SecretManagerError};
use super::document::{parent_of, BackedUpSecret, SecretManagerBackup, VersionState};
use super::read::version_number;
use google_cloud_secretmanager_v1::model::secret_version::State;
use google_cloud_secretmanager_v1::model::Secret;

/// What a version that was not ENABLED holds after a restore: its real
/// payload was never readable, and the version is disabled or destroyed at
/// once, so this is only seen by someone who enables it by hand.
pub const PLACEHOLDER_PAYLOAD: &[u8] =
    b"keshless-ops restore: placeholder; this version was not ENABLED when it was backed up, so its payload was not kept";

/// What happened to one secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreAction {
    Created,
    VersionsAdded,
    Unchanged,
    SkippedExpired,
    Failed,
}

impl RestoreAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreAction::Created => "created",
            RestoreAction::VersionsAdded => "versions added",
            RestoreAction::Unchanged => "unchanged",
            RestoreAction::SkippedExpired => "skipped-expired",
            RestoreAction::Failed => "failed",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoredSecret {
    /// The secret's name in the target project.
    pub secret: String,
    pub action: RestoreAction,
    /// Versions written (would be written, with `--dry-run`).
    pub versions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The project the secrets go into.
    pub project: String,
    /// Secret ids (or full names) to restore; empty = all.
    pub only: Vec<String>,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// Put before every secret id in the target (the full drill's
    /// `keshless-drill-<date>-<random>-`, so its scratch secrets are
    /// recognisable and never collide with real ones); empty: the backup's ids.
    pub id_prefix: String,
}

/// Why the restore could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestorePlanError {
    #[error(
        "--only names {} that {} not in the backup; the backup holds: {}",
        .missing.join(", "),
        if .missing.len() == 1 { "is" } else { "are" },
        .available.join(", ")
    )]
    UnknownSecrets {
        missing: Vec<String>,
        available: Vec<String>,
    },
}

/// The backup's secrets `--only` selects, in order.
pub fn select<'a>(
    backup: &'a SecretManagerBackup,
    only: &[String],
) -> Result<Vec<&'a BackedUpSecret>, RestorePlanError> {
    if only.is_empty() {
        return Ok(backup.secrets.iter().collect());
    }
    let matches = |secret: &BackedUpSecret, wanted: &str| secret.name == wanted || secret.id() == wanted;
    let missing: Vec<String> = only
        .iter()
        .filter(|wanted| !backup.secrets.iter().any(|secret| matches(secret, wanted)))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(RestorePlanError::UnknownSecrets {
            missing,
            available: backup.secrets.iter().map(|secret| secret.id().to_owned()).collect(),
        });
    }
    Ok(backup
        .secrets
        .iter()
        .filter(|secret| only.iter().any(|wanted| matches(secret, wanted)))
        .collect())
}

/// `projects/FROM/...` → `projects/TO/...`.
pub fn retarget(name: &str, from: &str, to: &str) -> String {
    match name.strip_prefix(&format!("projects/{from}/")) {
        Some(rest) => format!("projects/{to}/{rest}"),
        None => name.to_owned(),
    }
}

/// `projects/ANY/REST` → `projects/TO/REST`, for the name of a backed-up
/// secret. Its project segment is the source project, but as an id or as
/// its number: Secret Manager names what it returns `projects/NUMBER/…`
/// whatever the request said. So the segment is replaced whatever it holds;
/// matching it against the project id would leave a numbered name in the
/// source project and write there.
pub fn moved_to_project(name: &str, to: &str) -> String {
    match crate::secret_manager::document::project_segment(name) {
        Some((_, rest)) => format!("projects/{to}/{rest}"),
        None => name.to_owned(),
    }
}

/// A backed-up secret's name in the target: `projects/FROM/[locations/L/]secrets/ID`
/// (FROM the source project's id or number) → `projects/TO/[locations/L/]secrets/PREFIXID`.
pub fn target_name(name: &str, to: &str, id_prefix: &str) -> String {
    let moved = moved_to_project(name, to);
    if id_prefix.is_empty() {
        return moved;
    }
    match moved.rsplit_once("/secrets/") {
        Some((parent, id)) => format!("{parent}/secrets/{id_prefix}{id}"),
        None => moved,
    }
}

/// The project a restore writes to: the backup's, unless `--project` names
/// another; GOOGLE_CLOUD_PROJECT naming another project without `--project`
/// is refused rather than silently ignored or followed.
pub fn choose_project(
    backup_project: &str,
    requested: Option<&str>,
    environment: Option<&str>,
) -> anyhow::Result<String> {
    match (requested, environment) {
        (Some(requested), _) => Ok(requested.to_owned()),
        (None, Some(environment)) if environment != backup_project => anyhow::bail!(
            "the backup is of project {backup_project} but GOOGLE_CLOUD_PROJECT is {environment}: pass \
             --project {environment} to restore into it (or --project {backup_project})"
        ),
        (None, _) => Ok(backup_project.to_owned()),
    }
}

/// Restores the selected secrets; one failed secret does not stop the others.
pub async fn restore(
    client: &SecretManagerClient,
    backup: &SecretManagerBackup,
    options: &RestoreOptions,
) -> Result<Vec<RestoredSecret>, RestorePlanError> {
    let selected = select(backup, &options.only)?;
    let mut report = Vec::with_capacity(selected.len());
    for secret in selected {
        let target = target_name(&secret.name, &options.project, &options.id_prefix);
        let row = match restore_one(client, backup, secret, &target, options).await {
            Ok(row) => row,
            Err(error) => RestoredSecret {
                secret: target.clone(),
                action: RestoreAction::Failed,
                versions: 0,
                detail: Some(error.to_string()),
            },
        };
        tracing::info!(secret = %row.secret, action = row.action.as_str(), versions = row.versions, "secret restored");
        report.push(row);
    }
    Ok(report)
}

async fn restore_one(
    client: &SecretManagerClient,
    backup: &SecretManagerBackup,
    secret: &BackedUpSecret,
    target: &str,
    options: &RestoreOptions,
) -> Result<RestoredSecret, SecretManagerError> {
    let row = |action, versions, detail: Option<String>| RestoredSecret {
        secret: target.to_owned(),
        action,
        versions,
        detail,
    };
    if let Some(expired) = secret.expire_time().filter(|time| *time <= options.now) {
        return Ok(row(
            RestoreAction::SkippedExpired,
            0,
            Some(format!("expired at {}", expired.to_rfc3339())),
        ));
    }
    match client.get_secret(target).await? {
        None => create_with_versions(client, backup, secret, target, options).await,
        Some(_) => {
            let Some(newest) = secret.newest_enabled() else {
                return Ok(row(
                    RestoreAction::Unchanged,
                    0,
                    Some("no ENABLED version in the backup".into()),
                ));
            };
            let current = newest_enabled_payload(client, target).await?;
            if current.as_ref() == newest.payload.as_ref() {
                return Ok(row(RestoreAction::Unchanged, 0, None));
            }
            let enabled: Vec<_> = secret
                .versions
                .iter()
                .filter(|version| version.state == VersionState::Enabled)
                .collect();
            if options.dry_run {
                return Ok(row(RestoreAction::VersionsAdded, enabled.len(), None));
            }
            let mut numbers = BTreeMap::new();
            for version in enabled {
                let payload = version
                    .payload
                    .as_ref()
                    .expect("ENABLED versions carry a payload (checked on read)");
                let added = client.add_version(target, payload).await?;
                numbers.insert(version.version, version_number(&added.name));
            }
            repoint_aliases(client, secret, target, &numbers).await?;
            Ok(row(RestoreAction::VersionsAdded, numbers.len(), None))
        }
    }
}

async fn create_with_versions(
    client: &SecretManagerClient,
    backup: &SecretManagerBackup,
    secret: &BackedUpSecret,
    target: &str,
    options: &RestoreOptions,
) -> Result<RestoredSecret, SecretManagerError> {
    let row = |versions, detail| RestoredSecret {
        secret: target.to_owned(),
        action: RestoreAction::Created,
        versions,
        detail,
    };
    if options.dry_run {
        return Ok(row(secret.versions.len(), None));
    }
    let parent = parent_of(target).expect("a secret name has a parent (checked on read)");
    let mut metadata = metadata_for_create(&secret.metadata, &backup.project, &options.project, options.now);
    // With a version-destroy TTL, destroying only disables until the TTL
    // passes: re-create the DESTROYED versions first, then set the TTL.
    let has_destroyed = secret
        .versions
        .iter()
        .any(|version| version.state == VersionState::Destroyed);
    let destroy_ttl = if has_destroyed {
        metadata
            .as_object_mut()
            .and_then(|object| object.remove("versionDestroyTtl"))
    } else {
        None
    };
    let created: Secret = serde_json::from_value(metadata).map_err(|error| SecretManagerError::Transport {
        operation: "create",
        resource: target.to_owned(),
        message: format!("the backed-up metadata is not a Secret resource: {error}"),
        retryable: false,
    })?;
    // The target's id: the backup's, or with the full drill's prefix.
    let id = target.rsplit_once("/secrets/").map_or(secret.id(), |(_, id)| id);
    client.create_secret(parent, id, created).await?;
    let placeholder = SecretBytes::new(PLACEHOLDER_PAYLOAD.to_vec());
    let mut numbers = BTreeMap::new();
    let mut renumbered = false;
    for version in &secret.versions {
        let payload = version.payload.as_ref().unwrap_or(&placeholder);
        let added = client.add_version(target, payload).await?;
        match version.state {
            VersionState::Enabled => {}
            VersionState::Disabled => {
                client.disable_version(&added.name).await?;
            }
            VersionState::Destroyed => {
                client.destroy_version(&added.name).await?;
            }
        }
        let number = version_number(&added.name);
        renumbered |= number != version.version;
        numbers.insert(version.version, number);
    }
    repoint_aliases(client, secret, target, &numbers).await?;
    if let Some(ttl) = destroy_ttl {
        let update: Secret = serde_json::from_value(serde_json::json!({"name": target, "versionDestroyTtl": ttl}))
            .map_err(|error| SecretManagerError::Transport {
                operation: "update",
                resource: target.to_owned(),
                message: format!("the backed-up versionDestroyTtl is not a duration: {error}"),
                retryable: false,
            })?;
        client.update_secret(update, ["version_destroy_ttl"]).await?;
    }
    Ok(row(
        numbers.len(),
        renumbered.then(|| "version numbers differ from the backup's (the secret had versions before)".into()),
    ))
}

/// Points the backup's aliases at the versions that now hold the same payloads.
async fn repoint_aliases(
    client: &SecretManagerClient,
    secret: &BackedUpSecret,
    target: &str,
    numbers: &BTreeMap<u64, u64>,
) -> Result<(), SecretManagerError> {
    let aliases: HashMap<String, i64> = secret
        .aliases()
        .into_iter()
        .filter_map(|(alias, old)| Some((alias, i64::try_from(*numbers.get(&old)?).ok()?)))
        .collect();
    if aliases.is_empty() {
        return Ok(());
    }
    client.set_aliases(target, aliases).await?;
    Ok(())
}

/// The payload of the newest ENABLED version of an existing secret.
async fn newest_enabled_payload(
    client: &SecretManagerClient,
    secret: &str,
) -> Result<Option<SecretBytes>, SecretManagerError> {
    let versions = client.list_versions(secret).await?;
    let newest = versions
        .iter()
        .filter(|version| version.state == State::Enabled)
        .max_by_key(|version| version_number(&version.name));
    match newest {
        Some(version) => Ok(Some(client.access(&version.name).await?)),
        None => Ok(None),
    }
}

/// The backed-up metadata as a create request: output-only fields and
/// aliases (set once the versions exist) removed, the project rewritten, a
/// rotation time in the past moved to the next one in the future (the API
/// refuses a past one).
pub fn metadata_for_create(
    metadata: &serde_json::Value,
    from_project: &str,
    to_project: &str,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let mut metadata = metadata.clone();
    let Some(object) = metadata.as_object_mut() else {
        return metadata;
    };
    for output_only in ["name", "createTime", "etag", "versionAliases", "policyMember"] {
        object.remove(output_only);
    }
    if let Some(topics) = object.get_mut("topics").and_then(|topics| topics.as_array_mut()) {
        for topic in topics {
            if let Some(name) = topic.get("name").and_then(|name| name.as_str()).map(str::to_owned) {
                topic["name"] = serde_json::Value::String(retarget(&name, from_project, to_project));
            }
        }
    }
    if let Some(rotation) = object.get_mut("rotation").and_then(|rotation| rotation.as_object_mut()) {
        let next = rotation
            .get("nextRotationTime")
            .and_then(|time| time.as_str())
            .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
            .map(|time| time.with_timezone(&Utc));
        let period = rotation
            .get("rotationPeriod")
            .and_then(|period| period.as_str())
            .and_then(|period| period.strip_suffix('s'))
            .and_then(|seconds| seconds.parse::<f64>().ok())
            .filter(|seconds| *seconds >= 3600.0)
            .map(|seconds| chrono::Duration::seconds(seconds as i64));
        if let Some(mut next) = next.filter(|next| *next <= now) {
            let step = period.unwrap_or_else(|| chrono::Duration::hours(1));
            while next <= now {
                next += step;
            }
            rotation.insert(
                "nextRotationTime".into(),
                serde_json::Value::String(next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
    }
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_target_project_must_be_explicit_when_it_differs() {
        assert_eq!(choose_project("prod", None, None).unwrap(), "prod");
        assert_eq!(choose_project("prod", None, Some("prod")).unwrap(), "prod");
        assert_eq!(
            choose_project("prod", Some("recovery"), Some("other")).unwrap(),
            "recovery"
        );
        let error = choose_project("prod", None, Some("recovery")).unwrap_err().to_string();
        assert!(error.contains("--project recovery"), "{error}");
    }

    #[test]
    fn create_metadata_drops_output_fields_and_moves_rotation() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let metadata = serde_json::json!({
            "name": "projects/old/secrets/s", "etag": "\"1\"", "createTime": "2026-01-01T00:00:00Z",
            "labels": {"backup": "true"}, "versionAliases": {"current": "2"},
            "topics": [{"name": "projects/old/topics/rotations"}, {"name": "projects/shared/topics/t"}],
            "rotation": {"nextRotationTime": "2026-11-29T00:00:00Z", "rotationPeriod": "86400s"},
        });
        let create = metadata_for_create(&metadata, "old", "new", now);
        assert_eq!(
            create,
            serde_json::json!({
                "labels": {"backup": "true"},
                "topics": [{"name": "projects/new/topics/rotations"}, {"name": "projects/shared/topics/t"}],
                "rotation": {"nextRotationTime": "2026-12-02T00:00:00Z", "rotationPeriod": "86400s"},
            })
        );
    }

    #[test]
    fn retargeting_names() {
        assert_eq!(retarget("projects/a/secrets/s", "a", "b"), "projects/b/secrets/s");
        assert_eq!(
            retarget("projects/a/locations/l/secrets/s", "a", "b"),
            "projects/b/locations/l/secrets/s"
        );
        assert_eq!(retarget("projects/ab/secrets/s", "a", "b"), "projects/ab/secrets/s");
        assert_eq!(
            target_name("projects/a/locations/l/secrets/s", "b", "drill-"),
            "projects/b/locations/l/secrets/drill-s"
        );
        assert_eq!(target_name("projects/a/secrets/s", "b", ""), "projects/b/secrets/s");
        // The API names secrets by project number: they move all the same.
        assert_eq!(
            target_name("projects/123456789012/secrets/s", "b", ""),
            "projects/b/secrets/s"
        );
        assert_eq!(
            target_name("projects/123456789012/locations/l/secrets/s", "b", "drill-"),
            "projects/b/locations/l/secrets/drill-s"
        );
        assert_eq!(moved_to_project("projects/ab/secrets/s", "b"), "projects/b/secrets/s");
    }
}
