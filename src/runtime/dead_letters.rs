//! Reading and replaying the dead-letter topic through its subscription.
//!
//! Listing leases every waiting message, reads it, and hands all of them
//! back (deadline 0) at the end, so nothing is consumed. Replay republishes a
//! message to the jobs topic with `source=replay`, its original idempotency
//! key (a job that in fact succeeded is then acked as a duplicate, not run
//! again) and `original_message_id`, and acks the dead-letter copy only after
//! the republish is confirmed.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use google_cloud_googleapis::pubsub::v1::{ModifyAckDeadlineRequest, PullRequest};
use google_cloud_pubsub::publisher::Publisher;
use google_cloud_pubsub::subscription::Subscription;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::runtime::message::{
    IDEMPOTENCY_KEY_ATTRIBUTE, ORIGINAL_MESSAGE_ID_ATTRIBUTE, SECRET_ATTRIBUTE, SOURCE_ATTRIBUTE,
};
use crate::runtime::pubsub;

/// Attributes the worker adds when dead-lettering; removed again on replay.
const DEAD_LETTER_ATTRIBUTES: [&str; 5] = [
    "error",
    "error_kind",
    "delivery_attempt",
    "dead_lettered_at",
    "dead_lettered_by",
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
    data: Vec<u8>,
    #[serde(skip)]
    attributes: HashMap<String, String>,
    #[serde(skip)]
    ack_id: String,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplaySelection {
    pub job: Option<String>,
    pub idempotency_key: Option<String>,
    /// Required when neither `job` nor `idempotency_key` narrows the selection.
    pub all: bool,
    /// Replay under a fresh key, so even a job that succeeded runs again.
    pub force: bool,
    pub dry_run: bool,
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
}

fn to_time(timestamp: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    timestamp
        .and_then(|time| DateTime::from_timestamp(time.seconds, time.nanos.max(0) as u32))
        .unwrap_or_else(Utc::now)
}

/// Leases every waiting message (up to `limit`) without acknowledging any.
async fn lease_all(subscription: &Subscription, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let client = subscription.get_client();
    let mut leased = Vec::new();
    let mut seen = HashSet::new();
    while leased.len() < limit {
        #[allow(deprecated)] // return_immediately: a listing must not wait for new messages
        let request = PullRequest {
            subscription: subscription.fully_qualified_name().to_owned(),
            return_immediately: true,
            max_messages: (limit - leased.len()).min(1000) as i32,
        };
        let received = client.pull(request, None).await?.into_inner().received_messages;
        if received.is_empty() {
            break;
        }
        for received in received {
            let Some(message) = received.message else { continue };
            if !seen.insert(message.message_id.clone()) {
                continue;
            }
            let attribute = |name: &str| message.attributes.get(name).cloned();
            let published = to_time(message.publish_time.as_ref());
            let first_time = attribute("CloudPubSubDeadLetterSourceTopicPublishTime")
                .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
                .map(|time| time.with_timezone(&Utc))
                .unwrap_or(published);
            let last_time = attribute("dead_lettered_at")
                .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
                .map(|time| time.with_timezone(&Utc))
                .unwrap_or(published);
            leased.push(DeadLetter {
                message_id: message.message_id.clone(),
                job: attribute("job"),
                idempotency_key: attribute(IDEMPOTENCY_KEY_ATTRIBUTE),
                error: attribute("error"),
                error_kind: attribute("error_kind").or_else(|| {
                    // Pub/Sub's own dead-lettering (e.g. a crash loop) adds no error.
                    attribute("CloudPubSubDeadLetterSourceDeliveryCount").map(|_| "delivery-limit".to_owned())
                }),
                attempts: attribute("delivery_attempt")
                    .or_else(|| attribute("CloudPubSubDeadLetterSourceDeliveryCount"))
                    .and_then(|count| count.parse().ok()),
                original_message_id: attribute(ORIGINAL_MESSAGE_ID_ATTRIBUTE),
                first_time,
                last_time,
                data: message.data,
                attributes: message.attributes,
                ack_id: received.ack_id,
            });
        }
    }
    Ok(leased)
}

/// Hands leased messages back to the subscription at once.
async fn release(subscription: &Subscription, ack_ids: Vec<String>) -> Result<(), DeadLetterError> {
    if ack_ids.is_empty() {
        return Ok(());
    }
    for chunk in ack_ids.chunks(1000) {
        subscription
            .get_client()
            .modify_ack_deadline(
                ModifyAckDeadlineRequest {
                    subscription: subscription.fully_qualified_name().to_owned(),
                    ack_ids: chunk.to_vec(),
                    ack_deadline_seconds: 0,
                },
                None,
            )
            .await?;
    }
    Ok(())
}

/// Every dead-lettered message (up to `limit`), oldest first, left in place.
pub async fn list(subscription: &Subscription, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let mut leased = lease_all(subscription, limit).await?;
    release(
        subscription,
        leased.iter().map(|letter| letter.ack_id.clone()).collect(),
    )
    .await?;
    leased.sort_by_key(|letter| letter.last_time);
    Ok(leased)
}

/// Republishes the selected dead letters to the jobs topic.
pub async fn replay(
    subscription: &Subscription,
    jobs: &Publisher,
    job_secret: &SecretString,
    selection: &ReplaySelection,
) -> Result<ReplayReport, DeadLetterError> {
    if selection.job.is_none() && selection.idempotency_key.is_none() && !selection.all {
        return Err(DeadLetterError::NoSelection);
    }
    let leased = lease_all(subscription, usize::MAX).await?;
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
            hand_back.push(letter.ack_id);
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
            let job = letter.job.as_deref().unwrap_or("job");
            Some(format!("{job}:replay:{}", uuid::Uuid::new_v4().simple()))
        } else {
            letter.idempotency_key.clone()
        };
        if let Some(key) = &key {
            attributes.insert(IDEMPOTENCY_KEY_ATTRIBUTE.into(), key.clone());
        }
        let mut entry = Replayed {
            dead_letter_message_id: letter.message_id.clone(),
            job: letter.job.clone(),
            idempotency_key: key,
            new_message_id: None,
            note: None,
        };
        if selection.dry_run {
            entry.note = Some("dry run".into());
            report.skipped.push(entry);
            hand_back.push(letter.ack_id);
            continue;
        }
        // A key inside the data would override the attribute; with --force
        // the data's key must go so the fresh one applies.
        let data = if selection.force {
            strip_data_key(&letter.data)
        } else {
            letter.data.clone()
        };
        match pubsub::publish(jobs, data, attributes).await {
            Ok(new_message_id) => {
                // Only now is the dead-letter copy expendable.
                subscription.ack(vec![letter.ack_id.clone()]).await?;
                entry.new_message_id = Some(new_message_id);
                report.replayed.push(entry);
            }
            Err(status) => {
                entry.note = Some(format!("republish failed, left in the dead-letter topic: {status}"));
                report.skipped.push(entry);
                hand_back.push(letter.ack_id);
            }
        }
    }
    release(subscription, hand_back).await?;
    Ok(report)
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
