//! Placement decisions: which worker runs a task. Pure functions over the worker registry,
//! so every rule is unit-tested without a cluster.
//!
//! Filter: the worker has the agent's model (built-ins are everywhere), carries every label
//! the agent asks for, has a free slot and enough free resources, and is not draining (a
//! draining worker still counts as one that could run it: its replacement is coming, so the
//! task waits rather than fails). Score, strongest first:
//! the worker that holds the task's conversation (`context_id`), one that ran the start of
//! the same conversation (an OpenAI chat's earlier turns: its prefix cache holds them), the
//! model already loaded (locality), one that recently ran the same agent (its instructions
//! and tools are a cached prefix there), then low load and few tasks of the same agent
//! (spread); ties go to the worker that was given the fewest tasks.
//!
//! The warm bonuses are smaller than a worker's load can grow: an agent's tasks gather on
//! a warm worker until it is about two thirds full, then spill (and warm the next one).

use std::hash::{DefaultHasher, Hash, Hasher};

use fleet_proto::{AgentSpec, TaskOptions};

use crate::workers::{WorkerEntry, WorkerRegistry};

/// Where a task should go.
#[derive(Debug, PartialEq)]
pub enum Placement {
    /// Run it on this worker now.
    Worker(String),
    /// Some worker could run it, but none has room now: queue it.
    Wait,
    /// No live worker could ever run it; the reason says what is missing.
    Never(String),
}

/// Fleets up to this size have every worker scored for each task.
const SCORE_ALL_UP_TO: usize = 128;

/// In a larger fleet, the workers with a free slot scored for a task, a different few each
/// time (the best of a sample spreads load about as well as the best of all: the "power of
/// d choices"); the workers its affinity names (its conversation's, those warm for its
/// prefixes, those with its model loaded) are scored beside them, up to as many each.
const SAMPLE: usize = 8;

/// Whether a worker could run the agent at all, ignoring its current load.
fn could_ever_run(spec: &AgentSpec, w: &WorkerEntry) -> bool {
    w.has_model(&spec.model)
        && spec.labels.iter().all(|(k, v)| w.registration.labels.get(k) == Some(v))
        && w.registration.resources.fits(&spec.resources)
        && w.registration.slots > 0
}

/// Whether a sub-task of `spec` could run on `w` in the slot its caller lends there: all
/// but a free slot.
pub fn can_borrow(spec: &AgentSpec, w: &WorkerEntry) -> bool {
    // A draining worker's tasks may still call agents in the slots they lend: they finish
    // sooner that way.
    could_ever_run(spec, w) && !w.commands.is_cut() && w.free.fits(&spec.resources)
}

fn can_run_now(spec: &AgentSpec, w: &WorkerEntry) -> bool {
    could_ever_run(spec, w) && !w.draining && w.has_free_slot() && w.free.fits(&spec.resources)
}

/// What a task shares with earlier ones, making the workers that ran those better homes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Affinity<'a> {
    /// The worker that ran the previous turn of the task's conversation (its `context_id`).
    pub context_worker: Option<&'a str>,
    /// The task's prompt prefixes; none for models without a prefix cache.
    pub prefixes: Option<Prefixes>,
}

impl<'a> Affinity<'a> {
    pub fn context(worker: &'a str) -> Self {
        Self { context_worker: Some(worker), prefixes: None }
    }
}

/// Keys of the prompt prefixes a task may find cached on a worker that ran another task
/// with the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefixes {
    /// The agent: its instructions and tools start every prompt of it.
    pub agent: u64,
    /// The start of the task's conversation (its system turns and first user turn), for
    /// tasks that carry one (OpenAI chats): every later turn starts with it.
    pub conversation: Option<u64>,
}

impl Prefixes {
    /// The prefixes of a task of `spec` with `input` and `options`; `None` where no cache
    /// holds prefixes (built-in and remote models) or the task embeds.
    pub fn of(spec: &AgentSpec, input: &str, options: Option<&TaskOptions>) -> Option<Self> {
        if crate::agents::runs_everywhere(&spec.model)
            || options.is_some_and(|o| !o.embed.is_empty())
        {
            return None;
        }
        let key = |f: &dyn Fn(&mut DefaultHasher)| {
            let mut h = DefaultHasher::new();
            spec.name.hash(&mut h);
            f(&mut h);
            h.finish()
        };
        let conversation = options.map(|o| {
            key(&|h: &mut DefaultHasher| {
                let system = o.history.iter().take_while(|t| t.role == "system");
                for t in system {
                    (&t.role, &t.content).hash(h);
                }
                // The first user turn: the history's, or this task's input on turn one.
                match o.history.iter().find(|t| t.role != "system") {
                    Some(t) => (&t.role, &t.content).hash(h),
                    None => ("user", input).hash(h),
                }
            })
        });
        Some(Self { agent: key(&|_: &mut DefaultHasher| {}), conversation })
    }
}

fn score(spec: &AgentSpec, w: &WorkerEntry, affinity: &Affinity<'_>) -> f64 {
    let slots = f64::from(w.registration.slots.max(1));
    let locality = if w.has_model_loaded(&spec.model) { 2.0 } else { 0.0 };
    let context = if affinity.context_worker == Some(w.id.as_str()) { 4.0 } else { 0.0 };
    let warm = match &affinity.prefixes {
        Some(p) if p.conversation.is_some_and(|c| w.warm.contains(c)) => 3.0,
        Some(p) if w.warm.contains(p.agent) => 1.0,
        _ => 0.0,
    };
    let load = f64::from(w.slots_taken()) / slots;
    let same_agent = f64::from(w.running_per_agent.get(&spec.name).copied().unwrap_or(0)) / slots;
    locality + context + warm - load - 0.5 * same_agent
}

/// Picks a worker for one task of `spec`. A fleet larger than [`SCORE_ALL_UP_TO`] has only
/// a sample scored (see [`SAMPLE`]); every worker is looked at only when none of the sample
/// can run the task, to tell waiting from never.
pub fn place(spec: &AgentSpec, workers: &mut WorkerRegistry, affinity: &Affinity<'_>) -> Placement {
    if workers.len() > SCORE_ALL_UP_TO {
        if !workers.any_free_slot() {
            // Cheap when it is so: the first worker that could run it answers.
            return match workers.iter().any(|w| could_ever_run(spec, w)) {
                true => Placement::Wait,
                false => Placement::Never(why_not(spec, workers)),
            };
        }
        let sampled = candidates(spec, workers, affinity);
        if let Some(w) = best(spec, sampled.iter().filter_map(|id| workers.get(id)), affinity) {
            return Placement::Worker(w.id.clone());
        }
    }
    place_among_all(spec, workers, affinity)
}

/// The workers scored for a task in a large fleet: a sample of those with a free slot, and
/// those its affinity names.
fn candidates(
    spec: &AgentSpec,
    workers: &mut WorkerRegistry,
    affinity: &Affinity<'_>,
) -> Vec<String> {
    let mut ids = workers.free_workers(SAMPLE);
    ids.extend(affinity.context_worker.map(str::to_owned));
    if let Some(p) = &affinity.prefixes {
        for key in [p.conversation, Some(p.agent)].into_iter().flatten() {
            ids.extend(workers.warm_for(key, SAMPLE).map(str::to_owned));
        }
    }
    ids.extend(workers.with_model_loaded(&spec.model, SAMPLE).map(str::to_owned));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The best scored of `workers` that can run a task of `spec` now; ties go to the one given
/// fewer tasks.
fn best<'a>(
    spec: &AgentSpec,
    workers: impl Iterator<Item = &'a WorkerEntry>,
    affinity: &Affinity<'_>,
) -> Option<&'a WorkerEntry> {
    let mut best: Option<(&'a WorkerEntry, f64)> = None;
    for w in workers.filter(|w| can_run_now(spec, w)) {
        let s = score(spec, w, affinity);
        let better = match best {
            None => true,
            Some((b, bs)) => {
                s > bs + 1e-9 || ((s - bs).abs() <= 1e-9 && w.tasks_assigned < b.tasks_assigned)
            }
        };
        if better {
            best = Some((w, s));
        }
    }
    best.map(|(w, _)| w)
}

fn place_among_all(
    spec: &AgentSpec,
    workers: &WorkerRegistry,
    affinity: &Affinity<'_>,
) -> Placement {
    match best(spec, workers.iter(), affinity) {
        Some(w) => Placement::Worker(w.id.clone()),
        None if workers.is_empty() || workers.iter().any(|w| could_ever_run(spec, w)) => {
            Placement::Wait
        }
        None => Placement::Never(why_not(spec, workers)),
    }
}

/// Picks the worker whose actor of `spec` takes calls over the mesh: only workers on the
/// mesh that could run the agent at all; the one holding the conversation whenever it is
/// one of them, else the best scored: a free slot first, then hosting the actor, then the
/// least loaded. Every worker that could run it stays a candidate when all slots are taken:
/// the callee's worker has the call wait in a bounded line for a slot, and refuses it as
/// busy past that (see the worker's `callee`).
pub fn locate<'a>(
    spec: &AgentSpec,
    workers: &'a WorkerRegistry,
    context_worker: Option<&str>,
) -> Result<&'a str, String> {
    let affinity = Affinity { context_worker, prefixes: None };
    let score = |w: &WorkerEntry| {
        let hosted = if w.placed.contains_key(&spec.name) { 2.0 } else { 0.0 };
        // A call takes a slot of its callee's worker: one with none free holds it waiting.
        let free = if w.has_free_slot() { 3.0 } else { 0.0 };
        score(spec, w, &affinity) + hosted + free
    };
    let candidates = || {
        workers
            .iter()
            .filter(|w| w.registration.mesh.is_some() && !w.draining && could_ever_run(spec, w))
    };
    // The conversation's memory is on the worker that ran it: the call goes there, busy or
    // not (it waits for a turn there rather than answering without its history).
    if let Some(there) = context_worker.and_then(|id| candidates().find(|w| w.id == id)) {
        return Ok(there.id.as_str());
    }
    candidates()
        .max_by(|a, b| score(a).total_cmp(&score(b)).then(b.tasks_assigned.cmp(&a.tasks_assigned)))
        .map(|w| w.id.as_str())
        .ok_or_else(|| {
            if workers.iter().any(|w| could_ever_run(spec, w)) {
                format!("agent {:?} can run only on workers that are not on the mesh", spec.name)
            } else {
                why_not(spec, workers)
            }
        })
}

/// Explains why no live worker can run `spec`.
fn why_not(spec: &AgentSpec, workers: &WorkerRegistry) -> String {
    if !workers.iter().any(|w| w.has_model(&spec.model)) {
        if let Some(name) = spec.model.strip_prefix(fleet_proto::PYTHON_PREFIX) {
            return format!(
                "no worker hosts the Python agent {name:?}: start one that imports it \
                 (python -m agentfleet worker --head URL --import MODULE)"
            );
        }
        return format!("no worker has model {:?}", spec.model);
    }
    if !workers
        .iter()
        .any(|w| spec.labels.iter().all(|(k, v)| w.registration.labels.get(k) == Some(v)))
    {
        return format!("no worker carries the labels {:?}", spec.labels);
    }
    let r = &spec.resources;
    format!(
        "no worker with the model and labels has {} cpus, {} bytes of memory and {} gpus",
        r.cpus, r.memory_bytes, r.gpus
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{Heartbeat, ModelOnDisk, Registration, Resources, TaskId, TaskOptions};
    use std::collections::BTreeMap;
    use tokio::time::Instant;

    struct Setup {
        registry: WorkerRegistry,
        _keep: Vec<crate::workers::CommandStream>,
    }

    impl Setup {
        fn new() -> Self {
            Self { registry: WorkerRegistry::default(), _keep: Vec::new() }
        }

        fn worker(&mut self, id: &str, f: impl FnOnce(&mut Registration)) -> &mut Self {
            let mut registration = Registration {
                worker_id: id.into(),
                slots: 4,
                resources: Resources { cpus: 2.0, memory_bytes: 1 << 30, gpus: 0 },
                ..Default::default()
            };
            f(&mut registration);
            let (tx, rx) = crate::workers::CommandSender::channel();
            self._keep.push(rx);
            let conn = self.registry.next_connection();
            self.registry.insert(WorkerEntry::new(
                registration,
                conn,
                "p".into(),
                tx,
                Instant::now(),
            ));
            self
        }

        fn run(&mut self, worker: &str, agent: &str, tasks: usize) {
            let w = self.registry.get_mut(worker).expect("worker exists");
            for _ in 0..tasks {
                let n = w.running.len();
                w.running.insert(TaskId::new(format!("{worker}-{agent}-{n}")));
            }
            *w.running_per_agent.entry(agent.into()).or_default() += tasks as u32;
        }
    }

    fn agent(model: &str) -> AgentSpec {
        AgentSpec { name: "a".into(), model: model.into(), ..Default::default() }
    }

    fn model(id: &str) -> ModelOnDisk {
        ModelOnDisk { id: id.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn a_draining_worker_gets_nothing_new_and_tasks_wait_for_another() {
        let mut s = Setup::new();
        s.worker("w1", |_| {}).worker("w2", |_| {});
        s.run("w2", "other", 2);
        s.registry.get_mut("w1").expect("w1").draining = true;
        let echo = agent("builtin:echo");
        assert_eq!(
            place(&echo, &mut s.registry, &Affinity::default()),
            Placement::Worker("w2".into())
        );
        s.registry.get_mut("w2").expect("w2").draining = true;
        // Its replacement is coming: wait, do not fail the task.
        assert_eq!(place(&echo, &mut s.registry, &Affinity::default()), Placement::Wait);
    }

    #[tokio::test]
    async fn picks_the_least_loaded_worker() {
        let mut s = Setup::new();
        s.worker("w1", |_| {}).worker("w2", |_| {});
        s.run("w1", "other", 2);
        assert_eq!(
            place(&agent("builtin:echo"), &mut s.registry, &Affinity::default()),
            Placement::Worker("w2".into())
        );
    }

    #[tokio::test]
    async fn never_places_on_a_worker_without_the_model() {
        let mut s = Setup::new();
        s.worker("w1", |_| {}).worker("w2", |r| r.models.push(model("qwen")));
        s.run("w2", "other", 3);
        assert_eq!(
            place(&agent("qwen"), &mut s.registry, &Affinity::default()),
            Placement::Worker("w2".into())
        );
        s.run("w2", "other", 1);
        assert_eq!(place(&agent("qwen"), &mut s.registry, &Affinity::default()), Placement::Wait);
        match place(&agent("llama"), &mut s.registry, &Affinity::default()) {
            Placement::Never(why) => assert!(why.contains("no worker has model \"llama\"")),
            other => panic!("expected Never, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn python_agents_go_only_to_workers_that_host_them() {
        let mut s = Setup::new();
        s.worker("plain", |_| {})
            .worker("py", |r| r.python_agents.push("Counter".into()))
            .worker("embedded", |r| r.python_agents.push(fleet_proto::ANY_PYTHON_AGENT.into()));
        s.run("embedded", "other", 3);
        let counter = agent("python:Counter");
        assert_eq!(
            place(&counter, &mut s.registry, &Affinity::default()),
            Placement::Worker("py".into())
        );
        s.run("py", "other", 4);
        assert_eq!(
            place(&counter, &mut s.registry, &Affinity::default()),
            Placement::Worker("embedded".into())
        );
        s.run("embedded", "other", 1);
        assert_eq!(place(&counter, &mut s.registry, &Affinity::default()), Placement::Wait);

        let mut s = Setup::new();
        s.worker("plain", |_| {}).worker("py", |r| r.python_agents.push("Counter".into()));
        match place(&agent("python:Other"), &mut s.registry, &Affinity::default()) {
            Placement::Never(why) => {
                assert!(why.contains("no worker hosts the Python agent \"Other\""), "{why}");
            }
            other => panic!("expected Never, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn prefers_a_worker_with_the_model_loaded() {
        let mut s = Setup::new();
        s.worker("w1", |r| r.models.push(model("m"))).worker("w2", |r| r.models.push(model("m")));
        s.registry.get_mut("w2").expect("w2").heartbeat.models_loaded.push("m".into());
        s.run("w2", "other", 1);
        assert_eq!(
            place(&agent("m"), &mut s.registry, &Affinity::default()),
            Placement::Worker("w2".into())
        );
    }

    #[tokio::test]
    async fn labels_and_resources_filter() {
        let mut s = Setup::new();
        s.worker("cpu", |_| {}).worker("gpu", |r| {
            r.labels.insert("zone".into(), "b".into());
            r.resources.gpus = 1;
        });
        let mut spec = agent("builtin:echo");
        spec.resources.gpus = 1;
        assert_eq!(
            place(&spec, &mut s.registry, &Affinity::default()),
            Placement::Worker("gpu".into())
        );
        spec.resources.gpus = 0;
        spec.labels = BTreeMap::from([("zone".into(), "a".into())]);
        assert!(
            matches!(place(&spec, &mut s.registry, &Affinity::default()), Placement::Never(why) if why.contains("labels"))
        );
        spec.labels.clear();
        spec.resources.cpus = 8.0;
        assert!(
            matches!(place(&spec, &mut s.registry, &Affinity::default()), Placement::Never(why) if why.contains("cpus"))
        );
    }

    #[tokio::test]
    async fn full_workers_mean_wait_and_no_workers_mean_wait() {
        let mut s = Setup::new();
        assert_eq!(
            place(&agent("builtin:echo"), &mut s.registry, &Affinity::default()),
            Placement::Wait
        );
        s.worker("w1", |r| r.slots = 1);
        s.run("w1", "a", 1);
        assert_eq!(
            place(&agent("builtin:echo"), &mut s.registry, &Affinity::default()),
            Placement::Wait
        );
    }

    #[tokio::test]
    async fn spreads_an_agent_and_keeps_a_conversation_on_its_worker() {
        let mut s = Setup::new();
        s.worker("w1", |r| r.slots = 100).worker("w2", |r| r.slots = 100);
        s.run("w1", "a", 1);
        s.run("w2", "b", 1);
        assert_eq!(
            place(&agent("builtin:echo"), &mut s.registry, &Affinity::default()),
            Placement::Worker("w2".into())
        );
        assert_eq!(
            place(&agent("builtin:echo"), &mut s.registry, &Affinity::context("w1")),
            Placement::Worker("w1".into())
        );
    }

    #[tokio::test]
    async fn warm_prefixes_attract_tasks_until_the_worker_fills() {
        let mut s = Setup::new();
        let with_model = |r: &mut Registration| r.models.push(model("m"));
        s.worker("w1", with_model).worker("w2", with_model);
        let spec = agent("m");
        let history = |first: &str| TaskOptions {
            history: vec![
                fleet_proto::Turn {
                    role: "system".into(),
                    content: "Be brief.".into(),
                    ..Default::default()
                },
                fleet_proto::Turn {
                    role: "user".into(),
                    content: first.into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let turn_one = Prefixes::of(&spec, "hi", None).expect("a local model has prefixes");
        let affinity = Affinity { context_worker: None, prefixes: Some(turn_one) };
        // Nothing warm: the worker given fewer tasks.
        s.registry.get_mut("w1").expect("w1").tasks_assigned = 1;
        assert_eq!(place(&spec, &mut s.registry, &affinity), Placement::Worker("w2".into()));
        // The agent ran on w1: its next task goes there though w1 is busier...
        s.registry.touch_warm("w1", &turn_one);
        s.run("w1", "a", 1);
        assert_eq!(place(&spec, &mut s.registry, &affinity), Placement::Worker("w1".into()));
        // ...until w1 is three quarters full.
        s.run("w1", "a", 2);
        assert_eq!(place(&spec, &mut s.registry, &affinity), Placement::Worker("w2".into()));
        // A conversation's later turn goes where its first turn ran, even past that.
        let first = Prefixes::of(
            &spec,
            "Hello",
            Some(&TaskOptions {
                history: history("x").history[..1].to_vec(),
                ..Default::default()
            }),
        )
        .expect("prefixes");
        let later = Prefixes::of(&spec, "And then?", Some(&history("Hello"))).expect("prefixes");
        assert_eq!(first.conversation, later.conversation);
        assert_ne!(
            later.conversation,
            Prefixes::of(&spec, "?", Some(&history("Hi"))).and_then(|p| p.conversation)
        );
        s.registry.touch_warm("w1", &first);
        let affinity = Affinity { context_worker: None, prefixes: Some(later) };
        assert_eq!(place(&spec, &mut s.registry, &affinity), Placement::Worker("w1".into()));
        // Built-in models keep no prefixes.
        assert_eq!(Prefixes::of(&agent("builtin:echo"), "hi", None), None);
    }

    #[tokio::test]
    async fn ties_go_to_the_worker_given_fewer_tasks() {
        let mut s = Setup::new();
        s.worker("w1", |_| {}).worker("w2", |_| {});
        s.registry.get_mut("w1").expect("w1").tasks_assigned = 5;
        assert_eq!(
            place(&agent("builtin:echo"), &mut s.registry, &Affinity::default()),
            Placement::Worker("w2".into())
        );
    }

    #[tokio::test]
    async fn calls_go_to_the_worker_on_the_mesh_that_hosts_the_agent() {
        let mesh = |r: &mut Registration| {
            r.mesh = Some(fleet_proto::MeshAddress {
                peer_id: format!("peer-{}", r.worker_id),
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            });
        };
        let mut s = Setup::new();
        s.worker("off-mesh", |_| {}).worker("m1", mesh).worker("m2", mesh);
        // The least loaded of the mesh workers, never the one off the mesh...
        s.run("m1", "other", 2);
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, None), Ok("m2"));
        // ...unless the agent already has its actor on one, even a busier one...
        s.registry.get_mut("m1").expect("m1").placed.insert("a".into(), (1, 0));
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, None), Ok("m1"));
        // ...with a slot free: a call takes one, and on a full worker it would wait.
        s.run("m1", "other", 2);
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, None), Ok("m2"));
        // A full worker is still a candidate when every one is full.
        s.run("m2", "other", 4);
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, None), Ok("m1"));
        // The conversation's worker (its memory is there) wins over any free slot, unless it
        // is not a candidate (off the mesh).
        let m1 = s.registry.get_mut("m1").expect("m1");
        m1.running.clear();
        m1.running_per_agent.clear();
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, None), Ok("m1"));
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, Some("m2")), Ok("m2"));
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, Some("off-mesh")), Ok("m1"));
        let missing = locate(&agent("llama"), &s.registry, None);
        assert!(missing.as_ref().is_err_and(|e| e.contains("no worker has model")), "{missing:?}");

        let mut s = Setup::new();
        s.worker("off-mesh", |_| {});
        let off = locate(&agent("builtin:echo"), &s.registry, None);
        assert!(off.as_ref().is_err_and(|e| e.contains("not on the mesh")), "{off:?}");
    }

    /// A fleet past [`SCORE_ALL_UP_TO`], `n` workers `w0`..: `f` sets each one up.
    fn large_fleet(n: usize, f: impl Fn(usize, &mut Registration)) -> Setup {
        let mut s = Setup::new();
        for i in 0..n {
            s.worker(&format!("w{i}"), |r| f(i, r));
        }
        s
    }

    #[tokio::test]
    async fn a_large_fleet_finds_its_one_free_slot_and_waits_or_refuses_when_it_should() {
        let n = 1_000;
        let mut s = large_fleet(n, |_, _| {});
        for i in (0..n).filter(|i| *i != 617) {
            s.run(&format!("w{i}"), "other", 4);
        }
        let echo = agent("builtin:echo");
        assert_eq!(
            place(&echo, &mut s.registry, &Affinity::default()),
            Placement::Worker("w617".into())
        );
        s.run("w617", "other", 4);
        assert_eq!(place(&echo, &mut s.registry, &Affinity::default()), Placement::Wait);
        assert!(matches!(
            place(&agent("nowhere"), &mut s.registry, &Affinity::default()),
            Placement::Never(why) if why.contains("nowhere")
        ));
        // A task ends: the worker is found again.
        let w = s.registry.get_mut("w3").expect("w3");
        let task = w.running.iter().next().cloned().expect("a task");
        w.running.remove(&task);
        assert_eq!(
            place(&echo, &mut s.registry, &Affinity::default()),
            Placement::Worker("w3".into())
        );
    }

    #[tokio::test]
    async fn a_large_fleet_spreads_tasks_about_as_evenly_as_scoring_every_worker() {
        let n = 1_000;
        let mut s = large_fleet(n, |_, _| {});
        let echo = agent("builtin:echo");
        for _ in 0..2 * n {
            let Placement::Worker(w) = place(&echo, &mut s.registry, &Affinity::default()) else {
                panic!("no placement with free slots left");
            };
            s.run(&w, "a", 1);
        }
        // Two tasks a worker on average; the best of a sample leaves none with all four.
        let most = s.registry.iter().map(WorkerEntry::slots_taken).max();
        assert!(most <= Some(3), "a worker got {most:?} of 2 tasks per worker on average");
    }

    #[tokio::test]
    async fn a_large_fleet_scores_the_conversations_warm_and_loaded_workers() {
        let n = 1_000;
        let mut s = large_fleet(n, |i, r| {
            if i % 100 == 7 {
                r.models = vec![model("qwen")];
            }
        });
        let qwen = agent("qwen");
        // The conversation's worker, though nothing else favours it.
        let placed = place(&qwen, &mut s.registry, &Affinity::context("w507"));
        assert_eq!(placed, Placement::Worker("w507".into()));
        // The one worker with the model loaded, among the ten that have it.
        let connection = s.registry.get("w307").map(|w| w.connection).expect("w307");
        let beat = Heartbeat { models_loaded: vec!["qwen".into()], ..Default::default() };
        s.registry.heartbeat("w307", connection, beat, Instant::now());
        assert_eq!(
            place(&qwen, &mut s.registry, &Affinity::default()),
            Placement::Worker("w307".into())
        );
        // The one worker warm for the agent's prompt, over the loaded one.
        let prefixes = Prefixes { agent: 42, conversation: None };
        s.registry.touch_warm("w907", &prefixes);
        let affinity = Affinity { context_worker: None, prefixes: Some(prefixes) };
        let beat = Heartbeat { models_loaded: vec!["qwen".into()], ..Default::default() };
        let connection = s.registry.get("w907").map(|w| w.connection).expect("w907");
        s.registry.heartbeat("w907", connection, beat, Instant::now());
        assert_eq!(place(&qwen, &mut s.registry, &affinity), Placement::Worker("w907".into()));
        // A label only one worker carries: found by looking at every worker.
        let mut s = large_fleet(n, |i, r| {
            if i == 123 {
                r.labels.insert("zone".into(), "b".into());
            }
        });
        let mut zoned = agent("builtin:echo");
        zoned.labels.insert("zone".into(), "b".into());
        assert_eq!(
            place(&zoned, &mut s.registry, &Affinity::default()),
            Placement::Worker("w123".into())
        );
    }
}
