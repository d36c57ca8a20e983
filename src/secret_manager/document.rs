//! The Secret Manager backup document: what a `SECRETS_SOURCE=secret-manager`
//! backup encrypts (envelope version 2, `content: "secret-manager"`).
//!
//! ```json
//! {"format": "keshless-secret-manager-backup", "version": 1,
//!  "project": "keshless-prod", "filter": "labels.backup=true", "locations": ["europe-west1"],
//!  "taken_at": "2026-11-29T04:00:00Z",
//!  "secrets": [{"name": "projects/keshless-prod/secrets/db-password",
//!               "metadata": {<the Secret resource as the REST API returns it, without etag>},
//!               "versions": [{"version": 1, "state": "DESTROYED", "create_time": "...", "destroy_time": "..."},
//!                            {"version": 2, "state": "ENABLED", "create_time": "...",
//!                             "payload": "<base64>", "crc32c": 1234}]}]}
//! ```
//!
//! The metadata is kept as the API's own JSON, so every field (labels,
//! annotations, replication with per-replica CMEK keys, rotation, topics,
//! expire time, version-destroy TTL, aliases, and fields added to the API
//! later) comes back on restore without this file naming each one. Versions
//! are oldest first; only ENABLED ones carry a payload (the API refuses to
//! read the others).

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::client::SecretBytes;

/// The `format` field.
pub const DOCUMENT_FORMAT: &str = "keshless-secret-manager-backup";
/// The only version this build writes and reads.
pub const DOCUMENT_VERSION: u32 = 1;

/// A version's state, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The whole backup of one project.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretManagerBackup {
    pub format: String,
    pub version: u32,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Regional locations read besides the global secrets.
    #[serde(default)]
    pub locations: Vec<String>,
    /// When reading started (RFC 3339): a secret created later may be missing.
    pub taken_at: String,
    pub secrets: Vec<BackedUpSecret>,
}

/// One secret: its resource name, its metadata and its versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedUpSecret {
    /// `projects/P/secrets/S` or `projects/P/locations/L/secrets/S`.
    pub name: String,
    /// The `Secret` resource in the REST API's JSON, without `etag`.
    pub metadata: serde_json::Value,
    /// Oldest first.
    pub versions: Vec<BackedUpVersion>,
}

/// One version; `payload` only for ENABLED versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedUpVersion {
    pub version: u64,
    pub state: VersionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_time: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_payload",
        deserialize_with = "deserialize_payload"
    )]
    pub payload: Option<SecretBytes>,
    /// CRC32C of the payload as Secret Manager reported and we checked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

/// Why a decrypted document cannot be used. Messages never quote the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("the decrypted Secret Manager backup is not a valid document: {0}")]
    Invalid(String),
    #[error("unsupported Secret Manager backup document {format:?} version {version}: this build reads {DOCUMENT_FORMAT:?} version 1")]
    Unsupported { format: String, version: u32 },
    #[error("the Secret Manager backup is inconsistent: {0}")]
    Inconsistent(String),
}

/// Counts for job results and reports: no names, no values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DocumentCounts {
    pub secrets: usize,
    pub versions: usize,
    pub enabled_versions: usize,
    pub payload_bytes: usize,
}

impl SecretManagerBackup {
    pub fn new(project: &str, filter: Option<String>, locations: Vec<String>, taken_at: String) -> Self {
        SecretManagerBackup {
            format: DOCUMENT_FORMAT.to_owned(),
            version: DOCUMENT_VERSION,
            project: project.to_owned(),
            filter,
            locations,
            taken_at,
            secrets: Vec::new(),
        }
    }

    pub fn counts(&self) -> DocumentCounts {
        let mut counts = DocumentCounts {
            secrets: self.secrets.len(),
            ..DocumentCounts::default()
        };
        for secret in &self.secrets {
            counts.versions += secret.versions.len();
            for version in &secret.versions {
                if let Some(payload) = &version.payload {
                    counts.enabled_versions += 1;
                    counts.payload_bytes += payload.len();
                }
            }
        }
        counts
    }

    /// Resource names, sorted: safe for logs and the ledger.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.secrets.iter().map(|secret| secret.name.clone()).collect();
        names.sort();
        names
    }

    /// One digest per secret over everything stored about it, to tell which
    /// secrets changed between two backups without comparing values in the open.
    pub fn digests(&self) -> BTreeMap<String, [u8; 32]> {
        self.secrets
            .iter()
            .map(|secret| {
                let bytes = Zeroizing::new(serde_json::to_vec(secret).expect("a backed-up secret always serialises"));
                (secret.name.clone(), Sha256::digest(bytes.as_slice()).into())
            })
            .collect()
    }

    /// The JSON that is encrypted, in a buffer sized up front so that growing
    /// it never leaves un-wiped copies of payloads in freed memory.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let estimate = 1024
            + self
                .secrets
                .iter()
                .map(|secret| {
                    2048 + secret.metadata.to_string().len() * 2
                        + secret
                            .versions
                            .iter()
                            .map(|version| {
                                256 + version.payload.as_ref().map_or(0, |payload| payload.len() * 4 / 3 + 4)
                            })
                            .sum::<usize>()
                })
                .sum::<usize>();
        let mut buffer = Zeroizing::new(Vec::with_capacity(estimate));
        serde_json::to_writer(&mut *buffer, self).expect("a backup document always serialises");
        buffer
    }

    /// Parses decrypted bytes and checks what a restore relies on: the format,
    /// names inside the project, versions in order, each payload's CRC32C.
    pub fn from_json(bytes: &[u8]) -> Result<SecretManagerBackup, DocumentError> {
        // serde_json's messages name a line and column, never the input text.
        let mut document: SecretManagerBackup =
            serde_json::from_slice(bytes).map_err(|error| DocumentError::Invalid(error.to_string()))?;
        // A backup written with the names as the service returned them
        // (by project number) is the same project's.
        let project = document.project.clone();
        for secret in &mut document.secrets {
            secret.name = by_project_id(&secret.name, &project);
        }
        if document.format != DOCUMENT_FORMAT || document.version != DOCUMENT_VERSION {
            return Err(DocumentError::Unsupported {
                format: document.format,
                version: document.version,
            });
        }
        let prefix = format!("projects/{}/", document.project);
        for secret in &document.secrets {
            if !secret.name.starts_with(&prefix) || secret_id(&secret.name).is_none() {
                return Err(DocumentError::Inconsistent(format!(
                    "{} is not a secret of project {}",
                    secret.name, document.project
                )));
            }
            let mut previous = 0;
            for version in &secret.versions {
                if version.version <= previous {
                    return Err(DocumentError::Inconsistent(format!(
                        "{}: versions are not in increasing order",
                        secret.name
                    )));
                }
                previous = version.version;
                match (&version.payload, version.state) {
                    (Some(payload), VersionState::Enabled) => {
                        if version.crc32c != Some(payload.crc32c()) {
                            return Err(DocumentError::Inconsistent(format!(
                                "{}/versions/{}: the payload does not match its CRC32C",
                                secret.name, version.version
                            )));
                        }
                    }
                    (None, VersionState::Enabled) => {
                        return Err(DocumentError::Inconsistent(format!(
                            "{}/versions/{} is ENABLED but has no payload",
                            secret.name, version.version
                        )))
                    }
                    (Some(_), _) => {
                        return Err(DocumentError::Inconsistent(format!(
                            "{}/versions/{} is {} but has a payload",
                            secret.name, version.version, version.state
                        )))
                    }
                    (None, _) => {}
                }
            }
        }
        Ok(document)
    }
}

impl BackedUpSecret {
    /// The last path segment of the name.
    pub fn id(&self) -> &str {
        secret_id(&self.name).unwrap_or(&self.name)
    }

    /// The newest ENABLED version.
    pub fn newest_enabled(&self) -> Option<&BackedUpVersion> {
        self.versions
            .iter()
            .rev()
            .find(|version| version.state == VersionState::Enabled)
    }

    /// `expireTime` of the metadata, if any.
    pub fn expire_time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.metadata.get("expireTime")?.as_str()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| time.with_timezone(&chrono::Utc))
    }

    /// `versionAliases` of the metadata (the API writes the numbers as strings).
    pub fn aliases(&self) -> BTreeMap<String, u64> {
        let Some(object) = self.metadata.get("versionAliases").and_then(|value| value.as_object()) else {
            return BTreeMap::new();
        };
        object
            .iter()
            .filter_map(|(alias, number)| {
                let number = match number {
                    serde_json::Value::String(text) => text.parse().ok()?,
                    other => other.as_u64()?,
                };
                Some((alias.clone(), number))
            })
            .collect()
    }
}

/// `projects/P[/locations/L]/secrets/S` → `S`.
pub fn secret_id(name: &str) -> Option<&str> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["projects", _, "secrets", id] | ["projects", _, "locations", _, "secrets", id] if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// A name Secret Manager returned, with its project as `project` (the id)
/// where the service put the project's number: it names everything it
/// returns `projects/NUMBER/…`, whatever the request said. Backups and the
/// drill compare and store names by id, so one project's names are the same
/// strings whoever read them.
pub fn by_project_id(name: &str, project: &str) -> String {
    match project_segment(name) {
        Some((segment, rest)) if !segment.is_empty() && segment.bytes().all(|byte| byte.is_ascii_digit()) => {
            format!("projects/{project}/{rest}")
        }
        _ => name.to_owned(),
    }
}

/// `projects/P/REST` → `(P, REST)`.
pub fn project_segment(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix("projects/")?.split_once('/')
}

/// `projects/P[/locations/L]/secrets/S` → `projects/P[/locations/L]`.
pub fn parent_of(name: &str) -> Option<&str> {
    secret_id(name)?;
    name.rsplit_once("/secrets/").map(|(parent, _)| parent)
}

fn serialize_payload<S: Serializer>(payload: &Option<SecretBytes>, serializer: S) -> Result<S::Ok, S::Error> {
    match payload {
        // Written straight into the output: no intermediate base64 String to wipe.
        Some(bytes) => serializer.collect_str(&base64::display::Base64Display::new(bytes.expose(), &BASE64)),
        None => serializer.serialize_none(),
    }
}

fn deserialize_payload<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SecretBytes>, D::Error> {
    struct PayloadVisitor;
    impl serde::de::Visitor<'_> for PayloadVisitor {
        type Value = Option<SecretBytes>;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a base64 payload")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
            BASE64
                .decode_vec(text, &mut bytes)
                .map_err(|_| E::custom("a payload is not valid base64"))?;
            Ok(Some(SecretBytes::new(std::mem::take(&mut *bytes))))
        }
    }
    deserializer.deserialize_str(PayloadVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_project_number_are_read_by_project_id() {
        assert_eq!(
            by_project_id("projects/123456789012/secrets/S", "p"),
            "projects/p/secrets/S"
        );
        assert_eq!(
            by_project_id("projects/123456789012/locations/l/secrets/S", "p"),
            "projects/p/locations/l/secrets/S"
        );
        assert_eq!(by_project_id("projects/p/secrets/S", "p"), "projects/p/secrets/S");
        assert_eq!(by_project_id("projects/p2/secrets/S", "p"), "projects/p2/secrets/S");
        let mut backup = sample();
        backup.secrets[0].name = backup.secrets[0].name.replacen("projects/p/", "projects/42/", 1);
        let read = SecretManagerBackup::from_json(&backup.to_json()).expect("a numbered name is the project's");
        assert!(
            read.secrets[0].name.starts_with("projects/p/secrets/"),
            "{}",
            read.secrets[0].name
        );
    }

    fn sample() -> SecretManagerBackup {
        let mut backup = SecretManagerBackup::new("p", None, vec![], "2026-11-29T04:00:00Z".into());
        let payload = SecretBytes::new(b"s3cret-\x00-binary".to_vec());
        backup.secrets.push(BackedUpSecret {
            name: "projects/p/secrets/db".into(),
            metadata: serde_json::json!({"labels": {"backup": "true"}, "versionAliases": {"current": "2"}}),
            versions: vec![
                BackedUpVersion {
                    version: 1,
                    state: VersionState::Disabled,
                    create_time: None,
                    destroy_time: None,
                    payload: None,
                    crc32c: None,
                },
                BackedUpVersion {
                    version: 2,
                    state: VersionState::Enabled,
                    create_time: Some("2026-11-01T00:00:00Z".into()),
                    destroy_time: None,
                    crc32c: Some(payload.crc32c()),
                    payload: Some(payload),
                },
            ],
        });
        backup
    }

    #[test]
    fn round_trips_and_checks_consistency() {
        let backup = sample();
        let bytes = backup.to_json();
        let read = SecretManagerBackup::from_json(&bytes).unwrap();
        assert_eq!(read.digests(), backup.digests());
        assert_eq!(read.secrets[0].aliases(), BTreeMap::from([("current".to_owned(), 2)]));
        assert_eq!(read.secrets[0].newest_enabled().unwrap().version, 2);
        assert_eq!(read.counts().payload_bytes, 15);
        assert!(!format!("{read:?}").contains("s3cret"));

        let mut broken = backup.clone();
        broken.secrets[0].versions[1].crc32c = Some(1);
        let error = SecretManagerBackup::from_json(&broken.to_json()).unwrap_err();
        assert!(error.to_string().contains("does not match its CRC32C"), "{error}");
        let mut foreign = backup;
        foreign.secrets[0].name = "projects/other/secrets/db".into();
        assert!(matches!(
            SecretManagerBackup::from_json(&foreign.to_json()),
            Err(DocumentError::Inconsistent(_))
        ));
    }

    #[test]
    fn names() {
        assert_eq!(secret_id("projects/p/secrets/s"), Some("s"));
        assert_eq!(secret_id("projects/p/locations/l/secrets/s"), Some("s"));
        assert_eq!(secret_id("projects/p/topics/s"), None);
        assert_eq!(
            parent_of("projects/p/locations/l/secrets/s"),
            Some("projects/p/locations/l")
        );
    }
}
