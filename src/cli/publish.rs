//! `keshless-ops publish`: publish a job message like gcloud would.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use secrecy::ExposeSecret;

use crate::runtime::message::{JOB_ATTRIBUTE, SECRET_ATTRIBUTE, SOURCE_ATTRIBUTE};
use crate::runtime::pubsub;

/// Publish a job message to the jobs topic, adding the job secret, so the
/// worker runs it through the normal pipeline. Prints the message id. The
/// message is first read as the worker will read it: an unknown job or
/// parameter is refused here (exit 2) with the error the worker would
/// dead-letter it with, naming the accepted values.
#[derive(Debug, clap::Args)]
pub struct PublishCmd {
    /// Job name, e.g. postgres-backup.
    pub job: String,
    /// Job parameter as KEY=VALUE (repeatable).
    #[arg(long = "param", value_parser = super::parse_param)]
    pub params: Vec<(String, String)>,
    /// Idempotency key (default: derived from the message id).
    #[arg(long)]
    pub key: Option<String>,
}

impl PublishCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Err(code) = super::check_environment("publish") {
            return Ok(code);
        }
        let config = crate::config::MessagingConfig::from_env()?;
        let mut data = serde_json::Map::new();
        data.insert("job".into(), self.job.clone().into());
        if !self.params.is_empty() {
            data.insert("params".into(), super::params_object(&self.params).into());
        }
        if let Some(key) = &self.key {
            data.insert("idempotency_key".into(), key.clone().into());
        }
        let data = serde_json::to_vec(&data)?;
        let attributes = HashMap::from([
            (
                SECRET_ATTRIBUTE.to_owned(),
                config.job_secret.expose_secret().to_owned(),
            ),
            (SOURCE_ATTRIBUTE.to_owned(), "cli".to_owned()),
            (JOB_ATTRIBUTE.to_owned(), self.job.clone()),
        ]);
        if let Err(problem) = check(&data, &attributes, &config).await? {
            eprintln!(
                "not published: {problem} (the worker would dead-letter this message with that error, \
                 error_kind={})",
                problem.kind()
            );
            return Ok(ExitCode::from(2));
        }
        let client = pubsub::connect(
            config.google_cloud_project.as_deref(),
            config.pubsub.emulator_host.as_deref(),
        )
        .await?;
        let mut publisher = client.topic(&config.pubsub.topic).new_publisher(None);
        let published = pubsub::publish(&publisher, data, attributes).await;
        publisher.shutdown().await;
        let message_id = published.with_context(|| format!("cannot publish to topic {}", config.pubsub.topic))?;
        println!("{message_id}");
        Ok(ExitCode::SUCCESS)
    }
}

/// Reads the message as the worker will, with the jobs' own parameter rules:
/// an unknown job or parameter is refused here with the worker's words
/// instead of reaching the dead-letter topic. postgres-backup's database is
/// checked against DATABASES (else DATABASE_URL's database) when either is
/// set here.
async fn check(
    data: &[u8],
    attributes: &HashMap<String, String>,
    config: &crate::config::MessagingConfig,
) -> anyhow::Result<Result<(), crate::runtime::message::MessageError>> {
    let mut databases = super::variable("DATABASES")
        .map(|list| crate::config::comma_separated(&list))
        .unwrap_or_default();
    if databases.is_empty() {
        databases.extend(config.default_database.clone());
    }
    if databases.is_empty() {
        // Nothing here says which databases the worker backs up: accept the
        // one the message names (the worker still checks it).
        let named = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|body| body["params"]["database"].as_str().map(str::to_owned));
        databases.extend(named);
    }
    let registry = crate::jobs::registry_for_checking(&databases).await?;
    let message = crate::runtime::message::IncomingMessage {
        message_id: "local-check".to_owned(),
        data: data.to_vec(),
        attributes: attributes.clone(),
        publish_time: chrono::Utc::now(),
        delivery_attempt: None,
    };
    Ok(crate::runtime::message::parse(&message, &registry, config.schedule_time_zone).map(|_| ()))
}
