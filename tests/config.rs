//! Configuration from the environment: every problem reported at once, each
//! naming its variable, and no secret or password ever shown.

use keshless_ops::config::{Config, SecretsSourceConfig};
use keshless_ops::storage::StoreLocation;

const JOB_SECRET: &str = "job-secret-value-7f3a";
const ENCRYPTION_KEY: &str = "encryption-key-0123456789abcdefghijkl";
const DATABASE_PASSWORD: &str = "db-pass-9c1e";

fn valid() -> Vec<(&'static str, String)> {
    vec![
        ("JOB_SECRET", JOB_SECRET.into()),
        ("SECRETS_ENCRYPTION_KEY", ENCRYPTION_KEY.into()),
        (
            "DATABASE_URL",
            format!("postgres://keshless:{DATABASE_PASSWORD}@db.internal:5432/keshless"),
        ),
        ("GCS_BACKUPS_BUCKET", "keshless-backups".into()),
        ("GCS_DOCUMENTS_BUCKET", "keshless-documents".into()),
        ("SECRETS_ENV_VARS", "JWT_SECRET, STRIPE_KEY".into()),
    ]
}

fn with(overrides: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut variables: Vec<(&'static str, String)> = valid()
        .into_iter()
        .filter(|(name, _)| !overrides.iter().any(|(override_name, _)| override_name == name))
        .collect();
    variables.extend(overrides.iter().map(|(name, value)| (*name, value.to_string())));
    variables
}

fn problems(variables: Vec<(&'static str, String)>) -> Vec<String> {
    match Config::from_vars(variables) {
        Ok(config) => panic!("expected a configuration error, got {config:?}"),
        Err(error) => {
            let text = error.to_string();
            for secret in [JOB_SECRET, ENCRYPTION_KEY, DATABASE_PASSWORD, "short-key", "hunter2"] {
                assert!(!text.contains(secret), "error text leaks {secret:?}: {text}");
            }
            error.problems
        }
    }
}

fn single_problem(variables: Vec<(&'static str, String)>) -> String {
    let problems = problems(variables);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    problems.into_iter().next().expect("one problem")
}

#[test]
fn valid_environment_gives_documented_defaults() {
    let config = Config::from_vars(valid()).expect("valid configuration");
    assert_eq!(config.backup_store, StoreLocation::gcs("keshless-backups", "").unwrap());
    assert_eq!(config.ledger_database_url, config.database_url);
    assert_eq!(config.database_url.database_name(), Some("keshless"));
    assert_eq!(config.pubsub.topic, "backup-jobs");
    assert_eq!(config.pubsub.subscription, "backup-jobs-worker");
    assert_eq!(config.pubsub.dead_letter_topic, "backup-jobs-dlq");
    assert_eq!(config.port, 8080);
    assert_eq!(config.schedule_time_zone, chrono_tz::UTC);
    assert_eq!(config.retention.daily_days, 30);
    assert_eq!(config.retention.keep_min_daily, 7);
    assert_eq!(config.worker.concurrency, 1);
    assert_eq!(config.worker.shutdown_grace.as_secs(), 25);
    assert_eq!(
        config.secrets_source,
        SecretsSourceConfig::Env {
            names: vec!["JWT_SECRET".into(), "STRIPE_KEY".into()],
            prefix: None
        }
    );
}

#[test]
fn overrides_are_applied() {
    let config = Config::from_vars(with(&[
        ("BACKUP_STORE", "file:///var/lib/keshless/backups"),
        ("LEDGER_DATABASE_URL", "postgresql://ops@ledger.internal/ops"),
        ("SCHEDULE_TIME_ZONE", "Europe/Brussels"),
        ("PORT", "9090"),
        ("RETENTION_DAILY_DAYS", "45"),
        ("SECRETS_SOURCE", "file"),
        ("SECRETS_FILE", "/run/secrets/app.env"),
        ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
    ]))
    .expect("valid configuration");
    assert_eq!(config.backup_store.to_string(), "file:///var/lib/keshless/backups");
    assert_eq!(
        config.ledger_database_url.to_string(),
        "postgresql://ops@ledger.internal/ops"
    );
    assert_eq!(config.schedule_time_zone, chrono_tz::Europe::Brussels);
    assert_eq!(config.port, 9090);
    assert_eq!(config.retention.daily_days, 45);
    assert_eq!(
        config.secrets_source,
        SecretsSourceConfig::File {
            path: "/run/secrets/app.env".into()
        }
    );
    assert_eq!(config.pubsub.emulator_host.as_deref(), Some("127.0.0.1:8085"));
}

#[test]
fn every_missing_variable_is_reported_at_once() {
    let problems = problems(vec![]);
    for name in [
        "JOB_SECRET is not set",
        "SECRETS_ENCRYPTION_KEY is not set",
        "DATABASE_URL is not set",
        // Either the store's URL or its bucket; the message names both.
        "BACKUP_STORE is not set: where the backups are (gs://BUCKET[/PREFIX] or file:///PATH); \
         GCS_BACKUPS_BUCKET=BUCKET works too",
        "DOCUMENTS_STORE is not set: where the documents are (gs://BUCKET[/PREFIX] or file:///PATH); \
         GCS_DOCUMENTS_BUCKET=BUCKET works too",
        "SECRETS_SOURCE=env needs SECRETS_ENV_VARS",
    ] {
        assert!(
            problems.iter().any(|problem| problem.starts_with(name)),
            "{name:?} missing from {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 6, "{problems:#?}");
}

#[test]
fn empty_values_count_as_missing() {
    let problem = single_problem(with(&[("JOB_SECRET", "  ")]));
    assert!(problem.starts_with("JOB_SECRET is empty"), "{problem}");
}

#[test]
fn short_encryption_key_is_refused_without_showing_it() {
    let problem = single_problem(with(&[("SECRETS_ENCRYPTION_KEY", "short-key")]));
    assert!(problem.starts_with("SECRETS_ENCRYPTION_KEY is too short"), "{problem}");
    assert!(problem.contains("at least 32 characters"), "{problem}");
}

#[test]
fn encryption_key_length_counts_characters() {
    // 32 characters, more bytes: accepted.
    let key = "é".repeat(32);
    Config::from_vars(with(&[("SECRETS_ENCRYPTION_KEY", &key)])).expect("32 characters is enough");
    let key = "é".repeat(31);
    let problem = single_problem(with(&[("SECRETS_ENCRYPTION_KEY", &key)]));
    assert!(problem.contains("at least 32 characters"), "{problem}");
}

#[test]
fn malformed_database_urls_are_refused_without_the_password() {
    let cases = [
        ("mysql://root:hunter2@db/app", "is not a PostgreSQL URL"),
        ("db.internal:5432", "is not a PostgreSQL URL"),
        (
            "postgres://user:hunter2@db:notaport/app",
            "is not a valid PostgreSQL URL",
        ),
        ("postgres://user:hunter2@/app", "names no host"),
    ];
    for (value, expected) in cases {
        let problem = single_problem(with(&[("DATABASE_URL", value)]));
        assert!(problem.starts_with("DATABASE_URL: "), "{value}: {problem}");
        assert!(problem.contains(expected), "{value}: {problem}");
        assert!(
            problem.contains("expected postgres://USER[:PASSWORD]@HOST"),
            "{value}: {problem}"
        );
    }
    let problem = single_problem(with(&[("LEDGER_DATABASE_URL", "sqlite:///tmp/x")]));
    assert!(problem.starts_with("LEDGER_DATABASE_URL: "), "{problem}");
}

#[test]
fn unknown_backup_store_scheme_lists_accepted_forms() {
    let problem = single_problem(with(&[("BACKUP_STORE", "s3://keshless-backups")]));
    assert!(problem.starts_with("BACKUP_STORE: "), "{problem}");
    assert!(problem.contains("unknown scheme \"s3\""), "{problem}");
    assert!(
        problem.contains("accepted: gs://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"),
        "{problem}"
    );
}

#[test]
fn invalid_values_name_the_variable_and_the_accepted_values() {
    let cases: &[(&str, &str, &str)] = &[
        ("PORT", "http", "expected a TCP port number"),
        ("PORT", "70000", "expected a TCP port number"),
        ("SCHEDULE_TIME_ZONE", "Mars/Olympus", "expected an IANA time zone name"),
        ("SECRETS_SOURCE", "vault", "expected env, file or secret-manager"),
        ("RETENTION_DAILY_DAYS", "0", "expected a whole number from 1 to 100000"),
        (
            "RETENTION_KEEP_MIN_DAILY",
            "-3",
            "expected a whole number from 1 to 100000",
        ),
        ("WORKER_CONCURRENCY", "many", "expected a whole number"),
        ("GCS_BACKUPS_BUCKET", "Keshless_Backups", "lower-case letters"),
        ("PUBSUB_TOPIC", "goog-jobs", "not a valid Pub/Sub name"),
        ("PUBSUB_SUBSCRIPTION", "a b", "not a valid Pub/Sub name"),
        (
            "PUBSUB_MAX_DELIVERY_ATTEMPTS",
            "3",
            "expected a whole number from 5 to 100",
        ),
    ];
    for (name, value, expected) in cases {
        let problem = single_problem(with(&[(name, value)]));
        assert!(problem.starts_with(name), "{name}={value}: {problem}");
        assert!(problem.contains(expected), "{name}={value}: {problem}");
    }
}

#[test]
fn several_problems_are_all_reported() {
    let problems = problems(with(&[
        ("SECRETS_ENCRYPTION_KEY", "short-key"),
        ("DATABASE_URL", "mysql://x"),
        ("BACKUP_STORE", "ftp://x"),
    ]));
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn debug_output_never_shows_secrets_or_passwords() {
    let config = Config::from_vars(with(&[(
        "LEDGER_DATABASE_URL",
        "postgres://ops:hunter2@ledger/ops?password=hunter2",
    )]))
    .expect("valid");
    let shown = format!(
        "{config:?} {config:#?} {} {}",
        config.database_url, config.ledger_database_url
    );
    for secret in [JOB_SECRET, ENCRYPTION_KEY, DATABASE_PASSWORD, "hunter2"] {
        assert!(!shown.contains(secret), "Debug leaks {secret:?}: {shown}");
    }
    assert!(
        shown.contains("postgres://keshless:[redacted]@db.internal:5432/keshless"),
        "{shown}"
    );
    // The real value is still there for the connector.
    assert!(config.database_url.expose().contains(DATABASE_PASSWORD));
}

/// Cloud Scheduler sends the stored secret byte for byte; a trimmed copy
/// would refuse every scheduled message as forged, silently. Refused at start.
#[test]
fn a_job_secret_with_surrounding_whitespace_is_refused() {
    for padded in [
        format!("{JOB_SECRET}\n"),
        format!("{JOB_SECRET}\r\n"),
        format!(" {JOB_SECRET}"),
    ] {
        let problem = single_problem(with(&[("JOB_SECRET", &padded)]));
        assert!(
            problem.contains("JOB_SECRET") && problem.contains("whitespace") && problem.contains("printf %s"),
            "{problem}"
        );
        let error = keshless_ops::config::MessagingConfig::from_vars([("JOB_SECRET", padded.as_str())])
            .expect_err("publish checks it too")
            .to_string();
        assert!(error.contains("whitespace") && !error.contains(JOB_SECRET), "{error}");
    }
    // Inner whitespace is part of the secret.
    let config = Config::from_vars(with(&[("JOB_SECRET", "two words-secret")])).expect("valid");
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&config.job_secret),
        "two words-secret"
    );
}
