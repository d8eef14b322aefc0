//! The agent registry: agents declared in the config file or registered at run time,
//! validated once here so that the rest of the head can trust them.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_proto::AgentSpec;

use crate::{Error, Result};

/// Model ids every worker can run without weights.
pub const BUILTIN_PREFIX: &str = "builtin:";
/// Model ids of remote OpenAI-compatible endpoints, which every worker can call.
pub const OPENAI_PREFIX: &str = "openai:";
/// The names of the agents the head makes to serve a model directly (OpenAI API requests
/// that name a model rather than an agent): `model:<id>`. Users cannot register names with
/// a colon, so these never collide with theirs.
pub const MODEL_AGENT_PREFIX: &str = "model:";

/// Whether every worker can run `model` (built-ins and remote endpoints).
pub fn runs_everywhere(model: &str) -> bool {
    model.starts_with(BUILTIN_PREFIX) || model.starts_with(OPENAI_PREFIX)
}

/// A registered agent.
#[derive(Debug)]
pub struct AgentEntry {
    pub spec: Arc<AgentSpec>,
    /// Grows each time the spec changes; workers re-place actors of an older version.
    pub version: u64,
    /// When this head last took a new spec for it (registered, replaced, or restored at
    /// start): its card's `Last-Modified`.
    pub changed_at: std::time::SystemTime,
    pub tasks_submitted: u64,
    /// Tasks of this agent placed on a worker and not yet finished.
    pub running: u32,
}

/// All agents by name, at most `max_agents` of them (each at most [`MAX_INSTRUCTIONS_BYTES`]
/// of instructions), so that what clients register is bounded.
#[derive(Debug)]
pub struct AgentRegistry {
    agents: HashMap<String, AgentEntry>,
    next_version: u64,
    /// Agents registered by clients, and the head's `model:` agents of remote (`openai:`)
    /// models, whose names any client chooses. (`model:` agents of other models are bounded
    /// by the models workers have.)
    user_agents: usize,
    max_agents: usize,
}

/// What a registration did.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    New,
    Unchanged,
    /// The spec changed: actors of the old version must be stopped.
    Replaced,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_AGENTS)
    }
}

/// Agents a head holds unless `--max-agents` says otherwise.
pub const DEFAULT_MAX_AGENTS: usize = 10_000;
/// The longest model id: a GGUF file name or `openai:` with a remote model's name.
pub const MAX_MODEL_ID_BYTES: usize = 256;
/// The most instructions one agent has: 256 KiB, about 64k tokens, beyond the context of
/// the local models served.
pub const MAX_INSTRUCTIONS_BYTES: usize = 256 << 10;

impl AgentRegistry {
    pub fn new(max_agents: usize) -> Self {
        Self { agents: HashMap::new(), next_version: 0, user_agents: 0, max_agents }
    }

    /// Registers or updates an agent after validating it; a new name beyond the limit is
    /// refused (`TooManyAgents`), a known one may always change.
    pub fn register(&mut self, spec: AgentSpec) -> Result<(Registered, &AgentEntry)> {
        validate(&spec)?;
        if !self.agents.contains_key(&spec.name) && self.user_agents >= self.max_agents {
            return Err(Error::TooManyAgents { limit: self.max_agents });
        }
        self.next_version += 1;
        let version = self.next_version;
        let name = spec.name.clone();
        let outcome = match self.agents.get_mut(&name) {
            Some(entry) if *entry.spec == spec => Registered::Unchanged,
            Some(entry) => {
                entry.spec = Arc::new(spec);
                entry.version = version;
                entry.changed_at = std::time::SystemTime::now();
                Registered::Replaced
            }
            None => {
                let entry = AgentEntry {
                    spec: Arc::new(spec),
                    version,
                    changed_at: std::time::SystemTime::now(),
                    tasks_submitted: 0,
                    running: 0,
                };
                self.agents.insert(name.clone(), entry);
                self.user_agents += 1;
                Registered::New
            }
        };
        let entry = self.agents.get(&name).ok_or_else(|| Error::UnknownAgent(name.clone()))?;
        Ok((outcome, entry))
    }

    /// The agent that serves `model` directly, registered on first use. A remote model's
    /// agent counts toward `max_agents` (any client names those models), and a model id is
    /// at most [`MAX_MODEL_ID_BYTES`].
    pub fn model_agent(&mut self, model: &str) -> Result<&AgentEntry> {
        if model.len() > MAX_MODEL_ID_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the model id is {} bytes: at most {MAX_MODEL_ID_BYTES}",
                model.len()
            )));
        }
        let name = format!("{MODEL_AGENT_PREFIX}{model}");
        if !self.agents.contains_key(&name) {
            let chosen_by_clients = model.starts_with(OPENAI_PREFIX);
            if chosen_by_clients {
                if self.user_agents >= self.max_agents {
                    return Err(Error::TooManyAgents { limit: self.max_agents });
                }
                self.user_agents += 1;
            }
            self.next_version += 1;
            let spec = AgentSpec {
                name: name.clone(),
                model: model.to_owned(),
                description: format!("the model {model} served directly"),
                max_retries: fleet_proto::DEFAULT_MAX_RETRIES,
                ..Default::default()
            };
            let entry = AgentEntry {
                spec: Arc::new(spec),
                version: self.next_version,
                changed_at: std::time::SystemTime::now(),
                tasks_submitted: 0,
                running: 0,
            };
            self.agents.insert(name.clone(), entry);
        }
        Ok(&self.agents[&name])
    }

    pub fn get(&self, name: &str) -> Result<&AgentEntry> {
        self.agents.get(name).ok_or_else(|| Error::UnknownAgent(name.to_owned()))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut AgentEntry> {
        self.agents.get_mut(name).ok_or_else(|| Error::UnknownAgent(name.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }
}

/// Tools (other agents) one agent may call.
const MAX_TOOLS: usize = 32;
const MAX_TOPICS: usize = 16;

/// The longest a task may wait for a person.
const MAX_INPUT_TIMEOUT_MS: u32 = 24 * 3600 * 1000;

/// The tools that need approval, or are called once, are among the agent's, and the wait
/// for input is bounded.
fn check_approvals(spec: &AgentSpec) -> std::result::Result<(), String> {
    for (field, names) in
        [("requires_approval", &spec.requires_approval), ("call_once", &spec.call_once)]
    {
        if names.len() > MAX_TOOLS {
            return Err(format!("{field} names at most {MAX_TOOLS} tools, got {}", names.len()));
        }
        for name in names {
            let listed = spec.tools.iter().any(|t| t == name)
                || (name == fleet_proto::PUBLISH_TOOL && !spec.topics.is_empty())
                // An MCP server's tools are known once the worker connects to it.
                || (valid_name(name) && !spec.mcp.is_empty());
            if !listed {
                return Err(format!(
                    "{field} names {name:?}, which is not one of its tools ({})",
                    spec.tools.join(", ")
                ));
            }
        }
    }
    if spec.input_timeout_ms > MAX_INPUT_TIMEOUT_MS {
        return Err(format!(
            "input_timeout is more than 0 and at most 24 hours ({MAX_INPUT_TIMEOUT_MS} ms), \
             got {} ms",
            spec.input_timeout_ms
        ));
    }
    Ok(())
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Compiles an output format the way a worker will, so that one it cannot follow is refused
/// when it is given rather than failing the tasks that use it. A swarm's tasks share one
/// format, so formats that passed are remembered (a bounded set of their hashes); a worker
/// compiles each format again anyway, so a hash collision costs a later error, not a wrong
/// answer.
pub fn check_format(format: &fleet_proto::OutputFormat) -> std::result::Result<(), String> {
    use std::hash::{Hash, Hasher};
    static PASSED: parking_lot::Mutex<Option<std::collections::HashSet<u64>>> =
        parking_lot::Mutex::new(None);
    const REMEMBERED: usize = 1024;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match format {
        fleet_proto::OutputFormat::JsonObject => 0.hash(&mut hasher),
        fleet_proto::OutputFormat::JsonSchema(text) => (1, text).hash(&mut hasher),
        fleet_proto::OutputFormat::Regex(text) => (2, text).hash(&mut hasher),
        fleet_proto::OutputFormat::Lark(text) => (3, text).hash(&mut hasher),
    }
    let key = hasher.finish();
    if PASSED.lock().as_ref().is_some_and(|passed| passed.contains(&key)) {
        return Ok(());
    }
    compile_format(format)?;
    let mut passed = PASSED.lock();
    let passed = passed.get_or_insert_with(Default::default);
    if passed.len() >= REMEMBERED {
        passed.clear();
    }
    passed.insert(key);
    Ok(())
}

fn compile_format(format: &fleet_proto::OutputFormat) -> std::result::Result<(), String> {
    use fleet_grammar::OutputFormat as Grammar;
    let format = match format {
        fleet_proto::OutputFormat::JsonObject => Grammar::JsonObject,
        fleet_proto::OutputFormat::JsonSchema(text) => {
            Grammar::json_schema_text(text).map_err(|e| e.to_string())?
        }
        fleet_proto::OutputFormat::Regex(regex) => Grammar::Regex(regex.clone()),
        fleet_proto::OutputFormat::Lark(lark) => Grammar::Lark(lark.clone()),
    };
    format.check().map_err(|e| e.to_string())
}

/// MCP servers one agent may use at most.
pub const MAX_MCP_SERVERS: usize = 8;
/// Arguments of one MCP server's command at most, and bytes of each (and of a URL).
const MAX_MCP_ARGS: usize = 64;
const MAX_MCP_TEXT: usize = 4096;

/// Each MCP server is a command or a URL, not both, within bounds.
fn check_mcp(spec: &AgentSpec) -> std::result::Result<(), String> {
    if spec.mcp.len() > MAX_MCP_SERVERS {
        return Err(format!("at most {MAX_MCP_SERVERS} MCP servers, got {}", spec.mcp.len()));
    }
    for (i, server) in spec.mcp.iter().enumerate() {
        let which = format!("mcp[{i}]");
        match (server.command.is_empty(), server.url.is_empty()) {
            (true, true) => {
                return Err(format!(
                    "{which} names no server: give command = [\"program\", ...] or url = \"http://...\""
                ));
            }
            (false, false) => {
                return Err(format!("{which} has both a command and a url: give one"));
            }
            (false, true) => {
                if server.command.len() > MAX_MCP_ARGS
                    || server.command.iter().any(|a| a.len() > MAX_MCP_TEXT)
                {
                    return Err(format!(
                        "{which}.command: at most {MAX_MCP_ARGS} arguments of at most \
                         {MAX_MCP_TEXT} bytes each"
                    ));
                }
                if server.command[0].trim().is_empty() {
                    return Err(format!("{which}.command starts with an empty program name"));
                }
            }
            (true, false) => {
                let scheme_ok =
                    server.url.starts_with("http://") || server.url.starts_with("https://");
                if !scheme_ok || server.url.len() > MAX_MCP_TEXT {
                    return Err(format!(
                        "{which}.url {:?} must be an http:// or https:// URL of at most \
                         {MAX_MCP_TEXT} bytes",
                        server.url
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks an agent spec; the error says which field is wrong and how.
pub fn validate(spec: &AgentSpec) -> Result<()> {
    let bad = |msg: String| Err(Error::InvalidAgent(msg));
    if !valid_name(&spec.name) {
        return bad(format!(
            "name {:?} must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            spec.name
        ));
    }
    if spec.model.trim().is_empty() {
        return bad(format!(
            "agent {:?} has no model: set model, e.g. \"builtin:echo\"",
            spec.name
        ));
    }
    if let Some(builtin) = spec.model.strip_prefix(BUILTIN_PREFIX)
        && builtin != "echo"
    {
        return bad(format!(
            "unknown built-in model {:?}: the built-in models are builtin:echo",
            spec.model
        ));
    }
    if spec.actor_state != fleet_proto::ActorState::None
        && !spec.model.starts_with(fleet_proto::PYTHON_PREFIX)
    {
        return bad(format!(
            "agent {:?} keeps actor state, which is a Python agent's (ctx.state): give it a \
             model python:NAME, or no state",
            spec.name
        ));
    }
    if spec.model.strip_prefix(OPENAI_PREFIX).is_some_and(|m| m.trim().is_empty()) {
        return bad(format!(
            "model {:?} names no remote model: write openai:MODEL, e.g. \"openai:gpt-4o-mini\"",
            spec.model
        ));
    }
    if let Some(format) = &spec.sampling.format {
        // With tools, the answer follows the format and calls follow the tools' grammar,
        // which takes JSON answers only.
        let json = matches!(
            format,
            fleet_proto::OutputFormat::JsonObject | fleet_proto::OutputFormat::JsonSchema(_)
        );
        if !json && (!spec.tools.is_empty() || !spec.topics.is_empty()) {
            return bad(format!(
                "agent {:?} has tools and a regex or grammar output format: with tools, give \
                 a JSON schema",
                spec.name
            ));
        }
        check_format(format)
            .map_err(|e| Error::InvalidAgent(format!("agent {:?}: {e}", spec.name)))?;
    }
    if spec.tools.len() > MAX_TOOLS {
        return bad(format!("at most {MAX_TOOLS} tools per agent, got {}", spec.tools.len()));
    }
    if let Some(tool) = spec.tools.iter().find(|t| !valid_name(t)) {
        return bad(format!(
            "tool {tool:?} is not an agent name: tools are the names of other agents"
        ));
    }
    if spec.tools.iter().any(|t| t == fleet_proto::PUBLISH_TOOL) {
        return bad(format!(
            "{:?} is the tool of agents with topics: list the topics instead",
            fleet_proto::PUBLISH_TOOL
        ));
    }
    if spec.tools.iter().any(|t| t == fleet_proto::ASK_USER_TOOL) {
        return bad(format!(
            "{:?} is a built-in tool: set ask_user on the agent instead of listing it",
            fleet_proto::ASK_USER_TOOL
        ));
    }
    check_mcp(spec).map_err(|e| Error::InvalidAgent(format!("agent {:?}: {e}", spec.name)))?;
    check_approvals(spec)
        .map_err(|e| Error::InvalidAgent(format!("agent {:?}: {e}", spec.name)))?;
    match spec.tool_choice.as_str() {
        "" | "auto" => {}
        "required"
            if !spec.tools.is_empty()
                || !spec.topics.is_empty()
                || !spec.mcp.is_empty()
                || spec.ask_user => {}
        name if spec.tools.iter().any(|t| t == name)
            || (name == fleet_proto::PUBLISH_TOOL && !spec.topics.is_empty())
            || (name == fleet_proto::ASK_USER_TOOL && spec.ask_user)
            // An MCP server's tools are known once the worker connects to it.
            || (valid_name(name) && !spec.mcp.is_empty()) => {}
        other => {
            return bad(format!(
                "agent {:?}: tool_choice {other:?} is not \"auto\", \"required\" or one of \
                 its tools",
                spec.name
            ));
        }
    }
    if spec.topics.len() > MAX_TOPICS {
        return bad(format!("at most {MAX_TOPICS} topics per agent, got {}", spec.topics.len()));
    }
    if let Some(topic) = spec.topics.iter().find(|t| !valid_name(t)) {
        return bad(format!("topic {topic:?} must be 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    let r = &spec.resources;
    if !r.cpus.is_finite() || r.cpus < 0.0 {
        return bad(format!("resources.cpus must be a non-negative number, got {}", r.cpus));
    }
    if let Some(t) = spec.sampling.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return bad(format!("sampling.temperature must be between 0 and 2, got {t}"));
    }
    if let Some(p) = spec.sampling.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return bad(format!("sampling.top_p must be in (0, 1], got {p}"));
    }
    for (name, value) in [
        ("presence_penalty", spec.sampling.presence_penalty),
        ("frequency_penalty", spec.sampling.frequency_penalty),
    ] {
        if let Some(p) = value
            && !(-2.0..=2.0).contains(&p)
        {
            return bad(format!("sampling.{name} must be between -2 and 2, got {p}"));
        }
    }
    if spec.max_retries > 100 {
        return bad(format!("max_retries must be at most 100, got {}", spec.max_retries));
    }
    if spec.instructions.len() > MAX_INSTRUCTIONS_BYTES {
        return bad(format!(
            "instructions must be at most {} KiB, got {} KiB",
            MAX_INSTRUCTIONS_BYTES >> 10,
            spec.instructions.len().div_ceil(1024)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fleet_proto::McpServer;

    use super::*;

    fn echo(name: &str) -> AgentSpec {
        AgentSpec { name: name.into(), model: "builtin:echo".into(), ..Default::default() }
    }

    #[test]
    fn registering_twice_is_idempotent_and_changes_bump_the_version() -> Result<()> {
        let mut agents = AgentRegistry::default();
        let v1 = agents.register(echo("a"))?.1.version;
        assert_eq!(agents.register(echo("a"))?.0, Registered::Unchanged);
        let changed = AgentSpec { instructions: "new".into(), ..echo("a") };
        let (outcome, entry) = agents.register(changed)?;
        assert_eq!(outcome, Registered::Replaced);
        assert!(entry.version > v1);
        Ok(())
    }

    #[test]
    fn new_names_beyond_the_limit_are_refused_and_known_ones_may_change() -> Result<()> {
        let mut agents = AgentRegistry::new(2);
        agents.register(echo("a"))?;
        agents.register(echo("b"))?;
        agents.model_agent("some.gguf")?;
        let refused = agents.register(echo("c")).err();
        assert!(matches!(refused, Some(Error::TooManyAgents { limit: 2 })), "{refused:?}");
        // Remote models' agents, named by any client, count; and their names are bounded.
        let refused = agents.model_agent("openai:gpt-4o").err();
        assert!(matches!(refused, Some(Error::TooManyAgents { limit: 2 })), "{refused:?}");
        let mut roomy = AgentRegistry::new(10);
        roomy.model_agent("openai:gpt-4o")?;
        roomy.model_agent("openai:gpt-4o")?;
        assert_eq!(roomy.user_agents, 1);
        let long = format!("openai:{}", "x".repeat(MAX_MODEL_ID_BYTES));
        assert!(matches!(roomy.model_agent(&long), Err(Error::InvalidArgument(_))));
        let changed = AgentSpec { instructions: "new".into(), ..echo("b") };
        assert_eq!(agents.register(changed)?.0, Registered::Replaced);
        Ok(())
    }

    fn with_format(schema: &str) -> AgentSpec {
        let mut spec = echo("a");
        spec.sampling.format = Some(fleet_proto::OutputFormat::JsonSchema(schema.into()));
        spec
    }

    fn with_mcp(server: McpServer) -> AgentSpec {
        AgentSpec { mcp: vec![server], ..echo("a") }
    }

    #[test]
    fn invalid_specs_say_what_is_wrong() {
        let cases = [
            (echo(""), "name"),
            (echo("has space"), "name"),
            (AgentSpec { model: String::new(), ..echo("a") }, "no model"),
            (AgentSpec { model: "builtin:nope".into(), ..echo("a") }, "built-in"),
            (AgentSpec { instructions: "x".repeat(300 << 10), ..echo("a") }, "at most 256 KiB"),
            (with_format(r#"{"type": "frobnicate"}"#), "frobnicate"),
            (with_mcp(McpServer::default()), "names no server"),
            (
                with_mcp(McpServer { command: vec!["x".into()], url: "http://a/".into() }),
                "both a command and a url",
            ),
            (
                with_mcp(McpServer { command: vec![], url: "file:///etc".into() }),
                "http:// or https://",
            ),
            (
                with_mcp(McpServer { command: vec![" ".into()], url: String::new() }),
                "empty program",
            ),
            (
                AgentSpec {
                    mcp: vec![McpServer { command: vec!["x".into()], url: String::new() }; 9],
                    ..echo("a")
                },
                "at most 8 MCP servers",
            ),
            (with_format("{not json"), "does not parse"),
            (
                AgentSpec {
                    tools: vec!["helper".into()],
                    sampling: fleet_proto::Sampling {
                        format: Some(fleet_proto::OutputFormat::Regex("a+".into())),
                        ..Default::default()
                    },
                    ..echo("a")
                },
                "give a JSON schema",
            ),
        ];
        for (spec, needle) in cases {
            let err = validate(&spec).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{err}");
        }
    }
}
