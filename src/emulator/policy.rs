//! Delivery policy decisions as pure functions: ack deadline limits, what a
//! failed delivery (nack or expired lease) leads to, the retry-policy backoff
//! and the attributes a dead-lettered message carries. Kept free of state and
//! I/O so each rule Google documents has a table test next to it.

use std::collections::HashMap;
use std::time::Duration;

use google_cloud_googleapis::pubsub::v1::{DeadLetterPolicy, RetryPolicy};

use super::state::EmulatorError;

/// Ack deadline used when CreateSubscription asks for 0.
pub const DEFAULT_ACK_DEADLINE_SECONDS: i32 = 10;
/// Inclusive bounds of a subscription's or stream's ack deadline.
pub const ACK_DEADLINE_RANGE_SECONDS: std::ops::RangeInclusive<i32> = 10..=600;
/// Inclusive bounds of ModifyAckDeadline (0 is a nack).
pub const MODIFY_DEADLINE_RANGE_SECONDS: std::ops::RangeInclusive<i32> = 0..=600;
/// max_delivery_attempts used when a dead-letter policy asks for 0.
pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: i32 = 5;
/// Inclusive bounds of max_delivery_attempts.
pub const MAX_DELIVERY_ATTEMPTS_RANGE: std::ops::RangeInclusive<i32> = 5..=100;
/// Retry-policy defaults and limit, as documented for RetryPolicy.
pub const DEFAULT_MINIMUM_BACKOFF: Duration = Duration::from_secs(10);
pub const DEFAULT_MAXIMUM_BACKOFF: Duration = Duration::from_secs(600);
pub const MAXIMUM_BACKOFF_LIMIT: Duration = Duration::from_secs(600);

/// Dead-letter attribute names, as Pub/Sub sets them on forwarded messages.
pub const SOURCE_SUBSCRIPTION_ATTRIBUTE: &str = "CloudPubSubDeadLetterSourceSubscription";
pub const SOURCE_SUBSCRIPTION_PROJECT_ATTRIBUTE: &str = "CloudPubSubDeadLetterSourceSubscriptionProject";
pub const SOURCE_TOPIC_PUBLISH_TIME_ATTRIBUTE: &str = "CloudPubSubDeadLetterSourceTopicPublishTime";
pub const SOURCE_DELIVERY_COUNT_ATTRIBUTE: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

/// Resolves CreateSubscription's ack deadline: 0 means the default.
pub fn subscription_ack_deadline(requested_seconds: i32) -> Result<i32, EmulatorError> {
    if requested_seconds == 0 {
        return Ok(DEFAULT_ACK_DEADLINE_SECONDS);
    }
    stream_ack_deadline(requested_seconds)
}

/// Validates a stream ack deadline (StreamingPull) against 10..=600 s.
pub fn stream_ack_deadline(requested_seconds: i32) -> Result<i32, EmulatorError> {
    if ACK_DEADLINE_RANGE_SECONDS.contains(&requested_seconds) {
        Ok(requested_seconds)
    } else {
        Err(EmulatorError::InvalidArgument(format!(
            "ack deadline must be between 10 and 600 seconds, got {requested_seconds}"
        )))
    }
}

/// Validates ModifyAckDeadline's seconds (0 = nack).
pub fn modified_ack_deadline(requested_seconds: i32) -> Result<i32, EmulatorError> {
    if MODIFY_DEADLINE_RANGE_SECONDS.contains(&requested_seconds) {
        Ok(requested_seconds)
    } else {
        Err(EmulatorError::InvalidArgument(format!(
            "ack_deadline_seconds must be between 0 and 600, got {requested_seconds}"
        )))
    }
}

/// Fills in defaults and validates a dead-letter policy. A policy without a
/// topic means "no dead lettering", as with the real service.
pub fn effective_dead_letter_policy(
    policy: Option<DeadLetterPolicy>,
) -> Result<Option<DeadLetterPolicy>, EmulatorError> {
    let Some(mut policy) = policy.filter(|policy| !policy.dead_letter_topic.is_empty()) else {
        return Ok(None);
    };
    if policy.max_delivery_attempts == 0 {
        policy.max_delivery_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS;
    }
    if !MAX_DELIVERY_ATTEMPTS_RANGE.contains(&policy.max_delivery_attempts) {
        return Err(EmulatorError::InvalidArgument(format!(
            "dead_letter_policy.max_delivery_attempts must be between 5 and 100, got {}",
            policy.max_delivery_attempts
        )));
    }
    Ok(Some(policy))
}

/// Backoff bounds of a retry policy after defaults and validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub minimum: Duration,
    pub maximum: Duration,
}

/// Fills in defaults and validates a retry policy.
pub fn effective_retry_policy(policy: Option<&RetryPolicy>) -> Result<Option<Backoff>, EmulatorError> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    let minimum = duration_field("retry_policy.minimum_backoff", policy.minimum_backoff.as_ref())?
        .unwrap_or(DEFAULT_MINIMUM_BACKOFF);
    let maximum = duration_field("retry_policy.maximum_backoff", policy.maximum_backoff.as_ref())?
        .unwrap_or(DEFAULT_MAXIMUM_BACKOFF);
    if minimum > maximum {
        return Err(EmulatorError::InvalidArgument(format!(
            "retry_policy.minimum_backoff ({minimum:?}) exceeds maximum_backoff ({maximum:?})"
        )));
    }
    Ok(Some(Backoff { minimum, maximum }))
}

fn duration_field(field: &str, value: Option<&prost_types::Duration>) -> Result<Option<Duration>, EmulatorError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let out_of_range = || {
        EmulatorError::InvalidArgument(format!(
            "{field} must be between 0 and 600 seconds, got {}s {}ns",
            value.seconds, value.nanos
        ))
    };
    let duration = Duration::try_from(*value).map_err(|_| out_of_range())?;
    if duration > MAXIMUM_BACKOFF_LIMIT {
        return Err(out_of_range());
    }
    Ok(Some(duration))
}

/// Delay before a message is eligible again after its `failed_deliveries`-th
/// failure: no delay without a retry policy, otherwise exponential from the
/// minimum, capped at the maximum.
pub fn redelivery_delay(backoff: Option<Backoff>, failed_deliveries: u32) -> Duration {
    let Some(backoff) = backoff else {
        return Duration::ZERO;
    };
    let doublings = failed_deliveries.saturating_sub(1).min(30);
    backoff
        .minimum
        .checked_mul(1 << doublings)
        .unwrap_or(backoff.maximum)
        .min(backoff.maximum)
}

/// What happens to a message whose delivery failed (nack or expired lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Eligible for redelivery once the delay has passed (zero: at once).
    Redeliver { delay: Duration },
    /// Its next delivery would exceed max_delivery_attempts: forward it to the
    /// dead-letter topic and ack it on the source subscription.
    DeadLetter,
}

/// Decides the fate of a message that has been delivered `deliveries` times,
/// the last of which failed.
pub fn after_failed_delivery(
    deliveries: u32,
    max_delivery_attempts: Option<i32>,
    backoff: Option<Backoff>,
) -> AfterFailure {
    match max_delivery_attempts {
        Some(max) if i64::from(deliveries) >= i64::from(max) => AfterFailure::DeadLetter,
        _ => AfterFailure::Redeliver {
            delay: redelivery_delay(backoff, deliveries),
        },
    }
}

/// The attributes a message gains when forwarded to a dead-letter topic, in
/// the formats Pub/Sub uses: the subscription's short id, its project, the
/// original publish time as RFC 3339 with milliseconds, and the count.
pub fn dead_letter_attributes(
    original: &HashMap<String, String>,
    subscription_project: &str,
    subscription_id: &str,
    original_publish_time: Option<&prost_types::Timestamp>,
    deliveries: u32,
) -> HashMap<String, String> {
    let mut attributes = original.clone();
    attributes.insert(SOURCE_SUBSCRIPTION_ATTRIBUTE.to_string(), subscription_id.to_string());
    attributes.insert(
        SOURCE_SUBSCRIPTION_PROJECT_ATTRIBUTE.to_string(),
        subscription_project.to_string(),
    );
    attributes.insert(
        SOURCE_TOPIC_PUBLISH_TIME_ATTRIBUTE.to_string(),
        original_publish_time.map(format_publish_time).unwrap_or_default(),
    );
    attributes.insert(SOURCE_DELIVERY_COUNT_ATTRIBUTE.to_string(), deliveries.to_string());
    attributes
}

/// Formats a timestamp like `2026-08-24T10:35:14.812+00:00`.
pub fn format_publish_time(timestamp: &prost_types::Timestamp) -> String {
    let nanos = u32::try_from(timestamp.nanos).unwrap_or(0);
    chrono::DateTime::<chrono::Utc>::from_timestamp(timestamp.seconds, nanos)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    #[test]
    fn subscription_ack_deadlines() {
        let cases = [
            (0, Ok(10)),
            (10, Ok(10)),
            (600, Ok(600)),
            (9, Err(())),
            (601, Err(())),
            (-1, Err(())),
        ];
        for (requested, expected) in cases {
            assert_eq!(
                subscription_ack_deadline(requested).map_err(|_| ()),
                expected,
                "{requested}"
            );
        }
        assert!(stream_ack_deadline(0).is_err());
        assert!(modified_ack_deadline(0).is_ok());
        assert!(modified_ack_deadline(1).is_ok());
        assert!(modified_ack_deadline(601).is_err());
        assert!(modified_ack_deadline(-1).is_err());
    }

    #[test]
    fn dead_letter_policies() {
        let policy = |attempts| {
            Some(DeadLetterPolicy {
                dead_letter_topic: "projects/p/topics/dead".into(),
                max_delivery_attempts: attempts,
            })
        };
        let attempts = |result: Result<Option<DeadLetterPolicy>, EmulatorError>| {
            result
                .map(|policy| policy.map(|policy| policy.max_delivery_attempts))
                .map_err(|_| ())
        };
        assert_eq!(attempts(effective_dead_letter_policy(policy(0))), Ok(Some(5)));
        assert_eq!(attempts(effective_dead_letter_policy(policy(5))), Ok(Some(5)));
        assert_eq!(attempts(effective_dead_letter_policy(policy(100))), Ok(Some(100)));
        assert_eq!(attempts(effective_dead_letter_policy(policy(4))), Err(()));
        assert_eq!(attempts(effective_dead_letter_policy(policy(101))), Err(()));
        assert_eq!(attempts(effective_dead_letter_policy(None)), Ok(None));
        let without_topic = Some(DeadLetterPolicy::default());
        assert_eq!(attempts(effective_dead_letter_policy(without_topic)), Ok(None));
    }

    #[test]
    fn retry_policies() {
        let duration = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        let policy = |minimum, maximum| RetryPolicy {
            minimum_backoff: minimum,
            maximum_backoff: maximum,
        };
        assert_eq!(effective_retry_policy(None).unwrap(), None);
        assert_eq!(
            effective_retry_policy(Some(&policy(None, None))).unwrap(),
            Some(Backoff {
                minimum: seconds(10),
                maximum: seconds(600)
            })
        );
        assert_eq!(
            effective_retry_policy(Some(&policy(duration(1), duration(4)))).unwrap(),
            Some(Backoff {
                minimum: seconds(1),
                maximum: seconds(4)
            })
        );
        assert!(effective_retry_policy(Some(&policy(duration(5), duration(4)))).is_err());
        assert!(effective_retry_policy(Some(&policy(duration(1), duration(601)))).is_err());
        assert!(effective_retry_policy(Some(&policy(duration(-1), duration(4)))).is_err());
    }

    #[test]
    fn redelivery_delays_grow_exponentially_between_bounds() {
        let backoff = Some(Backoff {
            minimum: seconds(1),
            maximum: seconds(10),
        });
        let cases = [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (40, 10)];
        for (failures, expected) in cases {
            assert_eq!(redelivery_delay(backoff, failures), seconds(expected), "{failures}");
        }
        assert_eq!(redelivery_delay(None, 3), Duration::ZERO);
    }

    #[test]
    fn failed_deliveries_dead_letter_at_the_limit() {
        let cases = [
            (1, Some(5), AfterFailure::Redeliver { delay: Duration::ZERO }),
            (4, Some(5), AfterFailure::Redeliver { delay: Duration::ZERO }),
            (5, Some(5), AfterFailure::DeadLetter),
            (6, Some(5), AfterFailure::DeadLetter),
            (500, None, AfterFailure::Redeliver { delay: Duration::ZERO }),
        ];
        for (deliveries, max, expected) in cases {
            assert_eq!(
                after_failed_delivery(deliveries, max, None),
                expected,
                "{deliveries} {max:?}"
            );
        }
    }

    #[test]
    fn dead_letter_attributes_follow_google_formats() {
        let original = HashMap::from([("job".to_string(), "backup".to_string())]);
        let published = prost_types::Timestamp {
            seconds: 1_787_654_114,
            nanos: 812_345_678,
        };
        let attributes = dead_letter_attributes(&original, "p", "orders-sub", Some(&published), 5);
        assert_eq!(attributes["job"], "backup");
        assert_eq!(attributes[SOURCE_SUBSCRIPTION_ATTRIBUTE], "orders-sub");
        assert_eq!(attributes[SOURCE_SUBSCRIPTION_PROJECT_ATTRIBUTE], "p");
        assert_eq!(attributes[SOURCE_DELIVERY_COUNT_ATTRIBUTE], "5");
        assert_eq!(
            attributes[SOURCE_TOPIC_PUBLISH_TIME_ATTRIBUTE],
            "2026-08-25T10:35:14.812+00:00"
        );
    }
}
