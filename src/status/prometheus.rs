//! `status --prometheus`: the freshness report as Prometheus text, for
//! installations that scrape Prometheus instead of using Cloud Monitoring.
//! A cron entry or a Cloud Run job runs `status` and writes the text to
//! node_exporter's textfile directory or pushes it to a Pushgateway.
//!
//! The last-success gauge has the worker's name and labels
//! (`keshless_ops_last_success_timestamp_seconds{job}`), so one alert rule
//! serves both; the other series say what `status` itself decided.

use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry};

use super::Report;

/// The report in the Prometheus text exposition format.
pub fn render(report: &Report) -> String {
    let registry = Registry::new_custom(Some("keshless_ops".into()), None).expect("status registry");
    let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
        let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("status gauge");
        registry
            .register(Box::new(gauge.clone()))
            .expect("register status gauge");
        gauge
    };
    let last_success = gauge_vec(
        "last_success_timestamp_seconds",
        "Unix time of the last successful run, by job (and database, for postgres-backup; from the ledger or the backup store)",
        &["job", "database"],
    );
    let age = gauge_vec(
        "last_success_age_seconds",
        "Seconds since the last successful run, by job (and database)",
        &["job", "database"],
    );
    let limit = gauge_vec(
        "freshness_limit_seconds",
        "How old the last success may be before the job is overdue (FRESHNESS_<JOB>_HOURS)",
        &["job", "database"],
    );
    let overdue = gauge_vec(
        "job_overdue",
        "1 when the job is overdue, 0 when fresh; absent when no source could tell",
        &["job", "database"],
    );
    let source_up = gauge_vec(
        "status_source_up",
        "1 when status could read the source (ledger, storage), else 0",
        &["source"],
    );
    let checked = IntGauge::new("status_checked_timestamp_seconds", "Unix time status ran").expect("checked gauge");
    registry
        .register(Box::new(checked.clone()))
        .expect("register checked gauge");

    for job in &report.jobs {
        // An empty label is no label: jobs not run per database have none.
        let labels = [job.job.as_str(), job.database.as_deref().unwrap_or("")];
        limit.with_label_values(&labels).set(clamp(job.max_age_seconds));
        if let Some(success) = &job.last_success {
            last_success.with_label_values(&labels).set(success.at.timestamp());
        }
        if let Some(seconds) = job.age_seconds {
            age.with_label_values(&labels).set(clamp(seconds));
        }
        match job.freshness {
            "fresh" => overdue.with_label_values(&labels).set(0),
            "overdue" => overdue.with_label_values(&labels).set(1),
            _ => {}
        }
    }
    source_up
        .with_label_values(&["ledger"])
        .set(i64::from(report.ledger.available));
    source_up
        .with_label_values(&["storage"])
        .set(i64::from(report.storage.available));
    checked.set(report.checked_at.timestamp());

    let mut buffer = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("encode status metrics");
    // A metric family has one set of label names; rows of jobs not run per
    // database have an empty `database`, which Prometheus reads as no label
    // at all: leave it out, so their series are named as the worker's are.
    String::from_utf8(buffer)
        .expect("metrics are UTF-8")
        .replace("{database=\"\",", "{")
}

fn clamp(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}
