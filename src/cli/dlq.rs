//! `keshless-ops dlq`: inspect, replay and discard dead-lettered job messages.

use std::process::ExitCode;

use crate::runtime::dead_letters::{self, ReplaySelection};

/// Inspect, replay and discard dead-lettered job messages (reads PUBSUB_DLQ_SUBSCRIPTION).
#[derive(Debug, clap::Subcommand)]
pub enum DlqCmd {
    /// Show dead-lettered messages (job, key, error, attempts, times) without consuming them.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Republish dead-lettered messages to the jobs topic (source=replay), keeping
    /// their idempotency key so a job that in fact succeeded is not run again.
    /// The dead-letter copy is acknowledged only after the republish is confirmed.
    Replay {
        /// Only messages for this job.
        #[arg(long)]
        job: Option<String>,
        /// Only the message with this idempotency key.
        #[arg(long)]
        key: Option<String>,
        /// Replay every dead-lettered message.
        #[arg(long)]
        all: bool,
        /// Give replayed messages a fresh idempotency key (runs them again even if they succeeded).
        #[arg(long)]
        force: bool,
        /// Show what would be replayed without publishing or acknowledging anything.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge one dead letter after review, without replaying it (a
    /// poison message): recorded in the ledger (LEDGER_DATABASE_URL, else
    /// DATABASE_URL) with the reason and $USER before it is acknowledged.
    Discard {
        /// Its message id as `dlq list` shows it (or its idempotency key, when
        /// only one dead letter carries it).
        id: String,
        /// Why it is not replayed: kept in the ledger and the logs.
        #[arg(long)]
        reason: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl DlqCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let command = match &self {
            DlqCmd::List { .. } => "dlq list",
            DlqCmd::Replay { .. } => "dlq replay",
            DlqCmd::Discard { .. } => "dlq discard",
        };
        if let Err(code) = super::check_environment(command) {
            return Ok(code);
        }
        // A discard needs its reason and the ledger before anything is leased.
        let ledger_url = match &self {
            DlqCmd::Discard { reason, .. } => {
                if reason.trim().is_empty() || reason.chars().any(char::is_control) {
                    eprintln!("--reason must say why the dead letter is discarded, on one line");
                    return Ok(ExitCode::from(2));
                }
                match super::ledger_url() {
                    Ok(url) => Some(url),
                    Err(problem) => {
                        eprintln!("invalid configuration (1 problem):\n  - {problem}");
                        return Ok(ExitCode::from(super::exit::CONFIG));
                    }
                }
            }
            _ => None,
        };
        let (config, client) = match super::connect_messaging().await? {
            Ok(connected) => connected,
            Err(code) => return Ok(code),
        };
        let subscription = client.subscription(&config.pubsub.dead_letter_subscription);
        let puller = crate::runtime::pubsub::Puller::connect(config.pubsub.emulator_host.as_deref()).await?;
        match self {
            DlqCmd::List { json, limit } => {
                let letters = dead_letters::list(&subscription, &puller, limit).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&letters)?);
                } else if letters.is_empty() {
                    println!(
                        "no dead-lettered messages in {}",
                        config.pubsub.dead_letter_subscription
                    );
                } else {
                    // Columns as wide as their longest value (ids and keys
                    // vary in length); the error, last, is whole.
                    let rows: Vec<[String; 6]> = letters
                        .iter()
                        .map(|letter| {
                            [
                                letter.message_id.clone(),
                                letter.job.clone().unwrap_or_else(|| "-".into()),
                                letter.idempotency_key.clone().unwrap_or_else(|| "-".into()),
                                letter.error_kind.clone().unwrap_or_else(|| "-".into()),
                                letter
                                    .attempts
                                    .map(|count| count.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                letter.last_time.to_rfc3339(),
                            ]
                        })
                        .collect();
                    let headers = [
                        "message id",
                        "job",
                        "idempotency key",
                        "kind",
                        "attempts",
                        "dead-lettered at",
                    ];
                    let widths: Vec<usize> = (0..headers.len())
                        .map(|column| {
                            rows.iter()
                                .map(|row| row[column].chars().count())
                                .chain([headers[column].len()])
                                .max()
                                .unwrap_or(0)
                        })
                        .collect();
                    let line = |cells: [&str; 6], error: &str| {
                        let mut text = String::new();
                        for (column, cell) in cells.iter().enumerate() {
                            if column == 4 {
                                text.push_str(&format!("{cell:>width$}  ", width = widths[column]));
                            } else {
                                text.push_str(&format!("{cell:<width$} ", width = widths[column]));
                            }
                        }
                        text.push_str(error);
                        println!("{}", text.trim_end());
                    };
                    line(headers, "error");
                    for (row, letter) in rows.iter().zip(&letters) {
                        let cells = [
                            row[0].as_str(),
                            row[1].as_str(),
                            row[2].as_str(),
                            row[3].as_str(),
                            row[4].as_str(),
                            row[5].as_str(),
                        ];
                        line(cells, letter.error.as_deref().unwrap_or("-"));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            DlqCmd::Replay {
                job,
                key,
                all,
                force,
                dry_run,
                json,
            } => {
                let mut publisher = client.topic(&config.pubsub.topic).new_publisher(None);
                let report = dead_letters::replay(
                    &subscription,
                    &puller,
                    &publisher,
                    &config.job_secret,
                    &ReplaySelection {
                        job,
                        idempotency_key: key,
                        all,
                        force,
                        dry_run,
                        time_zone: config.schedule_time_zone,
                        scope_default: config.default_database.clone(),
                    },
                )
                .await;
                publisher.shutdown().await;
                let report = report?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    for entry in &report.replayed {
                        println!(
                            "replayed {} ({}) as message {}",
                            entry.idempotency_key.as_deref().unwrap_or("-"),
                            entry.job.as_deref().unwrap_or("-"),
                            entry.new_message_id.as_deref().unwrap_or("-")
                        );
                    }
                    for entry in &report.skipped {
                        println!(
                            "not replayed {} ({}): {}",
                            entry.idempotency_key.as_deref().unwrap_or("-"),
                            entry.job.as_deref().unwrap_or("-"),
                            entry.note.as_deref().unwrap_or("-")
                        );
                    }
                    println!(
                        "{} replayed, {} not replayed, {} left in the dead-letter topic",
                        report.replayed.len(),
                        report.skipped.len(),
                        report.left + report.skipped.len()
                    );
                }
                let failed = report
                    .skipped
                    .iter()
                    .any(|entry| entry.note.as_deref() != Some("dry run"));
                Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
            }
            DlqCmd::Discard { id, reason, json } => {
                let ledger = crate::runtime::ledger::Ledger::connect(&ledger_url.expect("checked above")).await?;
                let operator = super::operator();
                match dead_letters::discard(&subscription, &puller, &ledger, &id, reason.trim(), operator.as_deref())
                    .await
                {
                    Ok(report) if json => println!("{}", serde_json::to_string_pretty(&report)?),
                    Ok(report) => println!(
                        "discarded {} ({}, key {}): acknowledged, not replayed; recorded in the ledger{}",
                        report.discarded.dead_letter_message_id,
                        report.discarded.job.as_deref().unwrap_or("-"),
                        report.discarded.idempotency_key.as_deref().unwrap_or("-"),
                        if report.newly_recorded {
                            ""
                        } else {
                            " (already, by an earlier try)"
                        }
                    ),
                    Err(error) => {
                        eprintln!("{error}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
