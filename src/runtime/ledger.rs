//! The idempotency ledger: one row per idempotency key in
//! `keshless_ops.job_runs`, so a job runs once however often its message is
//! delivered, and several workers on one subscription never run it together.
//!
//! Claiming is one `INSERT … ON CONFLICT DO UPDATE … WHERE` statement: the
//! row lock PostgreSQL takes on conflict serialises concurrent claimers, and
//! the `WHERE` lets exactly one of them through (a new key, a failed run, an
//! expired lease, or a replay of a dead-lettered one). Lease times use the
//! database clock, so workers with skewed clocks still agree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseUrl;
use crate::runtime::job::Outcome;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Serialises migrations across workers starting at the same moment.
const MIGRATION_LOCK_ID: i64 = 0x6b65_7368_6c65_7373; // "keshless"

/// The state of a key, as the ledger reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    DeadLettered,
}

impl RunStatus {
    fn parse(text: &str) -> Result<RunStatus, LedgerError> {
        Ok(match text {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "dead_lettered" => RunStatus::DeadLettered,
            other => return Err(LedgerError::Corrupt(format!("unknown status {other:?}"))),
        })
    }
}

/// The answer to [`Ledger::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This worker owns the key now; `attempt` counts every run started for
    /// it (1 = first; more = after a failure, an expired lease or a replay).
    Claimed { attempt: u32 },
    /// Already done: the message is a duplicate.
    AlreadySucceeded { result: Option<serde_json::Value> },
    /// Already dead-lettered; only a replay may run it again.
    AlreadyDeadLettered { attempts: u32 },
    /// Another worker holds a live lease.
    HeldBy { owner: String, until: DateTime<Utc> },
    /// The key was used for a different job: a caller error, never run.
    KeyConflict { existing_job: String },
}

/// Whether a claim may take a dead-lettered key (replays may, redeliveries not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetteredKeys {
    Retake,
    Respect,
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub idempotency_key: String,
    pub job: String,
    pub status: RunStatus,
    pub attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub message_id: Option<String>,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// Ledger failures. Anything but `Migration`/`Corrupt` means the database
/// could not be reached or answered with an error: treat as transient.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The ledger's server refused the credentials: permanent, said once.
    #[error("the ledger's database refused the connection: {0}")]
    Authentication(crate::postgres::AuthenticationError),
    #[error("ledger query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("ledger migrations failed: {0}")]
    Migration(String),
    #[error("ledger row is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot set up the ledger connection pool: {0}")]
    Setup(String),
}

/// What the ledger knows of one job, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    pub job: String,
    /// The most recently updated run, whatever its status (its `attempts`
    /// are the attempts of the latest run).
    pub latest: Run,
    /// The most recently finished successful run.
    pub last_success: Option<Run>,
    /// The most recently updated failed or dead-lettered run.
    pub last_failure: Option<Run>,
    /// Runs in status `running`, newest first, live leases or not.
    pub running: Vec<Run>,
    /// For a job whose results name a database (postgres-backup), the most
    /// recently finished success of each database, by database.
    pub last_success_by_database: std::collections::BTreeMap<String, Run>,
}

/// [`Ledger::job_summaries`]: every job the ledger has seen, read in one
/// snapshot, with the database's clock so lease expiry is judged the way
/// the workers judge it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummaries {
    pub database_now: DateTime<Utc>,
    pub jobs: Vec<JobSummary>,
}

/// A dead letter acknowledged without a replay (`dlq discard`), as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discard {
    pub dead_letter_message_id: String,
    pub original_message_id: Option<String>,
    pub job: Option<String>,
    pub idempotency_key: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<u32>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub discarded_by: Option<String>,
    /// Set by the database.
    pub discarded_at: Option<DateTime<Utc>>,
}

/// Who claims and how.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub idempotency_key: &'a str,
    pub job: &'a str,
    pub owner: &'a str,
    pub lease: Duration,
    pub message_id: Option<&'a str>,
    pub source: &'a str,
    pub dead_lettered: DeadLetteredKeys,
}

/// Handle to the ledger database (a small connection pool).
#[derive(Clone)]
pub struct Ledger {
    pool: Pool,
    /// The pool's connection settings, to name user and host when the
    /// server refuses the credentials (never the password).
    config: tokio_postgres::Config,
    /// `None`: the database's own `now()`, which every worker shares (leases
    /// compare times written by different hosts). `Some`: the simulation's
    /// clock, so the times `status` judges follow simulated days.
    clock: Option<crate::clock::Clock>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Ledger").finish_non_exhaustive()
    }
}

const COLUMNS: &str = "idempotency_key, job, status, attempts, lease_owner, lease_expires_at, message_id, source, \
                       created_at, updated_at, started_at, finished_at, last_error, result";

fn run_from_row(row: &tokio_postgres::Row) -> Result<Run, LedgerError> {
    Ok(Run {
        idempotency_key: row.try_get("idempotency_key")?,
        job: row.try_get("job")?,
        status: RunStatus::parse(row.try_get("status")?)?,
        attempts: row.try_get::<_, i32>("attempts")?.max(0) as u32,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        message_id: row.try_get("message_id")?,
        source: row.try_get("source")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        last_error: row.try_get("last_error")?,
        result: row.try_get("result")?,
    })
}

impl Ledger {
    /// Connects (lazily, through a pool) and applies the embedded migrations.
    pub async fn connect(url: &DatabaseUrl) -> Result<Ledger, LedgerError> {
        let ledger = Ledger::connect_without_migrating(url)?;
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// A pool on the ledger database that changes nothing: for readers such
    /// as `status`, which must report a lost ledger (schema missing) rather
    /// than quietly create an empty one. Connects on first use.
    pub fn connect_without_migrating(url: &DatabaseUrl) -> Result<Ledger, LedgerError> {
        // A half-open connection (a failover, a dropped NAT entry) must turn
        // into an error within seconds, not hang a claim or a lease renewal
        // for the kernel's two-hour keepalive.
        let mut config = url.postgres_config().clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let limits = "-c statement_timeout=30000 -c lock_timeout=10000";
        let options = match config.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {limits}"),
            _ => limits.to_owned(),
        };
        config.options(&options);
        let manager = Manager::from_config(
            config.clone(),
            crate::postgres::tls::connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(15)))
            .create_timeout(Some(Duration::from_secs(15)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|error| LedgerError::Setup(error.to_string()))?;
        Ok(Ledger {
            pool,
            config,
            clock: None,
        })
    }

    /// A pooled connection; a refused password is [`LedgerError::Authentication`].
    async fn client(&self) -> Result<deadpool_postgres::Object, LedgerError> {
        self.pool.get().await.map_err(|error| match &error {
            deadpool_postgres::PoolError::Backend(backend) => {
                match crate::postgres::AuthenticationError::from_connect(backend, &self.config) {
                    Some(refused) => LedgerError::Authentication(refused),
                    None => LedgerError::Pool(error),
                }
            }
            _ => LedgerError::Pool(error),
        })
    }

    /// Times runs with `clock` instead of the database's `now()` (the year
    /// simulation); the system clock keeps the database's.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Ledger {
        self.clock = (!clock.is_system()).then_some(clock);
        self
    }

    /// The time statements use for "now": `NULL` (then `now()`) unless a clock is set.
    fn now(&self) -> Option<DateTime<Utc>> {
        self.clock.as_ref().map(crate::clock::Clock::now)
    }

    /// Creates the schema and applies pending migrations, one worker at a time.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        let mut pooled = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut pooled;
        // Migrations may legitimately take long; waiting for another worker's
        // migration lock may not take forever. refinery's `CREATE TABLE IF NOT
        // EXISTS` of its history table draws a NOTICE on every start: only
        // warnings are worth a log line.
        client
            .batch_execute(&format!(
                "SET statement_timeout = 0; SET lock_timeout = '60s'; SET client_min_messages = warning; \
                 SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"
            ))
            .await?;
        let outcome = Self::migrate_locked(client).await;
        let unlocked = client
            .batch_execute(&format!(
                "SELECT pg_advisory_unlock({MIGRATION_LOCK_ID}); RESET statement_timeout; RESET lock_timeout; \
                 RESET client_min_messages"
            ))
            .await;
        if unlocked.is_err() {
            // Never return a session that may still hold the lock to the pool.
            let _ = deadpool_postgres::Object::take(pooled);
        }
        outcome?;
        unlocked?;
        Ok(())
    }

    async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<(), LedgerError> {
        // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when
        // the schema exists; a least-privilege role must still start.
        let exists = client
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'keshless_ops'", &[])
            .await?
            .is_some();
        if !exists {
            client.batch_execute("CREATE SCHEMA IF NOT EXISTS keshless_ops").await?;
        }
        embedded::migrations::runner()
            .set_migration_table_name("keshless_ops.refinery_schema_history")
            .run_async(client)
            .await
            .map(|_| ())
            .map_err(|error| LedgerError::Migration(error.to_string()))
    }

    /// Checks the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Tries to take `key` for a run; see [`Claim`] for the answers.
    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim, LedgerError> {
        let client = self.client().await?;
        let lease_seconds = request.lease.as_secs_f64();
        let retake_dead_lettered = request.dead_lettered == DeadLetteredKeys::Retake;
        let now = self.now();
        // A concurrent claimer can change the row between the two statements;
        // a couple of rounds settle it (the second sees the committed winner).
        for _ in 0..3 {
            let claimed = client
                .query_opt(
                    "INSERT INTO keshless_ops.job_runs AS run
                         (idempotency_key, job, status, attempts, lease_owner, lease_expires_at,
                          message_id, source, started_at, updated_at)
                     VALUES ($1, $2, 'running', 1, $3, COALESCE($8::timestamptz, now()) + make_interval(secs => $4), $5, $6, COALESCE($8::timestamptz, now()), COALESCE($8::timestamptz, now()))
                     ON CONFLICT (idempotency_key) DO UPDATE SET
                         status = 'running',
                         attempts = run.attempts + 1,
                         lease_owner = EXCLUDED.lease_owner,
                         lease_expires_at = EXCLUDED.lease_expires_at,
                         message_id = EXCLUDED.message_id,
                         source = EXCLUDED.source,
                         started_at = COALESCE($8::timestamptz, now()),
                         updated_at = COALESCE($8::timestamptz, now()),
                         finished_at = NULL
                     WHERE run.job = EXCLUDED.job
                       AND (run.status = 'failed'
                            OR (run.status = 'dead_lettered' AND $7)
                            OR (run.status = 'running' AND run.lease_expires_at <= COALESCE($8::timestamptz, now())))
                     RETURNING run.attempts",
                    &[
                        &request.idempotency_key,
                        &request.job,
                        &request.owner,
                        &lease_seconds,
                        &request.message_id,
                        &request.source,
                        &retake_dead_lettered,
                        &now,
                    ],
                )
                .await?;
            if let Some(row) = claimed {
                let attempts: i32 = row.try_get(0)?;
                return Ok(Claim::Claimed {
                    attempt: attempts.max(1) as u32,
                });
            }
            let Some(run) = self.find_with(&client, request.idempotency_key).await? else {
                continue;
            };
            if run.job != request.job {
                return Ok(Claim::KeyConflict { existing_job: run.job });
            }
            match run.status {
                RunStatus::Succeeded => return Ok(Claim::AlreadySucceeded { result: run.result }),
                RunStatus::DeadLettered if !retake_dead_lettered => {
                    return Ok(Claim::AlreadyDeadLettered { attempts: run.attempts })
                }
                RunStatus::Running => {
                    if let (Some(owner), Some(until)) = (run.lease_owner, run.lease_expires_at) {
                        return Ok(Claim::HeldBy { owner, until });
                    }
                }
                // Became claimable between the statements: try again.
                RunStatus::Failed | RunStatus::DeadLettered => {}
            }
        }
        Err(LedgerError::Corrupt(format!(
            "could not settle the claim of {:?} after three rounds",
            request.idempotency_key
        )))
    }

    /// Extends the lease; `false` means this worker no longer owns the key.
    pub async fn renew(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, LedgerError> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE keshless_ops.job_runs
                 SET lease_expires_at = COALESCE($4::timestamptz, now()) + make_interval(secs => $3),
                     updated_at = COALESCE($4::timestamptz, now())
                 WHERE idempotency_key = $1 AND lease_owner = $2 AND status = 'running'",
                &[&key, &owner, &lease.as_secs_f64(), &self.now()],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records success with the job's result; `false` if the lease was lost.
    pub async fn succeed(&self, key: &str, owner: &str, outcome: &Outcome) -> Result<bool, LedgerError> {
        let result = serde_json::to_value(outcome).map_err(|error| LedgerError::Corrupt(error.to_string()))?;
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE keshless_ops.job_runs
                 SET status = 'succeeded', result = $3, last_error = NULL, lease_owner = NULL,
                     lease_expires_at = NULL, finished_at = COALESCE($4::timestamptz, now()),
                     updated_at = COALESCE($4::timestamptz, now())
                 WHERE idempotency_key = $1 AND lease_owner = $2 AND status = 'running'",
                &[&key, &owner, &result, &self.now()],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records a failed run (the message will be redelivered).
    pub async fn fail(&self, key: &str, owner: &str, error: &str) -> Result<bool, LedgerError> {
        self.finish(key, owner, "failed", error).await
    }

    /// Gives the key back when shutting down mid-run: status `failed` with
    /// the reason, so the next delivery claims it at once instead of waiting
    /// for the lease to expire.
    pub async fn release(&self, key: &str, owner: &str) -> Result<bool, LedgerError> {
        self.finish(
            key,
            owner,
            "failed",
            "interrupted: the worker shut down before the job finished",
        )
        .await
    }

    /// Records that the message went to the dead-letter topic.
    pub async fn dead_letter(&self, key: &str, owner: &str, reason: &str) -> Result<bool, LedgerError> {
        self.finish(key, owner, "dead_lettered", reason).await
    }

    async fn finish(&self, key: &str, owner: &str, status: &str, error: &str) -> Result<bool, LedgerError> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE keshless_ops.job_runs
                 SET status = $3, last_error = $4, lease_owner = NULL, lease_expires_at = NULL,
                     finished_at = COALESCE($5::timestamptz, now()), updated_at = COALESCE($5::timestamptz, now())
                 WHERE idempotency_key = $1 AND lease_owner = $2 AND status = 'running'",
                &[&key, &owner, &status, &error, &self.now()],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records a discarded dead letter; `false` when that copy was already
    /// recorded (a discard whose acknowledgement failed, run again).
    pub async fn record_discard(&self, discard: &Discard) -> Result<bool, LedgerError> {
        let attempts = discard.attempts.map(|count| count.min(i32::MAX as u32) as i32);
        let inserted = self
            .client()
            .await?
            .execute(
                "INSERT INTO keshless_ops.dead_letter_discards
                     (dead_letter_message_id, original_message_id, job, idempotency_key, error_kind, error,
                      attempts, dead_lettered_at, reason, discarded_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (dead_letter_message_id) DO NOTHING",
                &[
                    &discard.dead_letter_message_id,
                    &discard.original_message_id,
                    &discard.job,
                    &discard.idempotency_key,
                    &discard.error_kind,
                    &discard.error,
                    &attempts,
                    &discard.dead_lettered_at,
                    &discard.reason,
                    &discard.discarded_by,
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    /// Every discarded dead letter, newest first.
    pub async fn discards(&self) -> Result<Vec<Discard>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT dead_letter_message_id, original_message_id, job, idempotency_key, error_kind, error,
                        attempts, dead_lettered_at, reason, discarded_by, discarded_at
                 FROM keshless_ops.dead_letter_discards ORDER BY discarded_at DESC",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Discard {
                    dead_letter_message_id: row.try_get(0)?,
                    original_message_id: row.try_get(1)?,
                    job: row.try_get(2)?,
                    idempotency_key: row.try_get(3)?,
                    error_kind: row.try_get(4)?,
                    error: row.try_get(5)?,
                    attempts: row.try_get::<_, Option<i32>>(6)?.map(|count| count.max(0) as u32),
                    dead_lettered_at: row.try_get(7)?,
                    reason: row.try_get(8)?,
                    discarded_by: row.try_get(9)?,
                    discarded_at: row.try_get(10)?,
                })
            })
            .collect()
    }

    /// Renews the lease every `interval` until dropped. Fires `lost` when
    /// another owner has the key, or when no renewal has succeeded for so long
    /// that the lease may have expired (database unreachable): a run that may
    /// no longer own its key must stop rather than race a second run.
    pub async fn hold_lease(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        interval: Duration,
        lost: CancellationToken,
    ) {
        let mut last_renewed = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match self.renew(key, owner, lease).await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!("ledger lease lost to another owner; stopping this run");
                    lost.cancel();
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&error), "could not renew the ledger lease");
                    // Stop one interval before the lease could lapse.
                    if last_renewed.elapsed() + interval >= lease {
                        tracing::warn!("ledger lease could not be renewed in time; stopping this run");
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }

    /// The row for a key, if any.
    pub async fn find(&self, key: &str) -> Result<Option<Run>, LedgerError> {
        let client = self.client().await?;
        self.find_with(&client, key).await
    }

    async fn find_with(&self, client: &deadpool_postgres::Client, key: &str) -> Result<Option<Run>, LedgerError> {
        client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM keshless_ops.job_runs WHERE idempotency_key = $1"),
                &[&key],
            )
            .await?
            .map(|row| run_from_row(&row))
            .transpose()
    }

    /// Per job: the latest run, the latest success, the latest failure and
    /// every running row, in one statement (so one snapshot), jobs sorted by
    /// name. Fails with [`LedgerError::Query`] (SQLSTATE 42P01) when the
    /// schema is missing; nothing is created.
    pub async fn job_summaries(&self) -> Result<JobSummaries, LedgerError> {
        // DISTINCT ON keeps the first row per job in the ORDER BY; the
        // (job, updated_at) index serves "latest". Successes are ordered by
        // when they finished, the time freshness is measured from.
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "WITH latest AS (
                         SELECT DISTINCT ON (job) {COLUMNS} FROM keshless_ops.job_runs
                         ORDER BY job, updated_at DESC, idempotency_key),
                     success AS (
                         SELECT DISTINCT ON (job) {COLUMNS} FROM keshless_ops.job_runs
                         WHERE status = 'succeeded'
                         ORDER BY job, finished_at DESC NULLS LAST, updated_at DESC, idempotency_key),
                     failure AS (
                         SELECT DISTINCT ON (job) {COLUMNS} FROM keshless_ops.job_runs
                         WHERE status IN ('failed', 'dead_lettered')
                         ORDER BY job, updated_at DESC, idempotency_key),
                     running AS (
                         SELECT {COLUMNS} FROM keshless_ops.job_runs WHERE status = 'running'),
                     success_by_database AS (
                         SELECT DISTINCT ON (job, result->'details'->>'database') {COLUMNS}
                         FROM keshless_ops.job_runs
                         WHERE status = 'succeeded' AND result->'details'->>'database' IS NOT NULL
                         ORDER BY job, result->'details'->>'database', finished_at DESC NULLS LAST, updated_at DESC,
                                  idempotency_key)
                     SELECT 'latest' AS kind, COALESCE($1::timestamptz, now()) AS database_now, * FROM latest
                     UNION ALL SELECT 'success', COALESCE($1::timestamptz, now()), * FROM success
                     UNION ALL SELECT 'failure', COALESCE($1::timestamptz, now()), * FROM failure
                     UNION ALL SELECT 'running', COALESCE($1::timestamptz, now()), * FROM running
                     UNION ALL SELECT 'success_by_database', COALESCE($1::timestamptz, now()), * FROM success_by_database
                     UNION ALL SELECT 'now', COALESCE($1::timestamptz, now()), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                      NULL, NULL, NULL, NULL, NULL, NULL
                     ORDER BY 1, 2"
                ),
                &[&self.now()],
            )
            .await?;
        let mut database_now = None;
        // job -> (latest, last success, last failure, running, success by database)
        type Kinds = (
            Option<Run>,
            Option<Run>,
            Option<Run>,
            Vec<Run>,
            std::collections::BTreeMap<String, Run>,
        );
        let mut jobs: std::collections::BTreeMap<String, Kinds> = std::collections::BTreeMap::new();
        for row in &rows {
            let kind: &str = row.try_get("kind")?;
            database_now = Some(row.try_get::<_, DateTime<Utc>>("database_now")?);
            if kind == "now" {
                continue;
            }
            let run = run_from_row(row)?;
            let entry = jobs.entry(run.job.clone()).or_default();
            match kind {
                "latest" => entry.0 = Some(run),
                "success" => entry.1 = Some(run),
                "failure" => entry.2 = Some(run),
                "success_by_database" => {
                    let database = run
                        .result
                        .as_ref()
                        .and_then(|result| result.get("details")?.get("database")?.as_str())
                        .map(str::to_owned);
                    if let Some(database) = database {
                        entry.4.insert(database, run);
                    }
                }
                _ => entry.3.push(run),
            }
        }
        let database_now =
            database_now.ok_or_else(|| LedgerError::Corrupt("the summary query returned no rows".into()))?;
        let jobs = jobs
            .into_iter()
            .filter_map(
                |(job, (latest, last_success, last_failure, mut running, last_success_by_database))| {
                    running.sort_by_key(|run| std::cmp::Reverse(run.updated_at));
                    Some(JobSummary {
                        job,
                        latest: latest?,
                        last_success,
                        last_failure,
                        running,
                        last_success_by_database,
                    })
                },
            )
            .collect();
        Ok(JobSummaries { database_now, jobs })
    }

    /// When each job last succeeded (its newest `finished_at` among
    /// succeeded runs), by job name: what a starting worker reports as
    /// `keshless_ops_last_success_timestamp_seconds`.
    pub async fn last_successes(&self) -> Result<std::collections::BTreeMap<String, DateTime<Utc>>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT job, max(finished_at) AS finished_at FROM keshless_ops.job_runs
                 WHERE status = 'succeeded' AND finished_at IS NOT NULL GROUP BY job",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("job")?, row.try_get("finished_at")?)))
            .collect()
    }

    /// The most recent runs of a job, newest first.
    pub async fn recent_runs(&self, job: &str, limit: i64) -> Result<Vec<Run>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM keshless_ops.job_runs WHERE job = $1 ORDER BY updated_at DESC LIMIT $2"
                ),
                &[&job, &limit],
            )
            .await?;
        rows.iter().map(run_from_row).collect()
    }
}
