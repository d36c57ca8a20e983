//! Running a job in this process (`keshless-ops run`), through the same
//! message contract, ledger and decision core as the worker, without Pub/Sub.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::runtime::delivery::{decide, AckReason, Action, HandlerOutcome, LedgerState, Situation};
use crate::runtime::job::{Registry, RunContext};
use crate::runtime::ledger::{Claim, ClaimRequest, DeadLetteredKeys, Ledger};
use crate::runtime::message::{self, Authentication, IncomingMessage};

/// How a local run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LocalRun {
    Succeeded {
        key: String,
        summary: String,
        details: serde_json::Value,
    },
    /// The key had already succeeded; nothing ran.
    Duplicate { key: String },
    /// Another worker holds the key right now; nothing ran.
    Held {
        key: String,
        owner: String,
        until: chrono::DateTime<chrono::Utc>,
    },
    Failed {
        key: Option<String>,
        kind: String,
        error: String,
    },
}

/// Validates and runs `job` once under `key` (default: a fresh key).
pub async fn run_locally(
    ledger: &Ledger,
    registry: &Registry,
    job: &str,
    params: serde_json::Map<String, serde_json::Value>,
    key: Option<String>,
    owner: &str,
    cancel: CancellationToken,
) -> LocalRun {
    let message_id = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let mut data = serde_json::Map::new();
    data.insert("job".into(), job.into());
    data.insert("params".into(), params.into());
    if let Some(key) = key {
        data.insert("idempotency_key".into(), key.into());
    }
    let incoming = IncomingMessage {
        message_id: message_id.clone(),
        data: serde_json::to_vec(&data).expect("JSON"),
        attributes: HashMap::from([(message::SOURCE_ATTRIBUTE.to_owned(), "cli".to_owned())]),
        publish_time: chrono::Utc::now(),
        delivery_attempt: None,
    };
    let request = match message::parse(&incoming, registry, chrono_tz::UTC) {
        Ok(request) => request,
        Err(problem) => {
            return LocalRun::Failed {
                key: None,
                kind: problem.kind().to_owned(),
                error: problem.to_string(),
            }
        }
    };
    let key = request.idempotency_key.clone();
    let lease = Duration::from_secs(120);
    let claim = ledger
        .claim(&ClaimRequest {
            idempotency_key: &key,
            job: request.job,
            owner,
            lease,
            message_id: Some(&message_id),
            source: "cli",
            dead_lettered: DeadLetteredKeys::Retake,
        })
        .await;
    let mut situation = Situation {
        authentication: Authentication::Valid,
        message_valid: true,
        ledger: None,
        outcome: None,
        delivery_attempt: None,
        max_delivery_attempts: None,
        shutting_down: false,
    };
    let attempt = match claim {
        Ok(Claim::Claimed { attempt }) => {
            situation.ledger = Some(LedgerState::Claimed);
            attempt
        }
        Ok(Claim::AlreadySucceeded { .. }) => return LocalRun::Duplicate { key },
        Ok(Claim::HeldBy { owner, until }) => return LocalRun::Held { key, owner, until },
        Ok(Claim::AlreadyDeadLettered { .. }) => unreachable!("local runs retake dead-lettered keys"),
        Ok(Claim::KeyConflict { existing_job }) => {
            return LocalRun::Failed {
                error: format!("idempotency key {key:?} belongs to job {existing_job:?}"),
                key: Some(key),
                kind: "key-conflict".into(),
            }
        }
        Err(error) => {
            return LocalRun::Failed {
                key: Some(key),
                kind: "ledger-unavailable".into(),
                error: crate::telemetry::error_chain(&error),
            }
        }
    };
    debug_assert_eq!(decide(&situation), Action::Run);
    let registered = registry.get(request.job).expect("parse accepted the job");
    // Fires on Ctrl-C/SIGTERM or when the lease is lost.
    let lost = cancel.child_token();
    let context = RunContext {
        job: request.job,
        idempotency_key: key.clone(),
        message_id: Some(message_id),
        source: "cli".into(),
        requested_by: request.requested_by.clone(),
        attempt,
        cancel: lost.clone(),
    };
    // Keep the lease alive however long the job runs; stop if it is lost.
    let renewer = {
        let (ledger, key, owner, lost) = (ledger.clone(), key.clone(), owner.to_owned(), lost.clone());
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            ledger.hold_lease(&key, &owner, lease, lease / 4, lost).await
        }))
    };
    let result = tokio::select! {
        result = registered.run(&context, request.params.clone()) => Some(result),
        _ = lost.cancelled() => None,
    };
    drop(renewer);
    match result {
        Some(Ok(outcome)) => {
            let recorded = ledger.succeed(&key, owner, &outcome).await.unwrap_or(false);
            situation.outcome = Some(HandlerOutcome::Succeeded { recorded });
            if decide(&situation) == Action::Ack(AckReason::Succeeded) {
                LocalRun::Succeeded {
                    key,
                    summary: outcome.summary,
                    details: outcome.details,
                }
            } else {
                LocalRun::Failed {
                    key: Some(key),
                    kind: "ledger-unavailable".into(),
                    error: format!(
                        "the job succeeded ({}) but the ledger could not record it",
                        outcome.summary
                    ),
                }
            }
        }
        Some(Err(error)) => {
            let _ = ledger.fail(&key, owner, &error.to_string()).await;
            LocalRun::Failed {
                key: Some(key),
                kind: error.kind().into(),
                error: error.to_string(),
            }
        }
        None => {
            let _ = ledger.release(&key, owner).await;
            LocalRun::Failed {
                key: Some(key),
                kind: "interrupted".into(),
                error: "interrupted before it finished".into(),
            }
        }
    }
}
