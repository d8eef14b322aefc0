//! What `fleet` prints: left-aligned tables with a header row, and one line per task event.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_client::{ArtifactPart, ClusterStatus, EventKind, TaskEvent, TaskInfo, TaskState, pb};

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>], out: &mut impl Write) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> =
            cells.zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
        cells.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

pub fn status(status: &ClusterStatus, out: &mut impl Write) -> io::Result<()> {
    let alive = status.workers.iter().filter(|w| w.alive).count();
    writeln!(
        out,
        "workers {alive} alive of {}; agents {}; tasks queued {}, running {}, completed {}, \
         failed {}, canceled {}, retained {}",
        status.workers.len(),
        status.agents,
        status.queued_tasks,
        status.running_tasks,
        status.tasks_completed,
        status.tasks_failed,
        status.tasks_canceled,
        status.retained_tasks,
    )?;
    if status.workers.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    let rows: Vec<Vec<String>> = status
        .workers
        .iter()
        .map(|w| {
            let models: Vec<String> = w
                .loaded
                .iter()
                .map(|m| {
                    format!(
                        "{} ({} running, {} waiting, {:.0} tok/s)",
                        m.id, m.active_sequences, m.waiting_sequences, m.tokens_per_s
                    )
                })
                .collect();
            vec![
                w.worker_id.clone(),
                match (w.alive, w.draining) {
                    (false, _) => "dead",
                    (true, true) => "draining",
                    (true, false) => "alive",
                }
                .to_owned(),
                // Calls from other workers' agents take slots as tasks do.
                format!("{}/{}", w.running_tasks.saturating_add(w.mesh_calls), w.slots),
                w.actors.to_string(),
                w.tasks_assigned.to_string(),
                format!("{} ms", w.last_heartbeat_ms_ago),
                if models.is_empty() { "-".to_owned() } else { models.join(", ") },
            ]
        })
        .collect();
    table(
        &["WORKER", "STATE", "SLOTS", "ACTORS", "TASKS", "HEARTBEAT", "MODELS LOADED"],
        &rows,
        out,
    )
}

pub fn agents(agents: &[pb::AgentInfo], out: &mut impl Write) -> io::Result<()> {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let spec = a.spec.clone().unwrap_or_default();
            vec![spec.name, spec.model, a.version.to_string(), a.tasks_submitted.to_string()]
        })
        .collect();
    table(&["AGENT", "MODEL", "VERSION", "TASKS"], &rows, out)
}

pub fn tasks(tasks: &[TaskInfo], out: &mut impl Write) -> io::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let submitted = Duration::from_micros(t.submitted_at_us);
            let age = now.saturating_sub(submitted);
            let took = (t.finished_at_us > 0)
                .then(|| Duration::from_micros(t.finished_at_us).saturating_sub(submitted));
            vec![
                t.task_id.clone(),
                t.agent.clone(),
                state(t.state()).to_owned(),
                if t.worker_id.is_empty() { "-".to_owned() } else { t.worker_id.clone() },
                format!("{} ago", duration(age)),
                took.map_or_else(|| "-".to_owned(), duration),
                preview(if t.error.is_empty() { &t.output } else { &t.error }, 40),
            ]
        })
        .collect();
    table(&["TASK", "AGENT", "STATE", "WORKER", "SUBMITTED", "TOOK", "OUTPUT"], &rows, out)
}

pub fn conversations(
    conversations: &[pb::ConversationSummary],
    out: &mut impl Write,
) -> io::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let rows: Vec<Vec<String>> = conversations
        .iter()
        .map(|c| {
            let age = now.saturating_sub(Duration::from_micros(c.updated_at_us));
            vec![
                c.context_id.clone(),
                c.agent.clone(),
                c.turns.to_string(),
                c.bytes.to_string(),
                format!("{} ago", duration(age)),
            ]
        })
        .collect();
    table(&["CONTEXT", "AGENT", "TURNS", "BYTES", "CONTINUED"], &rows, out)
}

pub fn actor_states(actors: &[pb::ActorStateInfo], out: &mut impl Write) -> io::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let rows: Vec<Vec<String>> = actors
        .iter()
        .map(|a| {
            let age = now.saturating_sub(Duration::from_micros(a.updated_at_us));
            let context = if a.context_id.is_empty() { "-" } else { &a.context_id };
            vec![
                a.agent.clone(),
                context.to_owned(),
                a.version.to_string(),
                a.bytes.to_string(),
                format!("{} ago", duration(age)),
                a.last_task.clone(),
            ]
        })
        .collect();
    table(&["AGENT", "CONTEXT", "VERSION", "BYTES", "SAVED", "BY TASK"], &rows, out)
}

/// A conversation's turns, one block each: who spoke, then what was said.
pub fn conversation(conversation: &pb::Conversation, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "# {} with {}", conversation.context_id, conversation.agent)?;
    for turn in &conversation.turns {
        let mut who = turn.role.clone();
        if !turn.tool_call_id.is_empty() {
            who = format!("{who} ({})", turn.tool_call_id);
        }
        writeln!(out, "{who}: {}", turn.content)?;
        for call in &turn.tool_calls {
            writeln!(out, "  calls {} {} ({})", call.name, call.arguments, call.call_id)?;
        }
    }
    Ok(())
}

/// A task state's name as the command line takes it.
pub fn state(state: pb::TaskState) -> &'static str {
    TaskState::try_from(state).map_or("unknown", TaskState::as_str)
}

/// One event other than text, as `fleet logs` prints it on stderr.
pub fn event(event: &TaskEvent) -> String {
    let what = match &event.kind {
        EventKind::Submitted { agent } => format!("submitted to {agent}"),
        EventKind::Scheduled { worker_id } => format!("scheduled on {worker_id}"),
        EventKind::Working => "working".to_owned(),
        EventKind::TextDelta { text, .. } => format!("text {text:?}"),
        EventKind::ReasoningDelta { text } => format!("reasoning {text:?}"),
        EventKind::ToolCall { call_id, name, arguments, .. } => {
            format!("tool call {name}({}) [{call_id}]", preview(arguments, 200))
        }
        EventKind::ToolResult { call_id, output, is_error } => {
            let kind = if *is_error { "tool error" } else { "tool result" };
            format!("{kind} [{call_id}]: {}", preview(output, 200))
        }
        EventKind::Completed { usage } => format!(
            "completed ({} prompt tokens, {} cached, {} generated{})",
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens,
            if usage.truncated { ", cut at max_tokens" } else { "" }
        ),
        EventKind::Failed { error, worker_id, kind } if worker_id.is_empty() => {
            format!("failed ({kind}): {error}")
        }
        EventKind::Failed { error, worker_id, kind } => {
            format!("failed ({kind}) on {worker_id}: {error}")
        }
        EventKind::Canceled { reason } => format!("canceled: {reason}"),
        EventKind::InputRequired { prompt, .. } => format!("input required: {prompt}"),
        EventKind::InputReceived { text, rejected: false, .. } => format!("reply: {text}"),
        EventKind::InputReceived { text, rejected: true, .. } => format!("rejected: {text}"),
        EventKind::Retrying { reason, failed_attempt } => {
            format!("retrying after attempt {failed_attempt}: {reason}")
        }
        EventKind::Embeddings { vectors } => format!("{} embeddings", vectors.len()),
        EventKind::StateSaved { state } => format!("state saved ({} bytes)", state.len()),
        EventKind::Artifact(a) => {
            let name = if a.name.is_empty() { &a.id } else { &a.name };
            match &a.part {
                ArtifactPart::File(f) if f.url.is_empty() => {
                    format!("artifact {name} ({}, {} bytes)", f.media_type, f.data.len())
                }
                ArtifactPart::File(f) => format!("artifact {name} ({}) at {}", f.media_type, f.url),
                ArtifactPart::Data(json) => format!("artifact {name}: {}", preview(json, 200)),
            }
        }
    };
    format!("[{} #{}] {what}", event.task_id, event.seq)
}

/// An embedding as a line of numbers.
pub fn vector(v: &[f32]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
}

/// `text` on one line, cut to `max` characters.
fn preview(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let flat = flat.trim();
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat.to_owned(),
    }
}

/// A duration as people read it: 850 ms, 12.3 s, 4 min 5 s, 2 h 3 min.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut out = Vec::new();
        let rows =
            vec![vec!["a".to_owned(), "long cell".to_owned()], vec!["bbb".into(), "c".into()]];
        table(&["X", "Y"], &rows, &mut out).unwrap_or_default();
        let text = String::from_utf8(out).unwrap_or_default();
        assert_eq!(text, "X    Y\na    long cell\nbbb  c\n");
    }

    #[test]
    fn previews_are_one_line_and_cut_at_a_character() {
        assert_eq!(preview("héllo\nworld", 7), "héllo w…");
        assert_eq!(preview("  short ", 40), "short");
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3 s");
        assert_eq!(duration(Duration::from_secs(245)), "4 min 5 s");
        assert_eq!(duration(Duration::from_secs(7380)), "2 h 3 min");
    }
}
