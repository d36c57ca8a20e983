//! The command line: one file per subcommand, each a `XxxCmd` whose doc
//! comment is its `--help`. `main.rs` parses [`Cli`] and calls [`Cli::run`].

mod backups;
mod cleanup;
mod config;
mod dev;
mod dlq;
mod doctor;
mod documents;
mod drill;
mod emulator;
mod publish;
mod recover;
mod restore;
mod restore_documents;
mod restore_postgres;
mod restore_secrets;
mod run;
mod secrets;
mod status;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Backup and disaster-recovery worker for the Keshless payments platform.
///
/// Runs PostgreSQL, secrets and document backups from Pub/Sub job messages,
/// applies retention, restores, and rehearses disaster recovery.
/// Configuration comes from the environment (see README, "Configuration").
#[derive(Debug, Parser)]
#[command(name = "keshless-ops", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Worker(worker::WorkerCmd),
    Run(run::RunCmd),
    Publish(publish::PublishCmd),
    Recover(recover::RecoverCmd),
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    #[command(subcommand)]
    Backups(backups::BackupsCmd),
    #[command(subcommand)]
    Restore(restore::RestoreCmd),
    Cleanup(cleanup::CleanupCmd),
    Drill(drill::DrillCmd),
    #[command(subcommand)]
    Secrets(secrets::SecretsCmd),
    Status(status::StatusCmd),
    Dev(dev::DevCmd),
    Emulator(emulator::EmulatorCmd),
    Config(config::ConfigCmd),
    #[command(subcommand)]
    Documents(documents::DocumentsCmd),
    Doctor(doctor::DoctorCmd),
}

impl Cli {
    /// The command line with each subcommand's "Environment" section (from
    /// `config::variables::COMMANDS`) at the end of its `--help`.
    pub fn command_with_environment() -> clap::Command {
        fn annotate(command: clap::Command, path: &str) -> clap::Command {
            let mut command = match crate::config::variables::groups(path) {
                Some(_) => command.after_help(crate::config::variables::help(path)),
                None => command,
            };
            let names: Vec<String> = command
                .get_subcommands()
                .map(|subcommand| subcommand.get_name().to_owned())
                .collect();
            for name in names {
                let inner = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path} {name}")
                };
                command = command.mut_subcommand(&name, |subcommand| annotate(subcommand, &inner));
            }
            command
        }
        annotate(<Cli as clap::CommandFactory>::command(), "")
    }

    /// Parses the process's arguments (with [`Cli::command_with_environment`]'s help).
    pub fn parse_with_environment() -> Cli {
        use clap::FromArgMatches as _;
        let matches = Cli::command_with_environment().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

/// Checks the variables `command` reads (`config::variables::COMMANDS`);
/// prints every problem at once and gives the exit code when one is wrong.
pub(crate) fn check_environment(command: &str) -> Result<(), ExitCode> {
    crate::config::variables::validate(command).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(exit::CONFIG)
    })
}

/// Process exit codes with a meaning beyond success/failure.
pub mod exit {
    /// The environment is misconfigured (sysexits' EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// A check ran and found problems (doctor, documents check), or a restore
    /// finished with objects it could not bring back.
    pub const FINDINGS: u8 = 3;
}

impl Cli {
    /// Runs the chosen subcommand; errors are reported by `main`.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Worker(command) => command.run().await,
            Command::Run(command) => command.run().await,
            Command::Publish(command) => command.run().await,
            Command::Recover(command) => command.run().await,
            Command::Dlq(command) => command.run().await,
            Command::Backups(command) => command.run().await,
            Command::Restore(command) => command.run().await,
            Command::Cleanup(command) => command.run().await,
            Command::Drill(command) => command.run().await,
            Command::Secrets(command) => command.run().await,
            Command::Status(command) => command.run().await,
            Command::Dev(command) => command.run().await,
            Command::Emulator(command) => command.run().await,
            Command::Config(command) => command.run().await,
            Command::Documents(command) => command.run().await,
            Command::Doctor(command) => command.run().await,
        }
    }
}

/// A size in binary units for people (`26.2 KiB`); tables show it next to
/// the exact bytes, `--json` keeps bytes only.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Bytes and their human size: `26843 (26.2 KiB)`.
pub(crate) fn bytes_and_human(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        format!("{bytes} ({})", human_bytes(bytes))
    }
}

/// The one grammar of every `--date`, `--since`, `--as-of` and `--inventory`.
const TIME_FORMS: &str = "use YYYY-MM-DD (a UTC day, e.g. 2026-11-26) or an RFC 3339 time \
                          (2026-11-26T03:00:00Z, 2026-11-26T04:00:00+01:00)";

/// A point in time: an RFC 3339 time, or a day (`YYYY-MM-DD`, its 00:00 UTC).
pub(crate) fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let trimmed = text.trim();
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(trimmed) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
        if trimmed.len() == 10 {
            return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
        }
    }
    Err(format!("{text:?} is not a date or time: {TIME_FORMS}"))
}

/// A UTC day: `YYYY-MM-DD`, or an RFC 3339 time (the UTC day it falls on).
pub(crate) fn parse_date(text: &str) -> Result<chrono::NaiveDate, String> {
    parse_time(text).map(|time| time.date_naive())
}

/// [`parse_date`], written back as `YYYY-MM-DD`.
pub(crate) fn parse_date_text(text: &str) -> Result<String, String> {
    parse_date(text).map(|date| date.format("%Y-%m-%d").to_string())
}

/// A `--param key=value` pair.
pub(crate) fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `--param` pairs as a JSON object: values that read as JSON (numbers,
/// booleans, quoted strings, objects) keep their type, anything else is a string.
pub(crate) fn params_object(pairs: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .iter()
        .map(|(key, value)| {
            let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.clone()));
            (key.clone(), value)
        })
        .collect()
}

/// Resolves on SIGINT or SIGTERM (Cloud Run sends SIGTERM before stopping an instance).
pub(crate) async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Loads the full configuration, or prints every problem and returns the exit code.
pub(crate) fn load_config() -> Result<crate::config::Config, ExitCode> {
    crate::config::Config::from_env().map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(exit::CONFIG)
    })
}

/// A non-empty environment variable, trimmed.
pub(crate) fn variable(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The idempotency ledger's database: `LEDGER_DATABASE_URL`, else `DATABASE_URL`.
pub(crate) fn ledger_url() -> Result<crate::config::DatabaseUrl, String> {
    match (variable("LEDGER_DATABASE_URL"), variable("DATABASE_URL")) {
        (Some(url), _) => url.parse().map_err(|error| format!("LEDGER_DATABASE_URL: {error}")),
        (None, Some(url)) => url.parse().map_err(|error| format!("DATABASE_URL: {error}")),
        (None, None) => Err("LEDGER_DATABASE_URL and DATABASE_URL are not set: the ledger database \
                             (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)"
            .to_owned()),
    }
}

/// Who runs this command, for what it records (pins, discards): `$USER`.
pub(crate) fn operator() -> Option<String> {
    variable("USER").or_else(|| variable("LOGNAME"))
}

/// Where the backups are, from `BACKUP_STORE` (or `gs://$GCS_BACKUPS_BUCKET`)
/// alone: restoring at 3 a.m. must not need the worker's whole configuration.
pub(crate) fn backup_store_location() -> Result<crate::storage::StoreLocation, String> {
    match (variable("BACKUP_STORE"), variable("GCS_BACKUPS_BUCKET")) {
        (Some(url), _) => url.parse().map_err(|error| format!("BACKUP_STORE: {error}")),
        (None, Some(bucket)) => crate::storage::StoreLocation::gcs(&bucket, "")
            .map_err(|error| format!("GCS_BACKUPS_BUCKET: {}", error.reason)),
        (None, None) => Err(
            "BACKUP_STORE is not set: where the backups are (gs://BUCKET[/PREFIX] or \
                             file:///PATH); GCS_BACKUPS_BUCKET=BUCKET works too"
                .to_owned(),
        ),
    }
}

/// Where the documents are, from `DOCUMENTS_STORE` (or `gs://$GCS_DOCUMENTS_BUCKET`)
/// alone, for the same reason as [`backup_store_location`].
pub(crate) fn documents_store_location() -> Result<crate::storage::StoreLocation, String> {
    match (variable("DOCUMENTS_STORE"), variable("GCS_DOCUMENTS_BUCKET")) {
        (Some(url), _) => url.parse().map_err(|error| format!("DOCUMENTS_STORE: {error}")),
        (None, Some(bucket)) => crate::storage::StoreLocation::gcs(&bucket, "")
            .map_err(|error| format!("GCS_DOCUMENTS_BUCKET: {}", error.reason)),
        (None, None) => Err(
            "DOCUMENTS_STORE is not set: where the documents are (gs://BUCKET[/PREFIX] or \
                             file:///PATH); GCS_DOCUMENTS_BUCKET=BUCKET works too"
                .to_owned(),
        ),
    }
}

/// Opens the backup and documents stores for the documents commands; prints
/// the problems and gives the exit code when the variables are wrong.
pub(crate) async fn open_backup_and_documents_stores() -> anyhow::Result<
    Result<
        (
            std::sync::Arc<dyn crate::storage::BlobStore>,
            std::sync::Arc<dyn crate::storage::BlobStore>,
        ),
        ExitCode,
    >,
> {
    let problems: Vec<String> = [backup_store_location().err(), documents_store_location().err()]
        .into_iter()
        .flatten()
        .collect();
    if !problems.is_empty() {
        eprintln!(
            "invalid configuration ({} problem{}):",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for problem in problems {
            eprintln!("  - {problem}");
        }
        return Ok(Err(ExitCode::from(exit::CONFIG)));
    }
    let emulator = variable("STORAGE_EMULATOR_HOST");
    let backups = crate::storage::open(&backup_store_location().expect("checked"), emulator.as_deref()).await?;
    let documents = crate::storage::open(&documents_store_location().expect("checked"), emulator.as_deref()).await?;
    Ok(Ok((backups, documents)))
}

/// Opens the backup store named by [`backup_store_location`] (and
/// `STORAGE_EMULATOR_HOST`); prints the problem and gives the exit code when
/// the variables are wrong.
pub(crate) async fn open_backup_store(
) -> anyhow::Result<Result<std::sync::Arc<dyn crate::storage::BlobStore>, ExitCode>> {
    let location = match backup_store_location() {
        Ok(location) => location,
        Err(problem) => {
            eprintln!("invalid configuration (1 problem):\n  - {problem}");
            return Ok(Err(ExitCode::from(exit::CONFIG)));
        }
    };
    let emulator = variable("STORAGE_EMULATOR_HOST");
    Ok(Ok(crate::storage::open(&location, emulator.as_deref()).await?))
}

/// Loads what Pub/Sub-only commands need and connects; on a configuration
/// problem, prints every problem and gives the exit code instead.
pub(crate) async fn connect_messaging(
) -> anyhow::Result<Result<(crate::config::MessagingConfig, google_cloud_pubsub::client::Client), ExitCode>> {
    let config = match crate::config::MessagingConfig::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Ok(Err(ExitCode::from(exit::CONFIG)));
        }
    };
    let client = crate::runtime::pubsub::connect(
        config.google_cloud_project.as_deref(),
        config.pubsub.emulator_host.as_deref(),
    )
    .await?;
    Ok(Ok((config, client)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(26_829), "26.2 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 1), "5.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(bytes_and_human(26_829), "26829 (26.2 KiB)");
        assert_eq!(bytes_and_human(12), "12 B");
    }

    #[test]
    fn every_date_flag_reads_one_grammar() {
        assert_eq!(parse_date("2026-11-26").unwrap().to_string(), "2026-11-26");
        assert_eq!(
            parse_date("2026-11-26T23:30:00-02:00").unwrap().to_string(),
            "2026-11-27"
        );
        assert_eq!(
            parse_time("2026-11-26").unwrap().to_rfc3339(),
            "2026-11-26T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-26T03:00:00+01:00").unwrap().to_rfc3339(),
            "2026-11-26T02:00:00+00:00"
        );
        for bad in [
            "01-12-2026",
            "2026-13-01",
            "yesterday",
            "2026-11-26T03:00:00",
            "2026-1-2",
            "",
        ] {
            let problem = parse_time(bad).unwrap_err();
            assert!(
                problem.contains("YYYY-MM-DD") && problem.contains("RFC 3339"),
                "{bad}: {problem}"
            );
            assert_eq!(parse_date(bad).unwrap_err(), problem);
        }
    }

    #[test]
    fn params_are_key_value() {
        assert_eq!(parse_param("database=app"), Ok(("database".into(), "app".into())));
        assert_eq!(parse_param("x=a=b"), Ok(("x".into(), "a=b".into())));
        assert!(parse_param("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_param("=v").is_err());
    }

    #[test]
    fn param_values_keep_json_types() {
        let pairs = [
            ("monthly".to_owned(), "force".to_owned()),
            ("sample".to_owned(), "100".to_owned()),
            ("dry".to_owned(), "true".to_owned()),
            ("name".to_owned(), "\"007\"".to_owned()),
        ];
        let object = params_object(&pairs);
        assert_eq!(object["monthly"], "force");
        assert_eq!(object["sample"], 100);
        assert_eq!(object["dry"], true);
        assert_eq!(object["name"], "007");
    }
}
