//! The `google.pubsub.v1.Publisher` methods: topic administration and
//! Publish. Each handler unpacks the request, lets the registry decide and
//! turns its error into the matching gRPC status.

use std::sync::Arc;

use google_cloud_googleapis::pubsub::v1::{
    DeleteTopicRequest, GetTopicRequest, ListTopicSubscriptionsRequest, ListTopicSubscriptionsResponse,
    ListTopicsRequest, ListTopicsResponse, PublishRequest, PublishResponse, Topic,
};
use tonic::{Request, Response, Status};

use super::names::parse_project_name;
use super::state::{Page, Registry};

/// Handlers of the Publisher service over the shared registry.
#[derive(Debug, Clone)]
pub struct PublisherService {
    registry: Arc<Registry>,
}

impl PublisherService {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    pub async fn create_topic(&self, request: Request<Topic>) -> Result<Response<Topic>, Status> {
        let topic = self.registry.create_topic(request.into_inner())?;
        tracing::debug!(topic = %topic.name, "topic created");
        Ok(Response::new(topic))
    }

    pub async fn get_topic(&self, request: Request<GetTopicRequest>) -> Result<Response<Topic>, Status> {
        Ok(Response::new(self.registry.get_topic(&request.into_inner().topic)?))
    }

    pub async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let request = request.into_inner();
        let project = parse_project_name(&request.project)?;
        let page = Page {
            size: request.page_size,
            token: request.page_token,
        };
        let (topics, next_page_token) = self.registry.list_topics(&project, page)?;
        Ok(Response::new(ListTopicsResponse {
            topics,
            next_page_token,
        }))
    }

    pub async fn list_topic_subscriptions(
        &self,
        request: Request<ListTopicSubscriptionsRequest>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        let request = request.into_inner();
        let page = Page {
            size: request.page_size,
            token: request.page_token,
        };
        let (subscriptions, next_page_token) = self.registry.list_topic_subscriptions(&request.topic, page)?;
        Ok(Response::new(ListTopicSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    pub async fn delete_topic(&self, request: Request<DeleteTopicRequest>) -> Result<Response<()>, Status> {
        let topic = request.into_inner().topic;
        self.registry.delete_topic(&topic)?;
        tracing::debug!(%topic, "topic deleted");
        Ok(Response::new(()))
    }

    pub async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let request = request.into_inner();
        let message_ids = self.registry.publish(&request.topic, request.messages)?;
        Ok(Response::new(PublishResponse { message_ids }))
    }
}
