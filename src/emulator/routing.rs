//! gRPC routing for `google.pubsub.v1.Publisher` and
//! `google.pubsub.v1.Subscriber`, written by hand in the shape of tonic's
//! generated server code (`gcloud-googleapis` ships the message types and a
//! client, but no server). Each path is decoded with the same prost types the
//! client encodes; paths the emulator does not implement answer UNIMPLEMENTED.
//! Every call is stamped with its deadline from `grpc-timeout` on arrival
//! ([`stamp_call_deadline`]), for the handlers that wait.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};

use google_cloud_googleapis::pubsub::v1::{StreamingPullRequest, StreamingPullResponse};

use super::publisher::PublisherService;
use super::subscriber::{StreamingPullStream, SubscriberService};

/// Pub/Sub accepts publish requests and sends responses up to 10 MB; tonic's
/// 4 MiB default would refuse messages the real service takes.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// When a call must have ended: its arrival plus its `grpc-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(pub tokio::time::Instant);

/// Puts the call's [`CallDeadline`] into its extensions. Run as a layer of
/// the server, so before tonic starts its own timer for the same header
/// (which would cancel the call, answering CANCELLED): a handler ending at
/// this deadline answers first, with the DEADLINE_EXCEEDED the service gives.
pub fn stamp_call_deadline<RequestBody>(mut request: http::Request<RequestBody>) -> http::Request<RequestBody> {
    let timeout = request
        .headers()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    if let Some(timeout) = timeout {
        request
            .extensions_mut()
            .insert(CallDeadline(tokio::time::Instant::now() + timeout));
    }
    request
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n),
/// as the gRPC over HTTP/2 protocol defines it; `None` when malformed.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..split)?, value.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Adapts an async handler closure to tonic's unary service trait.
struct UnaryHandler<Handler>(Handler);

impl<Handler, RequestMessage, ResponseMessage, HandlerFuture> UnaryService<RequestMessage> for UnaryHandler<Handler>
where
    Handler: FnMut(Request<RequestMessage>) -> HandlerFuture,
    HandlerFuture: Future<Output = Result<Response<ResponseMessage>, Status>> + Send + 'static,
{
    type Response = ResponseMessage;
    type Future = BoxFuture<Response<ResponseMessage>, Status>;

    fn call(&mut self, request: Request<RequestMessage>) -> Self::Future {
        Box::pin((self.0)(request))
    }
}

/// Decodes one request, runs `handler`, encodes its answer or status.
fn unary<RequestBody, RequestMessage, ResponseMessage, Handler, HandlerFuture>(
    request: http::Request<RequestBody>,
    handler: Handler,
) -> BoxFuture<http::Response<Body>, Infallible>
where
    RequestBody: HttpBody + Send + 'static,
    RequestBody::Error: Into<StdError> + Send + 'static,
    RequestMessage: prost::Message + Default + Send + 'static,
    ResponseMessage: prost::Message + Send + 'static,
    Handler: FnMut(Request<RequestMessage>) -> HandlerFuture + Send + 'static,
    HandlerFuture: Future<Output = Result<Response<ResponseMessage>, Status>> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = Grpc::new(tonic_prost::ProstCodec::<ResponseMessage, RequestMessage>::default())
            .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
        Ok(grpc.unary(UnaryHandler(handler), request).await)
    })
}

fn unimplemented(path: &str) -> BoxFuture<http::Response<Body>, Infallible> {
    let status = Status::unimplemented(format!(
        "method {path} is not implemented by the keshless-ops Pub/Sub emulator"
    ));
    Box::pin(async move { Ok(status.into_http()) })
}

/// Routes `/google.pubsub.v1.Publisher/*`.
#[derive(Clone)]
pub struct PublisherServer {
    service: Arc<PublisherService>,
}

impl PublisherServer {
    pub fn new(service: PublisherService) -> Self {
        Self {
            service: Arc::new(service),
        }
    }
}

impl NamedService for PublisherServer {
    const NAME: &'static str = "google.pubsub.v1.Publisher";
}

/// Builds the closure a route hands to [`unary`]: clone the service, call one
/// of its async methods.
macro_rules! route {
    ($service:expr, $request:expr, $method:ident) => {{
        let service = Arc::clone(&$service);
        unary($request, move |request| {
            let service = Arc::clone(&service);
            async move { service.$method(request).await }
        })
    }};
}

impl<RequestBody> Service<http::Request<RequestBody>> for PublisherServer
where
    RequestBody: HttpBody + Send + 'static,
    RequestBody::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        match request.uri().path() {
            "/google.pubsub.v1.Publisher/CreateTopic" => route!(self.service, request, create_topic),
            "/google.pubsub.v1.Publisher/GetTopic" => route!(self.service, request, get_topic),
            "/google.pubsub.v1.Publisher/ListTopics" => route!(self.service, request, list_topics),
            "/google.pubsub.v1.Publisher/ListTopicSubscriptions" => {
                route!(self.service, request, list_topic_subscriptions)
            }
            "/google.pubsub.v1.Publisher/DeleteTopic" => route!(self.service, request, delete_topic),
            "/google.pubsub.v1.Publisher/Publish" => route!(self.service, request, publish),
            other => unimplemented(other),
        }
    }
}

/// Routes `/google.pubsub.v1.Subscriber/*`.
#[derive(Clone)]
pub struct SubscriberServer {
    service: Arc<SubscriberService>,
}

impl SubscriberServer {
    pub fn new(service: SubscriberService) -> Self {
        Self {
            service: Arc::new(service),
        }
    }
}

impl NamedService for SubscriberServer {
    const NAME: &'static str = "google.pubsub.v1.Subscriber";
}

/// Adapts [`SubscriberService::streaming_pull`] to tonic's bidirectional
/// streaming service trait.
struct StreamingPullHandler(Arc<SubscriberService>);

impl StreamingService<StreamingPullRequest> for StreamingPullHandler {
    type Response = StreamingPullResponse;
    type ResponseStream = StreamingPullStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<StreamingPullRequest>>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move { service.streaming_pull(request).await })
    }
}

impl<RequestBody> Service<http::Request<RequestBody>> for SubscriberServer
where
    RequestBody: HttpBody + Send + 'static,
    RequestBody::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        match request.uri().path() {
            "/google.pubsub.v1.Subscriber/CreateSubscription" => route!(self.service, request, create_subscription),
            "/google.pubsub.v1.Subscriber/GetSubscription" => route!(self.service, request, get_subscription),
            "/google.pubsub.v1.Subscriber/ListSubscriptions" => route!(self.service, request, list_subscriptions),
            "/google.pubsub.v1.Subscriber/DeleteSubscription" => route!(self.service, request, delete_subscription),
            "/google.pubsub.v1.Subscriber/Pull" => route!(self.service, request, pull),
            "/google.pubsub.v1.Subscriber/Acknowledge" => route!(self.service, request, acknowledge),
            "/google.pubsub.v1.Subscriber/ModifyAckDeadline" => route!(self.service, request, modify_ack_deadline),
            "/google.pubsub.v1.Subscriber/StreamingPull" => {
                let handler = StreamingPullHandler(Arc::clone(&self.service));
                Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::<StreamingPullResponse, StreamingPullRequest>::default();
                    let mut grpc = Grpc::new(codec)
                        .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
                    Ok(grpc.streaming(handler, request).await)
                })
            }
            other => unimplemented(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_malformed_ones_ignored() {
        let cases = [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("2S", Some(Duration::from_secs(2))),
            ("1999m", Some(Duration::from_millis(1999))),
            ("500u", Some(Duration::from_micros(500))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("", None),
            ("S", None),
            ("123456789m", None),
            ("10x", None),
            ("-1S", None),
            ("1.5S", None),
            ("10", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_timeout(value), expected, "{value:?}");
        }
    }

    #[tokio::test]
    async fn a_call_is_stamped_with_its_deadline_on_arrival() {
        let before = tokio::time::Instant::now();
        let request = http::Request::builder()
            .header("grpc-timeout", "250m")
            .body(())
            .unwrap();
        let stamped = stamp_call_deadline(request);
        let CallDeadline(deadline) = *stamped.extensions().get::<CallDeadline>().unwrap();
        assert!(deadline >= before + Duration::from_millis(250));
        assert!(deadline <= tokio::time::Instant::now() + Duration::from_millis(250));
        let without = stamp_call_deadline(http::Request::new(()));
        assert!(without.extensions().get::<CallDeadline>().is_none());
    }
}
