//! The A2A operations both bindings share: send (blocking or not), stream, get, list,
//! cancel and subscribe, on top of the cluster's tasks and event logs.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{EventKind, FilePart, Reply, TaskId};
use futures::Stream;
use serde_json::{Value, json};

use super::errors::A2aError;
use super::message::{incoming, is_text};
use super::push::PushConfig;
use super::{A2a, Version, render};
use crate::cluster::{Exchange, Follow, NewTask, TaskFilter, TaskInfo};
use crate::tasks::Subscriber;

/// How long CancelTask waits for the worker to confirm before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// The task `id` if it belongs to `agent`.
fn task_of(a2a: &A2a, agent: &str, id: &str) -> Result<TaskInfo, A2aError> {
    match a2a.cluster.task(&a2a.who, id) {
        Ok(info) if info.agent == agent => Ok(info),
        _ => Err(A2aError::task_not_found(id)),
    }
}

/// The tenant a request names (A2A 1.0's `tenant`), checked: a principal may name only its
/// own (an admin any); none named: the principal's scope as it is.
pub fn check_tenant(a2a: &A2a, params: &Value) -> Result<Option<String>, A2aError> {
    let Some(tenant) = params.get("tenant").and_then(Value::as_str).filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    if !a2a.who.sees(tenant) {
        return Err(A2aError::from(crate::Error::PermissionDenied(format!(
            "tenant {tenant:?} is not {:?}'s: leave tenant out, or name {:?}",
            a2a.who.name(),
            a2a.who.tenant()
        ))));
    }
    Ok(Some(tenant.to_owned()))
}

/// Fails unless `agent` is registered.
pub fn check_agent(a2a: &A2a, agent: &str) -> Result<(), A2aError> {
    if a2a.cluster.agent(&a2a.who, agent).is_some() {
        Ok(())
    } else {
        Err(A2aError::agent_not_found(format!(
            "no agent named {agent:?} on this cluster: see /.well-known/agent-card.json"
        )))
    }
}

/// The earlier turns of `info`'s conversation (same agent and context), oldest first.
fn earlier_turns(a2a: &A2a, info: &TaskInfo, v: Version) -> Vec<Value> {
    if info.context_id.is_empty() {
        return Vec::new();
    }
    let filter = TaskFilter {
        tenant: Some(info.tenant.to_string()),
        agent: Some(info.agent.clone()),
        context_id: Some(info.context_id.clone()),
        page_size: 1000,
        ..Default::default()
    };
    let page = a2a.cluster.list_tasks(&a2a.who, &filter);
    page.tasks.iter().filter(|t| t.number < info.number).flat_map(|t| render::turn(t, v)).collect()
}

/// Renders a task with its conversation.
pub fn render_task(a2a: &A2a, info: &TaskInfo, history_length: Option<usize>, v: Version) -> Value {
    render::task(info, earlier_turns(a2a, info, v), history_length, v)
}

fn history_length(config: Option<&Value>) -> Result<Option<usize>, A2aError> {
    match config.and_then(|c| c.get("historyLength")) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            A2aError::invalid_params("historyLength must be a non-negative integer")
        }),
    }
}

/// Submits the message of `params` as a task of `agent` (followed by `subscriber` from its
/// first event, if given); returns its id. A push config in the request's configuration is
/// registered for the new task.
fn submit(
    a2a: &A2a,
    agent: &str,
    params: &Value,
    subscriber: Option<Subscriber>,
) -> Result<String, A2aError> {
    let config = params.get("configuration");
    let push = config
        .and_then(|c| {
            c.get("taskPushNotificationConfig").or_else(|| c.get("pushNotificationConfig"))
        })
        .filter(|p| p.is_object());
    // Read before submitting, so that a bad config does not leave a task behind.
    let push = push.map(|raw| PushConfig::from_json("", raw)).transpose()?;
    if let Some(config) = &push {
        a2a.webhooks.check_target(config)?;
    }
    let id = submit_message(a2a, agent, params, subscriber)?;
    if let Some(config) = push {
        a2a.webhooks.set(a2a, PushConfig { task_id: id.clone(), ..config })?;
    }
    Ok(id)
}

/// A message to task `task_id` (of `agent`): the client's reply to the question it waits on
/// (a message without a contextId is the task's). Once the reply's event is stored, returns
/// its seq and a subscription to the task's events after it.
async fn reply(
    a2a: &A2a,
    agent: &str,
    task_id: &str,
    params: &Value,
) -> Result<(Follow, u64), A2aError> {
    check_agent(a2a, agent)?;
    let message = incoming(params)?;
    task_of(a2a, agent, task_id)?;
    if !message.files.is_empty() {
        return Err(A2aError::content_type(
            "a reply to a task's question is text: send it as text parts, not files",
        ));
    }
    let push = params
        .get("configuration")
        .and_then(|c| {
            c.get("taskPushNotificationConfig").or_else(|| c.get("pushNotificationConfig"))
        })
        .filter(|p| p.is_object())
        .map(|raw| PushConfig::from_json(task_id, raw))
        .transpose()?;
    if let Some(config) = &push {
        a2a.webhooks.check_target(config)?;
    }
    // Set before the reply is taken: a config refused fails the request before it does.
    if let Some(config) = push {
        a2a.webhooks.set(a2a, config)?;
    }
    let context_id = message.context_id.as_deref().unwrap_or_default();
    let replied = a2a.cluster.reply(&a2a.who, task_id, context_id, Reply::Text(message.text), 0)?;
    let seq = replied.events;
    let mut follow = a2a.cluster.follow(&a2a.who, task_id, seq)?;
    // The answer promises the reply was taken: not before it is stored.
    if follow.next().await.is_some() {
        return Ok((follow, seq));
    }
    Err(A2aError::from(crate::Error::Unsupported(format!(
        "task {task_id} stopped being followed before the reply was stored: get it with GetTask"
    ))))
}

fn submit_message(
    a2a: &A2a,
    agent: &str,
    params: &Value,
    subscriber: Option<Subscriber>,
) -> Result<String, A2aError> {
    check_agent(a2a, agent)?;
    let message = incoming(params)?;
    let context_id = message.context_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (input, files) = if a2a.cluster.takes_files(agent) {
        (message.text, message.files)
    } else {
        (with_text_files(agent, message.text, &message.files)?, Vec::new())
    };
    let options = (!files.is_empty())
        .then(|| Arc::new(fleet_proto::TaskOptions { files, ..Default::default() }));
    let task = NewTask {
        agent: agent.to_owned(),
        input,
        context_id,
        options,
        traceparent: crate::traceparent::incoming(),
        ..Default::default()
    };
    Ok(a2a.cluster.submit(&a2a.who, task, subscriber.map(|s| (s, None)))?.to_string())
}

/// The input of a model agent: the text, then each file, which must read as text (a model
/// reads its prompt; a Python agent takes files of any kind as they are).
fn with_text_files(agent: &str, text: String, files: &[FilePart]) -> Result<String, A2aError> {
    let mut input = text;
    for file in files {
        let name = if file.name.is_empty() { "unnamed" } else { file.name.as_str() };
        let refused = |why: &str| {
            A2aError::content_type(format!(
                "agent {agent} reads text: file {name} ({}) {why}; send text, data or text files \
                 (text/*, JSON, XML, YAML) as bytes, or give the file to a Python agent",
                file.media_type
            ))
        };
        if !file.url.is_empty() {
            return Err(refused("is a URL, which the agent cannot fetch"));
        }
        if !is_text(&file.media_type) {
            return Err(refused("is not text"));
        }
        let Ok(content) = std::str::from_utf8(&file.data) else {
            return Err(refused("is not UTF-8 text"));
        };
        if !input.is_empty() {
            input.push_str("\n\n");
        }
        input.push_str(&format!("File {name} ({}):\n{content}", file.media_type));
    }
    Ok(input)
}

/// Follows the task until it reaches a state that ends an A2A exchange.
async fn wait_for_end(mut follow: Follow, deadline: Option<Duration>) {
    let wait = async {
        while let Some(e) = follow.next().await {
            if e.kind.state_after().is_some_and(render::ends_stream) {
                return;
            }
        }
    };
    match deadline {
        Some(d) => drop(tokio::time::timeout(d, wait).await),
        None => wait.await,
    }
}

/// SendMessage / message/send: waits for the end of the task unless asked to return at once.
pub async fn send(a2a: &A2a, agent: &str, params: &Value, v: Version) -> Result<Value, A2aError> {
    check_tenant(a2a, params)?;
    let config = params.get("configuration");
    let history_length = history_length(config)?;
    let return_immediately = match v {
        Version::V1 => config
            .and_then(|c| c.get("returnImmediately"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Version::V03 => {
            !config.and_then(|c| c.get("blocking")).and_then(Value::as_bool).unwrap_or(true)
        }
    };
    let id = match incoming(params)?.task_id {
        Some(task_id) => {
            let (follow, _) = reply(a2a, agent, &task_id, params).await?;
            if !return_immediately {
                wait_for_end(follow, None).await;
            }
            task_id
        }
        None => {
            let id = submit(a2a, agent, params, None)?;
            // The answer promises the task exists, and its push config if it came with
            // one: not before both are stored (the config is journaled after the task).
            a2a.cluster.stored_so_far().await?;
            if !return_immediately {
                let (info, follow) = a2a.cluster.snapshot_and_follow(&a2a.who, &id)?;
                if !render::ends_stream(info.state) {
                    wait_for_end(follow, None).await;
                }
            }
            id
        }
    };
    let info = task_of(a2a, agent, &id)?;
    let task = render_task(a2a, &info, history_length, v);
    Ok(match v {
        Version::V1 => json!({"task": task}),
        Version::V03 => task,
    })
}

/// SendStreamingMessage / message/stream: the task, then its updates until it ends.
pub async fn stream(
    a2a: &A2a,
    agent: &str,
    params: &Value,
    v: Version,
) -> Result<impl Stream<Item = Value> + use<>, A2aError> {
    check_tenant(a2a, params)?;
    // Followed from its first event, which comes once the task is stored (the stream's
    // first item promises it exists); the stream starts with the task as it was then.
    if let Some(task_id) = incoming(params)?.task_id {
        // A reply: the task as the reply left it (working again), then the rest.
        let (follow, seq) = reply(a2a, agent, &task_id, params).await?;
        let info = a2a.cluster.task_as_of(&a2a.who, &task_id, seq)?;
        return Ok(updates(a2a, info, follow, v));
    }
    let (sub, subscription) = a2a.cluster.subscriber();
    let id = submit(a2a, agent, params, Some(sub))?;
    let mut follow =
        Follow::new(a2a.cluster.clone(), a2a.who.clone(), TaskId::new(id.clone()), subscription, 0);
    let _submitted = follow.next().await;
    // A push config that came with the message is journaled after the task: stored too.
    a2a.cluster.stored_so_far().await?;
    let info = a2a.cluster.task_as_of(&a2a.who, &id, 1)?;
    Ok(updates(a2a, info, follow, v))
}

/// SubscribeToTask / tasks/resubscribe: the task as it is now, then its remaining updates.
pub fn subscribe(
    a2a: &A2a,
    agent: &str,
    id: &str,
    v: Version,
) -> Result<impl Stream<Item = Value> + use<>, A2aError> {
    task_of(a2a, agent, id)?;
    let (info, follow) = a2a.cluster.snapshot_and_follow(&a2a.who, id)?;
    if render::ends_stream(info.state) {
        return Err(A2aError::unsupported(format!(
            "task {id:?} is already {}: get it with GetTask",
            render::state(info.state, Version::V03)
        )));
    }
    Ok(updates(a2a, info, follow, v))
}

/// The stream of an A2A exchange: the task first, then status updates and artifact chunks,
/// ending with the task's terminal or interrupted state.
fn updates(
    a2a: &A2a,
    info: TaskInfo,
    follow: Follow,
    v: Version,
) -> impl Stream<Item = Value> + use<> {
    let first = render::stream_task(render_task(a2a, &info, None, v), v);
    let ended = render::ends_stream(info.state);
    let chunked = !info.output.is_empty();
    // The reasoning's artifact is open (chunks sent, the closing one not yet).
    let thinking = !info.reasoning.is_empty() && info.output.is_empty();
    let state = (info, follow, chunked, thinking);
    let rest = futures::stream::unfold(Some(state), move |state| async move {
        let (mut info, mut follow, mut chunked, mut thinking) = state?;
        loop {
            // None: the head is stopping or the task left retention; the client may
            // resubscribe.
            let event = follow.next().await?;
            info.attempt = event.attempt;
            if let Some(s) = event.kind.state_after() {
                info.state = s;
            }
            // The answer begins: the reasoning's artifact closes first.
            let answers =
                matches!(event.kind, EventKind::TextDelta { .. } | EventKind::Completed { .. });
            let closing = (answers && std::mem::take(&mut thinking)).then(|| {
                let (id, ctx) = (info.task_id.as_str(), info.context_id.as_str());
                render::reasoning_update(id, ctx, "", true, true, v)
            });
            let item = match &event.kind {
                EventKind::ReasoningDelta { text } => {
                    let append = !info.reasoning.is_empty();
                    info.reasoning.push_str(text);
                    thinking = true;
                    let (id, ctx) = (info.task_id.as_str(), info.context_id.as_str());
                    render::reasoning_update(id, ctx, text, append, false, v)
                }
                EventKind::TextDelta { text, .. } => {
                    info.output.push_str(text);
                    let append = std::mem::replace(&mut chunked, true);
                    render::artifact_update(
                        info.task_id.as_str(),
                        &info.context_id,
                        render::text_parts(text, v),
                        append,
                        false,
                        v,
                    )
                }
                EventKind::Artifact(artifact) => {
                    info.artifacts.push(artifact.clone());
                    let (id, ctx) = (info.task_id.as_str(), info.context_id.as_str());
                    render::returned_artifact_update(id, ctx, artifact, v)
                }
                EventKind::Working => render::status_update(&info, v),
                EventKind::Retrying { .. } => {
                    info.output.clear();
                    info.reasoning.clear();
                    thinking = false;
                    info.artifacts.clear();
                    info.exchanges.clear();
                    chunked = false;
                    render::status_update(&info, v)
                }
                EventKind::InputReceived { text, rejected, .. } => {
                    if let Some(asked) = info.exchanges.last_mut() {
                        (asked.reply, asked.rejected) = (Some(text.clone()), *rejected);
                    }
                    render::status_update(&info, v)
                }
                EventKind::Completed { usage } => {
                    info.usage = *usage;
                    info.finished_at_us = event.timestamp_us;
                    if chunked {
                        // A structured answer's chunks were text; the whole answer replaces
                        // them as its JSON (a data part).
                        let (parts, append) = if info.structured {
                            (render::answer_parts(&info.output, true, v), false)
                        } else {
                            (render::text_parts("", v), true)
                        };
                        let last = render::artifact_update(
                            info.task_id.as_str(),
                            &info.context_id,
                            parts,
                            append,
                            true,
                            v,
                        );
                        let status = render::status_update(&info, v);
                        let items = closing.into_iter().chain([last, status]).collect::<Vec<_>>();
                        return Some((futures::stream::iter(items), None));
                    }
                    render::status_update(&info, v)
                }
                EventKind::Failed { error, .. } | EventKind::Canceled { reason: error } => {
                    info.error.clone_from(error);
                    info.finished_at_us = event.timestamp_us;
                    render::status_update(&info, v)
                }
                EventKind::InputRequired { prompt, .. } => {
                    let asked = Exchange { prompt: prompt.clone(), reply: None, rejected: false };
                    info.exchanges.push(asked);
                    render::status_update(&info, v)
                }
                EventKind::Submitted { .. }
                | EventKind::Scheduled { .. }
                | EventKind::ToolCall { .. }
                | EventKind::ToolResult { .. }
                | EventKind::StateSaved { .. }
                | EventKind::Embeddings { .. } => continue,
            };
            let ends = render::ends_stream(info.state);
            let next = (!ends).then_some((info, follow, chunked, thinking));
            let items = closing.into_iter().chain([item]).collect::<Vec<_>>();
            return Some((futures::stream::iter(items), next));
        }
    });
    let rest = futures::StreamExt::flatten(rest);
    let rest: std::pin::Pin<Box<dyn Stream<Item = Value> + Send>> =
        if ended { Box::pin(futures::stream::empty()) } else { Box::pin(rest) };
    futures::StreamExt::chain(futures::stream::once(async move { first }), rest)
}

/// GetTask / tasks/get.
pub fn get(a2a: &A2a, agent: &str, params: &Value, v: Version) -> Result<Value, A2aError> {
    let id = params
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| A2aError::invalid_params("params.id (the task id) is missing"))?;
    let info = task_of(a2a, agent, id)?;
    Ok(render_task(a2a, &info, history_length(Some(params))?, v))
}

/// CancelTask / tasks/cancel: asks the worker to stop, waits briefly for it to confirm.
pub async fn cancel(a2a: &A2a, agent: &str, params: &Value, v: Version) -> Result<Value, A2aError> {
    let id = params
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| A2aError::invalid_params("params.id (the task id) is missing"))?;
    let info = task_of(a2a, agent, id)?;
    if info.state.is_terminal() {
        return Err(A2aError::not_cancelable(id, render::state(info.state, Version::V03)));
    }
    let (_, follow) = a2a.cluster.snapshot_and_follow(&a2a.who, id)?;
    a2a.cluster.cancel(&a2a.who, id)?;
    a2a.cluster.stored_so_far().await?;
    wait_for_end(follow, Some(CANCEL_WAIT)).await;
    let info = task_of(a2a, agent, id)?;
    Ok(render_task(a2a, &info, None, v))
}

/// ListTasks: filters by contextId and status, pages with pageSize and pageToken.
pub fn list(a2a: &A2a, agent: &str, params: &Value, v: Version) -> Result<Value, A2aError> {
    check_agent(a2a, agent)?;
    let tenant = check_tenant(a2a, params)?;
    let page_size = match params.get("pageSize") {
        None | Some(Value::Null) => 50,
        Some(n) => match n.as_u64().or_else(|| n.as_str().and_then(|s| s.parse().ok())) {
            Some(n @ 1..=100) => n as usize,
            _ => return Err(A2aError::invalid_params("pageSize must be between 1 and 100")),
        },
    };
    let after = match params.get("pageToken").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => token.parse().map_err(|_| {
            A2aError::invalid_params(
                "pageToken is not one this server issued: pass nextPageToken back",
            )
        })?,
    };
    let state = match params.get("status").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        None | Some("TASK_STATE_UNSPECIFIED") => None,
        Some(s) => Some(
            render::parse_state(s)
                .ok_or_else(|| A2aError::invalid_params(format!("unknown status {s:?}")))?,
        ),
    };
    let history_length = history_length(Some(params))?;
    let include_artifacts =
        params.get("includeArtifacts").and_then(Value::as_bool).unwrap_or(false);
    let filter = TaskFilter {
        tenant,
        agent: Some(agent.to_owned()),
        context_id: params
            .get("contextId")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
        state,
        page_size,
        after,
        newest_first: false,
        ..Default::default()
    };
    let page = a2a.cluster.list_tasks(&a2a.who, &filter);
    let tasks: Vec<Value> = page
        .tasks
        .iter()
        .map(|t| {
            let mut task = render::task(t, Vec::new(), history_length, v);
            if !include_artifacts && let Some(obj) = task.as_object_mut() {
                obj.remove("artifacts");
            }
            task
        })
        .collect();
    Ok(json!({
        "tasks": tasks,
        "nextPageToken": page.next_after.map(|n| n.to_string()).unwrap_or_default(),
        "pageSize": page_size,
        "totalSize": page.total,
    }))
}

fn str_param<'a>(params: &'a Value, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| params.get(*n).and_then(Value::as_str)).filter(|s| !s.is_empty())
}

/// The task a push config request is about (1.0: `taskId`; 0.3: `taskId` or `id`).
fn push_task(a2a: &A2a, agent: &str, params: &Value, v: Version) -> Result<String, A2aError> {
    let names: &[&str] = match v {
        Version::V1 => &["taskId"],
        Version::V03 => &["taskId", "id"],
    };
    let id = str_param(params, names)
        .ok_or_else(|| A2aError::invalid_params("the task id (taskId) is missing"))?;
    Ok(task_of(a2a, agent, id)?.task_id.to_string())
}

/// Create/SetTaskPushNotificationConfig.
pub async fn push_create(
    a2a: &A2a,
    agent: &str,
    params: &Value,
    v: Version,
) -> Result<Value, A2aError> {
    a2a.who.may_act()?;
    let task = push_task(a2a, agent, params, v)?;
    let raw = match v {
        Version::V1 => params,
        Version::V03 => params
            .get("pushNotificationConfig")
            .ok_or_else(|| A2aError::invalid_params("pushNotificationConfig is missing"))?,
    };
    let config = a2a.webhooks.set(a2a, PushConfig::from_json(&task, raw)?)?;
    // The answer promises the config is kept: not before it is stored.
    a2a.cluster.stored_so_far().await?;
    Ok(config.to_json(v))
}

/// GetTaskPushNotificationConfig (0.3: the config id is optional: the first one).
pub fn push_get(a2a: &A2a, agent: &str, params: &Value, v: Version) -> Result<Value, A2aError> {
    let task = push_task(a2a, agent, params, v)?;
    let id = match v {
        Version::V1 => str_param(params, &["id"])
            .ok_or_else(|| A2aError::invalid_params("the config id (id) is missing"))?,
        Version::V03 => str_param(params, &["pushNotificationConfigId"]).unwrap_or_default(),
    };
    Ok(a2a.webhooks.get(&task, id)?.to_json(v))
}

/// ListTaskPushNotificationConfigs.
pub fn push_list(a2a: &A2a, agent: &str, params: &Value, v: Version) -> Result<Value, A2aError> {
    let task = push_task(a2a, agent, params, v)?;
    let configs: Vec<Value> = a2a.webhooks.list(&task).iter().map(|c| c.to_json(v)).collect();
    Ok(match v {
        Version::V1 => json!({"configs": configs, "nextPageToken": ""}),
        Version::V03 => Value::Array(configs),
    })
}

/// DeleteTaskPushNotificationConfig.
pub async fn push_delete(
    a2a: &A2a,
    agent: &str,
    params: &Value,
    v: Version,
) -> Result<Value, A2aError> {
    a2a.who.may_act()?;
    let task = push_task(a2a, agent, params, v)?;
    let names: &[&str] = match v {
        Version::V1 => &["id"],
        Version::V03 => &["pushNotificationConfigId"],
    };
    let id = str_param(params, names)
        .ok_or_else(|| A2aError::invalid_params("the config id is missing"))?;
    a2a.webhooks.delete(a2a, &task, id);
    a2a.cluster.stored_so_far().await?;
    Ok(match v {
        Version::V1 => json!({}),
        Version::V03 => Value::Null,
    })
}
