//! The `google.pubsub.v1.Subscriber` methods: subscription administration,
//! Pull, Acknowledge, ModifyAckDeadline and StreamingPull.
//!
//! A StreamingPull stream is a task that waits on the subscription's
//! `available` signal or the client's next request, whichever comes first, so
//! an idle stream costs nothing until a message or an ack arrives.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use google_cloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, DeleteSubscriptionRequest, GetSubscriptionRequest, ListSubscriptionsRequest,
    ListSubscriptionsResponse, ModifyAckDeadlineRequest, PullRequest, PullResponse, StreamingPullRequest,
    StreamingPullResponse, Subscription,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::names::{parse_project_name, parse_resource_name, ResourceKind};
use super::policy;
use super::routing::CallDeadline;
use super::state::{EmulatorError, FlowControl, Page, Registry};

/// How long a Pull without `return_immediately` waits for a first message
/// before answering with none, as the real service eventually does, unless
/// the call's gRPC deadline comes first.
const PULL_WAIT: Duration = Duration::from_secs(10);

/// The response stream of StreamingPull.
pub type StreamingPullStream = Pin<Box<dyn Stream<Item = Result<StreamingPullResponse, Status>> + Send + 'static>>;

/// Handlers of the Subscriber service over the shared registry.
#[derive(Debug, Clone)]
pub struct SubscriberService {
    registry: Arc<Registry>,
    max_stream_lifetime: Option<Duration>,
    /// See `EmulatorConfig::max_messages_per_pull`.
    max_messages_per_pull: Option<usize>,
    /// See `EmulatorConfig::immediate_pulls_find_nothing`.
    immediate_pulls_find_nothing: bool,
}

impl SubscriberService {
    pub fn new(
        registry: Arc<Registry>,
        max_stream_lifetime: Option<Duration>,
        max_messages_per_pull: Option<usize>,
        immediate_pulls_find_nothing: bool,
    ) -> Self {
        Self {
            registry,
            max_stream_lifetime,
            max_messages_per_pull,
            immediate_pulls_find_nothing,
        }
    }

    pub async fn create_subscription(&self, request: Request<Subscription>) -> Result<Response<Subscription>, Status> {
        let subscription = self.registry.create_subscription(request.into_inner())?;
        tracing::debug!(subscription = %subscription.name, topic = %subscription.topic, "subscription created");
        Ok(Response::new(subscription))
    }

    pub async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        Ok(Response::new(
            self.registry.get_subscription(&request.into_inner().subscription)?,
        ))
    }

    pub async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        let request = request.into_inner();
        let project = parse_project_name(&request.project)?;
        let page = Page {
            size: request.page_size,
            token: request.page_token,
        };
        let (subscriptions, next_page_token) = self.registry.list_subscriptions(&project, page)?;
        Ok(Response::new(ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    pub async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<()>, Status> {
        let subscription = request.into_inner().subscription;
        self.registry.delete_subscription(&subscription)?;
        tracing::debug!(%subscription, "subscription deleted");
        Ok(Response::new(()))
    }

    pub async fn acknowledge(&self, request: Request<AcknowledgeRequest>) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        parse_resource_name(ResourceKind::Subscription, &request.subscription)?;
        self.registry.acknowledge(&request.subscription, &request.ack_ids)?;
        Ok(Response::new(()))
    }

    pub async fn modify_ack_deadline(
        &self,
        request: Request<ModifyAckDeadlineRequest>,
    ) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        parse_resource_name(ResourceKind::Subscription, &request.subscription)?;
        self.registry
            .modify_ack_deadline(&request.subscription, &request.ack_ids, request.ack_deadline_seconds)?;
        Ok(Response::new(()))
    }

    /// Leases up to `max_messages`; without `return_immediately` waits (event
    /// driven) for the first message to arrive: until the call's gRPC
    /// deadline, ending it with DEADLINE_EXCEEDED as the service does, or at
    /// most [`PULL_WAIT`], answering with none. A call whose client went away
    /// (RST_STREAM) is dropped by hyper without leasing anything; see
    /// [`let_a_reset_end_the_call`].
    pub async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullResponse>, Status> {
        let call_deadline = request.extensions().get::<CallDeadline>().copied();
        let request = request.into_inner();
        parse_resource_name(ResourceKind::Subscription, &request.subscription)?;
        let max_messages = usize::try_from(request.max_messages)
            .ok()
            .filter(|max_messages| *max_messages > 0)
            .ok_or_else(|| {
                EmulatorError::InvalidArgument(format!(
                    "max_messages must be greater than 0, got {}",
                    request.max_messages
                ))
            })?;
        let max_messages = self
            .max_messages_per_pull
            .map_or(max_messages, |limit| max_messages.min(limit.max(1)));
        let deadline_seconds = self.registry.ack_deadline_seconds(&request.subscription)?;
        let signals = self.registry.signals(&request.subscription)?;
        #[allow(deprecated)]
        let return_immediately = request.return_immediately;
        if return_immediately && self.immediate_pulls_find_nothing {
            return Ok(Response::new(PullResponse::default()));
        }
        let give_up_at = tokio::time::Instant::now() + PULL_WAIT;
        let (wait_until, at_call_deadline) = match call_deadline {
            Some(CallDeadline(deadline)) if deadline <= give_up_at => (deadline, true),
            _ => (give_up_at, false),
        };
        loop {
            let_a_reset_end_the_call().await;
            // Registered before looking, so a publish between the look and
            // the wait still wakes this pull.
            let available = signals.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();
            let received_messages = self
                .registry
                .lease(&request.subscription, max_messages, None, deadline_seconds)?;
            if !received_messages.is_empty() || return_immediately {
                return Ok(Response::new(PullResponse { received_messages }));
            }
            if signals.is_closed() {
                // Surfaces NOT_FOUND or UNAVAILABLE, whichever closed it.
                self.registry.signals(&request.subscription)?;
            }
            if tokio::time::timeout_at(wait_until, available).await.is_err() {
                if at_call_deadline {
                    return Err(Status::deadline_exceeded(
                        "no message arrived before the call's deadline (grpc-timeout)",
                    ));
                }
                return Ok(Response::new(PullResponse::default()));
            }
        }
    }

    /// Opens a stream: validates the initial request, registers the stream's
    /// flow-control window and spawns the task that serves it.
    pub async fn streaming_pull(
        &self,
        request: Request<Streaming<StreamingPullRequest>>,
    ) -> Result<Response<StreamingPullStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its initial request"))?;
        parse_resource_name(ResourceKind::Subscription, &first.subscription)?;
        let deadline_seconds = policy::stream_ack_deadline(first.stream_ack_deadline_seconds)?;
        let signals = self.registry.signals(&first.subscription)?;
        let stream_id = self.registry.open_stream(
            &first.subscription,
            FlowControl {
                max_outstanding_messages: first.max_outstanding_messages,
                max_outstanding_bytes: first.max_outstanding_bytes,
            },
        )?;
        let mut stream = OpenStream {
            registry: self.registry.clone(),
            subscription: first.subscription.clone(),
            stream_id,
            deadline_seconds,
            closes_at: self
                .max_stream_lifetime
                .map(|lifetime| tokio::time::Instant::now() + lifetime),
        };
        stream.apply_acks_and_deadlines(&first)?;

        // A small buffer: backpressure should reach the lease loop, so
        // messages are not leased long before the client can read them.
        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(async move {
            if let Err(status) = stream.serve(inbound, &sender, &signals).await {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// One StreamingPull stream; unregisters its window when dropped, including
/// when the serving task is cancelled.
struct OpenStream {
    registry: Arc<Registry>,
    subscription: String,
    stream_id: u64,
    deadline_seconds: i32,
    /// When the server closes this stream (see `EmulatorConfig::max_stream_lifetime`).
    closes_at: Option<tokio::time::Instant>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.registry.close_stream(&self.subscription, self.stream_id);
    }
}

type Outbound = mpsc::Sender<Result<StreamingPullResponse, Status>>;

impl OpenStream {
    /// Delivers messages as they become available and applies the client's
    /// acks and deadline changes until either side goes away. `Ok` ends the
    /// stream quietly; `Err` is sent to the client as the closing status.
    async fn serve(
        &mut self,
        mut inbound: Streaming<StreamingPullRequest>,
        outbound: &Outbound,
        signals: &super::state::SubscriptionSignals,
    ) -> Result<(), Status> {
        loop {
            let available = signals.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();

            let received_messages = self.registry.lease(
                &self.subscription,
                usize::MAX,
                Some(self.stream_id),
                self.deadline_seconds,
            )?;
            if !received_messages.is_empty() {
                let response = StreamingPullResponse {
                    received_messages,
                    ..StreamingPullResponse::default()
                };
                if outbound.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
                // Under a steady flow this branch repeats; take in requests
                // that already arrived so acks are not starved.
                while let Some(Some(request)) = inbound.next().now_or_never() {
                    self.apply_request(request?)?;
                }
                continue;
            }

            tokio::select! {
                () = &mut available => {}
                request = inbound.next() => match request {
                    Some(request) => self.apply_request(request?)?,
                    // The client half-closed: end the stream as the service does.
                    None => return Ok(()),
                },
                () = outbound.closed() => return Ok(()),
                () = until(self.closes_at) => {
                    // Its messages stay leased to the client until their
                    // deadlines: acks and extensions by ack ID still work.
                    return Err(Status::unavailable("the stream reached its lifetime; open a new one"));
                }
            }
        }
    }

    /// Validates and applies a request that follows the initial one.
    fn apply_request(&mut self, request: StreamingPullRequest) -> Result<(), Status> {
        if !request.subscription.is_empty() {
            return Err(Status::invalid_argument(
                "subscription may only be set on the initial StreamingPull request",
            ));
        }
        if request.max_outstanding_messages != 0 || request.max_outstanding_bytes != 0 {
            return Err(Status::invalid_argument(
                "max_outstanding_messages and max_outstanding_bytes may only be set on the initial request",
            ));
        }
        if request.stream_ack_deadline_seconds != 0 {
            self.deadline_seconds = policy::stream_ack_deadline(request.stream_ack_deadline_seconds)?;
        }
        self.apply_acks_and_deadlines(&request)
    }

    fn apply_acks_and_deadlines(&mut self, request: &StreamingPullRequest) -> Result<(), Status> {
        if request.modify_deadline_seconds.len() != request.modify_deadline_ack_ids.len() {
            return Err(Status::invalid_argument(format!(
                "modify_deadline_seconds has {} entries but modify_deadline_ack_ids has {}",
                request.modify_deadline_seconds.len(),
                request.modify_deadline_ack_ids.len()
            )));
        }
        if !request.ack_ids.is_empty() {
            self.registry.acknowledge(&self.subscription, &request.ack_ids)?;
        }
        for (seconds, ack_id) in request
            .modify_deadline_seconds
            .iter()
            .zip(&request.modify_deadline_ack_ids)
        {
            self.registry
                .modify_ack_deadline(&self.subscription, std::slice::from_ref(ack_id), *seconds)?;
        }
        Ok(())
    }
}

/// Returns `Pending` once before a Pull looks for messages, so that hyper,
/// which checks for the client's RST_STREAM only while the handler is
/// pending, drops a call whose client went away before it leases anything.
/// Without it, a waiting Pull woken by the same wake-up that made messages
/// available (a ModifyAckDeadline to 0 the client sent right after
/// abandoning the Pull, on the same connection, so after its reset) would
/// lease them into a stream nobody reads, hiding them for their ack
/// deadline; the service does not serve a cancelled call.
async fn let_a_reset_end_the_call() {
    tokio::task::yield_now().await;
}

/// Resolves at `instant`, or never.
async fn until(instant: Option<tokio::time::Instant>) {
    match instant {
        Some(instant) => tokio::time::sleep_until(instant).await,
        None => std::future::pending().await,
    }
}
