//! [`SecretMap`]: secret names and values held so that values are zeroized
//! when dropped and never appear in `Debug`, plus the two text forms a
//! restore writes (`json` and `env`).

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Names and values of backed-up secrets, sorted by name. `Debug` shows names only.
#[derive(Default, Clone)]
pub struct SecretMap {
    entries: BTreeMap<String, SecretString>,
}

/// Why a secret map could not be read or rendered. Messages name secrets, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretMapError {
    #[error("the decrypted payload is not a JSON object of string values: {0}")]
    NotAnObject(String),
    #[error(
        "{} not a valid environment variable name (letters, digits and _, not starting with a digit): {}; \
         use --format json",
        if .0.len() == 1 { "this name is" } else { "these names are" },
        .0.join(", ")
    )]
    NotEnvNames(Vec<String>),
}

impl SecretMap {
    pub fn new() -> SecretMap {
        SecretMap::default()
    }

    /// Adds or replaces a secret; returns whether the name was new.
    pub fn insert(&mut self, name: impl Into<String>, value: SecretString) -> bool {
        self.entries.insert(name.into(), value).is_none()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Secret names in order: safe to log and to store in the ledger.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Names and values, for code that must hand a value on (restore, tests).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.entries.iter().map(|(name, value)| (name.as_str(), value))
    }

    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.entries.get(name)
    }

    /// Same names and values (values compared as bytes).
    pub fn same_contents(&self, other: &SecretMap) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(other.entries.iter())
                .all(|((name, value), (other_name, other_value))| {
                    name == other_name && value.expose_secret() == other_value.expose_secret()
                })
    }

    /// The JSON object `{"NAME": "value", ...}` that is encrypted, in a buffer
    /// sized up front (worst case: every byte escaped as `\u00XX`) so that
    /// serialisation never reallocates and leaves an un-zeroized copy behind.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let capacity = 2 + self
            .entries
            .iter()
            .map(|(name, value)| 6 * (name.len() + value.expose_secret().len()) + 6)
            .sum::<usize>();
        let mut buffer = Zeroizing::new(Vec::with_capacity(capacity));
        let object: BTreeMap<&str, &str> = self
            .entries
            .iter()
            .map(|(name, value)| (name.as_str(), value.expose_secret()))
            .collect();
        serde_json::to_writer(&mut *buffer, &object).expect("a map of strings always serialises");
        buffer
    }

    /// The same JSON, pretty-printed with a final newline, for `--format json`.
    pub fn to_pretty_json(&self) -> Zeroizing<String> {
        let object: BTreeMap<&str, &str> = self
            .entries
            .iter()
            .map(|(name, value)| (name.as_str(), value.expose_secret()))
            .collect();
        let mut text =
            Zeroizing::new(serde_json::to_string_pretty(&object).expect("a map of strings always serialises"));
        text.push('\n');
        text
    }

    /// Parses the decrypted JSON object.
    pub fn from_json(bytes: &[u8]) -> Result<SecretMap, SecretMapError> {
        // serde_json's error names a line and column, never the input text.
        let object: BTreeMap<String, String> =
            serde_json::from_slice(bytes).map_err(|error| SecretMapError::NotAnObject(error.to_string()))?;
        let mut map = SecretMap::new();
        for (name, value) in object {
            map.insert(name, SecretString::from(value));
        }
        Ok(map)
    }

    /// `NAME=value` lines that both a POSIX shell (`set -a; . ./file`) and the
    /// `.env` reader of the file source read back unchanged: plain values bare,
    /// anything else single-quoted, with `'` written as `'"'"'` (close,
    /// a double-quoted quote, reopen), which needs no backslash rules.
    pub fn to_env(&self) -> Result<Zeroizing<String>, SecretMapError> {
        let invalid: Vec<String> = self.entries.keys().filter(|name| !is_env_name(name)).cloned().collect();
        if !invalid.is_empty() {
            return Err(SecretMapError::NotEnvNames(invalid));
        }
        let mut text = Zeroizing::new(String::new());
        for (name, value) in &self.entries {
            let value = value.expose_secret();
            text.push_str(name);
            text.push('=');
            if !value.is_empty() && value.chars().all(is_plain_env_char) {
                text.push_str(value);
            } else {
                text.push('\'');
                for character in value.chars() {
                    if character == '\'' {
                        text.push_str("'\"'\"'");
                    } else {
                        text.push(character);
                    }
                }
                text.push('\'');
            }
            text.push('\n');
        }
        Ok(text)
    }
}

/// An environment variable name as shells accept it.
pub fn is_env_name(name: &str) -> bool {
    let mut characters = name.chars();
    matches!(characters.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_plain_env_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || "_-./:@%+,=".contains(character)
}

impl fmt::Debug for SecretMap {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_set().entries(self.entries.keys()).finish()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for SecretMap {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> SecretMap {
        let mut map = SecretMap::new();
        for (name, value) in pairs {
            map.insert(name, SecretString::from(value.into()));
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_only() {
        let map: SecretMap = [("API_TOKEN", "tok-123")].into_iter().collect();
        let shown = format!("{map:?}");
        assert!(shown.contains("API_TOKEN"));
        assert!(!shown.contains("tok-123"));
    }

    #[test]
    fn env_format_quotes_what_a_shell_would_interpret() {
        let map: SecretMap = [("A", "plain-value_1"), ("B", "it's $HOME\nnext"), ("C", "")]
            .into_iter()
            .collect();
        assert_eq!(
            map.to_env().unwrap().as_str(),
            "A=plain-value_1\nB='it'\"'\"'s $HOME\nnext'\nC=''\n"
        );
        let bad: SecretMap = [("not-a-name", "x")].into_iter().collect();
        assert!(bad.to_env().unwrap_err().to_string().contains("not-a-name"));
    }
}
