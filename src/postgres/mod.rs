//! PostgreSQL backups: connecting and classifying failures, the snapshot
//! facts a backup records (versions, size, exact row counts), the object
//! layout and manifest in the store, the `pg_dump`/`pg_restore` pipes, and the
//! restore's progress on a terminal.

pub mod archive;
pub mod fidelity;
pub mod globals;
pub mod layout;
pub mod process;
pub mod progress;
pub mod restore;
pub mod tls;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::anyhow;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::runtime::job::JobError;

/// A table and its exact row count under the backup's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableCount {
    pub schema: String,
    pub table: String,
    pub rows: i64,
}

/// Schemas never backed up or compared: the system's and our own ledger.
pub const EXCLUDED_SCHEMAS: [&str; 3] = ["pg_catalog", "information_schema", "keshless_ops"];

/// A server refused the credentials (or asked for a password none was
/// given): permanent, and the operator's to fix. Said once, with the user,
/// the host and where a password is read from; never the password.
#[derive(Debug, thiserror::Error)]
#[error(
    "{detail} (user {user:?} on {host}): a configuration error, retrying cannot help; give the password in the \
     URL, in PGPASSWORD or in the password file (PGPASSFILE, default ~/.pgpass), and percent-encode URL-reserved \
     characters of a password inside a URL (@ as %40, : as %3A, / as %2F)"
)]
pub struct AuthenticationError {
    pub user: String,
    pub host: String,
    pub detail: String,
}

impl AuthenticationError {
    /// The error, when `error` is a refused authentication.
    pub fn from_connect(error: &tokio_postgres::Error, config: &tokio_postgres::Config) -> Option<AuthenticationError> {
        let detail = match error.as_db_error() {
            Some(db)
                if [
                    SqlState::INVALID_PASSWORD,
                    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                ]
                .contains(db.code()) =>
            {
                db.message().to_owned()
            }
            Some(_) => return None,
            // tokio-postgres' own words when the server asks for a password.
            None if crate::telemetry::error_chain(error).contains("password missing") => {
                "the server asks for a password and none was given".to_owned()
            }
            None => return None,
        };
        let host = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            })
            .collect::<Vec<_>>()
            .join(",");
        Some(AuthenticationError {
            user: config.get_user().unwrap_or("?").to_owned(),
            host,
            detail,
        })
    }
}

/// Connects with a short connect timeout; the error says whether retrying can help.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, JobError> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(15));
    }
    let (client, connection) = config.connect(tls::connector()).await.map_err(|error| {
        match AuthenticationError::from_connect(&error, &config) {
            Some(refused) => JobError::Permanent(anyhow::Error::new(refused)),
            None => classify(error),
        }
    })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Permanent for what a retry cannot fix (authentication, missing database
/// or role, permissions), transient for the rest (unreachable, restarting,
/// too many connections, timeouts).
pub fn classify(error: tokio_postgres::Error) -> JobError {
    let permanent = error.code().is_some_and(|code| {
        [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ]
        .contains(code)
    });
    let error = anyhow!(crate::config::redact_url(&crate::telemetry::error_chain(&error)));
    if permanent {
        JobError::Permanent(error)
    } else {
        JobError::Transient(error)
    }
}

/// Server version as `major`, and as PostgreSQL prints it.
pub async fn server_version(client: &Client) -> Result<(u32, String), JobError> {
    let number: String = client
        .query_one("SHOW server_version_num", &[])
        .await
        .map_err(classify)?
        .get(0);
    let text: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(classify)?
        .get(0);
    let number: u32 = number
        .parse()
        .map_err(|_| JobError::permanent(anyhow!("unexpected server_version_num {number:?}")))?;
    Ok((number / 10_000, text))
}

/// Every ordinary table (partitions included, partitioned parents not, so
/// rows are counted once) as `(schema, table)`, in name order.
pub async fn table_names(client: &Client) -> Result<Vec<(String, String)>, JobError> {
    tables_ordered_by(client, "1, 2").await
}

/// [`table_names`] in the order `order_by` (SQL over `pg_class c`) gives.
async fn tables_ordered_by(client: &Client, order_by: &'static str) -> Result<Vec<(String, String)>, JobError> {
    let statement = format!(
        "SELECT n.nspname, c.relname
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r'
           AND n.nspname <> ALL($1)
           AND n.nspname NOT LIKE 'pg\\_%'
         ORDER BY {order_by}"
    );
    let tables = client
        .query(&statement, &[&EXCLUDED_SCHEMAS.as_slice()])
        .await
        .map_err(classify)?;
    Ok(tables.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Exact row count of one table.
async fn count_rows(client: &Client, schema: &str, table: &str) -> Result<i64, JobError> {
    let statement = format!(
        "SELECT count(*) FROM {}.{}",
        quote_identifier(schema),
        quote_identifier(table)
    );
    Ok(client.query_one(&statement, &[]).await.map_err(classify)?.get(0))
}

/// Every table (as [`table_names`]) with its exact row count, counted on
/// `client` one after another: the backup counts on the connection that
/// holds its snapshot.
pub async fn table_counts(client: &Client) -> Result<Vec<TableCount>, JobError> {
    let mut counts = Vec::new();
    for (schema, table) in table_names(client).await? {
        let rows = count_rows(client, &schema, &table).await?;
        counts.push(TableCount { schema, table, rows });
    }
    Ok(counts)
}

/// Like [`table_counts`], but over up to `connections` connections at once,
/// biggest tables first, for a database nobody else writes to (a restored
/// target): the counts stay exact, the wall time is that of the largest table.
pub async fn table_counts_concurrently(
    config: &tokio_postgres::Config,
    client: &Client,
    connections: usize,
) -> Result<Vec<TableCount>, JobError> {
    // Biggest first (by pages on disk) so one large table does not start last.
    let tables = tables_ordered_by(client, "pg_relation_size(c.oid) DESC, 1, 2").await?;
    let workers = connections.clamp(1, tables.len().max(1));
    let queue: Mutex<VecDeque<(String, String)>> = Mutex::new(tables.into());
    // The caller's connection counts too; the others are opened for this.
    let others = futures::future::try_join_all((1..workers).map(|_| async {
        let own = connect(config).await?;
        count_queued(&own, &queue).await
    }));
    let (mut counts, others) = futures::future::try_join(count_queued(client, &queue), others).await?;
    counts.extend(others.into_iter().flatten());
    counts.sort_by(|left, right| (&left.schema, &left.table).cmp(&(&right.schema, &right.table)));
    Ok(counts)
}

/// Session settings for counting rows: no JIT compilation (a count(*) only
/// pays its start-up cost) and, when `serial`, no parallel workers (a pool
/// the application shares). Set through `pg_settings`, so a server without
/// one of them (JIT came in PostgreSQL 11) is not an error.
pub async fn quiet_counting(client: &Client, serial: bool) -> Result<(), JobError> {
    let names: &[&str] = if serial {
        &["jit", "max_parallel_workers_per_gather"]
    } else {
        &["jit"]
    };
    client
        .execute(
            "SELECT set_config(name, CASE name WHEN 'jit' THEN 'off' ELSE '0' END, false)
             FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await
        .map_err(classify)?;
    Ok(())
}

/// Counts tables taken from `queue` until it is empty.
async fn count_queued(client: &Client, queue: &Mutex<VecDeque<(String, String)>>) -> Result<Vec<TableCount>, JobError> {
    quiet_counting(client, false).await?;
    let mut counted = Vec::new();
    loop {
        let next = queue.lock().expect("the queue lock is never poisoned").pop_front();
        let Some((schema, table)) = next else { break };
        let rows = count_rows(client, &schema, &table).await?;
        counted.push(TableCount { schema, table, rows });
    }
    Ok(counted)
}

/// `"name"` with embedded quotes doubled, as PostgreSQL's `quote_ident` does.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The major version of a PostgreSQL client tool (`pg_dump --version`).
pub async fn tool_version(program: &str) -> Result<(u32, String), JobError> {
    let output = tokio::process::Command::new(program)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| {
            JobError::permanent(anyhow!("cannot run {program}: {error} (is it installed and on PATH?)"))
        })?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    let major = text
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse::<u32>().ok())
        .ok_or_else(|| JobError::permanent(anyhow!("cannot read the version of {program} from {text:?}")))?;
    Ok((major, text))
}

/// The environment that points `pg_dump`/`pg_restore` at a database, so the
/// password never appears on a command line (visible in `ps`).
pub fn libpq_environment(config: &tokio_postgres::Config) -> Vec<(&'static str, String)> {
    let mut environment = Vec::new();
    if let Some(host) = config.get_hosts().first() {
        let host = match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        };
        environment.push(("PGHOST", host));
    }
    if let Some(port) = config.get_ports().first() {
        environment.push(("PGPORT", port.to_string()));
    }
    if let Some(user) = config.get_user() {
        environment.push(("PGUSER", user.to_owned()));
    }
    if let Some(password) = config.get_password() {
        environment.push(("PGPASSWORD", String::from_utf8_lossy(password).into_owned()));
    }
    if let Some(database) = config.get_dbname() {
        environment.push(("PGDATABASE", database.to_owned()));
    }
    // An sslmode the URL sets (tokio-postgres defaults to prefer, as libpq
    // does; then PGSSLMODE from the environment, if any, still applies).
    match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => environment.push(("PGSSLMODE", "disable".to_owned())),
        tokio_postgres::config::SslMode::Require => environment.push(("PGSSLMODE", "require".to_owned())),
        _ => {}
    }
    environment.push(("PGCONNECT_TIMEOUT", "15".to_owned()));
    // The children get a clean environment; pass on what libpq reads for
    // passwords and TLS when the URL does not say.
    for name in [
        "PGPASSWORD",
        "PGPASSFILE",
        "HOME",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
    ] {
        if !environment.iter().any(|(existing, _)| *existing == name) {
            if let Ok(value) = std::env::var(name) {
                environment.push((name, value));
            }
        }
    }
    environment
}
