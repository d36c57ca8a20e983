//! The bucket hardening check behind `keshless-ops doctor`: the documents
//! bucket must keep history (versioning), refuse public access (public access
//! prevention enforced) and use IAM only (uniform bucket-level access); the
//! backups bucket must refuse early deletions (a retention policy, so a
//! compromised worker account cannot destroy the backups; Cloud Storage does
//! not allow versioning beside one). [`evaluate`] is the pure verdict over the
//! settings read from the bucket's metadata.

use google_cloud_storage::http::buckets::get::GetBucketRequest;
use google_cloud_storage::http::buckets::iam_configuration::PublicAccessPrevention;
use serde::Serialize;

use super::DocumentsError;
use crate::storage::{BlobStore, StoreLocation};

/// Which bucket a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Documents,
    Backups,
}

/// The settings read from a bucket; `None` where the metadata does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketSettings {
    pub versioning: Option<bool>,
    pub public_access_prevention_enforced: Option<bool>,
    pub uniform_bucket_level_access: Option<bool>,
    /// The bucket's retention policy; `None` when it has none.
    pub retention_policy: Option<crate::storage::RetentionPolicy>,
}

/// The verdict on one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Finding,
    /// A file:// store has no such setting.
    NotApplicable,
}

/// One checked setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    pub role: Role,
    pub store: String,
    pub setting: &'static str,
    pub status: Status,
    pub detail: String,
}

/// The verdict for one bucket; `settings` is `None` for a file:// store.
pub fn evaluate(role: Role, store: &str, settings: Option<&BucketSettings>) -> Vec<CheckLine> {
    let wanted: &[&'static str] = match role {
        Role::Documents => &["versioning", "public_access_prevention", "uniform_bucket_level_access"],
        Role::Backups => &["retention_policy"],
    };
    wanted
        .iter()
        .map(|setting| {
            let (status, detail) = match settings {
                None => (
                    Status::NotApplicable,
                    "not applicable: a file:// store has no bucket settings".to_owned(),
                ),
                Some(settings) if *setting == "retention_policy" => match &settings.retention_policy {
                    Some(policy) => (
                        Status::Ok,
                        format!(
                            "no object can be deleted or replaced before it is {} days old ({})",
                            policy.period.num_seconds() as f64 / 86_400.0,
                            if policy.locked {
                                "the policy is locked"
                            } else {
                                "the policy is not locked: backups_retention_locked locks it, irreversibly"
                            }
                        ),
                    ),
                    None => (
                        Status::Finding,
                        "no retention policy: anyone holding the worker's credentials can delete every backup \
                         (infra/ sets one: backups_retention_days)"
                            .to_owned(),
                    ),
                },
                Some(settings) => {
                    let value = match *setting {
                        "versioning" => settings.versioning,
                        "public_access_prevention" => settings.public_access_prevention_enforced,
                        _ => settings.uniform_bucket_level_access,
                    };
                    let (on, off) = match *setting {
                        "versioning" => (
                            "object versioning is on",
                            "object versioning is off: overwritten or deleted objects cannot be restored",
                        ),
                        "public_access_prevention" => (
                            "public access prevention is enforced",
                            "public access prevention is not enforced: the bucket could be made public",
                        ),
                        _ => (
                            "uniform bucket-level access is on",
                            "uniform bucket-level access is off: per-object ACLs can grant access",
                        ),
                    };
                    match value {
                        Some(true) => (Status::Ok, on.to_owned()),
                        Some(false) => (Status::Finding, off.to_owned()),
                        None => (
                            Status::Finding,
                            format!("the bucket metadata does not report it, so it cannot be confirmed ({off})"),
                        ),
                    }
                }
            };
            CheckLine {
                role,
                store: store.to_owned(),
                setting,
                status,
                detail,
            }
        })
        .collect()
}

/// Reads a store's bucket settings; `None` for a file:// store.
pub async fn bucket_settings(store: &dyn BlobStore) -> Result<Option<BucketSettings>, DocumentsError> {
    let (Some(gcs), StoreLocation::Gcs { bucket, .. }) = (store.as_gcs(), store.location()) else {
        return Ok(None);
    };
    let request = GetBucketRequest {
        bucket: bucket.clone(),
        ..Default::default()
    };
    let found = gcs.client().get_bucket(&request).await.map_err(|error| {
        DocumentsError::Refused(format!(
            "{}: cannot read the bucket's metadata: {}",
            store.location(),
            crate::telemetry::error_chain(&error)
        ))
    })?;
    let iam = found.iam_configuration.as_ref();
    Ok(Some(BucketSettings {
        versioning: Some(found.versioning.as_ref().is_some_and(|versioning| versioning.enabled)),
        public_access_prevention_enforced: iam
            .and_then(|iam| iam.public_access_prevention)
            .map(|prevention| prevention == PublicAccessPrevention::Enforced),
        uniform_bucket_level_access: iam
            .and_then(|iam| iam.uniform_bucket_level_access.as_ref())
            .map(|access| access.enabled),
        retention_policy: store.retention_policy().await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(lines: &[CheckLine]) -> Vec<(&'static str, Status)> {
        lines.iter().map(|line| (line.setting, line.status)).collect()
    }

    #[test]
    fn verdicts() {
        let hardened = BucketSettings {
            versioning: Some(true),
            public_access_prevention_enforced: Some(true),
            uniform_bucket_level_access: Some(true),
            retention_policy: Some(crate::storage::RetentionPolicy {
                period: chrono::Duration::days(7),
                locked: false,
            }),
        };
        let open = BucketSettings {
            versioning: Some(false),
            public_access_prevention_enforced: Some(false),
            uniform_bucket_level_access: None,
            retention_policy: None,
        };
        use Status::*;
        type Case<'a> = (Role, Option<&'a BucketSettings>, Vec<(&'static str, Status)>);
        let cases: Vec<Case> = vec![
            (
                Role::Documents,
                Some(&hardened),
                vec![
                    ("versioning", Ok),
                    ("public_access_prevention", Ok),
                    ("uniform_bucket_level_access", Ok),
                ],
            ),
            (
                Role::Documents,
                Some(&open),
                vec![
                    ("versioning", Finding),
                    ("public_access_prevention", Finding),
                    ("uniform_bucket_level_access", Finding),
                ],
            ),
            (Role::Backups, Some(&hardened), vec![("retention_policy", Ok)]),
            (Role::Backups, Some(&open), vec![("retention_policy", Finding)]),
            (
                Role::Documents,
                None,
                vec![
                    ("versioning", NotApplicable),
                    ("public_access_prevention", NotApplicable),
                    ("uniform_bucket_level_access", NotApplicable),
                ],
            ),
        ];
        for (role, settings, expected) in cases {
            assert_eq!(
                statuses(&evaluate(role, "gs://b", settings)),
                expected,
                "{role:?} {settings:?}"
            );
        }
        let kept = evaluate(Role::Backups, "gs://b", Some(&hardened));
        assert!(
            kept[0].detail.contains("before it is 7 days old") && kept[0].detail.contains("not locked"),
            "{}",
            kept[0].detail
        );
        let unreported = evaluate(Role::Documents, "gs://b", Some(&open));
        assert!(
            unreported[2].detail.contains("does not report"),
            "{}",
            unreported[2].detail
        );
    }
}
