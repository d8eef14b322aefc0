//! Tools that client processes host (Python functions, `HostTools`): their definitions, the
//! processes hosting each, and the calls sent to them that wait for an answer.
//!
//! A process connects, registers functions under names no agent has, and from then on gets
//! the calls agents make of them; the answer goes back to the calling task's worker as the
//! `ToolReply` of its `ToolCall`. A definition outlives its hosts (an agent placed with it
//! keeps calling it, and a call without a host is answered with an error the model reads),
//! so a host that reconnects finds its agents as they were.
//!
//! A tool belongs to the tenant of the process that first hosted it (an admin's are shared
//! by every tenant): only that tenant's hosts may host it again, and only that tenant's
//! agents are given it and may call it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{AgentSpec, FilePart, FunctionTool, TaskId, ToolInvocation};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agents::valid_name;
use crate::{Error, Result};

/// Tool definitions the head keeps (those without a host give way to new ones).
pub const MAX_TOOLS: usize = 1024;
/// Processes hosting tools at once.
pub const MAX_HOSTS: usize = 1024;
/// Calls one host may have unanswered; past that, calls go to other hosts or are refused.
pub const MAX_CALLS_PER_HOST: usize = 4096;
/// The largest description or argument schema of a tool.
pub const MAX_DEFINITION_BYTES: usize = 64 * 1024;
/// The largest answer the model gets: the rest is cut off (and said so).
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The longest timeout a tool may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the head sends a hosting process.
#[derive(Debug, Clone, PartialEq)]
pub enum HostCommand {
    Invoke(ToolInvocation),
    /// The call is no longer waited for: it timed out or its task ended.
    Canceled {
        call: u64,
    },
}

/// A call waiting for its host's answer.
#[derive(Debug, Clone)]
pub struct Pending {
    pub host: u64,
    pub task: TaskId,
    pub call_id: String,
    pub tool: String,
    /// When the call is given up.
    pub deadline: Instant,
    pub timeout: Duration,
}

struct ToolEntry {
    definition: FunctionTool,
    /// Whose tool it is (empty: shared).
    tenant: String,
    /// Changes with the definition, so that agents placed with an older one are placed again.
    generation: u64,
    hosts: Vec<u64>,
}

struct HostEntry {
    commands: mpsc::UnboundedSender<HostCommand>,
    /// The tenant it hosts for (empty: an admin's, whose tools are shared).
    tenant: String,
    tools: Vec<String>,
    /// The host's unanswered calls by deadline.
    deadlines: BTreeSet<(Instant, u64)>,
}

/// The hosted tools of a head.
#[derive(Default)]
pub struct HostedTools {
    tools: HashMap<String, ToolEntry>,
    hosts: HashMap<u64, HostEntry>,
    pending: HashMap<u64, Pending>,
    next_host: u64,
    next_call: u64,
    generation: u64,
    /// Where the next pick among equally busy hosts starts (round robin).
    turn: usize,
}

impl HostedTools {
    /// A new host of `tenant`'s tools (empty: shared ones); it gets its calls from the
    /// receiver.
    pub fn connect(&mut self, tenant: &str) -> Result<(u64, mpsc::UnboundedReceiver<HostCommand>)> {
        if self.hosts.len() >= MAX_HOSTS {
            return Err(Error::InvalidArgument(format!(
                "{MAX_HOSTS} processes host tools already: close one before hosting more"
            )));
        }
        self.next_host += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.hosts.insert(
            self.next_host,
            HostEntry {
                commands: tx,
                tenant: tenant.to_owned(),
                tools: Vec::new(),
                deadlines: BTreeSet::new(),
            },
        );
        Ok((self.next_host, rx))
    }

    /// `host` hosts `tools` from now on. Names must be free of agents (`is_agent`); a name
    /// registered before takes the newer definition.
    pub fn register(
        &mut self,
        host: u64,
        tools: Vec<FunctionTool>,
        is_agent: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let Some(tenant) = self.hosts.get(&host).map(|h| h.tenant.clone()) else {
            return Err(Error::InvalidArgument("this tool host is closed".into()));
        };
        for tool in &tools {
            check(tool)?;
            let theirs = self.tools.get(&tool.name).is_some_and(|t| t.tenant != tenant);
            if theirs && !tenant.is_empty() {
                return Err(Error::NameTaken(tool.name.clone()));
            }
            if is_agent(&tool.name) {
                return Err(Error::InvalidArgument(format!(
                    "tool {:?}: an agent has that name; tools and agents share one namespace",
                    tool.name
                )));
            }
        }
        let new = tools.iter().filter(|t| !self.tools.contains_key(&t.name)).count();
        if self.tools.len() + new > MAX_TOOLS {
            let hostless: Vec<String> = self
                .tools
                .iter()
                .filter(|(_, t)| t.hosts.is_empty())
                .map(|(n, _)| n.clone())
                .collect();
            for name in hostless.into_iter().take(self.tools.len() + new - MAX_TOOLS) {
                self.tools.remove(&name);
            }
            if self.tools.len() + new > MAX_TOOLS {
                return Err(Error::InvalidArgument(format!(
                    "the head holds its limit of {MAX_TOOLS} hosted tools"
                )));
            }
        }
        let mut names = Vec::with_capacity(tools.len());
        for tool in tools {
            let name = tool.name.clone();
            let generation = &mut self.generation;
            let entry = self.tools.entry(name.clone()).or_insert_with(|| {
                *generation += 1;
                ToolEntry {
                    definition: tool.clone(),
                    tenant: tenant.clone(),
                    generation: *generation,
                    hosts: Vec::new(),
                }
            });
            if entry.definition != tool {
                self.generation += 1;
                entry.definition = tool;
                entry.generation = self.generation;
            }
            if !entry.hosts.contains(&host) {
                entry.hosts.push(host);
            }
            if let Some(h) = self.hosts.get_mut(&host)
                && !h.tools.contains(&name)
            {
                h.tools.push(name.clone());
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Whether `name` is a hosted tool (hosted now or before), of any tenant.
    pub fn contains(&self, name: &str) -> bool {
        self.tools.contains_key(name)
    }

    /// Whether `name` is a hosted tool that tasks of `tenant` may call: its own or shared.
    pub fn serves(&self, name: &str, tenant: &str) -> bool {
        self.tools.get(name).is_some_and(|t| t.tenant.is_empty() || t.tenant == tenant)
    }

    /// Whether hosted tool `name` gets its calling task's files.
    pub fn takes_files(&self, name: &str) -> bool {
        self.tools.get(name).is_some_and(|t| t.definition.takes_files)
    }

    /// The hosted tools among an agent's tools (those of its tenant and shared ones), and a
    /// number that changes when any of their definitions does.
    pub fn of(&self, spec: &AgentSpec) -> (Arc<[FunctionTool]>, u64) {
        let mut generation = 0;
        let functions = spec
            .tools
            .iter()
            .filter_map(|name| self.tools.get(name))
            .filter(|t| t.tenant.is_empty() || t.tenant == spec.tenant)
            .inspect(|t| generation = generation.max(t.generation))
            .map(|t| t.definition.clone())
            .collect();
        (functions, generation)
    }

    /// Sends a call to the least busy host of `tool`; the error is what the calling model
    /// reads instead of an answer.
    pub fn invoke(
        &mut self,
        tool: &str,
        task: &TaskId,
        context_id: &str,
        call_id: &str,
        arguments: &str,
        files: Vec<FilePart>,
    ) -> std::result::Result<(), String> {
        let Some(entry) = self.tools.get(tool) else {
            return Err(format!("tool {tool} is not hosted by any process"));
        };
        let hosts = &self.hosts;
        let candidates: Vec<u64> = entry
            .hosts
            .iter()
            .copied()
            .filter(|h| hosts.get(h).is_some_and(|h| h.deadlines.len() < MAX_CALLS_PER_HOST))
            .collect();
        if candidates.is_empty() {
            return Err(if entry.hosts.is_empty() {
                format!("tool {tool} has no process hosting it now (its host disconnected)")
            } else {
                format!("tool {tool} is busy: its hosts have {MAX_CALLS_PER_HOST} calls each")
            });
        }
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % candidates.len();
        let host = (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .min_by_key(|h| hosts.get(h).map_or(usize::MAX, |h| h.deadlines.len()))
            .unwrap_or(candidates[0]);
        self.next_call += 1;
        let call = self.next_call;
        let timeout = entry.definition.timeout();
        let invocation = ToolInvocation {
            call,
            tool: tool.to_owned(),
            arguments: arguments.to_owned(),
            task_id: task.clone(),
            context_id: context_id.to_owned(),
            timeout,
            files,
        };
        let Some(h) = self.hosts.get_mut(&host) else {
            return Err(format!("tool {tool} has no process hosting it now"));
        };
        if h.commands.send(HostCommand::Invoke(invocation)).is_err() {
            return Err(format!("tool {tool}'s host disconnected"));
        }
        let deadline = Instant::now() + timeout;
        h.deadlines.insert((deadline, call));
        let pending = Pending {
            host,
            task: task.clone(),
            call_id: call_id.to_owned(),
            tool: tool.to_owned(),
            deadline,
            timeout,
        };
        self.pending.insert(call, pending);
        Ok(())
    }

    /// The call `host` answered (none: not its call, or no longer waited for).
    pub fn answered(&mut self, host: u64, call: u64) -> Option<Pending> {
        if self.pending.get(&call).is_none_or(|p| p.host != host) {
            return None;
        }
        let pending = self.pending.remove(&call)?;
        if let Some(h) = self.hosts.get_mut(&host) {
            h.deadlines.remove(&(pending.deadline, call));
        }
        Some(pending)
    }

    /// When `host`'s first unanswered call is due.
    pub fn next_deadline(&self, host: u64) -> Option<Instant> {
        self.hosts.get(&host)?.deadlines.first().map(|(at, _)| *at)
    }

    /// `host`'s calls due by `now`, no longer waited for (their host told so).
    pub fn expire(&mut self, host: u64, now: Instant) -> Vec<Pending> {
        let due: Vec<u64> = match self.hosts.get(&host) {
            Some(h) => {
                h.deadlines.iter().take_while(|(at, _)| *at <= now).map(|(_, c)| *c).collect()
            }
            None => return Vec::new(),
        };
        due.into_iter().filter_map(|call| self.expired(host, call)).collect()
    }

    /// The call timed out: no longer waited for, and its host is told so.
    pub fn expired(&mut self, host: u64, call: u64) -> Option<Pending> {
        let pending = self.answered(host, call)?;
        if let Some(h) = self.hosts.get(&host) {
            let _ = h.commands.send(HostCommand::Canceled { call });
        }
        Some(pending)
    }

    /// The calls of a task that ended: their hosts are told to stop.
    pub fn task_ended(&mut self, task: &TaskId) {
        if self.pending.is_empty() {
            return;
        }
        let calls: Vec<(u64, u64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.task == *task)
            .map(|(call, p)| (*call, p.host))
            .collect();
        for (call, host) in calls {
            self.expired(host, call);
        }
    }

    /// `host` is gone; its unanswered calls are returned (to be answered with an error).
    pub fn disconnect(&mut self, host: u64) -> Vec<Pending> {
        let Some(entry) = self.hosts.remove(&host) else { return Vec::new() };
        for name in entry.tools {
            if let Some(tool) = self.tools.get_mut(&name) {
                tool.hosts.retain(|h| *h != host);
            }
        }
        let calls: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.host == host).map(|(c, _)| *c).collect();
        calls.into_iter().filter_map(|c| self.pending.remove(&c)).collect()
    }

    /// The hosts connected now, and the calls they have not answered.
    pub fn counts(&self) -> (usize, usize) {
        (self.hosts.len(), self.pending.len())
    }
}

/// A definition the workers can offer to a model: a valid name, bounded text, and
/// arguments as a JSON schema of an object that the tool-call grammar compiles.
fn check(tool: &FunctionTool) -> Result<()> {
    let bad = |why: String| Err(Error::InvalidArgument(format!("tool {:?}: {why}", tool.name)));
    if !valid_name(&tool.name) {
        return bad("a tool name is 1 to 64 letters, digits, '-', '_' or '.'".into());
    }
    if tool.name == fleet_proto::PUBLISH_TOOL || tool.name == fleet_proto::ASK_USER_TOOL {
        return bad("that name is a built-in tool's (publish, ask_user)".into());
    }
    if tool.description.len() > MAX_DEFINITION_BYTES || tool.parameters.len() > MAX_DEFINITION_BYTES
    {
        return bad(format!("its description and schema may be {MAX_DEFINITION_BYTES} bytes each"));
    }
    if Duration::from_millis(tool.timeout_ms.into()) > MAX_TIMEOUT {
        return bad(format!("its timeout may be at most {} s", MAX_TIMEOUT.as_secs()));
    }
    let parameters: serde_json::Value = match serde_json::from_str(&tool.parameters) {
        Ok(p @ serde_json::Value::Object(_)) => p,
        Ok(_) => return bad("its parameters are a JSON schema object".into()),
        Err(e) => return bad(format!("its parameters are not JSON: {e}")),
    };
    let definition = serde_json::json!({
        "type": "function",
        "function": { "name": tool.name, "description": tool.description, "parameters": parameters },
    });
    let choice = fleet_grammar::ToolChoice::Auto;
    fleet_grammar::tool_call_format(
        &[definition],
        &choice,
        None,
        fleet_grammar::CallStyle::Hermes,
        false,
    )
    .and_then(|grammar| grammar.check())
    .map_err(|e| Error::InvalidArgument(format!("tool {:?}: its parameters: {e}", tool.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> FunctionTool {
        FunctionTool {
            name: name.into(),
            description: "adds".into(),
            parameters:
                r#"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#.into(),
            ..Default::default()
        }
    }

    fn no_agents(_: &str) -> bool {
        false
    }

    #[test]
    fn calls_go_to_a_host_and_answers_come_back_once() {
        let mut tools = HostedTools::default();
        let (host, mut rx) = tools.connect("").expect("host");
        tools.register(host, vec![tool("add")], no_agents).expect("registered");
        let task = TaskId::new("t1");
        tools.invoke("add", &task, "", "c1", r#"{"a":1}"#, Vec::new()).expect("sent");
        let Ok(HostCommand::Invoke(call)) = rx.try_recv() else { panic!("no call") };
        assert_eq!((call.tool.as_str(), call.arguments.as_str()), ("add", r#"{"a":1}"#));
        assert_eq!(
            call.timeout,
            Duration::from_millis(fleet_proto::DEFAULT_FUNCTION_TIMEOUT_MS.into())
        );
        assert!(tools.answered(host + 1, call.call).is_none(), "another host's answer");
        let pending = tools.answered(host, call.call).expect("waited for");
        assert_eq!(pending.call_id, "c1");
        assert!(tools.answered(host, call.call).is_none(), "answered twice");
    }

    #[test]
    fn a_gone_host_leaves_its_definition_and_returns_its_calls() {
        let mut tools = HostedTools::default();
        let (host, _rx) = tools.connect("").expect("host");
        tools.register(host, vec![tool("add")], no_agents).expect("registered");
        tools.invoke("add", &TaskId::new("t1"), "", "c1", "{}", Vec::new()).expect("sent");
        let lost = tools.disconnect(host);
        assert_eq!(lost.len(), 1);
        let spec = AgentSpec { tools: vec!["add".into(), "helper".into()], ..Default::default() };
        assert_eq!(tools.of(&spec).0.len(), 1, "the definition stays");
        let error = tools
            .invoke("add", &TaskId::new("t1"), "", "c2", "{}", Vec::new())
            .expect_err("no host");
        assert!(error.contains("no process hosting it"), "{error}");
    }

    #[test]
    fn a_changed_definition_changes_the_generation() {
        let mut tools = HostedTools::default();
        let (host, _rx) = tools.connect("").expect("host");
        let spec = AgentSpec { tools: vec!["add".into()], ..Default::default() };
        tools.register(host, vec![tool("add")], no_agents).expect("registered");
        let first = tools.of(&spec).1;
        tools.register(host, vec![tool("add")], no_agents).expect("again");
        assert_eq!(tools.of(&spec).1, first, "the same definition");
        let mut changed = tool("add");
        changed.description = "adds two numbers".into();
        tools.register(host, vec![changed], no_agents).expect("changed");
        assert!(tools.of(&spec).1 > first);
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        let mut tools = HostedTools::default();
        let (host, _rx) = tools.connect("").expect("host");
        let mut bad = tool("add");
        bad.parameters = "[1]".into();
        let e = tools.register(host, vec![bad], no_agents).expect_err("not an object");
        assert!(e.to_string().contains("JSON schema object"), "{e}");
        let e = tools.register(host, vec![tool("has space")], no_agents).expect_err("name");
        assert!(e.to_string().contains("tool name"), "{e}");
        let e = tools.register(host, vec![tool("helper")], |n| n == "helper").expect_err("agent");
        assert!(e.to_string().contains("an agent has that name"), "{e}");
    }

    #[test]
    fn an_ended_tasks_calls_are_canceled_at_their_host() {
        let mut tools = HostedTools::default();
        let (host, mut rx) = tools.connect("").expect("host");
        tools.register(host, vec![tool("add")], no_agents).expect("registered");
        let task = TaskId::new("t1");
        tools.invoke("add", &task, "", "c1", "{}", Vec::new()).expect("sent");
        let Ok(HostCommand::Invoke(call)) = rx.try_recv() else { panic!("no call") };
        tools.task_ended(&task);
        assert_eq!(rx.try_recv().ok(), Some(HostCommand::Canceled { call: call.call }));
        assert_eq!(tools.counts(), (1, 0));
    }
}
