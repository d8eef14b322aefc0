//! Tool steps recorded: a task retried after its worker was SIGKILLed replays the tool calls
//! its lost attempt made (their results were stored before the model went on) and makes
//! only the calls that attempt had not made; a call of a tool that is called once, sent
//! when the worker died, fails the retry with an error naming the tool.
//!
//! The agents run `builtin:echo`, which repeats the latest user message or tool result: a
//! `<tool_call>` in it is a call, so a tool whose answer holds the next call chains calls
//! the way a model would, word by word at `token_delay_ms`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{
    AgentSpec, Client, EventKind, FunctionTool, HostCommand, Submission, TaskEvent, ToolInvocation,
};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;
use tokio::sync::mpsc;

/// Calls of the counting tool one task makes.
const COUNT: u64 = 5;
/// Long enough that the test's SIGKILL lands between a stored result and the next call
/// (an echoed call takes five words to write).
const TOKEN_DELAY_MS: &str = "300";

/// A call of `tool` with `arguments`, after `text`, as a model writes one.
fn written_call(text: &str, tool: &str, arguments: &str) -> String {
    format!("{text} <tool_call> {{\"name\":\"{tool}\",\"arguments\":{arguments}}} </tool_call>")
}

fn count_call(n: u64) -> String {
    written_call(&format!("step {n}"), "count", &format!("{{\"n\":{n}}}"))
}

/// The tools this test process hosts: `count` answers call n with the call of n + 1 (and
/// "counted" after the last); `pay` never answers, it tells the test it was called.
struct Host {
    invoked: Arc<Mutex<Vec<(String, String)>>>,
    paid: mpsc::UnboundedReceiver<ToolInvocation>,
}

async fn host_tools(client: &Client) -> Result<Host> {
    let (sender, mut commands) = client.host_tools().await?;
    let tool = |name: &str, call_once: bool| FunctionTool {
        name: name.into(),
        description: format!("the test's {name}"),
        parameters: r#"{"type":"object"}"#.into(),
        call_once,
        ..Default::default()
    };
    sender.register(&[tool("count", false), tool("pay", true)]).await?;
    match commands.next().await.context("the host stream ended")?? {
        HostCommand::Registered(Ok(_)) => {}
        other => bail!("tools not registered: {other:?}"),
    }
    let invoked = Arc::new(Mutex::new(Vec::new()));
    let (paid_tx, paid) = mpsc::unbounded_channel();
    let log = invoked.clone();
    tokio::spawn(async move {
        while let Some(Ok(command)) = commands.next().await {
            let HostCommand::Invoke(call) = command else { continue };
            log.lock().expect("log").push((call.tool.clone(), call.arguments.clone()));
            if call.tool == "pay" {
                let _ = paid_tx.send(call);
                continue;
            }
            let n = serde_json::from_str::<serde_json::Value>(&call.arguments)
                .ok()
                .and_then(|a| a.get("n").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            let answer = if n < COUNT { count_call(n + 1) } else { format!("counted {n}") };
            if sender.answer(call.call, answer, false).await.is_err() {
                return;
            }
        }
    });
    Ok(Host { invoked, paid })
}

fn agent(name: &str, tools: &[&str]) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: "builtin:echo".into(),
        tools: tools.iter().map(|t| (*t).to_owned()).collect(),
        max_retries: 2,
        model_options: BTreeMap::from([("token_delay_ms".into(), TOKEN_DELAY_MS.into())]),
        ..Default::default()
    }
}

/// The calls of `tool` the host was sent, by their `n`.
fn calls_of(host: &Host, tool: &str) -> Vec<String> {
    let invoked = host.invoked.lock().expect("log");
    invoked.iter().filter(|(t, _)| t == tool).map(|(_, args)| args.clone()).collect()
}

/// The worker the task's current attempt was scheduled on.
fn scheduled_on(events: &[TaskEvent]) -> Option<String> {
    events.iter().rev().find_map(|e| match &e.kind {
        EventKind::Scheduled { worker_id } => Some(worker_id.clone()),
        _ => None,
    })
}

/// Text the attempt `attempt` streamed.
fn text_of(events: &[TaskEvent], attempt: u32) -> String {
    events
        .iter()
        .filter(|e| e.attempt == attempt)
        .filter_map(|e| match &e.kind {
            EventKind::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_task_makes_no_recorded_call_again() -> Result<()> {
    let mut sandbox = ClusterSandbox::builder().workers(2).start().await?;
    let client = sandbox.client().await?;
    let host = host_tools(&client).await?;
    client.register_agent(agent("counter", &["count"])).await?;

    // Undisturbed: the five calls, once each, and the text the retry must reproduce.
    let baseline = fleet_client::TaskOutcome::collect(
        client.submit(Submission::new("counter", count_call(1))).await?,
    )
    .await?;
    let calls = calls_of(&host, "count");
    ensure!(calls.len() == COUNT as usize, "the undisturbed run made {} calls", calls.len());
    let expected = baseline.output.clone();
    ensure!(expected.contains("step 5") && expected.ends_with("counted 5"), "{expected:?}");
    host.invoked.lock().expect("log").clear();

    // Its worker SIGKILLed once the third result is stored (a watcher sees only stored
    // events), before the model writes the fourth call.
    let mut stream = client.submit(Submission::new("counter", count_call(1))).await?;
    let (mut events, mut results, mut killed) = (Vec::new(), 0, None);
    while let Some(event) = stream.next().await {
        let event = event?;
        let terminal = event.kind.is_terminal();
        if matches!(event.kind, EventKind::ToolResult { .. }) && event.attempt == 1 {
            results += 1;
        }
        events.push(event);
        if results == 3 && killed.is_none() {
            let worker = scheduled_on(&events).context("no Scheduled event")?;
            ensure!(
                calls_of(&host, "count").len() == 3,
                "the fourth call was made before the kill: raise TOKEN_DELAY_MS"
            );
            sandbox.kill_worker(&worker).await?;
            killed = Some(worker);
        }
        if terminal {
            break;
        }
    }
    let killed = killed.context("the task ended before its third result")?;
    let last = events.last().context("no events")?;
    ensure!(
        matches!(last.kind, EventKind::Completed { .. }),
        "the retried task did not complete: {:?}",
        last.kind
    );
    ensure!(last.attempt == 2, "ended in attempt {}, not the retry", last.attempt);
    ensure!(scheduled_on(&events).as_deref() != Some(killed.as_str()), "retried on the dead");
    let calls = calls_of(&host, "count");
    let made: Vec<u64> = calls
        .iter()
        .filter_map(|a| serde_json::from_str::<serde_json::Value>(a).ok()?.get("n")?.as_u64())
        .collect();
    ensure!(made == [1, 2, 3, 4, 5], "each call once, in order; the host saw {made:?}");
    // The retry's record holds the three recorded calls, marked replayed, and the two made.
    let replayed = events
        .iter()
        .filter(|e| e.attempt == 2)
        .filter(|e| matches!(e.kind, EventKind::ToolCall { replayed: true, .. }))
        .count();
    ensure!(replayed == 3, "{replayed} calls replayed, not 3");
    let made_again = events
        .iter()
        .filter(|e| e.attempt == 2)
        .filter(|e| matches!(e.kind, EventKind::ToolCall { replayed: false, .. }))
        .count();
    ensure!(made_again == 2, "{made_again} calls made by the retry, not 2");
    // A greedy model (echo is one) reproduces the text of the undisturbed run.
    ensure!(text_of(&events, 2) == expected, "{:?} != {expected:?}", text_of(&events, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_once_tool_in_flight_at_a_crash_fails_the_retry_naming_it() -> Result<()> {
    let mut sandbox = ClusterSandbox::builder().workers(2).start().await?;
    let client = sandbox.client().await?;
    let mut host = host_tools(&client).await?;
    client.register_agent(agent("payer", &["pay"])).await?;
    let call = written_call("paying", "pay", r#"{"amount":5}"#);
    let stream = client.submit(Submission::new("payer", call)).await?;
    let running = tokio::spawn(fleet_client::TaskOutcome::collect(stream));

    // The call is at the host (which never answers): its worker dies.
    let paid = tokio::time::timeout(Duration::from_secs(30), host.paid.recv())
        .await
        .context("pay was never called")?
        .context("the host stopped")?;
    let info = client.get_task(paid.task_id.as_str()).await?;
    sandbox.kill_worker(&info.worker_id).await?;

    let outcome = tokio::time::timeout(Duration::from_secs(30), running).await???;
    ensure!(outcome.state == fleet_client::TaskState::Failed, "{:?}", outcome.state);
    let error = &outcome.error;
    ensure!(
        error.contains("tool pay") && error.contains("at most once"),
        "the error does not name the tool: {error}"
    );
    ensure!(calls_of(&host, "pay").len() == 1, "pay was called {:?}", calls_of(&host, "pay"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_once_names_only_the_agent_s_tools() -> Result<()> {
    let sandbox = ClusterSandbox::builder().workers(1).start().await?;
    let client = sandbox.client().await?;
    let mut spec = agent("careless", &[]);
    spec.call_once = vec!["send_email".into()];
    let refused = client.register_agent(spec).await.err().context("accepted")?;
    ensure!(refused.to_string().contains("call_once names \"send_email\""), "{refused}");
    Ok(())
}
