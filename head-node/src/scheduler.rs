//! Placement decisions: which worker runs a task. Pure functions over the worker registry,
//! so every rule is unit-tested without a cluster.
//!
//! Filter: the worker has the agent's model (built-ins are everywhere), carries every label
//! the agent asks for, has a free slot and enough free resources. Score: model already
//! loaded (locality), the worker that holds the task's conversation, low load, few tasks of
//! the same agent (spread); ties go to the worker that was given the fewest tasks.

use fleet_proto::AgentSpec;

use crate::workers::{WorkerEntry, WorkerRegistry};

/// Where a task should go.
#[derive(Debug, PartialEq)]
pub enum Placement<'a> {
    /// Run it on this worker now.
    Worker(&'a str),
    /// Some worker could run it, but none has room now: queue it.
    Wait,
    /// No live worker could ever run it; the reason says what is missing.
    Never(String),
}

/// Whether a worker could run the agent at all, ignoring its current load.
fn could_ever_run(spec: &AgentSpec, w: &WorkerEntry) -> bool {
    w.has_model(&spec.model)
        && spec.labels.iter().all(|(k, v)| w.registration.labels.get(k) == Some(v))
        && w.registration.resources.fits(&spec.resources)
        && w.registration.slots > 0
}

fn can_run_now(spec: &AgentSpec, w: &WorkerEntry) -> bool {
    could_ever_run(spec, w) && w.has_free_slot() && w.free.fits(&spec.resources)
}

fn score(spec: &AgentSpec, w: &WorkerEntry, context_worker: Option<&str>) -> f64 {
    let slots = f64::from(w.registration.slots.max(1));
    let locality = if w.has_model_loaded(&spec.model) { 2.0 } else { 0.0 };
    let affinity = if context_worker == Some(w.id.as_str()) { 4.0 } else { 0.0 };
    let load = w.running.len() as f64 / slots;
    let same_agent = f64::from(w.running_per_agent.get(&spec.name).copied().unwrap_or(0)) / slots;
    locality + affinity - load - 0.5 * same_agent
}

/// Picks a worker for one task of `spec`. `context_worker` is the worker that ran the
/// previous turn of the task's conversation, if any.
pub fn place<'a>(
    spec: &AgentSpec,
    workers: &'a WorkerRegistry,
    context_worker: Option<&str>,
) -> Placement<'a> {
    let mut best: Option<(&'a WorkerEntry, f64)> = None;
    let mut any_could = false;
    for w in workers.iter() {
        if !can_run_now(spec, w) {
            any_could = any_could || could_ever_run(spec, w);
            continue;
        }
        any_could = true;
        let s = score(spec, w, context_worker);
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
    match best {
        Some((w, _)) => Placement::Worker(&w.id),
        None if any_could || workers.is_empty() => Placement::Wait,
        None => Placement::Never(why_not(spec, workers)),
    }
}

/// Picks the worker whose actor of `spec` takes calls over the mesh: only workers on the
/// mesh that could run the agent at all; the one holding the conversation, then one that
/// already hosts the actor, then the least loaded. A call is not a task: slots and free
/// resources do not limit it (the callee's worker runs it beside its tasks).
pub fn locate<'a>(
    spec: &AgentSpec,
    workers: &'a WorkerRegistry,
    context_worker: Option<&str>,
) -> Result<&'a str, String> {
    let score = |w: &WorkerEntry| {
        let hosted = if w.placed.contains_key(&spec.name) { 2.0 } else { 0.0 };
        score(spec, w, context_worker) + hosted
    };
    workers
        .iter()
        .filter(|w| w.registration.mesh.is_some() && could_ever_run(spec, w))
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
    use fleet_proto::{ModelOnDisk, Registration, Resources, TaskId};
    use std::collections::BTreeMap;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    struct Setup {
        registry: WorkerRegistry,
        _keep: Vec<mpsc::UnboundedReceiver<fleet_proto::Command>>,
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
            let (tx, rx) = mpsc::unbounded_channel();
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
    async fn picks_the_least_loaded_worker() {
        let mut s = Setup::new();
        s.worker("w1", |_| {}).worker("w2", |_| {});
        s.run("w1", "other", 2);
        assert_eq!(place(&agent("builtin:echo"), &s.registry, None), Placement::Worker("w2"));
    }

    #[tokio::test]
    async fn never_places_on_a_worker_without_the_model() {
        let mut s = Setup::new();
        s.worker("w1", |_| {}).worker("w2", |r| r.models.push(model("qwen")));
        s.run("w2", "other", 3);
        assert_eq!(place(&agent("qwen"), &s.registry, None), Placement::Worker("w2"));
        s.run("w2", "other", 1);
        assert_eq!(place(&agent("qwen"), &s.registry, None), Placement::Wait);
        match place(&agent("llama"), &s.registry, None) {
            Placement::Never(why) => assert!(why.contains("no worker has model \"llama\"")),
            other => panic!("expected Never, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn prefers_a_worker_with_the_model_loaded() {
        let mut s = Setup::new();
        s.worker("w1", |r| r.models.push(model("m"))).worker("w2", |r| r.models.push(model("m")));
        s.registry.get_mut("w2").expect("w2").heartbeat.models_loaded.push("m".into());
        s.run("w2", "other", 1);
        assert_eq!(place(&agent("m"), &s.registry, None), Placement::Worker("w2"));
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
        assert_eq!(place(&spec, &s.registry, None), Placement::Worker("gpu"));
        spec.resources.gpus = 0;
        spec.labels = BTreeMap::from([("zone".into(), "a".into())]);
        assert!(
            matches!(place(&spec, &s.registry, None), Placement::Never(why) if why.contains("labels"))
        );
        spec.labels.clear();
        spec.resources.cpus = 8.0;
        assert!(
            matches!(place(&spec, &s.registry, None), Placement::Never(why) if why.contains("cpus"))
        );
    }

    #[tokio::test]
    async fn full_workers_mean_wait_and_no_workers_mean_wait() {
        let mut s = Setup::new();
        assert_eq!(place(&agent("builtin:echo"), &s.registry, None), Placement::Wait);
        s.worker("w1", |r| r.slots = 1);
        s.run("w1", "a", 1);
        assert_eq!(place(&agent("builtin:echo"), &s.registry, None), Placement::Wait);
    }

    #[tokio::test]
    async fn spreads_an_agent_and_keeps_a_conversation_on_its_worker() {
        let mut s = Setup::new();
        s.worker("w1", |r| r.slots = 100).worker("w2", |r| r.slots = 100);
        s.run("w1", "a", 1);
        s.run("w2", "b", 1);
        assert_eq!(place(&agent("builtin:echo"), &s.registry, None), Placement::Worker("w2"));
        assert_eq!(place(&agent("builtin:echo"), &s.registry, Some("w1")), Placement::Worker("w1"));
    }

    #[tokio::test]
    async fn ties_go_to_the_worker_given_fewer_tasks() {
        let mut s = Setup::new();
        s.worker("w1", |_| {}).worker("w2", |_| {});
        s.registry.get_mut("w1").expect("w1").tasks_assigned = 5;
        assert_eq!(place(&agent("builtin:echo"), &s.registry, None), Placement::Worker("w2"));
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
        // ...unless the agent already has its actor on one, even a busier one (a call is
        // not a task: full slots do not stop it).
        s.registry.get_mut("m1").expect("m1").placed.insert("a".into(), 1);
        s.run("m1", "other", 2);
        assert_eq!(locate(&agent("builtin:echo"), &s.registry, None), Ok("m1"));
        let missing = locate(&agent("llama"), &s.registry, None);
        assert!(missing.as_ref().is_err_and(|e| e.contains("no worker has model")), "{missing:?}");

        let mut s = Setup::new();
        s.worker("off-mesh", |_| {});
        let off = locate(&agent("builtin:echo"), &s.registry, None);
        assert!(off.as_ref().is_err_and(|e| e.contains("not on the mesh")), "{off:?}");
    }
}
