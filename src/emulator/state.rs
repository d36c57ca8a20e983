//! The emulator's in-memory state: topics, subscriptions and, per
//! subscription, its copy of every unacked message with its lease. One mutex
//! guards everything because publishing and dead lettering touch several
//! subscriptions at once; it is never held across an `.await`.
//!
//! Waiting is event driven: each subscription has a `Notify` woken when a
//! message becomes deliverable or a lease ends (which frees flow-control
//! room), and a timer task that sleeps until the subscription's next lease
//! deadline or backoff end. Nothing polls.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use google_cloud_googleapis::pubsub::v1::{PubsubMessage, ReceivedMessage, Subscription, Topic};
use prost::Message as _;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::names::{parse_resource_name, ResourceKind, ResourceName, DELETED_TOPIC};
use super::policy::{self, AfterFailure, Backoff};

/// Errors of the emulator's operations, each mapping to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("Resource not found ({kind}={name})")]
    NotFound { kind: &'static str, name: String },
    #[error("Resource already exists in the project ({kind}={name})")]
    AlreadyExists { kind: &'static str, name: String },
    #[error(
        "publishing {requested} bytes would exceed the emulator's memory cap of {cap} bytes \
         ({retained} bytes of unacked messages retained); ack messages or raise max_retained_bytes"
    )]
    ResourceExhausted {
        requested: usize,
        retained: usize,
        cap: usize,
    },
    #[error("{0} is not supported by the keshless-ops Pub/Sub emulator")]
    Unimplemented(String),
    #[error("the Pub/Sub emulator is shutting down")]
    ShuttingDown,
}

impl From<EmulatorError> for tonic::Status {
    fn from(error: EmulatorError) -> Self {
        let message = error.to_string();
        match error {
            EmulatorError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            EmulatorError::NotFound { .. } => tonic::Status::not_found(message),
            EmulatorError::AlreadyExists { .. } => tonic::Status::already_exists(message),
            EmulatorError::ResourceExhausted { .. } => tonic::Status::resource_exhausted(message),
            EmulatorError::Unimplemented(_) => tonic::Status::unimplemented(message),
            EmulatorError::ShuttingDown => tonic::Status::unavailable(message),
        }
    }
}

/// Most messages one Pull or one StreamingPull response carries.
pub const MAX_MESSAGES_PER_RESPONSE: usize = 1000;
/// Most messages one Publish request may carry, as with the real service.
const MAX_MESSAGES_PER_PUBLISH: usize = 1000;
/// Most bytes one response carries, below the 10 MB gRPC message limit.
const MAX_BYTES_PER_RESPONSE: usize = 8 * 1024 * 1024;
/// Largest page a List method returns.
const MAX_PAGE_SIZE: usize = 1000;
/// A lease length in whole seconds, as the API expresses it.
pub type DeadlineSeconds = i32;

/// A published message shared by every subscription's copy. Its size counts
/// against the memory cap until the last copy is acked or dropped.
#[derive(Debug)]
struct RetainedMessage {
    message: PubsubMessage,
    size: usize,
    retained_bytes: Arc<AtomicUsize>,
}

impl Drop for RetainedMessage {
    fn drop(&mut self) {
        self.retained_bytes.fetch_sub(self.size, Ordering::AcqRel);
    }
}

/// Where one subscription's copy of a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryState {
    /// Waiting in the ready queue for the next pull.
    Ready,
    /// Waiting for the retry-policy backoff to pass.
    Backoff { until: Instant },
    /// Held by a subscriber until acked, nacked or the deadline passes.
    Leased {
        lease_id: u64,
        deadline: Instant,
        stream_id: Option<u64>,
    },
}

#[derive(Debug)]
struct QueuedMessage {
    retained: Arc<RetainedMessage>,
    /// Deliveries made so far, i.e. 1 + nacks + expiries once delivered.
    deliveries: u32,
    state: DeliveryState,
}

/// Flow-control window of one StreamingPull stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowControl {
    /// 0 or less: unlimited.
    pub max_outstanding_messages: i64,
    /// 0 or less: unlimited.
    pub max_outstanding_bytes: i64,
}

#[derive(Debug, Default)]
struct StreamWindow {
    flow_control: FlowControl,
    outstanding_messages: i64,
    outstanding_bytes: i64,
}

impl StreamWindow {
    fn admits(&self, size: usize) -> bool {
        let messages_ok = self.flow_control.max_outstanding_messages <= 0
            || self.outstanding_messages < self.flow_control.max_outstanding_messages;
        // A message larger than the whole byte window still goes out when
        // nothing is outstanding, otherwise the stream would stall forever.
        let bytes_ok = self.flow_control.max_outstanding_bytes <= 0
            || self.outstanding_bytes == 0
            || self.outstanding_bytes + size as i64 <= self.flow_control.max_outstanding_bytes;
        messages_ok && bytes_ok
    }
}

/// Wake-ups shared between a subscription and the tasks waiting on it.
#[derive(Debug, Default)]
pub struct SubscriptionSignals {
    /// A message became deliverable, a lease ended or the subscription closed.
    pub available: Notify,
    /// The earliest timer moved earlier; wakes the subscription's timer task.
    timers_changed: Notify,
    /// Set when the subscription is deleted or the emulator shuts down.
    closed: AtomicBool,
}

impl SubscriptionSignals {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.available.notify_waiters();
        self.timers_changed.notify_one();
    }
}

#[derive(Debug)]
struct SubscriptionEntry {
    config: Subscription,
    name: ResourceName,
    dead_letter_attempts: Option<i32>,
    backoff: Option<Backoff>,
    messages: HashMap<u64, QueuedMessage>,
    ready: VecDeque<u64>,
    /// Lease deadlines and backoff ends, keyed by (instant, message key).
    timers: BTreeSet<(Instant, u64)>,
    /// Live leases: lease id (the ack id) to message key.
    leases: HashMap<u64, u64>,
    streams: HashMap<u64, StreamWindow>,
    signals: Arc<SubscriptionSignals>,
    timer_task: Option<AbortHandle>,
}

impl SubscriptionEntry {
    fn add_timer(&mut self, at: Instant, key: u64) {
        let moves_earlier = self.timers.first().is_none_or(|(first, _)| at < *first);
        self.timers.insert((at, key));
        if moves_earlier {
            self.signals.timers_changed.notify_one();
        }
    }

    fn enqueue_ready(&mut self, key: u64) {
        self.ready.push_back(key);
        self.signals.available.notify_waiters();
    }

    /// Ends a live lease; returns the message key if the lease was live.
    fn end_lease(&mut self, lease_id: u64) -> Option<u64> {
        let key = self.leases.remove(&lease_id)?;
        let message = self.messages.get(&key)?;
        if let DeliveryState::Leased {
            deadline, stream_id, ..
        } = message.state
        {
            self.timers.remove(&(deadline, key));
            if let Some(window) = stream_id.and_then(|stream_id| self.streams.get_mut(&stream_id)) {
                window.outstanding_messages -= 1;
                window.outstanding_bytes -= message.retained.size as i64;
            }
        }
        // Flow-control room opened up, or a waiting puller may now get it.
        self.signals.available.notify_waiters();
        Some(key)
    }
}

#[derive(Debug)]
struct TopicEntry {
    topic: Topic,
    subscriptions: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Inner {
    topics: BTreeMap<String, TopicEntry>,
    subscriptions: BTreeMap<String, SubscriptionEntry>,
    next_message_id: u64,
    next_key: u64,
    shutting_down: bool,
}

/// A message forwarded to a dead-letter topic, published after the source
/// subscription's borrow ends.
struct DeadLetter {
    topic: String,
    message: PubsubMessage,
}

/// The whole emulator state, shared by the gRPC services.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    retained_bytes: Arc<AtomicUsize>,
    max_retained_bytes: usize,
    /// Where publish times come from (the simulation's clock in `tests/year.rs`).
    clock: crate::clock::Clock,
    this: Weak<Registry>,
}

impl Registry {
    pub fn new(max_retained_bytes: usize, clock: crate::clock::Clock) -> Arc<Self> {
        Arc::new_cyclic(|this| Registry {
            inner: Mutex::new(Inner::default()),
            retained_bytes: Arc::new(AtomicUsize::new(0)),
            max_retained_bytes,
            clock,
            this: this.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes of message payload currently retained for unacked copies.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes.load(Ordering::Acquire)
    }

    /// Ends every stream and pull and stops the timer tasks, so that a
    /// graceful server shutdown is not held open by StreamingPull calls.
    pub fn shut_down(&self) {
        let mut inner = self.lock();
        inner.shutting_down = true;
        for entry in inner.subscriptions.values_mut() {
            entry.signals.close();
            if let Some(task) = entry.timer_task.take() {
                task.abort();
            }
        }
    }

    fn check_running(inner: &Inner) -> Result<(), EmulatorError> {
        if inner.shutting_down {
            Err(EmulatorError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    // ----- topics -------------------------------------------------------

    /// Creates a topic; ALREADY_EXISTS if the name is taken.
    pub fn create_topic(&self, topic: Topic) -> Result<Topic, EmulatorError> {
        parse_resource_name(ResourceKind::Topic, &topic.name)?;
        let mut inner = self.lock();
        Self::check_running(&inner)?;
        if inner.topics.contains_key(&topic.name) {
            return Err(already_exists(ResourceKind::Topic, &topic.name));
        }
        inner.topics.insert(
            topic.name.clone(),
            TopicEntry {
                topic: topic.clone(),
                subscriptions: BTreeSet::new(),
            },
        );
        Ok(topic)
    }

    /// Returns a topic's configuration.
    pub fn get_topic(&self, name: &str) -> Result<Topic, EmulatorError> {
        parse_resource_name(ResourceKind::Topic, name)?;
        let inner = self.lock();
        inner
            .topics
            .get(name)
            .map(|entry| entry.topic.clone())
            .ok_or_else(|| not_found(ResourceKind::Topic, name))
    }

    /// Lists a project's topics in name order, one page at a time.
    pub fn list_topics(&self, project: &str, page: Page) -> Result<(Vec<Topic>, String), EmulatorError> {
        let inner = self.lock();
        let prefix = format!("projects/{project}/topics/");
        Ok(page.collect(&inner.topics, &prefix, |_, entry| entry.topic.clone()))
    }

    /// Lists the names of a topic's subscriptions.
    pub fn list_topic_subscriptions(&self, topic: &str, page: Page) -> Result<(Vec<String>, String), EmulatorError> {
        parse_resource_name(ResourceKind::Topic, topic)?;
        let inner = self.lock();
        let entry = inner
            .topics
            .get(topic)
            .ok_or_else(|| not_found(ResourceKind::Topic, topic))?;
        let names: BTreeMap<String, ()> = entry.subscriptions.iter().map(|name| (name.clone(), ())).collect();
        Ok(page.collect(&names, "", |name, ()| name.clone()))
    }

    /// Deletes a topic; its subscriptions stay, detached, with their
    /// `topic` set to `_deleted-topic_` as Pub/Sub does.
    pub fn delete_topic(&self, name: &str) -> Result<(), EmulatorError> {
        parse_resource_name(ResourceKind::Topic, name)?;
        let mut inner = self.lock();
        let entry = inner
            .topics
            .remove(name)
            .ok_or_else(|| not_found(ResourceKind::Topic, name))?;
        for subscription in entry.subscriptions {
            if let Some(subscription) = inner.subscriptions.get_mut(&subscription) {
                subscription.config.topic = DELETED_TOPIC.to_string();
            }
        }
        Ok(())
    }

    /// Publishes messages to every subscription of the topic; returns the
    /// server-assigned message ids in request order.
    pub fn publish(&self, topic: &str, messages: Vec<PubsubMessage>) -> Result<Vec<String>, EmulatorError> {
        parse_resource_name(ResourceKind::Topic, topic)?;
        if messages.is_empty() {
            return Err(EmulatorError::InvalidArgument(
                "the publish request contains no messages".to_string(),
            ));
        }
        if messages.len() > MAX_MESSAGES_PER_PUBLISH {
            return Err(EmulatorError::InvalidArgument(format!(
                "a publish request may carry at most {MAX_MESSAGES_PER_PUBLISH} messages, got {}",
                messages.len()
            )));
        }
        if let Some(index) = messages
            .iter()
            .position(|message| message.data.is_empty() && message.attributes.is_empty())
        {
            return Err(EmulatorError::InvalidArgument(format!(
                "message {index} has neither data nor attributes"
            )));
        }
        let mut inner = self.lock();
        Self::check_running(&inner)?;
        if !inner.topics.contains_key(topic) {
            return Err(not_found(ResourceKind::Topic, topic));
        }
        let has_subscriptions = inner
            .topics
            .get(topic)
            .is_some_and(|entry| !entry.subscriptions.is_empty());
        if has_subscriptions {
            // Checked under the lock so concurrent publishes cannot both
            // squeeze under the cap; acks only ever lower the figure.
            let requested: usize = messages.iter().map(|message| message.encoded_len()).sum();
            let retained = self.retained_bytes();
            if retained.saturating_add(requested) > self.max_retained_bytes {
                return Err(EmulatorError::ResourceExhausted {
                    requested,
                    retained,
                    cap: self.max_retained_bytes,
                });
            }
        }
        Ok(self.publish_locked(&mut inner, topic, messages))
    }

    /// Stores messages for each subscription of an existing topic. Dead
    /// letters also come through here, skipping the memory cap because their
    /// source copy is released at the same moment.
    fn publish_locked(&self, inner: &mut Inner, topic: &str, messages: Vec<PubsubMessage>) -> Vec<String> {
        let Some(subscriptions) = inner.topics.get(topic).map(|entry| entry.subscriptions.clone()) else {
            return Vec::new();
        };
        let publish_time = prost_types::Timestamp::from(SystemTime::from(self.clock.now()));
        let mut message_ids = Vec::with_capacity(messages.len());
        for mut message in messages {
            inner.next_message_id += 1;
            message.message_id = inner.next_message_id.to_string();
            message.publish_time = Some(publish_time);
            message_ids.push(message.message_id.clone());
            if subscriptions.is_empty() {
                // A topic without subscriptions drops what is published to it.
                continue;
            }
            let size = message.encoded_len();
            self.retained_bytes.fetch_add(size, Ordering::AcqRel);
            let retained = Arc::new(RetainedMessage {
                message,
                size,
                retained_bytes: self.retained_bytes.clone(),
            });
            for subscription in &subscriptions {
                inner.next_key += 1;
                let key = inner.next_key;
                if let Some(entry) = inner.subscriptions.get_mut(subscription) {
                    entry.messages.insert(
                        key,
                        QueuedMessage {
                            retained: retained.clone(),
                            deliveries: 0,
                            state: DeliveryState::Ready,
                        },
                    );
                    entry.enqueue_ready(key);
                }
            }
        }
        message_ids
    }

    // ----- subscriptions ------------------------------------------------

    /// Creates a subscription after validating its name, topic, deadline and
    /// policies; only messages published from now on reach it.
    pub fn create_subscription(&self, mut subscription: Subscription) -> Result<Subscription, EmulatorError> {
        let name = parse_resource_name(ResourceKind::Subscription, &subscription.name)?;
        parse_resource_name(ResourceKind::Topic, &subscription.topic)?;
        subscription.ack_deadline_seconds = policy::subscription_ack_deadline(subscription.ack_deadline_seconds)?;
        subscription.dead_letter_policy = policy::effective_dead_letter_policy(subscription.dead_letter_policy.take())?;
        let backoff = policy::effective_retry_policy(subscription.retry_policy.as_ref())?;
        if let Some(backoff) = backoff {
            subscription.retry_policy = Some(google_cloud_googleapis::pubsub::v1::RetryPolicy {
                minimum_backoff: prost_types::Duration::try_from(backoff.minimum).ok(),
                maximum_backoff: prost_types::Duration::try_from(backoff.maximum).ok(),
            });
        }
        reject_unsupported(&subscription)?;
        if subscription.message_retention_duration.is_none() {
            subscription.message_retention_duration = Some(prost_types::Duration {
                seconds: 7 * 24 * 60 * 60,
                nanos: 0,
            });
        }

        let mut inner = self.lock();
        Self::check_running(&inner)?;
        if !inner.topics.contains_key(&subscription.topic) {
            return Err(not_found(ResourceKind::Topic, &subscription.topic));
        }
        if let Some(dead_letter) = &subscription.dead_letter_policy {
            parse_resource_name(ResourceKind::Topic, &dead_letter.dead_letter_topic)?;
            if !inner.topics.contains_key(&dead_letter.dead_letter_topic) {
                return Err(not_found(ResourceKind::Topic, &dead_letter.dead_letter_topic));
            }
        }
        if inner.subscriptions.contains_key(&subscription.name) {
            return Err(already_exists(ResourceKind::Subscription, &subscription.name));
        }

        let signals = Arc::new(SubscriptionSignals::default());
        let timer_task = tokio::spawn(run_timers(
            self.this.clone(),
            subscription.name.clone(),
            signals.clone(),
        ));
        if let Some(topic) = inner.topics.get_mut(&subscription.topic) {
            topic.subscriptions.insert(subscription.name.clone());
        }
        inner.subscriptions.insert(
            subscription.name.clone(),
            SubscriptionEntry {
                dead_letter_attempts: subscription
                    .dead_letter_policy
                    .as_ref()
                    .map(|dead_letter| dead_letter.max_delivery_attempts),
                backoff,
                config: subscription.clone(),
                name,
                messages: HashMap::new(),
                ready: VecDeque::new(),
                timers: BTreeSet::new(),
                leases: HashMap::new(),
                streams: HashMap::new(),
                signals,
                timer_task: Some(timer_task.abort_handle()),
            },
        );
        Ok(subscription)
    }

    /// Returns a subscription's configuration.
    pub fn get_subscription(&self, name: &str) -> Result<Subscription, EmulatorError> {
        parse_resource_name(ResourceKind::Subscription, name)?;
        let inner = self.lock();
        inner
            .subscriptions
            .get(name)
            .map(|entry| entry.config.clone())
            .ok_or_else(|| not_found(ResourceKind::Subscription, name))
    }

    /// Lists a project's subscriptions in name order, one page at a time.
    pub fn list_subscriptions(&self, project: &str, page: Page) -> Result<(Vec<Subscription>, String), EmulatorError> {
        let inner = self.lock();
        let prefix = format!("projects/{project}/subscriptions/");
        Ok(page.collect(&inner.subscriptions, &prefix, |_, entry| entry.config.clone()))
    }

    /// Deletes a subscription and its messages; open streams on it end with
    /// NOT_FOUND.
    pub fn delete_subscription(&self, name: &str) -> Result<(), EmulatorError> {
        parse_resource_name(ResourceKind::Subscription, name)?;
        let mut inner = self.lock();
        let mut entry = inner
            .subscriptions
            .remove(name)
            .ok_or_else(|| not_found(ResourceKind::Subscription, name))?;
        if let Some(topic) = inner.topics.get_mut(&entry.config.topic) {
            topic.subscriptions.remove(name);
        }
        entry.signals.close();
        if let Some(task) = entry.timer_task.take() {
            task.abort();
        }
        Ok(())
    }

    /// The wake-ups of a subscription, for tasks that wait on it.
    pub fn signals(&self, subscription: &str) -> Result<Arc<SubscriptionSignals>, EmulatorError> {
        let inner = self.lock();
        Self::check_running(&inner)?;
        inner
            .subscriptions
            .get(subscription)
            .map(|entry| entry.signals.clone())
            .ok_or_else(|| not_found(ResourceKind::Subscription, subscription))
    }

    /// The subscription's own ack deadline, used by unary Pull.
    pub fn ack_deadline_seconds(&self, subscription: &str) -> Result<DeadlineSeconds, EmulatorError> {
        self.get_subscription(subscription)
            .map(|config| config.ack_deadline_seconds)
    }

    // ----- delivery -----------------------------------------------------

    /// Registers a StreamingPull stream and its flow-control window.
    pub fn open_stream(&self, subscription: &str, flow_control: FlowControl) -> Result<u64, EmulatorError> {
        let mut inner = self.lock();
        Self::check_running(&inner)?;
        inner.next_key += 1;
        let stream_id = inner.next_key;
        let entry = subscription_mut(&mut inner, subscription)?;
        entry.streams.insert(
            stream_id,
            StreamWindow {
                flow_control,
                ..StreamWindow::default()
            },
        );
        Ok(stream_id)
    }

    /// Forgets a stream's window; its leases run on until acked or expired,
    /// as the real service keeps them.
    pub fn close_stream(&self, subscription: &str, stream_id: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.subscriptions.get_mut(subscription) {
            entry.streams.remove(&stream_id);
            for message in entry.messages.values_mut() {
                if let DeliveryState::Leased { stream_id: owner, .. } = &mut message.state {
                    if *owner == Some(stream_id) {
                        *owner = None;
                    }
                }
            }
        }
    }

    /// Leases up to `max_messages` deliverable messages for `deadline_seconds`,
    /// within the stream's flow-control window when `stream_id` is given.
    pub fn lease(
        &self,
        subscription: &str,
        max_messages: usize,
        stream_id: Option<u64>,
        deadline_seconds: DeadlineSeconds,
    ) -> Result<Vec<ReceivedMessage>, EmulatorError> {
        let mut inner = self.lock();
        Self::check_running(&inner)?;
        let entry = subscription_mut(&mut inner, subscription)?;
        let deadline = Instant::now() + Duration::from_secs(u64::try_from(deadline_seconds).unwrap_or(0));
        let max_messages = max_messages.min(MAX_MESSAGES_PER_RESPONSE);
        // Pub/Sub discards unacked messages older than the subscription's
        // retention (7 days by default): a worker down longer never sees them.
        let retention_seconds = entry
            .config
            .message_retention_duration
            .as_ref()
            .map_or(7 * 24 * 60 * 60, |duration| duration.seconds);
        let expired_before = self.clock.now().timestamp() - retention_seconds;
        let mut received = Vec::new();
        let mut response_bytes = 0;
        while received.len() < max_messages {
            let Some(&key) = entry.ready.front() else { break };
            let Some(message) = entry.messages.get(&key) else {
                entry.ready.pop_front();
                continue;
            };
            let published = message.retained.message.publish_time.as_ref().map(|time| time.seconds);
            if published.is_some_and(|seconds| seconds <= expired_before) {
                tracing::debug!(subscription, key, "message past the subscription's retention discarded");
                entry.messages.remove(&key);
                entry.ready.pop_front();
                continue;
            }
            let size = message.retained.size;
            if !received.is_empty() && response_bytes + size > MAX_BYTES_PER_RESPONSE {
                break;
            }
            if let Some(window) = stream_id.and_then(|stream_id| entry.streams.get_mut(&stream_id)) {
                if !window.admits(size) {
                    break;
                }
                window.outstanding_messages += 1;
                window.outstanding_bytes += size as i64;
            }
            entry.ready.pop_front();
            response_bytes += size;
            grant_lease(&mut received, entry, key, deadline, stream_id);
        }
        Ok(received)
    }

    /// Acks the messages behind live ack ids; stale ones are ignored.
    pub fn acknowledge(&self, subscription: &str, ack_ids: &[String]) -> Result<(), EmulatorError> {
        let lease_ids = parse_ack_ids(ack_ids)?;
        let mut inner = self.lock();
        let entry = subscription_mut(&mut inner, subscription)?;
        for lease_id in lease_ids {
            if let Some(key) = entry.end_lease(lease_id) {
                entry.messages.remove(&key);
            }
        }
        Ok(())
    }

    /// Moves the deadline of live leases; 0 is a nack, making the message
    /// eligible again subject to the retry policy.
    pub fn modify_ack_deadline(
        &self,
        subscription: &str,
        ack_ids: &[String],
        seconds: i32,
    ) -> Result<(), EmulatorError> {
        let seconds = policy::modified_ack_deadline(seconds)?;
        let lease_ids = parse_ack_ids(ack_ids)?;
        let mut inner = self.lock();
        let mut dead_letters = Vec::new();
        let entry = subscription_mut(&mut inner, subscription)?;
        for lease_id in lease_ids {
            if seconds == 0 {
                if let Some(key) = entry.end_lease(lease_id) {
                    dead_letters.extend(after_failure(entry, key));
                }
                continue;
            }
            let Some(&key) = entry.leases.get(&lease_id) else {
                continue;
            };
            let new_deadline = Instant::now() + Duration::from_secs(seconds as u64);
            let Some(message) = entry.messages.get_mut(&key) else {
                continue;
            };
            if let DeliveryState::Leased { deadline, .. } = &mut message.state {
                let old_deadline = std::mem::replace(deadline, new_deadline);
                entry.timers.remove(&(old_deadline, key));
                entry.add_timer(new_deadline, key);
            }
        }
        self.publish_dead_letters(&mut inner, dead_letters);
        Ok(())
    }

    /// Expires due leases and ends due backoffs; returns the next instant
    /// the subscription needs attention, or `Err` once it is gone.
    fn fire_due_timers(&self, subscription: &str, now: Instant) -> Result<Option<Instant>, ()> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(());
        }
        let mut dead_letters = Vec::new();
        let entry = inner.subscriptions.get_mut(subscription).ok_or(())?;
        while let Some(&(at, key)) = entry.timers.first() {
            if at > now {
                break;
            }
            entry.timers.pop_first();
            let Some(state) = entry.messages.get(&key).map(|message| message.state) else {
                continue;
            };
            match state {
                DeliveryState::Leased { lease_id, deadline, .. }
                    if deadline == at && entry.end_lease(lease_id).is_some() =>
                {
                    dead_letters.extend(after_failure(entry, key));
                }
                DeliveryState::Backoff { until } if until == at => {
                    if let Some(message) = entry.messages.get_mut(&key) {
                        message.state = DeliveryState::Ready;
                    }
                    entry.enqueue_ready(key);
                }
                _ => {}
            }
        }
        let next = entry.timers.first().map(|(at, _)| *at);
        self.publish_dead_letters(&mut inner, dead_letters);
        Ok(next)
    }

    fn publish_dead_letters(&self, inner: &mut Inner, dead_letters: Vec<DeadLetter>) {
        for dead_letter in dead_letters {
            // A dead-letter topic deleted since the policy was set loses the
            // message, as the real service cannot publish to it either.
            self.publish_locked(inner, &dead_letter.topic, vec![dead_letter.message]);
        }
    }
}

/// Records a new lease on a ready message and appends its delivery.
fn grant_lease(
    received: &mut Vec<ReceivedMessage>,
    entry: &mut SubscriptionEntry,
    key: u64,
    deadline: Instant,
    stream_id: Option<u64>,
) {
    let lease_id = next_lease_id();
    let Some(message) = entry.messages.get_mut(&key) else {
        return;
    };
    message.deliveries += 1;
    message.state = DeliveryState::Leased {
        lease_id,
        deadline,
        stream_id,
    };
    let delivery_attempt = if entry.dead_letter_attempts.is_some() {
        i32::try_from(message.deliveries).unwrap_or(i32::MAX)
    } else {
        0
    };
    received.push(ReceivedMessage {
        ack_id: format_ack_id(lease_id),
        message: Some(message.retained.message.clone()),
        delivery_attempt,
    });
    entry.leases.insert(lease_id, key);
    entry.add_timer(deadline, key);
}

/// Applies the retry or dead-letter policy to a message whose lease just
/// ended in failure.
fn after_failure(entry: &mut SubscriptionEntry, key: u64) -> Option<DeadLetter> {
    let message = entry.messages.get_mut(&key)?;
    match policy::after_failed_delivery(message.deliveries, entry.dead_letter_attempts, entry.backoff) {
        AfterFailure::Redeliver { delay } if delay.is_zero() => {
            message.state = DeliveryState::Ready;
            entry.enqueue_ready(key);
            None
        }
        AfterFailure::Redeliver { delay } => {
            let until = Instant::now() + delay;
            message.state = DeliveryState::Backoff { until };
            entry.add_timer(until, key);
            None
        }
        AfterFailure::DeadLetter => {
            let message = entry.messages.remove(&key)?;
            let original = &message.retained.message;
            let topic = entry.config.dead_letter_policy.as_ref()?.dead_letter_topic.clone();
            tracing::debug!(
                message.id = %original.message_id,
                delivery.attempt = message.deliveries,
                subscription = %entry.config.name,
                "forwarding message to dead-letter topic {topic}"
            );
            Some(DeadLetter {
                topic,
                message: PubsubMessage {
                    data: original.data.clone(),
                    attributes: policy::dead_letter_attributes(
                        &original.attributes,
                        &entry.name.project,
                        &entry.name.id,
                        original.publish_time.as_ref(),
                        message.deliveries,
                    ),
                    ordering_key: original.ordering_key.clone(),
                    ..PubsubMessage::default()
                },
            })
        }
    }
}

/// Sleeps until the subscription's next deadline or backoff end, handles it,
/// and repeats; wakes early when an earlier timer is added. Ends when the
/// subscription or the emulator goes away.
async fn run_timers(registry: Weak<Registry>, subscription: String, signals: Arc<SubscriptionSignals>) {
    loop {
        let next = {
            let Some(registry) = registry.upgrade() else { return };
            match registry.fire_due_timers(&subscription, Instant::now()) {
                Ok(next) => next,
                Err(()) => return,
            }
        };
        if signals.is_closed() {
            return;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = signals.timers_changed.notified() => {}
                }
            }
            None => signals.timers_changed.notified().await,
        }
    }
}

static NEXT_LEASE_ID: AtomicUsize = AtomicUsize::new(1);

/// Lease ids are unique across the process so that an ack id from one
/// subscription (or an earlier one of the same name) never matches another.
fn next_lease_id() -> u64 {
    NEXT_LEASE_ID.fetch_add(1, Ordering::Relaxed) as u64
}

const ACK_ID_PREFIX: &str = "keshless-lease-";

fn format_ack_id(lease_id: u64) -> String {
    format!("{ACK_ID_PREFIX}{lease_id}")
}

fn parse_ack_ids(ack_ids: &[String]) -> Result<Vec<u64>, EmulatorError> {
    ack_ids
        .iter()
        .map(|ack_id| {
            ack_id
                .strip_prefix(ACK_ID_PREFIX)
                .and_then(|lease_id| lease_id.parse().ok())
                .ok_or_else(|| EmulatorError::InvalidArgument(format!("invalid ack id {ack_id:?}")))
        })
        .collect()
}

fn subscription_mut<'inner>(
    inner: &'inner mut Inner,
    name: &str,
) -> Result<&'inner mut SubscriptionEntry, EmulatorError> {
    inner
        .subscriptions
        .get_mut(name)
        .ok_or_else(|| not_found(ResourceKind::Subscription, name))
}

/// Refuses subscription features the emulator would otherwise silently ignore.
fn reject_unsupported(subscription: &Subscription) -> Result<(), EmulatorError> {
    let push = subscription
        .push_config
        .as_ref()
        .is_some_and(|push| !push.push_endpoint.is_empty());
    let unsupported = [
        (push, "push delivery"),
        (subscription.bigquery_config.is_some(), "BigQuery subscriptions"),
        (
            subscription.cloud_storage_config.is_some(),
            "Cloud Storage subscriptions",
        ),
        (subscription.enable_message_ordering, "message ordering"),
        (subscription.enable_exactly_once_delivery, "exactly-once delivery"),
        (!subscription.filter.is_empty(), "subscription filters"),
        (!subscription.message_transforms.is_empty(), "message transforms"),
    ];
    match unsupported.iter().find(|(requested, _)| *requested) {
        Some((_, feature)) => Err(EmulatorError::Unimplemented((*feature).to_string())),
        None => Ok(()),
    }
}

fn not_found(kind: ResourceKind, name: &str) -> EmulatorError {
    EmulatorError::NotFound {
        kind: kind.noun(),
        name: name.to_string(),
    }
}

fn already_exists(kind: ResourceKind, name: &str) -> EmulatorError {
    EmulatorError::AlreadyExists {
        kind: kind.noun(),
        name: name.to_string(),
    }
}

/// Page request of a List method: the token is the last name returned.
#[derive(Debug, Clone)]
pub struct Page {
    pub size: i32,
    pub token: String,
}

impl Page {
    fn limit(&self) -> usize {
        usize::try_from(self.size)
            .ok()
            .filter(|size| *size > 0)
            .unwrap_or(MAX_PAGE_SIZE)
            .min(MAX_PAGE_SIZE)
    }

    /// Returns the items whose key starts with `prefix`, after the token, and
    /// the next token (empty on the last page).
    fn collect<V, T>(
        &self,
        map: &BTreeMap<String, V>,
        prefix: &str,
        convert: impl Fn(&String, &V) -> T,
    ) -> (Vec<T>, String) {
        let start = if self.token.is_empty() {
            std::ops::Bound::Included(prefix.to_string())
        } else {
            std::ops::Bound::Excluded(self.token.clone())
        };
        let mut items = map
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        let page: Vec<(&String, &V)> = items.by_ref().take(self.limit()).collect();
        let next_token = match (page.last(), items.next()) {
            (Some((last, _)), Some(_)) => (*last).clone(),
            _ => String::new(),
        };
        (
            page.into_iter().map(|(key, value)| convert(key, value)).collect(),
            next_token,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_past_the_subscription_retention_are_never_delivered() {
        let start = chrono::DateTime::parse_from_rfc3339("2027-06-02T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let clock = crate::clock::ManualClock::new(start);
        let registry = Registry::new(1 << 20, clock.clock());
        let topic = "projects/p/topics/jobs";
        let subscription = "projects/p/subscriptions/worker";
        registry
            .create_topic(Topic {
                name: topic.into(),
                ..Topic::default()
            })
            .unwrap();
        registry
            .create_subscription(Subscription {
                name: subscription.into(),
                topic: topic.into(),
                ..Subscription::default()
            })
            .unwrap();
        let message = |text: &str| PubsubMessage {
            data: text.as_bytes().to_vec(),
            ..PubsubMessage::default()
        };
        registry.publish(topic, vec![message("old")]).unwrap();
        clock.advance(chrono::Duration::days(3));
        registry.publish(topic, vec![message("young")]).unwrap();
        // Seven days (the default retention) after the first publish, and a second.
        clock.advance(chrono::Duration::days(4) + chrono::Duration::seconds(1));
        let delivered: Vec<(Vec<u8>, i64)> = registry
            .lease(subscription, 10, None, 60)
            .unwrap()
            .into_iter()
            .map(|received| {
                let message = received.message.unwrap();
                (message.data, message.publish_time.unwrap().seconds)
            })
            .collect();
        // Published at the clock's time, not the machine's.
        let young_published = (start + chrono::Duration::days(3)).timestamp();
        assert_eq!(delivered, [(b"young".to_vec(), young_published)]);
        let again = registry.lease(subscription, 10, None, 60).unwrap();
        assert!(again.is_empty(), "the young one is leased, the old one gone");
    }
}
