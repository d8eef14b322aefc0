//! One prompt turn: the prompt becomes a task of the session's conversation (or the answer
//! to the question its last task asked), and the task's events stream back as
//! `session/update`s until it ends. An approval asks the editor
//! (`session/request_permission`); a question asks it with a form (`elicitation/create`) when
//! it takes forms, else it ends the turn and the next prompt answers it.

use fleet_client::{ErrorKind, EventKind, Reply, Submission, TaskOptions, TaskStream};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Server;
use super::prompt::Input;
use super::rpc::RpcError;
use super::updates::{Translator, call_id_on_wire, chunk, raw_input};

/// A question a task of the session waits on: the next prompt answers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub task: String,
    /// The seq of its `InputRequired` event.
    pub seq: u64,
}

/// How a turn ended, when it did not fail.
pub enum Outcome {
    /// `stopReason`, and the task behind the turn.
    Stopped { reason: &'static str, task: String, usage: Option<fleet_client::Usage> },
    /// The task asked a question the editor cannot show as a form: it is the turn's last
    /// message, and the session's next prompt answers it.
    Asked(Question),
}

/// The permission options an approval offers.
const ALLOW: &str = "allow";
const REJECT: &str = "reject";

/// Runs a turn of `session` until its task ends (or asks); `cancel` turns true (or closes,
/// when the session does) on `session/cancel`.
pub async fn run(
    server: &Server,
    session: &str,
    input: Input,
    question: Option<Question>,
    mut cancel: watch::Receiver<bool>,
) -> Result<Outcome, RpcError> {
    let client = &server.client;
    let mut stream = match question {
        Some(q) => answer(server, session, input, &q).await?,
        None => {
            let mut submission = Submission::new(server.agent.clone(), input.text);
            submission.context_id = session.to_owned();
            if !input.files.is_empty() {
                submission.options = Some(TaskOptions { files: input.files, ..Default::default() });
            }
            client.submit(submission).await.map_err(head_error)?
        }
    };
    let mut t = Translator::default();
    let mut task = String::new();
    let mut cancelled = false;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = cancel.changed(), if !cancelled => {
                // session/cancel (or the session closed): stop the task; its stream then ends
                // with the cancel. Before its first event its id is not known yet.
                cancelled = true;
                if !task.is_empty() {
                    stop(server, &task).await;
                }
                continue;
            }
        };
        let Some(event) = event else {
            return Err(RpcError::internal(
                "the head ended the task's stream before the task ended",
            ));
        };
        let event = event.map_err(head_error)?;
        if task.is_empty() {
            task = event.task_id.to_string();
            if cancelled {
                stop(server, &task).await;
            }
        }
        for update in t.updates(&event) {
            server.update(session, update).await;
        }
        match &event.kind {
            EventKind::InputRequired { .. } if cancelled => {}
            EventKind::InputRequired { call_id, tool, arguments, .. } if !tool.is_empty() => {
                let call = call_id.strip_suffix("/input").unwrap_or(call_id);
                if let Some(update) = t.announce(&task, call, tool, arguments, "pending") {
                    server.update(session, update).await;
                }
                let params = json!({
                    "sessionId": session,
                    "toolCall": {
                        "toolCallId": call_id_on_wire(&task, call),
                        "title": tool,
                        "kind": "other",
                        "status": "pending",
                        "rawInput": raw_input(arguments),
                    },
                    "options": [
                        {"optionId": ALLOW, "name": "Allow", "kind": "allow_once"},
                        {"optionId": REJECT, "name": "Reject", "kind": "reject_once"},
                    ],
                });
                let asked = server.peer.request("session/request_permission", params);
                let answer = tokio::select! {
                    answer = asked => Some(answer),
                    _ = cancel.changed() => None,
                };
                let reply = match answer.as_ref().map(|a| a.as_ref().map(permission)) {
                    Some(Ok(Some(reply))) => reply,
                    // The editor cancelled the turn while asking (or the user did here).
                    None | Some(Ok(None)) => {
                        cancelled = true;
                        stop(server, &task).await;
                        continue;
                    }
                    Some(Err(e)) => Reply::Reject(format!("the editor could not ask: {e}")),
                };
                reply_to(server, &task, session, &reply, event.seq).await;
            }
            EventKind::InputRequired { prompt, .. } => {
                if server.takes_forms() {
                    let reply = elicit(server, session, prompt).await;
                    if let Some(reply) = reply {
                        reply_to(server, &task, session, &reply, event.seq).await;
                        continue;
                    }
                }
                let text = json!({"type": "text", "text": prompt});
                server.update(session, chunk("agent_message_chunk", text)).await;
                return Ok(Outcome::Asked(Question { task, seq: event.seq }));
            }
            EventKind::Completed { usage } => {
                let reason = match (cancelled, usage.truncated) {
                    (true, _) => "cancelled",
                    (false, true) => "max_tokens",
                    (false, false) => "end_turn",
                };
                return Ok(Outcome::Stopped { reason, task, usage: Some(*usage) });
            }
            EventKind::Canceled { .. } => {
                return Ok(Outcome::Stopped { reason: "cancelled", task, usage: None });
            }
            // The spec: a cancelled turn answers `cancelled`, whatever the cancel caused.
            EventKind::Failed { .. } if cancelled => {
                return Ok(Outcome::Stopped { reason: "cancelled", task, usage: None });
            }
            EventKind::Failed { error, kind, .. } => return Err(failed(&task, error, *kind)),
            EventKind::Retrying { reason, .. } if t.shown => {
                // What was streamed cannot be taken back: end the turn rather than repeat it.
                stop(server, &task).await;
                let message = format!(
                    "the task's worker was lost after part of the answer was sent ({reason}): \
                     send the prompt again"
                );
                return Err(RpcError::internal(message).with_data(json!({"taskId": task})));
            }
            _ => {}
        }
    }
}

/// The prompt as the answer to the session's open question; the task's events from there.
async fn answer(
    server: &Server,
    session: &str,
    input: Input,
    q: &Question,
) -> Result<TaskStream, RpcError> {
    if !input.files.is_empty() {
        return Err(RpcError::invalid_params(
            "prompt",
            "the answer to the agent's question is text",
        ));
    }
    let client = &server.client;
    if let Err(e) = client.reply(&q.task, session, &Reply::Text(input.text), q.seq).await {
        // Its deadline passed, or someone else answered or cancelled it.
        let message = format!(
            "the agent's question (task {}) no longer waits ({e}): send the prompt again to \
             start a new task",
            q.task
        );
        return Err(RpcError::invalid_params("prompt", message));
    }
    client.watch(&q.task, q.seq + 1).await.map_err(head_error)
}

/// What the editor's answer to a permission request replies; `None` when it cancelled.
fn permission(answer: &Value) -> Option<Reply> {
    let outcome = &answer["outcome"];
    match outcome["outcome"].as_str() {
        Some("selected") if outcome["optionId"] == ALLOW => Some(Reply::Approve),
        Some("selected") => Some(Reply::Reject("rejected in the editor".into())),
        _ => None,
    }
}

/// Asks the editor the agent's question in a form; `None` when it cannot (the question then
/// goes into the chat).
async fn elicit(server: &Server, session: &str, question: &str) -> Option<Reply> {
    let params = json!({
        "mode": "form",
        "sessionId": session,
        "message": question,
        "requestedSchema": {
            "type": "object",
            "properties": {"answer": {"type": "string", "title": "Answer"}},
            "required": ["answer"],
        },
    });
    let answer = server.peer.request("elicitation/create", params).await.ok()?;
    match answer["action"].as_str() {
        Some("accept") => {
            let text = answer["content"]["answer"].as_str().unwrap_or_default();
            Some(Reply::Text(text.to_owned()))
        }
        _ => Some(Reply::Reject("declined in the editor".into())),
    }
}

async fn reply_to(server: &Server, task: &str, session: &str, reply: &Reply, seq: u64) {
    // Refused when the task stopped waiting meanwhile (its deadline, a cancel): its stream
    // says how it went on, and the turn follows that.
    if let Err(e) = server.client.reply(task, session, reply, seq).await {
        eprintln!("fleet acp: task {task}: the answer was refused: {e}");
    }
}

async fn stop(server: &Server, task: &str) {
    if let Err(e) = server.client.cancel(task).await {
        eprintln!("fleet acp: task {task}: cannot cancel: {e}");
    }
}

/// A failed task as the prompt's error: the prompt itself was taken, so an internal error
/// whatever the failure; its kind (`invalid_request` for a prompt over the model's context,
/// ...) is in the data.
fn failed(task: &str, error: &str, kind: ErrorKind) -> RpcError {
    RpcError::internal(format!("the agent's task failed: {error}"))
        .with_data(json!({"taskId": task, "kind": kind.as_str()}))
}

/// A call of the head that failed, as an error the editor shows.
pub fn head_error(e: fleet_client::Error) -> RpcError {
    match e.kind() {
        ErrorKind::Unauthenticated => RpcError::auth_required(format!(
            "the head wants a client token ({e}): set FLEET_TOKEN or pass --token to `fleet acp`"
        )),
        ErrorKind::UnknownAgent | ErrorKind::UnknownTask => RpcError::not_found(e.to_string()),
        ErrorKind::InvalidRequest => RpcError::new(-32602, e.to_string()),
        kind => RpcError::internal(e.to_string()).with_data(json!({"kind": kind.as_str()})),
    }
}
