//! A Secret Manager fake over the documented REST API (v1), for tests,
//! `keshless-ops emulator` and `dev`. Point the client at it with
//! `SECRET_MANAGER_EMULATOR_HOST=127.0.0.1:PORT`.
//!
//! Routes, under `projects/P/...` and `projects/P/locations/L/...` alike:
//! `GET|POST …/secrets` (list with `pageSize`/`pageToken`/`filter`; create
//! with `secretId`), `GET|PATCH|DELETE …/secrets/S`, `POST …/secrets/S:addVersion`,
//! `GET …/secrets/S/versions`, `GET …/versions/V`, `GET …/versions/V:access`,
//! `POST …/versions/V:enable|:disable|:destroy`. JSON field names are
//! camelCase, int64 values decimal strings, errors
//! `{"error": {"code", "message", "status"}}`; `$alt=json;enum-encoding=int`
//! (what Google's Rust client asks for) gets enums as numbers. The rules are
//! in [`state`], the filter syntax in [`filter`].
//!
//! Fault switches ([`Faults`], in process through [`SecretManagerFake::faults`]
//! or over HTTP with `POST /fake/faults`): answer the next N requests with
//! 429 RESOURCE_EXHAUSTED, enforce a quota of N requests per window, return a
//! wrong `dataCrc32c` for chosen versions, delay list pages.

pub mod filter;
pub mod state;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use state::{ApiError, DumpedSecret, DumpedVersion, EnumEncoding, Store};

/// Switches that make the fake misbehave the way the real service can.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer this many next requests with 429 RESOURCE_EXHAUSTED.
    pub fail_next: u32,
    /// At most this many requests per `quota_window_ms`; beyond, 429.
    pub quota_per_window: Option<u32>,
    pub quota_window_ms: u64,
    /// Version names (`projects/P/secrets/S/versions/N`) whose `:access` returns a wrong `dataCrc32c`.
    pub wrong_checksum: BTreeSet<String>,
    /// Delay before answering every list call.
    pub page_delay_ms: u64,
}

/// One request as the fake saw it (tests assert on these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
}

struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    quota_window: Mutex<(Instant, u32)>,
    log: Mutex<Vec<RequestRecord>>,
    numbered_names: bool,
    /// Project number → id, for every project a request named.
    projects: Mutex<HashMap<String, String>>,
}

/// A running fake; stops when dropped.
pub struct SecretManagerFake {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SecretManagerFake {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SecretManagerFake")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Settings of one fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeConfig {
    /// The cap on `pageSize` (the real service's is 25 000).
    pub maximum_page_size: usize,
    /// The real service names every resource it returns by project
    /// *number* (`projects/123456789012/secrets/S`), whatever the request
    /// named the project by, and accepts either in requests. `true` does
    /// the same, with a number derived from each project id
    /// ([`project_number`]), so a client that matches returned names
    /// against the project id is caught.
    pub numbered_names: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            maximum_page_size: 25_000,
            numbered_names: false,
        }
    }
}

/// The number the fake gives project `id` when names are numbered: 12
/// digits, the same for the same id.
pub fn project_number(id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (100_000_000_000 + hash % 900_000_000_000).to_string()
}

impl SecretManagerFake {
    /// Binds and serves on a tokio task (port 0 picks a free port).
    pub async fn start(address: SocketAddr, config: FakeConfig) -> std::io::Result<SecretManagerFake> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(config.maximum_page_size)),
            faults: Mutex::new(Faults::default()),
            quota_window: Mutex::new((Instant::now(), 0)),
            log: Mutex::new(Vec::new()),
            numbered_names: config.numbered_names,
            projects: Mutex::new(HashMap::new()),
        });
        let router = Router::new().fallback(handle).with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(error = %error, "Secret Manager fake stopped");
            }
        });
        tracing::info!(address = %address, "Secret Manager fake listening");
        Ok(SecretManagerFake { address, shared, task })
    }

    /// `127.0.0.1:PORT`, what `SECRET_MANAGER_EMULATOR_HOST` should be.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// Replaces the fault switches.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults lock") = faults;
        *self.shared.quota_window.lock().expect("quota lock") = (Instant::now(), 0);
    }

    /// The switches now (a `fail_next` counts down).
    pub fn faults(&self) -> Faults {
        self.shared.faults.lock().expect("faults lock").clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Direct access to the model (seeding and inspecting without HTTP).
    pub fn with_store<T>(&self, work: impl FnOnce(&mut Store) -> T) -> T {
        work(&mut self.shared.store.lock().expect("store lock"))
    }

    /// Stops serving.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for SecretManagerFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(error.body())).into_response()
}

/// What the path names.
enum Target<'a> {
    /// `{parent}/secrets`
    Secrets { parent: &'a str },
    /// `{secret}` or `{secret}:method`
    Secret { name: &'a str, method: Option<&'a str> },
    /// `{secret}/versions`
    Versions { secret: &'a str },
    /// `{secret}/versions/{v}` or with `:method`
    Version {
        secret: &'a str,
        version: &'a str,
        method: Option<&'a str>,
    },
}

fn parse_target(path: &str) -> Option<Target<'_>> {
    let resource = path.strip_prefix("/v1/")?;
    let (resource, method) = match resource.rsplit_once(':') {
        Some((resource, method)) if !method.contains('/') => (resource, Some(method)),
        _ => (resource, None),
    };
    let parts: Vec<&str> = resource.split('/').collect();
    let secrets_at = match parts.as_slice() {
        ["projects", _, "secrets", ..] => 2,
        ["projects", _, "locations", _, "secrets", ..] => 4,
        _ => return None,
    };
    let prefix_length = |count: usize| parts[..count].iter().map(|part| part.len() + 1).sum::<usize>() - 1;
    match parts.len() - secrets_at {
        1 if method.is_none() => Some(Target::Secrets {
            parent: &resource[..prefix_length(secrets_at)],
        }),
        2 => Some(Target::Secret {
            name: &resource[..prefix_length(secrets_at + 2)],
            method,
        }),
        3 if parts[secrets_at + 2] == "versions" && method.is_none() => Some(Target::Versions {
            secret: &resource[..prefix_length(secrets_at + 2)],
        }),
        4 if parts[secrets_at + 2] == "versions" => Some(Target::Version {
            secret: &resource[..prefix_length(secrets_at + 2)],
            version: parts[secrets_at + 3],
            method,
        }),
        _ => None,
    }
}

struct Query {
    page_size: usize,
    page_token: String,
    filter: String,
    secret_id: String,
    update_mask: String,
    encoding: EnumEncoding,
}

fn parse_query(uri: &Uri) -> Result<Query, ApiError> {
    let mut query = Query {
        page_size: 0,
        page_token: String::new(),
        filter: String::new(),
        secret_id: String::new(),
        update_mask: String::new(),
        encoding: EnumEncoding::Names,
    };
    for (name, value) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "pageSize" => {
                let size: i64 = value
                    .parse()
                    .map_err(|_| ApiError::invalid(format!("Invalid pageSize {value:?}")))?;
                if size < 0 {
                    return Err(ApiError::invalid("pageSize must not be negative."));
                }
                query.page_size = size as usize;
            }
            "pageToken" => query.page_token = value.into_owned(),
            "filter" => query.filter = value.into_owned(),
            "secretId" => query.secret_id = value.into_owned(),
            "updateMask" => query.update_mask = value.into_owned(),
            "$alt" | "alt" if value.contains("enum-encoding=int") => query.encoding = EnumEncoding::Numbers,
            _ => {}
        }
    }
    Ok(query)
}

async fn handle(AxumState(shared): AxumState<Arc<Shared>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let response = if path == "/fake/faults" && method == Method::POST {
        match serde_json::from_slice::<Faults>(&body) {
            Ok(faults) => {
                *shared.faults.lock().expect("faults lock") = faults;
                *shared.quota_window.lock().expect("quota lock") = (Instant::now(), 0);
                axum::Json(json!({})).into_response()
            }
            Err(error) => error_response(&ApiError::invalid(format!("faults: {error}"))),
        }
    } else {
        let uri = if shared.numbered_names {
            by_project_id(&shared, &uri)
        } else {
            uri.clone()
        };
        match serve(&shared, &method, &uri, &body).await {
            Ok(mut value) => {
                if shared.numbered_names {
                    number_names(&shared, &mut value);
                }
                axum::Json(value).into_response()
            }
            Err(error) => error_response(&error),
        }
    };
    shared.log.lock().expect("log lock").push(RequestRecord {
        at: Instant::now(),
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
    });
    response
}

/// The request's `projects/NUMBER/` as `projects/ID/` (the store keeps
/// names by id); an id is remembered with its number.
fn by_project_id(shared: &Shared, uri: &Uri) -> Uri {
    let Some(rest) = uri.path().strip_prefix("/v1/projects/") else {
        return uri.clone();
    };
    let (project, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let mut projects = shared.projects.lock().expect("projects lock");
    let id = if !project.is_empty() && project.bytes().all(|byte| byte.is_ascii_digit()) {
        match projects.get(project) {
            Some(id) => id.clone(),
            None => return uri.clone(),
        }
    } else {
        projects.insert(project_number(project), project.to_owned());
        return uri.clone();
    };
    let query = uri.query().map(|query| format!("?{query}")).unwrap_or_default();
    format!("/v1/projects/{id}/{tail}{query}")
        .parse()
        .unwrap_or_else(|_| uri.clone())
}

/// Every returned resource name (`name` of a secret or version, and of each
/// in a list page) by project number, as the real service returns them.
/// Topic names are the caller's and stay as given.
fn number_names(shared: &Shared, value: &mut Value) {
    let renumber = |value: &mut Value| {
        let Some(name) = value.get("name").and_then(Value::as_str) else {
            return;
        };
        let Some((project, rest)) = name.strip_prefix("projects/").and_then(|rest| rest.split_once('/')) else {
            return;
        };
        if project.bytes().all(|byte| byte.is_ascii_digit()) {
            return;
        }
        let number = project_number(project);
        shared
            .projects
            .lock()
            .expect("projects lock")
            .insert(number.clone(), project.to_owned());
        value["name"] = Value::String(format!("projects/{number}/{rest}"));
    };
    renumber(value);
    for list in ["secrets", "versions"] {
        if let Some(items) = value.get_mut(list).and_then(Value::as_array_mut) {
            items.iter_mut().for_each(&renumber);
        }
    }
}

/// Quota and injected failures first, then the call itself.
async fn serve(shared: &Shared, method: &Method, uri: &Uri, body: &[u8]) -> Result<Value, ApiError> {
    let (wrong_checksum, page_delay) = {
        let mut faults = shared.faults.lock().expect("faults lock");
        if faults.fail_next > 0 {
            faults.fail_next -= 1;
            return Err(exhausted());
        }
        if let Some(limit) = faults.quota_per_window {
            let window = Duration::from_millis(faults.quota_window_ms.max(1));
            let mut counter = shared.quota_window.lock().expect("quota lock");
            if counter.0.elapsed() >= window {
                *counter = (Instant::now(), 0);
            }
            if counter.1 >= limit {
                return Err(exhausted());
            }
            counter.1 += 1;
        }
        (
            faults.wrong_checksum.clone(),
            Duration::from_millis(faults.page_delay_ms),
        )
    };
    let target = parse_target(uri.path())
        .ok_or_else(|| ApiError::not_found(format!("No such method or resource: {}", uri.path())))?;
    let query = parse_query(uri)?;
    let json_body = || -> Result<Value, ApiError> {
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(body)
            .map_err(|error| ApiError::invalid(format!("Invalid JSON payload received: {error}")))
    };
    let is_list = matches!(
        (&target, method),
        (Target::Secrets { .. }, &Method::GET) | (Target::Versions { .. }, &Method::GET)
    );
    if is_list && !page_delay.is_zero() {
        tokio::time::sleep(page_delay).await;
    }
    let mut store = shared.store.lock().expect("store lock");
    match (target, method.clone()) {
        (Target::Secrets { parent }, Method::GET) => {
            store.list_secrets(parent, query.page_size, &query.page_token, &query.filter)
        }
        (Target::Secrets { parent }, Method::POST) => store.create_secret(parent, &query.secret_id, json_body()?),
        (Target::Secret { name, method: None }, Method::GET) => store.get_secret(name),
        (Target::Secret { name, method: None }, Method::PATCH) => {
            store.update_secret(name, &query.update_mask, json_body()?)
        }
        (Target::Secret { name, method: None }, Method::DELETE) => store.delete_secret(name),
        (
            Target::Secret {
                name,
                method: Some("addVersion"),
            },
            Method::POST,
        ) => store.add_version(name, &json_body()?, query.encoding),
        (Target::Versions { secret }, Method::GET) => store.list_versions(
            secret,
            query.page_size,
            &query.page_token,
            &query.filter,
            query.encoding,
        ),
        (
            Target::Version {
                secret,
                version,
                method: None,
            },
            Method::GET,
        ) => store.get_version(secret, version, query.encoding),
        (
            Target::Version {
                secret,
                version,
                method: Some("access"),
            },
            Method::GET,
        ) => {
            let resolved = store
                .get_version(secret, version, EnumEncoding::Names)?
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_default();
            store.access(secret, version, wrong_checksum.contains(&resolved))
        }
        (
            Target::Version {
                secret,
                version,
                method: Some(action @ ("enable" | "disable" | "destroy")),
            },
            Method::POST,
        ) => store.change_state(secret, version, action, query.encoding),
        (_, method) => Err(ApiError::new(
            404,
            "NOT_FOUND",
            format!("No method {method} {}", uri.path()),
        )),
    }
}

fn exhausted() -> ApiError {
    ApiError::new(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute'.",
    )
}

/// The demo secrets `dev` starts with: labels, several versions in mixed
/// states, an alias, a regional secret. Values are random per run.
pub fn seed_demo(store: &mut Store, project: &str) -> Result<(), ApiError> {
    use rand::Rng as _;
    let random = || hex::encode(rand::thread_rng().gen::<[u8; 16]>());
    let add = |store: &mut Store, secret: &str, value: String| -> Result<(), ApiError> {
        let data = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, value.as_bytes());
        store.add_version(secret, &json!({"payload": {"data": data}}), EnumEncoding::Names)?;
        Ok(())
    };
    let global = format!("projects/{project}");
    let automatic = json!({"replication": {"automatic": {}}, "labels": {"backup": "true", "team": "payments"}});
    for id in [
        "payment-gateway-api-key",
        "sms-provider-token",
        "webhook-signing-secret",
    ] {
        store.create_secret(&global, id, automatic.clone())?;
        add(store, &format!("{global}/secrets/{id}"), random())?;
    }
    let rotated = format!("{global}/secrets/kyc-vendor-api-key");
    store.create_secret(
        &global,
        "kyc-vendor-api-key",
        json!({"replication": {"userManaged": {"replicas": [{"location": "europe-west1"}, {"location": "europe-west4"}]}},
               "labels": {"backup": "true"}, "annotations": {"owner": "kyc-team"}}),
    )?;
    for _ in 0..4 {
        add(store, &rotated, random())?;
    }
    store.change_state(&rotated, "1", "destroy", EnumEncoding::Names)?;
    store.change_state(&rotated, "2", "disable", EnumEncoding::Names)?;
    store.update_secret(
        &rotated,
        "versionAliases",
        json!({"versionAliases": {"current": "4", "previous": "3"}}),
    )?;
    let regional = format!("projects/{project}/locations/europe-west1");
    store.create_secret(&regional, "ledger-signing-key", json!({"labels": {"backup": "true"}}))?;
    add(store, &format!("{regional}/secrets/ledger-signing-key"), random())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(matches!(
            parse_target("/v1/projects/p/secrets"),
            Some(Target::Secrets { parent: "projects/p" })
        ));
        assert!(matches!(
            parse_target("/v1/projects/p/locations/l/secrets"),
            Some(Target::Secrets {
                parent: "projects/p/locations/l"
            })
        ));
        assert!(matches!(
            parse_target("/v1/projects/p/secrets/s:addVersion"),
            Some(Target::Secret {
                name: "projects/p/secrets/s",
                method: Some("addVersion")
            })
        ));
        assert!(matches!(
            parse_target("/v1/projects/p/locations/l/secrets/s/versions/latest:access"),
            Some(Target::Version {
                secret: "projects/p/locations/l/secrets/s",
                version: "latest",
                method: Some("access")
            })
        ));
        assert!(matches!(
            parse_target("/v1/projects/p/secrets/s/versions"),
            Some(Target::Versions {
                secret: "projects/p/secrets/s"
            })
        ));
        assert!(parse_target("/v1/projects/p/topics/t").is_none());
    }
}
