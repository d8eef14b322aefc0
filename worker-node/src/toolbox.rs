//! The tools an agent's model may call. Each tool of an agent is routed once ([`Toolbox`]):
//! another agent through the head (`head_calls`), another agent over the mesh
//! (`agent_calls`), the `publish` tool of an agent with topics (`topics`), when its actor is
//! placed; the tools of its MCP servers (`mcp`) once they are connected, on its first task
//! ([`ToolboxSource`]). The agent loop calls them all through one interface,
//! [`ToolCaller`], and sees one kind of answer, `ToolOutcome` (both in [`crate::tool`]).

use std::sync::Arc;

use fleet_proto::ErrorKind;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use crate::ask::HumanInput;
use crate::tool::ToolCaller;

/// An agent's toolbox, ready once its MCP servers are connected (at once without any); or
/// why it cannot be had.
pub type ToolboxHandle = Shared<BoxFuture<'static, Result<Arc<Toolbox>, (ErrorKind, String)>>>;

/// Where an agent's tasks get its toolbox: the one connection of its MCP servers, shared by
/// its tasks; after a failure to reach one (`unavailable`), the next task connects anew.
#[derive(Clone)]
pub struct ToolboxSource {
    current: Arc<Mutex<ToolboxHandle>>,
    connect: Arc<dyn Fn() -> ToolboxHandle + Send + Sync>,
}

impl ToolboxSource {
    /// A toolbox with nothing to connect.
    pub fn ready(toolbox: Toolbox) -> Self {
        let toolbox = Arc::new(toolbox);
        Self::new(move || futures::future::ready(Ok(toolbox.clone())).boxed().shared())
    }

    /// A toolbox that `connect` starts connecting (now, and again after a failure).
    pub fn new(connect: impl Fn() -> ToolboxHandle + Send + Sync + 'static) -> Self {
        let current = Arc::new(Mutex::new(connect()));
        Self { current, connect: Arc::new(connect) }
    }

    pub async fn get(&self) -> Result<Arc<Toolbox>, (ErrorKind, String)> {
        let handle = self.current.lock().clone();
        let result = handle.clone().await;
        if let Err((ErrorKind::Unavailable, _)) = &result {
            let mut current = self.current.lock();
            if current.ptr_eq(&handle) {
                *current = (self.connect)();
            }
        }
        result
    }
}

/// An agent's tools by name, in the order its spec lists them.
#[derive(Clone, Default)]
pub struct Toolbox {
    tools: Vec<(String, Arc<dyn ToolCaller>)>,
    /// What the agent may ask its client: the `ask_user` tool, approvals of calls.
    pub human: Option<HumanInput>,
}

impl std::fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.iter().map(|(name, _)| name)).finish()
    }
}

impl Toolbox {
    /// Adds a tool; a later tool of the same name replaces the earlier one.
    pub fn add(&mut self, name: impl Into<String>, tool: Arc<dyn ToolCaller>) {
        let name = name.into();
        self.tools.retain(|(known, _)| *known != name);
        self.tools.push((name, tool));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn ToolCaller>> {
        self.tools.iter().find(|(known, _)| known == name).map(|(_, tool)| tool)
    }

    /// Whether `name` is never called twice for one step: its agent says so (`call_once`),
    /// or the tool itself does.
    pub fn calls_once(&self, agent_says: &[String], name: &str) -> bool {
        agent_says.iter().any(|once| once == name)
            || self.get(name).is_some_and(|tool| tool.call_once())
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty() && !self.asks_user()
    }

    /// Whether the agent offers the model a tool named `name`: one of its own, or its
    /// `ask_user`.
    pub fn offers(&self, name: &str) -> bool {
        self.get(name).is_some() || (name == fleet_proto::ASK_USER_TOOL && self.asks_user())
    }

    /// Whether the agent has the built-in `ask_user` tool (which the agent loop answers).
    pub fn asks_user(&self) -> bool {
        self.human.as_ref().is_some_and(HumanInput::asks_user)
    }

    /// The tools as the model sees them.
    pub fn definitions(&self) -> Vec<serde_json::Value> {
        let mut definitions: Vec<_> =
            self.tools.iter().map(|(_, tool)| tool.definition()).collect();
        if self.asks_user() {
            definitions.push(HumanInput::ask_user_definition());
        }
        definitions
    }

    /// The tools' names, for a model that called one that does not exist.
    pub fn names(&self) -> String {
        let mut names: Vec<&str> = self.tools.iter().map(|(name, _)| name.as_str()).collect();
        if self.asks_user() {
            names.push(fleet_proto::ASK_USER_TOOL);
        }
        names.join(", ")
    }
}
