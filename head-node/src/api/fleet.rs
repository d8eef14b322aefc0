//! The client API (`fleet.v1.FleetService`): agents, task submission and following,
//! cancellation, task queries and the cluster status.

use std::pin::Pin;
use std::sync::Arc;

use fleet_proto::{AgentSpec, pb};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span};

use super::streams::{self, EventStream};
use super::wire::state_filter;
use crate::auth::Principal;
use crate::cluster::{Cluster, Follow, NewTask, TaskFilter};
use crate::tasks::Delivery;

/// How many deliveries one SubmitMany response message carries at most.
const BATCH: usize = 1024;

/// Implements `FleetService` over the shared [`Cluster`].
#[derive(Debug, Clone)]
pub struct FleetApi {
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
}

impl FleetApi {
    pub fn new(cluster: Arc<Cluster>, shutdown: CancellationToken) -> Self {
        Self { cluster, shutdown }
    }
}

/// A task from its request; `traceparent` from the call's metadata (a multiplexed stream's
/// tasks all continue the stream's).
fn new_task(r: pb::SubmitRequest, traceparent: String) -> NewTask {
    NewTask {
        agent: r.agent,
        input: r.input,
        context_id: r.context_id,
        options: r.options.map(|o| Arc::new(o.into())),
        traceparent,
        idempotency_key: r.idempotency_key,
    }
}

type ManyStream = Pin<Box<dyn Stream<Item = Result<pb::SubmitManyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::fleet_service_server::FleetService for FleetApi {
    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        let who = who(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is missing: send the agent's spec"))?;
        let info = self.cluster.register_agent(&who, AgentSpec::from(spec))?;
        // The answer promises the agent is kept: not before it is stored.
        self.cluster.stored_so_far().await?;
        Ok(Response::new(info.into()))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.cluster.agents(&who(&request)?).into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    type SubmitStream = EventStream;

    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        let who = who(&request)?;
        let (sub, subscription) = self.cluster.subscriber();
        let traceparent = crate::traceparent::from_metadata(request.metadata());
        let task = new_task(request.into_inner(), traceparent);
        let (task_id, existing) = self.cluster.submit_keyed(&who, task, Some((sub, None)))?;
        debug!(task_id = %task_id, existing, "submit stream opened");
        // Sent again under its key: the task's events from the first.
        let follow = if existing {
            self.cluster.follow(&who, task_id.as_str(), 1)?
        } else {
            Follow::new(self.cluster.clone(), who, task_id, subscription, 0)
        };
        Ok(Response::new(streams::task_events(follow, self.shutdown.clone())))
    }

    type SubmitManyStream = ManyStream;

    async fn submit_many(
        &self,
        request: Request<Streaming<pb::SubmitManyRequest>>,
    ) -> Result<Response<Self::SubmitManyStream>, Status> {
        let who = who(&request)?;
        who.may_act()?;
        let traceparent = crate::traceparent::from_metadata(request.metadata());
        let mut inbound = request.into_inner();
        let (sub, subscription) = self.cluster.subscriber();
        let cluster = self.cluster.clone();
        let shutdown = self.shutdown.clone();
        // Reads submissions until the client half-closes. The subscriber clone it holds keeps
        // the response stream open; once it and every task's clone are dropped (all tasks
        // ended), the response stream ends.
        let reader = async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    () = shutdown.cancelled() => return,
                };
                let (items, watches) = match message {
                    Ok(Some(m)) => (m.items, m.watches),
                    Ok(None) => return,
                    Err(status) => {
                        debug!(%status, "submit_many inbound ended with an error");
                        return;
                    }
                };
                let items = items.into_iter().map(|item| {
                    let task = item.request.map(|r| new_task(r, traceparent.clone()));
                    let task = task.ok_or_else(|| {
                        crate::Error::InvalidArgument("item has no request: set request".into())
                    });
                    (item.client_ref, task)
                });
                if !cluster.submit_for(&who, &sub, items).await {
                    return;
                }
                let watches = watches.into_iter().map(|w| (w.task_id, w.from_seq));
                if !cluster.watch_for(&who, &sub, watches).await {
                    return;
                }
            }
        };
        tokio::spawn(reader.instrument(info_span!("submit_many")));

        let shutdown = self.shutdown.clone();
        let stream = futures::stream::unfold(Some(subscription), move |state| {
            let shutdown = shutdown.clone();
            async move {
                let mut subscription = state?;
                let first = tokio::select! {
                    d = streams::next(&mut subscription) => d,
                    () = shutdown.cancelled() => {
                        return Some((Err(Status::unavailable("the head is shutting down")), None));
                    }
                };
                let Some(first) = first else {
                    return subscription.was_cut().then(|| (Err(streams::cut_off()), None));
                };
                let mut response = pb::SubmitManyResponse::default();
                add_delivery(&mut response, first);
                for _ in 1..BATCH {
                    match subscription.rx.try_recv() {
                        Ok(d) => add_delivery(&mut response, d),
                        Err(_) => break,
                    }
                }
                Some((Ok(response), Some(subscription)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchTaskStream = EventStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let follow = self.cluster.follow(&who, &r.task_id, r.from_seq)?;
        Ok(Response::new(streams::task_events(follow, self.shutdown.clone())))
    }

    async fn reply_to_task(
        &self,
        request: Request<pb::ReplyToTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let who = who(&request)?;
        let request = request.into_inner();
        let (id, context) = (request.task_id.clone(), request.context_id.clone());
        let seq = request.request_seq;
        let info = self.cluster.reply(&who, &id, &context, request.into(), seq)?;
        // The answer promises the reply was taken: not before it is stored.
        self.cluster.stored_up_to(&id, info.events).await?;
        Ok(Response::new(info.into()))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let who = who(&request)?;
        let info = self.cluster.cancel(&who, &request.into_inner().task_id)?;
        // A queued task's cancel is its last event: answered once that is stored.
        self.cluster.stored_so_far().await?;
        Ok(Response::new(info.into()))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let who = who(&request)?;
        Ok(Response::new(self.cluster.task(&who, &request.into_inner().task_id)?.into()))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let after = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| {
                Status::invalid_argument(
                    "page_token is not one this head issued: pass next_page_token back unchanged",
                )
            })?
        };
        let filter = TaskFilter {
            tenant: None,
            agent: (!r.agent.is_empty()).then_some(r.agent),
            context_id: (!r.context_id.is_empty()).then_some(r.context_id),
            state: state_filter(r.state)?,
            page_size: if r.page_size == 0 { 100 } else { r.page_size as usize },
            after,
            newest_first: r.newest_first,
            ..Default::default()
        };
        let page = self.cluster.list_tasks(&who, &filter);
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page.tasks.into_iter().map(Into::into).collect(),
            next_page_token: page.next_after.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.cluster.status_for(&who(&request)?).into()))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let publisher = if r.publisher.is_empty() { "client".to_owned() } else { r.publisher };
        let mut bodies = r.more_bodies;
        bodies.insert(0, r.body);
        // The latest go to the mesh too, for agents reading the topic in their prompts (a
        // prompt shows the last few; a batch's earlier ones would never be seen there).
        let to_mesh: Vec<String> =
            bodies.iter().skip(bodies.len().saturating_sub(MESH_RELAYED)).cloned().collect();
        let offset = self.cluster.publish_to_log(&who, &r.topic, &publisher, bodies).await?;
        if self.cluster.has_mesh() {
            for body in to_mesh {
                // Best effort: the log has it; a mesh without the topic's readers is fine.
                let _ = self.cluster.publish(&who, r.topic.clone(), publisher.clone(), body);
            }
        }
        Ok(Response::new(pb::PublishResponse { offset, ..Default::default() }))
    }

    type FollowTopicStream = TopicStream;

    async fn follow_topic(
        &self,
        request: Request<pb::FollowTopicRequest>,
    ) -> Result<Response<Self::FollowTopicStream>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        check_topic(&r.topic)?;
        let shutdown = self.shutdown.clone();
        if r.worker_id.is_empty() {
            let group = (!r.group.is_empty()).then_some(r.group);
            let follower = self.cluster.follow_log(&who, &r.topic, r.from_offset, group).await?;
            let stream = futures::stream::unfold(follower, |mut follower| async move {
                let batch = follower.next().await;
                Some((futures::stream::iter(batch.into_iter().map(|m| Ok(m.into()))), follower))
            })
            .flatten();
            return Ok(Response::new(Box::pin(stream.take_until(shutdown.cancelled_owned()))));
        }
        if r.from_offset.is_some() || !r.group.is_empty() {
            return Err(Status::invalid_argument(
                "a follow through a worker (worker_id) has no offsets or groups: leave it empty \
                 to follow the topic's log",
            ));
        }
        let messages = self.cluster.follow_topic(&who, &r.topic, &r.worker_id)?;
        let stream = futures::stream::unfold(Some(messages), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(m) => Some((Ok(pb::TopicMessage::from((*m).clone())), Some(rx))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(Status::resource_exhausted(format!(
                        "this follower fell {n} messages behind and was cut off: read faster or follow again"
                    ))),
                    None,
                )),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => Some((
                    Err(Status::unavailable(
                        "the worker relaying this topic left the cluster: follow again",
                    )),
                    None,
                )),
            }
        });
        Ok(Response::new(Box::pin(stream.take_until(shutdown.cancelled_owned()))))
    }

    async fn ack_topic(
        &self,
        request: Request<pb::AckTopicRequest>,
    ) -> Result<Response<pb::AckTopicResponse>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let committed = self.cluster.ack_topic(&who, &r.topic, &r.group, &r.offsets).await?;
        Ok(Response::new(pb::AckTopicResponse { committed }))
    }

    type HostToolsStream = HostStream;

    async fn host_tools(
        &self,
        request: Request<Streaming<pb::ToolHostMessage>>,
    ) -> Result<Response<Self::HostToolsStream>, Status> {
        let who = who(&request)?;
        let inbound = request.into_inner();
        let (host, calls) = self.cluster.host_tools(&who)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let session = serve_tool_host(host, calls, inbound, tx, self.shutdown.clone());
        tokio::spawn(session.instrument(info_span!("host_tools")));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let (listed, truncated) =
            self.cluster.list_conversations(&who, &r.context_id, &r.agent, r.page_size);
        let conversations = listed.into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListConversationsResponse { conversations, truncated }))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let c = self.cluster.conversation(&who, &r.context_id, &r.agent)?;
        Ok(Response::new(c.into()))
    }

    async fn delete_conversation(
        &self,
        request: Request<pb::DeleteConversationRequest>,
    ) -> Result<Response<pb::DeleteConversationResponse>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let deleted = self.cluster.delete_conversations(&who, &r.context_id, &r.agent).await?;
        Ok(Response::new(pb::DeleteConversationResponse {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn get_actor_state(
        &self,
        request: Request<pb::GetActorStateRequest>,
    ) -> Result<Response<pb::ActorStateInfo>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let record = self.cluster.actor_state(&who, &r.agent, &r.context_id)?;
        Ok(Response::new(record.info(true)))
    }

    async fn list_actor_states(
        &self,
        request: Request<pb::ListActorStatesRequest>,
    ) -> Result<Response<pb::ListActorStatesResponse>, Status> {
        let who = who(&request)?;
        let r = request.into_inner();
        let (listed, truncated) =
            self.cluster.list_actor_states(&who, &r.agent, &r.context_id, r.page_size);
        let actors = listed.into_iter().map(|a| a.info(false)).collect();
        Ok(Response::new(pb::ListActorStatesResponse { actors, truncated }))
    }
}

type HostStream = Pin<Box<dyn Stream<Item = Result<pb::ToolHostCommand, Status>> + Send>>;

/// One tool-hosting client: its registrations and answers in, its calls out, until either
/// side ends (the host is gone then, and its unanswered calls end with an error).
async fn serve_tool_host(
    host: crate::cluster::ToolHost,
    mut calls: crate::cluster::ToolCalls,
    mut inbound: Streaming<pb::ToolHostMessage>,
    tx: tokio::sync::mpsc::Sender<Result<pb::ToolHostCommand, Status>>,
    shutdown: CancellationToken,
) {
    use pb::tool_host_command::Kind as Out;
    use pb::tool_host_message::Kind as In;
    loop {
        let out = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::ToolHostMessage { kind: Some(In::Register(r)) })) => {
                    let tools = r.tools.into_iter().map(Into::into).collect();
                    // A refused registration leaves the stream and the host's other tools be.
                    let registered = match host.register(tools) {
                        Ok(names) => pb::ToolsRegistered { names, error: String::new() },
                        Err(e) => pb::ToolsRegistered { names: Vec::new(), error: e.to_string() },
                    };
                    Ok(Out::Registered(registered))
                }
                Ok(Some(pb::ToolHostMessage { kind: Some(In::Answer(a)) })) => {
                    host.answer(a.call, a.output, a.is_error);
                    continue;
                }
                Ok(Some(pb::ToolHostMessage { kind: None })) => Err(Status::invalid_argument(
                    "a tool host message needs register or answer set",
                )),
                Ok(None) => return,
                Err(status) => {
                    debug!(%status, "tool host stream ended with an error");
                    return;
                }
            },
            command = calls.next() => match command {
                Some(crate::tools::HostCommand::Invoke(i)) => Ok(Out::Invoke(i.into())),
                Some(crate::tools::HostCommand::Canceled { call }) => {
                    Ok(Out::Canceled(pb::ToolCallCanceled { call }))
                }
                None => Err(Status::unavailable("the head is shutting down")),
            },
            () = tx.closed() => return,
            () = shutdown.cancelled() => Err(Status::unavailable("the head is shutting down")),
        };
        let end = out.is_err();
        let message = out.map(|kind| pb::ToolHostCommand { kind: Some(kind) });
        if tx.send(message).await.is_err() || end {
            return;
        }
    }
}

/// The latest messages of a client's publish handed to the mesh as well.
const MESH_RELAYED: usize = 32;

type TopicStream = Pin<Box<dyn Stream<Item = Result<pb::TopicMessage, Status>> + Send>>;

/// The principal the auth layer resolved for the request.
fn who<T>(request: &Request<T>) -> Result<Principal, Status> {
    Ok(crate::auth::principal_of(request.extensions())?)
}

fn check_topic(topic: &str) -> Result<(), Status> {
    if crate::agents::valid_name(topic) {
        Ok(())
    } else {
        Err(Status::invalid_argument("topic must be 1 to 64 letters, digits, '-', '_' or '.'"))
    }
}

fn add_delivery(response: &mut pb::SubmitManyResponse, delivery: Delivery) {
    match delivery {
        Delivery::Accepted { client_ref, task_id, existing } => {
            response.acks.push(pb::SubmitAck {
                client_ref,
                task_id: task_id.to_string(),
                existing,
                ..Default::default()
            });
        }
        Delivery::Rejected { client_ref, error } => response.acks.push(pb::SubmitAck {
            client_ref,
            error_code: error.code() as i32,
            error_message: error.to_string(),
            ..Default::default()
        }),
        Delivery::Event(e) => response.events.push(pb::TaskEvent::from(&*e)),
        Delivery::WatchRefused { task_id, error } => {
            response.refused_watches.push(pb::WatchRefusal {
                task_id,
                error_code: error.code() as i32,
                error_message: error.to_string(),
            });
        }
    }
}
