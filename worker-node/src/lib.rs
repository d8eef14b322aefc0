//! The agentfleet worker node: joins a head and runs agent actors' tasks on local
//! models (or remote OpenAI-compatible ones).
//!
//! - [`connection`] keeps the `Join` stream to the head: registration, heartbeats, task
//!   events up, commands down, reconnection with backoff; tasks keep running while the head
//!   is away and their events wait in the [`outbox`] until the head has stored them;
//! - [`host`] carries out the commands: it places supervised kameo [`actor::AgentActor`]s,
//!   hands them tasks, cancels and stops them;
//! - [`actor`] is the agent actor (spec, shared model, [`memory`] of conversations);
//! - [`agent_loop`] runs one task: embed, or generate and call tools ([`tool_calls`] finds
//!   the calls local models write as text), bounded in rounds;
//! - [`toolbox`] is an agent's tools behind one interface, each routed once when its actor
//!   is placed: other agents through the head ([`head_calls`]) or straight over the mesh
//!   ([`agent_calls`], [`fleet_mesh`], asking the head only where they run; [`callee`] runs
//!   the calls that reach this worker on its actors), and the `publish` tool of
//!   [`topics`], the swarm's blackboard: the mesh's topics for agents' prompts, and for the
//!   head to relay to clients; and the tools of agents' MCP servers ([`mcp`], clients run
//!   here for the servers the operator allows);
//! - [`code_agents`] runs the tasks of agents written as code this process hosts (Python
//!   agents, `python:NAME`): their text, chats with the worker's models, calls and topics;
//! - [`runner`] drives one generation into task events;
//! - [`models`] lists the models on disk, loads them on first use (or `--preload`) and
//!   shares loaded ones; [`remote`] is the model of `openai:MODEL` agents (an
//!   OpenAI-compatible endpoint over HTTP); [`resources`] detects
//!   what the machine has; [`config`] holds the settings; [`cli`] is the `fleet-worker`
//!   command line (also run by `python -m agentfleet worker`).
//!
//! Model forward passes never run on the async runtime: the inference engine runs them on
//! its own threads behind the [`fleet_inference::Model`] trait.

pub mod actor;
pub mod agent_calls;
pub mod agent_loop;
pub mod ask;
pub mod callee;
pub mod cli;
pub mod code_agents;
pub mod config;
pub mod connection;
pub mod error;
mod gate;
pub mod head_calls;
pub mod host;
pub mod mcp;
pub mod memory;
pub mod models;
pub mod outbox;
pub mod remote;
pub mod resources;
pub mod runner;
mod spans;
pub mod tool;
pub mod tool_calls;
pub mod toolbox;
pub mod topics;

pub use config::WorkerConfig;
pub use connection::run;
pub use error::{Error, Result};
