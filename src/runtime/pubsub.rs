//! Thin glue to the `gcloud-pubsub` client: connecting (emulator or Google),
//! pulling with a gRPC deadline ([`Puller`]), converting received messages,
//! publishing and waiting for the server's id.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use google_cloud_gax::conn::{Channel, Environment};
use google_cloud_gax::create_request;
use google_cloud_gax::retry::{invoke, MapErr as _, RetrySetting};
use google_cloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient as GeneratedSubscriberClient;
use google_cloud_googleapis::pubsub::v1::{PubsubMessage, PullRequest, ReceivedMessage as RawReceivedMessage};
use google_cloud_pubsub::apiv1::conn_pool::ConnectionManager;
use google_cloud_pubsub::client::{Client, ClientConfig};
use google_cloud_pubsub::publisher::Publisher;
use google_cloud_pubsub::subscriber::ReceivedMessage;

use crate::runtime::message::IncomingMessage;

/// Project used with an emulator when none is configured.
pub const EMULATOR_PROJECT: &str = "local-project";

/// Pub/Sub's message size limit, which gcloud-pubsub also sets on its channels.
const MESSAGE_LIMIT_BYTES: usize = 10 * 1024 * 1024;

/// Connects to the emulator at `emulator_host`, or to Google with
/// Application Default Credentials.
pub async fn connect(project: Option<&str>, emulator_host: Option<&str>) -> anyhow::Result<Client> {
    let config = client_config(project, emulator_host).await?;
    Client::new(config).await.context("cannot create the Pub/Sub client")
}

/// The client configuration [`connect`] and [`Puller::connect`] share.
async fn client_config(project: Option<&str>, emulator_host: Option<&str>) -> anyhow::Result<ClientConfig> {
    Ok(match emulator_host {
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
    })
}

/// Pulls that carry a gRPC deadline (`grpc-timeout`), so the service itself
/// ends a Pull still waiting for messages at that deadline; gcloud-pubsub's
/// `pull` cannot set one per call (its `RetrySetting` has no timeout, and
/// the channel-wide `ConnectionOptions::timeout` is enforced by the client
/// alone, without telling the server). A Pull the client merely stops
/// waiting for may still be open on the server and take messages.
#[derive(Debug, Clone)]
pub struct Puller {
    client: GeneratedSubscriberClient<Channel>,
}

impl Puller {
    /// A connection of its own to the emulator at `emulator_host`, or to
    /// Google with Application Default Credentials, as [`connect`] makes.
    pub async fn connect(emulator_host: Option<&str>) -> anyhow::Result<Puller> {
        let config = client_config(None, emulator_host).await?;
        let connections = ConnectionManager::new(1, &config.endpoint, &config.environment, &config.connection_option)
            .await
            .context("cannot connect to Pub/Sub")?;
        Ok(Puller {
            client: GeneratedSubscriberClient::new(connections.conn())
                .max_decoding_message_size(MESSAGE_LIMIT_BYTES)
                .max_encoding_message_size(MESSAGE_LIMIT_BYTES),
        })
    }

    /// One Pull (without the deprecated `return_immediately`) of up to
    /// `max_messages` from the subscription named `subscription` (fully
    /// qualified) that the service ends at `deadline` if no message came:
    /// DEADLINE_EXCEEDED, or CANCELLED when the client's own timer for the
    /// same deadline fired first. Retried as gcloud-pubsub retries a Pull.
    pub async fn pull(
        &self,
        subscription: &str,
        max_messages: i32,
        deadline: Duration,
    ) -> Result<Vec<RawReceivedMessage>, tonic::Status> {
        let action = || async {
            let mut client = self.client.clone();
            #[allow(deprecated)] // false is the field's documented default
            let mut request = create_request(
                format!("subscription={subscription}"),
                PullRequest {
                    subscription: subscription.to_owned(),
                    return_immediately: false,
                    max_messages,
                },
            );
            request.set_timeout(deadline);
            client.pull(request).await.map_transient_err()
        };
        let response = invoke(Some(RetrySetting::default()), action).await?;
        Ok(response.into_inner().received_messages)
    }
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
