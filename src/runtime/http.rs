//! The worker's HTTP surface: `/healthz`, `/readyz`, `/metrics`, and the
//! seed's `POST /backup-jobs/{job}`, which publishes the job to the jobs
//! topic (`source=http`) so every run goes through the same idempotent
//! pipeline as scheduled ones.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use google_cloud_pubsub::publisher::Publisher;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::runtime::job::Registry;
use crate::runtime::ledger::Ledger;
use crate::runtime::message::{self, Authentication};
use crate::runtime::metrics::Metrics;
use crate::runtime::pubsub;
use crate::runtime::worker::WorkerHealth;
use crate::telemetry::error_chain;

/// What the handlers need.
pub struct HttpState {
    pub ledger: Ledger,
    pub metrics: Metrics,
    pub health: Arc<WorkerHealth>,
    /// Publisher on the jobs topic.
    pub jobs: Publisher,
    pub registry: Registry,
    pub job_secret: SecretString,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/backup-jobs/{job}", post(submit_job))
        .with_state(state)
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 while the ledger answers and the StreamingPull serves (a stream
/// failing for less than the threshold still counts); else 503 with the
/// reason in `reason`.
async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let ledger = state.ledger.ping().await;
    let stream = state.health.subscription_stream();
    let reasons: Vec<String> = [
        ledger
            .as_ref()
            .err()
            .map(|error| format!("ledger: {}", error_chain(error))),
        stream.as_ref().err().cloned(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut body = json!({
        "ledger": match &ledger { Ok(()) => "ok".to_owned(), Err(error) => error_chain(error) },
        "subscription_stream": match &stream { Ok(note) | Err(note) => note },
    });
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        body["reason"] = reasons.join("; ").into();
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// `POST /backup-jobs/{job}` with header `X-Job-Secret` and an optional JSON
/// body `{"params": {...}, "idempotency_key": "...", "requested_by": "..."}`.
async fn submit_job(
    State(state): State<Arc<HttpState>>,
    Path(job): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let presented = headers
        .get("x-job-secret")
        .and_then(|value| value.to_str().ok())
        .map(|value| HashMap::from([(message::SECRET_ATTRIBUTE.to_owned(), value.to_owned())]))
        .unwrap_or_default();
    if message::authenticate(&presented, &state.job_secret) != Authentication::Valid {
        state.metrics.rejected_forged.inc();
        tracing::warn!(path = %format!("/backup-jobs/{job}"), "rejected an HTTP job request with a missing or wrong X-Job-Secret");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(registered) = state.registry.get(&job) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("unknown job {job:?}"), "jobs": state.registry.names() })),
        )
            .into_response();
    };
    let request: serde_json::Map<String, serde_json::Value> = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice(&body) {
            Ok(serde_json::Value::Object(fields)) => fields,
            Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object".into()),
            Err(problem) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {problem}"),
                )
            }
        }
    };
    const ACCEPTED: [&str; 3] = ["params", "idempotency_key", "requested_by"];
    if let Some(unknown) = request.keys().find(|field| !ACCEPTED.contains(&field.as_str())) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown field {unknown:?}; accepted: {}", ACCEPTED.join(", ")),
        );
    }
    // The same rules the worker applies, so a 202 is never followed by a
    // dead letter for a malformed key.
    for field in ["idempotency_key", "requested_by"] {
        match request.get(field) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(text))
                if (1..=message::MAX_IDEMPOTENCY_KEY_CHARACTERS).contains(&text.chars().count())
                    && !text.chars().any(char::is_control) => {}
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{field} must be a string of 1 to {} characters without control characters",
                        message::MAX_IDEMPOTENCY_KEY_CHARACTERS
                    ),
                )
            }
        }
    }
    let params = request.get("params").cloned().unwrap_or(serde_json::Value::Null);
    if let Err(problem) = registered.check_params(&params) {
        return error(StatusCode::BAD_REQUEST, format!("params: {problem}"));
    }
    let mut data = request;
    data.insert("job".into(), job.clone().into());
    let attributes = HashMap::from([
        (
            message::SECRET_ATTRIBUTE.to_owned(),
            state.job_secret.expose_secret().to_owned(),
        ),
        ("source".to_owned(), "http".to_owned()),
        ("job".to_owned(), job.clone()),
    ]);
    let data = serde_json::to_vec(&data).expect("JSON object serialises");
    match pubsub::publish(&state.jobs, data, attributes).await {
        Ok(message_id) => {
            tracing::info!(job.name = %job, message.id = %message_id, "job submitted over HTTP");
            (
                StatusCode::ACCEPTED,
                Json(json!({ "job": job, "message_id": message_id })),
            )
                .into_response()
        }
        Err(status) => {
            tracing::warn!(error = %status, "could not publish the job");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not publish the job to Pub/Sub: {}", status.message()),
            )
        }
    }
}
