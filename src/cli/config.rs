//! `keshless-ops config`: validate the environment and show the result.

use std::process::ExitCode;

use crate::config::{Config, SecretsSourceConfig};

/// Check the configuration in the environment and print it with secrets and
/// passwords redacted. Exits 78 and lists every problem when it is invalid.
#[derive(Debug, clap::Args)]
pub struct ConfigCmd {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ConfigCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = match Config::from_env() {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{error}");
                return Ok(ExitCode::from(super::exit::CONFIG));
            }
        };
        let secrets_source = match &config.secrets_source {
            SecretsSourceConfig::Env { names, prefix } => serde_json::json!({
                "kind": "env", "names": names, "prefix": prefix,
            }),
            SecretsSourceConfig::File { path } => serde_json::json!({ "kind": "file", "path": path }),
            SecretsSourceConfig::SecretManager(source) => serde_json::json!({
                "kind": "secret-manager",
                "project": source.project,
                "filter": source.filter,
                "locations": source.locations,
                "requests_per_minute": source.requests_per_minute,
                "emulator_host": source.emulator_host,
            }),
        };
        let retention = &config.retention;
        let shown = serde_json::json!({
            "JOB_SECRET": "[redacted]",
            "SECRETS_ENCRYPTION_KEY": "[redacted]",
            "DATABASE_URL": config.database_url.to_string(),
            "LEDGER_DATABASE_URL": config.ledger_database_url.to_string(),
            "DRILL_DATABASE_URL": config.drill_database_url.to_string(),
            "DRILL_SECRET_MANAGER_PROJECT": config.full_drill.project,
            "DRILL_DOCUMENTS_STORE": config.full_drill.documents.as_ref().map(ToString::to_string),
            "GCS_BACKUPS_BUCKET": config.gcs_backups_bucket,
            "GCS_DOCUMENTS_BUCKET": config.gcs_documents_bucket,
            "BACKUP_STORE": config.backup_store.to_string(),
            "DOCUMENTS_STORE": config.documents_store.to_string(),
            "GOOGLE_CLOUD_PROJECT": config.google_cloud_project,
            "PUBSUB_TOPIC": config.pubsub.topic,
            "PUBSUB_SUBSCRIPTION": config.pubsub.subscription,
            "PUBSUB_DLQ_TOPIC": config.pubsub.dead_letter_topic,
            "PUBSUB_DLQ_SUBSCRIPTION": config.pubsub.dead_letter_subscription,
            "PUBSUB_EMULATOR_HOST": config.pubsub.emulator_host,
            "PUBSUB_MAX_DELIVERY_ATTEMPTS": config.pubsub.max_delivery_attempts,
            "STORAGE_EMULATOR_HOST": config.storage_emulator_host,
            "PORT": config.port,
            "SCHEDULE_TIME_ZONE": config.schedule_time_zone.name(),
            "SECRETS_SOURCE": secrets_source,
            "RETENTION": {
                "daily_days": retention.daily_days,
                "monthly_months": retention.monthly_months,
                "weekly_secrets_weeks": retention.weekly_secrets_weeks,
                "inventory_days": retention.inventory_days,
                "drill_report_months": retention.drill_report_months,
                "keep_min_daily": retention.keep_min_daily,
                "keep_min_monthly": retention.keep_min_monthly,
                "keep_min_weekly_secrets": retention.keep_min_weekly_secrets,
                "keep_min_inventories": retention.keep_min_inventories,
                "keep_min_drill_reports": retention.keep_min_drill_reports,
            },
            "BACKUP_COMPRESSION": config.dumps.compression.to_string(),
            "BACKUP_ENCRYPTION": match config.dumps.encryption {
                crate::config::EncryptionPolicy::Required => "required",
                crate::config::EncryptionPolicy::Optional => "optional",
            },
            // Public keys: what `age-keygen -y` prints, safe to show.
            "BACKUP_ENCRYPTION_RECIPIENTS": config.dumps.recipients.as_ref().map(|keys| keys.public_keys()),
            "BACKUP_AGE_IDENTITY": config.dumps.identity.as_ref().map(ToString::to_string),
            "WORKER_CONCURRENCY": config.worker.concurrency,
            "SHUTDOWN_GRACE_SECONDS": config.worker.shutdown_grace.as_secs(),
        });
        if self.json {
            println!("{}", serde_json::to_string_pretty(&shown)?);
        } else if let serde_json::Value::Object(entries) = shown {
            let width = entries.keys().map(String::len).max().unwrap_or(0);
            for (name, value) in entries {
                let value = match value {
                    serde_json::Value::String(text) => text,
                    serde_json::Value::Null => "(unset)".to_owned(),
                    other => other.to_string(),
                };
                println!("{name:<width$}  {value}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
