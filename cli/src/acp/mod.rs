//! `fleet acp AGENT`: one of the cluster's agents as an Agent Client Protocol agent on stdio,
//! for editors (Zed and others) that start an agent as a subprocess.
//!
//! A session is one of the head's conversations (its id is the tasks' `context_id`), so the
//! agent remembers a session across prompts, and `session/load` replays one this process
//! never saw. A prompt is a task of the agent; its text, reasoning, tool calls and artifacts
//! stream as `session/update`s; an approval is a `session/request_permission`, a question
//! an `elicitation/create` form (or, for an editor without forms, the turn's last message,
//! answered by the next prompt); `session/cancel` cancels the task.
//!
//! - [`rpc`]: JSON-RPC framing on stdio, requests both ways;
//! - [`prompt`]: a prompt's content blocks as a task's input;
//! - [`turn`]: one prompt turn, following its task;
//! - [`updates`]: a task's events as session updates.

pub mod prompt;
pub mod rpc;
pub mod turn;
pub mod updates;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fleet_client::{Client, TaskState, pb};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use rpc::{Line, Message, Peer, RpcError};
use turn::{Outcome, Question, head_error};
use updates::{call_id_on_wire, chunk, raw_input};

/// The ACP version spoken.
pub const PROTOCOL_VERSION: u64 = 1;

/// How long turns still running when the editor goes get to cancel their tasks.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Sessions open in one process at most (each is small; an editor closes those it is done
/// with).
pub const MAX_OPEN_SESSIONS: usize = 10_000;

/// Serves ACP on `input` and `output` for `agent` until `input` ends; turns still running
/// then are cancelled (no one is left to read them).
pub async fn serve(
    client: Client,
    agent: String,
    input: impl AsyncRead + Unpin,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        let mut output = output;
        while let Some(line) = rx.recv().await {
            output.write_all(line.as_bytes()).await?;
            output.write_all(b"\n").await?;
            output.flush().await?;
        }
        std::io::Result::Ok(())
    });
    let server = Arc::new(Server::new(client, agent, Peer::new(tx)));
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    let mut requests = JoinSet::new();
    loop {
        match rpc::read_line(&mut input, &mut line, rpc::MAX_LINE_BYTES).await? {
            Line::End => break,
            Line::TooLong => {
                let e = RpcError::invalid_request(format!(
                    "a message longer than {} MiB was skipped",
                    rpc::MAX_LINE_BYTES >> 20
                ));
                server.peer.respond(Value::Null, Err(e)).await;
                continue;
            }
            Line::Read if line.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Read => {}
        }
        match rpc::parse(&line) {
            Err(bad) => {
                let (id, e) = *bad;
                server.peer.respond(id, Err(e)).await;
            }
            Ok(Message::Response { id, outcome }) => {
                server.peer.answered(&id, outcome);
            }
            Ok(Message::Notification { method, params }) => server.notified(&method, &params),
            Ok(Message::Request { id, method, params }) => {
                let server = server.clone();
                requests.spawn(async move {
                    let outcome = server.handle(&method, params).await;
                    server.peer.respond(id, outcome).await;
                });
            }
        }
        while requests.try_join_next().is_some() {}
    }
    // The editor is gone: close every session (which cancels their turns' tasks).
    server.sessions.lock().unwrap_or_else(|p| p.into_inner()).clear();
    server.peer.close();
    let _ =
        tokio::time::timeout(CLOSE_GRACE, async { while requests.join_next().await.is_some() {} })
            .await;
    drop(server);
    writer.await??;
    Ok(())
}

/// A session open in this process.
struct Session {
    cwd: String,
    /// The running turn's cancel: true on `session/cancel`, dropped when the session closes.
    turn: Option<watch::Sender<bool>>,
    /// The question the session's next prompt answers.
    question: Option<Question>,
}

impl Session {
    fn new(cwd: &str) -> Self {
        Self { cwd: cwd.to_owned(), turn: None, question: None }
    }
}

/// The agent side of one editor's connection.
pub struct Server {
    client: Client,
    agent: String,
    peer: Peer,
    sessions: Mutex<HashMap<String, Session>>,
    /// The editor takes form elicitations (`clientCapabilities.elicitation.form`).
    forms: AtomicBool,
}

impl Server {
    fn new(client: Client, agent: String, peer: Peer) -> Self {
        let sessions = Mutex::new(HashMap::new());
        Self { client, agent, peer, sessions, forms: AtomicBool::new(false) }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn takes_forms(&self) -> bool {
        self.forms.load(Ordering::Relaxed)
    }

    async fn update(&self, session: &str, update: Value) {
        self.peer.notify("session/update", json!({"sessionId": session, "update": update})).await;
    }

    async fn handle(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        if !params.is_object() {
            return Err(RpcError::invalid_params("params", "an object"));
        }
        match method {
            "initialize" => self.initialize(&params),
            "authenticate" => Err(RpcError::invalid_params(
                "methodId",
                "this agent offers no authentication methods: the head's token comes from \
                 FLEET_TOKEN or `fleet acp --token`",
            )),
            "session/new" => self.new_session(&params).await,
            "session/load" => self.open_session(&params, true).await,
            "session/resume" => self.open_session(&params, false).await,
            "session/list" => self.list_sessions(&params).await,
            "session/close" => self.close_session(&params).map(|_| json!({})),
            "session/delete" => {
                let id = self.close_session(&params).or_else(|_| string(&params, "sessionId"))?;
                self.client.delete_conversation(&id, &self.agent).await.map_err(head_error)?;
                Ok(json!({}))
            }
            "session/prompt" => self.prompt(&params).await,
            other => Err(RpcError::method_not_found(other)),
        }
    }

    fn notified(&self, method: &str, params: &Value) {
        // Notifications get no answer, so one that cannot be read is dropped.
        if method == "session/cancel"
            && let Some(id) = params.get("sessionId").and_then(Value::as_str)
            && let Some(turn) = self.sessions().get(id).and_then(|s| s.turn.as_ref())
        {
            turn.send_replace(true);
        }
    }

    fn initialize(&self, params: &Value) -> Result<Value, RpcError> {
        if params.get("protocolVersion").and_then(Value::as_u64).is_none() {
            return Err(RpcError::invalid_params(
                "protocolVersion",
                "an integer (this agent speaks 1)",
            ));
        }
        let forms = params.pointer("/clientCapabilities/elicitation/form");
        self.forms.store(forms.is_some_and(Value::is_object), Ordering::Relaxed);
        Ok(json!({
            // An editor asking for a later version gets ours and decides.
            "protocolVersion": PROTOCOL_VERSION,
            "agentCapabilities": {
                "loadSession": true,
                "promptCapabilities": {"image": false, "audio": false, "embeddedContext": true},
                "mcpCapabilities": {"http": false, "sse": false},
                "sessionCapabilities": {"list": {}, "resume": {}, "close": {}, "delete": {}},
            },
            "authMethods": [],
            "agentInfo": {
                "name": "agentfleet",
                "title": format!("agentfleet: {}", self.agent),
                "version": env!("CARGO_PKG_VERSION"),
            },
        }))
    }

    /// A session's `cwd`, and a note for MCP servers the editor offers: the agent runs on
    /// the cluster's workers, which cannot reach the editor's.
    fn cwd_of(&self, params: &Value) -> Result<String, RpcError> {
        let cwd = string(params, "cwd")?;
        if !Path::new(&cwd).is_absolute() {
            return Err(RpcError::invalid_params("cwd", "an absolute path"));
        }
        if params.get("mcpServers").and_then(Value::as_array).is_some_and(|s| !s.is_empty()) {
            eprintln!(
                "fleet acp: the editor's MCP servers are not used: agent {} runs on the \
                 cluster's workers, with the tools its spec gives it",
                self.agent
            );
        }
        Ok(cwd)
    }

    async fn new_session(&self, params: &Value) -> Result<Value, RpcError> {
        let cwd = self.cwd_of(params)?;
        let agents = self.client.list_agents().await.map_err(head_error)?;
        let name = |a: &pb::AgentInfo| a.spec.as_ref().map_or("", |s| s.name.as_str()).to_owned();
        if !agents.iter().any(|a| name(a) == self.agent) {
            let names: Vec<String> = agents.iter().take(20).map(name).collect();
            return Err(RpcError::not_found(format!(
                "the head has no agent {:?} (it has: {})",
                self.agent,
                names.join(", ")
            )));
        }
        let id = format!("acp-{}", uuid::Uuid::new_v4().simple());
        let mut sessions = self.sessions();
        room_for_one(&sessions, &id)?;
        sessions.insert(id.clone(), Session::new(&cwd));
        Ok(json!({"sessionId": id}))
    }

    /// `session/load` (with `replay`: the conversation is sent again as updates first) and
    /// `session/resume`: a session the head keeps, or one open here.
    async fn open_session(&self, params: &Value, replays: bool) -> Result<Value, RpcError> {
        let id = string(params, "sessionId")?;
        let cwd = self.cwd_of(params)?;
        let open_here = self.sessions().contains_key(&id);
        match self.client.get_conversation(&id, &self.agent).await {
            Ok(conversation) if replays => {
                for update in replay(&conversation.turns) {
                    self.update(&id, update).await;
                }
            }
            Ok(_) => {}
            Err(e) if e.code() == fleet_client::Code::NotFound && open_here => {}
            Err(e) if e.code() == fleet_client::Code::NotFound => {
                return Err(RpcError::not_found(format!(
                    "no session {id:?} with agent {}: session/list names those the head keeps",
                    self.agent
                )));
            }
            Err(e) => return Err(head_error(e)),
        }
        // A question asked before (in this process or another) is still the next prompt's.
        let question = self.waiting_question(&id).await?;
        if let Some((_, text)) = &question
            && replays
        {
            self.update(&id, chunk("agent_message_chunk", json!({"type": "text", "text": text})))
                .await;
        }
        let mut sessions = self.sessions();
        room_for_one(&sessions, &id)?;
        let session = sessions.entry(id).or_insert_with(|| Session::new(&cwd));
        session.cwd = cwd;
        if session.turn.is_none() {
            session.question = question.map(|(q, _)| q);
        }
        Ok(json!({}))
    }

    /// The question a task of the session waits on, and its text.
    async fn waiting_question(
        &self,
        session: &str,
    ) -> Result<Option<(Question, String)>, RpcError> {
        let request = pb::ListTasksRequest {
            agent: self.agent.clone(),
            state: pb::TaskState::from(TaskState::InputRequired) as i32,
            page_size: 1,
            newest_first: true,
            context_id: session.to_owned(),
            page_token: String::new(),
        };
        let listed = self.client.list_tasks(request).await.map_err(head_error)?;
        let Some(task) = listed.tasks.first() else { return Ok(None) };
        // The task's last event is the question it waits on.
        let mut events =
            self.client.watch(&task.task_id, task.events.max(1)).await.map_err(head_error)?;
        match events.next().await {
            Some(Ok(e)) => match e.kind {
                fleet_client::EventKind::InputRequired { prompt, tool, .. } if tool.is_empty() => {
                    Ok(Some((Question { task: task.task_id.clone(), seq: e.seq }, prompt)))
                }
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    async fn list_sessions(&self, params: &Value) -> Result<Value, RpcError> {
        if params.get("cursor").is_some_and(|c| !c.is_null()) {
            return Err(RpcError::invalid_params(
                "cursor",
                "this agent lists in one page and gives no cursor",
            ));
        }
        let filter = params.get("cwd").and_then(Value::as_str);
        let listed =
            self.client.list_conversations("", &self.agent, 1000).await.map_err(head_error)?;
        // The head keeps no working directory: a session opened here has its own, any other
        // the directory `fleet acp` runs in.
        let here = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
        let sessions = self.sessions();
        let list: Vec<Value> = listed
            .conversations
            .iter()
            .filter_map(|c| {
                let cwd = sessions.get(&c.context_id).map_or(here.as_str(), |s| s.cwd.as_str());
                if filter.is_some_and(|f| f != cwd) && sessions.contains_key(&c.context_id) {
                    return None;
                }
                let updated = UNIX_EPOCH + Duration::from_micros(c.updated_at_us);
                Some(json!({
                    "sessionId": c.context_id,
                    "cwd": cwd,
                    "updatedAt": humantime::format_rfc3339_millis(updated).to_string(),
                }))
            })
            .collect();
        Ok(json!({"sessions": list}))
    }

    /// Forgets a session open here (cancelling its turn); its id.
    fn close_session(&self, params: &Value) -> Result<String, RpcError> {
        let id = string(params, "sessionId")?;
        match self.sessions().remove(&id) {
            Some(_) => Ok(id),
            None => Err(RpcError::not_found(format!("no session {id:?} is open"))),
        }
    }

    async fn prompt(&self, params: &Value) -> Result<Value, RpcError> {
        let id = string(params, "sessionId")?;
        let input = prompt::read(params.get("prompt").unwrap_or(&Value::Null))?;
        let (cancel, cancelled) = watch::channel(false);
        let question = {
            let mut sessions = self.sessions();
            let Some(session) = sessions.get_mut(&id) else {
                return Err(RpcError::not_found(format!(
                    "no session {id:?} is open: session/new, session/load or session/resume first"
                )));
            };
            if session.turn.is_some() {
                return Err(RpcError::invalid_request(
                    "a prompt turn is running in this session: wait for its answer or \
                     session/cancel it",
                ));
            }
            session.turn = Some(cancel);
            session.question.take()
        };
        let outcome = turn::run(self, &id, input, question, cancelled).await;
        if let Some(session) = self.sessions().get_mut(&id) {
            session.turn = None;
            if let Ok(Outcome::Asked(q)) = &outcome {
                session.question = Some(q.clone());
            }
        }
        match outcome? {
            Outcome::Asked(q) => Ok(json!({
                "stopReason": "end_turn",
                "_meta": {"agentfleet": {"taskId": q.task, "waitsForAnswer": true}},
            })),
            Outcome::Stopped { reason, task, usage } => {
                let mut meta = json!({"taskId": task});
                if let Some(u) = usage {
                    meta["usage"] = json!({
                        "promptTokens": u.prompt_tokens,
                        "completionTokens": u.completion_tokens,
                        "cachedTokens": u.cached_tokens,
                        "reasoningTokens": u.reasoning_tokens,
                    });
                }
                Ok(json!({"stopReason": reason, "_meta": {"agentfleet": meta}}))
            }
        }
    }
}

/// Refuses to open a session past [`MAX_OPEN_SESSIONS`] (one open already is no new one).
fn room_for_one(sessions: &HashMap<String, Session>, id: &str) -> Result<(), RpcError> {
    if sessions.len() >= MAX_OPEN_SESSIONS && !sessions.contains_key(id) {
        return Err(RpcError::invalid_request(format!(
            "{MAX_OPEN_SESSIONS} sessions are open in this process: session/close some first"
        )));
    }
    Ok(())
}

/// A required string parameter.
fn string(params: &Value, field: &str) -> Result<String, RpcError> {
    match params.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(RpcError::invalid_params(field, "a string")),
        None => Err(RpcError::invalid_params(field, "missing")),
    }
}

/// A stored conversation as the updates that show it again. Call ids get their turn's
/// index: the calls of different tasks may share ids.
fn replay(turns: &[pb::Turn]) -> Vec<Value> {
    let text = |t: &str| json!({"type": "text", "text": t});
    let mut calls: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        match turn.role.as_str() {
            "user" if !turn.content.is_empty() => {
                out.push(chunk("user_message_chunk", text(&turn.content)));
            }
            "assistant" => {
                if !turn.content.is_empty() {
                    out.push(chunk("agent_message_chunk", text(&turn.content)));
                }
                for call in &turn.tool_calls {
                    let wire = call_id_on_wire(&format!("h{i}"), &call.call_id);
                    out.push(json!({
                        "sessionUpdate": "tool_call",
                        "toolCallId": wire,
                        "title": call.name,
                        "kind": "other",
                        "status": "in_progress",
                        "rawInput": raw_input(&call.arguments),
                    }));
                    calls.insert(&call.call_id, wire);
                }
            }
            "tool" => {
                if let Some(wire) = calls.get(turn.tool_call_id.as_str()) {
                    out.push(json!({
                        "sessionUpdate": "tool_call_update",
                        "toolCallId": wire,
                        "status": if turn.is_error { "failed" } else { "completed" },
                        "content": [{"type": "content", "content": text(&turn.content)}],
                    }));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_conversation_pairs_calls_with_their_results() {
        let turn = |role: &str, content: &str| pb::Turn {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        };
        let call = |id: &str| pb::ToolCall {
            call_id: id.into(),
            name: "add".into(),
            arguments: "{}".into(),
            ..Default::default()
        };
        let mut asked = turn("assistant", "");
        asked.tool_calls = vec![call("c1")];
        let mut result = turn("tool", "3");
        result.tool_call_id = "c1".into();
        // The next task numbers its calls from c1 again.
        let mut again = turn("assistant", "");
        again.tool_calls = vec![call("c1")];
        let turns = [
            turn("system", "be brief"),
            turn("user", "1+2?"),
            asked,
            result,
            turn("assistant", "3"),
            again,
        ];
        let out = replay(&turns);
        let kinds: Vec<&str> = out.iter().filter_map(|u| u["sessionUpdate"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "user_message_chunk",
                "tool_call",
                "tool_call_update",
                "agent_message_chunk",
                "tool_call"
            ]
        );
        assert_eq!(out[1]["toolCallId"], out[2]["toolCallId"]);
        assert_ne!(out[1]["toolCallId"], out[4]["toolCallId"]);
    }
}
