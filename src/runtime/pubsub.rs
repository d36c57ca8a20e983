//! Thin glue to the `gcloud-pubsub` client: connecting (emulator or Google),
//! converting received messages, publishing and waiting for the server's id.

use std::collections::HashMap;

use anyhow::Context as _;
use google_cloud_gax::conn::Environment;
use google_cloud_googleapis::pubsub::v1::PubsubMessage;
use google_cloud_pubsub::client::{Client, ClientConfig};
use google_cloud_pubsub::publisher::Publisher;
use google_cloud_pubsub::subscriber::ReceivedMessage;

use crate::runtime::message::IncomingMessage;

/// Project used with an emulator when none is configured.
pub const EMULATOR_PROJECT: &str = "local-project";

/// Connects to the emulator at `emulator_host`, or to Google with
/// Application Default Credentials.
pub async fn connect(project: Option<&str>, emulator_host: Option<&str>) -> anyhow::Result<Client> {
    let config = match emulator_host {
        Some(host) => ClientConfig {
            project_id: Some(project.unwrap_or(EMULATOR_PROJECT).to_owned()),
            environment: Environment::Emulator(host.to_owned()),
            ..ClientConfig::default()
        },
        None => {
            let mut config = ClientConfig::default().with_auth().await.context(
                "could not load Google Application Default Credentials for Pub/Sub \
                 (set GOOGLE_APPLICATION_CREDENTIALS, run on Google Cloud, or set PUBSUB_EMULATOR_HOST)",
            )?;
            if let Some(project) = project {
                config.project_id = Some(project.to_owned());
            }
            config
        }
    };
    Client::new(config).await.context("cannot create the Pub/Sub client")
}

/// The parts of a received message the runtime reads.
pub fn incoming(received: &ReceivedMessage) -> IncomingMessage {
    let message = &received.message;
    let publish_time = message
        .publish_time
        .as_ref()
        .and_then(|time| chrono::DateTime::from_timestamp(time.seconds, time.nanos.max(0) as u32))
        .unwrap_or_else(chrono::Utc::now);
    IncomingMessage {
        message_id: message.message_id.clone(),
        data: message.data.clone(),
        attributes: message.attributes.clone(),
        publish_time,
        delivery_attempt: received.delivery_attempt().map(|attempt| attempt as u32),
    }
}

/// Publishes one message and returns the server-assigned id.
pub async fn publish(
    publisher: &Publisher,
    data: Vec<u8>,
    attributes: HashMap<String, String>,
) -> Result<String, tonic::Status> {
    publisher
        .publish(PubsubMessage {
            data,
            attributes,
            ..PubsubMessage::default()
        })
        .await
        .get()
        .await
}
