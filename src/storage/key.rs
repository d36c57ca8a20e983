//! Object key rules shared by every backend, so a key that works in development
//! (files) also works in production (GCS) and cannot escape the file store's root.

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than 1024 bytes")]
    TooLong,
    #[error("the key may not start or end with '/'")]
    EdgeSlash,
    #[error("the key has an empty segment ('//')")]
    EmptySegment,
    #[error("the key may not contain '.' or '..' segments")]
    DotSegment,
    #[error("the key may not contain control characters")]
    ControlCharacter,
    #[error("segments starting with '.keshless' are reserved for the store's own use")]
    Reserved,
}

/// Checks a store-relative key: 1–1024 bytes, `/`-separated non-empty
/// segments, no `.`/`..` segments, no control characters.
pub fn validate_key(key: &str) -> Result<(), KeyProblem> {
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.len() > 1024 {
        return Err(KeyProblem::TooLong);
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(KeyProblem::EdgeSlash);
    }
    if key.chars().any(char::is_control) {
        return Err(KeyProblem::ControlCharacter);
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(KeyProblem::EmptySegment),
            "." | ".." => return Err(KeyProblem::DotSegment),
            _ if segment.starts_with(".keshless") => return Err(KeyProblem::Reserved),
            _ => {}
        }
    }
    Ok(())
}

/// Validates `key`, converting a problem into the storage error callers see.
pub(crate) fn checked(key: &str) -> Result<&str, super::StorageError> {
    validate_key(key).map_err(|problem| super::StorageError::InvalidKey {
        key: key.to_owned(),
        reason: problem.to_string(),
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        let long = "a".repeat(1025);
        let cases: &[(&str, Result<(), KeyProblem>)] = &[
            ("postgresql/daily/2026-11-26/manifest.json", Ok(())),
            ("secrets/latest.json.encrypted", Ok(())),
            ("a", Ok(())),
            ("", Err(KeyProblem::Empty)),
            (&long, Err(KeyProblem::TooLong)),
            ("/abs", Err(KeyProblem::EdgeSlash)),
            ("dir/", Err(KeyProblem::EdgeSlash)),
            ("a//b", Err(KeyProblem::EmptySegment)),
            ("a/../b", Err(KeyProblem::DotSegment)),
            ("./a", Err(KeyProblem::DotSegment)),
            ("a\nb", Err(KeyProblem::ControlCharacter)),
            (".keshless-tmp/x", Err(KeyProblem::Reserved)),
        ];
        for (key, expected) in cases {
            assert_eq!(&validate_key(key), expected, "{key:?}");
        }
    }
}
