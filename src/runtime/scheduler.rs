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

/// The message attributes of a scheduled fire of `job` at `at`; the
/// idempotency key is the period's, as the worker would derive it.
pub fn scheduled_attributes(
    job: &str,
    at: DateTime<Utc>,
    time_zone: Tz,
    secret: &SecretString,
) -> HashMap<String, String> {
    HashMap::from([
        (JOB_ATTRIBUTE.to_owned(), job.to_owned()),
        (SOURCE_ATTRIBUTE.to_owned(), Source::CloudScheduler.as_str().to_owned()),
        (SECRET_ATTRIBUTE.to_owned(), secret.expose_secret().to_owned()),
        (
            IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(),
            super::message::derived_idempotency_key(job, Source::CloudScheduler, "", at, time_zone),
        ),
    ])
}

/// Publishes every job when its cron fires, until `shutdown`.
pub async fn run(publisher: Publisher, secret: SecretString, time_zone: Tz, shutdown: CancellationToken) {
    loop {
        let now = Utc::now();
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
            let attributes = scheduled_attributes(job, at, time_zone, &secret);
            match super::pubsub::publish(&publisher, Vec::new(), attributes).await {
                Ok(message_id) => tracing::info!(job.name = job, message.id = %message_id, "scheduled job published"),
                Err(status) => tracing::error!(job.name = job, error = %status, "could not publish a scheduled job"),
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
    fn scheduled_attributes_carry_the_period_key() {
        let attributes = scheduled_attributes(
            "secrets-backup",
            time("2026-11-29T04:00:00Z"),
            chrono_tz::UTC,
            &SecretString::from("s3cret"),
        );
        assert_eq!(attributes[IDEMPOTENCY_KEY_ATTRIBUTE], "secrets-backup:2026-W48");
        assert_eq!(attributes[SOURCE_ATTRIBUTE], "cloud-scheduler");
        assert_eq!(attributes[SECRET_ATTRIBUTE], "s3cret");
    }
}
