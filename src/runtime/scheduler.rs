//! The embedded scheduler of `keshless-ops dev`: publishes each job of the
//! schedule table ([`crate::schedule::SCHEDULE`]) when its cron fires, exactly
//! as Cloud Scheduler does in production (attributes `job`,
//! `source=cloud-scheduler`, `x-job-secret`). Production never runs it.

use std::collections::HashMap;
use std::str::FromStr as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use google_cloud_pubsub::publisher::Publisher;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::message::{Source, IDEMPOTENCY_KEY_ATTRIBUTE, JOB_ATTRIBUTE, SECRET_ATTRIBUTE, SOURCE_ATTRIBUTE};
use crate::schedule::SCHEDULE;

/// The next fire of every scheduled job strictly after `now`, soonest first.
pub fn next_fires(now: DateTime<Utc>, time_zone: Tz) -> Vec<(DateTime<Utc>, &'static str)> {
    let local = now.with_timezone(&time_zone);
    let mut fires: Vec<(DateTime<Utc>, &'static str)> = SCHEDULE
        .iter()
        .filter_map(|row| {
            let cron = croner::Cron::from_str(row.cron).ok()?;
            let next = cron.find_next_occurrence(&local, false).ok()?;
            Some((next.with_timezone(&Utc), row.job))
        })
        .collect();
    fires.sort();
    fires
}

/// Every fire of the schedule in `(after, until]`, in order: what Cloud
/// Scheduler publishes over that stretch (the year simulation walks the
/// calendar with it; [`run`] waits for one fire at a time).
pub fn fires_between(after: DateTime<Utc>, until: DateTime<Utc>, time_zone: Tz) -> Vec<(DateTime<Utc>, &'static str)> {
    let mut fires = Vec::new();
    let mut cursor = after;
    loop {
        let next = next_fires(cursor, time_zone);
        let Some(&(at, _)) = next.first() else {
            return fires;
        };
        if at > until {
            return fires;
        }
        fires.extend(next.into_iter().filter(|(time, _)| *time == at));
        cursor = at;
    }
}

/// One message of a scheduled fire: what Cloud Scheduler publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledMessage {
    pub job: &'static str,
    /// `{"params":{"<scope>":"<value>"}}` for a job whose period is divided
    /// by a parameter, else empty.
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
}

impl ScheduledMessage {
    /// The idempotency key the worker gives this message.
    pub fn idempotency_key(&self) -> &str {
        &self.attributes[IDEMPOTENCY_KEY_ATTRIBUTE]
    }
}

/// The messages of a scheduled fire of `job` at `at`: one, or one per value
/// in `scope_values` for a job whose period is divided by a parameter
/// (postgres-backup: one per database), as `infra/scheduler.tf` has one
/// Cloud Scheduler job per database. Each carries `job`,
/// `source=cloud-scheduler`, the secret and the key the worker would derive.
pub fn scheduled_messages(
    job: &'static str,
    scope_values: &[String],
    at: DateTime<Utc>,
    time_zone: Tz,
    secret: &SecretString,
) -> Vec<ScheduledMessage> {
    let scope = crate::schedule::scheduled(job).and_then(|row| row.scope);
    let params: Vec<serde_json::Value> = match scope {
        Some(name) => scope_values
            .iter()
            .map(|value| serde_json::json!({ name: value }))
            .collect(),
        None => vec![serde_json::Value::Null],
    };
    params
        .into_iter()
        .map(|params| {
            let key = super::message::derived_idempotency_key(job, &params, Source::CloudScheduler, "", at, time_zone);
            let data = if params.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&serde_json::json!({ "params": params })).expect("JSON values serialise")
            };
            ScheduledMessage {
                job,
                data,
                attributes: HashMap::from([
                    (JOB_ATTRIBUTE.to_owned(), job.to_owned()),
                    (SOURCE_ATTRIBUTE.to_owned(), Source::CloudScheduler.as_str().to_owned()),
                    (SECRET_ATTRIBUTE.to_owned(), secret.expose_secret().to_owned()),
                    (IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(), key),
                ]),
            }
        })
        .collect()
}

/// Publishes every job when its cron fires (by `clock`), until `shutdown`; a
/// job divided by a parameter is published once per value in `scope_values`.
pub async fn run(
    publisher: Publisher,
    secret: SecretString,
    time_zone: Tz,
    scope_values: Vec<String>,
    clock: crate::clock::Clock,
    shutdown: CancellationToken,
) {
    loop {
        let now = clock.now();
        let fires = next_fires(now, time_zone);
        let Some(&(at, _)) = fires.first() else {
            tracing::error!("the schedule has no valid cron entry; the embedded scheduler stops");
            return;
        };
        let wait = (at - now).to_std().unwrap_or_default();
        tracing::info!(next = %at, jobs = ?fires.iter().filter(|(time, _)| *time == at).map(|(_, job)| job).collect::<Vec<_>>(), "embedded scheduler waiting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        for (_, job) in fires.iter().filter(|(time, _)| *time == at) {
            for message in scheduled_messages(job, &scope_values, at, time_zone, &secret) {
                match super::pubsub::publish(&publisher, message.data, message.attributes).await {
                    Ok(message_id) => {
                        tracing::info!(job.name = job, message.id = %message_id, "scheduled job published")
                    }
                    Err(status) => {
                        tracing::error!(job.name = job, error = %status, "could not publish a scheduled job")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_fires_follow_the_schedule_table_in_its_time_zone() {
        // Thursday 2026-11-26 01:30 UTC.
        let fires = next_fires(time("2026-11-26T01:30:00Z"), chrono_tz::UTC);
        assert_eq!(fires.len(), SCHEDULE.len(), "every row has a valid cron");
        assert_eq!(fires[0], (time("2026-11-26T02:00:00Z"), "postgres-backup"));
        assert_eq!(fires[1], (time("2026-11-26T03:00:00Z"), "documents-inventory"));
        assert_eq!(fires[2], (time("2026-11-29T04:00:00Z"), "secrets-backup"));
        assert_eq!(fires[3], (time("2026-11-29T05:00:00Z"), "cleanup-old-backups"));
        assert_eq!(fires[4], (time("2026-12-01T06:00:00Z"), "dr-drill"));
        // In Brussels (UTC+1 in winter) 02:00 local is 01:00 UTC.
        let fires = next_fires(time("2026-11-26T00:30:00Z"), chrono_tz::Europe::Brussels);
        assert_eq!(fires[0], (time("2026-11-26T01:00:00Z"), "postgres-backup"));
    }

    #[test]
    fn fires_between_cover_a_stretch_in_order_across_the_time_changes() {
        let berlin = chrono_tz::Europe::Berlin;
        // A week with the fall-back of 2027-10-31 (Sunday) in it.
        let fires = fires_between(time("2027-10-24T23:00:00Z"), time("2027-11-01T00:00:00Z"), berlin);
        let backups: Vec<DateTime<Utc>> = fires
            .iter()
            .filter(|(_, job)| *job == "postgres-backup")
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(backups.first(), Some(&time("2027-10-25T00:00:00Z")), "02:00 CEST");
        assert_eq!(
            backups
                .last()
                .map(|at| at.with_timezone(&berlin).date_naive().to_string()),
            Some("2027-10-31".to_owned())
        );
        assert!(fires.windows(2).all(|pair| pair[0].0 <= pair[1].0), "in order");
        assert_eq!(fires.iter().filter(|(_, job)| *job == "secrets-backup").count(), 1);
        assert_eq!(fires.iter().filter(|(_, job)| *job == "cleanup-old-backups").count(), 1);
        // Nothing outside the stretch, the end included.
        let day = fires_between(time("2027-10-25T23:00:00Z"), time("2027-10-26T00:00:00Z"), berlin);
        assert_eq!(day, [(time("2027-10-26T00:00:00Z"), "postgres-backup")]);
        assert!(fires_between(time("2027-10-26T00:00:00Z"), time("2027-10-26T00:30:00Z"), berlin).is_empty());
    }

    #[test]
    fn scheduled_messages_carry_the_period_key() {
        let databases = ["app".to_owned(), "ledger".to_owned()];
        let secret = SecretString::from("s3cret");
        let messages = scheduled_messages(
            "secrets-backup",
            &databases,
            time("2026-11-29T04:00:00Z"),
            chrono_tz::UTC,
            &secret,
        );
        assert_eq!(messages.len(), 1, "one message for a job not divided by a parameter");
        let attributes = &messages[0].attributes;
        assert_eq!(attributes[IDEMPOTENCY_KEY_ATTRIBUTE], "secrets-backup:2026-W48");
        assert_eq!(attributes[SOURCE_ATTRIBUTE], "cloud-scheduler");
        assert_eq!(attributes[SECRET_ATTRIBUTE], "s3cret");
        assert!(messages[0].data.is_empty());

        let messages = scheduled_messages(
            "postgres-backup",
            &databases,
            time("2026-11-29T02:00:00Z"),
            chrono_tz::UTC,
            &secret,
        );
        let keys: Vec<&str> = messages.iter().map(ScheduledMessage::idempotency_key).collect();
        assert_eq!(
            keys,
            ["postgres-backup:app:2026-11-29", "postgres-backup:ledger:2026-11-29"]
        );
        assert_eq!(messages[1].data, br#"{"params":{"database":"ledger"}}"#);
    }
}
