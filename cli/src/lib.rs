//! `fleet`: agentfleet's command line, what `ray status` and `ray list` are to Ray users.
//! Shared by the `fleet` binary and `python -m agentfleet`.
//!
//! ```text
//! fleet status                          workers, their slots and models; task counters
//! fleet agents                          registered agents
//! fleet tasks [--agent A] [--state S]   retained tasks, newest first
//! fleet logs TASK                       a task's stream, followed live to its end
//! fleet cancel TASK
//! fleet reply TASK "answer"             answers an input-required task (--approve, --reject)
//! fleet submit AGENT "prompt"           submits, then streams the answer (--detach: the id)
//! fleet contexts [--context C]          the conversations the head keeps, newest first
//! fleet context C [--agent A]           a context's turns (--delete: forgets them)
//! fleet actors [--agent A]              the states Python actors keep, newest first
//! fleet actor AGENT [--context C]       one actor's stored state (JSON)
//! fleet publish TOPIC "message"         prints the message's offset once stored
//! fleet follow TOPIC [--from N]         a topic's messages, live (--group G: a share, acked)
//! fleet health [--min-workers N]        the head's /healthz: exit 0 when it serves (no token)
//! fleet acp AGENT                       the agent as an ACP agent on stdio, for an editor
//! ```
//!
//! The head's address comes from `--head` or `FLEET_HEAD` (default `http://127.0.0.1:7070`),
//! its client token from `--token` or `FLEET_TOKEN`, a private CA from `--tls-ca`.
//!
//! - [`commands`]: each command against the cluster's client API;
//! - [`render`]: tables and event lines as the terminal shows them;
//! - [`acp`]: `fleet acp`, the Agent Client Protocol on stdio.

pub mod acp;
pub mod commands;
pub mod render;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};
use fleet_client::{Client, ConnectOptions, Reply, TaskState};

/// The head a bare `fleet` talks to: the address `fleet-head` listens on by default.
pub const DEFAULT_HEAD: &str = "http://127.0.0.1:7070";

#[derive(Debug, Parser)]
#[command(name = "fleet", version, about = "Look at and drive an agentfleet cluster")]
pub struct Args {
    /// The head's address.
    #[arg(long, env = "FLEET_HEAD", default_value = DEFAULT_HEAD, global = true)]
    head: String,
    /// The cluster's client token, when the head requires one.
    #[arg(long, env = "FLEET_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// For an `https://` head: trust the CA certificates in this PEM file.
    #[arg(long, env = "FLEET_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Workers (slots, models loaded, heartbeat) and the cluster's task counters.
    Status,
    /// Registered agents: model, version, tasks submitted.
    Agents,
    /// Retained tasks, newest first.
    Tasks {
        /// Only this agent's tasks.
        #[arg(long)]
        agent: Option<String>,
        /// Only tasks in this state.
        #[arg(long, value_parser = PossibleValuesParser::new(TaskState::ALL.map(TaskState::as_str)))]
        state: Option<String>,
        /// At most this many tasks.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A task's events from the start, followed live until it ends: its text on stdout,
    /// every other event on stderr. Exits 0 when the task completed, 1 otherwise.
    Logs {
        task: String,
        /// Start at this event number (1 = the first; events are numbered from 1 with no gaps).
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Cancels a task; prints the state it ended in.
    Cancel { task: String },
    /// Answers a task that is input-required: its agent's question (the text), or the
    /// approval of a tool call (--approve, or --reject with the text as the reason).
    Reply {
        task: String,
        /// The answer (for --reject, the reason).
        #[arg(default_value = "")]
        text: String,
        #[arg(long, conflicts_with = "reject")]
        approve: bool,
        #[arg(long)]
        reject: bool,
    },
    /// Submits a task and streams it as `logs` does.
    Submit {
        agent: String,
        prompt: String,
        /// Tasks sharing a context form one conversation with the agent.
        #[arg(long)]
        context: Option<String>,
        /// Print the task id and return without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// The conversations the head keeps (a context's turns with an agent), the most
    /// recently continued first.
    Contexts {
        /// Only this context's conversations.
        #[arg(long)]
        context: Option<String>,
        /// Only the conversations with this agent.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A context's turns with each agent (or with --agent only), oldest first; --delete
    /// forgets them instead: the context's next task starts a new conversation.
    Context {
        context: String,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        delete: bool,
    },
    /// The states Python actors (`@af.agent(state=True)`) keep, the most recently saved
    /// first.
    Actors {
        #[arg(long)]
        agent: Option<String>,
        /// Only the actors of this conversation (per-context actors).
        #[arg(long)]
        context: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One actor's stored state, its JSON on one line (--context for a per-context actor).
    Actor {
        agent: String,
        #[arg(long)]
        context: Option<String>,
    },
    /// Publishes a message on a topic; prints its offset once the head has stored it.
    Publish {
        topic: String,
        message: String,
        /// Who followers see as the publisher (default "client").
        #[arg(long)]
        publisher: Option<String>,
    },
    /// A topic's messages as the head stores them, one line each ("OFFSET PUBLISHER: BODY"),
    /// from --from (else from the next one published), live until --limit or Ctrl-C. With
    /// --group, this follower's share of the group's messages, each acknowledged once
    /// printed; the group resumes after what it acknowledged.
    Follow {
        topic: String,
        /// The first offset to print (one retention let go: the oldest kept).
        #[arg(long)]
        from: Option<u64>,
        /// A consumer group to follow in.
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Whether the head serves: its `/healthz`, printed; exits 0 when it answers ready, 1
    /// otherwise (a standby head, or fewer workers than --min-workers). Needs no token: it
    /// is a container's or a load balancer's health check.
    Health {
        /// Ready only once this many workers have joined.
        #[arg(long, default_value_t = 0)]
        min_workers: usize,
    },
    /// Serves the agent to an editor (Zed, ...) as an Agent Client Protocol agent on
    /// stdin/stdout until stdin ends: sessions are the head's conversations, a prompt is a
    /// task whose events stream as session updates. Messages about it go to stderr.
    Acp { agent: String },
}

/// Runs `fleet` with `args` (the program name first); returns the exit code: 0, 1 when the
/// command failed (or a followed task did not complete), 2 for a bad command line.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> i32 {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleet: cannot start: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleet: {}", describe(&e));
            1
        }
    }
}

/// An error with its context, down to the first client error: that one already says what
/// the head answered (the gRPC status beneath it would say it again).
fn describe(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.downcast_ref::<fleet_client::Error>().is_some() {
            break;
        }
    }
    parts.join(": ")
}

async fn run(args: Args) -> anyhow::Result<i32> {
    if let Command::Health { min_workers } = args.command {
        let out = &mut std::io::stdout().lock();
        return commands::health(&args.head, args.tls_ca.as_deref(), min_workers, out).await;
    }
    let options =
        ConnectOptions { token: args.token, tls_ca: args.tls_ca, ..ConnectOptions::default() };
    let client = Client::connect_with(&args.head, options).await?;
    if let Command::Acp { agent } = args.command {
        acp::serve(client, agent, tokio::io::stdin(), tokio::io::stdout()).await?;
        return Ok(0);
    }
    let out = &mut std::io::stdout().lock();
    match args.command {
        Command::Status => commands::status(&client, out).await,
        Command::Agents => commands::agents(&client, out).await,
        Command::Tasks { agent, state, limit } => {
            // clap has checked the name against TaskState::ALL's.
            let state = state.and_then(|s| TaskState::ALL.into_iter().find(|t| t.as_str() == s));
            commands::tasks(&client, agent, state, limit, out).await
        }
        Command::Logs { task, from } => commands::logs(&client, &task, from).await,
        Command::Cancel { task } => commands::cancel(&client, &task, out).await,
        Command::Reply { task, text, approve, reject } => {
            let reply = match (approve, reject) {
                (true, _) => Reply::Approve,
                (_, true) => Reply::Reject(text),
                _ => Reply::Text(text),
            };
            commands::reply(&client, &task, &reply, out).await
        }
        Command::Submit { agent, prompt, context, detach } => {
            commands::submit(&client, agent, prompt, context, detach).await
        }
        Command::Contexts { context, agent, limit } => {
            let (context, agent) = (context.unwrap_or_default(), agent.unwrap_or_default());
            commands::contexts(&client, &context, &agent, limit, out).await
        }
        Command::Actors { agent, context, limit } => {
            let (agent, context) = (agent.unwrap_or_default(), context.unwrap_or_default());
            commands::actors(&client, &agent, &context, limit, out).await
        }
        Command::Actor { agent, context } => {
            commands::actor(&client, &agent, context.as_deref().unwrap_or(""), out).await
        }
        Command::Publish { topic, message, publisher } => {
            commands::publish(&client, &topic, publisher.as_deref().unwrap_or(""), message, out)
                .await
        }
        Command::Follow { topic, from, group, limit } => {
            commands::follow_topic(&client, &topic, from, group.as_deref(), limit, out).await
        }
        Command::Health { .. } => unreachable!("answered above, without a client"),
        Command::Acp { .. } => unreachable!("served above"),
        Command::Context { context, agent, delete } => {
            let agent = agent.unwrap_or_default();
            if delete {
                commands::forget_context(&client, &context, &agent, out).await
            } else {
                commands::context(&client, &context, &agent, out).await
            }
        }
    }
}
