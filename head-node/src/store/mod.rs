//! The head's durable state: what it must not lose when it stops or crashes.
//!
//! Tasks (what each was submitted with) and their event logs, the agents clients
//! registered, the A2A push configs of tasks and the conversations of contexts
//! (`crate::conversations`) go through the [`Journal`]: records are
//! appended under the cluster's lock without waiting, and a writer (a task on the head's
//! runtime) stores what gathered during its last write as one batch (group commit). A
//! task's state, attempt, worker, output and the queue are not stored: they follow from
//! its event log, which is replayed on start ([`Restored`]).
//!
//! Events reach subscribers only once stored, so a client never sees an event a restarted
//! head does not have: a stream resumed by sequence number continues without gap or repeat.
//!
//! Backends implement [`Store`] on encoded records. The file store (`file`) appends each
//! batch to a log and checkpoints the log into a redb file, `head.redb`, under the data
//! directory; [`postgres`] keeps them in a database that several heads share (one leads at
//! a time; its writes are fenced by its lease's epoch). With [`StoreConfig::Memory`] there
//! is no store and no journal: a head that forgets on restart, and events go to
//! subscribers at once.

mod file;
mod journal;
mod log;
pub mod postgres;
mod redb;
pub mod sealed;

use std::path::PathBuf;
use std::sync::Arc;

use fleet_proto::{AgentSpec, TaskEvent, TaskId, TaskOptions, pb};
use prost::Message;

pub use journal::{Commit, Journal};
pub use log::Fsync;
pub use sealed::Sealer;

/// Why a store of layout `found` is refused by a head that reads `reads` (each backend
/// stamps its layout when it creates the store). Tables added since only ever make a
/// layout grow, which an older head's store gets on its first open; a layout that changes
/// gets a new number and a migration here.
fn unknown_format(found: i128, reads: i128) -> String {
    if found > reads {
        format!(
            "store format {found} was written by a newer agentfleet; this head (agentfleet {}) \
             reads format {reads}: run a head of the newer version (downgrades are not \
             supported)",
            env!("CARGO_PKG_VERSION")
        )
    } else {
        format!(
            "store format {found} is older than this head (agentfleet {}) can migrate (it \
             reads format {reads})",
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// A worker's incarnation and the number of the last of its events applied.
pub type WorkerMark = (String, (u64, u64));

/// Where the head keeps its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// Nothing is kept: a restarted head starts empty.
    #[default]
    Memory,
    /// A redb file, `head.redb`, in this directory (created if missing).
    Dir(PathBuf),
    /// A PostgreSQL database (a `postgres://` URL) that heads share: one leads, the
    /// others stand by (see `crate::leader`).
    Postgres(String),
}

impl StoreConfig {
    /// The store's file name inside a data directory.
    pub const FILE: &'static str = "head.redb";

    /// The default data directory of `fleet-head`: `$XDG_DATA_HOME/agentfleet` or
    /// `~/.local/share/agentfleet`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))
        })?;
        Some(base.join("agentfleet"))
    }
}

/// Why the store cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {message}")]
pub struct StoreError {
    /// The file or server concerned.
    pub what: String,
    pub message: String,
    /// Another head took over (PostgreSQL store): this head may not write again.
    pub fenced: bool,
}

/// A batch of encoded records, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Task number -> `StoredTask`.
    pub tasks: Vec<(u64, Vec<u8>)>,
    /// (task number, first seq) -> `StoredEvents`.
    pub events: Vec<((u64, u64), Vec<u8>)>,
    /// Tasks retention let go, with all their events.
    pub removed: Vec<u64>,
    /// Agent name -> `AgentSpec`.
    pub agents: Vec<(String, Vec<u8>)>,
    /// Worker id -> (incarnation, the last of its events stored).
    pub workers: Vec<(String, (u64, u64))>,
    /// Task number -> `StoredPushConfigs` (all of the task's, replacing what was stored).
    pub push: Vec<(u64, Vec<u8>)>,
    /// Conversation key -> `StoredConversation` (replacing what was stored); `None`: the
    /// conversation was deleted. A key appears once per batch.
    pub conversations: Vec<(String, Option<Vec<u8>>)>,
    /// Actor key -> `StoredActor` (replacing what was stored); `None`: deleted. A key
    /// appears once per batch.
    pub actors: Vec<(String, Option<Vec<u8>>)>,
    /// (topic, offset) -> `StoredTopicMessage`, appended. None is below its topic's trim
    /// in the same batch (a store applies trims after appends, or in one statement).
    pub topic_messages: Vec<((String, u64), Vec<u8>)>,
    /// Topic -> its first offset kept: the messages before it are let go. A topic appears
    /// once per batch.
    pub topic_trims: Vec<(String, u64)>,
    /// (topic, consumer group) -> the offset it resumes at. A key appears once per batch.
    pub topic_groups: Vec<((String, String), u64)>,
}

impl Batch {
    /// Whether the batch holds no record (the journal's close alone).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.events.is_empty()
            && self.removed.is_empty()
            && self.agents.is_empty()
            && self.workers.is_empty()
            && self.push.is_empty()
            && self.conversations.is_empty()
            && self.actors.is_empty()
            && self.topic_messages.is_empty()
            && self.topic_trims.is_empty()
            && self.topic_groups.is_empty()
    }
}

/// Everything a store holds, encoded, in key order.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub tasks: Vec<(u64, Vec<u8>)>,
    pub events: Vec<((u64, u64), Vec<u8>)>,
    pub agents: Vec<Vec<u8>>,
    pub workers: Vec<(String, (u64, u64))>,
    pub push: Vec<(u64, Vec<u8>)>,
    pub conversations: Vec<Vec<u8>>,
    pub actors: Vec<Vec<u8>>,
    /// In (topic, offset) order.
    pub topic_messages: Vec<((String, u64), Vec<u8>)>,
    pub topic_trims: Vec<(String, u64)>,
    pub topic_groups: Vec<((String, String), u64)>,
}

/// A place to keep records. Implementations store bytes; the encoding is the journal's.
pub trait Store: Send + 'static {
    /// What is stored, to rebuild the head on start.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Writes `batch` atomically and durably: once this returns it survives the head
    /// crashing (and, but for the file store with `--fsync periodic`, a power cut).
    fn write(&mut self, batch: &Batch) -> Result<(), StoreError>;
    /// Whether writing `batch` now takes microseconds and waits on nothing (an append to
    /// the OS's cache): the journal then makes the write on the runtime, since handing it
    /// to a thread and the result back costs two thread wake-ups, more than the write.
    fn quick(&self, _batch: &Batch) -> bool {
        false
    }
    /// The file or server, for messages.
    fn describe(&self) -> String;
}

/// Opens the store `config` names (a file store syncing its log as `fsync` says); an error
/// names the file and what is wrong with it.
pub fn open(config: &StoreConfig, fsync: Fsync) -> Result<Option<Box<dyn Store>>, StoreError> {
    match config {
        StoreConfig::Memory => Ok(None),
        StoreConfig::Dir(dir) => Ok(Some(Box::new(file::FileStore::open(dir, fsync)?))),
        StoreConfig::Postgres(_) => Err(StoreError {
            what: "--store".into(),
            message: "a PostgreSQL store is opened by the head that holds the leader lease \
                      (crate::leader)"
                .into(),
            fenced: false,
        }),
    }
}

/// What a task was submitted with (its state is its event log).
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub number: u64,
    pub id: TaskId,
    pub agent: String,
    pub input: Arc<str>,
    pub context_id: String,
    /// The tenant whose task it is.
    pub tenant: Arc<str>,
    pub options: Option<Arc<TaskOptions>>,
    /// The task that called this one as a tool, and the call's id.
    pub parent: Option<(TaskId, String)>,
    pub depth: u32,
    pub submitted_at_us: u64,
    /// A cancel was asked for while it ran on a worker.
    pub cancel_requested: bool,
}

impl TaskRecord {
    fn encode(&self) -> Vec<u8> {
        let (parent_task, parent_call) = self
            .parent
            .as_ref()
            .map(|(t, c)| (t.as_str().to_owned(), c.clone()))
            .unwrap_or_default();
        pb::StoredTask {
            task_id: self.id.as_str().to_owned(),
            agent: self.agent.clone(),
            input: self.input.to_string(),
            context_id: self.context_id.clone(),
            tenant: self.tenant.to_string(),
            options: self.options.as_deref().map(pb::TaskOptions::from),
            parent_task,
            parent_call,
            depth: self.depth,
            submitted_at_us: self.submitted_at_us,
            cancel_requested: self.cancel_requested,
        }
        .encode_to_vec()
    }
}

/// A task as stored: its record and its events so far.
#[derive(Debug)]
pub struct RestoredTask {
    pub record: TaskRecord,
    pub events: Vec<TaskEvent>,
}

/// The decoded content of a store.
#[derive(Debug, Default)]
pub struct Restored {
    pub agents: Vec<AgentSpec>,
    /// In submission order.
    pub tasks: Vec<RestoredTask>,
    /// Each worker's incarnation and the last of its events stored.
    pub workers: Vec<(String, (u64, u64))>,
    /// The A2A push-notification configs of retained tasks.
    pub push: Vec<(TaskId, pb::StoredPushConfigs)>,
    pub conversations: Vec<crate::conversations::Record>,
    pub actors: Vec<crate::actor_state::Record>,
    pub topics: Vec<crate::topics::StoredTopic>,
}

impl Restored {
    /// Decodes a snapshot; a record that does not decode is an error naming it (a store
    /// written by something else, or damaged).
    /// Sealed secrets are opened with `sealer` (none: the store holds none sealed).
    pub fn decode(
        snapshot: Snapshot,
        what: &str,
        sealer: Option<&Sealer>,
    ) -> Result<Self, StoreError> {
        let unsealed =
            |message: String| StoreError { what: what.to_owned(), message, fenced: false };
        let corrupt = |record: String, e: &dyn std::fmt::Display| StoreError {
            what: what.to_owned(),
            message: format!("{record} does not decode ({e}): the store is damaged"),
            fenced: false,
        };
        let mut agents = Vec::with_capacity(snapshot.agents.len());
        for bytes in snapshot.agents {
            let spec = pb::AgentSpec::decode(bytes.as_slice())
                .map_err(|e| corrupt("an agent".into(), &e))?;
            let spec = AgentSpec::from(spec);
            agents.push(match sealer {
                Some(sealer) => sealer.open_spec(spec).map_err(unsealed)?,
                None => spec,
            });
        }
        let mut tasks = Vec::with_capacity(snapshot.tasks.len());
        for (number, bytes) in snapshot.tasks {
            let t = pb::StoredTask::decode(bytes.as_slice())
                .map_err(|e| corrupt(format!("task {number}"), &e))?;
            let parent =
                (!t.parent_task.is_empty()).then(|| (TaskId::new(t.parent_task), t.parent_call));
            let record = TaskRecord {
                number,
                id: TaskId::new(t.task_id),
                agent: t.agent,
                input: t.input.into(),
                context_id: t.context_id,
                // Stored before tenants: the default tenant's.
                tenant: if t.tenant.is_empty() {
                    crate::auth::DEFAULT_TENANT.into()
                } else {
                    t.tenant.into()
                },
                options: t.options.map(|o| Arc::new(TaskOptions::from(o))),
                parent,
                depth: t.depth,
                submitted_at_us: t.submitted_at_us,
                cancel_requested: t.cancel_requested,
            };
            tasks.push(RestoredTask { record, events: Vec::new() });
        }
        // Both are in task-number order: walk them together.
        let mut index = 0;
        for ((number, first_seq), bytes) in snapshot.events {
            while index < tasks.len() && tasks[index].record.number < number {
                index += 1;
            }
            let Some(task) = tasks.get_mut(index).filter(|t| t.record.number == number) else {
                continue; // The events of a task whose record was let go.
            };
            let stored = pb::StoredEvents::decode(bytes.as_slice())
                .map_err(|e| corrupt(format!("events {first_seq}.. of task {number}"), &e))?;
            for mut event in stored.events {
                event.task_id = task.record.id.as_str().to_owned();
                let event = TaskEvent::try_from(event)
                    .map_err(|e| corrupt(format!("an event of task {number}"), &e))?;
                if event.seq != task.events.len() as u64 + 1 {
                    return Err(corrupt(
                        format!("task {number}"),
                        &format!("event {} follows event {}", event.seq, task.events.len()),
                    ));
                }
                task.events.push(event);
            }
        }
        let ids: std::collections::HashMap<u64, &TaskId> =
            tasks.iter().map(|t| (t.record.number, &t.record.id)).collect();
        let mut push = Vec::with_capacity(snapshot.push.len());
        for (number, bytes) in snapshot.push {
            let Some(id) = ids.get(&number) else { continue };
            let mut configs = pb::StoredPushConfigs::decode(bytes.as_slice())
                .map_err(|e| corrupt(format!("the push configs of task {number}"), &e))?;
            if let Some(sealer) = sealer {
                sealer.open_push(&mut configs).map_err(unsealed)?;
            }
            push.push(((*id).clone(), configs));
        }
        let mut conversations = Vec::with_capacity(snapshot.conversations.len());
        for bytes in snapshot.conversations {
            let c = pb::StoredConversation::decode(bytes.as_slice())
                .map_err(|e| corrupt("a conversation".into(), &e))?;
            conversations.push(crate::conversations::Record {
                tenant: if c.tenant.is_empty() {
                    crate::auth::DEFAULT_TENANT.into()
                } else {
                    c.tenant
                },
                agent: c.agent,
                context_id: c.context_id,
                turns: c.turns.into_iter().map(Into::into).collect(),
                last_task: c.last_task,
                updated_at_us: c.updated_at_us,
                worker_id: c.worker_id,
            });
        }
        let mut actors = Vec::with_capacity(snapshot.actors.len());
        for bytes in snapshot.actors {
            let a = pb::StoredActor::decode(bytes.as_slice())
                .map_err(|e| corrupt("an actor's state".into(), &e))?;
            actors.push(crate::actor_state::Record {
                tenant: if a.tenant.is_empty() {
                    crate::auth::DEFAULT_TENANT.into()
                } else {
                    a.tenant
                },
                agent: a.agent,
                context_id: a.context_id,
                state: a.state,
                version: a.version,
                updated_at_us: a.updated_at_us,
                last_task: a.last_task,
            });
        }
        let topics =
            decode_topics(snapshot.topic_messages, snapshot.topic_trims, snapshot.topic_groups)
                .map_err(|(record, e)| corrupt(record, &e))?;
        Ok(Self { agents, tasks, workers: snapshot.workers, push, conversations, actors, topics })
    }
}

/// The topics a snapshot holds, each with its messages in offset order.
fn decode_topics(
    messages: Vec<((String, u64), Vec<u8>)>,
    trims: Vec<(String, u64)>,
    groups: Vec<((String, String), u64)>,
) -> Result<Vec<crate::topics::StoredTopic>, (String, prost::DecodeError)> {
    use crate::topics::{Message, StoredTopic};
    type Topics = std::collections::BTreeMap<String, StoredTopic>;
    fn topic(topics: &mut Topics, name: String) -> &mut StoredTopic {
        topics.entry(name.clone()).or_insert_with(|| StoredTopic { name, ..Default::default() })
    }
    let mut topics = Topics::new();
    for (name, first) in trims {
        topic(&mut topics, name).first = first;
    }
    for ((name, group), committed) in groups {
        topic(&mut topics, name).groups.push((group, committed));
    }
    for ((name, offset), bytes) in messages {
        let m = pb::StoredTopicMessage::decode(bytes.as_slice())
            .map_err(|e| (format!("message {offset} of topic {name:?}"), e))?;
        topic(&mut topics, name).messages.push(Message {
            offset,
            publisher: m.publisher,
            seq: m.seq,
            body: m.body,
            published_at_us: m.published_at_us,
        });
    }
    // The snapshot is in (topic, offset) order: each topic's messages come in offset order.
    Ok(topics.into_values().collect())
}

fn encode_topic_message(m: &crate::topics::Message) -> Vec<u8> {
    pb::StoredTopicMessage {
        publisher: m.publisher.clone(),
        body: m.body.clone(),
        seq: m.seq,
        published_at_us: m.published_at_us,
    }
    .encode_to_vec()
}

/// Encodes consecutive events of one task.
fn encode_events(events: &[Arc<TaskEvent>]) -> Vec<u8> {
    let events = events
        .iter()
        .map(|e| {
            let mut event = pb::TaskEvent::from(&**e);
            event.task_id.clear();
            event
        })
        .collect();
    pb::StoredEvents { events }.encode_to_vec()
}

fn encode_conversation(c: &crate::conversations::Record) -> Vec<u8> {
    pb::StoredConversation {
        agent: c.agent.clone(),
        tenant: c.tenant.clone(),
        context_id: c.context_id.clone(),
        turns: c.turns.iter().map(Into::into).collect(),
        last_task: c.last_task.clone(),
        updated_at_us: c.updated_at_us,
        worker_id: c.worker_id.clone(),
    }
    .encode_to_vec()
}

fn encode_actor(a: &crate::actor_state::Record) -> Vec<u8> {
    pb::StoredActor {
        agent: a.agent.clone(),
        tenant: a.tenant.clone(),
        context_id: a.context_id.clone(),
        state: a.state.clone(),
        version: a.version,
        updated_at_us: a.updated_at_us,
        last_task: a.last_task.clone(),
    }
    .encode_to_vec()
}

fn encode_agent(spec: &AgentSpec) -> Vec<u8> {
    pb::AgentSpec::from(spec).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::{Cluster, NewTask};
    use crate::config::HeadConfig;
    use crate::tasks::Delivery;

    /// A store whose writes fail while `failing` is set (a full disk).
    struct Flaky {
        failing: Arc<AtomicBool>,
    }

    impl Store for Flaky {
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn write(&mut self, _: &Batch) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError {
                    what: "flaky".into(),
                    message: "disk full".into(),
                    fenced: false,
                });
            }
            Ok(())
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    fn task(input: &str) -> NewTask {
        NewTask { agent: "echo".into(), input: input.into(), ..Default::default() }
    }

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_failing_store_stops_new_work_and_holds_events_until_it_recovers() {
        let failing = Arc::new(AtomicBool::new(false));
        let mut config = HeadConfig::default();
        config.agents.push(fleet_proto::AgentSpec {
            name: "echo".into(),
            model: "builtin:echo".into(),
            ..Default::default()
        });
        let store = Box::new(Flaky { failing: failing.clone() });
        let cluster = Cluster::start_with(&config, Some(store)).expect("cluster");
        cluster
            .submit(&crate::auth::Principal::operator(), task("first"), None)
            .expect("a working store takes work");

        failing.store(true, Ordering::SeqCst);
        // Accepted before the store's next write fails: its events wait for the store.
        let held = cluster
            .submit(&crate::auth::Principal::operator(), task("second"), None)
            .expect("not failed yet");
        let mut watch =
            cluster.watch(&crate::auth::Principal::operator(), held.as_str(), 1).expect("watch");
        eventually("new work refused", || {
            matches!(
                cluster.submit(&crate::auth::Principal::operator(), task("x"), None),
                Err(crate::Error::StoreUnavailable(_))
            )
        });
        assert!(watch.rx.try_recv().is_err(), "an event went out that is not stored");

        failing.store(false, Ordering::SeqCst);
        eventually(
            "the held event delivered",
            || matches!(watch.rx.try_recv(), Ok(Delivery::Event(e)) if e.seq == 1),
        );
        eventually("new work taken again", || {
            cluster.submit(&crate::auth::Principal::operator(), task("y"), None).is_ok()
        });
    }
}
