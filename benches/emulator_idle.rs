//! Measures the CPU an idle Pub/Sub emulator uses while a StreamingPull is
//! open (target: ~0%, i.e. no busy polling). A benchmark rather than a test
//! because parallel tests share the process's CPU counters.
//! Run with `scripts/bench emulator_idle`.

use std::time::Duration;

use futures::StreamExt;
use google_cloud_gax::conn::Environment;
use google_cloud_googleapis::pubsub::v1::PubsubMessage;
use google_cloud_pubsub::client::{Client, ClientConfig};
use google_cloud_pubsub::subscriber::SubscriberConfig;
use google_cloud_pubsub::subscription::{SubscribeConfig, SubscriptionConfig};
use keshless_ops::emulator::{EmulatorConfig, RunningEmulator};

/// User + system CPU time of this process, from `/proc/self/stat`.
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // utime and stime are fields 14 and 15, in clock ticks (100 per second).
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let emulator = RunningEmulator::start("127.0.0.1:0".parse().expect("address"), EmulatorConfig::default())
            .await
            .expect("start emulator");
        let client = Client::new(ClientConfig {
            project_id: Some("bench".into()),
            environment: Environment::Emulator(emulator.host()),
            ..ClientConfig::default()
        })
        .await
        .expect("client");
        let topic = client.create_topic("idle", None, None).await.expect("topic");
        let subscription = client
            .create_subscription("idle-sub", &topic.id(), SubscriptionConfig::default(), None)
            .await
            .expect("subscription");
        let mut stream = subscription
            .subscribe(Some(SubscribeConfig::default().with_subscriber_config(
                SubscriberConfig {
                    stream_ack_deadline_seconds: 60,
                    ..SubscriberConfig::default()
                },
            )))
            .await
            .expect("stream");
        let mut publisher = topic.new_publisher(None);
        publisher
            .publish(PubsubMessage {
                data: b"warm up".to_vec(),
                ..PubsubMessage::default()
            })
            .await
            .get()
            .await
            .expect("publish");
        let warm_up = stream.next().await.expect("warm-up message");
        warm_up.ack().await.expect("ack");
        tokio::time::sleep(Duration::from_millis(500)).await;

        let idle = Duration::from_secs(10);
        let before = process_cpu_time();
        let received = tokio::time::timeout(idle, stream.next()).await;
        let used = process_cpu_time() - before;
        assert!(received.is_err(), "nothing was published while idle");
        println!(
            "emulator_idle: {:?} CPU in {:?} idle with an open StreamingPull ({:.2}% of one core; \
             includes the client's own keep-alive)",
            used,
            idle,
            used.as_secs_f64() / idle.as_secs_f64() * 100.0
        );
        publisher.shutdown().await;
        stream.dispose().await;
        emulator.shutdown().await;
    });
}
