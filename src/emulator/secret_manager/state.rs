//! The fake's model of Secret Manager: secrets (metadata as the REST JSON),
//! their versions and payloads, and the documented rules: version numbers
//! from 1 in order; `latest` is the newest version whatever its state;
//! payloads only of ENABLED versions; DESTROYED is final; a secret with a
//! `versionDestroyTtl` turns a destroyed version DISABLED until the TTL has
//! passed; a client CRC32C on `addVersion` is verified; list pages in name
//! order (secrets) and newest first (versions).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::filter::{Filter, Filterable};

/// Payloads larger than this are refused, as by the real service.
pub const MAXIMUM_PAYLOAD_BYTES: usize = 64 * 1024;

/// An error as the REST API returns it: HTTP code, status name, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub http_status: u16,
    pub status: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(http_status: u16, status: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            http_status,
            status,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "INVALID_ARGUMENT", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "NOT_FOUND", message)
    }
    pub fn precondition(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "FAILED_PRECONDITION", message)
    }

    /// `{"error": {"code": 400, "message": "...", "status": "FAILED_PRECONDITION"}}`.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.http_status, "message": self.message, "status": self.status}})
    }
}

/// A version's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Enabled,
    Disabled,
    Destroyed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Enabled => "ENABLED",
            State::Disabled => "DISABLED",
            State::Destroyed => "DESTROYED",
        }
    }
    /// The proto enum number, for `$alt=json;enum-encoding=int`.
    fn number(self) -> i64 {
        match self {
            State::Enabled => 1,
            State::Disabled => 2,
            State::Destroyed => 3,
        }
    }
}

struct Version {
    number: u64,
    state: State,
    create_time: String,
    destroy_time: Option<String>,
    scheduled_destroy_time: Option<String>,
    payload: Option<Zeroizing<Vec<u8>>>,
    client_checksum: bool,
    etag: u64,
}

struct StoredSecret {
    /// The resource's JSON without `name`, `createTime`, `etag` (added on output).
    metadata: Map<String, Value>,
    create_time: String,
    etag: u64,
    versions: Vec<Version>,
}

/// A secret as [`Store::dump`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpedSecret {
    /// The metadata as stored (no `name`, `createTime`, `etag`).
    pub metadata: Map<String, Value>,
    pub versions: Vec<DumpedVersion>,
}

/// A version as [`Store::dump`] shows it.
#[derive(Clone, PartialEq)]
pub struct DumpedVersion {
    pub number: u64,
    pub state: &'static str,
    pub payload: Option<Vec<u8>>,
}

impl std::fmt::Debug for DumpedVersion {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DumpedVersion")
            .field("number", &self.number)
            .field("state", &self.state)
            .field("payload_bytes", &self.payload.as_ref().map(Vec::len))
            .finish()
    }
}

/// How a response encodes enums (`$alt=json;enum-encoding=int` asks for numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnumEncoding {
    #[default]
    Names,
    Numbers,
}

/// Every project's secrets, keyed by full resource name.
#[derive(Default)]
pub struct Store {
    secrets: BTreeMap<String, StoredSecret>,
    /// The cap on `pageSize` (the real service caps at 25 000).
    pub maximum_page_size: usize,
    /// What a list returns when `pageSize` is 0 or absent.
    pub default_page_size: usize,
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `projects/P` or `projects/P/locations/L`.
fn valid_parent(parent: &str) -> bool {
    let parts: Vec<&str> = parent.split('/').collect();
    matches!(parts.as_slice(), ["projects", p] if !p.is_empty())
        || matches!(parts.as_slice(), ["projects", p, "locations", l] if !p.is_empty() && !l.is_empty())
}

fn valid_secret_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_label_key(key: &str) -> bool {
    let mut characters = key.chars();
    matches!(characters.next(), Some(c) if c.is_ascii_lowercase())
        && key.len() <= 63
        && characters.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Field mask paths as sent (`versionAliases` or `version_aliases`) → camelCase.
fn camel_case(path: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for character in path.chars() {
        if character == '_' {
            upper = true;
        } else if upper {
            out.extend(character.to_uppercase());
            upper = false;
        } else {
            out.push(character);
        }
    }
    out
}

/// A page token: the last name returned, base64 (opaque to clients).
fn encode_page_token(last: &str) -> String {
    BASE64.encode(last)
}

fn read_page_token(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    BASE64
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("Invalid page token."))
}

struct SecretView<'a> {
    name: &'a str,
    secret: &'a StoredSecret,
}

impl Filterable for SecretView<'_> {
    fn field(&self, field: &str) -> Result<Option<Vec<String>>, String> {
        let text = |value: Option<&Value>| value.and_then(Value::as_str).map(|text| vec![text.to_owned()]);
        Ok(match field {
            "name" => Some(vec![self.name.to_owned()]),
            "create_time" => Some(vec![self.secret.create_time.clone()]),
            "expire_time" => text(self.secret.metadata.get("expireTime")),
            "topics" => self
                .secret
                .metadata
                .get("topics")
                .and_then(Value::as_array)
                .map(|topics| {
                    topics
                        .iter()
                        .filter_map(|topic| topic.get("name").and_then(Value::as_str).map(str::to_owned))
                        .collect()
                }),
            other => {
                let (map, key) = match other.split_once('.') {
                    Some(("labels", key)) => ("labels", key),
                    Some(("annotations", key)) => ("annotations", key),
                    _ => return Err(format!("Invalid filter: unknown field {other:?}")),
                };
                text(self.secret.metadata.get(map).and_then(|map| map.get(key)))
            }
        })
    }
}

fn secret_field_known(field: &str) -> bool {
    matches!(field, "name" | "create_time" | "expire_time" | "topics")
        || field.starts_with("labels.")
        || field.starts_with("annotations.")
}

struct VersionView<'a> {
    name: String,
    version: &'a Version,
}

impl Filterable for VersionView<'_> {
    fn field(&self, field: &str) -> Result<Option<Vec<String>>, String> {
        Ok(match field {
            "name" => Some(vec![self.name.clone()]),
            "state" => Some(vec![self.version.state.name().to_owned()]),
            "create_time" => Some(vec![self.version.create_time.clone()]),
            other => return Err(format!("Invalid filter: unknown field {other:?}")),
        })
    }
}

impl Store {
    pub fn new(maximum_page_size: usize) -> Store {
        Store {
            secrets: BTreeMap::new(),
            maximum_page_size,
            default_page_size: maximum_page_size.min(25_000),
        }
    }

    fn secret(&self, name: &str) -> Result<&StoredSecret, ApiError> {
        self.secrets
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("Secret [{name}] not found or has no versions.")))
    }

    fn secret_mut(&mut self, name: &str) -> Result<&mut StoredSecret, ApiError> {
        self.secrets
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("Secret [{name}] not found or has no versions.")))
    }

    fn secret_json(&self, name: &str, secret: &StoredSecret) -> Value {
        let mut object = secret.metadata.clone();
        object.insert("name".into(), Value::String(name.to_owned()));
        object.insert("createTime".into(), Value::String(secret.create_time.clone()));
        object.insert("etag".into(), Value::String(format!("\"{}\"", secret.etag)));
        Value::Object(object)
    }

    fn version_json(&self, secret: &str, version: &Version, encoding: EnumEncoding) -> Value {
        let mut object = Map::new();
        object.insert("name".into(), json!(format!("{secret}/versions/{}", version.number)));
        object.insert("createTime".into(), json!(version.create_time));
        if let Some(time) = &version.destroy_time {
            object.insert("destroyTime".into(), json!(time));
        }
        if let Some(time) = &version.scheduled_destroy_time {
            object.insert("scheduledDestroyTime".into(), json!(time));
        }
        object.insert(
            "state".into(),
            match encoding {
                EnumEncoding::Names => json!(version.state.name()),
                EnumEncoding::Numbers => json!(version.state.number()),
            },
        );
        object.insert("etag".into(), json!(format!("\"{}\"", version.etag)));
        if version.client_checksum {
            object.insert("clientSpecifiedPayloadChecksum".into(), json!(true));
        }
        object.insert("replicationStatus".into(), json!({"automatic": {}}));
        Value::Object(object)
    }

    /// `GET {parent}/secrets`.
    pub fn list_secrets(
        &self,
        parent: &str,
        page_size: usize,
        page_token: &str,
        filter: &str,
    ) -> Result<Value, ApiError> {
        if !valid_parent(parent) {
            return Err(ApiError::invalid(format!(
                "Invalid resource field value in the request: parent {parent:?}"
            )));
        }
        let filter = parse_filter(filter, &secret_field_known)?;
        let after = read_page_token(page_token)?;
        let size = self.page_size(page_size);
        let prefix = format!("{parent}/secrets/");
        let mut matching = Vec::new();
        for (name, secret) in self.secrets.range(prefix.clone()..) {
            if !name.starts_with(&prefix) {
                break;
            }
            // `projects/P/secrets/...` must not list regional secrets (their names differ) — guaranteed by the prefix.
            if let Some(filter) = &filter {
                if !filter
                    .matches(&SecretView { name, secret })
                    .map_err(ApiError::invalid)?
                {
                    continue;
                }
            }
            matching.push((name, secret));
        }
        let total = matching.len();
        let start = match &after {
            Some(last) => matching
                .iter()
                .position(|(name, _)| name.as_str() > last.as_str())
                .unwrap_or(total),
            None => 0,
        };
        let page: Vec<_> = matching[start..].iter().take(size).collect();
        let mut body = json!({
            "secrets": page.iter().map(|(name, secret)| self.secret_json(name, secret)).collect::<Vec<_>>(),
            "totalSize": total,
        });
        if start + page.len() < total {
            body["nextPageToken"] = json!(encode_page_token(page.last().expect("non-empty").0));
        }
        Ok(body)
    }

    fn page_size(&self, requested: usize) -> usize {
        if requested == 0 {
            self.default_page_size.max(1)
        } else {
            requested.min(self.maximum_page_size.max(1))
        }
    }

    /// `POST {parent}/secrets?secretId=ID`.
    pub fn create_secret(&mut self, parent: &str, id: &str, body: Value) -> Result<Value, ApiError> {
        if !valid_parent(parent) {
            return Err(ApiError::invalid(format!("Invalid parent {parent:?}")));
        }
        if !valid_secret_id(id) {
            return Err(ApiError::invalid(format!(
                "Invalid secretId {id:?}: up to 255 letters, digits, - and _"
            )));
        }
        let Value::Object(mut metadata) = body else {
            return Err(ApiError::invalid("The request body must be a Secret object."));
        };
        let regional = parent.contains("/locations/");
        match (regional, metadata.contains_key("replication")) {
            (false, false) => {
                return Err(ApiError::invalid(
                    "Secret.replication is required for global secrets (automatic or userManaged).",
                ))
            }
            (true, true) => {
                return Err(ApiError::invalid(
                    "Regional secrets cannot set Secret.replication; their data stays in the location.",
                ))
            }
            _ => {}
        }
        if let Some(labels) = metadata.get("labels").and_then(Value::as_object) {
            if let Some(bad) = labels.keys().find(|key| !valid_label_key(key)) {
                return Err(ApiError::invalid(format!(
                    "Invalid label key {bad:?}: lowercase letters, digits, _ and -, starting with a letter"
                )));
            }
        }
        if metadata.contains_key("versionAliases") {
            return Err(ApiError::invalid(
                "versionAliases must point to existing versions; set them once the versions exist.",
            ));
        }
        // `ttl` is input only: it becomes `expireTime`.
        if let Some(ttl) = metadata.remove("ttl") {
            let seconds = ttl
                .as_str()
                .and_then(|text| text.strip_suffix('s'))
                .and_then(|seconds| seconds.parse::<f64>().ok())
                .ok_or_else(|| ApiError::invalid("Invalid ttl: expected a duration like \"3600s\""))?;
            let expire = Utc::now() + chrono::Duration::milliseconds((seconds * 1000.0) as i64);
            metadata.insert(
                "expireTime".into(),
                json!(expire.to_rfc3339_opts(SecondsFormat::Micros, true)),
            );
        }
        for output_only in ["name", "createTime", "etag"] {
            metadata.remove(output_only);
        }
        let name = format!("{parent}/secrets/{id}");
        if self.secrets.contains_key(&name) {
            return Err(ApiError::new(
                409,
                "ALREADY_EXISTS",
                format!("Secret [{name}] already exists."),
            ));
        }
        self.secrets.insert(
            name.clone(),
            StoredSecret {
                metadata,
                create_time: now_text(),
                etag: 1,
                versions: Vec::new(),
            },
        );
        Ok(self.secret_json(&name, self.secret(&name)?))
    }

    pub fn get_secret(&self, name: &str) -> Result<Value, ApiError> {
        Ok(self.secret_json(name, self.secret(name)?))
    }

    /// `PATCH {name}?updateMask=a,b`: the masked fields replaced (removed when absent).
    pub fn update_secret(&mut self, name: &str, mask: &str, body: Value) -> Result<Value, ApiError> {
        let Value::Object(update) = body else {
            return Err(ApiError::invalid("The request body must be a Secret object."));
        };
        if mask.is_empty() {
            return Err(ApiError::invalid("updateMask is required."));
        }
        let paths: Vec<String> = mask.split(',').map(|path| camel_case(path.trim())).collect();
        let version_count = self.secret(name)?.versions.len() as u64;
        for path in &paths {
            match path.as_str() {
                "labels" | "annotations" | "topics" | "rotation" | "expireTime" | "ttl" | "versionDestroyTtl" => {}
                "versionAliases" => {
                    if let Some(aliases) = update.get("versionAliases").and_then(Value::as_object) {
                        for (alias, number) in aliases {
                            let number = match number {
                                Value::String(text) => text.parse::<u64>().ok(),
                                other => other.as_u64(),
                            };
                            if !number.is_some_and(|number| (1..=version_count).contains(&number)) {
                                return Err(ApiError::invalid(format!(
                                    "Alias {alias:?} points to a version that does not exist."
                                )));
                            }
                        }
                    }
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "Unsupported or immutable field in updateMask: {other}"
                    )))
                }
            }
        }
        let secret = self.secret_mut(name)?;
        for path in paths {
            match update.get(&path) {
                Some(value) => {
                    secret.metadata.insert(path, value.clone());
                }
                None => {
                    secret.metadata.remove(&path);
                }
            }
        }
        secret.etag += 1;
        self.get_secret(name)
    }

    pub fn delete_secret(&mut self, name: &str) -> Result<Value, ApiError> {
        self.secrets
            .remove(name)
            .map(|_| json!({}))
            .ok_or_else(|| ApiError::not_found(format!("Secret [{name}] not found.")))
    }

    /// `POST {secret}:addVersion` with `{"payload": {"data": b64, "dataCrc32c": "N"}}`.
    pub fn add_version(&mut self, secret_name: &str, body: &Value, encoding: EnumEncoding) -> Result<Value, ApiError> {
        let payload = body
            .get("payload")
            .ok_or_else(|| ApiError::invalid("payload is required."))?;
        let data = payload.get("data").and_then(Value::as_str).unwrap_or("");
        let data = Zeroizing::new(
            BASE64
                .decode(data)
                .map_err(|_| ApiError::invalid("payload.data is not valid base64."))?,
        );
        if data.len() > MAXIMUM_PAYLOAD_BYTES {
            return Err(ApiError::invalid(format!(
                "Secret payload data must be no larger than {MAXIMUM_PAYLOAD_BYTES} bytes."
            )));
        }
        let checksum = match payload.get("dataCrc32c") {
            None | Some(Value::Null) => None,
            // int64 fields are decimal strings in JSON; numbers are accepted too.
            Some(Value::String(text)) => Some(
                text.parse::<i64>()
                    .map_err(|_| ApiError::invalid("payload.dataCrc32c is not an int64."))?,
            ),
            Some(other) => Some(
                other
                    .as_i64()
                    .ok_or_else(|| ApiError::invalid("payload.dataCrc32c is not an int64."))?,
            ),
        };
        let computed = i64::from(crc32c::crc32c(&data));
        if checksum.is_some_and(|checksum| checksum != computed) {
            return Err(ApiError::invalid(
                "Checksum mismatch: payload.dataCrc32c does not match the CRC32C of payload.data.",
            ));
        }
        let secret = self.secret_mut(secret_name)?;
        if let Some(expire) = secret
            .metadata
            .get("expireTime")
            .and_then(Value::as_str)
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        {
            if expire <= Utc::now() {
                return Err(ApiError::not_found(format!("Secret [{secret_name}] has expired.")));
            }
        }
        let number = secret.versions.last().map_or(1, |version| version.number + 1);
        secret.versions.push(Version {
            number,
            state: State::Enabled,
            create_time: now_text(),
            destroy_time: None,
            scheduled_destroy_time: None,
            payload: Some(data),
            client_checksum: checksum.is_some(),
            etag: 1,
        });
        let secret = self.secret(secret_name)?;
        Ok(self.version_json(secret_name, secret.versions.last().expect("just pushed"), encoding))
    }

    /// `latest` (the newest version whatever its state), a number, or an alias.
    fn resolve(&self, secret_name: &str, version: &str) -> Result<usize, ApiError> {
        let secret = self.secret(secret_name)?;
        let missing = || ApiError::not_found(format!("Secret Version [{secret_name}/versions/{version}] not found."));
        if version == "latest" {
            return secret.versions.len().checked_sub(1).ok_or_else(missing);
        }
        let number = match version.parse::<u64>() {
            Ok(number) => number,
            Err(_) => secret
                .metadata
                .get("versionAliases")
                .and_then(|aliases| aliases.get(version))
                .and_then(|number| {
                    number
                        .as_str()
                        .and_then(|text| text.parse::<u64>().ok())
                        .or(number.as_u64())
                })
                .ok_or_else(missing)?,
        };
        secret
            .versions
            .iter()
            .position(|stored| stored.number == number)
            .ok_or_else(missing)
    }

    pub fn get_version(&self, secret_name: &str, version: &str, encoding: EnumEncoding) -> Result<Value, ApiError> {
        let index = self.resolve(secret_name, version)?;
        let secret = self.secret(secret_name)?;
        Ok(self.version_json(secret_name, &secret.versions[index], encoding))
    }

    /// `GET {version}:access`: the payload of an ENABLED version, with
    /// `dataCrc32c` (a decimal string, as int64 is in JSON); `wrong_checksum`
    /// makes it lie (a fault switch).
    pub fn access(&self, secret_name: &str, version: &str, wrong_checksum: bool) -> Result<Value, ApiError> {
        let index = self.resolve(secret_name, version)?;
        let stored = &self.secret(secret_name)?.versions[index];
        let name = format!("{secret_name}/versions/{}", stored.number);
        match (&stored.payload, stored.state) {
            (Some(payload), State::Enabled) => {
                let mut checksum = i64::from(crc32c::crc32c(payload));
                if wrong_checksum {
                    checksum ^= 0x5a5a;
                }
                Ok(json!({
                    "name": name,
                    "payload": {"data": BASE64.encode(payload.as_slice()), "dataCrc32c": checksum.to_string()},
                }))
            }
            (_, state) => Err(ApiError::precondition(format!(
                "Secret Version [{name}] is in {} state.",
                state.name()
            ))),
        }
    }

    /// `GET {secret}/versions`: newest first.
    pub fn list_versions(
        &self,
        secret_name: &str,
        page_size: usize,
        page_token: &str,
        filter: &str,
        encoding: EnumEncoding,
    ) -> Result<Value, ApiError> {
        let secret = self.secret(secret_name)?;
        let filter = parse_filter(filter, &|field| matches!(field, "name" | "state" | "create_time"))?;
        let after: Option<u64> = match read_page_token(page_token)? {
            Some(text) => Some(text.parse().map_err(|_| ApiError::invalid("Invalid page token."))?),
            None => None,
        };
        let mut matching = Vec::new();
        for version in secret.versions.iter().rev() {
            if let Some(filter) = &filter {
                let view = VersionView {
                    name: format!("{secret_name}/versions/{}", version.number),
                    version,
                };
                if !filter.matches(&view).map_err(ApiError::invalid)? {
                    continue;
                }
            }
            matching.push(version);
        }
        let total = matching.len();
        let start = match after {
            Some(last) => matching
                .iter()
                .position(|version| version.number < last)
                .unwrap_or(total),
            None => 0,
        };
        let page: Vec<&&Version> = matching[start..].iter().take(self.page_size(page_size)).collect();
        let mut body = json!({
            "versions": page.iter().map(|version| self.version_json(secret_name, version, encoding)).collect::<Vec<_>>(),
            "totalSize": total,
        });
        if start + page.len() < total {
            body["nextPageToken"] = json!(encode_page_token(&page.last().expect("non-empty").number.to_string()));
        }
        Ok(body)
    }

    /// `:enable`, `:disable`, `:destroy`.
    pub fn change_state(
        &mut self,
        secret_name: &str,
        version: &str,
        action: &str,
        encoding: EnumEncoding,
    ) -> Result<Value, ApiError> {
        let index = self.resolve(secret_name, version)?;
        let secret = self.secret_mut(secret_name)?;
        let destroy_ttl = secret
            .metadata
            .get("versionDestroyTtl")
            .and_then(Value::as_str)
            .and_then(|ttl| ttl.strip_suffix('s').and_then(|seconds| seconds.parse::<f64>().ok()));
        let stored = &mut secret.versions[index];
        let name = format!("{secret_name}/versions/{}", stored.number);
        if stored.state == State::Destroyed {
            return Err(ApiError::precondition(format!(
                "Secret Version [{name}] is in DESTROYED state."
            )));
        }
        match action {
            "enable" => {
                if stored.scheduled_destroy_time.is_some() {
                    stored.scheduled_destroy_time = None;
                }
                stored.state = State::Enabled;
            }
            "disable" => stored.state = State::Disabled,
            "destroy" => match destroy_ttl {
                // Delayed destruction: DISABLED until the TTL has passed.
                Some(seconds) if seconds > 0.0 => {
                    stored.state = State::Disabled;
                    let at = Utc::now() + chrono::Duration::milliseconds((seconds * 1000.0) as i64);
                    stored.scheduled_destroy_time = Some(at.to_rfc3339_opts(SecondsFormat::Micros, true));
                }
                _ => {
                    stored.state = State::Destroyed;
                    stored.payload = None;
                    stored.destroy_time = Some(now_text());
                }
            },
            other => return Err(ApiError::not_found(format!("Unknown method :{other}"))),
        }
        stored.etag += 1;
        let secret = self.secret(secret_name)?;
        Ok(self.version_json(secret_name, &secret.versions[index], encoding))
    }

    /// Names of every secret (tests and `dev`).
    pub fn names(&self) -> Vec<String> {
        self.secrets.keys().cloned().collect()
    }

    /// Everything stored for a project's secrets, names relative to the
    /// project (`secrets/S`, `locations/L/secrets/S`), for tests comparing
    /// two projects. Payloads are exposed: test use only.
    pub fn dump(&self, project: &str) -> BTreeMap<String, DumpedSecret> {
        let prefix = format!("projects/{project}/");
        self.secrets
            .iter()
            .filter_map(|(name, secret)| {
                let relative = name.strip_prefix(&prefix)?.to_owned();
                Some((
                    relative,
                    DumpedSecret {
                        metadata: secret.metadata.clone(),
                        versions: secret
                            .versions
                            .iter()
                            .map(|version| DumpedVersion {
                                number: version.number,
                                state: version.state.name(),
                                payload: version.payload.as_ref().map(|payload| payload.to_vec()),
                            })
                            .collect(),
                    },
                ))
            })
            .collect()
    }
}

fn parse_filter(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Option<Filter>, ApiError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let filter = Filter::parse(text).map_err(|problem| ApiError::invalid(format!("Invalid filter: {problem}")))?;
    filter
        .validate(known)
        .map_err(|problem| ApiError::invalid(format!("Invalid filter: {problem}")))?;
    Ok(Some(filter))
}
