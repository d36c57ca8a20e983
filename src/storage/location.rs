//! Parsing of store URLs (`BACKUP_STORE`): `gs://bucket[/prefix]` or `file:///path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a [`super::BlobStore`] keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A GCS bucket, optionally narrowed to a prefix (no leading or trailing `/`).
    Gcs { bucket: String, prefix: String },
    /// A directory on the local filesystem (absolute path).
    File { root: PathBuf },
}

/// Why a store URL was refused; the message lists the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason} (accepted: gs://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH)")]
pub struct StoreLocationError {
    pub input: String,
    pub reason: String,
}

impl StoreLocation {
    /// A GCS location for `bucket`, validating the name as GCS does.
    pub fn gcs(bucket: &str, prefix: &str) -> Result<Self, StoreLocationError> {
        let input = format!("gs://{bucket}/{prefix}");
        let error = |reason: String| StoreLocationError {
            input: input.clone(),
            reason,
        };
        validate_bucket_name(bucket).map_err(error)?;
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            super::key::validate_key(prefix).map_err(|problem| error(problem.to_string()))?;
        }
        Ok(StoreLocation::Gcs {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// Joins a store-relative key onto the prefix, giving the backend's object name.
    pub(crate) fn object_name(&self, key: &str) -> String {
        match self {
            StoreLocation::Gcs { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{key}"),
            _ => key.to_owned(),
        }
    }
}

/// GCS bucket naming rules (the subset that matters for typos): 3–63
/// characters of lower-case letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit.
fn validate_bucket_name(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is empty".into());
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!("bucket name {bucket:?} must be 3 to 63 characters long"));
    }
    if !bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "bucket name {bucket:?} may only contain lower-case letters, digits, '-', '_' and '.'"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge_ok(bucket.chars().next()) || !edge_ok(bucket.chars().last()) {
        return Err(format!(
            "bucket name {bucket:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

impl FromStr for StoreLocation {
    type Err = StoreLocationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| StoreLocationError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = input.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return StoreLocation::gcs(bucket, prefix).map_err(|inner| StoreLocationError {
                input: input.to_owned(),
                reason: inner.reason,
            });
        }
        if let Some(path) = input.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(error(
                    "a file store needs an absolute path (three slashes: file:///var/backups)",
                ));
            }
            if path.split('/').any(|segment| segment == "..") {
                return Err(error("a file store path may not contain '..'"));
            }
            let trimmed = path.trim_end_matches('/');
            let root = if trimmed.is_empty() { "/" } else { trimmed };
            return Ok(StoreLocation::File {
                root: PathBuf::from(root),
            });
        }
        let scheme = input.split_once("://").map(|(scheme, _)| scheme);
        Err(match scheme {
            Some(scheme) => error(&format!("unknown scheme {scheme:?}")),
            None => error("not a URL"),
        })
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Gcs { bucket, prefix } if prefix.is_empty() => write!(formatter, "gs://{bucket}"),
            StoreLocation::Gcs { bucket, prefix } => write!(formatter, "gs://{bucket}/{prefix}"),
            StoreLocation::File { root } => write!(formatter, "file://{}", root.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_accepted_forms() {
        let cases = [
            ("gs://keshless-backups", "gs://keshless-backups"),
            ("gs://keshless-backups/", "gs://keshless-backups"),
            ("gs://keshless-backups/prod/eu", "gs://keshless-backups/prod/eu"),
            ("file:///var/backups", "file:///var/backups"),
            ("file:///var/backups/", "file:///var/backups"),
        ];
        for (input, shown) in cases {
            let location: StoreLocation = input.parse().unwrap_or_else(|error| panic!("{input}: {error}"));
            assert_eq!(location.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn refuses_bad_forms_with_the_reason() {
        let cases = [
            ("s3://bucket", "unknown scheme \"s3\""),
            ("keshless-backups", "not a URL"),
            ("gs://", "the bucket name is empty"),
            ("gs://Keshless", "lower-case"),
            ("gs://ab", "3 to 63"),
            ("gs://-bucket", "start and end"),
            ("gs://bucket/a//b", "empty segment"),
            ("file://relative/path", "absolute path"),
            ("file:///var/../etc", "'..'"),
        ];
        for (input, expected) in cases {
            let error = input.parse::<StoreLocation>().expect_err(input).to_string();
            assert!(error.contains(expected), "{input}: {error}");
            assert!(error.contains("accepted: gs://BUCKET"), "{input}: {error}");
        }
    }

    #[test]
    fn object_names_join_the_prefix() {
        let location: StoreLocation = "gs://bucket/prod".parse().unwrap();
        assert_eq!(location.object_name("a/b"), "prod/a/b");
        let location: StoreLocation = "gs://bucket".parse().unwrap();
        assert_eq!(location.object_name("a/b"), "a/b");
    }
}
