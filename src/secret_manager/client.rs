//! [`SecretManagerClient`]: Google's official Secret Manager crate over REST,
//! with the three things it leaves to us:
//!
//! - **quota**: Secret Manager allows a project 600 reads a minute by default;
//!   every call waits for a slot of a pacer set to the quota it is given, so a
//!   backup of thousands of secrets stays inside it instead of living on 429s;
//! - **retries**: the crate's own retry loop is off; `backon` retries
//!   RESOURCE_EXHAUSTED (429), UNAVAILABLE, INTERNAL, timeouts and connection
//!   failures with jittered exponential backoff, each attempt paced again;
//! - **integrity**: the crate does not check `dataCrc32c` on
//!   `:access`; a payload whose CRC32C differs is retried like a transient
//!   failure and, if it persists, is an error (it is never handed on).
//!
//! Regional secrets (`projects/P/locations/L/...`) are served by regional
//! endpoints (`secretmanager.L.rep.googleapis.com`); one client per location is
//! built when first needed. `SECRET_MANAGER_EMULATOR_HOST` sends every call to
//! one plain-HTTP fake with anonymous credentials.
//!
//! Payloads come back as [`SecretBytes`], zeroized on drop and never shown by
//! `Debug`; the crate's own response types (whose `Debug` prints payloads) do
//! not leave this file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use google_cloud_gax_official::error::rpc::Code;
use google_cloud_gax_official::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{Secret, SecretPayload, SecretVersion};
use tokio::sync::Mutex;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// The documented maximum page size of `list` calls: fewer pages, fewer reads of the quota.
pub const MAXIMUM_PAGE_SIZE: i32 = 25_000;
/// Secret Manager's default read quota per project and minute.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 600;

/// A secret payload: bytes zeroized when dropped, shown by `Debug` as their length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// CRC32C as Secret Manager computes it for `dataCrc32c`.
    pub fn crc32c(&self) -> u32 {
        crc32c::crc32c(&self.0)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "SecretBytes([redacted, {} bytes])", self.0.len())
    }
}

/// Why a Secret Manager call failed. Messages name resources and status
/// codes, never payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretManagerError {
    #[error("Secret Manager {operation} {resource}: {code} (HTTP {http_status}): {message}")]
    Service {
        operation: &'static str,
        resource: String,
        /// The `status` name: `NOT_FOUND`, `RESOURCE_EXHAUSTED`, ...
        code: String,
        http_status: u16,
        message: String,
    },
    #[error("Secret Manager {operation} {resource}: {message}")]
    Transport {
        operation: &'static str,
        resource: String,
        message: String,
        /// Connection refused or reset, timed out: worth another attempt.
        retryable: bool,
    },
    #[error(
        "Secret Manager returned a payload for {resource} whose CRC32C ({computed}) differs from its dataCrc32c \
         ({expected}): the payload was damaged on the way and is not used"
    )]
    Checksum {
        resource: String,
        expected: String,
        computed: u32,
    },
    #[error("cannot build the Secret Manager client for {endpoint}: {message}")]
    Client { endpoint: String, message: String },
}

impl SecretManagerError {
    /// Worth retrying with backoff: quota, overload, a damaged payload, the network.
    pub fn is_retryable(&self) -> bool {
        match self {
            SecretManagerError::Service { code, http_status, .. } => {
                matches!(
                    code.as_str(),
                    "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED"
                ) || matches!(http_status, 429 | 500 | 502 | 503 | 504)
            }
            SecretManagerError::Transport { retryable, .. } => *retryable,
            SecretManagerError::Checksum { .. } => true,
            SecretManagerError::Client { .. } => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, SecretManagerError::Service { code, .. } if code == "NOT_FOUND")
    }

    fn from_gax(operation: &'static str, resource: &str, error: google_cloud_secretmanager_v1::Error) -> Self {
        if let Some(status) = error.status() {
            return SecretManagerError::Service {
                operation,
                resource: resource.to_owned(),
                code: status.code.name().to_owned(),
                http_status: error.http_status_code().unwrap_or(0),
                message: status.message.clone(),
            };
        }
        if let Some(http_status) = error.http_status_code() {
            // An error body that is not a Google status: keep the HTTP code only.
            return SecretManagerError::Service {
                operation,
                resource: resource.to_owned(),
                code: code_for_http_status(http_status).name().to_owned(),
                http_status,
                message: "the response carried no error status".to_owned(),
            };
        }
        let retryable = error.is_timeout() || error.is_connect() || error.is_io() || error.is_transport();
        // A response that does not parse is described without its text: the
        // body of an `:access` response is a payload.
        let message = if error.is_deserialization() {
            "the response is not the documented JSON".to_owned()
        } else {
            error.to_string()
        };
        SecretManagerError::Transport {
            operation,
            resource: resource.to_owned(),
            message,
            retryable,
        }
    }
}

/// The status Google's HTTP mapping gives an HTTP code (AIP-193).
fn code_for_http_status(http_status: u16) -> Code {
    match http_status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Unknown,
    }
}

/// How hard to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

impl Default for RetrySettings {
    /// A 429 storm lasting a couple of minutes is outlived (1 s doubling to 32 s, 10 retries).
    fn default() -> Self {
        RetrySettings {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(32),
            max_retries: 10,
        }
    }
}

/// Where and how fast the client talks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `SECRET_MANAGER_EMULATOR_HOST` (`127.0.0.1:PORT`): plain HTTP, anonymous credentials.
    pub emulator_host: Option<String>,
    /// The quota this client keeps to, in requests per minute (all calls counted).
    pub requests_per_minute: u32,
    pub retry: RetrySettings,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            emulator_host: None,
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            retry: RetrySettings::default(),
        }
    }
}

/// Spaces calls evenly at the quota: at most `requests_per_minute` start in
/// any minute, without bursts that would be refused anyway.
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(requests_per_minute: u32) -> Pacer {
        Pacer {
            interval: Duration::from_secs(60) / requests_per_minute.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait_for_slot(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// A Secret Manager client; see the module documentation.
pub struct SecretManagerClient {
    settings: ClientSettings,
    global: SecretManagerService,
    regional: Mutex<BTreeMap<String, SecretManagerService>>,
    pacer: Pacer,
}

impl fmt::Debug for SecretManagerClient {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SecretManagerClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `projects/P/locations/L/...` → `Some(L)`; global resources → `None`.
pub fn location_of(resource: &str) -> Option<&str> {
    let mut parts = resource.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("projects"), Some(_), Some("locations"), Some(location)) => Some(location),
        _ => None,
    }
}

impl SecretManagerClient {
    pub async fn connect(settings: ClientSettings) -> Result<SecretManagerClient, SecretManagerError> {
        let global = build_service(&settings, None).await?;
        Ok(SecretManagerClient {
            pacer: Pacer::new(settings.requests_per_minute),
            settings,
            global,
            regional: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    async fn service_for(&self, resource: &str) -> Result<SecretManagerService, SecretManagerError> {
        let Some(location) = location_of(resource) else {
            return Ok(self.global.clone());
        };
        if self.settings.emulator_host.is_some() {
            return Ok(self.global.clone());
        }
        let mut regional = self.regional.lock().await;
        if let Some(service) = regional.get(location) {
            return Ok(service.clone());
        }
        let service = build_service(&self.settings, Some(location)).await?;
        regional.insert(location.to_owned(), service.clone());
        Ok(service)
    }

    /// Runs `attempt` paced and retried; the last error when retries run out.
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        resource: &str,
        attempt: F,
    ) -> Result<T, SecretManagerError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SecretManagerError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.retry.min_delay)
            .with_max_delay(self.settings.retry.max_delay)
            .with_max_times(self.settings.retry.max_retries)
            .with_jitter();
        (|| {
            let future = attempt();
            async move {
                self.pacer.wait_for_slot().await;
                future.await
            }
        })
        .retry(backoff)
        .when(SecretManagerError::is_retryable)
        .notify(|error, delay| {
            tracing::warn!(
                operation,
                resource,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "Secret Manager call failed; backing off"
            );
        })
        .await
    }

    /// One page of the secrets under `parent` (`projects/P` or `projects/P/locations/L`).
    pub async fn list_secrets_page(
        &self,
        parent: &str,
        filter: Option<&str>,
        page_token: &str,
    ) -> Result<(Vec<Secret>, String), SecretManagerError> {
        let service = self.service_for(parent).await?;
        self.call("list secrets", parent, || {
            let request = service
                .list_secrets()
                .set_parent(parent)
                .set_page_size(MAXIMUM_PAGE_SIZE)
                .set_page_token(page_token)
                .set_filter(filter.unwrap_or_default());
            async move {
                request
                    .send()
                    .await
                    .map(|response| (response.secrets, response.next_page_token))
                    .map_err(|error| SecretManagerError::from_gax("list secrets", parent, error))
            }
        })
        .await
    }

    /// Every version of a secret (all pages), newest first as the API lists them.
    pub async fn list_versions(&self, secret: &str) -> Result<Vec<SecretVersion>, SecretManagerError> {
        let service = self.service_for(secret).await?;
        let mut versions = Vec::new();
        let mut page_token = String::new();
        loop {
            let (page, next) = self
                .call("list versions of", secret, || {
                    let request = service
                        .list_secret_versions()
                        .set_parent(secret)
                        .set_page_size(MAXIMUM_PAGE_SIZE)
                        .set_page_token(page_token.clone());
                    async move {
                        request
                            .send()
                            .await
                            .map(|response| (response.versions, response.next_page_token))
                            .map_err(|error| SecretManagerError::from_gax("list versions of", secret, error))
                    }
                })
                .await?;
            versions.extend(page);
            if next.is_empty() {
                return Ok(versions);
            }
            page_token = next;
        }
    }

    /// The payload of one version, its CRC32C checked against `dataCrc32c`.
    pub async fn access(&self, version: &str) -> Result<SecretBytes, SecretManagerError> {
        let service = self.service_for(version).await?;
        self.call("access", version, || {
            let request = service.access_secret_version().set_name(version);
            async move {
                let response = request
                    .send()
                    .await
                    .map_err(|error| SecretManagerError::from_gax("access", version, error))?;
                let payload = response.payload.unwrap_or_default();
                // Copied at once into memory that is wiped; the crate's `Bytes`
                // is dropped right after.
                let data = SecretBytes::new(payload.data.to_vec());
                let computed = data.crc32c();
                match payload.data_crc32c {
                    Some(expected) if expected != i64::from(computed) => Err(SecretManagerError::Checksum {
                        resource: version.to_owned(),
                        expected: expected.to_string(),
                        computed,
                    }),
                    None => Err(SecretManagerError::Checksum {
                        resource: version.to_owned(),
                        expected: "missing".to_owned(),
                        computed,
                    }),
                    Some(_) => Ok(data),
                }
            }
        })
        .await
    }

    /// The secret, or `None` when it does not exist.
    pub async fn get_secret(&self, name: &str) -> Result<Option<Secret>, SecretManagerError> {
        let service = self.service_for(name).await?;
        let result = self
            .call("get", name, || {
                let request = service.get_secret().set_name(name);
                async move {
                    request
                        .send()
                        .await
                        .map_err(|error| SecretManagerError::from_gax("get", name, error))
                }
            })
            .await;
        match result {
            Ok(secret) => Ok(Some(secret)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates `parent/secrets/id` with the given metadata.
    pub async fn create_secret(&self, parent: &str, id: &str, secret: Secret) -> Result<Secret, SecretManagerError> {
        let service = self.service_for(parent).await?;
        let resource = format!("{parent}/secrets/{id}");
        self.call("create", &resource, || {
            let request = service
                .create_secret()
                .set_parent(parent)
                .set_secret_id(id)
                .set_secret(secret.clone());
            let resource = &resource;
            async move {
                request
                    .send()
                    .await
                    .map_err(|error| SecretManagerError::from_gax("create", resource, error))
            }
        })
        .await
    }

    /// Adds a version with the payload and its CRC32C (the server verifies it).
    pub async fn add_version(&self, secret: &str, data: &SecretBytes) -> Result<SecretVersion, SecretManagerError> {
        let service = self.service_for(secret).await?;
        self.call("add a version to", secret, || {
            let payload = SecretPayload::new()
                .set_data(bytes::Bytes::copy_from_slice(data.expose()))
                .set_data_crc32c(i64::from(data.crc32c()));
            let request = service.add_secret_version().set_parent(secret).set_payload(payload);
            async move {
                request
                    .send()
                    .await
                    .map_err(|error| SecretManagerError::from_gax("add a version to", secret, error))
            }
        })
        .await
    }

    pub async fn disable_version(&self, version: &str) -> Result<SecretVersion, SecretManagerError> {
        let service = self.service_for(version).await?;
        self.call("disable", version, || {
            let request = service.disable_secret_version().set_name(version);
            async move {
                request
                    .send()
                    .await
                    .map_err(|error| SecretManagerError::from_gax("disable", version, error))
            }
        })
        .await
    }

    pub async fn destroy_version(&self, version: &str) -> Result<SecretVersion, SecretManagerError> {
        let service = self.service_for(version).await?;
        self.call("destroy", version, || {
            let request = service.destroy_secret_version().set_name(version);
            async move {
                request
                    .send()
                    .await
                    .map_err(|error| SecretManagerError::from_gax("destroy", version, error))
            }
        })
        .await
    }

    /// Deletes a secret with all its versions (`DELETE v1/{name}`); `false`
    /// when it did not exist, so a teardown run twice is not an error.
    pub async fn delete_secret(&self, name: &str) -> Result<bool, SecretManagerError> {
        let service = self.service_for(name).await?;
        let result = self
            .call("delete", name, || {
                let request = service.delete_secret().set_name(name);
                async move {
                    request
                        .send()
                        .await
                        .map_err(|error| SecretManagerError::from_gax("delete", name, error))
                }
            })
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Replaces the secret's version aliases (update mask `version_aliases`).
    pub async fn set_aliases(&self, secret: &str, aliases: HashMap<String, i64>) -> Result<Secret, SecretManagerError> {
        self.update_secret(
            Secret::new().set_name(secret).set_version_aliases(aliases),
            ["version_aliases"],
        )
        .await
    }

    /// Replaces the fields named by `paths` (snake_case field names) with those of `secret`.
    pub async fn update_secret<const N: usize>(
        &self,
        secret: Secret,
        paths: [&str; N],
    ) -> Result<Secret, SecretManagerError> {
        let name = secret.name.clone();
        let service = self.service_for(&name).await?;
        let mask = google_cloud_wkt::FieldMask::default().set_paths(paths);
        self.call("update", &name, || {
            let request = service
                .update_secret()
                .set_secret(secret.clone())
                .set_update_mask(mask.clone());
            let name = &name;
            async move {
                request
                    .send()
                    .await
                    .map_err(|error| SecretManagerError::from_gax("update", name, error))
            }
        })
        .await
    }
}

/// The endpoint of a location (`None`: global), or the emulator.
fn endpoint(settings: &ClientSettings, location: Option<&str>) -> String {
    match (&settings.emulator_host, location) {
        (Some(host), _) if host.starts_with("http://") || host.starts_with("https://") => host.clone(),
        (Some(host), _) => format!("http://{host}"),
        (None, None) => "https://secretmanager.googleapis.com".to_owned(),
        (None, Some(location)) => format!("https://secretmanager.{location}.rep.googleapis.com"),
    }
}

async fn build_service(
    settings: &ClientSettings,
    location: Option<&str>,
) -> Result<SecretManagerService, SecretManagerError> {
    let endpoint = endpoint(settings, location);
    let builder = SecretManagerService::builder()
        .with_endpoint(endpoint.clone())
        .with_retry_policy(NeverRetry);
    let builder = if settings.emulator_host.is_some() {
        builder.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
    } else {
        builder
    };
    builder.build().await.map_err(|error| SecretManagerError::Client {
        endpoint,
        message: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_endpoints() {
        assert_eq!(location_of("projects/p/secrets/s"), None);
        assert_eq!(
            location_of("projects/p/locations/europe-west1/secrets/s"),
            Some("europe-west1")
        );
        assert_eq!(location_of("projects/p/locations/us-east1"), Some("us-east1"));
        let production = ClientSettings::default();
        assert_eq!(endpoint(&production, None), "https://secretmanager.googleapis.com");
        assert_eq!(
            endpoint(&production, Some("europe-west1")),
            "https://secretmanager.europe-west1.rep.googleapis.com"
        );
        let fake = ClientSettings {
            emulator_host: Some("127.0.0.1:9".into()),
            ..ClientSettings::default()
        };
        assert_eq!(endpoint(&fake, Some("europe-west1")), "http://127.0.0.1:9");
    }

    #[test]
    fn what_is_retried() {
        let service = |code: &str, http_status| SecretManagerError::Service {
            operation: "get",
            resource: "projects/p/secrets/s".into(),
            code: code.into(),
            http_status,
            message: String::new(),
        };
        assert!(service("RESOURCE_EXHAUSTED", 429).is_retryable());
        assert!(service("UNAVAILABLE", 503).is_retryable());
        assert!(!service("FAILED_PRECONDITION", 400).is_retryable());
        assert!(!service("PERMISSION_DENIED", 403).is_retryable());
        assert!(service("NOT_FOUND", 404).is_not_found());
        let checksum = SecretManagerError::Checksum {
            resource: "v".into(),
            expected: "1".into(),
            computed: 2,
        };
        assert!(checksum.is_retryable());
        assert!(format!("{:?}", SecretBytes::new(b"hunter2".to_vec())).contains("7 bytes"));
        assert!(!format!("{:?}", SecretBytes::new(b"hunter2".to_vec())).contains("hunter2"));
    }
}
