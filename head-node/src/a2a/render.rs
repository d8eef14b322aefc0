//! Cluster tasks and events as A2A JSON, in the 1.0 dialect (StreamResponse wrappers,
//! `TASK_STATE_*`, `ROLE_*`, parts without `kind`) or the 0.3 one (`kind` fields, lowercase
//! states and roles, `final` on status updates).

use base64::Engine as _;
use fleet_proto::{Artifact, ArtifactPart, TaskState};
use serde_json::{Value, json};

use super::Version;
use crate::cluster::TaskInfo;

/// The id of the artifact a task's text goes into.
pub const ARTIFACT_ID: &str = fleet_proto::TEXT_ARTIFACT_ID;

/// A task's A2A state name.
pub fn state(state: TaskState, v: Version) -> &'static str {
    match (state, v) {
        (TaskState::Queued | TaskState::Scheduled, Version::V1) => "TASK_STATE_SUBMITTED",
        (TaskState::Working, Version::V1) => "TASK_STATE_WORKING",
        (TaskState::Completed, Version::V1) => "TASK_STATE_COMPLETED",
        (TaskState::Failed, Version::V1) => "TASK_STATE_FAILED",
        (TaskState::Canceled, Version::V1) => "TASK_STATE_CANCELED",
        (TaskState::InputRequired, Version::V1) => "TASK_STATE_INPUT_REQUIRED",
        (TaskState::Queued | TaskState::Scheduled, Version::V03) => "submitted",
        (TaskState::Working, Version::V03) => "working",
        (TaskState::Completed, Version::V03) => "completed",
        (TaskState::Failed, Version::V03) => "failed",
        (TaskState::Canceled, Version::V03) => "canceled",
        (TaskState::InputRequired, Version::V03) => "input-required",
    }
}

/// Parses a state filter in either dialect.
pub fn parse_state(name: &str) -> Option<TaskState> {
    let name = name.trim_start_matches("TASK_STATE_").to_ascii_lowercase().replace('_', "-");
    Some(match name.as_str() {
        "submitted" => TaskState::Queued,
        "working" => TaskState::Working,
        "completed" => TaskState::Completed,
        "failed" => TaskState::Failed,
        "canceled" | "cancelled" => TaskState::Canceled,
        "input-required" => TaskState::InputRequired,
        _ => return None,
    })
}

/// Whether an A2A stream ends after a task reaches this state (terminal or interrupted).
pub fn ends_stream(state: TaskState) -> bool {
    state.is_terminal() || state == TaskState::InputRequired
}

/// ISO 8601 UTC time of microseconds since the Unix epoch.
pub fn timestamp(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z", us % 1_000_000 / 1000)
}

fn text_part(text: &str, v: Version) -> Value {
    match v {
        Version::V1 => json!({"text": text}),
        Version::V03 => json!({"kind": "text", "text": text}),
    }
}

/// A message of a task's conversation.
pub fn message(
    id: &str,
    role_is_user: bool,
    text: &str,
    task_id: &str,
    context_id: &str,
    v: Version,
) -> Value {
    let role = match (role_is_user, v) {
        (true, Version::V1) => "ROLE_USER",
        (false, Version::V1) => "ROLE_AGENT",
        (true, Version::V03) => "user",
        (false, Version::V03) => "agent",
    };
    let mut m = json!({
        "messageId": id,
        "contextId": context_id,
        "taskId": task_id,
        "role": role,
        "parts": [text_part(text, v)],
    });
    if v == Version::V03 {
        m["kind"] = json!("message");
    }
    m
}

/// A task's status, with an agent message for failures and cancellations.
pub fn status(info: &TaskInfo, v: Version) -> Value {
    let mut status = json!({
        "state": state(info.state, v),
        "timestamp": timestamp(if info.finished_at_us > 0 { info.finished_at_us } else { fleet_proto::now_us() }),
    });
    let (id, ctx) = (info.task_id.as_str(), info.context_id.as_str());
    if matches!(info.state, TaskState::Failed | TaskState::Canceled) && !info.error.is_empty() {
        status["message"] = message(&format!("{id}-status"), false, &info.error, id, ctx, v);
    }
    // The question the task waits on, as the message its client answers.
    if info.state == TaskState::InputRequired
        && let Some(asked) = info.exchanges.len().checked_sub(1)
    {
        let prompt = &info.exchanges[asked].prompt;
        status["message"] = message(&format!("{id}-ask-{asked}"), false, prompt, id, ctx, v);
    }
    status
}

/// The parts of a task's answer: a `data` part with the JSON of an answer given in an
/// output schema's shape (a structured task), otherwise text.
pub fn answer_parts(output: &str, structured: bool, v: Version) -> Value {
    let data = structured.then(|| serde_json::from_str::<Value>(output).ok()).flatten();
    match (data, v) {
        (Some(data), Version::V1) => json!([{"data": data, "mediaType": "application/json"}]),
        (Some(data), Version::V03) => json!([{"kind": "data", "data": data}]),
        (None, v) => json!([text_part(output, v)]),
    }
}

/// A chunk of a task's answer as parts.
pub fn text_parts(text: &str, v: Version) -> Value {
    json!([text_part(text, v)])
}

fn artifact(parts: Value) -> Value {
    json!({"artifactId": ARTIFACT_ID, "name": "output", "parts": parts})
}

/// The id of the artifact a thinking model's reasoning is, apart from its answer's.
pub const REASONING_ARTIFACT_ID: &str = "reasoning";

fn reasoning_artifact(parts: Value) -> Value {
    json!({
        "artifactId": REASONING_ARTIFACT_ID,
        "name": "reasoning",
        "description": "The model's reasoning before its answer; not part of the answer.",
        "parts": parts,
    })
}

/// A chunk of the reasoning's artifact (`last_chunk`: an empty one that closes it, sent
/// when the answer begins).
pub fn reasoning_update(
    task_id: &str,
    context_id: &str,
    text: &str,
    append: bool,
    last_chunk: bool,
    v: Version,
) -> Value {
    let artifact = reasoning_artifact(text_parts(text, v));
    artifact_item(task_id, context_id, artifact, append, last_chunk, v)
}

/// An artifact the agent returned beside its text: one file or data part.
pub fn returned_artifact(a: &Artifact, v: Version) -> Value {
    let part = match (&a.part, v) {
        (ArtifactPart::Data(json), v) => {
            // Checked where it was made; a peer's bad JSON still shows, as text.
            let data = serde_json::from_str::<Value>(json).unwrap_or_else(|_| json!(json));
            match v {
                Version::V1 => json!({"data": data, "mediaType": "application/json"}),
                Version::V03 => json!({"kind": "data", "data": data}),
            }
        }
        (ArtifactPart::File(f), v) => {
            // The same four fields, named as each dialect names them (see `message`).
            let (bytes, url, media_type, name) = match v {
                Version::V1 => ("raw", "url", "mediaType", "filename"),
                Version::V03 => ("bytes", "uri", "mimeType", "name"),
            };
            let mut file = serde_json::Map::new();
            file.insert(media_type.into(), json!(f.media_type));
            file.insert(name.into(), json!(f.name));
            if f.url.is_empty() {
                let data = base64::engine::general_purpose::STANDARD.encode(&f.data);
                file.insert(bytes.into(), json!(data));
            } else {
                file.insert(url.into(), json!(f.url));
            }
            match v {
                Version::V1 => Value::Object(file),
                Version::V03 => json!({"kind": "file", "file": file}),
            }
        }
    };
    let mut artifact = json!({"artifactId": a.id, "parts": [part]});
    if !a.name.is_empty() {
        artifact["name"] = json!(a.name);
    }
    if !a.description.is_empty() {
        artifact["description"] = json!(a.description);
    }
    artifact
}

/// The messages of one finished (or running) turn: the user's input, each question the
/// agent asked and its reply, and, once completed, the agent's answer.
pub fn turn(info: &TaskInfo, v: Version) -> Vec<Value> {
    let (id, ctx) = (info.task_id.as_str(), info.context_id.as_str());
    let mut messages = vec![message(&format!("{id}-user"), true, &info.input, id, ctx, v)];
    for (n, exchange) in info.exchanges.iter().enumerate() {
        messages.push(message(&format!("{id}-ask-{n}"), false, &exchange.prompt, id, ctx, v));
        if let Some(reply) = &exchange.reply {
            messages.push(message(&format!("{id}-reply-{n}"), true, reply, id, ctx, v));
        }
    }
    if info.state == TaskState::Completed {
        messages.push(message(&format!("{id}-agent"), false, &info.output, id, ctx, v));
    }
    messages
}

/// An A2A Task. `history` holds the conversation's messages up to this task (earlier turns
/// of the same context first), cut to the last `history_length`.
pub fn task(
    info: &TaskInfo,
    mut history: Vec<Value>,
    history_length: Option<usize>,
    v: Version,
) -> Value {
    history.extend(turn(info, v));
    if let Some(n) = history_length {
        let cut = history.len().saturating_sub(n);
        history.drain(..cut);
    }
    let mut task = json!({
        "id": info.task_id.as_str(),
        "contextId": info.context_id,
        "status": status(info, v),
        "history": history,
        "metadata": {
            "agent": info.agent,
            "attempt": info.attempt,
            "usage": {
                "promptTokens": info.usage.prompt_tokens,
                "cachedTokens": info.usage.cached_tokens,
                "completionTokens": info.usage.completion_tokens,
            },
        },
    });
    let mut artifacts = Vec::with_capacity(info.artifacts.len() + 2);
    if !info.reasoning.is_empty() {
        artifacts.push(reasoning_artifact(text_parts(&info.reasoning, v)));
    }
    if !info.output.is_empty() {
        artifacts.push(artifact(answer_parts(&info.output, info.structured, v)));
    }
    artifacts.extend(info.artifacts.iter().map(|a| returned_artifact(a, v)));
    if !artifacts.is_empty() {
        task["artifacts"] = json!(artifacts);
    }
    if v == Version::V03 {
        task["kind"] = json!("task");
    }
    task
}

/// A stream item holding a task (the first item of every stream).
pub fn stream_task(task: Value, v: Version) -> Value {
    match v {
        Version::V1 => json!({"task": task}),
        Version::V03 => task,
    }
}

/// A status update stream item.
pub fn status_update(info: &TaskInfo, v: Version) -> Value {
    let (id, ctx) = (info.task_id.as_str(), info.context_id.as_str());
    match v {
        Version::V1 => {
            json!({"statusUpdate": {"taskId": id, "contextId": ctx, "status": status(info, v)}})
        }
        Version::V03 => json!({
            "kind": "status-update", "taskId": id, "contextId": ctx,
            "status": status(info, v), "final": ends_stream(info.state),
        }),
    }
}

/// An artifact chunk stream item of the text's artifact (`parts` as [`text_parts`] or
/// [`answer_parts`] give them).
pub fn artifact_update(
    task_id: &str,
    context_id: &str,
    parts: Value,
    append: bool,
    last_chunk: bool,
    v: Version,
) -> Value {
    artifact_item(task_id, context_id, artifact(parts), append, last_chunk, v)
}

/// The stream item of an artifact the agent returned beside its text (whole, in one item).
pub fn returned_artifact_update(
    task_id: &str,
    context_id: &str,
    a: &Artifact,
    v: Version,
) -> Value {
    artifact_item(task_id, context_id, returned_artifact(a, v), false, true, v)
}

fn artifact_item(
    task_id: &str,
    context_id: &str,
    artifact: Value,
    append: bool,
    last_chunk: bool,
    v: Version,
) -> Value {
    let body = json!({
        "taskId": task_id, "contextId": context_id, "artifact": artifact,
        "append": append, "lastChunk": last_chunk,
    });
    match v {
        Version::V1 => json!({"artifactUpdate": body}),
        Version::V03 => {
            let mut body = body;
            body["kind"] = json!("artifact-update");
            body
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_8601_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_262_400_123_456), "2026-11-21T12:00:00.123Z");
        assert_eq!(timestamp(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn states_parse_in_both_dialects() {
        for s in [
            TaskState::Working,
            TaskState::Completed,
            TaskState::Canceled,
            TaskState::InputRequired,
        ] {
            assert_eq!(parse_state(state(s, Version::V1)), Some(s));
            assert_eq!(parse_state(state(s, Version::V03)), Some(s));
        }
        assert_eq!(parse_state("nonsense"), None);
    }
}
