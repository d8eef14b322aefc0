//! The actor host: carries out the head's commands. It places (spawns) a supervised
//! `AgentActor` per agent, hands tasks to them, cancels and stops them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{AgentSpec, Command, ErrorKind, EventKind, FunctionTool, TaskAssignment, TaskId};
use futures::FutureExt;
use kameo::actor::{Actor, ActorRef, Spawn};
use kameo::error::Infallible;
use kameo::supervision::{RestartPolicy, SupervisionStrategy};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::actor::{AgentActor, AgentArgs, Brain, Run, RunningTasks};
use crate::agent_calls::{AgentCaller, MeshCall};
use crate::ask::HumanInput;
use crate::callee::LocalCalls;
use crate::code_agents::{CodeAgents, CodeHost, SharedModels};
use crate::head_calls::{HeadCall, PendingCalls};
use crate::mcp::{self, McpPolicy};
use crate::models::ModelStore;
use crate::runner::{self, EventSink};
use crate::tool::{ToolCaller, ToolOutcome};
use crate::toolbox::{Toolbox, ToolboxSource};
use crate::topics::{PublishTool, TopicBoard, TopicStore};

/// The root of the worker's supervision tree; restarts agent actors that panic.
pub struct Supervisor;

impl Actor for Supervisor {
    type Args = ();
    type Error = Infallible;

    fn supervision_strategy() -> SupervisionStrategy {
        SupervisionStrategy::OneForOne
    }

    async fn on_start(_: Self::Args, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(Self)
    }
}

/// An agent as placed: its spec's version number, the spec, its hosted tools.
type Placed = (u64, Arc<AgentSpec>, Arc<[FunctionTool]>);

/// Everything the worker hosts.
pub struct ActorHost {
    supervisor: ActorRef<Supervisor>,
    /// The spec and its version of each agent placed here, with its hosted tools; its actor
    /// is in `local_calls`.
    versions: HashMap<String, Placed>,
    models: SharedModels,
    /// The code agents (Python agents) this process hosts, if any.
    code: Option<Arc<dyn CodeAgents>>,
    running: RunningTasks,
    calls: PendingCalls,
    /// The agents' actors: tasks and agent calls (from the mesh or this worker) reach them.
    local_calls: LocalCalls,
    /// Calls to other agents over the mesh; `None` without a mesh (calls go through the head).
    caller: Option<Arc<AgentCaller>>,
    /// The mesh's topics on this worker; `None` without a mesh.
    board: Option<Arc<TopicBoard>>,
    /// The head's topic logs, where agents' messages are stored.
    topic_store: Arc<TopicStore>,
    /// Which MCP servers agents may use here.
    mcp_policy: McpPolicy,
    /// Closes each placed agent's MCP connections (kills their programs) when it goes.
    mcp_sessions: HashMap<String, CancellationToken>,
}

impl std::fmt::Debug for ActorHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorHost").field("agents", &self.versions.len()).finish_non_exhaustive()
    }
}

impl ActorHost {
    /// A host whose actors load their models from `models`; agents' topic messages go up
    /// to the head through `to_head`.
    pub fn new(
        models: ModelStore,
        to_head: tokio::sync::mpsc::Sender<fleet_proto::WorkerUpdate>,
    ) -> Self {
        Self {
            supervisor: Supervisor::spawn(()),
            versions: HashMap::new(),
            models: Arc::new(parking_lot::Mutex::new(models)),
            code: None,
            running: RunningTasks::default(),
            calls: PendingCalls::default(),
            local_calls: LocalCalls::default(),
            caller: None,
            board: None,
            topic_store: TopicStore::new(to_head),
            mcp_policy: McpPolicy::default(),
            mcp_sessions: HashMap::new(),
        }
    }

    /// Agents may use the MCP servers `policy` allows.
    pub fn with_mcp_policy(mut self, policy: McpPolicy) -> Self {
        self.mcp_policy = policy;
        self
    }

    /// Agents whose model is `python:NAME` run on `code`.
    pub fn with_code_agents(mut self, code: Option<Arc<dyn CodeAgents>>) -> Self {
        self.code = code;
        self
    }

    /// The actors agent calls reach on this worker.
    pub fn local_calls(&self) -> LocalCalls {
        self.local_calls.clone()
    }

    /// From now on, agents call agents over the mesh through `caller` and share topics on
    /// `board`.
    pub fn use_mesh(&mut self, caller: Arc<AgentCaller>, board: Arc<TopicBoard>) {
        self.caller = Some(caller);
        self.board = Some(board);
    }

    /// The models this host shares among its actors.
    pub fn models_mut(&mut self) -> parking_lot::MutexGuard<'_, ModelStore> {
        self.models.lock()
    }

    pub fn running_tasks(&self) -> usize {
        self.running.lock().len()
    }

    /// The tasks running here with their attempts (told to the head at each join).
    pub fn running_list(&self) -> std::collections::HashSet<(TaskId, u32)> {
        self.running.lock().iter().map(|(id, (attempt, _))| (id.clone(), *attempt)).collect()
    }

    /// The connection to the head is gone: tasks keep running (their events wait in the
    /// outbox), but nothing that needs the head now can wait for it.
    pub fn head_lost(&self) {
        if let Some(caller) = &self.caller {
            caller.head_lost();
        }
        self.topic_store.head_lost();
    }

    pub fn actors(&self) -> usize {
        self.versions.len()
    }

    pub fn models_loaded(&self) -> Vec<String> {
        self.models.lock().loaded_ids()
    }

    /// Cancels every running task (the connection to the head is gone: the head retries them).
    pub fn cancel_all(&self) {
        for (_, (_, token)) in self.running.lock().drain() {
            token.cancel();
        }
        self.calls.clear();
        if let Some(caller) = &self.caller {
            caller.head_lost();
        }
    }

    /// Carries out one command from the head.
    pub async fn handle(&mut self, command: Command, sink: &EventSink) {
        match command {
            Command::PlaceActor { spec, version, functions } => {
                self.place(spec, version, functions).await
            }
            Command::RunTask(task) => self.run(task, sink).await,
            Command::CancelTask { task_id, reason } => {
                if let Some((_, token)) = self.running.lock().get(&task_id) {
                    info!(task_id = %task_id, reason, "cancelling task");
                    token.cancel();
                }
            }
            Command::ToolReply { task_id, call_id, output, is_error } => {
                // Nobody waits when the task ended or was retried meanwhile.
                self.calls.answer(task_id, call_id, ToolOutcome { output, is_error });
            }
            Command::StopActor { agent } => {
                self.versions.remove(&agent);
                if let Some(session) = self.mcp_sessions.remove(&agent) {
                    session.cancel();
                }
                if let Some(actor) = self.local_calls.removed(&agent) {
                    info!(agent, "stopping actor");
                    actor.kill();
                }
            }
            Command::MeshPeers(peers) => match &self.caller {
                Some(caller) => caller.mesh_peers(peers),
                None => debug!("mesh peers ignored: this worker has no mesh"),
            },
            Command::Located { request_id, result } => {
                if let Some(caller) = &self.caller {
                    caller.located(request_id, result);
                }
            }
            Command::FollowTopic { topic, follow } => match &self.board {
                Some(board) => board.follow(&topic, follow),
                None => debug!(topic, "topic follow ignored: this worker has no mesh"),
            },
            Command::Publish(request) => match &self.board {
                Some(board) => board.publish_for_head(request),
                None => debug!(topic = %request.topic, "publish ignored: this worker has no mesh"),
            },
            Command::TopicMessageStored { request_id, result } => {
                self.topic_store.stored(request_id, result);
            }
            // The connection's business (see `outbox`), not the actors'.
            Command::Acked { .. } | Command::HeartbeatEvery(_) => {}
        }
    }

    async fn place(&mut self, spec: Arc<AgentSpec>, version: u64, functions: Arc<[FunctionTool]>) {
        match self.versions.get_mut(&spec.name) {
            // The same spec (maybe under another number: a restarted head numbers anew): the
            // actor and its running tasks stay.
            Some((placed, current, tools)) if **current == *spec && *tools == functions => {
                *placed = version;
                return;
            }
            _ => {}
        }
        if let Some(actor) = self.local_calls.removed(&spec.name) {
            actor.kill();
        }
        let brain = self.brain(&spec);
        let args = AgentArgs {
            spec: spec.clone(),
            brain,
            running: self.running.clone(),
            tools: self.toolbox(&spec, &functions),
            board: self.board.clone(),
        };
        if let Some(board) = &self.board {
            for topic in &spec.topics {
                board.subscribe(topic);
            }
        }
        let actor = AgentActor::supervise(&self.supervisor, args)
            .restart_policy(RestartPolicy::Permanent)
            .restart_limit(10, Duration::from_secs(10))
            .spawn()
            .await;
        info!(agent = %spec.name, model = %spec.model, version, "actor placed");
        self.local_calls.placed(&spec.name, actor, spec.max_concurrency);
        self.versions.insert(spec.name.clone(), (version, spec, functions));
    }

    /// What answers the agent's tasks: its code when its model is `python:NAME`, else the
    /// model; the actor starts at once and its tasks wait for the model (loading in the
    /// background).
    fn brain(&mut self, spec: &AgentSpec) -> Brain {
        if !spec.model.starts_with(fleet_proto::PYTHON_PREFIX) {
            return Brain::Model(self.models.lock().get(&spec.model, &spec.model_options));
        }
        match &self.code {
            Some(agents) => {
                let (calls, caller) = (self.calls.clone(), self.caller.clone());
                Brain::Code(CodeHost {
                    agents: agents.clone(),
                    models: self.models.clone(),
                    route: Arc::new(move |agent| agent_route(agent, &calls, caller.as_ref())),
                })
            }
            None => {
                let error = format!(
                    "agent {} is Python code ({}), and this worker hosts no Python agents",
                    spec.name, spec.model
                );
                let error = crate::models::LoadError::new(ErrorKind::Unsupported, error);
                Brain::Model(futures::future::ready(Err(error)).boxed().shared())
            }
        }
    }

    /// The agent's toolbox: its own tools at once, then, on the first task that needs them,
    /// the tools of its MCP servers (a tool whose name is taken is left out). The servers'
    /// connections close when the agent is stopped or replaced.
    fn toolbox(&mut self, spec: &AgentSpec, functions: &[FunctionTool]) -> ToolboxSource {
        if let Some(session) = self.mcp_sessions.remove(&spec.name) {
            session.cancel();
        }
        let own = self.own_tools(spec, functions);
        if spec.mcp.is_empty() {
            return ToolboxSource::ready(own);
        }
        let session = CancellationToken::new();
        self.mcp_sessions.insert(spec.name.clone(), session.clone());
        let (servers, policy, agent) =
            (spec.mcp.clone(), self.mcp_policy.clone(), spec.name.clone());
        ToolboxSource::new(move || {
            let connecting =
                connect_mcp(own.clone(), servers.clone(), &policy, agent.clone(), session.clone());
            // On a task of its own: a canceled first task does not stall the connection.
            let connecting = tokio::spawn(connecting);
            async move {
                connecting.await.unwrap_or_else(|_| {
                    Err((ErrorKind::Internal, "connecting the MCP servers panicked".into()))
                })
            }
            .boxed()
            .shared()
        })
    }

    /// The agent's tools, each routed once: hosted functions through the head, agents over
    /// the mesh when the worker is on one (else through the head), and `publish` for an
    /// agent with topics.
    fn own_tools(&self, spec: &AgentSpec, functions: &[FunctionTool]) -> Toolbox {
        let mut toolbox = Toolbox::default();
        toolbox.human = HumanInput::new(spec, functions, self.calls.clone());
        for name in &spec.tools {
            let tool: Arc<dyn ToolCaller> = match functions.iter().find(|f| f.name == *name) {
                Some(function) => Arc::new(HeadCall::hosted(function, self.calls.clone())),
                None => agent_route(name, &self.calls, self.caller.as_ref()),
            };
            toolbox.add(name.clone(), tool);
        }
        if !spec.topics.is_empty() {
            let publish = PublishTool {
                agent: spec.name.clone(),
                topics: spec.topics.clone(),
                board: self.board.clone(),
                store: self.topic_store.clone(),
            };
            toolbox.add(fleet_proto::PUBLISH_TOOL, Arc::new(publish));
        }
        toolbox
    }

    async fn run(&mut self, task: TaskAssignment, sink: &EventSink) {
        let Some(actor) = self.local_calls.get(&task.agent) else {
            let error = format!("agent {:?} is not placed on this worker", task.agent);
            runner::emit(sink, &task, EventKind::failed(ErrorKind::Internal, error)).await;
            return;
        };
        let cancel = CancellationToken::new();
        self.running.lock().insert(task.task_id.clone(), (task.attempt, cancel.clone()));
        let run = Run { task: task.clone(), sink: sink.clone(), cancel, lease: None };
        if let Err(e) = actor.ask(run).await {
            self.running.lock().remove(&task.task_id);
            let error =
                format!("the actor of agent {:?} failed ({e}); it is being restarted", task.agent);
            runner::emit(sink, &task, EventKind::failed(ErrorKind::Internal, error)).await;
        }
    }
}

/// The agent `name` called as a tool: over the mesh when the worker is on one, else through
/// the head.
fn agent_route(
    name: &str,
    calls: &PendingCalls,
    caller: Option<&Arc<AgentCaller>>,
) -> Arc<dyn ToolCaller> {
    match caller {
        Some(caller) => Arc::new(MeshCall { agent: name.to_owned(), caller: caller.clone() }),
        None => Arc::new(HeadCall::agent(name, calls.clone())),
    }
}

/// The agent's own tools plus those of its MCP servers, all of which the policy must allow.
fn connect_mcp(
    own: Toolbox,
    servers: Vec<fleet_proto::McpServer>,
    policy: &McpPolicy,
    agent: String,
    session: CancellationToken,
) -> impl std::future::Future<Output = Result<Arc<Toolbox>, (ErrorKind, String)>> + Send + 'static {
    let refused = servers.iter().find_map(|server| {
        let refusal = policy.refusal(server)?;
        Some((ErrorKind::Unsupported, format!("agent {agent}'s MCP server {server}: {refusal}")))
    });
    async move {
        if let Some(refused) = refused {
            return Err(refused);
        }
        let mut toolbox = own;
        for server in &servers {
            let tools = mcp::connect(server, &agent, session.clone()).await.map_err(|e| {
                (ErrorKind::Unavailable, format!("agent {agent}'s MCP server {server}: {e}"))
            })?;
            for (name, tool) in tools {
                if toolbox.get(&name).is_some() {
                    warn!(agent, %server, tool = name, "MCP tool left out: the agent has a tool of that name");
                    continue;
                }
                toolbox.add(name, tool);
            }
        }
        Ok(Arc::new(toolbox))
    }
}

impl Default for ActorHost {
    /// A host without models whose agents' topic messages go nowhere (tests).
    fn default() -> Self {
        Self::new(ModelStore::default(), tokio::sync::mpsc::channel(1).0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::runner::Outgoing;
    use fleet_inference::builtin::Echo;
    use fleet_inference::{GenerateRequest, Generation, Model};
    use tokio::sync::mpsc;

    use super::*;

    /// Panics on its first generation, echoes afterwards.
    struct PanicsOnce(AtomicU32);

    impl Model for PanicsOnce {
        fn id(&self) -> &str {
            "test:panics-once"
        }

        fn generate(&self, request: GenerateRequest) -> fleet_inference::Result<Generation> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the model blew up");
            }
            Echo::default().generate(request)
        }
    }

    /// Generates only once a task on the caller's runtime has run: blocks (up to 5 s, then
    /// fails) where `generate` is called on that runtime's only thread.
    struct NeedsTheRuntime(Arc<std::sync::atomic::AtomicBool>);

    impl Model for NeedsTheRuntime {
        fn id(&self) -> &str {
            "test:needs-the-runtime"
        }

        fn generate(&self, request: GenerateRequest) -> fleet_inference::Result<Generation> {
            let ran = self.0.clone();
            // Detached: the test only needs it to run.
            drop(tokio::runtime::Handle::current().spawn(async move {
                ran.store(true, Ordering::SeqCst);
            }));
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !self.0.load(Ordering::SeqCst) {
                if std::time::Instant::now() > deadline {
                    return Err(fleet_inference::Error::InvalidRequest(
                        "generate blocked the async runtime".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Echo::default().generate(request)
        }
    }

    /// Python agents' stand-in: `shout` streams its input in capitals, then what
    /// `builtin:echo` answers it; `wait` runs until canceled (and says when it was dropped).
    struct FakeCode(Arc<std::sync::atomic::AtomicBool>);

    impl crate::code_agents::CodeAgents for FakeCode {
        fn names(&self) -> Vec<String> {
            vec!["shout".into(), "wait".into()]
        }

        fn run(
            &self,
            task: crate::code_agents::CodeTask,
            context: crate::code_agents::CodeContext,
        ) -> futures::future::BoxFuture<'static, crate::code_agents::CodeResult> {
            let dropped = self.0.clone();
            async move {
                if task.program == "wait" {
                    struct Flag(Arc<std::sync::atomic::AtomicBool>);
                    impl Drop for Flag {
                        fn drop(&mut self) {
                            self.0.store(true, Ordering::SeqCst);
                        }
                    }
                    let _flag = Flag(dropped);
                    return futures::future::pending().await;
                }
                context.text(task.input.to_uppercase()).await;
                let request = GenerateRequest {
                    messages: vec![fleet_inference::ChatMessage::new(
                        fleet_inference::Role::User,
                        task.input.clone(),
                    )],
                    ..Default::default()
                };
                let echoed = context.chat("builtin:echo", request).await.map_err(|(_, e)| e)?;
                context.text(format!(" {echoed}")).await;
                Ok(())
            }
            .boxed()
        }
    }

    fn text_of(events: &[EventKind]) -> String {
        events
            .iter()
            .filter_map(|k| match k {
                EventKind::TextDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_python_agent_runs_on_the_code_this_process_hosts() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut host =
            ActorHost::default().with_code_agents(Some(Arc::new(FakeCode(dropped.clone()))));
        let (tx, mut rx) = mpsc::channel(64);
        for program in ["shout", "wait"] {
            let spec = Arc::new(AgentSpec {
                name: program.into(),
                model: format!("python:{program}"),
                ..Default::default()
            });
            let place = Command::PlaceActor { spec, version: 1, functions: Arc::from([]) };
            host.handle(place, &tx).await;
        }
        let shout = TaskAssignment { agent: "shout".into(), ..task("t1") };
        host.handle(Command::RunTask(shout), &tx).await;
        let events = events_of(&mut rx, "t1").await;
        assert!(matches!(events.first(), Some(EventKind::Working)), "{events:?}");
        assert!(matches!(events.last(), Some(EventKind::Completed { .. })), "{events:?}");
        assert_eq!(text_of(&events), "STILL HERE still here");

        let wait = TaskAssignment { agent: "wait".into(), ..task("t2") };
        host.handle(Command::RunTask(wait), &tx).await;
        let cancel = Command::CancelTask { task_id: TaskId::new("t2"), reason: "test".into() };
        host.handle(cancel, &tx).await;
        let events = events_of(&mut rx, "t2").await;
        assert!(matches!(events.last(), Some(EventKind::Canceled { .. })), "{events:?}");
        assert!(dropped.load(Ordering::SeqCst), "the canceled run's code was not dropped");
        assert_eq!(host.running_tasks(), 0);
    }

    #[tokio::test]
    async fn a_python_agent_on_a_worker_without_python_fails_saying_so() {
        let mut host = ActorHost::default();
        let spec = Arc::new(AgentSpec {
            name: "a".into(),
            model: "python:shout".into(),
            ..Default::default()
        });
        let (tx, mut rx) = mpsc::channel(64);
        host.handle(Command::PlaceActor { spec, version: 1, functions: Arc::from([]) }, &tx).await;
        host.handle(Command::RunTask(task("t1")), &tx).await;
        let events = events_of(&mut rx, "t1").await;
        assert!(
            matches!(events.last(), Some(EventKind::Failed { error, .. }) if error.contains("hosts no Python agents")),
            "{events:?}"
        );
    }

    fn task(id: &str) -> TaskAssignment {
        TaskAssignment::new(TaskId::new(id), "a", "still here")
    }

    async fn events_of(rx: &mut mpsc::Receiver<Outgoing>, id: &str) -> Vec<EventKind> {
        let mut kinds = Vec::new();
        while let Some(Outgoing { event: e, .. }) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.ok().flatten()
        {
            if e.task_id.as_str() == id {
                let end = e.kind.is_terminal();
                kinds.push(e.kind);
                if end {
                    break;
                }
            }
        }
        kinds
    }

    /// Preparing a prompt (chat template, tokenizer) is blocking work: it must not hold the
    /// worker's runtime, which is single-threaded on small machines (as in this test).
    #[tokio::test(flavor = "current_thread")]
    async fn prompts_are_prepared_off_the_async_runtime() {
        let mut host = ActorHost::default();
        let model = NeedsTheRuntime(Arc::default());
        host.models_mut().insert("test:needs-the-runtime", &BTreeMap::new(), Arc::new(model));
        let spec = Arc::new(AgentSpec {
            name: "a".into(),
            model: "test:needs-the-runtime".into(),
            ..Default::default()
        });
        let (tx, mut rx) = mpsc::channel(64);
        host.handle(Command::PlaceActor { spec, version: 1, functions: Arc::from([]) }, &tx).await;
        host.handle(Command::RunTask(task("t1")), &tx).await;
        let events = events_of(&mut rx, "t1").await;
        assert!(matches!(events.last(), Some(EventKind::Completed { .. })), "{events:?}");
    }

    #[tokio::test]
    async fn a_panicking_model_fails_its_task_and_the_agent_serves_the_next() {
        let mut host = ActorHost::default();
        host.models_mut().insert(
            "test:panics-once",
            &BTreeMap::new(),
            Arc::new(PanicsOnce(AtomicU32::new(0))),
        );
        let spec = Arc::new(AgentSpec {
            name: "a".into(),
            model: "test:panics-once".into(),
            ..Default::default()
        });
        let (tx, mut rx) = mpsc::channel(64);
        host.handle(Command::PlaceActor { spec, version: 1, functions: Arc::from([]) }, &tx).await;

        host.handle(Command::RunTask(task("t1")), &tx).await;
        let first = events_of(&mut rx, "t1").await;
        assert!(
            matches!(first.as_slice(), [EventKind::Working, EventKind::Failed { error, .. }] if error.contains("panicked")),
            "{first:?}"
        );
        assert_eq!(host.running_tasks(), 0);

        host.handle(Command::RunTask(task("t2")), &tx).await;
        let second = events_of(&mut rx, "t2").await;
        assert!(matches!(second.last(), Some(EventKind::Completed { .. })), "{second:?}");
        let text: String = second
            .iter()
            .filter_map(|k| match k {
                EventKind::TextDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "still here");
    }
}
