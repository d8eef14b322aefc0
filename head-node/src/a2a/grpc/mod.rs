//! A2A 1.0's gRPC binding: `lf.a2a.v1.A2AService` on the head's own port, beside the
//! cluster's gRPC API and the HTTP routes.
//!
//! - The agent is the request's `tenant`, as each agent card's `GRPC` interface says
//!   (the JSON bindings name it in the path instead).
//! - Every call is the JSON-RPC binding's operation ([`super::ops`]), its request and
//!   answer mapped to and from proto3 JSON by [`json`] (pbjson's generated serde code):
//!   one implementation of A2A's semantics for all three bindings.
//! - Errors are gRPC statuses with google.rpc.Status and its ErrorInfo in
//!   `grpc-status-details-bin`, the reasons the JSON bindings give.
//! - The client's credential is the `authorization: Bearer KEY` (or `x-api-key: KEY`)
//!   metadata, as for the JSON bindings' headers.

mod json;

use std::pin::Pin;

use axum::Router;
use axum::extract::Request;
use fleet_proto::a2a::a2a_service_server::{A2aService, A2aServiceServer};
use fleet_proto::a2a::{
    AgentCard, CancelTaskRequest, DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest, GetTaskPushNotificationConfigRequest, GetTaskRequest,
    ListTaskPushNotificationConfigsRequest, ListTaskPushNotificationConfigsResponse,
    ListTasksRequest, ListTasksResponse, SendMessageRequest, SendMessageResponse, StreamResponse,
    SubscribeToTaskRequest, Task, TaskPushNotificationConfig,
};
use futures::{Stream, StreamExt};
use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request as GrpcRequest, Response, Status};

use super::errors::A2aError;
use super::{A2a, Version, ops};
use crate::auth::{ActsAs, Principal};

/// The host and port the client dialed (HTTP/2's `:authority`), which the cards' URLs name.
#[derive(Clone, Debug)]
struct Authority(String);

/// The gRPC service's routes, ready to merge into the head's router: the client's
/// credential checked first, then the service.
pub fn router(a2a: A2a) -> Router {
    let auth = GrpcAuth { principals: a2a.clients.clone() };
    let limit = a2a.max_body_bytes;
    let server = A2aServiceServer::new(Grpc { a2a })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let service = InterceptedService::new(server, auth);
    Router::new()
        .route_service(
            &format!(
                "/{}/{{*method}}",
                <A2aServiceServer<Grpc> as tonic::server::NamedService>::NAME
            ),
            service,
        )
        .layer(axum::middleware::map_request(remember_authority))
}

/// Keeps the dialed authority where the handlers can read it (tonic passes extensions on,
/// not the URI).
async fn remember_authority(mut request: Request) -> Request {
    let authority = request.uri().authority().map(|a| a.to_string()).or_else(|| {
        request
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    if let Some(authority) = authority {
        request.extensions_mut().insert(Authority(authority));
    }
    request
}

/// The credential check: the principal goes into the request's extensions; no credential
/// is A2A's unauthenticated error, as a gRPC status.
#[derive(Clone)]
struct GrpcAuth {
    principals: crate::auth::Principals,
}

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, mut request: GrpcRequest<()>) -> Result<GrpcRequest<()>, Status> {
        let headers = request.metadata().clone().into_headers();
        match self.principals.resolve_http(&headers) {
            Some(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            None => {
                tracing::warn!(
                    door = "a2a-grpc",
                    credential_present = headers.contains_key(axum::http::header::AUTHORIZATION)
                        || headers.contains_key("x-api-key"),
                    "refused a request without a client credential"
                );
                Err(A2aError::from(crate::auth::unauthenticated()).to_grpc_status())
            }
        }
    }
}

/// The service, holding the operator's A2A state; each call acts as its own principal.
struct Grpc {
    a2a: A2a,
}

type Updates = Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>;

/// One call, read: the A2A state acting as its principal, the agent it names, its
/// request as the JSON-RPC binding's params (without `tenant`, which named the agent).
struct Call {
    a2a: A2a,
    agent: String,
    params: Value,
    headers: axum::http::HeaderMap,
}

impl Grpc {
    fn call<M: serde::Serialize>(
        &self,
        request: GrpcRequest<M>,
        name: &str,
    ) -> Result<Call, Status> {
        let who = request.extensions().get::<Principal>().cloned();
        // Behind the interceptor there is always one: without, refuse rather than trust.
        let who = who.ok_or_else(|| A2aError::internal("no principal").to_grpc_status())?;
        let mut headers = request.metadata().clone().into_headers();
        if let Some(Authority(authority)) = request.extensions().get::<Authority>()
            && let Ok(host) = authority.parse()
        {
            headers.insert(axum::http::header::HOST, host);
        }
        if let Some(version) = headers.get("a2a-version").and_then(|v| v.to_str().ok())
            && !matches!(version.trim(), "" | "1.0" | "1")
        {
            return Err(A2aError::version_not_supported(version).to_grpc_status());
        }
        let mut params = json::to_json(request.get_ref(), name).map_err(|e| e.to_grpc_status())?;
        let agent = match params.as_object_mut().and_then(|p| p.remove("tenant")) {
            Some(Value::String(agent)) if !agent.is_empty() => agent,
            _ => {
                return Err(A2aError::invalid_params(
                    "tenant is empty: name the agent in tenant, as its card's GRPC interface does",
                )
                .to_grpc_status());
            }
        };
        Ok(Call { a2a: self.a2a.acting_as(who), agent, params, headers })
    }

    /// [`Self::call`], for an agent that must be registered (as the JSON-RPC binding
    /// checks; streams and listing check it themselves).
    fn call_agent<M: serde::Serialize>(
        &self,
        request: GrpcRequest<M>,
        name: &str,
    ) -> Result<Call, Status> {
        let c = self.call(request, name)?;
        ops::check_agent(&c.a2a, &c.agent).map_err(|e| e.to_grpc_status())?;
        Ok(c)
    }
}

/// The operation's answer as the gRPC message `name`.
fn answer<M: serde::de::DeserializeOwned>(
    result: Result<Value, A2aError>,
    name: &str,
) -> Result<Response<M>, Status> {
    result
        .and_then(|json| json::from_json(&json, name))
        .map(Response::new)
        .map_err(|e| e.to_grpc_status())
}

/// An operation's stream of StreamResponse JSON as gRPC messages.
fn updates(items: impl Stream<Item = Value> + Send + 'static) -> Updates {
    Box::pin(
        items.map(|item| json::from_json(&item, "StreamResponse").map_err(|e| e.to_grpc_status())),
    )
}

#[tonic::async_trait]
impl A2aService for Grpc {
    async fn send_message(
        &self,
        request: GrpcRequest<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let c = self.call_agent(request, "SendMessageRequest")?;
        answer(ops::send(&c.a2a, &c.agent, &c.params, Version::V1).await, "SendMessageResponse")
    }

    type SendStreamingMessageStream = Updates;

    async fn send_streaming_message(
        &self,
        request: GrpcRequest<SendMessageRequest>,
    ) -> Result<Response<Updates>, Status> {
        let c = self.call(request, "SendMessageRequest")?;
        let items = ops::stream(&c.a2a, &c.agent, &c.params, Version::V1).await;
        Ok(Response::new(updates(items.map_err(|e| e.to_grpc_status())?)))
    }

    async fn get_task(
        &self,
        request: GrpcRequest<GetTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let c = self.call_agent(request, "GetTaskRequest")?;
        answer(ops::get(&c.a2a, &c.agent, &c.params, Version::V1), "Task")
    }

    async fn list_tasks(
        &self,
        request: GrpcRequest<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let c = self.call(request, "ListTasksRequest")?;
        answer(ops::list(&c.a2a, &c.agent, &c.params, Version::V1), "ListTasksResponse")
    }

    async fn cancel_task(
        &self,
        request: GrpcRequest<CancelTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let c = self.call_agent(request, "CancelTaskRequest")?;
        answer(ops::cancel(&c.a2a, &c.agent, &c.params, Version::V1).await, "Task")
    }

    type SubscribeToTaskStream = Updates;

    async fn subscribe_to_task(
        &self,
        request: GrpcRequest<SubscribeToTaskRequest>,
    ) -> Result<Response<Updates>, Status> {
        let c = self.call(request, "SubscribeToTaskRequest")?;
        let id = c.params.get("id").and_then(Value::as_str).unwrap_or_default();
        let items = ops::subscribe(&c.a2a, &c.agent, id, Version::V1);
        Ok(Response::new(updates(items.map_err(|e| e.to_grpc_status())?)))
    }

    async fn create_task_push_notification_config(
        &self,
        request: GrpcRequest<TaskPushNotificationConfig>,
    ) -> Result<Response<TaskPushNotificationConfig>, Status> {
        let c = self.call_agent(request, "TaskPushNotificationConfig")?;
        let created = ops::push_create(&c.a2a, &c.agent, &c.params, Version::V1).await;
        answer(created, "TaskPushNotificationConfig")
    }

    async fn get_task_push_notification_config(
        &self,
        request: GrpcRequest<GetTaskPushNotificationConfigRequest>,
    ) -> Result<Response<TaskPushNotificationConfig>, Status> {
        let c = self.call_agent(request, "GetTaskPushNotificationConfigRequest")?;
        answer(
            ops::push_get(&c.a2a, &c.agent, &c.params, Version::V1),
            "TaskPushNotificationConfig",
        )
    }

    async fn list_task_push_notification_configs(
        &self,
        request: GrpcRequest<ListTaskPushNotificationConfigsRequest>,
    ) -> Result<Response<ListTaskPushNotificationConfigsResponse>, Status> {
        let c = self.call_agent(request, "ListTaskPushNotificationConfigsRequest")?;
        let listed = ops::push_list(&c.a2a, &c.agent, &c.params, Version::V1);
        answer(listed, "ListTaskPushNotificationConfigsResponse")
    }

    async fn get_extended_agent_card(
        &self,
        request: GrpcRequest<GetExtendedAgentCardRequest>,
    ) -> Result<Response<AgentCard>, Status> {
        let c = self.call(request, "GetExtendedAgentCardRequest")?;
        answer(super::card::extended_card_json(&c.a2a, &c.agent, &c.headers), "AgentCard")
    }

    async fn delete_task_push_notification_config(
        &self,
        request: GrpcRequest<DeleteTaskPushNotificationConfigRequest>,
    ) -> Result<Response<()>, Status> {
        let c = self.call_agent(request, "DeleteTaskPushNotificationConfigRequest")?;
        ops::push_delete(&c.a2a, &c.agent, &c.params, Version::V1)
            .await
            .map(|_| Response::new(()))
            .map_err(|e| e.to_grpc_status())
    }
}
