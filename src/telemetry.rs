//! Logging: JSON shaped for Cloud Logging (`severity`, `message`, `time`, fields)
//! when stderr is not a terminal, compact human-readable lines when it is.
//! Filtering follows `RUST_LOG`.
//!
//! Logs go to stderr so that commands which print results (`--json`) keep
//! stdout clean for pipes; Cloud Run parses structured logs on either stream.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
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
        LogFormat::Json => registry
            .with(tracing_stackdriver::layer().with_writer(std::io::stderr))
            .try_init(),
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
        let subscriber =
            tracing_subscriber::registry().with(tracing_stackdriver::layer().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", job.name = "postgres-backup");
            let _entered = span.enter();
            tracing::warn!(message.id = "123", delivery.attempt = 2, "forged message rejected");
        });
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(output.trim()).expect("one JSON object per line");
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "forged message rejected");
        assert!(line["time"].as_str().is_some_and(|time| time.contains('T')), "{line}");
        assert_eq!(line["deliveryAttempt"], 2);
        assert_eq!(line["span"]["job.name"], "postgres-backup", "{line}");
    }
}
