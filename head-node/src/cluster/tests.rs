//! Unit tests on the state machine: a cluster without a network, workers joined by hand
//! (their command channels read directly), a store kept in memory.

use std::collections::BTreeMap;

use parking_lot::Mutex as TestMutex;

use fleet_proto::{MESH_CHANGES_PROTOCOL, MeshAddress, MeshPeers, Reply};

use super::*;
use crate::auth::DEFAULT_TENANT;
use crate::conversations::Key;
use crate::store::{Batch, Snapshot, Store, StoreError};

fn op() -> Principal {
    Principal::operator()
}

fn config(max_retries: u32) -> HeadConfig {
    let mut config = HeadConfig::default();
    config.agents.push(AgentSpec {
        name: "a".into(),
        model: "builtin:echo".into(),
        max_retries,
        ..Default::default()
    });
    config
}

fn registration(
    id: &str,
    slots: u32,
    incarnation: u64,
    running: &[(&TaskId, u32)],
) -> Registration {
    Registration {
        worker_id: id.into(),
        slots,
        incarnation,
        running: running.iter().map(|(t, a)| ((*t).clone(), *a)).collect(),
        ..Default::default()
    }
}

fn task(cluster: &Cluster, input: &str) -> TaskId {
    let new = NewTask { agent: "a".into(), input: input.into(), ..Default::default() };
    cluster.submit(&op(), new, None).expect("submitted")
}

/// (state, attempt, worker) of a task.
fn where_is(cluster: &Cluster, id: &TaskId) -> (TaskState, u32, Option<String>) {
    let state = cluster.state.lock();
    let t = state.tasks.get(id.as_str()).expect("task");
    (t.state, t.attempt, t.worker.clone())
}

fn commands(stream: &mut CommandStream) -> Vec<Command> {
    let mut out = Vec::new();
    while let Some(c) = stream.try_recv() {
        out.push(c);
    }
    out
}

fn event(id: &TaskId, seq: u64, kind: EventKind) -> TaskEvent {
    TaskEvent { task_id: id.clone(), seq, attempt: 1, timestamp_us: 0, kind }
}

#[test]
fn a_lost_workers_tasks_are_retried_first_then_failed_past_their_retries() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let (c1, _rx1, _) = cluster.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let (t1, t2) = (task(&cluster, "one"), task(&cluster, "two"));
    assert_eq!(where_is(&cluster, &t1), (TaskState::Scheduled, 1, Some("w1".into())));
    assert_eq!(where_is(&cluster, &t2).0, TaskState::Queued);

    cluster.worker_lost("w1", c1, "gone");
    assert_eq!(where_is(&cluster, &t1), (TaskState::Queued, 2, None));
    let queued: Vec<TaskId> = cluster.state.lock().queue.iter().cloned().collect();
    assert_eq!(queued, [t1.clone(), t2.clone()], "the retry goes first");

    let (c2, _rx2, _) = cluster.worker_joined(registration("w2", 1, 2, &[]), String::new());
    assert_eq!(where_is(&cluster, &t1), (TaskState::Scheduled, 2, Some("w2".into())));
    cluster.worker_lost("w2", c2, "gone again");
    assert_eq!(where_is(&cluster, &t1).0, TaskState::Failed, "attempt 2 of 2 lost");
}

#[test]
fn a_workers_events_the_task_cannot_take_are_refused() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let (c, _rx, _) = cluster.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let t = task(&cluster, "one");
    let events =
        |cluster: &Cluster| cluster.state.lock().tasks.get(t.as_str()).map(|t| t.events.len());
    // A head-only event, and a reply to a question nobody asked.
    let reply = EventKind::InputReceived { call_id: "c".into(), text: "y".into(), rejected: false };
    cluster.worker_events("w1", c, vec![event(&t, 0, reply)]);
    cluster.worker_events("w1", c, vec![event(&t, 0, EventKind::Working)]);
    assert_eq!((where_is(&cluster, &t).0, events(&cluster)), (TaskState::Working, Some(3)));
    let done = EventKind::Completed { usage: Default::default() };
    cluster.worker_events("w1", c, vec![event(&t, 0, done.clone())]);
    // Late: text after the end, and the end again (it would answer a caller twice).
    cluster.worker_events("w1", c, vec![event(&t, 0, EventKind::text("late")), event(&t, 0, done)]);
    let failed = EventKind::failed(ErrorKind::Internal, "after the end");
    cluster.worker_events("w1", c, vec![event(&t, 0, failed)]);
    assert_eq!((where_is(&cluster, &t).0, events(&cluster)), (TaskState::Completed, Some(4)));
    // It ended once: counted once.
    let (_, ended) = cluster.state.lock().metrics.totals_of("default");
    assert_eq!((ended.completed, ended.failed), (1, 0));
}

#[test]
fn a_queued_task_cancels_at_once_and_a_running_one_on_its_worker() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let (c, mut rx, _) = cluster.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let (running, queued) = (task(&cluster, "one"), task(&cluster, "two"));
    cluster.cancel(&op(), queued.as_str()).expect("canceled");
    assert_eq!(where_is(&cluster, &queued).0, TaskState::Canceled);
    assert!(cluster.state.lock().queue.iter().next().is_none(), "off the queue");
    // Asked of its worker: the task goes on until the worker says it stopped.
    cluster.cancel(&op(), running.as_str()).expect("asked");
    assert_eq!(where_is(&cluster, &running).0, TaskState::Scheduled);
    let sent = commands(&mut rx);
    let asked =
        |c: &Command| matches!(c, Command::CancelTask { task_id, .. } if *task_id == running);
    assert!(sent.iter().any(asked), "{sent:?}");
    let stopped = EventKind::Canceled { reason: "stopped".into() };
    cluster.worker_events("w1", c, vec![event(&running, 0, stopped)]);
    assert_eq!(where_is(&cluster, &running).0, TaskState::Canceled);
    // Over: a cancel again changes nothing.
    cluster.cancel(&op(), running.as_str()).expect("no-op");
    assert!(commands(&mut rx).iter().all(|c| !asked(c)));
    let (_, ended) = cluster.state.lock().metrics.totals_of("default");
    assert_eq!(ended.canceled, 2);
}

#[test]
fn a_rejoining_worker_keeps_what_it_still_runs_and_cancels_the_rest() {
    let cluster = Cluster::new(&config(3)).expect("cluster");
    let (c, _rx, _) = cluster.worker_joined(registration("w1", 3, 7, &[]), String::new());
    let (t1, t2, t3) = (task(&cluster, "one"), task(&cluster, "two"), task(&cluster, "three"));
    cluster.worker_events("w1", c, vec![event(&t2, 1, EventKind::Working)]);
    let stray = TaskId::new("not-a-task");
    // The same process again (its old stream not noticed gone): it still runs t1 only. t2
    // ran there and is gone; t3's `RunTask` was still queued on the old stream.
    let (_, mut rx, _) =
        cluster.worker_joined(registration("w1", 3, 7, &[(&t1, 1), (&stray, 1)]), String::new());
    assert_eq!(where_is(&cluster, &t1), (TaskState::Scheduled, 1, Some("w1".into())));
    assert_eq!(where_is(&cluster, &t2), (TaskState::Scheduled, 2, Some("w1".into())), "retried");
    assert_eq!(where_is(&cluster, &t3), (TaskState::Scheduled, 1, Some("w1".into())), "sent again");
    let sent = commands(&mut rx);
    assert!(
        sent.iter().any(|c| matches!(c, Command::CancelTask { task_id, .. } if *task_id == stray)),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|c| matches!(c, Command::RunTask(t) if t.task_id == t2 && t.attempt == 2)),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|c| matches!(c, Command::RunTask(t) if t.task_id == t3 && t.attempt == 1)),
        "{sent:?}"
    );
    assert!(!sent.iter().any(|c| matches!(c, Command::RunTask(t) if t.task_id == t1)), "{sent:?}");
    let state = cluster.state.lock();
    assert_eq!(state.workers.get("w1").map(|w| w.running.len()), Some(3));
    assert_eq!(state.agents.get("a").map(|a| a.running).ok(), Some(3));
}

#[test]
fn events_a_worker_sends_again_are_applied_once_and_acknowledged() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let (c, mut rx, resume) = cluster.worker_joined(registration("w1", 1, 5, &[]), String::new());
    assert_eq!(resume, 0);
    let t = task(&cluster, "ab");
    let text = |s: u64, t: &str| event(&TaskId::new(""), s, EventKind::text(t));
    let batch = |events: Vec<TaskEvent>| -> Vec<TaskEvent> {
        events.into_iter().map(|e| TaskEvent { task_id: t.clone(), ..e }).collect()
    };
    cluster.worker_events("w1", c, batch(vec![event(&t, 1, EventKind::Working), text(2, "a")]));
    cluster.worker_events("w1", c, batch(vec![text(2, "a"), text(3, "b")]));
    assert_eq!(cluster.task(&op(), t.as_str()).expect("task").output, "ab");
    let acks: Vec<u64> = commands(&mut rx)
        .into_iter()
        .filter_map(|c| match c {
            Command::Acked { up_to } => Some(up_to),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [2, 3]);
    // Rejoining, it hears where to resume.
    let (_, _, resume) = cluster.worker_joined(registration("w1", 1, 5, &[(&t, 1)]), String::new());
    assert_eq!(resume, 3);
    // A new process of the same worker starts over.
    let (_, _, resume) = cluster.worker_joined(registration("w1", 1, 6, &[]), String::new());
    assert_eq!(resume, 0);
}

/// A store kept in memory, shared by the heads of one test.
#[derive(Clone, Default)]
struct Kept {
    inner: Arc<TestMutex<KeptInner>>,
}

#[derive(Default)]
struct KeptInner {
    tasks: BTreeMap<u64, Vec<u8>>,
    events: BTreeMap<(u64, u64), Vec<u8>>,
    agents: BTreeMap<String, Vec<u8>>,
    workers: BTreeMap<String, (u64, u64)>,
    conversations: BTreeMap<String, Vec<u8>>,
    actors: BTreeMap<String, Vec<u8>>,
    topic_messages: BTreeMap<(String, u64), Vec<u8>>,
    topic_trims: BTreeMap<String, u64>,
    topic_groups: BTreeMap<(String, String), u64>,
}

impl Store for Kept {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let k = self.inner.lock();
        Ok(Snapshot {
            tasks: k.tasks.iter().map(|(n, b)| (*n, b.clone())).collect(),
            events: k.events.iter().map(|(n, b)| (*n, b.clone())).collect(),
            agents: k.agents.values().cloned().collect(),
            workers: k.workers.iter().map(|(w, m)| (w.clone(), *m)).collect(),
            push: Vec::new(),
            conversations: k.conversations.values().cloned().collect(),
            actors: k.actors.values().cloned().collect(),
            topic_messages: k.topic_messages.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            topic_trims: k.topic_trims.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            topic_groups: k.topic_groups.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut k = self.inner.lock();
        k.tasks.extend(batch.tasks.iter().cloned());
        k.events.extend(batch.events.iter().cloned());
        for n in &batch.removed {
            k.tasks.remove(n);
            k.events.retain(|(t, _), _| t != n);
        }
        k.agents.extend(batch.agents.iter().cloned());
        k.workers.extend(batch.workers.iter().cloned());
        for (key, record) in &batch.conversations {
            match record {
                Some(record) => k.conversations.insert(key.clone(), record.clone()),
                None => k.conversations.remove(key),
            };
        }
        for (key, record) in &batch.actors {
            match record {
                Some(record) => k.actors.insert(key.clone(), record.clone()),
                None => k.actors.remove(key),
            };
        }
        k.topic_messages.extend(batch.topic_messages.iter().cloned());
        for (topic, first) in &batch.topic_trims {
            k.topic_trims.insert(topic.clone(), *first);
            k.topic_messages.retain(|(t, o), _| t != topic || o >= first);
        }
        k.topic_groups.extend(batch.topic_groups.iter().cloned());
        Ok(())
    }

    fn describe(&self) -> String {
        "kept".into()
    }
}

/// `kept`'s store with a gate: while it is shut, writes wait (a slow disk).
#[derive(Clone, Default)]
struct Gated {
    kept: Kept,
    shut: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Gated {
    fn set_shut(&self, shut: bool) {
        let (lock, opened) = &*self.shut;
        *lock.lock().expect("gate") = shut;
        opened.notify_all();
    }
}

impl Store for Gated {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.kept.load()
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let (lock, opened) = &*self.shut;
        let shut = lock.lock().expect("gate");
        drop(opened.wait_while(shut, |shut| *shut).expect("gate"));
        self.kept.write(batch)
    }

    fn describe(&self) -> String {
        "gated".into()
    }
}

/// A head on `kept`'s store.
fn start(config: &HeadConfig, kept: &Kept) -> Arc<Cluster> {
    Cluster::start_with(config, Some(Box::new(kept.clone()))).expect("a head on the kept store")
}

/// `head` stopped (its store closed, as on a crash once written) and a new one started on
/// the same store.
fn restart(head: Arc<Cluster>, config: &HeadConfig, kept: &Kept) -> Arc<Cluster> {
    head.close_store(Duration::from_secs(10));
    drop(head);
    start(config, kept)
}

#[test]
fn a_restarted_head_holds_running_tasks_for_their_worker_and_requeues_the_rest() {
    let kept = Kept::default();
    let config = config(2);
    let first = start(&config, &kept);
    let (c, _rx, _) = first.worker_joined(registration("w1", 2, 9, &[]), String::new());
    let (t1, t2, t3) = (task(&first, "one"), task(&first, "two"), task(&first, "three"));
    first.worker_events(
        "w1",
        c,
        vec![event(&t1, 1, EventKind::Working), event(&t2, 2, EventKind::Working)],
    );

    let second = restart(first, &config, &kept);
    {
        let state = second.state.lock();
        assert_eq!(state.orphans.get("w1").map(Vec::len), Some(2), "t1 and t2 ran on w1");
        let queued: Vec<&TaskId> = state.queue.iter().collect();
        assert_eq!(queued, [&t3]);
        assert_eq!(state.worker_seqs.get("w1"), Some(&(9, 2)));
    }
    assert_eq!(where_is(&second, &t1), (TaskState::Working, 1, Some("w1".into())));
    // w1 comes back still running t1 only: t1 is adopted, t2 retried, t3 placed.
    let (_, _, resume) = second.worker_joined(registration("w1", 2, 9, &[(&t1, 1)]), String::new());
    assert_eq!(resume, 2, "the worker resumes after its stored events");
    assert_eq!(where_is(&second, &t1), (TaskState::Working, 1, Some("w1".into())));
    assert_eq!(where_is(&second, &t2).1, 2);
    assert!(second.state.lock().orphans.is_empty());

    // A third start whose worker never returns: its tasks are retried once the grace ends.
    let third = restart(second, &config, &kept);
    assert!(!third.state.lock().orphans.is_empty());
    third.retry_orphans(Instant::now() + Duration::from_secs(3600));
    assert!(third.state.lock().orphans.is_empty());
    assert_eq!(where_is(&third, &t1), (TaskState::Queued, 2, None));
}

/// A task dispatched just before the head crashed, its `RunTask` lost with the head: the
/// worker rejoins the restarted head without it. The same process never got it, so it runs
/// there on its first attempt (with no retries to spare, a retry would have failed it); a
/// task that did reach its worker, or one given to a process since replaced, is a lost
/// attempt.
#[test]
fn a_task_whose_run_never_reached_its_worker_before_a_restart_runs_on_its_attempt() {
    let kept = Kept::default();
    let config = config(0);
    let first = start(&config, &kept);
    // Neither worker has sent an event: the head knows their processes from their joins.
    let (_, _rx1, _) = first.worker_joined(registration("w1", 2, 9, &[]), String::new());
    let (t1, t2) = (task(&first, "one"), task(&first, "two"));
    let (_, _rx2, _) = first.worker_joined(registration("w2", 1, 20, &[]), String::new());
    let t3 = task(&first, "three");
    assert_eq!(where_is(&first, &t3).2.as_deref(), Some("w2"));

    let second = restart(first, &config, &kept);
    let (c, mut rx, _) = second.worker_joined(registration("w1", 2, 9, &[]), String::new());
    for t in [&t1, &t2] {
        assert_eq!(where_is(&second, t), (TaskState::Scheduled, 1, Some("w1".into())));
        let events = second.task(&op(), t.as_str()).expect("task").events;
        assert_eq!(events, 2, "Submitted and Scheduled only");
    }
    let sent = commands(&mut rx);
    let place = sent.iter().position(|c| matches!(c, Command::PlaceActor { .. }));
    let run = |id: &TaskId| {
        sent.iter()
            .position(|c| matches!(c, Command::RunTask(t) if t.task_id == *id && t.attempt == 1))
    };
    for t in [&t1, &t2] {
        assert!(matches!((place, run(t)), (Some(p), Some(r)) if p < r), "{sent:?}");
    }
    // Its events count from the first attempt on.
    second.worker_events("w1", c, vec![event(&t1, 1, EventKind::Working)]);
    assert_eq!(where_is(&second, &t1).0, TaskState::Working);
    // w2 comes back as a new process: it may have crashed on t3.
    second.worker_joined(registration("w2", 1, 21, &[]), String::new());
    assert_eq!(where_is(&second, &t3).0, TaskState::Failed);

    // A task whose worker had it is a lost attempt, whatever the process.
    let third = restart(second, &config, &kept);
    third.worker_joined(registration("w1", 2, 9, &[(&t2, 1)]), String::new());
    assert_eq!(where_is(&third, &t1).0, TaskState::Failed, "it was working on w1");
    assert_eq!(where_is(&third, &t2).0, TaskState::Scheduled, "w1 still runs it");
}

/// A conversation's turns are the head's: each task of a context goes to its worker with
/// the turns before it, whichever worker ran them, across a restart of the head; a task
/// retried after its exchange was stored adds it once.
#[test]
fn a_context_s_turns_go_with_its_next_task_from_the_store() {
    let kept = Kept::default();
    let config = config(2);
    let first = start(&config, &kept);
    let (c1, mut rx1, _) = first.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let turn = |cluster: &Cluster, input: &str| {
        let new = NewTask {
            agent: "a".into(),
            input: input.into(),
            context_id: "ctx".into(),
            ..Default::default()
        };
        cluster.submit(&op(), new, None).expect("submitted")
    };
    let sent_conversation = |rx: &mut CommandStream, id: &TaskId| {
        commands(rx).into_iter().find_map(|c| match c {
            Command::RunTask(t) if t.task_id == *id => {
                Some(t.conversation.into_iter().map(|t| t.content).collect::<Vec<_>>())
            }
            _ => None,
        })
    };
    let t1 = turn(&first, "one");
    assert_eq!(sent_conversation(&mut rx1, &t1), Some(vec![]));
    // The worker numbers its events across its tasks.
    let answer = |id: &TaskId, seq: u64, text: &str| {
        vec![
            event(id, seq, EventKind::text(text)),
            event(id, seq + 1, EventKind::Completed { usage: Default::default() }),
        ]
    };
    first.worker_events("w1", c1, answer(&t1, 1, "ONE"));
    let t2 = turn(&first, "two");
    assert_eq!(sent_conversation(&mut rx1, &t2), Some(vec!["one".into(), "ONE".into()]));
    first.worker_events("w1", c1, answer(&t2, 3, "TWO"));

    // The head restarts; another worker takes the next turn with the whole past.
    let second = restart(first, &config, &kept);
    let (_, mut rx2, _) = second.worker_joined(registration("w2", 1, 2, &[]), String::new());
    let t3 = turn(&second, "three");
    let past: Vec<String> = ["one", "ONE", "two", "TWO"].map(String::from).into();
    assert_eq!(sent_conversation(&mut rx2, &t3), Some(past));
    {
        let mut state = second.state.lock();
        let key =
            Key { tenant: DEFAULT_TENANT.into(), agent: "a".into(), context_id: "ctx".into() };
        assert_eq!(state.conversations.worker(&key), Some("w1"), "the stored worker");
        assert!(state.conversations.add(&key, t2.as_str(), vec![], "w2", 0).is_empty(), "t2 twice");
    }
    assert_eq!(second.state.lock().conversations.len(), 1);
}

#[test]
fn a_head_past_its_lease_puts_no_task_on_a_worker() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let lease = LeaseDeadline::new(Instant::now() + Duration::from_secs(60));
    cluster.lead_until(lease.clone());
    let (c, mut rx, _) = cluster.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let (t1, t2) = (task(&cluster, "one"), task(&cluster, "two"));
    assert_eq!(where_is(&cluster, &t1).0, TaskState::Scheduled, "leading: dispatched");
    commands(&mut rx);

    // The lease ran out (not renewed): another head may lead and dispatch these tasks.
    let passed = LeaseDeadline::new(Instant::now());
    cluster.lead_until(passed);
    let t3 = task(&cluster, "three");
    assert_eq!(where_is(&cluster, &t3).0, TaskState::Queued);
    let usage = Default::default();
    cluster.worker_events("w1", c, vec![event(&t1, 1, EventKind::Completed { usage })]);
    assert_eq!(where_is(&cluster, &t1).0, TaskState::Completed);
    assert_eq!(where_is(&cluster, &t2).0, TaskState::Queued, "a free slot, yet not dispatched");
    let sent = commands(&mut rx);
    assert!(!sent.iter().any(|c| matches!(c, Command::RunTask(_))), "sent {sent:?}");
}

#[test]
fn a_task_waiting_on_agents_it_called_lends_them_its_slot_one_at_a_time() {
    let mut config = config(0);
    config.agents.push(AgentSpec {
        name: "asker".into(),
        model: "builtin:echo".into(),
        tools: vec!["a".into()],
        ..Default::default()
    });
    let cluster = Cluster::new(&config).expect("cluster");
    // One slot, off the mesh: the head runs the agents its tasks call as sub-tasks.
    let (c, mut rx, _) = cluster.worker_joined(registration("w1", 1, 3, &[]), String::new());
    let submit = |agent: &str| {
        let new = NewTask { agent: agent.into(), input: "q".into(), ..Default::default() };
        cluster.submit(&op(), new, None).expect("submitted")
    };
    let (asker, waiting) = (submit("asker"), submit("asker"));
    assert_eq!(where_is(&cluster, &waiting).0, TaskState::Queued);
    let call = |id: &str| EventKind::ToolCall {
        call_id: id.into(),
        name: "a".into(),
        arguments: r#"{"input": "x"}"#.into(),
        traceparent: String::new(),
        replayed: false,
    };
    // Two calls at once.
    let events = vec![
        event(&asker, 1, EventKind::Working),
        event(&asker, 2, call("c1")),
        event(&asker, 3, call("c2")),
    ];
    cluster.worker_events("w1", c, events);
    let children = cluster.state.lock().tasks.get(asker.as_str()).expect("asker").children.clone();
    let [first, second] = children.as_slice() else { panic!("two sub-tasks: {children:?}") };
    // Without the lent slot the sub-tasks would queue behind `waiting`, and the asker
    // would wait on them for ever; one at a time, so a worker's tasks stay bounded.
    assert_eq!(where_is(&cluster, first), (TaskState::Scheduled, 1, Some("w1".into())));
    assert_eq!(where_is(&cluster, second).0, TaskState::Queued, "one sub-task in the lent slot");
    assert_eq!(where_is(&cluster, &waiting).0, TaskState::Queued, "the slot is lent, not freed");

    let done = EventKind::Completed { usage: Default::default() };
    let text = EventKind::text("y");
    cluster.worker_events(
        "w1",
        c,
        vec![event(first, 4, text.clone()), event(first, 5, done.clone())],
    );
    assert_eq!(where_is(&cluster, second), (TaskState::Scheduled, 1, Some("w1".into())));
    assert_eq!(where_is(&cluster, &waiting).0, TaskState::Queued);
    cluster.worker_events("w1", c, vec![event(second, 6, text), event(second, 7, done)]);
    let replies = commands(&mut rx)
        .into_iter()
        .filter(|c| {
            matches!(c, Command::ToolReply { task_id, output, is_error: false, .. } if *task_id == asker && output == "y")
        })
        .count();
    assert_eq!(replies, 2, "the asker hears both answers");
    let state = cluster.state.lock();
    let w1 = state.workers.get("w1").expect("w1");
    assert!(w1.lent.is_empty() && w1.borrowing.is_empty(), "the asker took its slot back");
    assert_eq!((w1.slots_taken(), where_is_locked(&state, &waiting)), (1, TaskState::Queued));
}

fn where_is_locked(state: &State, id: &TaskId) -> TaskState {
    state.tasks.get(id.as_str()).expect("task").state
}

#[test]
fn a_retried_caller_hears_only_the_calls_of_its_new_attempt() {
    let mut config = config(0);
    config.agents[0].labels = BTreeMap::from([("pool".into(), "b".into())]);
    config.agents.push(AgentSpec {
        name: "asker".into(),
        model: "builtin:echo".into(),
        tools: vec!["a".into()],
        max_retries: 1,
        ..Default::default()
    });
    let cluster = Cluster::new(&config).expect("cluster");
    let (c1, _rx1, _) = cluster.worker_joined(registration("w1", 1, 3, &[]), String::new());
    let new = NewTask { agent: "asker".into(), input: "q".into(), ..Default::default() };
    let asker = cluster.submit(&op(), new, None).expect("submitted");
    assert_eq!(where_is(&cluster, &asker).2.as_deref(), Some("w1"));
    // Agent `a` runs only on w3.
    let pool_b = Registration {
        labels: BTreeMap::from([("pool".into(), "b".into())]),
        ..registration("w3", 1, 5, &[])
    };
    let (c3, mut rx3, _) = cluster.worker_joined(pool_b, String::new());
    let call = EventKind::ToolCall {
        call_id: "c1".into(),
        name: "a".into(),
        arguments: r#"{"input": "x"}"#.into(),
        traceparent: String::new(),
        replayed: false,
    };
    cluster.worker_events(
        "w1",
        c1,
        vec![event(&asker, 1, EventKind::Working), event(&asker, 2, call)],
    );
    let old = cluster.state.lock().tasks.get(asker.as_str()).expect("asker").children[0].clone();
    assert_eq!(where_is(&cluster, &old).2.as_deref(), Some("w3"));

    cluster.worker_lost("w1", c1, "gone");
    assert_eq!(where_is(&cluster, &asker), (TaskState::Queued, 2, None), "the caller is retried");
    let canceled = commands(&mut rx3)
        .into_iter()
        .any(|c| matches!(c, Command::CancelTask { task_id, .. } if task_id == old));
    assert!(canceled, "its old sub-task is not needed");
    let (_c2, mut rx2, _) = cluster.worker_joined(registration("w2", 1, 4, &[]), String::new());
    assert_eq!(where_is(&cluster, &asker), (TaskState::Scheduled, 2, Some("w2".into())));
    // The old sub-task ends after the new attempt started.
    let done = EventKind::Canceled { reason: "asked".into() };
    cluster.worker_events("w3", c3, vec![event(&old, 1, EventKind::Working), event(&old, 2, done)]);
    assert!(where_is(&cluster, &old).0.is_terminal());
    let stale = commands(&mut rx2).into_iter().any(|c| matches!(c, Command::ToolReply { .. }));
    assert!(!stale, "the old sub-task's end is no answer to the new attempt");
}

#[test]
fn a_reply_goes_to_the_waiting_call_once_and_only_while_the_task_waits() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let (c, mut rx, _) = cluster.worker_joined(registration("w1", 1, 0, &[]), String::new());
    let t = task(&cluster, "book a hotel");
    let asked = |call: &str, tool: &str| EventKind::InputRequired {
        prompt: "Which city?".into(),
        call_id: call.into(),
        tool: tool.into(),
        arguments: String::new(),
        deadline_us: 0,
    };
    cluster.worker_events("w1", c, vec![event(&t, 0, EventKind::Working)]);
    let early = cluster.reply(&op(), t.as_str(), "", Reply::Text("Paris".into()), 0);
    assert!(
        matches!(early, Err(Error::InvalidArgument(ref m)) if m.contains("not input-required"))
    );
    cluster.worker_events("w1", c, vec![event(&t, 0, asked("c1", ""))]);
    assert_eq!(where_is(&cluster, &t).0, TaskState::InputRequired);
    let context = cluster.task(&op(), t.as_str()).expect("task").context_id;
    let elsewhere = cluster.reply(&op(), t.as_str(), "other", Reply::Text("Paris".into()), 0);
    assert!(
        matches!(elsewhere, Err(Error::InvalidArgument(ref m)) if m.contains("belongs to context"))
    );
    let approval = cluster.reply(&op(), t.as_str(), "", Reply::Approve, 0);
    assert!(matches!(approval, Err(Error::InvalidArgument(_))), "a question is answered in words");
    commands(&mut rx);

    let info = cluster
        .reply(&op(), t.as_str(), &context, Reply::Text("Paris".into()), 0)
        .expect("replied");
    assert_eq!(info.state, TaskState::Working);
    let sent = commands(&mut rx);
    assert!(
        matches!(&sent[..], [Command::ToolReply { call_id, output, is_error: false, .. }]
            if call_id == "c1" && output == "Paris"),
        "{sent:?}"
    );
    let again = cluster.reply(&op(), t.as_str(), "", Reply::Text("Paris".into()), 0);
    assert!(again.is_err(), "one reply per request");

    // An approval: any words but a yes reject, and the words are the reason.
    cluster.worker_events("w1", c, vec![event(&t, 0, asked("c2", "delete"))]);
    cluster.reply(&op(), t.as_str(), "", Reply::Text("no, keep it".into()), 0).expect("replied");
    let sent = commands(&mut rx);
    assert!(
        matches!(&sent[..], [Command::ToolReply { call_id, output, is_error: true, .. }]
            if call_id == "c2" && output == "no, keep it"),
        "{sent:?}"
    );
    let info = cluster.task(&op(), t.as_str()).expect("task");
    let replies: Vec<_> = info.exchanges.iter().map(|e| (e.reply.as_deref(), e.rejected)).collect();
    assert_eq!(replies, [(Some("Paris"), false), (Some("no, keep it"), true)]);

    // A worker that is gone hears nothing: the reply is refused, not lost.
    cluster.worker_events("w1", c, vec![event(&t, 0, asked("c3", ""))]);
    cluster.state.lock().workers.remove("w1", c);
    let unheard = cluster.reply(&op(), t.as_str(), "", Reply::Text("Lyon".into()), 0);
    assert!(matches!(unheard, Err(Error::Unavailable(_))), "{unheard:?}");
    assert_eq!(where_is(&cluster, &t).0, TaskState::InputRequired);
}

#[test]
fn a_stale_reply_is_refused_and_a_rejoining_worker_hears_the_reply_again() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let (c, mut rx, _) = cluster.worker_joined(registration("w1", 1, 3, &[]), String::new());
    let t = task(&cluster, "clean up");
    let asked = |call: &str| EventKind::InputRequired {
        prompt: "Delete?".into(),
        call_id: call.into(),
        tool: "delete".into(),
        arguments: "{}".into(),
        deadline_us: 0,
    };
    cluster.worker_events(
        "w1",
        c,
        vec![event(&t, 1, EventKind::Working), event(&t, 2, asked("a"))],
    );
    cluster.worker_events("w1", c, vec![event(&t, 3, EventKind::text("x"))]);
    cluster.reply(&op(), t.as_str(), "", Reply::Approve, 0).expect("first request answered");
    cluster.worker_events("w1", c, vec![event(&t, 4, asked("b"))]);
    let request = cluster.task(&op(), t.as_str()).expect("task").events;
    // A reply meant for the first request does not answer the second.
    let stale = cluster.reply(&op(), t.as_str(), "", Reply::Approve, 5);
    assert!(
        matches!(stale, Err(Error::InvalidArgument(ref m)) if m.contains("waits on its request"))
    );
    commands(&mut rx);
    cluster.reply(&op(), t.as_str(), "", Reply::Reject("no".into()), request).expect("answered");
    assert_eq!(commands(&mut rx).len(), 1);
    // The connection broke before the head noticed: the worker rejoins, still running the
    // task, and is sent the reply again.
    let (_, mut rx, _) = cluster.worker_joined(registration("w1", 1, 3, &[(&t, 1)]), String::new());
    let sent = commands(&mut rx);
    assert!(
        sent.iter().any(
            |c| matches!(c, Command::ToolReply { call_id, is_error: true, .. } if call_id == "b")
        ),
        "{sent:?}"
    );
}

#[test]
fn a_submission_sent_again_under_its_key_gets_the_task_it_made() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let keyed = |input: &str, key: &str| NewTask {
        agent: "a".into(),
        input: input.into(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let (first, existing) = cluster.submit_keyed(&op(), keyed("q", "k1"), None).expect("first");
    assert!(!existing);
    let (again, existing) = cluster.submit_keyed(&op(), keyed("q", "k1"), None).expect("again");
    assert_eq!((&again, existing), (&first, true), "a second task under the same key");
    assert_eq!(cluster.state.lock().tasks.len(), 1);

    // A multiplexed submitter is told it is the earlier task, and gets none of its events.
    let (sub, mut subscription) = crate::tasks::subscriber(16);
    let (again, existing) =
        cluster.submit_keyed(&op(), keyed("q", "k1"), Some((sub, Some(7)))).expect("again");
    assert!(existing && again == first);
    match subscription.rx.try_recv() {
        Ok(Delivery::Accepted { client_ref: 7, task_id, existing: true }) => {
            assert_eq!(task_id, first);
        }
        other => panic!("expected Accepted {{ existing: true }}, got {other:?}"),
    }
    assert!(subscription.rx.try_recv().is_err(), "events of the earlier task on this stream");

    // Other keys, or none, make other tasks; a key reused for another task is refused.
    let (other, _) = cluster.submit_keyed(&op(), keyed("q", "k2"), None).expect("another key");
    assert_ne!(other, first);
    let (none1, _) = cluster.submit_keyed(&op(), keyed("q", ""), None).expect("no key");
    let (none2, _) = cluster.submit_keyed(&op(), keyed("q", ""), None).expect("no key");
    assert_ne!(none1, none2);
    let refused = cluster.submit_keyed(&op(), keyed("another input", "k1"), None);
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("new key")),
        "{refused:?}"
    );
    let long = cluster.submit_keyed(&op(), keyed("q", &"k".repeat(300)), None);
    assert!(matches!(long, Err(Error::InvalidArgument(_))), "{long:?}");
}

/// The inputs of unfinished tasks, their histories included, are bounded in bytes: a
/// submission past the budget is refused (429, retry), and one task finishing makes room.
#[test]
fn unfinished_tasks_are_bounded_in_bytes() {
    let cluster =
        Cluster::new(&HeadConfig { max_queued_bytes: 3000, ..config(0) }).expect("cluster");
    let first = task(&cluster, &"x".repeat(1000));
    let history =
        fleet_proto::Turn { role: "user".into(), content: "h".repeat(1000), ..Default::default() };
    let options = Arc::new(TaskOptions { history: vec![history], ..Default::default() });
    let with_history = NewTask {
        agent: "a".into(),
        input: "y".into(),
        options: Some(options),
        ..Default::default()
    };
    cluster.submit(&op(), with_history.clone(), None).expect("under the budget");
    let refused = cluster.submit(&op(), with_history.clone(), None).expect_err("over the budget");
    assert!(matches!(refused, Error::QueueBytes { .. }), "{refused}");
    assert_eq!(refused.retry_after_s(), Some(1));
    cluster.cancel(&op(), first.as_str()).expect("canceled");
    cluster.submit(&op(), with_history, None).expect("room again once a task ended");
}

/// A follower that falls behind the live stream is caught up from the task's log: every
/// event once and in order, to the end (its bounded subscription alone was cut off).
#[tokio::test]
async fn a_follower_that_falls_behind_gets_every_event_once() {
    let config = HeadConfig { subscriber_buffer: 2, ..config(0) };
    let cluster = Arc::new(Cluster::new(&config).expect("cluster"));
    let (c, _rx, _) = cluster.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let t = task(&cluster, "x");
    let mut follow = cluster.follow(&op(), t.as_str(), 1).expect("follow");
    // The worker sends 22 events while the follower reads none.
    let mut sent = vec![event(&t, 1, EventKind::Working)];
    sent.extend((2..=21).map(|s| event(&t, s, EventKind::text("w"))));
    sent.push(event(&t, 22, EventKind::Completed { usage: Default::default() }));
    for e in sent {
        cluster.worker_events("w1", c, vec![e]);
    }
    let mut got = Vec::new();
    while let Some(e) = follow.next().await {
        got.push(e);
    }
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    // Submitted and Scheduled, then the worker's 22.
    assert_eq!(seqs, (1..=24).collect::<Vec<u64>>());
    assert!(matches!(got.last().map(|e| &e.kind), Some(EventKind::Completed { .. })));
}

/// A multiplexed stream follows tasks it did not submit, each from the seq it names: the
/// events stored so far, then the others as they come; a task it cannot see is refused on
/// the stream rather than by ending it; and once the tasks end they let the stream go.
#[tokio::test]
async fn a_multiplexed_stream_follows_tasks_from_the_seqs_it_names() {
    let cluster = Arc::new(Cluster::new(&config(0)).expect("cluster"));
    let (c, _rx, _) = cluster.worker_joined(registration("w1", 2, 1, &[]), String::new());
    let (t1, t2) = (task(&cluster, "x"), task(&cluster, "y"));
    cluster.worker_events("w1", c, vec![event(&t1, 1, EventKind::Working)]);
    // Room for all: the head waits for room for each task's backlog and more.
    let (sub, mut subscription) = crate::tasks::subscriber(1_024);
    let watches = [(t1.to_string(), 2), ("no-such-task".to_owned(), 1), (t2.to_string(), 1)];
    assert!(cluster.watch_for(&op(), &sub, watches).await);
    drop(sub);
    complete(&cluster, c, &t1);
    complete(&cluster, c, &t2);
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut refused = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), subscription.rx.recv()).await;
        let delivery = match next {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(_) => panic!("the stream did not end: {seen:?} {refused:?}"),
        };
        match delivery {
            Delivery::Event(e) => seen.push((e.task_id.to_string(), e.seq)),
            Delivery::WatchRefused { task_id, error } => {
                assert!(matches!(*error, Error::UnknownTask(_)), "{error:?}");
                refused.push(task_id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let of = |id: &TaskId| -> Vec<u64> {
        seen.iter().filter(|(t, _)| t == id.as_str()).map(|(_, s)| *s).collect()
    };
    // Submitted, Scheduled, Working, Completed: t1 from its second.
    assert_eq!(of(&t1), [2, 3, 4]);
    assert_eq!(of(&t2), [1, 2, 3]);
    assert_eq!(refused, ["no-such-task"]);
}

fn submit_as(cluster: &Cluster, who: &Principal, input: &str) -> TaskId {
    let new = NewTask { agent: "a".into(), input: input.into(), ..Default::default() };
    cluster.submit(who, new, None).expect("submitted")
}

fn complete(cluster: &Cluster, connection: u64, id: &TaskId) {
    let done = EventKind::Completed { usage: Default::default() };
    let (_, applied) = cluster.state.lock().worker_seqs.get("w1").copied().unwrap_or_default();
    cluster.worker_events("w1", connection, vec![event(id, applied + 1, done)]);
}

/// Tenants are served in turns: another tenant's task goes next, not after the thousand a
/// busy tenant queued before it.
#[test]
fn queued_tenants_take_turns() {
    let cluster = Cluster::new(&config(0)).expect("cluster");
    let (c, _rx, _) = cluster.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let (busy, other) = (
        Principal::new("busy", "busy", crate::auth::Role::User),
        Principal::new("other", "other", crate::auth::Role::User),
    );
    let first = submit_as(&cluster, &busy, "first");
    let queued: Vec<TaskId> =
        (0..1000).map(|i| submit_as(&cluster, &busy, &i.to_string())).collect();
    let theirs = submit_as(&cluster, &other, "theirs");
    assert_eq!(where_is(&cluster, &first).0, TaskState::Scheduled);
    complete(&cluster, c, &first);
    assert_eq!(where_is(&cluster, &theirs).0, TaskState::Scheduled, "the other tenant's turn");
    assert_eq!(where_is(&cluster, &queued[0]).0, TaskState::Queued);
    complete(&cluster, c, &theirs);
    assert_eq!(where_is(&cluster, &queued[0]).0, TaskState::Scheduled, "in order within a tenant");
}

/// A tenant held back by its running quota is passed over whole: another tenant's task
/// behind hundreds of its waiting ones still gets the free slot.
#[test]
fn a_tenant_at_its_quota_holds_up_no_one_else() {
    let mut config = config(0);
    config.tenants.push(crate::quotas::TenantQuota {
        name: "q".into(),
        max_running_tasks: Some(1),
        ..Default::default()
    });
    let cluster = Cluster::new(&config).expect("cluster");
    let (_c, _rx, _) = cluster.worker_joined(registration("w1", 2, 1, &[]), String::new());
    let (q, b) = (
        Principal::new("q", "q", crate::auth::Role::User),
        Principal::new("b", "b", crate::auth::Role::User),
    );
    let running = submit_as(&cluster, &q, "runs");
    let waiting: Vec<TaskId> = (0..600).map(|i| submit_as(&cluster, &q, &i.to_string())).collect();
    let theirs = submit_as(&cluster, &b, "theirs");
    assert_eq!(where_is(&cluster, &running).0, TaskState::Scheduled);
    assert_eq!(where_is(&cluster, &waiting[0]).0, TaskState::Queued, "q is at its quota");
    assert_eq!(where_is(&cluster, &theirs).0, TaskState::Scheduled, "b is not held up by q");
}

/// A hosted function's call a worker announces is made once its `ToolCall` event is
/// stored, not before: a head that crashed before the record never made it, and the
/// worker's outbox, sending the event again to the restarted head, has it made once.
#[test]
fn a_hosted_call_is_made_once_its_announcement_is_stored() {
    let mut config = config(0);
    config.agents.push(AgentSpec {
        name: "asker".into(),
        model: "builtin:echo".into(),
        tools: vec!["lookup".into()],
        ..Default::default()
    });
    let store = Gated::default();
    let cluster = Cluster::start_with(&config, Some(Box::new(store.clone()))).expect("head");
    let (host, _calls) = cluster.host_tools(&op()).expect("a host");
    let lookup = fleet_proto::FunctionTool {
        name: "lookup".into(),
        parameters: r#"{"type":"object"}"#.into(),
        ..Default::default()
    };
    host.register(vec![lookup]).expect("registered");
    let (c, _rx, _) = cluster.worker_joined(registration("w1", 2, 3, &[]), String::new());
    let new = NewTask { agent: "asker".into(), input: "q".into(), ..Default::default() };
    let asker = cluster.submit(&op(), new, None).expect("submitted");
    let sent = || cluster.state.lock().tools.counts().1;
    store.set_shut(true);
    let call = EventKind::ToolCall {
        call_id: "c1".into(),
        name: "lookup".into(),
        arguments: "{}".into(),
        traceparent: String::new(),
        replayed: false,
    };
    cluster.worker_events(
        "w1",
        c,
        vec![event(&asker, 1, EventKind::Working), event(&asker, 2, call)],
    );
    // Made at once, it would be waiting for its host's answer by now.
    assert_eq!(sent(), 0, "the call was made before its announcement was stored");
    store.set_shut(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent() == 0 {
        assert!(Instant::now() < deadline, "the call was not made once stored");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sent(), 1);
    assert!(cluster.state.lock().calls_to_route.is_empty());
}

/// A worker that rejoins resumes after its last event on record, not the last one the head
/// took: it keeps (and sends again) what a crash of the head could still lose.
#[test]
fn a_rejoining_worker_resumes_after_its_events_on_record() {
    let store = Gated::default();
    let cluster = Cluster::start_with(&config(0), Some(Box::new(store.clone()))).expect("head");
    let (c, _rx, _) = cluster.worker_joined(registration("w1", 2, 9, &[]), String::new());
    let t = task(&cluster, "one");
    cluster.worker_events("w1", c, vec![event(&t, 1, EventKind::Working)]);
    let stored = || cluster.state.lock().worker_stored.get("w1").copied();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored() != Some((9, 1)) {
        assert!(Instant::now() < deadline, "event 1 was not stored: {:?}", stored());
        std::thread::sleep(Duration::from_millis(1));
    }
    store.set_shut(true);
    cluster.worker_events("w1", c, vec![event(&t, 2, EventKind::text("x"))]);
    let (c, _rx, resume) =
        cluster.worker_joined(registration("w1", 2, 9, &[(&t, 1)]), String::new());
    assert_eq!(resume, 1, "event 2 was taken, not stored: the worker must keep it");
    // Sent again, it is not applied twice.
    cluster.worker_events("w1", c, vec![event(&t, 2, EventKind::text("x"))]);
    store.set_shut(false);
    let events = cluster.task(&op(), t.as_str()).expect("task").events;
    assert_eq!(events, 4, "Submitted, Scheduled, Working and the text once");
}

/// The RunTask commands a worker was sent: (task, attempt, actor state).
fn runs(stream: &mut CommandStream) -> Vec<(TaskId, u32, Option<String>)> {
    commands(stream)
        .into_iter()
        .filter_map(|c| match c {
            Command::RunTask(t) => {
                Some((t.task_id, t.attempt, t.actor.map(|a| a.state.to_string())))
            }
            _ => None,
        })
        .collect()
}

/// One task per actor key runs at a time: the others wait parked, in order, and the next
/// starts from the state the one before stored; a parked task canceled is skipped, and a
/// retried holder keeps the key, running again before the key's next task.
#[test]
fn an_actor_s_tasks_run_one_at_a_time_in_order_from_the_stored_state() {
    let mut config = HeadConfig::default();
    config.agents.push(AgentSpec {
        name: "actor".into(),
        model: "python:Actor".into(),
        max_retries: 1,
        actor_state: fleet_proto::ActorState::PerContext,
        ..Default::default()
    });
    let cluster = Cluster::new(&config).expect("cluster");
    let hosting = |id: &str| Registration {
        python_agents: vec![fleet_proto::ANY_PYTHON_AGENT.into()],
        ..registration(id, 8, 0, &[])
    };
    let (c1, mut rx1, _) = cluster.worker_joined(hosting("w1"), String::new());
    let submit = |context: &str| {
        let new = NewTask {
            agent: "actor".into(),
            input: "x".into(),
            context_id: context.into(),
            ..Default::default()
        };
        cluster.submit(&op(), new, None).expect("submitted")
    };
    let (t1, other, t2, t3) = (submit("k"), submit("other"), submit("k"), submit("k"));
    let empty = Some("{}".to_owned());
    assert_eq!(runs(&mut rx1), [(t1.clone(), 1, empty.clone()), (other.clone(), 1, empty)]);
    // A drain while t1 holds the key parks t2 and t3.
    let done = EventKind::Completed { usage: Default::default() };
    cluster.worker_events("w1", c1, vec![event(&other, 0, done.clone())]);
    assert_eq!(cluster.state.lock().queue.parked(), 2);
    assert_eq!(where_is(&cluster, &t2).0, TaskState::Queued);
    cluster.cancel(&op(), t2.as_str()).expect("canceled");
    assert_eq!(where_is(&cluster, &t2).0, TaskState::Canceled);

    let saved = EventKind::StateSaved { state: r#"{"n":1}"#.into() };
    cluster.worker_events("w1", c1, vec![event(&t1, 0, saved), event(&t1, 0, done)]);
    let n1 = Some(r#"{"n":1}"#.to_owned());
    assert_eq!(runs(&mut rx1), [(t3.clone(), 1, n1.clone())], "t2 was canceled: t3 is next");

    let t4 = submit("k");
    cluster.worker_lost("w1", c1, "gone");
    let (_, mut rx2, _) = cluster.worker_joined(hosting("w2"), String::new());
    let sent = runs(&mut rx2);
    assert!(sent.contains(&(t3.clone(), 2, n1)), "the retry holds the key: {sent:?}");
    assert!(!sent.iter().any(|(id, _, _)| *id == t4), "t4 waits for t3's retry: {sent:?}");
    assert_eq!(where_is(&cluster, &t4).0, TaskState::Queued);
}

/// A task waiting on two calls lends its slot to the second once the first ended; when the
/// second calls an actor whose key another task holds, it waits for that task all the same.
#[test]
fn a_lent_slot_goes_to_no_call_of_an_actor_whose_key_is_held() {
    let mut config = config(0);
    config.agents.push(AgentSpec {
        name: "asker".into(),
        model: "builtin:echo".into(),
        tools: vec!["a".into(), "counter".into()],
        ..Default::default()
    });
    config.agents.push(AgentSpec {
        name: "counter".into(),
        model: "python:Counter".into(),
        actor_state: fleet_proto::ActorState::PerAgent,
        ..Default::default()
    });
    let cluster = Cluster::new(&config).expect("cluster");
    let hosting = Registration {
        python_agents: vec![fleet_proto::ANY_PYTHON_AGENT.into()],
        ..registration("w1", 2, 0, &[])
    };
    let (c, _rx, _) = cluster.worker_joined(hosting, String::new());
    let submit = |agent: &str| {
        let new = NewTask { agent: agent.into(), input: "q".into(), ..Default::default() };
        cluster.submit(&op(), new, None).expect("submitted")
    };
    let (holder, asker) = (submit("counter"), submit("asker"));
    let call = |id: &str, name: &str| EventKind::ToolCall {
        call_id: id.into(),
        name: name.into(),
        arguments: r#"{"input": "x"}"#.into(),
        traceparent: String::new(),
        replayed: false,
    };
    cluster.worker_events(
        "w1",
        c,
        vec![event(&asker, 0, call("c1", "a")), event(&asker, 0, call("c2", "counter"))],
    );
    let children = cluster.state.lock().tasks.get(asker.as_str()).expect("asker").children.clone();
    let [helper, counted] = children.as_slice() else { panic!("two sub-tasks: {children:?}") };
    assert_eq!(where_is(&cluster, helper).0, TaskState::Scheduled, "in the lent slot");
    assert_eq!(where_is(&cluster, counted).0, TaskState::Queued);
    let done = EventKind::Completed { usage: Default::default() };
    cluster.worker_events("w1", c, vec![event(helper, 0, done.clone())]);
    assert_eq!(where_is(&cluster, counted).0, TaskState::Queued, "the key is still held");
    cluster.worker_events("w1", c, vec![event(&holder, 0, done)]);
    assert_eq!(where_is(&cluster, counted).0, TaskState::Scheduled, "its turn");
}

/// A topic's messages and a consumer group's place survive a restart: the restarted head
/// has every message at its offset (retention's trim included, and no offset used twice),
/// and the group resumes after what it acknowledged.
#[test]
fn topics_and_their_groups_survive_a_restart_at_the_same_offsets() {
    let kept = Kept::default();
    let mut config = config(0);
    config.topics.messages = 8;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let first = runtime.block_on(async { start(&config, &kept) });
    let bodies = |from: usize, to: usize| (from..to).map(|i| format!("m{i}")).collect::<Vec<_>>();
    let offset = runtime
        .block_on(first.publish_to_log(&op(), "news", "p", bodies(0, 10)))
        .expect("published");
    assert_eq!(offset, 0);
    let got = runtime.block_on(async {
        let mut follower = first.follow_log(&op(), "news", None, Some("g".into())).await?;
        let got = follower.next().await;
        let offsets: Vec<u64> = got.iter().filter_map(|m| m.offset).collect();
        first.ack_topic(&op(), "news", "g", &offsets[..3]).await?;
        Ok::<_, crate::Error>(got)
    });
    let got = got.expect("followed");
    assert_eq!(got.first().and_then(|m| m.offset), Some(2), "the 8 newest are kept");
    assert_eq!(got.len(), 8);

    let second = runtime.block_on(async { restart(first, &config, &kept) });
    let offset = runtime
        .block_on(second.publish_to_log(&op(), "news", "p", bodies(10, 11)))
        .expect("published");
    assert_eq!(offset, 10, "offsets go on where they were");
    runtime.block_on(async {
        let mut all = second.follow_log(&op(), "news", Some(0), None).await.expect("follow");
        let bodies: Vec<String> = all.next().await.into_iter().map(|m| m.body).collect();
        assert_eq!(bodies, ["m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10"]);
        let mut group =
            second.follow_log(&op(), "news", None, Some("g".into())).await.expect("follow");
        let first_again = group.next().await.first().and_then(|m| m.offset);
        assert_eq!(first_again, Some(5), "the group resumes after 2, 3 and 4, acknowledged");
    });
}

/// The mesh peer lists a worker received.
fn mesh_lists(stream: &mut CommandStream) -> Vec<MeshPeers> {
    commands(stream)
        .into_iter()
        .filter_map(|c| match c {
            Command::MeshPeers(peers) => Some(peers),
            _ => None,
        })
        .collect()
}

fn on_mesh(id: &str, protocol: u32) -> Registration {
    Registration {
        mesh: Some(MeshAddress { peer_id: format!("peer-{id}"), addrs: vec![] }),
        protocol,
        ..registration(id, 1, 1, &[])
    }
}

/// A worker joining the mesh gets the whole list; the workers already on it get only the
/// change (one entry, not the whole list again: a thousand joins would otherwise send a
/// million entries to each), except a worker of a protocol before changes, which gets the
/// whole list as before. A leave is a change too.
#[test]
fn mesh_workers_get_the_whole_list_once_and_then_only_changes() {
    let cluster = Cluster::new(&config(0)).expect("cluster");
    let (_, mut old, _) = cluster.worker_joined(on_mesh("old", 1), String::new());
    let (_, mut w1, _) = cluster.worker_joined(on_mesh("w1", MESH_CHANGES_PROTOCOL), String::new());
    let ids = |peers: &[MeshPeer]| peers.iter().map(|p| p.worker_id.clone()).collect::<Vec<_>>();
    assert_eq!(whole_list(mesh_lists(&mut w1)), ["old", "w1"]);
    let _ = mesh_lists(&mut old);

    let (c2, mut w2, _) =
        cluster.worker_joined(on_mesh("w2", MESH_CHANGES_PROTOCOL), String::new());
    assert_eq!(whole_list(mesh_lists(&mut w2)), ["old", "w1", "w2"]);
    match mesh_lists(&mut w1).as_slice() {
        [MeshPeers::Changes { joined, left }] => {
            assert_eq!(ids(joined), ["w2"]);
            assert!(left.is_empty());
        }
        other => panic!("w1 got {other:?}"),
    }
    assert_eq!(whole_list(mesh_lists(&mut old)), ["old", "w1", "w2"]);

    // A worker off the mesh is nobody's business on it.
    let (_, mut off, _) = cluster.worker_joined(registration("off", 1, 1, &[]), String::new());
    assert!(mesh_lists(&mut off).is_empty() && mesh_lists(&mut w1).is_empty());

    cluster.worker_lost("w2", c2, "gone");
    cluster.end_mesh_grace(Instant::now() + Duration::from_secs(60), Duration::from_secs(3));
    assert_eq!(left_of(mesh_lists(&mut w1)), ["w2"]);
    assert_eq!(whole_list(mesh_lists(&mut old)), ["old", "w1"]);
}

/// The worker ids of the one whole list received, sorted.
fn whole_list(lists: Vec<MeshPeers>) -> Vec<String> {
    match lists.as_slice() {
        [MeshPeers::All(peers)] => {
            let mut ids: Vec<String> = peers.iter().map(|p| p.worker_id.clone()).collect();
            ids.sort();
            ids
        }
        other => panic!("expected the whole list, got {other:?}"),
    }
}

/// The workers gone in the one change received.
fn left_of(lists: Vec<MeshPeers>) -> Vec<String> {
    match lists.as_slice() {
        [MeshPeers::Changes { joined, left }] if joined.is_empty() => left.clone(),
        other => panic!("expected one leave, got {other:?}"),
    }
}

/// A mesh worker whose stream broke stays on the others' peer lists for the worker
/// timeout: back at the same address within it, only it hears of the mesh (the others'
/// connections to it were never dropped, so none is dialed again); not back, it is
/// announced gone once the timeout passes. A worker that drained, or was silent for the
/// whole timeout, leaves at once.
#[test]
fn a_lost_mesh_worker_keeps_its_place_for_the_worker_timeout() {
    let cluster = Cluster::new(&config(0)).expect("cluster");
    let p = MESH_CHANGES_PROTOCOL;
    let timeout = Duration::from_secs(3);
    let (_, mut w1, _) = cluster.worker_joined(on_mesh("w1", p), String::new());
    let (c2, mut w2, _) = cluster.worker_joined(on_mesh("w2", p), String::new());
    let _ = (mesh_lists(&mut w1), mesh_lists(&mut w2));

    cluster.worker_lost("w2", c2, "the stream broke");
    assert!(mesh_lists(&mut w1).is_empty(), "w1 was told at once");
    // A worker joining meanwhile finds w2 on the mesh.
    let (c3, mut w3, _) = cluster.worker_joined(on_mesh("w3", p), String::new());
    assert_eq!(whole_list(mesh_lists(&mut w3)), ["w1", "w2", "w3"]);
    let _ = mesh_lists(&mut w1);
    let (c2, mut w2, _) = cluster.worker_joined(on_mesh("w2", p), String::new());
    assert_eq!(whole_list(mesh_lists(&mut w2)), ["w1", "w2", "w3"]);
    assert!(mesh_lists(&mut w1).is_empty() && mesh_lists(&mut w3).is_empty(), "others told");

    // Lost again and not back: gone once the timeout has passed, not before.
    let lost = Instant::now();
    cluster.worker_lost("w2", c2, "the stream broke");
    cluster.end_mesh_grace(lost + timeout - Duration::from_millis(100), timeout);
    assert!(mesh_lists(&mut w1).is_empty(), "w1 told before the timeout");
    cluster.end_mesh_grace(lost + timeout + Duration::from_millis(100), timeout);
    assert_eq!(left_of(mesh_lists(&mut w1)), ["w2"]);
    assert_eq!(left_of(mesh_lists(&mut w3)), ["w2"]);

    // Back as a new process (another peer id) after it: everyone hears.
    let mut again = on_mesh("w2", p);
    again.mesh = Some(MeshAddress { peer_id: "peer-w2-new".into(), addrs: vec![] });
    let (c2, mut w2, _) = cluster.worker_joined(again, String::new());
    assert_eq!(whole_list(mesh_lists(&mut w2)), ["w1", "w2", "w3"]);
    assert!(
        matches!(mesh_lists(&mut w1).as_slice(), [MeshPeers::Changes { joined, .. }] if joined.len() == 1)
    );
    let _ = mesh_lists(&mut w3);

    // Drained, or silent past the timeout: gone at once.
    cluster.worker_draining("w3", c3, "stopping");
    cluster.worker_lost("w3", c3, "the stream ended");
    assert_eq!(left_of(mesh_lists(&mut w1)), ["w3"]);
    let _ = mesh_lists(&mut w2);
    cluster.remove_worker("w2", c2, "no heartbeat", true);
    assert_eq!(left_of(mesh_lists(&mut w1)), ["w2"]);
}

/// The timeline: an attempt per bar on its worker's row, a lost attempt marked retried and
/// followed by its retry; past the bars a page can draw, a density per row; another
/// tenant's tasks are not there. The call graph of a task without calls is the task alone.
#[test]
fn the_timeline_draws_attempts_their_retries_and_a_density_past_its_bars() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    let (c1, _rx1, _) = cluster.worker_joined(registration("w1", 1, 1, &[]), String::new());
    let t = task(&cluster, "one");
    cluster.worker_lost("w1", c1, "gone");
    let (c2, _rx2, _) = cluster.worker_joined(registration("w2", 2, 2, &[]), String::new());
    let running = task(&cluster, "two");
    let done = EventKind::Completed { usage: Default::default() };
    let at = now_us();
    let ended = TaskEvent { task_id: t.clone(), seq: 1, attempt: 2, timestamp_us: at, kind: done };
    cluster.worker_events("w2", c2, vec![ended]);
    assert_eq!(where_is(&cluster, &t).0, TaskState::Completed);

    let query = |max_bars: usize, rows: TimelineRows| TimelineQuery {
        since_us: at - 60_000_000,
        until_us: at + 1_000_000,
        rows,
        agent: None,
        max_bars,
        max_rows: 10,
    };
    let timeline = cluster.timeline(&op(), &query(100, TimelineRows::Workers));
    let mut bars: Vec<_> = timeline
        .bars
        .iter()
        .map(|b| (b.task_id.clone(), b.worker.as_str(), b.attempt, b.end))
        .collect();
    // Bars come in the order they started: two may start in the same microsecond.
    bars.sort_by_key(|b| (b.0 != t, b.2));
    assert_eq!(
        bars,
        [
            (t.clone(), "w1", 1, AttemptEnd::Retried),
            (t.clone(), "w2", 2, AttemptEnd::Ended(TaskState::Completed)),
            (running.clone(), "w2", 1, AttemptEnd::Running(TaskState::Scheduled)),
        ]
    );
    let end_of = |id: &TaskId, attempt: u32| {
        timeline.bars.iter().find(|b| b.task_id == *id && b.attempt == attempt).map(|b| b.end_us)
    };
    let finished = cluster.state.lock().tasks.get(t.as_str()).map(|t| t.finished_at_us);
    assert_eq!((end_of(&t, 2), end_of(&running, 1)), (finished, Some(0)));
    let rows: Vec<_> = timeline.rows.iter().map(|r| (r.key.as_str(), r.attempts)).collect();
    assert_eq!((rows, timeline.attempts, timeline.dense), (vec![("w1", 1), ("w2", 2)], 3, false));

    let dense = cluster.timeline(&op(), &query(2, TimelineRows::Agents));
    assert!(dense.dense && dense.bars.is_empty());
    let density = dense.rows[0].density.as_ref().expect("a density");
    assert_eq!((dense.rows[0].key.as_str(), density.failed.iter().sum::<u32>()), ("a", 1));
    // The running task runs to the window's end: the last slice counts it.
    assert!(density.ran[Timeline::BUCKETS - 1] >= 1 && density.ran.len() == Timeline::BUCKETS);

    let stranger = Principal::new("s", "elsewhere", crate::auth::Role::User);
    assert!(cluster.timeline(&stranger, &query(100, TimelineRows::Workers)).rows.is_empty());
    let graph = cluster.call_graph(&op(), t.as_str()).expect("graph");
    assert_eq!((graph.root, graph.tasks.len(), graph.calls.len()), (t.clone(), 1, 0));
    assert!(cluster.call_graph(&stranger, t.as_str()).is_err());
}

/// The inspector's workers at scale: a search's words all match (a label exactly, a host, a
/// model, or a part of anything), the summary groups every match by host, label or model
/// (a model's group sums that model's figures only), the page is cut from the sorted
/// matches, and the busiest come first when asked.
#[test]
fn the_roster_searches_groups_sorts_and_pages_the_workers() {
    let cluster = Cluster::new(&config(1)).expect("cluster");
    for i in 1..=12u32 {
        let mut r = registration(&format!("w{i}"), 2, u64::from(i), &[]);
        r.hostname = format!("rack{}.example", i % 3);
        r.labels.insert("zone".into(), if i <= 8 { "a".into() } else { "b".into() });
        if i == 5 {
            r.labels.insert("gpu".into(), "H100".into());
        }
        let (connection, _rx, _) = cluster.worker_joined(r, String::new());
        let model = |id: &str, tokens_per_s: f64| fleet_proto::LoadedModel {
            id: id.into(),
            tokens_per_s,
            generated_tokens: 100,
            ..Default::default()
        };
        let models = match i {
            3 => vec![model("small", 50.0)],
            7 => vec![model("small", 10.0), model("large", 90.0)],
            _ => Vec::new(),
        };
        let beat = Heartbeat {
            models_loaded: models.iter().map(|m| m.id.clone()).collect(),
            models,
            ..Default::default()
        };
        cluster.heartbeat(&format!("w{i}"), connection, beat);
    }
    let ask = |search: &str, groups: WorkerGroups, order: WorkerOrder, offset: usize| {
        cluster.roster(&WorkerQuery {
            search: crate::search::Words::parse(search).expect("search"),
            groups,
            order,
            offset,
            limit: 5,
            max_groups: 10,
        })
    };
    let ids = |r: &Roster| -> Vec<String> {
        r.workers.iter().map(|w| w.registration.worker_id.clone()).collect()
    };

    let all = ask("", WorkerGroups::Host, WorkerOrder::Name, 0);
    assert_eq!((all.total, all.matching), (12, 12));
    assert_eq!(ids(&all), ["w1", "w2", "w3", "w4", "w5"]);
    let next = ask("", WorkerGroups::Host, WorkerOrder::Name, 10);
    assert_eq!(ids(&next), ["w11", "w12"]);
    let hosts: Vec<_> = all
        .groups
        .iter()
        .map(|g| (g.key.as_str(), g.search.as_str(), g.workers, g.slots))
        .collect();
    assert_eq!(
        hosts,
        [
            ("rack0.example", "host:rack0.example", 4, 8),
            ("rack1.example", "host:rack1.example", 4, 8),
            ("rack2.example", "host:rack2.example", 4, 8),
        ]
    );

    // Words: a label exactly, a host, a part of a host, and all of them at once.
    assert_eq!(ask("zone=b", WorkerGroups::Host, WorkerOrder::Name, 0).matching, 4);
    assert_eq!(ask("zone=B", WorkerGroups::Host, WorkerOrder::Name, 0).matching, 0);
    assert_eq!(ask("host:RACK1.example", WorkerGroups::Host, WorkerOrder::Name, 0).matching, 4);
    let both = ask("RACK2 zone=a", WorkerGroups::Label, WorkerOrder::Name, 0);
    assert_eq!(ids(&both), ["w2", "w5", "w8"]);
    let labels: Vec<_> = both.groups.iter().map(|g| (g.key.as_str(), g.workers)).collect();
    assert_eq!(labels, [("zone=a", 3), ("gpu=H100", 1)]);
    assert_eq!(ids(&ask("h100", WorkerGroups::Host, WorkerOrder::Name, 0)), ["w5"]);
    assert_eq!(ids(&ask("model:large", WorkerGroups::Host, WorkerOrder::Name, 0)), ["w7"]);
    assert_eq!(ids(&ask("SMALL", WorkerGroups::Host, WorkerOrder::Name, 0)), ["w3", "w7"]);

    // By model: each model's own figures; the workers without one in a group of their own.
    let models = ask("", WorkerGroups::Model, WorkerOrder::Busiest, 0);
    let figures: Vec<_> =
        models.groups.iter().map(|g| (g.key.as_str(), g.workers, g.tokens_per_s)).collect();
    assert_eq!(figures, [("", 10, 0.0), ("small", 2, 60.0), ("large", 1, 90.0)]);
    assert_eq!(models.groups[0].search, "");
    // The busiest: w7 (100 tokens/s) and w3 (50), then the quiet ones by name.
    assert_eq!(ids(&models), ["w7", "w3", "w1", "w2", "w4"]);
}

/// Workers hear a longer heartbeat interval with their next beat once the cluster outgrows
/// the rate, and a shorter one once it has shrunk; a worker of an older protocol, which
/// would not understand, keeps the one its welcome named.
#[test]
fn the_heartbeat_interval_follows_the_cluster_size() {
    let mut config = config(0);
    // 4 beats a second in all: 1 worker 500 ms (the floor), 3 workers 800 ms.
    config.max_heartbeats_per_second = 4;
    let cluster = Cluster::new(&config).expect("cluster");
    let joined = |id: &str, protocol: u32| {
        let registration = Registration { protocol, ..registration(id, 1, 1, &[]) };
        cluster.worker_joined(registration, String::new())
    };
    let told = |stream: &mut CommandStream| {
        let every = commands(stream).into_iter().filter_map(|c| match c {
            Command::HeartbeatEvery(every) => Some(every.as_millis()),
            _ => None,
        });
        every.collect::<Vec<_>>()
    };
    let beat = |id: &str, connection| cluster.heartbeat(id, connection, Heartbeat::default());

    let (c1, mut w1, _) = joined("w1", fleet_proto::WORKER_PROTOCOL);
    let (c2, mut old, _) = joined("old", fleet_proto::HEARTBEAT_EVERY_PROTOCOL - 1);
    assert_eq!(cluster.heartbeat_interval_of("w1"), Duration::from_millis(500));
    let (c3, _w3, _) = joined("w3", fleet_proto::WORKER_PROTOCOL);
    assert_eq!(cluster.heartbeat_interval_of("w3"), Duration::from_millis(800));
    assert_eq!(cluster.heartbeat_interval(), Duration::from_millis(800));

    beat("w1", c1);
    beat("old", c2);
    assert_eq!(told(&mut w1), [800]);
    assert!(told(&mut old).is_empty(), "protocol 2 knows no new interval");
    beat("w1", c1);
    assert!(told(&mut w1).is_empty(), "told once");

    // A third smaller (the unit tests of `heartbeats` show a smaller change told nothing).
    cluster.worker_lost("w3", c3, "gone");
    beat("w1", c1);
    assert_eq!(told(&mut w1), [500]);
    cluster.worker_lost("old", c2, "gone");
    beat("w1", c1);
    assert!(told(&mut w1).is_empty());
}
