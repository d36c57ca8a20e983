//! Reading and replaying the dead-letter topic through its subscription.
//!
//! Listing leases every waiting message, reads it, and hands all of them
//! back (deadline 0) at the end, so nothing is consumed. It pulls without
//! the deprecated `return_immediately` (with which the service may answer
//! empty while messages wait): a Pull waits until letters are there and may
//! answer with fewer than asked, so the listing pulls again until a Pull
//! brings nothing it had not seen. Each Pull carries a gRPC deadline,
//! [`PULL_DEADLINE`], at which the service ends it if nothing came
//! (DEADLINE_EXCEEDED), and each is awaited to its end: no Pull outlives the
//! listing to take the letters it hands back. An empty DLQ is listed in that
//! long. A dead letter arriving just as the last Pull ends may be left to a
//! later listing. Replay republishes a message to the jobs topic with `source=replay`, its original idempotency
//! key (a job that in fact succeeded is then acked as a duplicate, not run
//! again) and `original_message_id`, and acks the dead-letter copy only after
//! the republish is confirmed. Discard acknowledges one dead letter after a
//! person reviewed it, recording it in the ledger first, so a poison message
//! can be cleared without running it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use google_cloud_googleapis::pubsub::v1::ModifyAckDeadlineRequest;
use google_cloud_pubsub::publisher::Publisher;
use google_cloud_pubsub::subscription::Subscription;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::runtime::message::{
    derived_idempotency_key, Source, IDEMPOTENCY_KEY_ATTRIBUTE, JOB_ATTRIBUTE, ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    SECRET_ATTRIBUTE, SOURCE_ATTRIBUTE,
};
use crate::runtime::pubsub::{self, Puller};

/// How long listing and replay keep the messages they pulled.
const LEASE_SECONDS: i32 = 600;

/// The gRPC deadline of each listing Pull: a Pull answers as soon as letters
/// are there, so a backlog answers well within it, and one that is still
/// waiting at it found the subscription empty. The time an empty DLQ takes.
pub const PULL_DEADLINE: Duration = Duration::from_secs(2);

/// Attributes the worker adds when dead-lettering; removed again on replay.
const DEAD_LETTER_ATTRIBUTES: [&str; 6] = [
    "error",
    "error_kind",
    "delivery_attempt",
    "dead_lettered_at",
    "dead_lettered_by",
    "original_publish_time",
];

/// One message waiting in the dead-letter subscription.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Id of the dead-letter copy.
    pub message_id: String,
    pub job: Option<String>,
    pub idempotency_key: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    /// Deliveries of the original before it was dead-lettered.
    pub attempts: Option<u32>,
    pub original_message_id: Option<String>,
    /// When the original was first published (Pub/Sub's own dead-lettering
    /// records it), else when the copy was published.
    pub first_time: DateTime<Utc>,
    /// When it was dead-lettered.
    pub last_time: DateTime<Utc>,
    #[serde(skip)]
    original_publish_time: Option<DateTime<Utc>>,
    #[serde(skip)]
    data: Vec<u8>,
    #[serde(skip)]
    attributes: HashMap<String, String>,
    /// Every lease of this message the listing holds (the service may
    /// deliver one message twice); acked or handed back together.
    #[serde(skip)]
    ack_ids: Vec<String>,
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub struct ReplaySelection {
    pub job: Option<String>,
    pub idempotency_key: Option<String>,
    /// Required when neither `job` nor `idempotency_key` narrows the selection.
    pub all: bool,
    /// Replay under a fresh key, so even a job that succeeded runs again.
    pub force: bool,
    pub dry_run: bool,
    /// Schedule time zone, to recover the period key of a scheduled message
    /// that Pub/Sub dead-lettered itself.
    pub time_zone: chrono_tz::Tz,
    /// The value a scheduled message that names no scope parameter was
    /// keyed with by the worker (postgres-backup: the first of `DATABASES`),
    /// to recover its key; `None`: keyed by the period alone.
    pub scope_default: Option<String>,
}

impl Default for ReplaySelection {
    fn default() -> Self {
        ReplaySelection {
            job: None,
            idempotency_key: None,
            all: false,
            force: false,
            dry_run: false,
            scope_default: None,
            time_zone: chrono_tz::UTC,
        }
    }
}

/// What a replay did, message by message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub replayed: Vec<Replayed>,
    /// Selected but not republished (dry run or publish failure); still in the DLQ.
    pub skipped: Vec<Replayed>,
    /// Not selected; left in the DLQ.
    pub left: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub dead_letter_message_id: String,
    pub job: Option<String>,
    pub idempotency_key: Option<String>,
    /// Id of the new message on the jobs topic.
    pub new_message_id: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("Pub/Sub call failed: {0}")]
    PubSub(#[from] tonic::Status),
    #[error("choose what to replay: --job, --key, or --all for every dead-lettered message")]
    NoSelection,
    #[error("no dead letter has the message id or idempotency key {id:?}; waiting: {}", if waiting.is_empty() { "none".to_owned() } else { waiting.join(", ") })]
    NotFound { id: String, waiting: Vec<String> },
    #[error("{count} dead letters carry the idempotency key {id:?}: give one of their message ids ({})", ids.join(", "))]
    Ambiguous { id: String, count: usize, ids: Vec<String> },
    #[error("recording the discard failed, so nothing was acknowledged: {0}")]
    Ledger(#[from] crate::runtime::ledger::LedgerError),
    #[error(
        "{message_id} is recorded as discarded, but acknowledging it failed ({status}): run the same command again"
    )]
    AckFailed { message_id: String, status: tonic::Status },
}

/// What `dlq discard` did.
#[derive(Debug, Clone, Serialize)]
pub struct DiscardReport {
    pub discarded: crate::runtime::ledger::Discard,
    /// `false` when the ledger already had it (a retried discard).
    pub newly_recorded: bool,
}

fn to_time(timestamp: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    timestamp
        .and_then(|time| DateTime::from_timestamp(time.seconds, time.nanos.max(0) as u32))
        .unwrap_or_else(Utc::now)
}

/// Leases every waiting message (up to `limit`) without acknowledging any,
/// for ten minutes, so a long listing or replay does not lose its leases.
async fn lease_all(
    subscription: &Subscription,
    puller: &Puller,
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let mut leased: Vec<DeadLetter> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    while leased.len() < limit {
        let max_messages = (limit - leased.len()).min(1000) as i32;
        let started = tokio::time::Instant::now();
        // Awaited to its end, never abandoned: the next step hands letters
        // back, and a Pull still open on the server would take them.
        let received = match puller
            .pull(subscription.fully_qualified_name(), max_messages, PULL_DEADLINE)
            .await
        {
            Ok(received) => received,
            Err(status) if ended_waiting(&status, started.elapsed()) => break,
            Err(status) => return Err(hand_back_after(subscription, leased, status).await),
        };
        if received.is_empty() {
            // Empty: nothing waiting, or nothing came before the deadline.
            break;
        }
        let ack_ids: Vec<String> = received.iter().map(|message| message.ack_id.clone()).collect();
        if let Err(error) = set_deadline(subscription, ack_ids.clone(), LEASE_SECONDS).await {
            // What was just pulled is not in `leased`: hand it back too.
            let _ = release(subscription, ack_ids).await;
            let DeadLetterError::PubSub(status) = error else {
                return Err(error);
            };
            return Err(hand_back_after(subscription, leased, status).await);
        }
        let mut new_letters = 0;
        for received in received {
            let Some(message) = received.message else { continue };
            if let Some(&index) = by_id.get(&message.message_id) {
                // Delivered again while leased (at-least-once): the same letter.
                leased[index].ack_ids.push(received.ack_id);
                continue;
            }
            by_id.insert(message.message_id.clone(), leased.len());
            leased.push(dead_letter(message, received.ack_id));
            new_letters += 1;
        }
        if new_letters == 0 {
            // Only letters already leased came again: every one was seen.
            break;
        }
    }
    Ok(leased)
}

/// Whether a failed listing Pull only ran out its deadline with nothing to
/// hand out: DEADLINE_EXCEEDED from the service, or CANCELLED once the
/// deadline passed (tonic's own timer for it, "Timeout expired", may fire
/// before the service's answer arrives). Any other failure fails the listing.
fn ended_waiting(status: &tonic::Status, waited: Duration) -> bool {
    match status.code() {
        tonic::Code::DeadlineExceeded => true,
        tonic::Code::Cancelled => waited >= PULL_DEADLINE,
        _ => false,
    }
}

/// Hands back what a failed listing leased, and returns the failure.
async fn hand_back_after(
    subscription: &Subscription,
    leased: Vec<DeadLetter>,
    status: tonic::Status,
) -> DeadLetterError {
    let ack_ids = leased.into_iter().flat_map(|letter| letter.ack_ids).collect();
    if let Err(error) = release(subscription, ack_ids).await {
        tracing::warn!(error = %error, "could not hand back the leased dead letters; they return within ten minutes");
    }
    DeadLetterError::PubSub(status)
}

/// A received dead-letter message as the listing shows it.
fn dead_letter(mut message: google_cloud_googleapis::pubsub::v1::PubsubMessage, ack_id: String) -> DeadLetter {
    // Pub/Sub's own dead-lettering keeps every original attribute,
    // the job secret included: drop it before anything can print it.
    message.attributes.remove(SECRET_ATTRIBUTE);
    let data_fields = serde_json::from_slice::<serde_json::Value>(&message.data).ok();
    let data_text = |name: &str| {
        data_fields
            .as_ref()
            .and_then(|fields| fields.get(name))
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let attribute = |name: &str| message.attributes.get(name).cloned();
    let published = to_time(message.publish_time.as_ref());
    let original_publish_time = attribute("CloudPubSubDeadLetterSourceTopicPublishTime")
        .or_else(|| attribute("original_publish_time"))
        .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
        .map(|time| time.with_timezone(&Utc));
    let last_time = attribute("dead_lettered_at")
        .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
        .map(|time| time.with_timezone(&Utc))
        .unwrap_or(published);
    DeadLetter {
        message_id: message.message_id.clone(),
        job: attribute(JOB_ATTRIBUTE).or_else(|| data_text("job")),
        idempotency_key: attribute(IDEMPOTENCY_KEY_ATTRIBUTE).or_else(|| data_text("idempotency_key")),
        error: attribute("error"),
        error_kind: attribute("error_kind").or_else(|| {
            // Pub/Sub's own dead-lettering (e.g. a crash loop) adds no error.
            attribute("CloudPubSubDeadLetterSourceDeliveryCount").map(|_| "delivery-limit".to_owned())
        }),
        attempts: attribute("delivery_attempt")
            .or_else(|| attribute("CloudPubSubDeadLetterSourceDeliveryCount"))
            .and_then(|count| count.parse().ok()),
        original_message_id: attribute(ORIGINAL_MESSAGE_ID_ATTRIBUTE),
        first_time: original_publish_time.unwrap_or(published),
        last_time,
        original_publish_time,
        data: message.data,
        attributes: message.attributes,
        ack_ids: vec![ack_id],
    }
}

/// Hands leased messages back to the subscription at once.
async fn release(subscription: &Subscription, ack_ids: Vec<String>) -> Result<(), DeadLetterError> {
    set_deadline(subscription, ack_ids, 0).await
}

async fn set_deadline(subscription: &Subscription, ack_ids: Vec<String>, seconds: i32) -> Result<(), DeadLetterError> {
    for chunk in ack_ids.chunks(1000) {
        subscription
            .get_client()
            .modify_ack_deadline(
                ModifyAckDeadlineRequest {
                    subscription: subscription.fully_qualified_name().to_owned(),
                    ack_ids: chunk.to_vec(),
                    ack_deadline_seconds: seconds,
                },
                None,
            )
            .await?;
    }
    Ok(())
}

/// Every dead-lettered message (up to `limit`), oldest first, left in place.
pub async fn list(
    subscription: &Subscription,
    puller: &Puller,
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let mut leased = lease_all(subscription, puller, limit).await?;
    release(
        subscription,
        leased.iter().flat_map(|letter| letter.ack_ids.clone()).collect(),
    )
    .await?;
    leased.sort_by_key(|letter| letter.last_time);
    Ok(leased)
}

/// Republishes the selected dead letters to the jobs topic.
pub async fn replay(
    subscription: &Subscription,
    puller: &Puller,
    jobs: &Publisher,
    job_secret: &SecretString,
    selection: &ReplaySelection,
) -> Result<ReplayReport, DeadLetterError> {
    if selection.job.is_none() && selection.idempotency_key.is_none() && !selection.all {
        return Err(DeadLetterError::NoSelection);
    }
    let leased = lease_all(subscription, puller, usize::MAX).await?;
    let mut report = ReplayReport::default();
    let mut hand_back = Vec::new();
    for letter in leased {
        let selected = selection
            .job
            .as_ref()
            .is_none_or(|job| letter.job.as_ref() == Some(job))
            && selection
                .idempotency_key
                .as_ref()
                .is_none_or(|key| letter.idempotency_key.as_ref() == Some(key));
        if !selected {
            report.left += 1;
            hand_back.extend(letter.ack_ids);
            continue;
        }
        let mut attributes = letter.attributes.clone();
        for name in DEAD_LETTER_ATTRIBUTES {
            attributes.remove(name);
        }
        attributes.retain(|name, _| !name.starts_with("CloudPubSubDeadLetter"));
        attributes.insert(SECRET_ATTRIBUTE.into(), job_secret.expose_secret().to_owned());
        attributes.insert(SOURCE_ATTRIBUTE.into(), "replay".into());
        attributes
            .entry(ORIGINAL_MESSAGE_ID_ATTRIBUTE.into())
            .or_insert_with(|| letter.message_id.clone());
        let key = if selection.force {
            // Fresh, but the same for the same dead letter: replaying one copy
            // twice still runs the job once.
            let job = letter.job.as_deref().unwrap_or("job");
            Some(format!("{job}:replay:{}", letter.message_id))
        } else {
            letter
                .idempotency_key
                .clone()
                .or_else(|| recover_key(&letter, selection.time_zone, selection.scope_default.as_deref()))
        };
        let mut entry = Replayed {
            dead_letter_message_id: letter.message_id.clone(),
            job: letter.job.clone(),
            idempotency_key: key.clone(),
            new_message_id: None,
            note: None,
        };
        let Some(key) = key else {
            // Without its key a replay could run a job that in fact succeeded.
            entry.note = Some(
                "the original idempotency key cannot be recovered (Pub/Sub dead-lettered it itself, \
                 without its message id); replay with --force to run it under a fresh key"
                    .into(),
            );
            report.skipped.push(entry);
            hand_back.extend(letter.ack_ids);
            continue;
        };
        attributes.insert(IDEMPOTENCY_KEY_ATTRIBUTE.into(), key);
        if selection.dry_run {
            entry.note = Some("dry run".into());
            report.skipped.push(entry);
            hand_back.extend(letter.ack_ids);
            continue;
        }
        // A key inside the data would override the attribute; with --force
        // the data's key must go so the fresh one applies.
        let data = if selection.force {
            strip_data_key(&letter.data)
        } else {
            letter.data.clone()
        };
        // The run must be of the database its key names: a message that named
        // none is replayed naming the default its key was recovered with.
        let data = with_scope_default(&letter, data, selection.scope_default.as_deref());
        match pubsub::publish(jobs, data, attributes).await {
            Ok(new_message_id) => {
                // Only now is the dead-letter copy expendable. If the ack
                // fails the copy stays, which is safe: replaying it again
                // reuses the key and runs nothing twice.
                if let Err(status) = subscription.ack(letter.ack_ids.clone()).await {
                    entry.note = Some(format!(
                        "republished, but the dead-letter copy could not be acked: {status}"
                    ));
                }
                entry.new_message_id = Some(new_message_id);
                report.replayed.push(entry);
            }
            Err(status) => {
                entry.note = Some(format!("republish failed, left in the dead-letter topic: {status}"));
                report.skipped.push(entry);
                hand_back.extend(letter.ack_ids);
            }
        }
    }
    release(subscription, hand_back).await?;
    Ok(report)
}

/// Acknowledges the dead letter whose message id (or, when only one carries
/// it, idempotency key) is `id`, after recording it, `reason` and `by` in the
/// ledger; every other dead letter is handed back untouched. Nothing is
/// acknowledged unless the ledger has the record.
pub async fn discard(
    subscription: &Subscription,
    puller: &Puller,
    ledger: &crate::runtime::ledger::Ledger,
    id: &str,
    reason: &str,
    by: Option<&str>,
) -> Result<DiscardReport, DeadLetterError> {
    let leased = lease_all(subscription, puller, usize::MAX).await?;
    let by_message: Vec<&DeadLetter> = leased.iter().filter(|letter| letter.message_id == id).collect();
    let chosen = if by_message.is_empty() {
        leased
            .iter()
            .filter(|letter| letter.idempotency_key.as_deref() == Some(id))
            .collect()
    } else {
        by_message
    };
    let letter = match chosen.as_slice() {
        [letter] => (*letter).clone(),
        [] => {
            let waiting = leased
                .iter()
                .take(10)
                .map(|letter| {
                    format!(
                        "{} ({})",
                        letter.message_id,
                        letter.idempotency_key.as_deref().unwrap_or("-")
                    )
                })
                .collect();
            release(
                subscription,
                leased.into_iter().flat_map(|letter| letter.ack_ids).collect(),
            )
            .await?;
            return Err(DeadLetterError::NotFound {
                id: id.to_owned(),
                waiting,
            });
        }
        several => {
            let ids = several.iter().map(|letter| letter.message_id.clone()).collect();
            let count = several.len();
            release(
                subscription,
                leased.into_iter().flat_map(|letter| letter.ack_ids).collect(),
            )
            .await?;
            return Err(DeadLetterError::Ambiguous {
                id: id.to_owned(),
                count,
                ids,
            });
        }
    };
    let others: Vec<String> = leased
        .into_iter()
        .filter(|other| other.message_id != letter.message_id)
        .flat_map(|other| other.ack_ids)
        .collect();
    let discard = crate::runtime::ledger::Discard {
        dead_letter_message_id: letter.message_id.clone(),
        original_message_id: letter.original_message_id.clone(),
        job: letter.job.clone(),
        idempotency_key: letter.idempotency_key.clone(),
        error_kind: letter.error_kind.clone(),
        error: letter.error.clone(),
        attempts: letter.attempts,
        dead_lettered_at: Some(letter.last_time),
        reason: reason.to_owned(),
        discarded_by: by.map(str::to_owned),
        discarded_at: None,
    };
    let recorded = match ledger.record_discard(&discard).await {
        Ok(recorded) => recorded,
        Err(error) => {
            let mut hand_back = others;
            hand_back.extend(letter.ack_ids.clone());
            release(subscription, hand_back).await?;
            return Err(error.into());
        }
    };
    release(subscription, others).await?;
    if let Err(status) = subscription.ack(letter.ack_ids.clone()).await {
        return Err(DeadLetterError::AckFailed {
            message_id: letter.message_id,
            status,
        });
    }
    tracing::info!(
        message.id = %letter.message_id,
        job.name = letter.job.as_deref().unwrap_or("-"),
        job.key = letter.idempotency_key.as_deref().unwrap_or("-"),
        error_kind = letter.error_kind.as_deref().unwrap_or("-"),
        discard.reason = %reason,
        discard.by = by.unwrap_or("-"),
        "dead letter discarded"
    );
    Ok(DiscardReport {
        discarded: discard,
        newly_recorded: recorded,
    })
}

/// The key the original message would have been given, for dead letters
/// that carry none (invalid messages, Pub/Sub's own dead-lettering): the
/// same derivation as the message contract, from the original source, publish
/// time and message id. `None` when those are not known.
fn recover_key(letter: &DeadLetter, time_zone: chrono_tz::Tz, scope_default: Option<&str>) -> Option<String> {
    let job = letter.job.as_deref()?;
    let source = match letter.attributes.get(SOURCE_ATTRIBUTE) {
        Some(text) => text.parse().ok()?,
        None => Source::Gcloud,
    };
    if let (Source::CloudScheduler, Some(scheduled)) = (source, crate::schedule::scheduled(job)) {
        let published = letter.original_publish_time?;
        // A period divided by a parameter (the database) is keyed by the
        // value the message named; one that named none got the worker's
        // default (`scope_default`, from this command's own configuration).
        let mut params = serde_json::from_slice::<serde_json::Value>(&letter.data)
            .ok()
            .and_then(|data| data.get("params").cloned())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        if let (Some(name), Some(default)) = (scheduled.scope, scope_default) {
            if params.get(name).is_none() {
                params[name] = serde_json::Value::String(default.to_owned());
            }
        }
        return Some(derived_idempotency_key(job, &params, source, "", published, time_zone));
    }
    let original = letter.original_message_id.as_deref().filter(|id| !id.is_empty())?;
    Some(derived_idempotency_key(
        job,
        &serde_json::Value::Null,
        source,
        original,
        Utc::now(),
        time_zone,
    ))
}

/// `data` with `params.<scope>` set to `scope_default` when the letter is a
/// scheduled fire of a job divided by a parameter that names none; else as is.
fn with_scope_default(letter: &DeadLetter, data: Vec<u8>, scope_default: Option<&str>) -> Vec<u8> {
    let scheduled = letter.attributes.get(SOURCE_ATTRIBUTE).map(String::as_str) == Some("cloud-scheduler");
    let scope = letter
        .job
        .as_deref()
        .and_then(crate::schedule::scheduled)
        .and_then(|row| row.scope);
    let (true, Some(name), Some(default)) = (scheduled, scope, scope_default) else {
        return data;
    };
    let mut body = match serde_json::from_slice::<serde_json::Value>(&data) {
        Ok(serde_json::Value::Object(fields)) => serde_json::Value::Object(fields),
        _ if data.iter().all(u8::is_ascii_whitespace) => serde_json::json!({}),
        _ => return data,
    };
    if !body.get("params").is_some_and(serde_json::Value::is_object) {
        body["params"] = serde_json::json!({});
    }
    if body["params"].get(name).is_some() {
        return data;
    }
    body["params"][name] = serde_json::Value::String(default.to_owned());
    serde_json::to_vec(&body).unwrap_or(data)
}

/// Removes `idempotency_key` from JSON data, leaving anything else untouched.
fn strip_data_key(data: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(mut fields)) => {
            if fields.remove("idempotency_key").is_none() {
                return data.to_vec();
            }
            serde_json::to_vec(&fields).unwrap_or_else(|_| data.to_vec())
        }
        _ => data.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled_letter(data: &str) -> DeadLetter {
        let published: DateTime<Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
        DeadLetter {
            message_id: "7".into(),
            job: Some("postgres-backup".into()),
            idempotency_key: None,
            error: None,
            error_kind: Some("delivery-limit".into()),
            attempts: Some(5),
            original_message_id: None,
            first_time: published,
            last_time: published,
            original_publish_time: Some(published),
            data: data.as_bytes().to_vec(),
            attributes: HashMap::from([(SOURCE_ATTRIBUTE.to_owned(), "cloud-scheduler".to_owned())]),
            ack_ids: Vec::new(),
        }
    }

    #[test]
    fn a_pull_that_ran_out_its_deadline_ends_the_listing_and_nothing_else_does() {
        let cases = [
            (tonic::Code::DeadlineExceeded, Duration::from_millis(1), true),
            (tonic::Code::DeadlineExceeded, PULL_DEADLINE, true),
            // tonic's own timer for the deadline: "Timeout expired".
            (tonic::Code::Cancelled, PULL_DEADLINE, true),
            (tonic::Code::Cancelled, PULL_DEADLINE + Duration::from_millis(5), true),
            // Cancelled before the deadline is someone else's doing.
            (tonic::Code::Cancelled, PULL_DEADLINE - Duration::from_millis(1), false),
            (tonic::Code::Unavailable, PULL_DEADLINE, false),
            (tonic::Code::NotFound, Duration::ZERO, false),
            (tonic::Code::PermissionDenied, PULL_DEADLINE, false),
        ];
        for (code, waited, expected) in cases {
            let status = tonic::Status::new(code, "test");
            assert_eq!(ended_waiting(&status, waited), expected, "{code:?} after {waited:?}");
        }
    }

    #[test]
    fn scheduled_keys_are_recovered_with_their_database() {
        let utc = chrono_tz::UTC;
        // The database the message named wins over the default.
        let named = scheduled_letter(r#"{"params":{"database":"ledger"}}"#);
        assert_eq!(
            recover_key(&named, utc, Some("keshless")).as_deref(),
            Some("postgres-backup:ledger:2026-12-01")
        );
        // A message naming none was backed up as the default database.
        let unnamed = scheduled_letter("");
        assert_eq!(
            recover_key(&unnamed, utc, Some("keshless")).as_deref(),
            Some("postgres-backup:keshless:2026-12-01")
        );
        // Without a default, the period alone (a job that fills in none).
        assert_eq!(
            recover_key(&unnamed, utc, None).as_deref(),
            Some("postgres-backup:2026-12-01")
        );
    }

    #[test]
    fn a_replay_runs_the_database_its_key_names() {
        let unnamed = scheduled_letter("");
        assert_eq!(
            with_scope_default(&unnamed, Vec::new(), Some("keshless")),
            br#"{"params":{"database":"keshless"}}"#
        );
        let named = scheduled_letter(r#"{"params":{"database":"ledger"}}"#);
        assert_eq!(
            with_scope_default(&named, named.data.clone(), Some("keshless")),
            named.data,
            "a named database is kept"
        );
        assert!(with_scope_default(&unnamed, Vec::new(), None).is_empty());
    }
}
