//! Reading a whole project for the backup: page through the secrets (global
//! and each configured location), list every version of each, access the
//! ENABLED ones. One secret's versions are read before the next secret is
//! listed further, so memory holds the document and one page of metadata.

use chrono::{DateTime, SecondsFormat, Utc};

use super::client::{SecretManagerClient, SecretManagerError};
use super::document::{BackedUpSecret, BackedUpVersion, SecretManagerBackup, VersionState};
use google_cloud_secretmanager_v1::model::secret_version::State;
use google_cloud_secretmanager_v1::model::Secret;

/// A decrypted document larger than this is refused rather than grown:
/// Secret Manager payloads are at most 64 KiB, so this is thousands of secrets
/// with several versions each.
pub const MAXIMUM_DOCUMENT_BYTES: usize = 48 * 1024 * 1024;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectSelection {
    pub project: String,
    /// Secret Manager's own filter syntax (`labels.backup=true`), passed to `list`.
    pub filter: Option<String>,
    /// Regional locations whose secrets are read besides the global ones.
    pub locations: Vec<String>,
}

impl ProjectSelection {
    /// `projects/P`, then `projects/P/locations/L` for each location.
    pub fn parents(&self) -> Vec<String> {
        std::iter::once(format!("projects/{}", self.project))
            .chain(
                self.locations
                    .iter()
                    .map(|location| format!("projects/{}/locations/{location}", self.project)),
            )
            .collect()
    }
}

/// Why a project could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    SecretManager(#[from] SecretManagerError),
    #[error(
        "the Secret Manager backup would exceed {MAXIMUM_DOCUMENT_BYTES} bytes of payloads and metadata (at {secret}); \
         narrow it with SECRETS_FILTER"
    )]
    TooLarge { secret: String },
    #[error("{version} has a state this build does not know ({state}); refusing to guess whether to read it")]
    UnknownState { version: String, state: String },
}

impl ReadError {
    /// Retrying may help (quota, network, a damaged payload); the rest needs a person.
    pub fn is_transient(&self) -> bool {
        matches!(self, ReadError::SecretManager(error) if error.is_retryable())
    }
}

/// Every secret of the selection with its versions; ENABLED payloads CRC32C-checked.
pub async fn read_project(
    client: &SecretManagerClient,
    selection: &ProjectSelection,
    now: DateTime<Utc>,
) -> Result<SecretManagerBackup, ReadError> {
    let mut backup = SecretManagerBackup::new(
        &selection.project,
        selection.filter.clone(),
        selection.locations.clone(),
        now.to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    let mut document_bytes = 0usize;
    for parent in selection.parents() {
        let mut page_token = String::new();
        loop {
            let (secrets, next) = client
                .list_secrets_page(&parent, selection.filter.as_deref(), &page_token)
                .await?;
            for secret in secrets {
                let read = read_secret(client, secret, &selection.project).await?;
                document_bytes += estimated_bytes(&read);
                if document_bytes > MAXIMUM_DOCUMENT_BYTES {
                    return Err(ReadError::TooLarge { secret: read.name });
                }
                backup.secrets.push(read);
            }
            if next.is_empty() {
                break;
            }
            page_token = next;
        }
    }
    backup.secrets.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(backup)
}

async fn read_secret(client: &SecretManagerClient, secret: Secret, project: &str) -> Result<BackedUpSecret, ReadError> {
    let name = secret.name.clone();
    let mut listed = client.list_versions(&name).await?;
    listed.sort_by_key(|version| version_number(&version.name));
    let mut versions = Vec::with_capacity(listed.len());
    for version in listed {
        let state = match version.state {
            State::Enabled => VersionState::Enabled,
            State::Disabled => VersionState::Disabled,
            State::Destroyed => VersionState::Destroyed,
            ref other => {
                return Err(ReadError::UnknownState {
                    version: version.name.clone(),
                    state: other.name().unwrap_or("unnamed").to_owned(),
                })
            }
        };
        let payload = if state == VersionState::Enabled {
            Some(client.access(&version.name).await?)
        } else {
            None
        };
        versions.push(BackedUpVersion {
            version: version_number(&version.name),
            state,
            create_time: version.create_time.map(|time| timestamp_text(&time)),
            destroy_time: version.destroy_time.map(|time| timestamp_text(&time)),
            crc32c: payload.as_ref().map(|payload| payload.crc32c()),
            payload,
        });
    }
    let mut metadata = serde_json::to_value(&secret).unwrap_or_default();
    if let Some(object) = metadata.as_object_mut() {
        // An etag is the state of the old project, meaningless after a restore.
        object.remove("etag");
    }
    Ok(BackedUpSecret {
        // Stored by project id: the service returns names by number.
        name: crate::secret_manager::document::by_project_id(&name, project),
        metadata,
        versions,
    })
}

fn timestamp_text(time: &google_cloud_wkt::Timestamp) -> String {
    serde_json::to_value(time)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `.../versions/7` → 7.
pub fn version_number(name: &str) -> u64 {
    name.rsplit('/').next().and_then(|last| last.parse().ok()).unwrap_or(0)
}

fn estimated_bytes(secret: &BackedUpSecret) -> usize {
    512 + secret.metadata.to_string().len()
        + secret
            .versions
            .iter()
            .map(|version| 160 + version.payload.as_ref().map_or(0, |payload| payload.len() * 4 / 3))
            .sum::<usize>()
}
