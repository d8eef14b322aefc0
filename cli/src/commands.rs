//! Each `fleet` command: one or two calls of the client API, the answer rendered. Commands
//! that print a table write to `out`; those that follow a task write its text to stdout as
//! it arrives and its other events to stderr, so `fleet logs T > answer.txt` keeps the
//! answer alone.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fleet_client::{Client, EventKind, Reply, Submission, TaskState, TaskStream, pb};
use futures::StreamExt;

use crate::render;

pub async fn status(client: &Client, out: &mut impl Write) -> Result<i32> {
    let status = client.status().await?;
    render::status(&status, out)?;
    Ok(0)
}

pub async fn agents(client: &Client, out: &mut impl Write) -> Result<i32> {
    let agents = client.list_agents().await?;
    render::agents(&agents, out)?;
    Ok(0)
}

pub async fn tasks(
    client: &Client,
    agent: Option<String>,
    state: Option<TaskState>,
    limit: u32,
    out: &mut impl Write,
) -> Result<i32> {
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    // The head pages its answers; follow the pages until `limit` tasks or the last page.
    while tasks.len() < limit as usize {
        let request = pb::ListTasksRequest {
            agent: agent.clone().unwrap_or_default(),
            state: state.map_or(0, |s| pb::TaskState::from(s) as i32),
            page_size: limit - tasks.len() as u32,
            page_token,
            newest_first: true,
            context_id: String::new(),
        };
        let page = client.list_tasks(request).await?;
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    tasks.truncate(limit as usize);
    render::tasks(&tasks, out)?;
    Ok(0)
}

pub async fn contexts(
    client: &Client,
    context: &str,
    agent: &str,
    limit: u32,
    out: &mut impl Write,
) -> Result<i32> {
    let listed = client.list_conversations(context, agent, limit).await?;
    render::conversations(&listed.conversations, out)?;
    if listed.truncated {
        writeln!(out, "(more: raise --limit, or name a --context or --agent)")?;
    }
    Ok(0)
}

pub async fn actors(
    client: &Client,
    agent: &str,
    context: &str,
    limit: u32,
    out: &mut impl Write,
) -> Result<i32> {
    let listed = client.list_actor_states(agent, context, limit).await?;
    render::actor_states(&listed.actors, out)?;
    if listed.truncated {
        writeln!(out, "(more: raise --limit, or name an --agent or --context)")?;
    }
    Ok(0)
}

/// An actor's stored state: its JSON on a line.
pub async fn actor(
    client: &Client,
    agent: &str,
    context: &str,
    out: &mut impl Write,
) -> Result<i32> {
    let info = client.get_actor_state(agent, context).await?;
    writeln!(out, "{}", info.state)?;
    Ok(0)
}

/// A context's turns with `agent` (with each agent it has a conversation with, when empty).
pub async fn context(
    client: &Client,
    context: &str,
    agent: &str,
    out: &mut impl Write,
) -> Result<i32> {
    let agents: Vec<String> = if agent.is_empty() {
        let listed = client.list_conversations(context, "", 1000).await?;
        listed.conversations.into_iter().map(|c| c.agent).collect()
    } else {
        vec![agent.to_owned()]
    };
    if agents.is_empty() {
        bail!("context {context:?}: the head keeps no conversation in it");
    }
    for agent in agents {
        let conversation = client
            .get_conversation(context, &agent)
            .await
            .with_context(|| format!("context {context:?} with agent {agent:?}"))?;
        render::conversation(&conversation, out)?;
    }
    Ok(0)
}

pub async fn forget_context(
    client: &Client,
    context: &str,
    agent: &str,
    out: &mut impl Write,
) -> Result<i32> {
    let deleted = client.delete_conversation(context, agent).await?;
    writeln!(out, "{deleted} conversation(s) of context {context:?} deleted")?;
    Ok(0)
}

pub async fn publish(
    client: &Client,
    topic: &str,
    publisher: &str,
    message: String,
    out: &mut impl Write,
) -> Result<i32> {
    let published = client.publish_many(topic, publisher, vec![message]).await?;
    writeln!(out, "{}", published.offset)?;
    Ok(0)
}

/// Prints a topic's messages as they come; in a group, acknowledges each once printed (and
/// flushed: a message acknowledged is one the reader has).
pub async fn follow_topic(
    client: &Client,
    topic: &str,
    from: Option<u64>,
    group: Option<&str>,
    limit: Option<u64>,
    out: &mut impl Write,
) -> Result<i32> {
    let mut messages = client.follow_log(topic, from, group.unwrap_or("")).await?;
    let mut printed = 0;
    while limit.is_none_or(|limit| printed < limit) {
        let Some(message) = messages.next().await else {
            bail!("the head ended the topic's stream");
        };
        let m = message?;
        let offset = m.offset.unwrap_or_default();
        writeln!(out, "{offset} {}: {}", m.publisher, m.body)?;
        out.flush()?;
        if let Some(group) = group {
            client.ack_topic(topic, group, &[offset]).await?;
        }
        printed += 1;
    }
    Ok(0)
}

pub async fn logs(client: &Client, task: &str, from: u64) -> Result<i32> {
    let stream = client.watch(task, from.max(1)).await.with_context(|| format!("task {task}"))?;
    follow(stream).await
}

/// How long `cancel` waits for the task to stop once the head has the request.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Cancels `task` and waits (at most [`CANCEL_WAIT`]) for it to end: the head answers the
/// request at once, the worker stops the task a moment later.
pub async fn cancel(client: &Client, task: &str, out: &mut impl Write) -> Result<i32> {
    let info = client.cancel(task).await.with_context(|| format!("task {task}"))?;
    let mut state = info.state();
    if !TaskState::try_from(state).is_ok_and(TaskState::is_terminal) {
        let mut events = client.watch(task, info.events + 1).await?;
        let ended = tokio::time::timeout(CANCEL_WAIT, async {
            while let Some(event) = events.next().await {
                if let Some(end) = event?.kind.state_after().filter(|s| s.is_terminal()) {
                    return Ok(Some(pb::TaskState::from(end)));
                }
            }
            anyhow::Ok(None)
        })
        .await;
        match ended {
            Ok(Ok(Some(end))) => state = end,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) | Err(_) => {
                writeln!(out, "{task} cancel requested; still {}", render::state(state))?;
                return Ok(1);
            }
        }
    }
    writeln!(out, "{task} {}", render::state(state))?;
    Ok(0)
}

/// Answers an input-required task; prints the state the reply left it in.
pub async fn reply(
    client: &Client,
    task: &str,
    reply: &Reply,
    out: &mut impl Write,
) -> Result<i32> {
    let info = client.reply(task, "", reply, 0).await.with_context(|| format!("task {task}"))?;
    writeln!(out, "{task} {}", render::state(info.state()))?;
    Ok(0)
}

pub async fn submit(
    client: &Client,
    agent: String,
    prompt: String,
    context: Option<String>,
    detach: bool,
) -> Result<i32> {
    let mut submission = Submission::new(agent, prompt);
    submission.context_id = context.unwrap_or_default();
    let mut stream = client.submit(submission).await?;
    if detach {
        // The head has accepted the task once its first event is out; it runs on whether or
        // not anyone follows it.
        let Some(first) = stream.next().await else { bail!("the head answered no event") };
        println!("{}", first?.task_id);
        return Ok(0);
    }
    follow(stream).await
}

/// Prints a task's events until its terminal one; the exit code says how it ended.
async fn follow(mut stream: TaskStream) -> Result<i32> {
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut ended_line = true;
    while let Some(event) = stream.next().await {
        let event = event?;
        match &event.kind {
            EventKind::TextDelta { text, .. } => {
                write!(stdout, "{text}")?;
                stdout.flush()?;
                ended_line = text.ends_with('\n');
                continue;
            }
            EventKind::Embeddings { vectors } => {
                for v in vectors {
                    writeln!(stdout, "{}", render::vector(v))?;
                }
                continue;
            }
            _ => {}
        }
        if !ended_line {
            // The event goes to stderr; end the text's line so the two do not interleave.
            writeln!(stdout)?;
            ended_line = true;
        }
        writeln!(stderr, "{}", render::event(&event))?;
        match event.kind {
            EventKind::Completed { .. } => return Ok(0),
            EventKind::Failed { .. } | EventKind::Canceled { .. } => return Ok(1),
            _ => {}
        }
    }
    bail!("the task's stream ended before the task did")
}

/// How long `fleet health` waits for the head's answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `fleet health`: GET `/healthz` of the head at `head` (no credentials: the route takes
/// none), its JSON answer printed; 0 when it is 200, 1 otherwise. Given several heads
/// (`URL,URL`: a leader and its standbys), each is asked and each answer printed; 0 when
/// one of them serves.
pub async fn health(
    head: &str,
    tls_ca: Option<&Path>,
    min_workers: usize,
    out: &mut impl Write,
) -> Result<i32> {
    let builder = reqwest::Client::builder().timeout(HEALTH_TIMEOUT);
    // As the gRPC client: a CA file given is the only trust; otherwise the system's roots,
    // which a plain http:// head does not need (a minimal image may have none).
    let builder = match tls_ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --tls-ca {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--tls-ca {} is not PEM certificates", path.display()))?;
            builder.tls_certs_only(certs)
        }
        None if head.starts_with("http://") => builder.tls_certs_only([]),
        None => builder,
    };
    let client = builder.build().context("cannot make an HTTP client")?;
    let heads: Vec<&str> = head.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    let mut ready = false;
    let mut failure = None;
    for head in &heads {
        let url = format!("{}/healthz?min_workers={min_workers}", head.trim_end_matches('/'));
        let answer = async {
            let response = client.get(&url).send().await?;
            let ok = response.status().is_success();
            Ok::<_, reqwest::Error>((ok, response.text().await?))
        };
        match answer.await {
            Ok((ok, body)) => {
                ready |= ok;
                let body = body.trim_end();
                if heads.len() == 1 {
                    writeln!(out, "{body}")?;
                } else {
                    writeln!(out, "{head} {body}")?;
                }
            }
            Err(e) => failure = Some(anyhow::Error::new(e).context(format!("GET {url}"))),
        }
    }
    match failure {
        // One head, unreachable: the error says where it tried.
        Some(e) if heads.len() == 1 => Err(e),
        Some(e) if !ready => {
            writeln!(out, "{e:#}")?;
            Ok(1)
        }
        _ => Ok(if ready { 0 } else { 1 }),
    }
}
