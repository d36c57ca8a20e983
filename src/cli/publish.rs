//! `keshless-ops publish`: publish a job message like gcloud would.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use secrecy::ExposeSecret;

use crate::runtime::message::{JOB_ATTRIBUTE, SECRET_ATTRIBUTE, SOURCE_ATTRIBUTE};
use crate::runtime::pubsub;

/// Publish a job message to the jobs topic, adding the job secret, so the
/// worker runs it through the normal pipeline. Needs only JOB_SECRET and the
/// Pub/Sub settings. Prints the message id.
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
        let (config, client) = match super::connect_messaging().await? {
            Ok(connected) => connected,
            Err(code) => return Ok(code),
        };
        let mut data = serde_json::Map::new();
        data.insert("job".into(), self.job.clone().into());
        if !self.params.is_empty() {
            data.insert("params".into(), super::params_object(&self.params).into());
        }
        if let Some(key) = &self.key {
            data.insert("idempotency_key".into(), key.clone().into());
        }
        let attributes = HashMap::from([
            (
                SECRET_ATTRIBUTE.to_owned(),
                config.job_secret.expose_secret().to_owned(),
            ),
            (SOURCE_ATTRIBUTE.to_owned(), "cli".to_owned()),
            (JOB_ATTRIBUTE.to_owned(), self.job.clone()),
        ]);
        let mut publisher = client.topic(&config.pubsub.topic).new_publisher(None);
        let published = pubsub::publish(&publisher, serde_json::to_vec(&data)?, attributes).await;
        publisher.shutdown().await;
        let message_id = published.with_context(|| format!("cannot publish to topic {}", config.pubsub.topic))?;
        println!("{message_id}");
        Ok(ExitCode::SUCCESS)
    }
}
