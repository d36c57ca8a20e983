//! A Pub/Sub emulator per test, with the jobs topic, the dead-letter topic
//! and their subscriptions created as `infra/` creates them in production.

use std::collections::HashMap;
use std::time::Duration;

use google_cloud_gax::conn::Environment;
use google_cloud_googleapis::pubsub::v1::{DeadLetterPolicy, PubsubMessage, PullRequest};
use google_cloud_pubsub::client::{Client, ClientConfig};
use google_cloud_pubsub::publisher::{Publisher, PublisherConfig};
use google_cloud_pubsub::subscription::{Subscription, SubscriptionConfig};
use google_cloud_pubsub::topic::Topic;
use keshless_ops::emulator::{EmulatorConfig, RunningEmulator};

pub const PROJECT: &str = "local-project";
pub const JOBS_TOPIC: &str = "backup-jobs";
pub const JOBS_SUBSCRIPTION: &str = "backup-jobs-worker";
pub const DEAD_LETTER_TOPIC: &str = "backup-jobs-dlq";
pub const DEAD_LETTER_SUBSCRIPTION: &str = "backup-jobs-dlq-inspect";

/// Subscription settings a test may vary.
#[derive(Debug, Clone, Copy)]
pub struct StackOptions {
    pub ack_deadline_seconds: i32,
    pub max_delivery_attempts: i32,
    /// See `EmulatorConfig::max_stream_lifetime`.
    pub max_stream_lifetime: Option<std::time::Duration>,
    /// See `EmulatorConfig::max_messages_per_pull`.
    pub max_messages_per_pull: Option<usize>,
    /// See `EmulatorConfig::immediate_pulls_find_nothing` (then [`PubSubStack::peek`] sees nothing).
    pub immediate_pulls_find_nothing: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            ack_deadline_seconds: 10,
            max_delivery_attempts: 5,
            max_stream_lifetime: None,
            max_messages_per_pull: None,
            immediate_pulls_find_nothing: false,
        }
    }
}

pub struct PubSubStack {
    pub emulator: RunningEmulator,
    pub client: Client,
    pub jobs_topic: Topic,
    pub dead_letter_topic: Topic,
    pub subscription: Subscription,
    pub dead_letter_subscription: Subscription,
    pub publisher: Publisher,
    /// Pulls with a gRPC deadline, as `dlq` commands read the DLQ.
    pub puller: keshless_ops::runtime::pubsub::Puller,
}

pub async fn client_for(host: &str) -> Client {
    Client::new(ClientConfig {
        project_id: Some(PROJECT.into()),
        environment: Environment::Emulator(host.to_owned()),
        ..ClientConfig::default()
    })
    .await
    .expect("Pub/Sub client")
}

impl PubSubStack {
    pub async fn start(options: StackOptions) -> PubSubStack {
        PubSubStack::start_on("127.0.0.1:0".parse().unwrap(), options).await
    }

    /// Same, on a given address (a restart on the port a worker knows).
    pub async fn start_on(address: std::net::SocketAddr, options: StackOptions) -> PubSubStack {
        let emulator = RunningEmulator::start(
            address,
            EmulatorConfig {
                max_stream_lifetime: options.max_stream_lifetime,
                max_messages_per_pull: options.max_messages_per_pull,
                immediate_pulls_find_nothing: options.immediate_pulls_find_nothing,
                ..EmulatorConfig::default()
            },
        )
        .await
        .expect("start the emulator");
        let client = client_for(&emulator.host()).await;
        let jobs_topic = client.create_topic(JOBS_TOPIC, None, None).await.expect("jobs topic");
        let dead_letter_topic = client
            .create_topic(DEAD_LETTER_TOPIC, None, None)
            .await
            .expect("dead-letter topic");
        let subscription = client
            .create_subscription(
                JOBS_SUBSCRIPTION,
                JOBS_TOPIC,
                SubscriptionConfig {
                    ack_deadline_seconds: options.ack_deadline_seconds,
                    dead_letter_policy: Some(DeadLetterPolicy {
                        dead_letter_topic: dead_letter_topic.fully_qualified_name().to_owned(),
                        max_delivery_attempts: options.max_delivery_attempts,
                    }),
                    ..SubscriptionConfig::default()
                },
                None,
            )
            .await
            .expect("jobs subscription");
        let dead_letter_subscription = client
            .create_subscription(
                DEAD_LETTER_SUBSCRIPTION,
                DEAD_LETTER_TOPIC,
                SubscriptionConfig::default(),
                None,
            )
            .await
            .expect("dead-letter subscription");
        let publisher = jobs_topic.new_publisher(Some(PublisherConfig {
            flush_interval: Duration::from_millis(5),
            bundle_size: 1,
            ..PublisherConfig::default()
        }));
        let puller = keshless_ops::runtime::pubsub::Puller::connect(Some(&emulator.host()))
            .await
            .expect("Pub/Sub puller");
        PubSubStack {
            puller,
            emulator,
            client,
            jobs_topic,
            dead_letter_topic,
            subscription,
            dead_letter_subscription,
            publisher,
        }
    }

    pub fn host(&self) -> String {
        self.emulator.host()
    }

    /// Publishes to the jobs topic and returns the message id.
    pub async fn publish(&self, data: &str, attributes: &[(&str, &str)]) -> String {
        self.publisher
            .publish(PubsubMessage {
                data: data.as_bytes().to_vec(),
                attributes: attributes
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect::<HashMap<_, _>>(),
                ..PubsubMessage::default()
            })
            .await
            .get()
            .await
            .expect("publish")
    }

    /// Messages deliverable right now on a subscription (leased, not acked).
    pub async fn peek(subscription: &Subscription) -> Vec<PubsubMessage> {
        #[allow(deprecated)]
        let request = PullRequest {
            subscription: subscription.fully_qualified_name().to_owned(),
            return_immediately: true,
            max_messages: 1000,
        };
        subscription
            .get_client()
            .pull(request, None)
            .await
            .expect("pull")
            .into_inner()
            .received_messages
            .into_iter()
            .filter_map(|received| received.message)
            .collect()
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
