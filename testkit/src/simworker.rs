//! Simulated workers, so one machine can put thousands of workers on one real head.
//!
//! One process opens a `Join` stream per simulated worker (each on its own connection, as
//! separate machines would) and speaks the worker protocol as `fleet-worker` does:
//! - it registers;
//! - it heartbeats at the interval the head's welcome names, and at any it is told later;
//! - it runs each task it is given as `builtin:echo` does, after a set time, and within
//!   its slots;
//! - it numbers its events and keeps them until the head acknowledges them;
//! - when its stream breaks it rejoins, with the tasks it still runs, and sends the events
//!   the head has not stored.
//!
//! There is no model, actor or mesh behind it: what is measured is the head.
//! [`SimFleet::silence`] makes a worker fall silent with its connection still open (a host
//! behind a partition); [`SimFleet::crash`] closes it (a process killed).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_proto::pb::worker_service_client::WorkerServiceClient;
use fleet_proto::{
    Command, EventKind, Heartbeat, Registration, Resources, TaskEvent, TaskId, Usage, WorkerUpdate,
    pb,
};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// How simulated workers behave.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The head's address, `http://127.0.0.1:PORT`.
    pub head: String,
    pub join_token: Option<String>,
    /// Tasks each worker runs at once.
    pub slots: u32,
    /// How long each task takes before its answer.
    pub task_time: Duration,
    /// Worker ids are `PREFIX-N`.
    pub name_prefix: String,
    /// Connections being opened at once (a burst of thousands of dials only measures the
    /// kernel's accept queue).
    pub joins_in_flight: usize,
    /// Hosts the workers are spread over, as racks of machines would be (0: every worker on
    /// host `simulated`, without labels): worker N is on host `host-(N % hosts)`, labelled
    /// `rack=r(N % hosts % 10)`.
    pub hosts: usize,
}

impl SimOptions {
    pub fn new(head: impl Into<String>) -> Self {
        Self {
            head: head.into(),
            join_token: None,
            slots: 8,
            task_time: Duration::ZERO,
            name_prefix: "sim".into(),
            joins_in_flight: 64,
            hosts: 0,
        }
    }
}

/// What a simulated worker is doing, set from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Live,
    /// Sends nothing and reads nothing; its connection stays open.
    Silent,
    /// Its stream and connection are closed, and it does not come back.
    Gone,
}

/// Counts over all the simulated workers.
#[derive(Debug, Default)]
struct Counters {
    joined: AtomicU64,
    rejoins: AtomicU64,
    tasks_started: AtomicU64,
    tasks_finished: AtomicU64,
    tasks_canceled: AtomicU64,
    heartbeats: AtomicU64,
    intervals_told: AtomicU64,
    over_slots: AtomicU64,
    joined_changed: Notify,
}

/// A snapshot of [`SimFleet`]'s counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounts {
    /// Workers that have been welcomed at least once.
    pub joined: u64,
    pub rejoins: u64,
    pub tasks_started: u64,
    pub tasks_finished: u64,
    pub tasks_canceled: u64,
    pub heartbeats: u64,
    /// New heartbeat intervals the head told workers after their welcomes.
    pub intervals_told: u64,
    /// Tasks the head sent to a worker whose slots were all taken (a head bug if not 0).
    pub over_slots: u64,
}

struct SimWorker {
    id: String,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

/// Simulated workers joined to one head.
pub struct SimFleet {
    workers: Vec<SimWorker>,
    counters: Arc<Counters>,
}

impl SimFleet {
    /// Starts `n` simulated workers and waits until the head has welcomed them all (or
    /// `timeout` passes); returns the fleet and how long joining took.
    pub async fn join(
        options: SimOptions,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<(Self, Duration)> {
        let counters = Arc::new(Counters::default());
        let dials = Arc::new(Semaphore::new(options.joins_in_flight.max(1)));
        let options = Arc::new(options);
        let started = Instant::now();
        let workers = (0..n)
            .map(|i| {
                let id = format!("{}-{i}", options.name_prefix);
                let (mode, mode_rx) = watch::channel(Mode::Live);
                let worker = Worker::new(id.clone(), i, options.clone(), counters.clone());
                let task = tokio::spawn(worker.run(mode_rx, dials.clone()));
                SimWorker { id, mode, task }
            })
            .collect();
        let fleet = Self { workers, counters };
        fleet.wait_joined(n as u64, timeout).await?;
        Ok((fleet, started.elapsed()))
    }

    async fn wait_joined(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.counters.joined_changed.notified();
            let joined = self.counters.joined.load(Ordering::Relaxed);
            if joined >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!("{joined} of {n} simulated workers joined within {timeout:?}");
            }
        }
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn worker_id(&self, i: usize) -> &str {
        &self.workers[i].id
    }

    pub fn counts(&self) -> SimCounts {
        let c = &self.counters;
        SimCounts {
            joined: c.joined.load(Ordering::Relaxed),
            rejoins: c.rejoins.load(Ordering::Relaxed),
            tasks_started: c.tasks_started.load(Ordering::Relaxed),
            tasks_finished: c.tasks_finished.load(Ordering::Relaxed),
            tasks_canceled: c.tasks_canceled.load(Ordering::Relaxed),
            heartbeats: c.heartbeats.load(Ordering::Relaxed),
            intervals_told: c.intervals_told.load(Ordering::Relaxed),
            over_slots: c.over_slots.load(Ordering::Relaxed),
        }
    }

    /// Worker `i` stops sending (no heartbeats, no events) and reading, its connection
    /// left open: only the head's timeout can tell it is gone.
    pub fn silence(&self, i: usize) {
        self.workers[i].mode.send_replace(Mode::Silent);
    }

    /// Worker `i` closes its stream and connection at once and does not come back.
    pub fn crash(&self, i: usize) {
        self.workers[i].mode.send_replace(Mode::Gone);
    }

    /// Closes every worker's stream and waits for their tasks to end.
    pub async fn shutdown(mut self) {
        for worker in &self.workers {
            worker.mode.send_replace(Mode::Gone);
        }
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.task.await;
        }
    }
}

impl Drop for SimFleet {
    /// Without a shutdown (a failed test), the workers' connections close at once.
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.task.abort();
        }
    }
}

/// Why a session ended.
enum End {
    /// Told to go (or to stay silent until told to go).
    Stop,
    /// The stream broke: rejoin.
    Broken(String),
}

/// One simulated worker: what outlives its connections.
struct Worker {
    id: String,
    /// Its place in the fleet (its host's, with [`SimOptions::hosts`]).
    index: usize,
    options: Arc<SimOptions>,
    counters: Arc<Counters>,
    incarnation: u64,
    welcomed: bool,
    /// Running tasks and their attempts.
    running: HashMap<TaskId, u32>,
    /// When each running task answers, soonest first.
    due: BinaryHeap<Reverse<(Instant, TaskId)>>,
    inputs: HashMap<TaskId, String>,
    /// Events the head has not acknowledged, numbered, oldest first.
    outbox: VecDeque<TaskEvent>,
    last_seq: u64,
}

impl Worker {
    fn new(id: String, index: usize, options: Arc<SimOptions>, counters: Arc<Counters>) -> Self {
        // Tells this worker apart from one with the same id in an earlier run.
        let incarnation = fleet_proto::now_us().wrapping_mul(31).wrapping_add(index as u64) | 1;
        Self {
            id,
            index,
            options,
            counters,
            incarnation,
            welcomed: false,
            running: HashMap::new(),
            due: BinaryHeap::new(),
            inputs: HashMap::new(),
            outbox: VecDeque::new(),
            last_seq: 0,
        }
    }

    async fn run(mut self, mut mode: watch::Receiver<Mode>, dials: Arc<Semaphore>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session(&mut mode, &dials).await {
                End::Stop => return,
                End::Broken(why) => {
                    log_rejoin(&self.id, &why);
                    let wait = tokio::time::sleep(backoff);
                    tokio::select! {
                        () = wait => {}
                        _ = mode.wait_for(|m| *m == Mode::Gone) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    self.counters.rejoins.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn registration(&self) -> Registration {
        let (hostname, labels) = match self.options.hosts {
            0 => ("simulated".to_owned(), Default::default()),
            hosts => {
                let host = self.index % hosts;
                let rack = [("rack".to_owned(), format!("r{}", host % 10))];
                (format!("host-{host}"), rack.into_iter().collect())
            }
        };
        Registration {
            worker_id: self.id.clone(),
            hostname,
            labels,
            resources: Resources {
                cpus: f64::from(self.options.slots),
                memory_bytes: 1 << 30,
                gpus: 0,
            },
            slots: self.options.slots,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            incarnation: self.incarnation,
            // What it runs, and what it has events of that the head may not have stored
            // (as fleet-worker says at a rejoin).
            running: self
                .running
                .iter()
                .map(|(id, attempt)| (id.clone(), *attempt))
                .chain(self.outbox.iter().map(|e| (e.task_id.clone(), e.attempt)))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            protocol: fleet_proto::WORKER_PROTOCOL,
            ..Default::default()
        }
    }

    async fn session(&mut self, mode: &mut watch::Receiver<Mode>, dials: &Semaphore) -> End {
        let connected = {
            let _dial = dials.acquire().await;
            self.connect().await
        };
        let (up, mut inbound) = match connected {
            Ok(c) => c,
            Err(e) => return End::Broken(format!("{e:#}")),
        };
        let welcome = tokio::select! {
            m = inbound.message() => m,
            _ = mode.wait_for(|m| *m == Mode::Gone) => return End::Stop,
        };
        let (interval, resume_after) = match welcome {
            Ok(Some(pb::HeadMessage { kind: Some(pb::head_message::Kind::Welcome(w)) })) => {
                (Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(10))), w.resume_after)
            }
            Ok(_) => return End::Broken("the head answered without a welcome".into()),
            Err(status) => return End::Broken(status.message().to_owned()),
        };
        if !self.welcomed {
            self.welcomed = true;
            self.counters.joined.fetch_add(1, Ordering::Relaxed);
            self.counters.joined_changed.notify_waiters();
        }
        self.ack(resume_after);
        // What the head has not stored goes up again first.
        if !self.outbox.is_empty() {
            let events: Vec<TaskEvent> = self.outbox.iter().cloned().collect();
            if up.send(WorkerUpdate::Events(events).into()).await.is_err() {
                return End::Broken("the stream to the head closed".into());
            }
        }
        let mut ticker = heartbeat_ticker(interval);
        loop {
            let next_due = self.due.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(pb::HeadMessage { kind: Some(pb::head_message::Kind::Commands(batch)) })) => {
                        let mut events = Vec::new();
                        for command in batch.commands {
                            match Command::try_from(command) {
                                Ok(Command::HeartbeatEvery(every)) => {
                                    self.counters.intervals_told.fetch_add(1, Ordering::Relaxed);
                                    ticker = heartbeat_ticker(every);
                                }
                                Ok(command) => self.handle(command, &mut events),
                                Err(_) => {}
                            }
                        }
                        // Tasks of no duration answer at once: a timer would round them up
                        // to its millisecond.
                        events.extend(self.finish_due());
                        if !self.send(&up, events).await {
                            return End::Broken("the stream to the head closed".into());
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return End::Broken("the head closed the stream".into()),
                    Err(status) => return End::Broken(status.message().to_owned()),
                },
                _ = ticker.tick() => {
                    let beat = Heartbeat {
                        running_tasks: self.running.len() as u32,
                        ..Default::default()
                    };
                    if up.send(WorkerUpdate::Heartbeat(beat).into()).await.is_err() {
                        return End::Broken("the stream to the head closed".into());
                    }
                    self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                () = sleep_until(next_due) => {
                    let events = self.finish_due();
                    if !self.send(&up, events).await {
                        return End::Broken("the stream to the head closed".into());
                    }
                }
                changed = mode.changed() => {
                    if changed.is_err() {
                        // The fleet was dropped without a shutdown.
                        return End::Stop;
                    }
                }
            }
            let now = *mode.borrow_and_update();
            match now {
                Mode::Live => {}
                Mode::Silent => {
                    // Holds the stream and its connection, sends and reads nothing.
                    let _keep = (&up, &inbound);
                    let _ = mode.wait_for(|m| *m == Mode::Gone).await;
                    return End::Stop;
                }
                Mode::Gone => return End::Stop,
            }
        }
    }

    async fn connect(
        &self,
    ) -> anyhow::Result<(mpsc::Sender<pb::WorkerMessage>, tonic::Streaming<pb::HeadMessage>)> {
        let channel = tonic::transport::Endpoint::from_shared(self.options.head.clone())
            .context("the head's address")?
            .connect()
            .await
            .context("connecting to the head")?;
        let mut client = WorkerServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (up, rx) = mpsc::channel::<pb::WorkerMessage>(64);
        up.send(WorkerUpdate::Register(self.registration()).into())
            .await
            .context("the stream to the head closed")?;
        let outbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut request = tonic::Request::new(outbound);
        if let Some(token) = &self.options.join_token {
            let value = fleet_proto::bearer(token).parse().context("the join token")?;
            request.metadata_mut().insert(fleet_proto::TOKEN_METADATA_KEY, value);
        }
        let inbound = client.join(request).await.context("joining")?.into_inner();
        Ok((up, inbound))
    }

    fn handle(&mut self, command: Command, events: &mut Vec<TaskEvent>) {
        match command {
            Command::RunTask(task) => {
                // As fleet-worker does, a task beyond the slots runs too (the head placing
                // it there would be its bug, which the counts then show), and a task sent
                // again runs under its new attempt.
                if self.running.len() >= self.options.slots as usize {
                    self.counters.over_slots.fetch_add(1, Ordering::Relaxed);
                }
                self.counters.tasks_started.fetch_add(1, Ordering::Relaxed);
                self.running.insert(task.task_id.clone(), task.attempt);
                self.inputs.insert(task.task_id.clone(), task.input);
                self.due
                    .push(Reverse((Instant::now() + self.options.task_time, task.task_id.clone())));
                events.push(self.event(&task.task_id, task.attempt, EventKind::Working));
            }
            Command::CancelTask { task_id, reason } => {
                if let Some(attempt) = self.running.remove(&task_id) {
                    self.inputs.remove(&task_id);
                    self.counters.tasks_canceled.fetch_add(1, Ordering::Relaxed);
                    events.push(self.event(&task_id, attempt, EventKind::Canceled { reason }));
                }
            }
            Command::Acked { up_to } => self.ack(up_to),
            _ => {}
        }
    }

    /// The answers of the tasks whose time has come (canceled ones are skipped).
    fn finish_due(&mut self) -> Vec<TaskEvent> {
        let now = Instant::now();
        let mut events = Vec::new();
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, task_id))) = self.due.pop() else { break };
            let Some(attempt) = self.running.remove(&task_id) else { continue };
            let text = self.inputs.remove(&task_id).unwrap_or_default();
            let tokens = text.split_whitespace().count() as u32;
            events.push(self.event(
                &task_id,
                attempt,
                EventKind::TextDelta { text, logprobs: Vec::new() },
            ));
            let usage =
                Usage { prompt_tokens: tokens, completion_tokens: tokens, ..Default::default() };
            events.push(self.event(&task_id, attempt, EventKind::Completed { usage }));
            self.counters.tasks_finished.fetch_add(1, Ordering::Relaxed);
        }
        events
    }

    fn event(&mut self, task_id: &TaskId, attempt: u32, kind: EventKind) -> TaskEvent {
        self.last_seq += 1;
        let event = TaskEvent {
            task_id: task_id.clone(),
            seq: self.last_seq,
            attempt,
            timestamp_us: fleet_proto::now_us(),
            kind,
        };
        self.outbox.push_back(event.clone());
        event
    }

    fn ack(&mut self, up_to: u64) {
        while self.outbox.front().is_some_and(|e| e.seq <= up_to) {
            self.outbox.pop_front();
        }
    }

    async fn send(&self, up: &mpsc::Sender<pb::WorkerMessage>, events: Vec<TaskEvent>) -> bool {
        events.is_empty() || up.send(WorkerUpdate::Events(events).into()).await.is_ok()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Why a simulated worker lost its head, on stderr when `FLEET_SIM_LOG` is set (thousands
/// of workers would otherwise bury a benchmark's output).
fn log_rejoin(id: &str, why: &str) {
    if std::env::var_os("FLEET_SIM_LOG").is_some() {
        eprintln!("simulated worker {id}: {why}; rejoining");
    }
}

/// Heartbeats every `every`, the first a whole interval from now, as `fleet-worker` does.
fn heartbeat_ticker(every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}
