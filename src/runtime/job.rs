//! What the runtime knows about a job: a name, typed parameters, and an
//! async `run` that ends in an [`Outcome`] or a [`JobError`] saying what
//! happens next. Concrete jobs live in `src/jobs/`; the runtime only sees them
//! through the [`Registry`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::storage::{ErrorClass, StorageError};

/// A job the worker can run.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// The name used in messages and on the command line, e.g. `postgres-backup`.
    const NAME: &'static str;
    /// Typed parameters; `#[serde(default, deny_unknown_fields)]` so that an
    /// absent `params` means the defaults and a typo is an error.
    type Params: DeserializeOwned + Serialize + Send + Sync + 'static;

    /// Fills in defaults that depend on the job's configuration and refuses
    /// values it cannot serve, before the message is keyed: a scheduled key
    /// can depend on them (postgres-backup's database). The error names the
    /// field and the accepted values.
    fn normalise(&self, params: Self::Params) -> Result<Self::Params, String> {
        Ok(params)
    }

    /// Runs once. Long runs must watch [`RunContext::cancel`] and stop
    /// (killing child processes) when it fires.
    async fn run(&self, context: &RunContext, params: Self::Params) -> Result<Outcome, JobError>;
}

/// What a run is about, handed to [`Job::run`].
#[derive(Debug, Clone)]
pub struct RunContext {
    pub job: &'static str,
    pub idempotency_key: String,
    /// Pub/Sub message id, when the run came from a message.
    pub message_id: Option<String>,
    /// Who asked (`cloud-scheduler`, `gcloud`, `cli`, `http`, `replay`).
    pub source: String,
    pub requested_by: Option<String>,
    /// 1 for the first run of this key, counting failed and interrupted runs.
    pub attempt: u32,
    /// Fires on shutdown or when the ledger lease is lost.
    pub cancel: CancellationToken,
}

/// A successful run's result, stored in the ledger (never secret values).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Outcome {
    /// One line for logs and `status`.
    pub summary: String,
    /// Structured details (object names, sizes, counts).
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Outcome {
    pub fn new(summary: impl Into<String>) -> Outcome {
        Outcome {
            summary: summary.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Outcome {
        self.details = details;
        self
    }

    /// Bytes the run stored: the `size_bytes` detail, which a job that writes
    /// a backup reports for it (postgres-backup: the dump; secrets-backup:
    /// the weekly envelope). 0 when the job reports none.
    pub fn size_bytes(&self) -> u64 {
        self.details
            .get("size_bytes")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }

    /// The database the run backed up: the `database` detail, if any.
    pub fn database(&self) -> Option<&str> {
        self.details.get("database").and_then(serde_json::Value::as_str)
    }
}

/// Why a run failed, and therefore what happens next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help (bad parameters, permissions, corrupt input):
    /// the message goes to the dead-letter topic.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
    /// May succeed later (network, 5xx, database down, timeouts): retried
    /// in-process, then redelivered by Pub/Sub.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
}

impl JobError {
    pub fn permanent(error: impl Into<anyhow::Error>) -> JobError {
        JobError::Permanent(error.into())
    }

    pub fn transient(error: impl Into<anyhow::Error>) -> JobError {
        JobError::Transient(error.into())
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, JobError::Transient(_))
    }

    /// `permanent` or `transient`, as written to the `error_kind` attribute.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::Permanent(_) => "permanent",
            JobError::Transient(_) => "transient",
        }
    }
}

impl From<StorageError> for JobError {
    fn from(error: StorageError) -> JobError {
        match error.class() {
            ErrorClass::Transient => JobError::Transient(error.into()),
            ErrorClass::Permanent => JobError::Permanent(error.into()),
        }
    }
}

/// A job with its parameter type erased, so the registry can hold any job.
#[async_trait]
pub trait RegisteredJob: Send + Sync {
    fn name(&self) -> &'static str;

    /// Checks parameters against the job's type; returns them normalised
    /// (defaults filled in), or a message naming the field and accepted values.
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, String>;

    async fn run(&self, context: &RunContext, params: serde_json::Value) -> Result<Outcome, JobError>;
}

fn parse_params<P: DeserializeOwned>(params: &serde_json::Value) -> Result<P, String> {
    let params = if params.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        params.clone()
    };
    // The path names the offending field even for type errors, which serde
    // alone reports without it ("invalid type: string, expected a boolean").
    serde_path_to_error::deserialize(params).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || inner.to_string().contains("unknown field") {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

#[async_trait]
impl<J: Job> RegisteredJob for J {
    fn name(&self) -> &'static str {
        J::NAME
    }

    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, String> {
        let typed = self.normalise(parse_params(params)?)?;
        serde_json::to_value(typed).map_err(|error| error.to_string())
    }

    async fn run(&self, context: &RunContext, params: serde_json::Value) -> Result<Outcome, JobError> {
        let typed = parse_params(&params)
            .and_then(|typed| self.normalise(typed))
            .map_err(|problem| JobError::Permanent(anyhow::anyhow!("params: {problem}")))?;
        Job::run(self, context, typed).await
    }
}

/// Every job the worker accepts, by name. Built in one place
/// (`crate::jobs::registry`); tests build their own.
#[derive(Clone, Default)]
pub struct Registry {
    jobs: BTreeMap<&'static str, Arc<dyn RegisteredJob>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.jobs.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a job; a second job with the same name is a programming error.
    pub fn with<J: Job>(mut self, job: J) -> Registry {
        let previous = self.jobs.insert(J::NAME, Arc::new(job));
        assert!(previous.is_none(), "job {} registered twice", J::NAME);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn RegisteredJob>> {
        self.jobs.get(name)
    }

    /// Job names in alphabetical order, for error messages and listings.
    pub fn names(&self) -> Vec<&'static str> {
        self.jobs.keys().copied().collect()
    }
}
