//! The job message contract (SPEC section 3): what a Pub/Sub message on the
//! jobs topic may carry, how its secret is checked, and how it becomes a
//! [`JobRequest`], or a permanent [`MessageError`] naming the field and the
//! accepted values. Everything here is pure (no I/O, no logging), so the
//! worker, the CLI and the tests all read messages the same way.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::runtime::job::{RegisteredJob, Registry};
use crate::schedule;

/// The largest `data` accepted, in bytes.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// Attribute naming the job, used when `data` has none.
pub const JOB_ATTRIBUTE: &str = "job";
/// Attribute carrying the shared secret; see [`authenticate`].
pub const SECRET_ATTRIBUTE: &str = "x-job-secret";
/// Attribute carrying an explicit idempotency key.
pub const IDEMPOTENCY_KEY_ATTRIBUTE: &str = "idempotency_key";
/// Attribute saying who published the message; see [`Source`].
pub const SOURCE_ATTRIBUTE: &str = "source";
/// Attribute set by replay: the id of the dead-lettered message replayed.
pub const ORIGINAL_MESSAGE_ID_ATTRIBUTE: &str = "original_message_id";

/// The fields the JSON object in `data` may hold.
pub const DATA_FIELDS: [&str; 4] = ["job", "params", "idempotency_key", "requested_by"];

/// Longest explicit idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARACTERS: usize = 256;
/// Longest `requested_by`, in characters.
pub const MAX_REQUESTED_BY_CHARACTERS: usize = 256;

// A dead-lettered message carries `error` as a Pub/Sub attribute, and
// attribute values are limited to 1024 bytes: an error echoing a huge field
// name or serde message would make the dead-letter publish fail and the
// message loop through redeliveries. These bounds keep `{field}: {problem}`
// under that limit.
const MAX_FIELD_BYTES: usize = 128;
const MAX_PROBLEM_BYTES: usize = 880;
/// How much of a user-supplied value an error quotes.
const MAX_ECHOED_CHARACTERS: usize = 64;

/// A Pub/Sub message as received (independent of the client crate).
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
    pub publish_time: DateTime<Utc>,
    /// Pub/Sub's delivery count (1 = first); only set when the subscription
    /// has a dead-letter policy.
    pub delivery_attempt: Option<u32>,
}

/// Whether a message carries the job secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    Valid,
    /// No `x-job-secret` attribute, or an empty one.
    Missing,
    Invalid,
}

/// Compares the `x-job-secret` attribute with the expected secret in constant
/// time. Never logs or returns the presented value.
pub fn authenticate(attributes: &HashMap<String, String>, expected: &SecretString) -> Authentication {
    // An empty value is what `--attribute=x-job-secret=$JOB_SECRET` sends when
    // the shell variable is unset; "missing" is the more useful diagnosis.
    let presented = match attributes.get(SECRET_ATTRIBUTE) {
        Some(presented) if !presented.is_empty() => presented.as_bytes(),
        _ => return Authentication::Missing,
    };
    let expected = expected.expose_secret().as_bytes();
    // `ct_eq` on slices returns early only when the lengths differ, which
    // reveals the secret's length and nothing about its content.
    let equal = bool::from(presented.ct_eq(expected));
    // Fail closed: an empty configured secret must not accept anything.
    if equal && !expected.is_empty() {
        Authentication::Valid
    } else {
        Authentication::Invalid
    }
}

/// Who published the message, from the `source` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    CloudScheduler,
    /// A person typing `gcloud pubsub topics publish`; the default, since
    /// that is the one publisher that cannot be relied on to set `source`.
    Gcloud,
    Cli,
    Http,
    /// Re-published from the dead-letter topic.
    Replay,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::CloudScheduler,
        Source::Gcloud,
        Source::Cli,
        Source::Http,
        Source::Replay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::CloudScheduler => "cloud-scheduler",
            Source::Gcloud => "gcloud",
            Source::Cli => "cli",
            Source::Http => "http",
            Source::Replay => "replay",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = MessageError;

    fn from_str(text: &str) -> Result<Source, MessageError> {
        Source::ALL
            .into_iter()
            .find(|source| source.as_str() == text)
            .ok_or_else(|| {
                MessageError::new(
                    SOURCE_ATTRIBUTE,
                    format!(
                        "unknown value {}; accepted values: {}",
                        echoed(text),
                        listed(Source::ALL.iter().map(|source| source.as_str()))
                    ),
                )
            })
    }
}

/// A message that passed the contract: what to run, under which key.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// The registry's name.
    pub job: &'static str,
    /// Normalised by the job's `check_params` (defaults filled in).
    pub params: Value,
    pub idempotency_key: String,
    pub source: Source,
    pub requested_by: Option<String>,
    pub message_id: String,
    pub publish_time: DateTime<Utc>,
    pub delivery_attempt: Option<u32>,
    pub original_message_id: Option<String>,
}

/// Why a message cannot be run; permanent: the worker dead-letters it with
/// `error` = Display and `error_kind` = kind().
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct MessageError {
    pub field: String,
    pub problem: String,
}

impl MessageError {
    pub fn kind(&self) -> &'static str {
        "invalid-message"
    }

    fn new(field: impl Into<String>, problem: impl Into<String>) -> MessageError {
        MessageError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Makes the error safe to publish and log: the presented secret removed
    /// (it may have been pasted into the wrong attribute and echoed), control
    /// characters escaped, and both parts bounded.
    fn finished(self, presented_secret: Option<&str>) -> MessageError {
        let clean = |text: String, max_bytes: usize| {
            let text = match presented_secret {
                Some(secret) if !secret.is_empty() => text.replace(secret, "[redacted]"),
                _ => text,
            };
            truncated(escape_control_characters(&text), max_bytes)
        };
        MessageError {
            field: clean(self.field, MAX_FIELD_BYTES),
            problem: clean(self.problem, MAX_PROBLEM_BYTES),
        }
    }
}

/// Reads a message against the contract. Authentication is separate (see
/// [`authenticate`]); the secret never reaches the request or the error.
pub fn parse(message: &IncomingMessage, registry: &Registry, time_zone: Tz) -> Result<JobRequest, MessageError> {
    let presented_secret = message.attributes.get(SECRET_ATTRIBUTE).map(String::as_str);
    parse_unfinished(message, registry, time_zone).map_err(|error| error.finished(presented_secret))
}

fn parse_unfinished(message: &IncomingMessage, registry: &Registry, time_zone: Tz) -> Result<JobRequest, MessageError> {
    let attribute = |name: &str| message.attributes.get(name).map(String::as_str);
    let body = read_body(&message.data)?;

    let registered = resolve_job(body.job.as_deref(), attribute(JOB_ATTRIBUTE), registry)?;
    let job = registered.name();
    let source = match attribute(SOURCE_ATTRIBUTE) {
        Some(text) => text.parse()?,
        None => Source::Gcloud,
    };
    let params = registered
        .check_params(&body.params)
        .map_err(|problem| MessageError::new("params", problem))?;

    let idempotency_key =
        match explicit_idempotency_key(body.idempotency_key.as_deref(), attribute(IDEMPOTENCY_KEY_ATTRIBUTE))? {
            Some(key) => key.to_owned(),
            None => {
                if message.message_id.is_empty() {
                    return Err(MessageError::new(
                        "message_id",
                        "is empty, so no idempotency key can be derived; set `idempotency_key`",
                    ));
                }
                derived_idempotency_key(
                    job,
                    &params,
                    source,
                    &message.message_id,
                    message.publish_time,
                    time_zone,
                )
            }
        };

    let requested_by = match body.requested_by {
        Some(requested_by) => {
            check_text("requested_by", &requested_by, 0, MAX_REQUESTED_BY_CHARACTERS)?;
            // An empty name says no more than an absent one.
            Some(requested_by).filter(|requested_by| !requested_by.is_empty())
        }
        None => None,
    };

    Ok(JobRequest {
        job,
        params,
        idempotency_key,
        source,
        requested_by,
        message_id: message.message_id.clone(),
        publish_time: message.publish_time,
        delivery_attempt: message.delivery_attempt,
        original_message_id: attribute(ORIGINAL_MESSAGE_ID_ATTRIBUTE).map(str::to_owned),
    })
}

/// The key of a message without an explicit one. Scheduled fires share one key
/// per period, so a double or late fire of Cloud Scheduler runs once; a job
/// whose period is divided by a parameter (postgres-backup: the database)
/// gets one key per period and value, `<job>:<value>:<period>`, so two
/// databases fired in the same period are two runs. Anything else is one run
/// per message. `params` are the job's parameters, normalised by the job (so
/// a default database is filled in).
pub fn derived_idempotency_key(
    job: &str,
    params: &Value,
    source: Source,
    message_id: &str,
    publish_time: DateTime<Utc>,
    time_zone: Tz,
) -> String {
    match (source, schedule::scheduled(job)) {
        (Source::CloudScheduler, Some(scheduled)) => {
            let period = scheduled.period.label(publish_time, time_zone);
            match scheduled.scope.and_then(|name| params.get(name)?.as_str()) {
                Some(value) => format!("{job}:{value}:{period}"),
                None => format!("{job}:{period}"),
            }
        }
        _ => format!("{job}:msg:{message_id}"),
    }
}

/// The fields of `data`, typed but not yet validated against the registry.
#[derive(Debug, Default)]
struct Body {
    job: Option<String>,
    /// `Null` when absent, which `check_params` reads as "all defaults".
    params: Value,
    idempotency_key: Option<String>,
    requested_by: Option<String>,
}

fn read_body(data: &[u8]) -> Result<Body, MessageError> {
    if data.len() > MAX_DATA_BYTES {
        return Err(MessageError::new(
            "data",
            format!("is {} bytes; the limit is {MAX_DATA_BYTES} bytes (64 KiB)", data.len()),
        ));
    }
    let text =
        std::str::from_utf8(data).map_err(|error| MessageError::new("data", format!("must be UTF-8 JSON: {error}")))?;
    // A trailing newline from `--message="$(cat file)"` or a stray space is
    // not worth rejecting a message for; only whitespace means "no body".
    if text.trim().is_empty() {
        return Ok(Body::default());
    }
    // serde_json stops at 128 levels of nesting with an error, so deep input
    // cannot exhaust the stack.
    let value: Value =
        serde_json::from_str(text).map_err(|error| MessageError::new("data", format!("is not valid JSON: {error}")))?;
    if !value.is_object() {
        return Err(MessageError::new(
            "data",
            format!(
                "must be a JSON object such as {{\"job\": \"...\"}}, found {}",
                kind_of(&value)
            ),
        ));
    }
    // Read the object again keeping repeated keys: `Value` keeps the last
    // of `{"job": "a", "job": "b"}`, and a message that names two jobs
    // should be refused, not run as whichever came last.
    let Entries(entries) =
        serde_json::from_str(text).map_err(|error| MessageError::new("data", format!("is not valid JSON: {error}")))?;

    let mut body = Body::default();
    let mut seen = HashSet::new();
    for (field, value) in entries {
        if !DATA_FIELDS.contains(&field.as_str()) {
            return Err(MessageError::new(
                shortened(&field),
                format!("unknown field; accepted fields: {}", listed(DATA_FIELDS)),
            ));
        }
        if !seen.insert(field.clone()) {
            return Err(MessageError::new(field, "appears more than once in data"));
        }
        match field.as_str() {
            "job" => body.job = optional_string(&field, value)?,
            "idempotency_key" => body.idempotency_key = optional_string(&field, value)?,
            "requested_by" => body.requested_by = optional_string(&field, value)?,
            "params" => {
                body.params = match value {
                    Value::Null | Value::Object(_) => value,
                    other => {
                        return Err(MessageError::new(
                            field,
                            format!("expected an object (or null), found {}", kind_of(&other)),
                        ))
                    }
                }
            }
            _ => unreachable!("checked against DATA_FIELDS above"),
        }
    }
    Ok(body)
}

/// A string field of `data`; `null` counts as absent, as serde's `Option` would.
fn optional_string(field: &str, value: Value) -> Result<Option<String>, MessageError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text)),
        other => Err(MessageError::new(
            field,
            format!("expected a string, found {}", kind_of(&other)),
        )),
    }
}

fn resolve_job<'a>(
    from_data: Option<&str>,
    from_attribute: Option<&str>,
    registry: &'a Registry,
) -> Result<&'a Arc<dyn RegisteredJob>, MessageError> {
    let accepted = || listed(registry.names());
    let name = match (from_data, from_attribute) {
        (Some(from_data), Some(from_attribute)) if from_data != from_attribute => {
            return Err(MessageError::new(
                "job",
                format!(
                    "data says {} but the `job` attribute says {}; send one, or the same in both",
                    echoed(from_data),
                    echoed(from_attribute)
                ),
            ))
        }
        (Some(name), _) | (None, Some(name)) => name,
        (None, None) => {
            return Err(MessageError::new(
                "job",
                format!(
                    "missing: set `job` in data or as an attribute; accepted jobs: {}",
                    accepted()
                ),
            ))
        }
    };
    registry.get(name).ok_or_else(|| {
        MessageError::new(
            "job",
            format!("unknown job {}; accepted jobs: {}", echoed(name), accepted()),
        )
    })
}

fn explicit_idempotency_key<'a>(
    from_data: Option<&'a str>,
    from_attribute: Option<&'a str>,
) -> Result<Option<&'a str>, MessageError> {
    let key = match (from_data, from_attribute) {
        (Some(from_data), Some(from_attribute)) if from_data != from_attribute => {
            return Err(MessageError::new(
                "idempotency_key",
                format!(
                    "data says {} but the `idempotency_key` attribute says {}; send one, or the same in both",
                    echoed(from_data),
                    echoed(from_attribute)
                ),
            ))
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => return Ok(None),
    };
    check_text("idempotency_key", key, 1, MAX_IDEMPOTENCY_KEY_CHARACTERS)?;
    Ok(Some(key))
}

/// Keys and names end up in logs, ledger rows and object metadata, where
/// control characters forge lines and length is paid for on every lookup.
fn check_text(field: &str, text: &str, min_characters: usize, max_characters: usize) -> Result<(), MessageError> {
    let characters = text.chars().count();
    if characters < min_characters || characters > max_characters {
        return Err(MessageError::new(
            field,
            format!("must be {min_characters} to {max_characters} characters long, got {characters}"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(MessageError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// The entries of a JSON object in document order, repeated keys kept.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor)
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `` `a`, `b`, `c` ``, or a note that there is nothing to accept.
fn listed<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let listed: Vec<String> = names.into_iter().map(|name| format!("`{name}`")).collect();
    if listed.is_empty() {
        "none (nothing is registered)".to_owned()
    } else {
        listed.join(", ")
    }
}

/// A user-supplied value quoted in an error: escaped and shortened, so
/// the message stays one readable line.
fn echoed(value: &str) -> String {
    format!("`{}`", shortened(value))
}

fn shortened(value: &str) -> String {
    let mut shown: String = value.chars().take(MAX_ECHOED_CHARACTERS).collect();
    if value.chars().nth(MAX_ECHOED_CHARACTERS).is_some() {
        shown.push('…');
    }
    escape_control_characters(&shown)
}

fn escape_control_characters(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|character| {
            if character.is_control() {
                character.escape_debug().to_string()
            } else {
                character.to_string()
            }
        })
        .collect()
}

/// Cuts `text` to at most `max_bytes` on a character boundary, marking the cut.
pub(crate) fn truncated(text: String, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text;
    }
    let ellipsis = '…';
    let mut end = max_bytes - ellipsis.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::marker::PhantomData;

    use async_trait::async_trait;
    use chrono_tz::{Europe::Brussels, UTC};
    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::json;

    use super::*;
    use crate::runtime::job::{Job, JobError, Outcome, RunContext};

    // Test jobs named like the real ones, so scheduled keys are exercised.

    trait TestParams: Serialize + DeserializeOwned + Send + Sync + 'static {
        const NAME: &'static str;
    }

    struct TestJob<P>(PhantomData<fn() -> P>);

    #[async_trait]
    impl<P: TestParams> Job for TestJob<P> {
        const NAME: &'static str = P::NAME;
        type Params = P;

        async fn run(&self, _context: &RunContext, _params: P) -> Result<Outcome, JobError> {
            Ok(Outcome::new("done"))
        }
    }

    #[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        #[default]
        Auto,
        Force,
        Skip,
    }

    #[derive(Serialize, serde::Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct PostgresBackupParams {
        database: Option<String>,
        monthly: Mode,
    }

    impl TestParams for PostgresBackupParams {
        const NAME: &'static str = "postgres-backup";
    }

    #[derive(Serialize, serde::Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct SecretsBackupParams {}

    impl TestParams for SecretsBackupParams {
        const NAME: &'static str = "secrets-backup";
    }

    #[derive(Serialize, serde::Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct DrDrillParams {
        keep_database: bool,
    }

    impl TestParams for DrDrillParams {
        const NAME: &'static str = "dr-drill";
    }

    fn registry() -> Registry {
        Registry::new()
            .with(TestJob::<PostgresBackupParams>(PhantomData))
            .with(TestJob::<SecretsBackupParams>(PhantomData))
            .with(TestJob::<DrDrillParams>(PhantomData))
    }

    const SECRET: &str = "Sup3r-SECRET-Value!";
    const MESSAGE_ID: &str = "17171717171";

    /// Published 2026-11-25T23:30Z: Wednesday 25th in UTC, Thursday 26th
    /// (ISO week 48) in Brussels, where the tests read the schedule.
    fn publish_time() -> DateTime<Utc> {
        "2026-11-25T23:30:00Z".parse().unwrap()
    }

    fn message(data: impl Into<Vec<u8>>, attributes: &[(&str, &str)]) -> IncomingMessage {
        let mut attributes: HashMap<String, String> = attributes
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        attributes
            .entry(SECRET_ATTRIBUTE.to_owned())
            .or_insert_with(|| SECRET.to_owned());
        IncomingMessage {
            message_id: MESSAGE_ID.to_owned(),
            data: data.into(),
            attributes,
            publish_time: publish_time(),
            delivery_attempt: Some(3),
        }
    }

    fn defaults() -> Value {
        json!({"database": null, "monthly": "auto"})
    }

    struct Accepted {
        job: &'static str,
        params: Value,
        key: String,
        source: Source,
        requested_by: Option<&'static str>,
        original_message_id: Option<&'static str>,
    }

    fn accepted(job: &'static str, params: Value, key: impl Into<String>, source: Source) -> Accepted {
        Accepted {
            job,
            params,
            key: key.into(),
            source,
            requested_by: None,
            original_message_id: None,
        }
    }

    type Attributes = Vec<(&'static str, &'static str)>;
    /// (why, data, attributes, field, what the problem must say)
    type Rejection = (&'static str, Vec<u8>, Attributes, &'static str, Vec<String>);

    #[test]
    fn parse_accepts_messages_that_follow_the_contract() {
        use Source::*;
        let scheduler = [("source", "cloud-scheduler")];
        let cases: Vec<(&str, Vec<u8>, Attributes, Accepted)> = vec![
            (
                "gcloud with data only",
                br#"{"job":"postgres-backup"}"#.to_vec(),
                vec![],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud),
            ),
            (
                "empty data, job as attribute",
                vec![],
                vec![("job", "postgres-backup")],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud),
            ),
            (
                "whitespace-only data counts as empty",
                b" \n".to_vec(),
                vec![("job", "dr-drill")],
                accepted(
                    "dr-drill",
                    json!({"keep_database": false}),
                    "dr-drill:msg:17171717171",
                    Gcloud,
                ),
            ),
            (
                "empty object, job as attribute",
                b"{}".to_vec(),
                vec![("job", "secrets-backup")],
                accepted("secrets-backup", json!({}), "secrets-backup:msg:17171717171", Gcloud),
            ),
            (
                "same job in data and attribute",
                br#"{"job":"postgres-backup"}"#.to_vec(),
                vec![("job", "postgres-backup")],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud),
            ),
            (
                "params normalised with defaults",
                br#"{"job":"postgres-backup","params":{"monthly":"force"}}"#.to_vec(),
                vec![],
                accepted(
                    "postgres-backup",
                    json!({"database": null, "monthly": "force"}),
                    "postgres-backup:msg:17171717171",
                    Gcloud,
                ),
            ),
            (
                "params null means defaults",
                br#"{"job":"postgres-backup","params":null}"#.to_vec(),
                vec![],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud),
            ),
            (
                "job null in data falls back to the attribute",
                br#"{"job":null}"#.to_vec(),
                vec![("job", "dr-drill")],
                accepted(
                    "dr-drill",
                    json!({"keep_database": false}),
                    "dr-drill:msg:17171717171",
                    Gcloud,
                ),
            ),
            (
                "scheduler, daily: date in the schedule zone",
                vec![],
                vec![("job", "postgres-backup"), scheduler[0]],
                accepted(
                    "postgres-backup",
                    defaults(),
                    "postgres-backup:2026-11-26",
                    CloudScheduler,
                ),
            ),
            (
                "scheduler, weekly: ISO week",
                br#"{"job":"secrets-backup"}"#.to_vec(),
                vec![scheduler[0]],
                accepted("secrets-backup", json!({}), "secrets-backup:2026-W48", CloudScheduler),
            ),
            (
                "scheduler, monthly",
                br#"{"job":"dr-drill"}"#.to_vec(),
                vec![scheduler[0]],
                accepted(
                    "dr-drill",
                    json!({"keep_database": false}),
                    "dr-drill:2026-11",
                    CloudScheduler,
                ),
            ),
            (
                "scheduler with an explicit key: the key wins",
                br#"{"job":"postgres-backup"}"#.to_vec(),
                vec![scheduler[0], ("idempotency_key", "manual-1")],
                accepted("postgres-backup", defaults(), "manual-1", CloudScheduler),
            ),
            (
                "key from data",
                br#"{"job":"postgres-backup","idempotency_key":"from-data"}"#.to_vec(),
                vec![],
                accepted("postgres-backup", defaults(), "from-data", Gcloud),
            ),
            (
                "same key in data and attribute",
                br#"{"job":"postgres-backup","idempotency_key":"same"}"#.to_vec(),
                vec![("idempotency_key", "same")],
                accepted("postgres-backup", defaults(), "same", Gcloud),
            ),
            (
                "key of exactly 256 characters (multi-byte)",
                format!(r#"{{"job":"postgres-backup","idempotency_key":"{}"}}"#, "é".repeat(256)).into_bytes(),
                vec![],
                accepted("postgres-backup", defaults(), "é".repeat(256), Gcloud),
            ),
            ("cli", vec![], vec![("job", "dr-drill"), ("source", "cli")], {
                accepted(
                    "dr-drill",
                    json!({"keep_database": false}),
                    "dr-drill:msg:17171717171",
                    Cli,
                )
            }),
            (
                "http",
                br#"{"job":"postgres-backup"}"#.to_vec(),
                vec![("source", "http")],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Http),
            ),
            (
                "replay keeps the original message id",
                br#"{"job":"postgres-backup"}"#.to_vec(),
                vec![("source", "replay"), ("original_message_id", "99")],
                Accepted {
                    original_message_id: Some("99"),
                    ..accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Replay)
                },
            ),
            (
                "requested_by",
                br#"{"job":"postgres-backup","requested_by":"ana@keshless.example"}"#.to_vec(),
                vec![],
                Accepted {
                    requested_by: Some("ana@keshless.example"),
                    ..accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud)
                },
            ),
            (
                "empty requested_by counts as absent",
                br#"{"job":"postgres-backup","requested_by":""}"#.to_vec(),
                vec![],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud),
            ),
            (
                "unknown and Pub/Sub attributes are ignored",
                br#"{"job":"postgres-backup"}"#.to_vec(),
                vec![
                    ("CloudPubSubDeadLetterSourceSubscription", "backup-jobs-worker"),
                    ("googclient_schemaencoding", "JSON"),
                    ("requested_by", "ignored: only data carries it"),
                ],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud),
            ),
            (
                "data of exactly the limit",
                {
                    let mut data = br#"{"job":"postgres-backup"}"#.to_vec();
                    data.resize(MAX_DATA_BYTES, b' ');
                    data
                },
                vec![],
                accepted("postgres-backup", defaults(), "postgres-backup:msg:17171717171", Gcloud),
            ),
        ];
        let registry = registry();
        for (why, data, attributes, expected) in cases {
            let request = parse(&message(data, &attributes), &registry, Brussels)
                .unwrap_or_else(|error| panic!("{why}: rejected with {error}"));
            assert_eq!(request.job, expected.job, "{why}: job");
            assert_eq!(request.params, expected.params, "{why}: params");
            assert_eq!(request.idempotency_key, expected.key, "{why}: idempotency key");
            assert_eq!(request.source, expected.source, "{why}: source");
            assert_eq!(
                request.requested_by.as_deref(),
                expected.requested_by,
                "{why}: requested_by"
            );
            assert_eq!(
                request.original_message_id.as_deref(),
                expected.original_message_id,
                "{why}: original_message_id"
            );
            assert_eq!(request.message_id, MESSAGE_ID, "{why}: message id");
            assert_eq!(request.publish_time, publish_time(), "{why}: publish time");
            assert_eq!(request.delivery_attempt, Some(3), "{why}: delivery attempt");
            assert!(!format!("{request:?}").contains(SECRET), "{why}: the secret leaked");
        }
    }

    #[test]
    fn parse_rejects_messages_naming_the_field_and_accepted_values() {
        let jobs = "`dr-drill`, `postgres-backup`, `secrets-backup`";
        let fields = "`job`, `params`, `idempotency_key`, `requested_by`";
        let sources = "`cloud-scheduler`, `gcloud`, `cli`, `http`, `replay`";
        let json = |text: &str| text.as_bytes().to_vec();
        let cases: Vec<Rejection> = vec![
            // data
            (
                "oversized",
                {
                    let mut data = json(r#"{"job":"postgres-backup"}"#);
                    data.resize(MAX_DATA_BYTES + 1, b' ');
                    data
                },
                vec![],
                "data",
                vec!["65537 bytes".into(), "limit is 65536 bytes".into()],
            ),
            (
                "not UTF-8",
                vec![b'{', 0xff, b'}'],
                vec![],
                "data",
                vec!["UTF-8".into()],
            ),
            (
                "invalid JSON",
                json("{\"job\":\n  postgres}"),
                vec![],
                "data",
                vec!["not valid JSON".into(), "line 2 column 3".into()],
            ),
            (
                "trailing characters",
                json("{} {}"),
                vec![],
                "data",
                vec!["line 1 column 4".into()],
            ),
            ("truncated JSON", json(r#"{"job":"#), vec![], "data", vec!["EOF".into()]),
            (
                "array",
                json("[]"),
                vec![],
                "data",
                vec!["must be a JSON object".into(), "an array".into()],
            ),
            (
                "string",
                json(r#""postgres-backup""#),
                vec![],
                "data",
                vec!["must be a JSON object".into()],
            ),
            (
                "null",
                json("null"),
                vec![],
                "data",
                vec!["must be a JSON object".into(), "null".into()],
            ),
            (
                "number",
                json("42"),
                vec![],
                "data",
                vec!["must be a JSON object".into(), "a number".into()],
            ),
            (
                "deeply nested array",
                json(&"[".repeat(MAX_DATA_BYTES)),
                vec![],
                "data",
                vec!["recursion limit".into()],
            ),
            (
                "deeply nested params",
                format!(r#"{{"job":"postgres-backup","params":{}"#, r#"{"a":"#.repeat(10_000)).into_bytes(),
                vec![],
                "data",
                vec!["recursion limit".into()],
            ),
            // top-level fields
            (
                "unknown field",
                json(r#"{"job":"postgres-backup","parmas":{}}"#),
                vec![],
                "parmas",
                vec![format!("unknown field; accepted fields: {fields}")],
            ),
            (
                "secret in data is an unknown field",
                json(r#"{"x-job-secret":"x"}"#),
                vec![],
                "x-job-secret",
                vec![fields.into()],
            ),
            (
                "repeated field",
                json(r#"{"job":"postgres-backup","job":"dr-drill"}"#),
                vec![],
                "job",
                vec!["more than once".into()],
            ),
            (
                "job not a string",
                json(r#"{"job":5}"#),
                vec![],
                "job",
                vec!["expected a string".into(), "a number".into()],
            ),
            (
                "params not an object",
                json(r#"{"job":"postgres-backup","params":[]}"#),
                vec![],
                "params",
                vec!["expected an object".into(), "an array".into()],
            ),
            (
                "params a string",
                json(r#"{"job":"postgres-backup","params":"monthly=force"}"#),
                vec![],
                "params",
                vec!["expected an object".into()],
            ),
            (
                "key not a string",
                json(r#"{"job":"postgres-backup","idempotency_key":7}"#),
                vec![],
                "idempotency_key",
                vec!["expected a string".into()],
            ),
            (
                "requested_by not a string",
                json(r#"{"job":"postgres-backup","requested_by":{}}"#),
                vec![],
                "requested_by",
                vec!["expected a string".into(), "an object".into()],
            ),
            // job
            (
                "no job anywhere",
                vec![],
                vec![],
                "job",
                vec!["missing".into(), format!("accepted jobs: {jobs}")],
            ),
            (
                "no job in an empty object",
                json("{}"),
                vec![],
                "job",
                vec![format!("accepted jobs: {jobs}")],
            ),
            (
                "unknown job in data",
                json(r#"{"job":"postgres-bakup"}"#),
                vec![],
                "job",
                vec!["unknown job `postgres-bakup`".into(), format!("accepted jobs: {jobs}")],
            ),
            (
                "unknown job attribute",
                vec![],
                vec![("job", "restore")],
                "job",
                vec!["`restore`".into(), format!("accepted jobs: {jobs}")],
            ),
            (
                "job names are case-sensitive",
                vec![],
                vec![("job", "Postgres-Backup")],
                "job",
                vec!["unknown job".into()],
            ),
            (
                "empty job attribute",
                vec![],
                vec![("job", "")],
                "job",
                vec!["unknown job ``".into()],
            ),
            (
                "data and attribute disagree",
                json(r#"{"job":"postgres-backup"}"#),
                vec![("job", "dr-drill")],
                "job",
                vec!["`postgres-backup`".into(), "`dr-drill`".into()],
            ),
            // params
            (
                "unknown param",
                json(r#"{"job":"postgres-backup","params":{"databse":"x"}}"#),
                vec![],
                "params",
                vec!["unknown field `databse`, expected `database` or `monthly`".into()],
            ),
            (
                "unknown param value",
                json(r#"{"job":"postgres-backup","params":{"monthly":"always"}}"#),
                vec![],
                "params",
                vec!["unknown variant `always`, expected one of `auto`, `force`, `skip`".into()],
            ),
            (
                "param of the wrong type",
                json(r#"{"job":"dr-drill","params":{"keep_database":"yes"}}"#),
                vec![],
                "params",
                vec!["expected a boolean".into()],
            ),
            (
                "nesting inside serde_json's limit reaches check_params",
                format!(
                    r#"{{"job":"postgres-backup","params":{{"database":{}{}}}}}"#,
                    "[".repeat(100),
                    "]".repeat(100)
                )
                .into_bytes(),
                vec![],
                "params",
                vec!["invalid type: sequence, expected a string".into()],
            ),
            (
                "params for a job without any",
                json(r#"{"job":"secrets-backup","params":{"x":1}}"#),
                vec![],
                "params",
                vec!["unknown field `x`".into()],
            ),
            // source
            (
                "unknown source",
                vec![],
                vec![("job", "dr-drill"), ("source", "scheduler")],
                "source",
                vec![
                    "unknown value `scheduler`".into(),
                    format!("accepted values: {sources}"),
                ],
            ),
            (
                "source is case-sensitive",
                vec![],
                vec![("job", "dr-drill"), ("source", "CLI")],
                "source",
                vec![sources.into()],
            ),
            (
                "empty source",
                vec![],
                vec![("job", "dr-drill"), ("source", "")],
                "source",
                vec![sources.into()],
            ),
            // idempotency key
            (
                "keys disagree",
                json(r#"{"job":"postgres-backup","idempotency_key":"a"}"#),
                vec![("idempotency_key", "b")],
                "idempotency_key",
                vec!["`a`".into(), "`b`".into()],
            ),
            (
                "empty key attribute",
                vec![],
                vec![("job", "dr-drill"), ("idempotency_key", "")],
                "idempotency_key",
                vec!["must be 1 to 256 characters long, got 0".into()],
            ),
            (
                "key too long",
                format!(r#"{{"job":"dr-drill","idempotency_key":"{}"}}"#, "k".repeat(257)).into_bytes(),
                vec![],
                "idempotency_key",
                vec!["must be 1 to 256 characters long, got 257".into()],
            ),
            (
                "key with a newline",
                json(r#"{"job":"dr-drill","idempotency_key":"a\nb"}"#),
                vec![],
                "idempotency_key",
                vec!["control characters".into()],
            ),
            (
                "key with a NUL attribute",
                vec![],
                vec![("job", "dr-drill"), ("idempotency_key", "a\0b")],
                "idempotency_key",
                vec!["control characters".into()],
            ),
            // requested_by
            (
                "requested_by too long",
                format!(r#"{{"job":"dr-drill","requested_by":"{}"}}"#, "r".repeat(257)).into_bytes(),
                vec![],
                "requested_by",
                vec!["must be 0 to 256 characters long, got 257".into()],
            ),
            (
                "requested_by with an escape",
                json(r#"{"job":"dr-drill","requested_by":"ana\u001b[31m"}"#),
                vec![],
                "requested_by",
                vec!["control characters".into()],
            ),
        ];
        let registry = registry();
        for (why, data, attributes, field, needles) in cases {
            let error = parse(&message(data, &attributes), &registry, Brussels).expect_err(why);
            assert_eq!(error.field, field, "{why}: field of {error}");
            for needle in needles {
                assert!(
                    error.problem.contains(&needle),
                    "{why}: {error:?} does not say {needle:?}"
                );
            }
            assert_eq!(error.kind(), "invalid-message");
            assert!(!error.to_string().contains(SECRET), "{why}: the secret leaked");
            assert!(error.to_string().len() <= 1024, "{why}: too long for an attribute");
        }
    }

    #[test]
    fn errors_stay_short_single_line_and_secret_free() {
        let registry = registry();
        let long_key = format!("x{}", "\n".repeat(5000));
        let huge_variant = "v".repeat(50_000);
        let cases: Vec<(&str, IncomingMessage)> = vec![
            (
                "huge unknown field with newlines",
                message(format!(r#"{{"{}":1}}"#, long_key.escape_default()), &[]),
            ),
            (
                "huge value echoed by serde",
                message(
                    format!(r#"{{"job":"postgres-backup","params":{{"monthly":"{huge_variant}"}}}}"#),
                    &[],
                ),
            ),
            ("secret pasted as the job", message(vec![], &[("job", SECRET)])),
            (
                "secret pasted as the source",
                message(vec![], &[("job", "dr-drill"), ("source", SECRET)]),
            ),
            (
                "secret inside a params value",
                message(
                    format!(r#"{{"job":"postgres-backup","params":{{"monthly":"{SECRET}"}}}}"#),
                    &[],
                ),
            ),
        ];
        for (why, message) in cases {
            let error = parse(&message, &registry, UTC).expect_err(why);
            let text = error.to_string();
            assert!(text.len() <= 1024, "{why}: {} bytes", text.len());
            assert!(!text.contains('\n'), "{why}: {text:?}");
            assert!(!text.contains(SECRET), "{why}: {text:?}");
        }
    }

    #[test]
    fn derived_keys_follow_the_schedule() {
        use Source::*;
        let cases: &[(&str, Source, &str, Tz, &str)] = &[
            (
                "postgres-backup",
                CloudScheduler,
                "2026-11-25T23:30:00Z",
                Brussels,
                "postgres-backup:app:2026-11-26",
            ),
            (
                "postgres-backup",
                CloudScheduler,
                "2026-11-25T23:30:00Z",
                UTC,
                "postgres-backup:app:2026-11-25",
            ),
            (
                "documents-inventory",
                CloudScheduler,
                "2026-11-26T03:00:00Z",
                UTC,
                "documents-inventory:2026-11-26",
            ),
            (
                "secrets-backup",
                CloudScheduler,
                "2026-11-29T04:00:00Z",
                UTC,
                "secrets-backup:2026-W48",
            ),
            (
                "cleanup-old-backups",
                CloudScheduler,
                "2026-11-29T05:00:00Z",
                UTC,
                "cleanup-old-backups:2026-W48",
            ),
            (
                "dr-drill",
                CloudScheduler,
                "2026-12-01T06:00:00Z",
                UTC,
                "dr-drill:2026-12",
            ),
            // A late fire still lands in its period; the next period does not.
            (
                "dr-drill",
                CloudScheduler,
                "2026-12-31T23:59:59Z",
                UTC,
                "dr-drill:2026-12",
            ),
            (
                "dr-drill",
                CloudScheduler,
                "2026-12-31T23:30:00Z",
                Brussels,
                "dr-drill:2027-01",
            ),
            // Not scheduled, or not from the scheduler: one run per message.
            ("restore", CloudScheduler, "2026-11-26T02:00:00Z", UTC, "restore:msg:42"),
            (
                "postgres-backup",
                Gcloud,
                "2026-11-26T02:00:00Z",
                UTC,
                "postgres-backup:msg:42",
            ),
            (
                "postgres-backup",
                Cli,
                "2026-11-26T02:00:00Z",
                UTC,
                "postgres-backup:msg:42",
            ),
            (
                "postgres-backup",
                Http,
                "2026-11-26T02:00:00Z",
                UTC,
                "postgres-backup:msg:42",
            ),
            (
                "postgres-backup",
                Replay,
                "2026-11-26T02:00:00Z",
                UTC,
                "postgres-backup:msg:42",
            ),
        ];
        // Every job gets the same parameters: only a job whose period is
        // divided by `database` (postgres-backup) puts it in the key.
        let params = serde_json::json!({"database": "app"});
        for (job, source, at, zone, expected) in cases {
            let at: DateTime<Utc> = at.parse().unwrap();
            assert_eq!(
                derived_idempotency_key(job, &params, *source, "42", at, *zone),
                *expected,
                "{job} from {source} at {at} in {zone}"
            );
        }
    }

    #[test]
    fn databases_fired_in_one_period_get_their_own_keys() {
        let at: DateTime<Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
        let key =
            |params: Value| derived_idempotency_key("postgres-backup", &params, Source::CloudScheduler, "42", at, UTC);
        assert_eq!(
            key(serde_json::json!({"database": "ledger"})),
            "postgres-backup:ledger:2026-12-01"
        );
        assert_eq!(
            key(serde_json::json!({"database": "payments"})),
            "postgres-backup:payments:2026-12-01"
        );
        // Without the parameter (a job that does not fill it in) the period alone.
        assert_eq!(key(Value::Null), "postgres-backup:2026-12-01");
    }

    #[test]
    fn empty_message_id_cannot_become_a_key() {
        let mut incoming = message(vec![], &[("job", "dr-drill")]);
        incoming.message_id.clear();
        let error = parse(&incoming, &registry(), UTC).unwrap_err();
        assert_eq!(error.field, "message_id");
        // An explicit key does not need the message id.
        incoming.attributes.insert("idempotency_key".into(), "k".into());
        assert_eq!(parse(&incoming, &registry(), UTC).unwrap().idempotency_key, "k");
    }

    #[test]
    fn empty_registry_says_so() {
        let error = parse(&message(vec![], &[("job", "dr-drill")]), &Registry::new(), UTC).unwrap_err();
        assert_eq!(error.field, "job");
        assert!(error.problem.contains("nothing is registered"), "{error}");
    }

    #[test]
    fn source_round_trips_through_text_and_serde() {
        let cases = [
            (Source::CloudScheduler, "cloud-scheduler"),
            (Source::Gcloud, "gcloud"),
            (Source::Cli, "cli"),
            (Source::Http, "http"),
            (Source::Replay, "replay"),
        ];
        assert_eq!(Source::ALL.len(), cases.len());
        for (source, text) in cases {
            assert_eq!(source.as_str(), text);
            assert_eq!(source.to_string(), text);
            assert_eq!(text.parse::<Source>().unwrap(), source);
            assert_eq!(serde_json::to_value(source).unwrap(), json!(text));
            assert_eq!(serde_json::from_value::<Source>(json!(text)).unwrap(), source);
        }
        assert!("Cloud-Scheduler".parse::<Source>().is_err());
        assert!(serde_json::from_value::<Source>(json!("cloud_scheduler")).is_err());
    }

    #[test]
    fn authenticate_compares_the_secret() {
        use Authentication::*;
        let cases: &[(&str, Option<&str>, &str, Authentication)] = &[
            ("equal", Some(SECRET), SECRET, Valid),
            ("absent", None, SECRET, Missing),
            ("empty, like an unset shell variable", Some(""), SECRET, Missing),
            ("different, same length", Some("Sup3r-SECRET-Value?"), SECRET, Invalid),
            ("prefix", Some("Sup3r-SECRET"), SECRET, Invalid),
            ("longer", Some("Sup3r-SECRET-Value!!"), SECRET, Invalid),
            ("case differs", Some("sup3r-secret-value!"), SECRET, Invalid),
            ("trailing newline", Some("Sup3r-SECRET-Value!\n"), SECRET, Invalid),
            ("empty expected secret accepts nothing", Some("x"), "", Invalid),
        ];
        for (why, presented, expected, outcome) in cases {
            let mut attributes = HashMap::from([("job".to_owned(), "dr-drill".to_owned())]);
            if let Some(presented) = presented {
                attributes.insert(SECRET_ATTRIBUTE.to_owned(), presented.to_string());
            }
            let expected = SecretString::from(expected.to_string());
            assert_eq!(authenticate(&attributes, &expected), *outcome, "{why}");
        }
        // The secret is the attribute's value only, never the job or key.
        let attributes = HashMap::from([("job".to_owned(), SECRET.to_owned())]);
        assert_eq!(authenticate(&attributes, &SecretString::from(SECRET)), Missing);
    }

    #[test]
    fn truncated_respects_character_boundaries() {
        let cases: &[(&str, usize, &str)] = &[
            ("short", 10, "short"),
            ("exactly10!", 10, "exactly10!"),
            ("abcdefghijk", 10, "abcdefg…"),
            ("ééééé", 8, "éé…"),
        ];
        for (text, max_bytes, expected) in cases {
            let result = truncated(text.to_string(), *max_bytes);
            assert_eq!(result, *expected, "{text:?} to {max_bytes}");
            assert!(result.len() <= *max_bytes);
        }
    }

    // Never panic, whatever arrives. Cases are bounded so this stays fast in
    // debug builds.

    fn attribute_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("job".to_owned()),
            Just("source".to_owned()),
            Just("idempotency_key".to_owned()),
            Just("original_message_id".to_owned()),
            Just("requested_by".to_owned()),
            "[a-zA-Z_-]{1,12}",
        ]
    }

    fn attribute_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("postgres-backup".to_owned()),
            Just("secrets-backup".to_owned()),
            Just("dr-drill".to_owned()),
            Just("cloud-scheduler".to_owned()),
            Just("cli".to_owned()),
            "[a-z0-9:_ -]{0,20}",
            "\\PC{0,10}",
            ".{0,10}",
        ]
    }

    fn attributes() -> impl Strategy<Value = HashMap<String, String>> {
        proptest::collection::hash_map(attribute_name(), attribute_value(), 0..6).prop_map(|mut attributes| {
            attributes.insert(SECRET_ATTRIBUTE.to_owned(), SECRET.to_owned());
            attributes
        })
    }

    fn json_ish() -> impl Strategy<Value = String> {
        r#"(\{|\}|\[|\]|"|:|,| |\\|"job"|"params"|"idempotency_key"|"requested_by"|"source"|"postgres-backup"|"dr-drill"|"secrets-backup"|"monthly"|"force"|"database"|null|true|1|-0\.5e9){0,40}"#
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("postgres-backup"),
                Just("dr-drill"),
                Just("secrets-backup"),
                Just("auto"),
                Just("force"),
                Just(""),
            ]
            .prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("job".to_owned()),
                        Just("params".to_owned()),
                        Just("idempotency_key".to_owned()),
                        Just("requested_by".to_owned()),
                        Just("database".to_owned()),
                        Just("monthly".to_owned()),
                        Just("keep_database".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..4,
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn check_never_panics(data: Vec<u8>, attributes: HashMap<String, String>) -> Result<(), TestCaseError> {
        let incoming = IncomingMessage {
            message_id: MESSAGE_ID.to_owned(),
            data,
            attributes,
            publish_time: publish_time(),
            delivery_attempt: None,
        };
        let registry = registry();
        match parse(&incoming, &registry, Brussels) {
            Ok(request) => {
                prop_assert!(registry.names().contains(&request.job));
                let key_characters = request.idempotency_key.chars().count();
                prop_assert!((1..=MAX_IDEMPOTENCY_KEY_CHARACTERS).contains(&key_characters));
                let shown = format!("{request:?}");
                prop_assert!(!shown.contains(SECRET));
            }
            Err(error) => {
                let text = error.to_string();
                prop_assert!(text.len() <= 1024, "{} bytes", text.len());
                prop_assert!(!text.contains(SECRET));
                prop_assert!(!text.chars().any(char::is_control), "{text:?}");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            attributes in attributes(),
        ) {
            check_never_panics(data, attributes)?;
        }

        #[test]
        fn parse_never_panics_on_json_ish_text(data in json_ish(), attributes in attributes()) {
            check_never_panics(data.into_bytes(), attributes)?;
        }

        #[test]
        fn parse_never_panics_on_json_objects(
            object in proptest::collection::btree_map(
                prop_oneof![
                    Just("job".to_owned()),
                    Just("params".to_owned()),
                    Just("idempotency_key".to_owned()),
                    Just("requested_by".to_owned()),
                    "[a-z_]{1,8}",
                ],
                json_value(),
                0..5,
            ),
            attributes in attributes(),
        ) {
            let data = serde_json::to_vec(&Value::Object(object.into_iter().collect())).unwrap();
            check_never_panics(data, attributes)?;
        }
    }
}
