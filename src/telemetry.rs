//! Logging: JSON shaped for Cloud Logging (`severity`, `message`, `time`, fields)
//! when stderr is not a terminal, compact human-readable lines when it is.
//! Filtering follows `RUST_LOG`.
//!
//! Logs go to stderr so that commands which print results (`--json`) keep
//! stdout clean for pipes; Cloud Run parses structured logs on either stream.
//!
//! The JSON line is our own [`CloudLoggingFormat`]: an event's fields are
//! top-level keys of the payload under exactly the names the code gives them
//! (`duration_seconds`, `delivery.attempt`), because log-based metrics and
//! alert filters in `infra/monitoring.tf` name them. (tracing-stackdriver,
//! used before, renamed every field to camelCase.)

use std::fmt;
use std::io::IsTerminal;

use chrono::SecondsFormat;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line for Cloud Logging.
    Json,
    /// Compact text for people.
    Human,
}

impl LogFormat {
    /// JSON unless stderr is a terminal.
    pub fn detect() -> LogFormat {
        if std::io::stderr().is_terminal() {
            LogFormat::Human
        } else {
            LogFormat::Json
        }
    }
}

/// Installs the global subscriber. `default_directives` applies when
/// `RUST_LOG` is unset (e.g. `"info"`). Calling it twice is harmless.
pub fn init(format: LogFormat, default_directives: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directives));
    // With GOOGLE_CLOUD_RUST_LOGGING=true the Secret Manager crate traces
    // whole responses, payloads included: never let them through.
    let filter = filter.add_directive("google_cloud_secretmanager_v1=off".parse().expect("a valid directive"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(cloud_logging_layer(std::io::stderr)).try_init(),
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init(),
    };
}

/// The JSON layer `init` installs, writing to `writer` (tests capture it).
pub fn cloud_logging_layer<S, W>(writer: W) -> tracing_subscriber::fmt::Layer<S, JsonFields, CloudLoggingFormat, W>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(CloudLoggingFormat)
        .with_writer(writer)
}

/// One JSON object per event, in the shape Cloud Logging reads from a
/// container's output: `severity`, `time`, `message`, the source location,
/// the event's fields as top-level keys (names unchanged), and the spans'
/// fields under `span` (the innermost) and `spans` (root first).
#[derive(Debug, Clone, Copy, Default)]
pub struct CloudLoggingFormat;

/// Keys the format sets itself; an event field of the same name cannot replace them.
const RESERVED_KEYS: [&str; 6] = [
    "severity",
    "time",
    "target",
    "span",
    "spans",
    "logging.googleapis.com/sourceLocation",
];

impl<S> FormatEvent<S, JsonFields> for CloudLoggingFormat
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let mut line = fields.0;
        line.retain(|key, _| !RESERVED_KEYS.contains(&key.as_str()));
        line.insert("severity".into(), severity(metadata.level()).into());
        line.insert(
            "time".into(),
            chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true).into(),
        );
        line.insert("target".into(), metadata.target().into());
        if let Some(file) = metadata.file() {
            line.insert(
                "logging.googleapis.com/sourceLocation".into(),
                serde_json::json!({"file": file, "line": metadata.line().map(|line| line.to_string())}),
            );
        }
        if let Some(scope) = context.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut fields = span
                        .extensions()
                        .get::<FormattedFields<JsonFields>>()
                        .and_then(|formatted| serde_json::from_str::<Map<String, Value>>(formatted).ok())
                        .unwrap_or_default();
                    fields.insert("name".into(), span.name().into());
                    Value::Object(fields)
                })
                .collect();
            if let Some(innermost) = spans.last() {
                line.insert("span".into(), innermost.clone());
            }
            line.insert("spans".into(), spans.into());
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Cloud Logging's names for the levels.
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// An event's fields as JSON values, numbers kept as numbers.
#[derive(Default)]
struct EventFields(Map<String, Value>);

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), error_chain(value).into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Formats an error and all its causes on one line, the way logs should show it.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_have_the_cloud_logging_shape() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(super::cloud_logging_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", job.name = "postgres-backup", job.key = tracing::field::Empty);
            let _entered = span.enter();
            span.record("job.key", "postgres-backup:2026-11-26");
            tracing::warn!(
                message.id = "123",
                delivery.attempt = 2,
                duration_seconds = 1.5,
                severity = "DEBUG",
                "forged message rejected"
            );
        });
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(output.trim()).expect("one JSON object per line");
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "forged message rejected");
        assert!(line["time"].as_str().is_some_and(|time| time.contains('T')), "{line}");
        // Field names as written in the code, numbers as numbers, at the top level.
        assert_eq!(line["delivery.attempt"], 2, "{line}");
        assert_eq!(line["message.id"], "123", "{line}");
        assert_eq!(line["duration_seconds"], 1.5, "{line}");
        assert!(line["logging.googleapis.com/sourceLocation"]["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("telemetry.rs")));
        // Span fields stay under `span`, including those recorded later.
        assert_eq!(line["span"]["job.name"], "postgres-backup", "{line}");
        assert_eq!(line["span"]["job.key"], "postgres-backup:2026-11-26", "{line}");
        assert_eq!(line["spans"][0]["name"], "job", "{line}");
        assert!(
            line.get("job.name").is_none(),
            "span fields are not copied to the top: {line}"
        );
    }
}
