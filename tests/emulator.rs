//! Drives the in-process Pub/Sub emulator through the real `gcloud-pubsub`
//! client over TCP. Every test starts its own emulator on 127.0.0.1:0, so the
//! tests run in parallel without sharing state or environment variables.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use google_cloud_gax::conn::Environment;
use google_cloud_gax::grpc::Code;
use google_cloud_gax::retry::RetrySetting;
use google_cloud_googleapis::pubsub::v1::{
    DeadLetterPolicy, PubsubMessage, PullRequest, ReceivedMessage as RawReceivedMessage, RetryPolicy,
    UpdateSubscriptionRequest,
};
use google_cloud_pubsub::client::{Client, ClientConfig};
use google_cloud_pubsub::publisher::PublisherConfig;
use google_cloud_pubsub::subscriber::{ReceivedMessage, SubscriberConfig};
use google_cloud_pubsub::subscription::{SubscribeConfig, Subscription, SubscriptionConfig};
use google_cloud_pubsub::topic::Topic;
use keshless_ops::emulator::{EmulatorConfig, RunningEmulator};

const PROJECT: &str = "local-project";

/// One emulator and a client connected to it.
struct TestPubSub {
    emulator: RunningEmulator,
    client: Client,
}

async fn spawn_pubsub() -> TestPubSub {
    spawn_pubsub_with(EmulatorConfig::default()).await
}

async fn spawn_pubsub_with(config: EmulatorConfig) -> TestPubSub {
    let address: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let emulator = RunningEmulator::start(address, config).await.expect("start emulator");
    let client = connect(&emulator).await;
    TestPubSub { emulator, client }
}

async fn connect(emulator: &RunningEmulator) -> Client {
    let config = ClientConfig {
        project_id: Some(PROJECT.to_string()),
        environment: Environment::Emulator(emulator.host()),
        ..ClientConfig::default()
    };
    Client::new(config).await.expect("connect client")
}

impl TestPubSub {
    async fn topic(&self, id: &str) -> Topic {
        self.client.create_topic(id, None, None).await.expect("create topic")
    }

    async fn subscription(&self, id: &str, topic: &Topic, config: SubscriptionConfig) -> Subscription {
        self.client
            .create_subscription(id, &topic.id(), config, None)
            .await
            .expect("create subscription")
    }

    async fn shutdown(self) {
        self.emulator.shutdown().await;
    }
}

fn message(data: &str) -> PubsubMessage {
    PubsubMessage {
        data: data.as_bytes().to_vec(),
        ..PubsubMessage::default()
    }
}

/// Publishes and waits for the server-assigned ids.
async fn publish(topic: &Topic, messages: Vec<PubsubMessage>) -> Vec<String> {
    let mut publisher = topic.new_publisher(Some(PublisherConfig {
        bundle_size: 1000,
        flush_interval: Duration::from_millis(5),
        ..PublisherConfig::default()
    }));
    let mut ids = Vec::with_capacity(messages.len());
    // publish_bulk sends its whole batch as one request, and Pub/Sub takes
    // at most 1000 messages per request.
    for chunk in messages.chunks(1000) {
        for awaiter in publisher.publish_bulk(chunk.to_vec()).await {
            ids.push(awaiter.get().await.expect("publish"));
        }
    }
    publisher.shutdown().await;
    ids
}

/// Pulls whatever is deliverable right now, without waiting.
async fn pull_now(subscription: &Subscription, max_messages: i32) -> Vec<RawReceivedMessage> {
    #[allow(deprecated)]
    let request = PullRequest {
        subscription: subscription.fully_qualified_name().to_string(),
        return_immediately: true,
        max_messages,
    };
    subscription
        .get_client()
        .pull(request, None)
        .await
        .expect("pull")
        .into_inner()
        .received_messages
}

/// Pulls one message, waiting (long poll) until one is deliverable.
async fn pull_one(subscription: &Subscription) -> ReceivedMessage {
    let started = Instant::now();
    loop {
        let mut messages = subscription.pull(1, None).await.expect("pull");
        if let Some(message) = messages.pop() {
            return message;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no message arrived");
    }
}

fn streaming_config(stream_ack_deadline_seconds: i32, max_outstanding_messages: i64) -> SubscribeConfig {
    SubscribeConfig::default().with_subscriber_config(SubscriberConfig {
        stream_ack_deadline_seconds,
        max_outstanding_messages,
        ..SubscriberConfig::default()
    })
}

fn dead_letter_config(dead_letter_topic: &Topic, max_delivery_attempts: i32) -> SubscriptionConfig {
    SubscriptionConfig {
        dead_letter_policy: Some(DeadLetterPolicy {
            dead_letter_topic: dead_letter_topic.fully_qualified_name().to_string(),
            max_delivery_attempts,
        }),
        ..SubscriptionConfig::default()
    }
}

fn no_retries() -> RetrySetting {
    RetrySetting {
        codes: vec![],
        ..RetrySetting::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_are_received_and_acked() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;

    let mut with_attribute = message("second");
    with_attribute.attributes.insert("job".into(), "backup".into());
    let ids = publish(&topic, vec![message("first"), with_attribute]).await;
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "message ids are unique");

    let mut stream = subscription.subscribe(Some(streaming_config(60, 10))).await.unwrap();
    let mut received = HashMap::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("message within 5 s")
            .expect("stream open");
        assert!(message.message.publish_time.is_some(), "publish_time set by the server");
        assert_eq!(
            message.delivery_attempt(),
            None,
            "no dead-letter policy, no attempt count"
        );
        message.ack().await.unwrap();
        received.insert(message.message.message_id.clone(), message.message);
    }
    assert_eq!(received[&ids[0]].data, b"first");
    assert_eq!(received[&ids[1]].attributes["job"], "backup");
    assert_eq!(stream.dispose().await, 0);
    assert!(pull_now(&subscription, 10).await.is_empty(), "acked messages are gone");
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscription_gets_its_own_copy_of_later_messages_only() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let early = pubsub
        .subscription("early-sub", &topic, SubscriptionConfig::default())
        .await;
    publish(&topic, vec![message("before")]).await;
    let late = pubsub
        .subscription("late-sub", &topic, SubscriptionConfig::default())
        .await;
    publish(&topic, vec![message("after")]).await;

    let early_data: HashSet<Vec<u8>> = pull_now(&early, 10)
        .await
        .into_iter()
        .map(|received| received.message.unwrap().data)
        .collect();
    assert_eq!(early_data, HashSet::from([b"before".to_vec(), b"after".to_vec()]));

    let late_messages = pull_now(&late, 10).await;
    assert_eq!(late_messages.len(), 1, "published-before messages are not delivered");
    assert_eq!(late_messages[0].message.as_ref().unwrap().data, b"after");
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_with_incremented_delivery_attempt() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let dead = pubsub.topic("orders-dead").await;
    let counted = pubsub
        .subscription("counted-sub", &topic, dead_letter_config(&dead, 10))
        .await;
    let plain = pubsub
        .subscription("plain-sub", &topic, SubscriptionConfig::default())
        .await;
    publish(&topic, vec![message("retry me")]).await;

    let mut received = pull_one(&counted).await;
    assert_eq!(received.delivery_attempt(), Some(1));
    for expected_attempt in 2..=4 {
        let nacked_at = Instant::now();
        received.nack().await.unwrap();
        let redelivered = pull_one(&counted).await;
        assert!(
            nacked_at.elapsed() < Duration::from_secs(1),
            "without a retry policy a nack redelivers at once"
        );
        assert_eq!(redelivered.message.message_id, received.message.message_id);
        assert_eq!(redelivered.delivery_attempt(), Some(expected_attempt));
        received = redelivered;
    }
    received.ack().await.unwrap();

    let plain_received = pull_one(&plain).await;
    plain_received.nack().await.unwrap();
    let plain_again = pull_one(&plain).await;
    assert_eq!(
        plain_again.delivery_attempt(),
        None,
        "only set with a dead-letter policy"
    );
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadline_redelivers_the_message() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let dead = pubsub.topic("orders-dead").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, dead_letter_config(&dead, 5))
        .await;
    let ids = publish(&topic, vec![message("slow")]).await;

    let mut stream = subscription.subscribe(Some(streaming_config(10, 10))).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.message.message_id, ids[0]);
    // Shorten the lease instead of waiting out the 10 s stream deadline.
    first.modify_ack_deadline(1).await.unwrap();
    let shortened_at = Instant::now();

    let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    let elapsed = shortened_at.elapsed();
    assert_eq!(second.message.message_id, ids[0]);
    assert_ne!(second.ack_id(), first.ack_id(), "a redelivery has its own ack id");
    assert_eq!(
        second.delivery_attempt(),
        Some(2),
        "an expiry counts as a failed attempt"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "redelivered after {elapsed:?}, before the deadline"
    );
    second.ack().await.unwrap();
    stream.dispose().await;
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_deadline_outlasts_the_subscription_deadline() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let config = SubscriptionConfig {
        ack_deadline_seconds: 10,
        ..SubscriptionConfig::default()
    };
    let subscription = pubsub.subscription("orders-sub", &topic, config).await;
    publish(&topic, vec![message("extended"), message("not extended")]).await;

    let leased = pull_now(&subscription, 10).await;
    assert_eq!(leased.len(), 2);
    let extended = leased
        .iter()
        .find(|received| received.message.as_ref().unwrap().data == b"extended")
        .unwrap();
    let raw_client = subscription.get_client();
    let extend = google_cloud_googleapis::pubsub::v1::ModifyAckDeadlineRequest {
        subscription: subscription.fully_qualified_name().to_string(),
        ack_ids: vec![extended.ack_id.clone()],
        ack_deadline_seconds: 30,
    };
    raw_client.modify_ack_deadline(extend, None).await.unwrap();

    tokio::time::sleep(Duration::from_millis(11_500)).await;
    let redelivered = pull_now(&subscription, 10).await;
    let data: Vec<&[u8]> = redelivered
        .iter()
        .map(|received| received.message.as_ref().unwrap().data.as_slice())
        .collect();
    assert_eq!(
        data,
        vec![b"not extended".as_slice()],
        "only the unextended lease expired"
    );
    let mut ack_ids: Vec<String> = redelivered.into_iter().map(|received| received.ack_id).collect();
    ack_ids.push(extended.ack_id.clone());
    subscription.ack(ack_ids).await.unwrap();
    assert!(pull_now(&subscription, 10).await.is_empty());
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_ack_ids_have_no_effect() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    publish(&topic, vec![message("once")]).await;

    let first = pull_one(&subscription).await;
    first.modify_ack_deadline(1).await.unwrap();
    let second = pull_one(&subscription).await;
    assert_eq!(second.message.message_id, first.message.message_id);

    first.ack().await.unwrap();
    // The stale ack must not have removed the message: a nack through the
    // live ack id brings it back.
    second.nack().await.unwrap();
    let third = pull_one(&subscription).await;
    assert_eq!(third.message.message_id, first.message.message_id);
    third.ack().await.unwrap();
    // And a stale nack does not resurrect an acked message.
    second.nack().await.unwrap();
    assert!(pull_now(&subscription, 10).await.is_empty());
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_dead_lettered_after_max_delivery_attempts() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let dead = pubsub.topic("orders-dead").await;
    let dead_subscription = pubsub
        .subscription("orders-dead-sub", &dead, SubscriptionConfig::default())
        .await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, dead_letter_config(&dead, 5))
        .await;
    let mut poison = message("poison");
    poison.attributes.insert("job".into(), "restore".into());
    publish(&topic, vec![poison]).await;

    let mut publish_time = None;
    for attempt in 1..=5 {
        let received = pull_one(&subscription).await;
        assert_eq!(received.delivery_attempt(), Some(attempt));
        publish_time = received.message.publish_time;
        received.nack().await.unwrap();
    }
    assert!(pull_now(&subscription, 10).await.is_empty(), "no sixth delivery");

    let forwarded = pull_one(&dead_subscription).await;
    let attributes = &forwarded.message.attributes;
    assert_eq!(forwarded.message.data, b"poison");
    assert_eq!(attributes["job"], "restore");
    assert_eq!(attributes["CloudPubSubDeadLetterSourceSubscription"], "orders-sub");
    assert_eq!(attributes["CloudPubSubDeadLetterSourceSubscriptionProject"], PROJECT);
    assert_eq!(attributes["CloudPubSubDeadLetterSourceDeliveryCount"], "5");
    let published = publish_time.unwrap();
    let recorded = chrono::DateTime::parse_from_rfc3339(&attributes["CloudPubSubDeadLetterSourceTopicPublishTime"])
        .expect("RFC 3339 publish time");
    assert_eq!(recorded.timestamp(), published.seconds);
    assert_eq!(recorded.timestamp_subsec_millis(), published.nanos as u32 / 1_000_000);
    assert_eq!(forwarded.delivery_attempt(), None);
    forwarded.ack().await.unwrap();
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_backoff_delays_redelivery() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let config = SubscriptionConfig {
        retry_policy: Some(RetryPolicy {
            minimum_backoff: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            maximum_backoff: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
        }),
        ..SubscriptionConfig::default()
    };
    let subscription = pubsub.subscription("orders-sub", &topic, config).await;
    publish(&topic, vec![message("backoff")]).await;

    let mut received = pull_one(&subscription).await;
    for expected_backoff in [Duration::from_secs(1), Duration::from_secs(2)] {
        let nacked_at = Instant::now();
        received.nack().await.unwrap();
        assert!(
            pull_now(&subscription, 1).await.is_empty(),
            "held back during the backoff"
        );
        received = pull_one(&subscription).await;
        let waited = nacked_at.elapsed();
        assert!(
            waited >= expected_backoff,
            "redelivered after {waited:?}, backoff {expected_backoff:?}"
        );
        assert!(
            waited < expected_backoff + Duration::from_secs(1),
            "redelivered late, after {waited:?}"
        );
    }
    received.ack().await.unwrap();
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_never_hold_the_same_message_at_once() {
    const COUNT: usize = 300;
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let second_client = connect(&pubsub.emulator).await;
    let second_subscription = second_client.subscription("orders-sub");

    let held = Arc::new(Mutex::new(HashSet::<String>::new()));
    let deliveries = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let overlaps = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut consumers = Vec::new();
    for (consumer, subscription) in [subscription.clone(), second_subscription].into_iter().enumerate() {
        let (held, deliveries, overlaps) = (held.clone(), deliveries.clone(), overlaps.clone());
        let mut stream = subscription.subscribe(Some(streaming_config(60, 5))).await.unwrap();
        consumers.push(tokio::spawn(async move {
            while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                let id = message.message.message_id.clone();
                if !held.lock().unwrap().insert(id.clone()) {
                    overlaps.lock().unwrap().push(id.clone());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                held.lock().unwrap().remove(&id);
                deliveries.lock().unwrap().push((consumer, id));
                message.ack().await.unwrap();
            }
            stream.dispose().await;
        }));
    }
    // Let both streams open before anything is published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = publish(&topic, (0..COUNT).map(|index| message(&index.to_string())).collect()).await;
    for consumer in consumers {
        consumer.await.unwrap();
    }

    assert!(
        overlaps.lock().unwrap().is_empty(),
        "held twice: {:?}",
        overlaps.lock().unwrap()
    );
    let deliveries = std::mem::take(&mut *deliveries.lock().unwrap());
    assert_eq!(deliveries.len(), COUNT, "every message delivered exactly once");
    let delivered: HashSet<&String> = deliveries.iter().map(|(_, id)| id).collect();
    assert_eq!(delivered, ids.iter().collect::<HashSet<_>>());
    for consumer in 0..2 {
        assert!(
            deliveries.iter().any(|(by, _)| *by == consumer),
            "consumer {consumer} got nothing; flow control should spread the load"
        );
    }
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_are_neither_lost_nor_duplicated() {
    const COUNT: usize = 10_000;
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let started = Instant::now();
    let ids = publish(
        &topic,
        (0..COUNT).map(|index| message(&format!("message {index}"))).collect(),
    )
    .await;
    let published_in = started.elapsed();

    let mut stream = subscription.subscribe(Some(streaming_config(60, 1000))).await.unwrap();
    let mut seen = HashMap::<String, usize>::new();
    let mut acks = tokio::task::JoinSet::new();
    while seen.len() < COUNT {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("messages keep flowing")
            .expect("stream open");
        *seen.entry(message.message.message_id.clone()).or_default() += 1;
        acks.spawn(async move { message.ack().await });
        while let Some(ack) = acks.try_join_next() {
            ack.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.join_next().await {
        ack.unwrap().unwrap();
    }
    // Nothing more may arrive once every message has been acked once.
    let extra = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(extra.is_err(), "an acked message came back");
    let received_in = started.elapsed() - published_in;

    assert!(seen.values().all(|count| *count == 1), "duplicates delivered");
    assert_eq!(seen.keys().collect::<HashSet<_>>(), ids.iter().collect::<HashSet<_>>());
    stream.dispose().await;
    assert!(pull_now(&subscription, 10).await.is_empty());
    eprintln!("10 000 messages: published in {published_in:?}, received and acked in {received_in:?}");
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_beyond_the_memory_cap_is_resource_exhausted() {
    let pubsub = spawn_pubsub_with(EmulatorConfig {
        max_retained_bytes: 64 * 1024,
        ..EmulatorConfig::default()
    })
    .await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let big = || PubsubMessage {
        data: vec![7; 40 * 1024],
        ..PubsubMessage::default()
    };
    let publisher = topic.new_publisher(Some(PublisherConfig {
        retry_setting: Some(no_retries()),
        ..PublisherConfig::default()
    }));
    publisher
        .publish(big())
        .await
        .get()
        .await
        .expect("first fits under the cap");
    let refused = publisher
        .publish(big())
        .await
        .get()
        .await
        .expect_err("second exceeds the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    let received = pull_one(&subscription).await;
    received.ack().await.unwrap();
    publisher
        .publish(big())
        .await
        .get()
        .await
        .expect("fits again once acked");
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_documented_status_codes() {
    let pubsub = spawn_pubsub().await;
    let client = &pubsub.client;
    let topic = pubsub.topic("orders").await;
    pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let no_retry = Some(no_retries());

    assert!(
        !client.topic("missing").exists(no_retry.clone()).await.unwrap(),
        "GetTopic answers NOT_FOUND"
    );
    let missing_topic = client.topic("missing");
    let missing_publisher = missing_topic.new_publisher(Some(PublisherConfig {
        retry_setting: no_retry.clone(),
        ..PublisherConfig::default()
    }));
    let refused = missing_publisher.publish(message("lost")).await.get().await;
    assert_eq!(code(refused), Code::NotFound, "publish to an unknown topic");
    let on_missing_topic = client
        .create_subscription("other-sub", "missing", SubscriptionConfig::default(), no_retry.clone())
        .await;
    assert_eq!(
        code(on_missing_topic),
        Code::NotFound,
        "subscription on an unknown topic"
    );
    let duplicate = client
        .create_subscription("orders-sub", "orders", SubscriptionConfig::default(), no_retry.clone())
        .await;
    assert_eq!(code(duplicate), Code::AlreadyExists, "duplicate subscription");
    assert_eq!(
        code(client.create_topic("orders", None, no_retry.clone()).await),
        Code::AlreadyExists
    );

    let short_deadline = SubscriptionConfig {
        ack_deadline_seconds: 5,
        ..SubscriptionConfig::default()
    };
    let refused = client
        .create_subscription("short-sub", "orders", short_deadline, no_retry.clone())
        .await;
    let Err(status) = refused else {
        panic!("a 5 s ack deadline was accepted")
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("ack deadline"), "{status:?}");
    let too_few_attempts = dead_letter_config(&topic, 3);
    let refused = client
        .create_subscription("dlq-sub", "orders", too_few_attempts, no_retry.clone())
        .await;
    assert_eq!(code(refused), Code::InvalidArgument, "max_delivery_attempts below 5");
    assert_eq!(
        code(client.create_topic("ab", None, no_retry.clone()).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.create_topic("goog-topic", None, no_retry.clone()).await),
        Code::InvalidArgument
    );

    let update = UpdateSubscriptionRequest::default();
    let unsupported = client
        .subscription("orders-sub")
        .get_client()
        .update_subscription(update, no_retry.clone())
        .await;
    assert_eq!(code(unsupported), Code::Unimplemented);
    pubsub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_detaches_its_subscriptions() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    assert_eq!(topic.subscriptions(None).await.unwrap().len(), 1);
    topic.delete(None).await.unwrap();

    assert!(!topic.exists(None).await.unwrap());
    let (topic_name, _) = subscription.config(None).await.unwrap();
    assert_eq!(topic_name, "_deleted-topic_");
    let names: Vec<String> = pubsub
        .client
        .get_subscriptions(None)
        .await
        .unwrap()
        .iter()
        .map(|subscription| subscription.id())
        .collect();
    assert_eq!(names, vec!["orders-sub".to_string()]);
    subscription.delete(None).await.unwrap();
    assert!(!subscription.exists(None).await.unwrap());
    pubsub.shutdown().await;
}

/// The gcloud client acks through unary calls only, so this drives the stream
/// half it never uses (acks and deadline changes sent on the stream, flow
/// control, request validation) with the generated gRPC client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_pull_applies_acks_and_deadlines_sent_on_the_stream() {
    use google_cloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient as GeneratedSubscriberClient;
    use google_cloud_googleapis::pubsub::v1::StreamingPullRequest;

    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let ids = publish(&topic, vec![message("one"), message("two")]).await;

    let mut generated = GeneratedSubscriberClient::connect(format!("http://{}", pubsub.emulator.host()))
        .await
        .unwrap();
    let (requests, request_receiver) = tokio::sync::mpsc::channel(8);
    requests
        .send(StreamingPullRequest {
            subscription: subscription.fully_qualified_name().to_string(),
            stream_ack_deadline_seconds: 10,
            max_outstanding_messages: 1,
            ..StreamingPullRequest::default()
        })
        .await
        .unwrap();
    let mut responses = generated
        .streaming_pull(tokio_stream::wrappers::ReceiverStream::new(request_receiver))
        .await
        .unwrap()
        .into_inner();

    let first = next_response(&mut responses).await.unwrap().unwrap().received_messages;
    assert_eq!(first.len(), 1, "max_outstanding_messages = 1");
    let quiet = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(quiet.is_err(), "nothing more while one message is outstanding");

    requests
        .send(StreamingPullRequest {
            ack_ids: vec![first[0].ack_id.clone()],
            ..StreamingPullRequest::default()
        })
        .await
        .unwrap();
    let second = next_response(&mut responses).await.unwrap().unwrap().received_messages;
    assert_eq!(second.len(), 1, "the ack freed the window");
    let second_id = second[0].message.as_ref().unwrap().message_id.clone();
    assert_ne!(second_id, first[0].message.as_ref().unwrap().message_id);
    assert!(ids.contains(&second_id));

    requests
        .send(StreamingPullRequest {
            modify_deadline_seconds: vec![1],
            modify_deadline_ack_ids: vec![second[0].ack_id.clone()],
            ..StreamingPullRequest::default()
        })
        .await
        .unwrap();
    let shortened_at = Instant::now();
    let redelivered = next_response(&mut responses).await.unwrap().unwrap().received_messages;
    assert_eq!(redelivered[0].message.as_ref().unwrap().message_id, second_id);
    assert!(shortened_at.elapsed() >= Duration::from_millis(900));

    requests
        .send(StreamingPullRequest {
            ack_ids: vec![redelivered[0].ack_id.clone()],
            subscription: subscription.fully_qualified_name().to_string(),
            ..StreamingPullRequest::default()
        })
        .await
        .unwrap();
    let refused = next_response(&mut responses).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::InvalidArgument,
        "subscription set on a later request"
    );
    pubsub.shutdown().await;
}

/// The next StreamingPull response, failing the test after 5 s of silence.
async fn next_response(
    responses: &mut tonic::Streaming<google_cloud_googleapis::pubsub::v1::StreamingPullResponse>,
) -> Result<Option<google_cloud_googleapis::pubsub::v1::StreamingPullResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("a response within 5 s")
}

/// The status code of a call expected to fail.
fn code<T>(result: Result<T, google_cloud_gax::grpc::Status>) -> Code {
    match result {
        Ok(_) => panic!("the call succeeded"),
        Err(status) => status.code(),
    }
}

/// A bare HTTP/2 gRPC client. tonic's client keeps its own timer for a
/// call's `grpc-timeout` and decides for itself when a dropped call is reset;
/// this one has no timer and resets exactly when told, so what the emulator
/// does on its side can be seen.
struct BareGrpc {
    send: h2::client::SendRequest<bytes::Bytes>,
    host: String,
}

/// One call started with [`BareGrpc::start`]: its answer, and its request
/// stream (to reset it).
struct BareCall {
    answer: h2::client::ResponseFuture,
    request: h2::SendStream<bytes::Bytes>,
}

impl BareGrpc {
    async fn connect(host: &str) -> BareGrpc {
        let tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
        let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        BareGrpc {
            send,
            host: host.to_owned(),
        }
    }

    /// Sends one unary Subscriber call, with `grpc-timeout` when given.
    async fn start(&mut self, method: &str, message: &impl prost::Message, grpc_timeout: Option<&str>) -> BareCall {
        let mut request =
            tonic::codegen::http::Request::post(format!("http://{}/google.pubsub.v1.Subscriber/{method}", self.host))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let mut send = self.send.clone().ready().await.expect("connection ready");
        let (answer, mut request) = send
            .send_request(request.body(()).unwrap(), false)
            .expect("send the headers");
        let payload = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend(payload);
        request.send_data(frame.into(), true).expect("send the message");
        BareCall { answer, request }
    }
}

/// The grpc-status of an answered call and its message, if any.
async fn finish<Message: prost::Message + Default>(answer: h2::client::ResponseFuture) -> (Code, Option<Message>) {
    let response = answer.await.expect("an answer");
    let status_of = |headers: &tonic::codegen::http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|value| Code::from_i32(value.to_str().unwrap().parse().unwrap()))
    };
    if let Some(code) = status_of(response.headers()) {
        return (code, None); // trailers-only: no message
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        body.flow_control().release_capacity(chunk.len()).unwrap();
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers").expect("trailers present");
    let message = (bytes.len() >= 5).then(|| Message::decode(&bytes[5..]).expect("a message"));
    (status_of(&trailers).expect("grpc-status"), message)
}

/// A Pull still waiting for messages ends at its gRPC deadline, on the
/// server's side (the bare client keeps no timer of its own), with
/// DEADLINE_EXCEEDED as the service answers, and leases nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_pull_ends_at_its_grpc_deadline_with_deadline_exceeded() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let mut bare = BareGrpc::connect(&pubsub.emulator.host()).await;
    #[allow(deprecated)]
    let waiting_pull = PullRequest {
        subscription: subscription.fully_qualified_name().to_string(),
        return_immediately: false,
        max_messages: 10,
    };

    let started = Instant::now();
    let call = bare.start("Pull", &waiting_pull, Some("300m")).await;
    let (code, answer) = finish::<google_cloud_googleapis::pubsub::v1::PullResponse>(call.answer).await;
    assert_eq!(code, Code::DeadlineExceeded, "{answer:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    // The call is over: a message published now is there for the next Pull.
    let ids = publish(&topic, vec![message("after the deadline")]).await;
    let leased = pull_now(&subscription, 10).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].message.as_ref().unwrap().message_id, ids[0]);

    // A message arriving within the deadline is answered at once, as ever.
    subscription.ack(vec![leased[0].ack_id.clone()]).await.unwrap();
    let call = bare.start("Pull", &waiting_pull, Some("20S")).await;
    let ids = publish(&topic, vec![message("within the deadline")]).await;
    let (code, answer) = finish::<google_cloud_googleapis::pubsub::v1::PullResponse>(call.answer).await;
    assert_eq!(code, Code::Ok);
    let received = answer.expect("a PullResponse").received_messages;
    assert_eq!(received[0].message.as_ref().unwrap().message_id, ids[0]);
    pubsub.shutdown().await;
}

/// A client that gives up on a waiting Pull resets it (RST_STREAM); the
/// service does not serve a cancelled call. Here the reset and a
/// ModifyAckDeadline handing a message back (deadline 0) go out together on
/// one connection, reset first, as when a listing abandons its Pull and then
/// hands back what it leased: the reset Pull must not take the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_whose_client_went_away_leases_nothing() {
    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let mut bare = BareGrpc::connect(&pubsub.emulator.host()).await;
    for round in 0..5 {
        let ids = publish(&topic, vec![message(&format!("handed back {round}"))]).await;
        let leased = pull_now(&subscription, 10).await;
        assert_eq!(leased.len(), 1, "round {round}");

        #[allow(deprecated)]
        let waiting_pull = PullRequest {
            subscription: subscription.fully_qualified_name().to_string(),
            return_immediately: false,
            max_messages: 10,
        };
        let mut call = bare.start("Pull", &waiting_pull, None).await;
        // Let the Pull reach the server and wait there (nothing is deliverable).
        tokio::time::sleep(Duration::from_millis(200)).await;
        call.request.send_reset(h2::Reason::CANCEL);
        let hand_back = google_cloud_googleapis::pubsub::v1::ModifyAckDeadlineRequest {
            subscription: subscription.fully_qualified_name().to_string(),
            ack_ids: vec![leased[0].ack_id.clone()],
            ack_deadline_seconds: 0,
        };
        let handed_back = bare.start("ModifyAckDeadline", &hand_back, None).await;
        let (code, _) = finish::<()>(handed_back.answer).await;
        assert_eq!(code, Code::Ok, "round {round}");

        let again = pull_now(&subscription, 10).await;
        assert_eq!(
            again
                .iter()
                .map(|received| received.message.as_ref().unwrap().message_id.clone())
                .collect::<Vec<_>>(),
            ids,
            "round {round}: the reset Pull took the message handed back after it"
        );
        subscription.ack(vec![again[0].ack_id.clone()]).await.unwrap();
    }
    pubsub.shutdown().await;
}

/// Why a message nacked at shutdown can be held for the stream's deadline:
/// a StreamingPull the client keeps open is a live subscriber, and the
/// message nacked goes to it again. Once the client closes its side of the
/// stream (END_STREAM), the stream is over on the server, and a message
/// nacked then is there for the next Pull at once. (gcloud-pubsub 1.8's
/// `MessageStream::dispose` only stops reading: its request side keeps
/// pinging, so the stream stays open until the process exits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_after_the_client_closed_its_stream_is_pullable_at_once() {
    use google_cloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient as GeneratedSubscriberClient;
    use google_cloud_googleapis::pubsub::v1::{ModifyAckDeadlineRequest, StreamingPullRequest};

    let pubsub = spawn_pubsub().await;
    let topic = pubsub.topic("orders").await;
    let subscription = pubsub
        .subscription("orders-sub", &topic, SubscriptionConfig::default())
        .await;
    let ids = publish(&topic, vec![message("interrupted")]).await;
    let mut generated = GeneratedSubscriberClient::connect(format!("http://{}", pubsub.emulator.host()))
        .await
        .unwrap();
    let (requests, request_receiver) = tokio::sync::mpsc::channel(8);
    requests
        .send(StreamingPullRequest {
            subscription: subscription.fully_qualified_name().to_string(),
            stream_ack_deadline_seconds: 60,
            max_outstanding_messages: 10,
            ..StreamingPullRequest::default()
        })
        .await
        .unwrap();
    let mut responses = generated
        .streaming_pull(tokio_stream::wrappers::ReceiverStream::new(request_receiver))
        .await
        .unwrap()
        .into_inner();
    let nack = |ack_id: &str| ModifyAckDeadlineRequest {
        subscription: subscription.fully_qualified_name().to_string(),
        ack_ids: vec![ack_id.to_owned()],
        ack_deadline_seconds: 0,
    };

    let first = next_response(&mut responses).await.unwrap().unwrap().received_messages;
    assert_eq!(first[0].message.as_ref().unwrap().message_id, ids[0]);
    // Nacked while the stream is open: it goes to the open stream again.
    generated.modify_ack_deadline(nack(&first[0].ack_id)).await.unwrap();
    let again = next_response(&mut responses).await.unwrap().unwrap().received_messages;
    assert_eq!(again[0].message.as_ref().unwrap().message_id, ids[0]);
    assert!(
        pull_now(&subscription, 10).await.is_empty(),
        "leased to the open stream"
    );

    // The client closes its side; the server ends the stream.
    drop(requests);
    assert!(
        next_response(&mut responses).await.unwrap().is_none(),
        "the stream ends"
    );
    generated.modify_ack_deadline(nack(&again[0].ack_id)).await.unwrap();
    let pulled = pull_now(&subscription, 10).await;
    assert_eq!(pulled.len(), 1, "a nack after the stream closed is pullable at once");
    assert_eq!(pulled[0].message.as_ref().unwrap().message_id, ids[0]);
    pubsub.shutdown().await;
}
