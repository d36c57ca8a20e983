//! Where `secrets-backup` reads the secrets it protects: names and values
//! behind one trait — environment variables (an allow-list and/or a prefix)
//! or a file (a JSON object or `.env`) — or a whole Secret Manager project
//! with its metadata and versions ([`SecretManagerSource`]). Errors name
//! variables, files, line numbers and resources, never values.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::config::{SecretManagerSourceConfig, SecretsSourceConfig};
use crate::crypto::SecretMap;
use crate::secret_manager::{self, ClientSettings, ProjectSelection, ReadError, SecretManagerBackup};

/// A secrets file larger than this is a mistake (a dump, a binary), not a secrets file.
const MAXIMUM_FILE_BYTES: u64 = 1024 * 1024;

/// Why secrets could not be read. Every case is permanent: retrying reads the
/// same environment or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsSourceError {
    #[error(
        "SECRETS_ENV_VARS lists {} not set in the worker's environment: {}; refusing to write a backup \
         that silently lacks {}",
        if .0.len() == 1 { "a variable that is" } else { "variables that are" },
        .0.join(", "),
        if .0.len() == 1 { "it" } else { "them" }
    )]
    MissingVariables(Vec<String>),
    #[error("environment variables that are not valid UTF-8: {}", .0.join(", "))]
    NotUtf8(Vec<String>),
    #[error("the secrets source ({0}) is empty: there is nothing to back up")]
    Empty(String),
    #[error("cannot read the secrets file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("the secrets file {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

/// A place secrets are read from.
#[async_trait]
pub trait SecretsSource: Send + Sync + fmt::Debug {
    /// What is read, for messages (no values): `environment (...)`, `file /run/secrets.env`.
    fn describe(&self) -> String;

    /// Reads every secret; an empty result is an error.
    async fn read(&self) -> Result<SecretMap, SecretsSourceError>;
}

/// What `secrets-backup` reads.
#[derive(Debug)]
pub enum Source {
    /// Names and values (env, file): written as an envelope version 1.
    Values(Box<dyn SecretsSource>),
    /// A Secret Manager project: written as an envelope version 2.
    SecretManager(SecretManagerSource),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Values(source) => source.describe(),
            Source::SecretManager(source) => source.describe(),
        }
    }
}

/// Builds the source the configuration names, reading the process environment.
pub fn from_config(config: &SecretsSourceConfig) -> Source {
    match config {
        SecretsSourceConfig::Env { names, prefix } => {
            Source::Values(Box::new(EnvSource::from_process(names.clone(), prefix.clone())))
        }
        SecretsSourceConfig::File { path } => Source::Values(Box::new(FileSource { path: path.clone() })),
        SecretsSourceConfig::SecretManager(config) => Source::SecretManager(SecretManagerSource::from_config(config)),
    }
}

/// Every secret of a project (optionally filtered, plus regional locations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretManagerSource {
    pub selection: ProjectSelection,
    pub client: ClientSettings,
}

impl SecretManagerSource {
    pub fn from_config(config: &SecretManagerSourceConfig) -> SecretManagerSource {
        SecretManagerSource {
            selection: ProjectSelection {
                project: config.project.clone(),
                filter: config.filter.clone(),
                locations: config.locations.clone(),
            },
            client: ClientSettings {
                emulator_host: config.emulator_host.clone(),
                requests_per_minute: config.requests_per_minute,
                ..ClientSettings::default()
            },
        }
    }

    pub fn describe(&self) -> String {
        let mut text = format!("Secret Manager, project {}", self.selection.project);
        if let Some(filter) = &self.selection.filter {
            text.push_str(&format!(", filter {filter:?}"));
        }
        if !self.selection.locations.is_empty() {
            text.push_str(&format!(", locations {}", self.selection.locations.join(",")));
        }
        if let Some(host) = &self.client.emulator_host {
            text.push_str(&format!(" (fake at {host})"));
        }
        text
    }

    /// Reads the whole selection; an empty project is an error, as an empty source is.
    pub async fn read(&self, now: chrono::DateTime<chrono::Utc>) -> Result<SecretManagerBackup, ReadError> {
        let client = secret_manager::SecretManagerClient::connect(self.client.clone()).await?;
        secret_manager::read_project(&client, &self.selection, now).await
    }
}

/// Environment variables: every listed name (all must be set) plus every
/// variable whose name starts with the prefix.
pub struct EnvSource {
    names: Vec<String>,
    prefix: Option<String>,
    /// `None`: the process environment at read time.
    variables: Option<HashMap<String, SecretString>>,
}

impl fmt::Debug for EnvSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("EnvSource")
            .field("names", &self.names)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EnvSource {
    pub fn from_process(names: Vec<String>, prefix: Option<String>) -> EnvSource {
        EnvSource {
            names,
            prefix,
            variables: None,
        }
    }

    /// Reads from a fixed set of variables instead of the process (tests).
    pub fn with_variables<K: Into<String>, V: Into<String>>(
        names: Vec<String>,
        prefix: Option<String>,
        variables: impl IntoIterator<Item = (K, V)>,
    ) -> EnvSource {
        EnvSource {
            names,
            prefix,
            variables: Some(
                variables
                    .into_iter()
                    .map(|(name, value)| (name.into(), SecretString::from(value.into())))
                    .collect(),
            ),
        }
    }

    fn snapshot(&self) -> Result<HashMap<String, SecretString>, SecretsSourceError> {
        if let Some(variables) = &self.variables {
            return Ok(variables.clone());
        }
        let mut variables = HashMap::new();
        let mut not_utf8 = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Ok(name) = name.into_string() else { continue };
            if !self.wants(&name) {
                continue;
            }
            match value.into_string() {
                Ok(value) => {
                    variables.insert(name, SecretString::from(value));
                }
                Err(_) => not_utf8.push(name),
            }
        }
        if !not_utf8.is_empty() {
            not_utf8.sort();
            return Err(SecretsSourceError::NotUtf8(not_utf8));
        }
        Ok(variables)
    }

    fn wants(&self, name: &str) -> bool {
        self.names.iter().any(|listed| listed == name) || self.matches_prefix(name)
    }

    /// The encryption key never goes into the backup it encrypts, even when a
    /// prefix would match it: it could not decrypt itself anyway.
    fn matches_prefix(&self, name: &str) -> bool {
        self.prefix.as_deref().is_some_and(|prefix| name.starts_with(prefix)) && name != "SECRETS_ENCRYPTION_KEY"
    }
}

#[async_trait]
impl SecretsSource for EnvSource {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.names.is_empty() {
            parts.push(format!("SECRETS_ENV_VARS={}", self.names.join(",")));
        }
        if let Some(prefix) = &self.prefix {
            parts.push(format!("SECRETS_ENV_PREFIX={prefix}"));
        }
        format!("environment, {}", parts.join(", "))
    }

    async fn read(&self) -> Result<SecretMap, SecretsSourceError> {
        let variables = self.snapshot()?;
        let mut missing: Vec<String> = self
            .names
            .iter()
            .filter(|name| !variables.contains_key(name.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Err(SecretsSourceError::MissingVariables(missing));
        }
        let mut secrets = SecretMap::new();
        for (name, value) in variables {
            if self.wants(&name) {
                secrets.insert(name, value);
            }
        }
        if secrets.is_empty() {
            return Err(SecretsSourceError::Empty(self.describe()));
        }
        Ok(secrets)
    }
}

/// A file holding a JSON object of strings, or `.env` lines (`NAME=value`,
/// `export NAME=value`, `#` comments, single- or double-quoted values).
#[derive(Debug, Clone)]
pub struct FileSource {
    pub path: PathBuf,
}

#[async_trait]
impl SecretsSource for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn read(&self) -> Result<SecretMap, SecretsSourceError> {
        let path = self.path.display().to_string();
        let unreadable = |reason: String| SecretsSourceError::Unreadable {
            path: path.clone(),
            reason,
        };
        let metadata = tokio::fs::metadata(&self.path)
            .await
            .map_err(|error| unreadable(error.to_string()))?;
        if metadata.len() > MAXIMUM_FILE_BYTES {
            return Err(unreadable(format!(
                "it is {} bytes, more than the {MAXIMUM_FILE_BYTES}-byte limit for a secrets file",
                metadata.len()
            )));
        }
        let bytes = zeroize::Zeroizing::new(
            tokio::fs::read(&self.path)
                .await
                .map_err(|error| unreadable(error.to_string()))?,
        );
        let text = std::str::from_utf8(&bytes).map_err(|error| SecretsSourceError::Invalid {
            path: path.clone(),
            reason: format!("not UTF-8 text ({error})"),
        })?;
        let secrets = parse_secrets_text(text).map_err(|reason| SecretsSourceError::Invalid {
            path: path.clone(),
            reason,
        })?;
        if secrets.is_empty() {
            return Err(SecretsSourceError::Empty(self.describe()));
        }
        Ok(secrets)
    }
}

/// A JSON object when the text starts with `{`, `.env` lines otherwise.
pub fn parse_secrets_text(text: &str) -> Result<SecretMap, String> {
    if text.trim_start().starts_with('{') {
        parse_json_object(text)
    } else {
        parse_dotenv(text)
    }
}

fn parse_json_object(text: &str) -> Result<SecretMap, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|error| format!("not a JSON object ({error})"))?;
    let mut secrets = SecretMap::new();
    let mut not_strings = Vec::new();
    for (name, value) in object {
        match value {
            serde_json::Value::String(value) => {
                secrets.insert(name, SecretString::from(value));
            }
            _ => not_strings.push(name),
        }
    }
    if !not_strings.is_empty() {
        return Err(format!(
            "values must be strings; these are not: {}",
            not_strings.join(", ")
        ));
    }
    Ok(secrets)
}

/// Reads `.env` text. Values may be bare (trailing spaces and ` # comments`
/// dropped), `'single-quoted'` (literal, may span lines) or `"double-quoted"`
/// (`\n \r \t \" \\ \$` escapes); adjacent segments concatenate as in a shell,
/// so `'it'"'"'s'` reads `it's`.
pub fn parse_dotenv(text: &str) -> Result<SecretMap, String> {
    let characters: Vec<char> = text.chars().collect();
    let mut position = 0;
    let mut line = 1;
    let mut secrets = SecretMap::new();
    let mut duplicates = Vec::new();
    let peek = |position: usize| characters.get(position).copied();
    while position < characters.len() {
        match characters[position] {
            '\n' => {
                line += 1;
                position += 1;
                continue;
            }
            c if c.is_whitespace() => {
                position += 1;
                continue;
            }
            '#' => {
                while position < characters.len() && characters[position] != '\n' {
                    position += 1;
                }
                continue;
            }
            _ => {}
        }
        let start_line = line;
        let mut name = String::new();
        while let Some(c) = peek(position).filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
            name.push(c);
            position += 1;
        }
        if name == "export" && peek(position).is_some_and(|c| c == ' ' || c == '\t') {
            while peek(position).is_some_and(|c| c == ' ' || c == '\t') {
                position += 1;
            }
            name.clear();
            while let Some(c) = peek(position).filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                name.push(c);
                position += 1;
            }
        }
        if !crate::crypto::is_env_name(&name) {
            return Err(format!("line {start_line}: expected NAME=value"));
        }
        while peek(position).is_some_and(|c| c == ' ' || c == '\t') {
            position += 1;
        }
        if peek(position) != Some('=') {
            return Err(format!("line {start_line}: expected '=' after {name}"));
        }
        position += 1;
        while peek(position).is_some_and(|c| c == ' ' || c == '\t') {
            position += 1;
        }
        let mut value = zeroize::Zeroizing::new(String::new());
        let mut bare_trailing_spaces = 0;
        loop {
            match peek(position) {
                None | Some('\n') => break,
                Some('\'') => {
                    position += 1;
                    loop {
                        match peek(position) {
                            None => return Err(format!("line {start_line}: unterminated single quote")),
                            Some('\'') => break,
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                value.push(c);
                                position += 1;
                            }
                        }
                    }
                    position += 1;
                    bare_trailing_spaces = 0;
                }
                Some('"') => {
                    position += 1;
                    loop {
                        match peek(position) {
                            None => return Err(format!("line {start_line}: unterminated double quote")),
                            Some('"') => break,
                            Some('\\') => {
                                let escaped = peek(position + 1);
                                let replacement = match escaped {
                                    Some('n') => Some('\n'),
                                    Some('r') => Some('\r'),
                                    Some('t') => Some('\t'),
                                    Some(c @ ('"' | '\\' | '$' | '`')) => Some(c),
                                    _ => None,
                                };
                                match replacement {
                                    Some(c) => {
                                        value.push(c);
                                        position += 2;
                                    }
                                    None => {
                                        value.push('\\');
                                        position += 1;
                                    }
                                }
                            }
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                value.push(c);
                                position += 1;
                            }
                        }
                    }
                    position += 1;
                    bare_trailing_spaces = 0;
                }
                Some('#') if position > 0 && matches!(characters[position - 1], ' ' | '\t') => {
                    while peek(position).is_some_and(|c| c != '\n') {
                        position += 1;
                    }
                }
                Some(c) => {
                    if c == ' ' || c == '\t' {
                        bare_trailing_spaces += 1;
                    } else {
                        bare_trailing_spaces = 0;
                    }
                    value.push(c);
                    position += 1;
                }
            }
        }
        let keep = value.len() - bare_trailing_spaces;
        value.truncate(keep);
        let value = SecretString::from(value.as_str().to_owned());
        if !secrets.insert(name.clone(), value) {
            duplicates.push(name);
        }
    }
    if !duplicates.is_empty() {
        return Err(format!("variables defined more than once: {}", duplicates.join(", ")));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn value(map: &SecretMap, name: &str) -> String {
        map.get(name).expect(name).expose_secret().to_owned()
    }

    #[test]
    fn dotenv_forms() {
        let text = "# comment\nexport A=plain  # trailing\nB='it'\"'\"'s $HOME\nline two'\nC=\"tab\\there \\\"q\\\"\"\n\nD=\nE = spaced value \n";
        let map = parse_dotenv(text).unwrap();
        assert_eq!(map.names(), ["A", "B", "C", "D", "E"]);
        assert_eq!(value(&map, "A"), "plain");
        assert_eq!(value(&map, "B"), "it's $HOME\nline two");
        assert_eq!(value(&map, "C"), "tab\there \"q\"");
        assert_eq!(value(&map, "D"), "");
        assert_eq!(value(&map, "E"), "spaced value");
    }

    #[test]
    fn dotenv_errors_name_lines_not_values() {
        let error = parse_dotenv("A=1\nnot a line sekret\n").unwrap_err();
        assert_eq!(error, "line 2: expected '=' after not");
        let error = parse_dotenv("A='sekret\n").unwrap_err();
        assert!(error.contains("line 1: unterminated single quote"));
        assert!(!error.contains("sekret"));
        assert!(parse_dotenv("A=1\nA=2\n").unwrap_err().contains("more than once: A"));
    }

    #[test]
    fn env_output_reads_back() {
        let map: SecretMap = [("A", "x'y\"z $q\\n\n"), ("B", "simple"), ("C", " lead")]
            .into_iter()
            .collect();
        let text = map.to_env().unwrap();
        assert!(parse_dotenv(&text).unwrap().same_contents(&map));
    }

    #[test]
    fn json_values_must_be_strings() {
        let error = parse_secrets_text(r#"{"A": "x", "B": 1}"#).unwrap_err();
        assert!(error.contains("not: B"), "{error}");
    }

    #[tokio::test]
    async fn env_source_names_missing_variables_and_refuses_empty() {
        let source = EnvSource::with_variables(
            vec!["A".into(), "MISSING_ONE".into(), "MISSING_TWO".into()],
            None,
            [("A", "1")],
        );
        assert_eq!(
            source.read().await.unwrap_err(),
            SecretsSourceError::MissingVariables(vec!["MISSING_ONE".into(), "MISSING_TWO".into()])
        );
        let source = EnvSource::with_variables(vec![], Some("APP_".into()), [("OTHER", "1")]);
        assert!(matches!(source.read().await.unwrap_err(), SecretsSourceError::Empty(_)));
        let source = EnvSource::with_variables(
            vec!["A".into()],
            Some("APP_".into()),
            [("A", "1"), ("APP_X", "2"), ("OTHER", "3")],
        );
        assert_eq!(source.read().await.unwrap().names(), ["A", "APP_X"]);
    }
}
