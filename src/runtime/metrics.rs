//! Prometheus metrics of one worker, in a registry of its own (so tests can
//! run several workers in one process), rendered by `GET /metrics`.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The worker's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages by what the worker did with them (`ack_succeeded`, `ack_duplicate`, `ack_forged`,
    /// `nack_transient`, `dead_letter_invalid-message`, ...).
    pub messages: IntCounterVec,
    /// Job runs by job and outcome (`succeeded`, `permanent`, `transient`, `interrupted`).
    pub jobs: IntCounterVec,
    pub job_duration_seconds: HistogramVec,
    /// Unix time of the last success per job.
    pub last_success_timestamp_seconds: IntGaugeVec,
    /// Messages being handled right now.
    pub in_flight: IntGauge,
    /// Messages read from Pub/Sub and leased, waiting for a free slot (at
    /// most [`crate::runtime::worker::WAITING_PER_SLOT`] × `WORKER_CONCURRENCY`).
    pub waiting: IntGauge,
    /// Forged messages (bad or missing secret).
    pub rejected_forged: prometheus::IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("keshless_ops".into()), None).expect("metrics registry");
        let messages = IntCounterVec::new(
            Opts::new("messages_total", "Job messages handled, by action taken"),
            &["action"],
        )
        .expect("messages_total");
        let jobs = IntCounterVec::new(
            Opts::new("jobs_total", "Job runs, by job and outcome"),
            &["job", "outcome"],
        )
        .expect("jobs_total");
        let job_duration_seconds = HistogramVec::new(
            HistogramOpts::new("job_duration_seconds", "Duration of job runs").buckets(vec![
                1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
            ]),
            &["job", "outcome"],
        )
        .expect("job_duration_seconds");
        let last_success_timestamp_seconds = IntGaugeVec::new(
            Opts::new(
                "last_success_timestamp_seconds",
                "Unix time of the last successful run, by job",
            ),
            &["job"],
        )
        .expect("last_success_timestamp_seconds");
        let in_flight = IntGauge::new("messages_in_flight", "Messages being handled now").expect("in_flight");
        let waiting = IntGauge::new(
            "messages_waiting",
            "Messages received and leased, waiting for a free slot",
        )
        .expect("waiting");
        let rejected_forged = prometheus::IntCounter::new(
            "messages_forged_total",
            "Messages rejected for a missing or wrong x-job-secret",
        )
        .expect("forged");
        for collector in [
            Box::new(messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(jobs.clone()),
            Box::new(job_duration_seconds.clone()),
            Box::new(last_success_timestamp_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(waiting.clone()),
            Box::new(rejected_forged.clone()),
        ] {
            registry.register(collector).expect("register metric");
        }
        Metrics {
            registry,
            messages,
            jobs,
            job_duration_seconds,
            last_success_timestamp_seconds,
            in_flight,
            waiting,
            rejected_forged,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encode metrics");
        String::from_utf8(buffer).expect("metrics are UTF-8")
    }
}
