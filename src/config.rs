//! Configuration: the environment (SPEC section 5) parsed once into [`Config`],
//! validated as a whole so an operator sees every problem in one go.
//!
//! Secrets (`JOB_SECRET`, `SECRETS_ENCRYPTION_KEY`) live in [`SecretString`]
//! and database URLs in [`DatabaseUrl`]; neither can leak through `Debug`,
//! `Display` or error messages.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

use crate::storage::StoreLocation;

mod libpq;
pub mod variables;

/// Minimum length of `SECRETS_ENCRYPTION_KEY`, in characters (the seed's rule).
pub const MINIMUM_ENCRYPTION_KEY_CHARACTERS: usize = 32;

/// PostgreSQL major version of the production server. The container image
/// installs `postgresql-client` of this major (`pg_dump` must be the server's
/// major or newer); `tests/dockerfile.rs` holds the Dockerfile to it. Raise
/// both before upgrading the server.
pub const POSTGRES_SERVER_MAJOR_VERSION: u32 = 17;

/// Whether a database name can be used in object names as it is: 1-63
/// ASCII letters, digits, `_` or `-` (what `DATABASES` accepts).
pub fn is_object_name_safe(database: &str) -> bool {
    !database.is_empty()
        && database.len() <= 63
        && database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Everything the worker and the CLI need from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared secret every job message must carry (`x-job-secret`).
    pub job_secret: SecretString,
    /// Passphrase the secrets backup key is derived from (at least 32 characters).
    pub secrets_encryption_key: SecretString,
    /// The server (and default database) that is backed up.
    pub database_url: DatabaseUrl,
    /// `DATABASES`: every database on that server postgres-backup protects,
    /// in the order given; default the one `DATABASE_URL` names. A backup
    /// message without a database backs up the first.
    pub databases: Vec<String>,
    /// Where the idempotency ledger lives; defaults to `database_url`.
    pub ledger_database_url: DatabaseUrl,
    /// The server DR drills create their scratch databases on (`DRILL_DATABASE_URL`,
    /// default `DATABASE_URL`); its user needs CREATEDB.
    pub drill_database_url: DatabaseUrl,
    /// The full drill's scratch targets (`DRILL_SECRET_MANAGER_PROJECT`, `DRILL_DOCUMENTS_STORE`).
    pub full_drill: FullDrillConfig,
    /// `GCS_BACKUPS_BUCKET`: needed only when `BACKUP_STORE` is not set.
    pub gcs_backups_bucket: Option<String>,
    /// `GCS_DOCUMENTS_BUCKET`: needed only when `DOCUMENTS_STORE` is not set.
    pub gcs_documents_bucket: Option<String>,
    /// Where backups are written; defaults to `gs://<GCS_BACKUPS_BUCKET>`.
    pub backup_store: StoreLocation,
    /// Where the documents are (`DOCUMENTS_STORE`); defaults to `gs://<GCS_DOCUMENTS_BUCKET>`.
    pub documents_store: StoreLocation,
    pub google_cloud_project: Option<String>,
    pub pubsub: PubSubConfig,
    /// `STORAGE_EMULATOR_HOST`: send GCS calls to an emulator, without credentials.
    pub storage_emulator_host: Option<String>,
    /// HTTP port for health, metrics and job submission.
    pub port: u16,
    /// Time zone the schedule's cron expressions and periods are read in.
    pub schedule_time_zone: chrono_tz::Tz,
    pub retention: RetentionConfig,
    pub secrets_source: SecretsSourceConfig,
    pub worker: WorkerConfig,
    /// How dumps are compressed and encrypted, and where restore finds the key.
    pub dumps: DumpConfig,
}

/// The process environment's UTF-8 variables (the names this crate reads
/// are ASCII; anything else is not ours).
fn utf8_environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}

/// The non-empty, trimmed items of a comma-separated variable.
pub fn comma_separated(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `BACKUP_ENCRYPTION`: whether the worker may back up without recipients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EncryptionPolicy {
    /// Encrypt when `BACKUP_ENCRYPTION_RECIPIENTS` is set (the default).
    #[default]
    Optional,
    /// Refuse to start without recipients (the `infra/` default).
    Required,
}

/// How PostgreSQL dumps are stored and read back.
#[derive(Debug, Clone, Default)]
pub struct DumpConfig {
    /// `BACKUP_COMPRESSION` (default `zstd:3`).
    pub compression: crate::postgres::archive::CompressionSetting,
    /// `BACKUP_ENCRYPTION`.
    pub encryption: EncryptionPolicy,
    /// `BACKUP_ENCRYPTION_RECIPIENTS`: public keys only; `None` when unset.
    pub recipients: Option<crate::postgres::archive::Recipients>,
    /// `BACKUP_AGE_IDENTITY_FILE` or `BACKUP_AGE_IDENTITY_SECRET`: what
    /// restore and the drill decrypt with.
    pub identity: Option<crate::postgres::archive::IdentitySource>,
}

impl DumpConfig {
    /// What the backup job does to each archive: zstd with a worker per core.
    pub fn encode_settings(&self) -> crate::postgres::archive::EncodeSettings {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get() as u32);
        crate::postgres::archive::EncodeSettings {
            compression: self.compression,
            recipients: self.recipients.clone(),
            threads: cores.min(8),
        }
    }

    /// What `restore postgres` reads (no other variable is needed; a
    /// missing recipient list is no problem when only restoring).
    pub fn for_restore_from_env() -> Result<DumpConfig, ConfigError> {
        let variables = utf8_environment().collect();
        let mut reader = Reader {
            variables,
            problems: Vec::new(),
        };
        let dumps = reader.dumps(false);
        if reader.problems.is_empty() {
            Ok(dumps)
        } else {
            Err(ConfigError {
                problems: reader.problems,
            })
        }
    }

    /// Reads the identities a backup needs: only when it is encrypted, so
    /// an unreachable identity secret never stops a plain restore.
    pub async fn identities_for(
        &self,
        encoding: &crate::postgres::archive::Encoding,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::postgres::archive::Identities>>> {
        if encoding.is_encrypted() {
            self.identities().await
        } else {
            Ok(None)
        }
    }

    /// Reads the identities, when configured.
    pub async fn identities(&self) -> anyhow::Result<Option<std::sync::Arc<crate::postgres::archive::Identities>>> {
        match &self.identity {
            None => Ok(None),
            Some(source) => Ok(Some(std::sync::Arc::new(
                crate::postgres::archive::Identities::load(source).await?,
            ))),
        }
    }
}

/// Topic and subscription names, and the emulator if one is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    pub subscription: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// Subscription on the dead-letter topic that `dlq list|replay` reads.
    pub dead_letter_subscription: String,
    /// `PUBSUB_EMULATOR_HOST`: talk to an emulator instead of Google.
    pub emulator_host: Option<String>,
    /// `PUBSUB_MAX_DELIVERY_ATTEMPTS`: the subscription's dead-letter limit.
    /// Lets the worker dead-letter the last attempt itself (with the error
    /// attached) when its service account may not read the subscription.
    pub max_delivery_attempts: Option<u32>,
}

/// What commands that only talk to Pub/Sub need (`publish`, `dlq`): an
/// operator's laptop should not need the encryption key or the database URL.
#[derive(Debug, Clone)]
pub struct MessagingConfig {
    pub job_secret: SecretString,
    pub pubsub: PubSubConfig,
    pub google_cloud_project: Option<String>,
    pub schedule_time_zone: chrono_tz::Tz,
    /// The database a postgres-backup message naming none was backed up as
    /// (the first of `DATABASES`, else `DATABASE_URL`'s), when either is
    /// set: `dlq replay` needs it to recover such a message's key.
    pub default_database: Option<String>,
}

impl MessagingConfig {
    pub fn from_env() -> Result<MessagingConfig, ConfigError> {
        let variables = utf8_environment().collect();
        MessagingConfig::from_map(variables)
    }

    pub fn from_vars<K: Into<String>, V: Into<String>>(
        variables: impl IntoIterator<Item = (K, V)>,
    ) -> Result<MessagingConfig, ConfigError> {
        MessagingConfig::from_map(
            variables
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        )
    }

    fn from_map(variables: HashMap<String, String>) -> Result<MessagingConfig, ConfigError> {
        let mut reader = Reader {
            variables,
            problems: Vec::new(),
        };
        let job_secret = reader.job_secret();
        let pubsub = reader.pubsub();
        let google_cloud_project = reader.optional("GOOGLE_CLOUD_PROJECT");
        let schedule_time_zone = reader.schedule_time_zone();
        // Optional here: an operator's laptop may have neither.
        let database_url = reader
            .optional("DATABASE_URL")
            .and_then(|value| value.parse::<DatabaseUrl>().ok());
        let default_database = reader.databases(database_url.as_ref()).into_iter().next();
        match job_secret {
            Some(secret) if reader.problems.is_empty() => Ok(MessagingConfig {
                job_secret: SecretString::from(secret),
                pubsub,
                google_cloud_project,
                schedule_time_zone,
                default_database,
            }),
            _ => Err(ConfigError {
                problems: reader.problems,
            }),
        }
    }
}

/// What the DR drill reads (`keshless-ops drill`): no job secret, no
/// Pub/Sub, and no bucket names when the stores are given as URLs.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// `DRILL_DATABASE_URL`, else `DATABASE_URL`.
    pub drill_database_url: DatabaseUrl,
    pub databases: Vec<String>,
    pub secrets_encryption_key: SecretString,
    pub backup_store: StoreLocation,
    pub documents_store: StoreLocation,
    pub storage_emulator_host: Option<String>,
    /// The Secret Manager project, when `SECRETS_SOURCE=secret-manager`.
    pub secret_manager: Option<SecretManagerSourceConfig>,
    pub dumps: DumpConfig,
    /// Where the `full` mode recovers into.
    pub full: FullDrillConfig,
}

/// The scratch targets of the `full` drill (`{"mode": "full"}`), which
/// runs `recover --apply` into them and tears them down. Both are optional
/// here: only a full drill needs them, and it refuses to start, naming them,
/// when one is missing or points at production.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FullDrillConfig {
    /// `DRILL_SECRET_MANAGER_PROJECT`: the scratch project the secrets are
    /// recovered into (never the production project).
    pub project: Option<String>,
    /// `DRILL_DOCUMENTS_STORE`: the scratch bucket (or `file://` directory)
    /// the documents are recovered into (never the documents bucket or the vault).
    pub documents: Option<StoreLocation>,
    /// `GOOGLE_CLOUD_PROJECT`: the production project, refused as the scratch one.
    pub production_project: Option<String>,
    /// `SECRET_MANAGER_REQUESTS_PER_MINUTE` (default 600).
    pub requests_per_minute: u32,
    /// `SECRET_MANAGER_EMULATOR_HOST`.
    pub emulator_host: Option<String>,
    /// Whether `DRILL_DATABASE_URL` is set: the full drill creates roles,
    /// so it never falls back to `DATABASE_URL`.
    pub drill_database_url_set: bool,
    /// The server of `DATABASE_URL` ([`DatabaseUrl::server`]): production,
    /// refused as the full drill's scratch server.
    pub production_server: Option<String>,
}

impl DrillConfig {
    /// Reads exactly the variables `variables::COMMANDS` lists for `drill`.
    pub fn from_env() -> Result<DrillConfig, ConfigError> {
        DrillConfig::from_map(utf8_environment().collect())
    }

    fn from_map(variables: HashMap<String, String>) -> Result<DrillConfig, ConfigError> {
        variables::validate_vars("drill", variables.clone())?;
        let mut reader = Reader {
            variables,
            problems: Vec::new(),
        };
        let drill_database_url = reader.database_or_default("DRILL_DATABASE_URL", "the drill's scratch server");
        let database_url = reader
            .optional("DATABASE_URL")
            .and_then(|value| value.parse::<DatabaseUrl>().ok());
        let databases = reader.databases(database_url.as_ref().or(drill_database_url.as_ref()));
        let secrets_encryption_key = reader.secrets_encryption_key();
        let backup_store = reader.store("BACKUP_STORE", "GCS_BACKUPS_BUCKET", "the backups");
        let documents_store = reader.store("DOCUMENTS_STORE", "GCS_DOCUMENTS_BUCKET", "the documents");
        let secret_manager = match reader.optional("SECRETS_SOURCE").as_deref() {
            Some("secret-manager") => match reader.secret_manager_source() {
                Some(SecretsSourceConfig::SecretManager(source)) => Some(source),
                _ => None,
            },
            _ => None,
        };
        let storage_emulator_host = reader.optional("STORAGE_EMULATOR_HOST");
        let dumps = reader.dumps(false);
        let full = reader.full_drill();
        match (
            drill_database_url,
            secrets_encryption_key,
            backup_store,
            documents_store,
        ) {
            (Some(drill_database_url), Some(key), Some(backup_store), Some(documents_store))
                if reader.problems.is_empty() =>
            {
                Ok(DrillConfig {
                    drill_database_url,
                    databases,
                    secrets_encryption_key: SecretString::from(key),
                    backup_store,
                    documents_store,
                    storage_emulator_host,
                    secret_manager,
                    dumps,
                    full,
                })
            }
            _ => Err(ConfigError {
                problems: reader.problems,
            }),
        }
    }
}

/// Retention ages and safety floors (SPEC section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    pub daily_days: u32,
    pub monthly_months: u32,
    pub weekly_secrets_weeks: u32,
    pub inventory_days: u32,
    pub drill_report_months: u32,
    pub keep_min_daily: u32,
    pub keep_min_monthly: u32,
    pub keep_min_weekly_secrets: u32,
    pub keep_min_inventories: u32,
    pub keep_min_drill_reports: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            daily_days: 30,
            monthly_months: 12,
            weekly_secrets_weeks: 12,
            inventory_days: 90,
            drill_report_months: 24,
            keep_min_daily: 7,
            keep_min_monthly: 3,
            keep_min_weekly_secrets: 4,
            keep_min_inventories: 7,
            keep_min_drill_reports: 3,
        }
    }
}

impl RetentionConfig {
    /// Only the `RETENTION_*` variables: `keshless-ops cleanup` must not need
    /// the worker's whole configuration.
    pub fn from_env() -> Result<RetentionConfig, ConfigError> {
        RetentionConfig::from_vars(utf8_environment())
    }

    pub fn from_vars<K: Into<String>, V: Into<String>>(
        variables: impl IntoIterator<Item = (K, V)>,
    ) -> Result<RetentionConfig, ConfigError> {
        let mut reader = Reader {
            variables: variables
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
            problems: Vec::new(),
        };
        let retention = reader.retention();
        if reader.problems.is_empty() {
            Ok(retention)
        } else {
            Err(ConfigError {
                problems: reader.problems,
            })
        }
    }
}

/// Where `secrets-backup` reads the secrets it protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretsSourceConfig {
    /// Environment variables: an explicit allow-list and/or every variable with a prefix.
    Env { names: Vec<String>, prefix: Option<String> },
    /// A JSON object or `.env` file.
    File { path: PathBuf },
    /// Every secret of a Google Cloud project with its metadata and versions.
    SecretManager(SecretManagerSourceConfig),
}

/// `SECRETS_SOURCE=secret-manager`: which secrets, and how fast to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretManagerSourceConfig {
    /// `GOOGLE_CLOUD_PROJECT`.
    pub project: String,
    /// `SECRETS_FILTER`: Secret Manager's own filter syntax (`labels.backup=true`).
    pub filter: Option<String>,
    /// `SECRETS_LOCATIONS`: regions whose regional secrets are read too (comma-separated).
    pub locations: Vec<String>,
    /// `SECRET_MANAGER_REQUESTS_PER_MINUTE` (default 600, the default read quota).
    pub requests_per_minute: u32,
    /// `SECRET_MANAGER_EMULATOR_HOST`: a fake, over plain HTTP without credentials.
    pub emulator_host: Option<String>,
}

/// How the worker runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Jobs run at once by one worker (backups are heavy: default 1).
    pub concurrency: u32,
    /// Time running jobs get to finish after SIGTERM before their messages are nacked.
    pub shutdown_grace: std::time::Duration,
}

/// A PostgreSQL connection URL whose password never appears in `Debug` or
/// `Display`; [`DatabaseUrl::expose`] gives the real value to a connector.
#[derive(Clone)]
pub struct DatabaseUrl {
    value: SecretString,
    redacted: String,
    config: tokio_postgres::Config,
}

impl DatabaseUrl {
    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// The parsed connection settings.
    pub fn postgres_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The server it reaches, whatever the database, user or password:
    /// each `host:port` (a socket directory as its path), lowercased, sorted.
    /// Two URLs with the same server reach the same cluster.
    pub fn server(&self) -> String {
        let ports = self.config.get_ports();
        let mut servers: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let port = match ports {
                    [] => 5432,
                    [port] => *port,
                    ports => ports.get(index).copied().unwrap_or(5432),
                };
                let host = match host {
                    tokio_postgres::config::Host::Tcp(name) => name.to_lowercase(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                format!("{host}:{port}")
            })
            .collect();
        servers.sort();
        servers.dedup();
        servers.join(",")
    }

    /// The same server and credentials, another database (a drill's scratch
    /// database, say). `name` must be a plain identifier. Works on the text
    /// of the URL, split the way tokio-postgres reads it (user-info up to the
    /// first `@`, then the hosts up to `/` or `?`), so what it accepted stays
    /// usable: Cloud SQL's socket form `postgres://USER:PASSWORD@/DATABASE?host=/cloudsql/...`
    /// (an empty host, which a WHATWG URL parser refuses), or a password with
    /// an unencoded `/`, `?` or `#`. The result must name the same hosts,
    /// ports, user and password, or this is an error.
    pub fn with_database(&self, name: &str) -> Result<DatabaseUrl, String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{name:?} is not a plain database name (letters, digits, _)"));
        }
        let value = self.expose();
        let (scheme, rest) = value
            .split_once("://")
            .ok_or_else(|| format!("{} is not a URL", self.redacted))?;
        let (user_info, rest) = match rest.split_once('@') {
            Some((user_info, rest)) => (Some(user_info), rest),
            None => (None, rest),
        };
        let (hosts, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let query = tail.split_once('?').map_or("", |(_, query)| query);
        // A `dbname=` parameter would override the path.
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("dbname"))
            .collect();
        let mut url = format!("{scheme}://");
        if let Some(user_info) = user_info {
            url.push_str(user_info);
            url.push('@');
        }
        url.push_str(hosts);
        url.push('/');
        url.push_str(name);
        if !kept.is_empty() {
            url.push('?');
            url.push_str(&kept.join("&"));
        }
        let mut other: DatabaseUrl = url.parse()?;
        // A password from the environment or the password file stays the
        // one this server was reached with (a file's line may name a database).
        if let (Some(password), false) = (
            self.config.get_password(),
            user_info.is_some_and(|info| info.contains(':')),
        ) {
            other.config.password(password);
        }
        let (before, after) = (self.postgres_config(), other.postgres_config());
        let same_server = before.get_hosts() == after.get_hosts()
            && before.get_ports() == after.get_ports()
            && before.get_user() == after.get_user()
            && before.get_password() == after.get_password()
            && after.get_dbname() == Some(name);
        if !same_server {
            return Err(format!(
                "cannot name database {name} in {} without changing its server or credentials",
                self.redacted
            ));
        }
        Ok(other)
    }

    /// The database name the URL selects (PostgreSQL defaults it to the user).
    pub fn database_name(&self) -> Option<&str> {
        self.config.get_dbname().or(self.config.get_user())
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    /// Accepts `postgres://` and `postgresql://` URLs; the error never contains
    /// the password.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let redacted = redact_url(value);
        if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
            return Err(format!(
                "{redacted:?} is not a PostgreSQL URL (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)"
            ));
        }
        // A second `@`: most likely a password with reserved characters.
        let after_scheme = value.split_once("://").map_or("", |(_, rest)| rest);
        let encoding_hint = if after_scheme.matches('@').count() > 1 {
            "; a password with URL-reserved characters must be percent-encoded (@ as %40, : as %3A, / as %2F), \
             or given in PGPASSWORD or ~/.pgpass instead"
        } else {
            ""
        };
        let mut config = tokio_postgres::Config::from_str(value).map_err(|error| {
            format!(
                "{redacted:?} is not a valid PostgreSQL URL ({}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE{encoding_hint}",
                redact_url(&error.to_string())
            )
        })?;
        libpq::apply_environment(&mut config, value, &|name| std::env::var(name).ok())?;
        if config.get_hosts().is_empty() {
            return Err(format!(
                "{redacted:?} names no host (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or ?host=/socket/dir)"
            ));
        }
        Ok(DatabaseUrl {
            value: SecretString::from(value.to_owned()),
            redacted,
            config,
        })
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_tuple("DatabaseUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.redacted)
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

/// Replaces the password in a URL's user-info and in `password=` query or
/// key/value parameters with `[redacted]`. Works on text that is not a valid
/// URL too, because it is used to clean error messages.
pub fn redact_url(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme_end + 3);
        result.push_str(head);
        // tokio-postgres takes everything up to the first '@' as user-info, so
        // a password may contain '/', '?', '#' or spaces; a password with an
        // unencoded '@' would show its end after the first one. Redact up to
        // the last '@' before the text around the URL resumes (over-redacting
        // a host is harmless; showing part of a password is not).
        let token_end = tail.find(['"', '\'', '\n', '<', '>']).unwrap_or(tail.len());
        let first_at = tail[..token_end].find('@');
        let last_at = tail[..token_end].rfind('@');
        match first_at.zip(last_at) {
            Some((first, at)) if tail[..first].contains(':') => {
                let user = &tail[..tail.find(':').expect("checked")];
                result.push_str(user);
                result.push_str(":[redacted]");
                rest = &tail[at..];
            }
            _ => rest = tail,
        }
    }
    result.push_str(rest);
    redact_password_parameters(&result)
}

fn redact_password_parameters(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.to_ascii_lowercase().find("password=") {
        let value_start = position + "password=".len();
        result.push_str(&rest[..value_start]);
        result.push_str("[redacted]");
        let value = &rest[value_start..];
        let value_end = value.find(['&', ' ', '#', '"', '\'']).unwrap_or(value.len());
        rest = &value[value_end..];
    }
    result.push_str(rest);
    result
}

/// Every problem found in the environment, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Reads variables and collects problems instead of stopping at the first.
struct Reader {
    variables: HashMap<String, String>,
    problems: Vec<String>,
}

impl Reader {
    fn optional(&mut self, name: &str) -> Option<String> {
        self.variables
            .get(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// `JOB_SECRET`, compared byte for byte with what messages carry. Cloud
    /// Scheduler sends the stored secret exactly, whitespace included, so a
    /// trimmed copy would refuse every scheduled message as forged: refuse to
    /// start instead.
    fn job_secret(&mut self) -> Option<String> {
        let secret = self.required(
            "JOB_SECRET",
            "the shared secret job messages must carry as x-job-secret",
        )?;
        if self.variables["JOB_SECRET"] != secret {
            self.problems.push(
                "JOB_SECRET starts or ends with whitespace (a trailing newline?): Cloud Scheduler sends \
                 the stored secret byte for byte and the worker compares it exactly, so every scheduled \
                 message would be refused as forged; store it without (printf %s VALUE | gcloud secrets \
                 versions add JOB_SECRET --data-file=-)"
                    .to_owned(),
            );
            return None;
        }
        Some(secret)
    }

    fn required(&mut self, name: &str, what: &str) -> Option<String> {
        let value = self.optional(name);
        if value.is_none() {
            let state = if self.variables.contains_key(name) {
                "is empty"
            } else {
                "is not set"
            };
            self.problems.push(format!("{name} {state}: {what}"));
        }
        value
    }

    fn parsed<T: FromStr>(&mut self, name: &str, default: T, accepted: &str) -> T {
        match self.optional(name) {
            None => default,
            Some(text) => match text.parse() {
                Ok(value) => value,
                Err(_) => {
                    self.problems
                        .push(format!("{name}={text:?} is invalid: expected {accepted}"));
                    default
                }
            },
        }
    }

    /// `DATABASES`: comma-separated database names, each usable in object
    /// names, none twice; default the database `DATABASE_URL` names.
    fn databases(&mut self, database_url: Option<&DatabaseUrl>) -> Vec<String> {
        let Some(list) = self.optional("DATABASES") else {
            return database_url
                .and_then(DatabaseUrl::database_name)
                .map(|name| vec![name.to_owned()])
                .unwrap_or_default();
        };
        let mut databases: Vec<String> = Vec::new();
        for name in list.split(',').map(str::trim) {
            if !is_object_name_safe(name) {
                self.problems.push(format!(
                    "DATABASES: {name:?} is not a database name this worker can back up: use 1-63 letters, \
                     digits, '_' or '-' (names become object names), separated by commas"
                ));
            } else if databases.iter().any(|seen| seen == name) {
                self.problems.push(format!(
                    "DATABASES names {name:?} twice: each database is backed up once a day"
                ));
            } else {
                databases.push(name.to_owned());
            }
        }
        databases
    }

    /// The `secret-manager` source's variables.
    fn secret_manager_source(&mut self) -> Option<SecretsSourceConfig> {
        let project = self.required(
            "GOOGLE_CLOUD_PROJECT",
            "the project whose Secret Manager secrets SECRETS_SOURCE=secret-manager backs up",
        );
        let filter = self.optional("SECRETS_FILTER");
        let mut locations = Vec::new();
        for location in self
            .optional("SECRETS_LOCATIONS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|location| !location.is_empty())
        {
            let valid = location
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && location.starts_with(|c: char| c.is_ascii_lowercase());
            if valid {
                locations.push(location.to_owned());
            } else {
                self.problems.push(format!(
                    "SECRETS_LOCATIONS: {location:?} is not a location (lowercase letters, digits and -, e.g. \
                     europe-west1)"
                ));
            }
        }
        let requests_per_minute = self.positive("SECRET_MANAGER_REQUESTS_PER_MINUTE", 600);
        let emulator_host = self.optional("SECRET_MANAGER_EMULATOR_HOST");
        Some(SecretsSourceConfig::SecretManager(SecretManagerSourceConfig {
            project: project?,
            filter,
            locations,
            requests_per_minute,
            emulator_host,
        }))
    }

    /// `BACKUP_COMPRESSION`, `BACKUP_ENCRYPTION`, `BACKUP_ENCRYPTION_RECIPIENTS`,
    /// `BACKUP_AGE_IDENTITY_FILE` and `BACKUP_AGE_IDENTITY_SECRET`.
    fn dumps(&mut self, backing_up: bool) -> DumpConfig {
        use crate::postgres::archive::{CompressionSetting, IdentitySource, Recipients};
        let compression = match self.optional("BACKUP_COMPRESSION") {
            None => CompressionSetting::default(),
            Some(text) => text.parse().unwrap_or_else(|problem| {
                self.problems.push(format!("BACKUP_COMPRESSION: {problem}"));
                CompressionSetting::default()
            }),
        };
        let encryption = match self.optional("BACKUP_ENCRYPTION").as_deref() {
            None | Some("optional") => EncryptionPolicy::Optional,
            Some("required") => EncryptionPolicy::Required,
            Some(other) => {
                self.problems.push(format!(
                    "BACKUP_ENCRYPTION={other:?} is invalid: expected required (refuse to back up without \
                     BACKUP_ENCRYPTION_RECIPIENTS) or optional (encrypt when recipients are set)"
                ));
                EncryptionPolicy::Optional
            }
        };
        let recipients = match self.optional("BACKUP_ENCRYPTION_RECIPIENTS") {
            None => None,
            Some(list) => match Recipients::parse(&list) {
                Ok(recipients) => Some(recipients).filter(|recipients| !recipients.is_empty()),
                Err(problem) => {
                    self.problems.push(format!("BACKUP_ENCRYPTION_RECIPIENTS: {problem}"));
                    None
                }
            },
        };
        let recipients_invalid = self
            .problems
            .iter()
            .any(|problem| problem.starts_with("BACKUP_ENCRYPTION_RECIPIENTS"));
        if backing_up && encryption == EncryptionPolicy::Required && recipients.is_none() && !recipients_invalid {
            let state = if self.variables.contains_key("BACKUP_ENCRYPTION_RECIPIENTS") {
                "names no key"
            } else {
                "is not set"
            };
            self.problems.push(format!(
                "BACKUP_ENCRYPTION=required but BACKUP_ENCRYPTION_RECIPIENTS {state}: set it to the age public keys \
                 (age1…, comma-separated; include the offline break-glass key) every dump is encrypted to"
            ));
        }
        let file = self.optional("BACKUP_AGE_IDENTITY_FILE");
        let secret = self.optional("BACKUP_AGE_IDENTITY_SECRET");
        let identity = match (file, secret) {
            (Some(_), Some(_)) => {
                self.problems.push(
                    "BACKUP_AGE_IDENTITY_FILE and BACKUP_AGE_IDENTITY_SECRET are both set: set one, the place \
                     restore and the drill read the age identity from"
                        .to_owned(),
                );
                None
            }
            (Some(path), None) => Some(IdentitySource::File(path.into())),
            (None, Some(name)) => self.identity_secret(&name),
            (None, None) => None,
        };
        DumpConfig {
            compression,
            encryption,
            recipients,
            identity,
        }
    }

    /// `BACKUP_AGE_IDENTITY_SECRET`: `projects/P/secrets/S[/versions/V]`, or
    /// `S` in `GOOGLE_CLOUD_PROJECT`; the latest version unless one is named.
    fn identity_secret(&mut self, name: &str) -> Option<crate::postgres::archive::IdentitySource> {
        let parts: Vec<&str> = name.split('/').collect();
        let valid_id = |id: &str| {
            !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        let version = match parts.as_slice() {
            [secret] if valid_id(secret) => match self.optional("GOOGLE_CLOUD_PROJECT") {
                Some(project) => format!("projects/{project}/secrets/{secret}/versions/latest"),
                None => {
                    self.problems.push(format!(
                        "BACKUP_AGE_IDENTITY_SECRET={name:?} names a secret without its project: set \
                         GOOGLE_CLOUD_PROJECT, or give projects/PROJECT/secrets/{name}"
                    ));
                    return None;
                }
            },
            ["projects", project, "secrets", secret] if valid_id(project) && valid_id(secret) => {
                format!("{name}/versions/latest")
            }
            ["projects", project, "secrets", secret, "versions", version]
                if valid_id(project) && valid_id(secret) && valid_id(version) =>
            {
                name.to_owned()
            }
            _ => {
                self.problems.push(format!(
                    "BACKUP_AGE_IDENTITY_SECRET={name:?} is not a secret: expected SECRET (in GOOGLE_CLOUD_PROJECT), \
                     projects/PROJECT/secrets/SECRET or projects/PROJECT/secrets/SECRET/versions/VERSION"
                ));
                return None;
            }
        };
        Some(crate::postgres::archive::IdentitySource::Secret {
            version,
            settings: crate::secret_manager::ClientSettings {
                emulator_host: self.optional("SECRET_MANAGER_EMULATOR_HOST"),
                ..Default::default()
            },
        })
    }

    fn positive(&mut self, name: &str, default: u32) -> u32 {
        let value = self.parsed(name, default, "a whole number from 1 to 100000");
        if !(1..=100_000).contains(&value) {
            self.problems.push(format!(
                "{name}={value} is out of range: expected a whole number from 1 to 100000"
            ));
            return default;
        }
        value
    }

    fn retention(&mut self) -> RetentionConfig {
        let defaults = RetentionConfig::default();
        RetentionConfig {
            daily_days: self.positive("RETENTION_DAILY_DAYS", defaults.daily_days),
            monthly_months: self.positive("RETENTION_MONTHLY_MONTHS", defaults.monthly_months),
            weekly_secrets_weeks: self.positive("RETENTION_WEEKLY_SECRETS_WEEKS", defaults.weekly_secrets_weeks),
            inventory_days: self.positive("RETENTION_INVENTORY_DAYS", defaults.inventory_days),
            drill_report_months: self.positive("RETENTION_DRILL_REPORT_MONTHS", defaults.drill_report_months),
            keep_min_daily: self.positive("RETENTION_KEEP_MIN_DAILY", defaults.keep_min_daily),
            keep_min_monthly: self.positive("RETENTION_KEEP_MIN_MONTHLY", defaults.keep_min_monthly),
            keep_min_weekly_secrets: self
                .positive("RETENTION_KEEP_MIN_WEEKLY_SECRETS", defaults.keep_min_weekly_secrets),
            keep_min_inventories: self.positive("RETENTION_KEEP_MIN_INVENTORIES", defaults.keep_min_inventories),
            keep_min_drill_reports: self.positive("RETENTION_KEEP_MIN_DRILL_REPORTS", defaults.keep_min_drill_reports),
        }
    }

    fn resource_name(&mut self, name: &str, default: &str) -> String {
        let value = self.optional(name).unwrap_or_else(|| default.to_owned());
        // Pub/Sub's rule for topic and subscription IDs.
        let valid = (3..=255).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_alphabetic())
            && !value.starts_with("goog")
            && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c));
        if !valid {
            self.problems.push(format!(
                "{name}={value:?} is not a valid Pub/Sub name: 3-255 characters, starting with a letter, \
                 letters, digits and - _ . ~ + % only, not starting with \"goog\""
            ));
        }
        value
    }

    fn schedule_time_zone(&mut self) -> chrono_tz::Tz {
        self.parsed(
            "SCHEDULE_TIME_ZONE",
            chrono_tz::UTC,
            "an IANA time zone name such as UTC or Europe/Brussels",
        )
    }

    fn pubsub(&mut self) -> PubSubConfig {
        PubSubConfig {
            subscription: self.resource_name("PUBSUB_SUBSCRIPTION", "backup-jobs-worker"),
            topic: self.resource_name("PUBSUB_TOPIC", "backup-jobs"),
            dead_letter_topic: self.resource_name("PUBSUB_DLQ_TOPIC", "backup-jobs-dlq"),
            dead_letter_subscription: self.resource_name("PUBSUB_DLQ_SUBSCRIPTION", "backup-jobs-dlq-inspect"),
            emulator_host: self.optional("PUBSUB_EMULATOR_HOST"),
            max_delivery_attempts: self.optional("PUBSUB_MAX_DELIVERY_ATTEMPTS").and_then(|text| {
                match text.parse::<u32>() {
                    Ok(limit) if (5..=100).contains(&limit) => Some(limit),
                    _ => {
                        self.problems.push(format!(
                            "PUBSUB_MAX_DELIVERY_ATTEMPTS={text:?} is invalid: expected a whole number from 5 to 100 \
                             (the subscription's dead-letter policy)"
                        ));
                        None
                    }
                }
            }),
        }
    }

    /// A store from `store_variable`, else `gs://` + `bucket_variable`;
    /// one of the two must be set (`what`: "the backups").
    fn store(&mut self, store_variable: &str, bucket_variable: &str, what: &str) -> Option<StoreLocation> {
        match self.optional(store_variable) {
            Some(value) => match value.parse::<StoreLocation>() {
                Ok(location) => Some(location),
                Err(error) => {
                    self.problems.push(format!("{store_variable}: {error}"));
                    None
                }
            },
            None if self.optional(bucket_variable).is_some() => {
                let bucket = self.bucket(bucket_variable)?;
                StoreLocation::gcs(&bucket, "").ok()
            }
            None => {
                self.problems.push(format!(
                    "{store_variable} is not set: where {what} are (gs://BUCKET[/PREFIX] or file:///PATH); \
                     {bucket_variable}=BUCKET works too"
                ));
                None
            }
        }
    }

    /// The full drill's scratch targets: each optional, each checked when set.
    fn full_drill(&mut self) -> FullDrillConfig {
        let project = self.optional("DRILL_SECRET_MANAGER_PROJECT");
        if let Some(project) = &project {
            let valid = (6..=30).contains(&project.len())
                && project
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && project.starts_with(|c: char| c.is_ascii_lowercase());
            if !valid {
                self.problems.push(format!(
                    "DRILL_SECRET_MANAGER_PROJECT: {project:?} is not a project id (6 to 30 lowercase letters, digits \
                     and -, starting with a letter)"
                ));
            }
        }
        let documents = match self.optional("DRILL_DOCUMENTS_STORE") {
            None => None,
            Some(value) => match value.parse::<StoreLocation>() {
                Ok(location) => Some(location),
                Err(error) => {
                    self.problems.push(format!("DRILL_DOCUMENTS_STORE: {error}"));
                    None
                }
            },
        };
        // The Secret Manager source may have reported a bad quota already.
        let known = self.problems.len();
        let requests_per_minute = self.positive("SECRET_MANAGER_REQUESTS_PER_MINUTE", 600);
        let mut index = known;
        while index < self.problems.len() {
            if self.problems[..known].contains(&self.problems[index]) {
                self.problems.remove(index);
            } else {
                index += 1;
            }
        }
        FullDrillConfig {
            project,
            documents,
            production_project: self.optional("GOOGLE_CLOUD_PROJECT"),
            requests_per_minute,
            emulator_host: self.optional("SECRET_MANAGER_EMULATOR_HOST"),
            drill_database_url_set: self.optional("DRILL_DATABASE_URL").is_some(),
            production_server: self
                .optional("DATABASE_URL")
                .and_then(|value| value.parse::<DatabaseUrl>().ok())
                .map(|url| url.server()),
        }
    }

    /// A database URL from `name`, else from `DATABASE_URL`; one must be set.
    fn database_or_default(&mut self, name: &str, what: &str) -> Option<DatabaseUrl> {
        match self.optional(name) {
            Some(value) => parse_database_url(self, name, Some(value)),
            None => match self.optional("DATABASE_URL") {
                Some(value) => parse_database_url(self, "DATABASE_URL", Some(value)),
                None => {
                    self.problems.push(format!(
                        "{name} and DATABASE_URL are not set: {what} (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)"
                    ));
                    None
                }
            },
        }
    }

    /// `SECRETS_ENCRYPTION_KEY`, at least 32 characters.
    fn secrets_encryption_key(&mut self) -> Option<String> {
        let key = self.required(
            "SECRETS_ENCRYPTION_KEY",
            "the passphrase secrets backups are encrypted with (at least 32 characters)",
        )?;
        if key.chars().count() < MINIMUM_ENCRYPTION_KEY_CHARACTERS {
            self.problems.push(format!(
                "SECRETS_ENCRYPTION_KEY is too short: it must be at least \
                 {MINIMUM_ENCRYPTION_KEY_CHARACTERS} characters long"
            ));
            return None;
        }
        Some(key)
    }

    /// `SECRETS_SOURCE` and the variables of the source it names.
    fn secrets_source(&mut self) -> Option<SecretsSourceConfig> {
        match self.optional("SECRETS_SOURCE").as_deref().unwrap_or("env") {
            "env" => {
                let names = self
                    .optional("SECRETS_ENV_VARS")
                    .map(|list| comma_separated(&list))
                    .unwrap_or_default();
                let prefix = self.optional("SECRETS_ENV_PREFIX");
                if names.is_empty() && prefix.is_none() {
                    self.problems.push(
                        "SECRETS_SOURCE=env needs SECRETS_ENV_VARS (comma-separated names) or SECRETS_ENV_PREFIX: \
                         otherwise the secrets backup would have nothing to protect"
                            .to_owned(),
                    );
                }
                Some(SecretsSourceConfig::Env { names, prefix })
            }
            "file" => self
                .required(
                    "SECRETS_FILE",
                    "the JSON or .env file to back up when SECRETS_SOURCE=file",
                )
                .map(|path| SecretsSourceConfig::File { path: path.into() }),
            "secret-manager" => self.secret_manager_source(),
            other => {
                self.problems.push(format!(
                    "SECRETS_SOURCE={other:?} is invalid: expected env, file or secret-manager"
                ));
                None
            }
        }
    }

    fn bucket(&mut self, name: &str) -> Option<String> {
        let bucket = self.required(name, "the GCS bucket name")?;
        match StoreLocation::gcs(&bucket, "") {
            Ok(_) => Some(bucket),
            Err(error) => {
                self.problems.push(format!("{name}: {}", error.reason));
                None
            }
        }
    }
}

fn parse_database_url(reader: &mut Reader, name: &str, value: Option<String>) -> Option<DatabaseUrl> {
    value.and_then(|value| match value.parse::<DatabaseUrl>() {
        Ok(url) => Some(url),
        Err(problem) => {
            reader.problems.push(format!("{name}: {problem}"));
            None
        }
    })
}

impl Config {
    /// The Pub/Sub part of the configuration.
    pub fn messaging(&self) -> MessagingConfig {
        MessagingConfig {
            job_secret: self.job_secret.clone(),
            pubsub: self.pubsub.clone(),
            google_cloud_project: self.google_cloud_project.clone(),
            schedule_time_zone: self.schedule_time_zone,
            default_database: self.databases.first().cloned(),
        }
    }

    /// The part of the configuration the DR drill reads.
    pub fn drill(&self) -> DrillConfig {
        DrillConfig {
            drill_database_url: self.drill_database_url.clone(),
            databases: self.databases.clone(),
            secrets_encryption_key: self.secrets_encryption_key.clone(),
            backup_store: self.backup_store.clone(),
            documents_store: self.documents_store.clone(),
            storage_emulator_host: self.storage_emulator_host.clone(),
            secret_manager: match &self.secrets_source {
                SecretsSourceConfig::SecretManager(source) => Some(source.clone()),
                _ => None,
            },
            dumps: self.dumps.clone(),
            full: self.full_drill.clone(),
        }
    }

    /// Parses the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_os_vars(std::env::vars_os())
    }

    /// Parses a set of variables (the process environment, or a test's).
    pub fn from_os_vars(variables: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut map = HashMap::new();
        for (name, value) in variables {
            let (Some(name), value) = (name.to_str().map(str::to_owned), value.into_string()) else {
                continue; // names we read are ASCII; anything else is not ours
            };
            match value {
                Ok(value) => {
                    map.insert(name, value);
                }
                Err(_) => problems.push(format!("{name} is not valid UTF-8")),
            }
        }
        Config::from_vars_with(map, problems)
    }

    /// Parses string variables; convenient in tests.
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        variables: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Config, ConfigError> {
        let map = variables
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect();
        Config::from_vars_with(map, Vec::new())
    }

    fn from_vars_with(variables: HashMap<String, String>, problems: Vec<String>) -> Result<Config, ConfigError> {
        let mut reader = Reader { variables, problems };

        let job_secret = reader.job_secret();

        let secrets_encryption_key = reader.secrets_encryption_key();

        let raw_database_url = reader.required("DATABASE_URL", "the PostgreSQL database to back up (postgres://...)");
        let parsed_database_url = parse_database_url(&mut reader, "DATABASE_URL", raw_database_url);
        let databases = reader.databases(parsed_database_url.as_ref());
        let ledger_database_url = match reader.optional("LEDGER_DATABASE_URL") {
            Some(value) => parse_database_url(&mut reader, "LEDGER_DATABASE_URL", Some(value)),
            None => parsed_database_url.clone(),
        };
        let drill_database_url = match reader.optional("DRILL_DATABASE_URL") {
            Some(value) => parse_database_url(&mut reader, "DRILL_DATABASE_URL", Some(value)),
            None => parsed_database_url.clone(),
        };

        // The bucket names only matter where a store is not given as a URL.
        let gcs_backups_bucket = reader.optional("GCS_BACKUPS_BUCKET");
        let gcs_documents_bucket = reader.optional("GCS_DOCUMENTS_BUCKET");
        let backup_store = reader.store("BACKUP_STORE", "GCS_BACKUPS_BUCKET", "the backups");
        let documents_store = reader.store("DOCUMENTS_STORE", "GCS_DOCUMENTS_BUCKET", "the documents");

        let pubsub = reader.pubsub();

        let port = reader.parsed("PORT", 8080u16, "a TCP port number from 0 to 65535");
        let schedule_time_zone = reader.schedule_time_zone();

        let retention = reader.retention();

        let secrets_source = reader.secrets_source();

        let worker = WorkerConfig {
            concurrency: reader.positive("WORKER_CONCURRENCY", 1),
            shutdown_grace: std::time::Duration::from_secs(u64::from(reader.positive("SHUTDOWN_GRACE_SECONDS", 25))),
        };

        let google_cloud_project = reader.optional("GOOGLE_CLOUD_PROJECT");
        let storage_emulator_host = reader.optional("STORAGE_EMULATOR_HOST");
        let dumps = reader.dumps(true);
        let full_drill = reader.full_drill();

        if !reader.problems.is_empty() {
            return Err(ConfigError {
                problems: reader.problems,
            });
        }
        // Every `None` above recorded a problem, so these all hold values now.
        let missing = "validated above";
        Ok(Config {
            job_secret: SecretString::from(job_secret.expect(missing)),
            secrets_encryption_key: SecretString::from(secrets_encryption_key.expect(missing)),
            database_url: parsed_database_url.expect(missing),
            databases,
            ledger_database_url: ledger_database_url.expect(missing),
            drill_database_url: drill_database_url.expect(missing),
            full_drill,
            gcs_backups_bucket,
            gcs_documents_bucket,
            backup_store: backup_store.expect(missing),
            documents_store: documents_store.expect(missing),
            google_cloud_project,
            pubsub,
            storage_emulator_host,
            port,
            schedule_time_zone,
            retention,
            secrets_source: secrets_source.expect(missing),
            worker,
            dumps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls_and_parameters() {
        let cases = [
            (
                "postgres://user:hunter2@db:5432/app",
                "postgres://user:[redacted]@db:5432/app",
            ),
            ("postgresql://user@db/app", "postgresql://user@db/app"),
            (
                "postgres://u:p%40ss@db/app?sslmode=require",
                "postgres://u:[redacted]@db/app?sslmode=require",
            ),
            (
                "postgres://u:pw@/app?host=/cloudsql/x",
                "postgres://u:[redacted]@/app?host=/cloudsql/x",
            ),
            (
                "postgres://db/app?password=hunter2&x=1",
                "postgres://db/app?password=[redacted]&x=1",
            ),
            ("host=db password=hunter2 user=u", "host=db password=[redacted] user=u"),
            (
                "error at postgres://a:b@c/d: refused",
                "error at postgres://a:[redacted]@c/d: refused",
            ),
            // An unencoded '@' in the password: no part of it shows.
            ("postgres://u:p@ss@host/db", "postgres://u:[redacted]@host/db"),
            (
                "\"postgres://u:se@cr:et@host/db\" is not valid",
                "\"postgres://u:[redacted]@host/db\" is not valid",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "{input}");
        }
    }

    #[test]
    fn another_database_on_the_same_server_keeps_every_other_setting() {
        use tokio_postgres::config::Host;
        let cases = [
            (
                "postgres://user:p%40ss@db:5433/app?sslmode=disable",
                "postgres://user:p%40ss@db:5433/scratch_1?sslmode=disable",
            ),
            // Cloud SQL's socket form: an empty host (a WHATWG URL parser refuses it).
            (
                "postgres://keshless:pw@/keshless?host=/cloudsql/p:europe-west1:db",
                "postgres://keshless:pw@/scratch_1?host=/cloudsql/p:europe-west1:db",
            ),
            (
                "postgresql:///app?host=/var/run/postgresql",
                "postgresql:///scratch_1?host=/var/run/postgresql",
            ),
            ("postgres://user@db", "postgres://user@db/scratch_1"),
            (
                "postgres://user@db?application_name=x",
                "postgres://user@db/scratch_1?application_name=x",
            ),
            // Read as tokio-postgres reads them: user-info up to the first `@`.
            (
                "postgres://u:ab/cd?e#f@/keshless?host=/cloudsql/x",
                "postgres://u:ab/cd?e#f@/scratch_1?host=/cloudsql/x",
            ),
            ("postgres://u@[::1]:5433/app", "postgres://u@[::1]:5433/scratch_1"),
            (
                "postgres://u@h1:5432,h2:5433/app",
                "postgres://u@h1:5432,h2:5433/scratch_1",
            ),
            (
                "postgres://u@db/app?password=a#b&sslmode=require",
                "postgres://u@db/scratch_1?password=a#b&sslmode=require",
            ),
            // A dbname parameter would win over the path: it goes.
            (
                "postgres://user@db/app?dbname=app&connect_timeout=5",
                "postgres://user@db/scratch_1?connect_timeout=5",
            ),
        ];
        for (input, expected) in cases {
            let url: DatabaseUrl = input.parse().unwrap_or_else(|error| panic!("{input}: {error}"));
            let other = url
                .with_database("scratch_1")
                .unwrap_or_else(|error| panic!("{input}: {error}"));
            assert_eq!(other.expose(), expected, "{input}");
            let (before, after) = (url.postgres_config(), other.postgres_config());
            assert_eq!(after.get_dbname(), Some("scratch_1"), "{input}");
            assert_eq!(after.get_hosts(), before.get_hosts(), "{input}");
            assert_eq!(after.get_ports(), before.get_ports(), "{input}");
            assert_eq!(after.get_user(), before.get_user(), "{input}");
            assert_eq!(after.get_password(), before.get_password(), "{input}");
        }
        let socket: DatabaseUrl = "postgres://u:pw@/app?host=/cloudsql/x".parse().unwrap();
        assert_eq!(
            socket.with_database("d").unwrap().postgres_config().get_hosts(),
            [Host::Unix("/cloudsql/x".into())]
        );
        for bad in ["", "a-b", "a;DROP", "é"] {
            let error = socket.with_database(bad).unwrap_err();
            assert!(error.contains("not a plain database name"), "{bad:?}: {error}");
        }
    }
}
