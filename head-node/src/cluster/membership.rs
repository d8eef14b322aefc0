//! Workers coming and going: joins (adopting the tasks a rejoining worker still runs),
//! heartbeats, the events they send (each applied once), losses and the silent-worker sweep.

use super::*;

impl Cluster {
    /// Adds a worker that joined; returns its connection number, its command stream and
    /// the number of the last of its events the head has. The tasks it reports running
    /// that the head still has on it are adopted; the others it is told to cancel.
    pub fn worker_joined(
        &self,
        registration: Registration,
        address: String,
    ) -> (u64, CommandStream, u64) {
        let (tx, rx) = CommandSender::channel();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let connection = state.workers.next_connection();
        let id = registration.worker_id.clone();
        let on_mesh = registration.mesh.is_some();
        let gpus: Vec<&str> = registration.gpus.iter().map(|g| g.name.as_str()).collect();
        let gpus = gpus.join(", ");
        let incarnation = registration.incarnation;
        let reported: HashMap<TaskId, u32> = registration.running.iter().cloned().collect();
        // Whether the process the head gave tasks to under this id is back (the store keeps
        // which across a restart of the head): a task it does not report then never reached
        // it when the head holds nothing of it from there (see `never_reached`). A new
        // process may have lost its tasks by crashing on them: they count as lost attempts.
        let same_process = matches!(
            state.worker_seqs.get(&id),
            Some(&(known, _)) if known == incarnation && incarnation != 0
        );
        let resume_after = match state.worker_seqs.get(&id) {
            // Taken is not yet stored: the worker keeps what a crash could still lose (it
            // is acknowledged once stored; sent again, it is not applied twice).
            Some(_) if same_process && state.tasks.journal().is_some() => {
                match state.worker_stored.get(&id) {
                    Some(&(known, stored)) if known == incarnation => stored,
                    _ => 0,
                }
            }
            Some(&(_, applied)) if same_process => applied,
            _ => {
                remember_worker_seq(state, &id, (incarnation, 0));
                // Stored before any task goes to it (the journal keeps order), so that a
                // head restarted on the store knows this process got them.
                if incarnation != 0
                    && let Some(journal) = state.tasks.journal()
                {
                    journal.worker((id.clone(), (incarnation, 0)));
                }
                0
            }
        };
        let mut entry = WorkerEntry::new(registration, connection, address, tx, Instant::now());
        let workers = state.workers.len() + usize::from(state.workers.get(&id).is_none());
        entry.heartbeat_every = self.limits.heartbeats.interval(workers);
        let saturated = self.limits.heartbeats.saturated(workers);
        if saturated && !state.heartbeats_saturated {
            warn!(
                workers,
                every_ms = entry.heartbeat_every.as_millis(),
                "more workers than --max-heartbeats-per-second allows at a third of the worker \
                 timeout: raise --worker-timeout-ms (or the rate) to keep heartbeats under it"
            );
        }
        state.heartbeats_saturated = saturated;
        let replaced = state.workers.insert(entry);
        let was_on_mesh = replaced.as_ref().is_some_and(|w| w.registration.mesh.is_some());
        // The tasks the head has on this worker: of its previous connection (not noticed
        // gone yet) and those it ran when the head restarted.
        let mut candidates: Vec<TaskId> = state.orphans.remove(&id).unwrap_or_default();
        if let Some(old) = replaced {
            for task in &old.running {
                if let Some(t) = state.tasks.get(task.as_str())
                    && let Ok(agent) = state.agents.get_mut(&t.agent)
                {
                    agent.running = agent.running.saturating_sub(1);
                }
            }
            candidates.extend(old.running);
        }
        let (mut adopted, mut sent_again, mut retried) = (0, 0, Vec::new());
        for task in candidates {
            let still_runs = state
                .tasks
                .get(task.as_str())
                .is_some_and(|t| !t.state.is_terminal() && reported.get(&t.id) == Some(&t.attempt));
            if still_runs {
                adopt(state, &task, &id);
                adopted += 1;
            } else if same_process
                && !reported.contains_key(&task)
                && never_reached(state, &task, &id)
            {
                // Dispatched just before the head crashed (or the connection broke), its
                // `RunTask` went down with it: the attempt never started, so it costs none.
                send_again(state, &task, &id);
                sent_again += 1;
            } else if lost_attempt(state, &task, &id, "the worker rejoined without it") {
                retried.push(task);
            }
        }
        for task in retried.into_iter().rev() {
            enqueue_first(state, task);
        }
        // Dispatched just before a crash, its `Scheduled` not stored: queued again here, but
        // the worker has it. It stays there.
        for (task, attempt) in &reported {
            let queued = state.tasks.get(task.as_str()).is_some_and(|t| {
                t.worker.is_none() && t.state == TaskState::Queued && t.attempt == *attempt
            });
            if queued && dequeue(state, task) {
                adopt(state, task, &id);
                if let Some(t) = state.tasks.get_mut(task.as_str()) {
                    t.push_own(EventKind::Scheduled { worker_id: id.clone() }, now_us());
                }
                // It runs: its actor's key is its own (the others of the key wait for it).
                if let Some(key) = state.tasks.get(task.as_str()).and_then(|t| actor_key(state, t))
                {
                    take_key(state, key, task);
                }
                adopted += 1;
            }
        }
        // What it runs that is no longer its to run (retried elsewhere, canceled, unknown).
        if let Some(worker) = state.workers.get(&id) {
            for (task, attempt) in &reported {
                let current = state.tasks.get(task.as_str()).is_some_and(|t| {
                    t.worker.as_deref() == Some(&id)
                        && t.attempt == *attempt
                        && worker.running.contains(task)
                });
                if !current {
                    let _ = worker.commands.send(Command::CancelTask {
                        task_id: task.clone(),
                        reason: "the head no longer runs this attempt on this worker".into(),
                    });
                }
            }
        }
        info!(worker_id = %id, connection, workers = state.workers.len(), on_mesh, adopted, sent_again, resume_after, gpus, "worker joined");
        // Back within its grace at the same address, the others never saw it go: only it
        // needs the list.
        let kept = state.mesh_grace.take(&id);
        let address = state.workers.get(&id).and_then(|w| w.registration.mesh.as_ref());
        if kept.is_some() && kept.as_ref() == address {
            send_mesh_list(state, &id);
        } else if on_mesh || was_on_mesh || kept.is_some() {
            announce_mesh(state, &id);
        }
        drain_queue(state);
        (connection, rx, resume_after)
    }

    pub fn heartbeat(&self, worker_id: &str, connection: u64, beat: Heartbeat) {
        let mut state = self.state.lock();
        let calls_before = state.workers.get(worker_id).map(|w| w.heartbeat.mesh_calls);
        let calls_now = beat.mesh_calls;
        state.workers.heartbeat(worker_id, connection, beat, Instant::now());
        // The cluster grew or shrank since it was last told its interval.
        let workers = state.workers.len();
        let retell = state.workers.get(worker_id).and_then(|w| {
            let current = w.connection == connection
                && w.registration.protocol >= fleet_proto::HEARTBEAT_EVERY_PROTOCOL;
            current.then(|| self.limits.heartbeats.retell(w.heartbeat_every, workers)).flatten()
        });
        if let Some(every) = retell
            && let Some(w) = state.workers.get_mut(worker_id)
        {
            w.heartbeat_every = every;
            let _ = w.commands.send(Command::HeartbeatEvery(every));
        }
        // Calls from the mesh that ended gave their slots back: queued tasks may go there.
        if calls_before.is_some_and(|before| calls_now < before) {
            placement::drain_queue(&mut state);
        }
    }

    /// The heartbeat interval `worker_id` was told (the configured one if it is unknown).
    pub fn heartbeat_interval_of(&self, worker_id: &str) -> Duration {
        let state = self.state.lock();
        let told = state.workers.get(worker_id).map(|w| w.heartbeat_every);
        told.unwrap_or_else(|| self.limits.heartbeats.interval(0))
    }

    /// The heartbeat interval for the cluster as it is now: what a worker joining is told.
    pub fn heartbeat_interval(&self) -> Duration {
        self.limits.heartbeats.interval(self.state.lock().workers.len())
    }

    /// The worker is stopping: nothing new is placed there (its actors too are placed
    /// elsewhere from now on); it leaves once its tasks have ended.
    pub fn worker_draining(&self, worker_id: &str, connection: u64, reason: &str) {
        let mut state = self.state.lock();
        if let Some(w) = state.workers.get_mut(worker_id)
            && w.connection == connection
        {
            info!(worker_id, reason, tasks = w.running.len(), "worker draining");
            w.draining = true;
        }
    }

    /// Applies a batch of events a worker sent about its tasks.
    pub fn worker_events(&self, worker_id: &str, connection: u64, events: Vec<TaskEvent>) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        // A replaced connection's events: the worker sends again, on its new connection,
        // whatever the head had not applied when it rejoined.
        if state.workers.get(worker_id).is_none_or(|w| w.connection != connection) {
            debug!(
                worker_id,
                connection,
                events = events.len(),
                "events of a replaced connection dropped"
            );
            return;
        }
        state.workers.touch(worker_id, connection, Instant::now());
        state.metrics.worker_events(events.len());
        // Workers on the mesh call agents themselves; their ToolCall events are for the log.
        let calls_direct =
            state.workers.get(worker_id).is_some_and(|w| w.registration.mesh.is_some());
        // Events a worker sends again after a rejoin carry numbers the head has seen.
        let incarnation = state.workers.get(worker_id).map_or(0, |w| w.registration.incarnation);
        let mut applied = match state.worker_seqs.get(worker_id) {
            Some(&(known, applied)) if known == incarnation && incarnation != 0 => Some(applied),
            _ => None,
        };
        let numbered = applied.is_some();
        // The events and the worker's mark after them are stored together: a crash between
        // them would make the worker send again events the store has.
        let journal = state.tasks.journal().cloned();
        let _group = journal.as_ref().filter(|_| numbered).map(|j| j.group());
        let mut freed = false;
        let mut calls = Vec::new();
        for event in events {
            if let Some(applied) = &mut applied
                && event.seq > 0
            {
                if event.seq <= *applied {
                    continue;
                }
                *applied = event.seq;
            }
            let Some(task) = state.tasks.get_mut(event.task_id.as_str()) else {
                debug!(task_id = %event.task_id, worker_id, "event for an unknown task dropped");
                continue;
            };
            let current =
                task.worker.as_deref() == Some(worker_id) && task.attempt == event.attempt;
            if !current {
                debug!(task_id = %event.task_id, worker_id, attempt = event.attempt, "stale event dropped");
                continue;
            }
            // The head's own transitions (a reply to a question comes from a client).
            if matches!(
                event.kind,
                EventKind::Submitted { .. }
                    | EventKind::Scheduled { .. }
                    | EventKind::Retrying { .. }
                    | EventKind::InputReceived { .. }
            ) {
                warn!(task_id = %event.task_id, worker_id, "worker sent a head-only event; dropped");
                continue;
            }
            // Late (the task ended meanwhile: canceled, timed out) or out of order.
            if let Err(refused) = task.state.after(&event.kind) {
                debug!(task_id = %event.task_id, worker_id, %refused, "event refused");
                continue;
            }
            if task.first_event_us == 0 {
                task.first_event_us = now_us();
                traced::first_event(task);
                let after = task.first_event_us.saturating_sub(task.submitted_at_us);
                state.metrics.first_event(&task.tenant, &task.agent, Duration::from_micros(after));
            }
            match &event.kind {
                kind if kind.is_terminal() => {
                    finish(state, &event.task_id, event.kind);
                    freed = true;
                }
                EventKind::StateSaved { state: saved } => {
                    let saved = saved.clone();
                    let key = state.agents.get(&task.agent).ok().and_then(|a| {
                        crate::actor_state::key_of(&a.spec, &task.tenant, &task.context_id)
                    });
                    task.push_own(event.kind, event.timestamp_us);
                    // A task without a key (no context) starts from an empty state each time.
                    let Some(key) = key else { continue };
                    match state.actors.save(&key, event.task_id.as_str(), saved, now_us()) {
                        Ok(change) => {
                            if let Some(journal) = state.tasks.journal() {
                                journal.actors(vec![change]);
                            }
                        }
                        Err(refused) => {
                            // The code stops too: the key's next task may start now.
                            if let Some(w) = state.workers.get(worker_id) {
                                let _ = w.commands.send(Command::CancelTask {
                                    task_id: event.task_id.clone(),
                                    reason: refused.clone(),
                                });
                            }
                            let failed = EventKind::failed(ErrorKind::InvalidRequest, refused);
                            finish(state, &event.task_id, failed);
                            freed = true;
                        }
                    }
                }
                // Hosted tools are the head's to call for workers on the mesh too.
                // A replayed call was made (and answered) by an earlier attempt.
                EventKind::ToolCall { call_id, name, arguments, traceparent, replayed: false }
                    if !calls_direct || state.tools.contains(name) =>
                {
                    let call = ToolCallSeen {
                        caller: event.task_id.clone(),
                        call_id: call_id.clone(),
                        name: name.clone(),
                        arguments: arguments.clone(),
                        traceparent: traceparent.clone(),
                    };
                    let Some(pushed) = task.push_own(event.kind, event.timestamp_us) else {
                        continue;
                    };
                    let seq = pushed.seq;
                    // A hosted function is called once its announcement is on record. An agent
                    // called is a sub-task, stored with the announcement in one commit.
                    if journal.is_some() && state.tools.contains(&call.name) {
                        state.calls_to_route.push((seq, event.attempt, call));
                    } else {
                        calls.push(call);
                    }
                }
                _ => {
                    task.push_own(event.kind, event.timestamp_us);
                }
            }
        }
        if let (true, Some(applied)) = (numbered, applied) {
            let mark = (worker_id.to_owned(), (incarnation, applied));
            remember_worker_seq(state, worker_id, mark.1);
            match state.tasks.journal() {
                // Acknowledged once stored (see `committed`).
                Some(journal) => journal.worker(mark),
                None => {
                    if let Some(w) = state.workers.get(worker_id) {
                        let _ = w.commands.send(Command::Acked { up_to: applied });
                    }
                }
            }
        }
        for call in calls {
            route_call(state, &self.limits, call);
        }
        if freed {
            drain_queue(state);
        }
    }

    /// A worker's stream ended: retry or fail its tasks. Ignored if `connection` is no
    /// longer the worker's current one. On the mesh, it stays on the others' peer lists for
    /// the worker timeout unless it left (see [`mesh_grace`]).
    pub fn worker_lost(&self, worker_id: &str, connection: u64, reason: &str) {
        self.remove_worker(worker_id, connection, reason, false);
    }

    /// Removes a worker; `silent`: it was silent for the whole worker timeout already, so it
    /// leaves the mesh at once.
    pub(super) fn remove_worker(
        &self,
        worker_id: &str,
        connection: u64,
        reason: &str,
        silent: bool,
    ) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if let Some(entry) = state.workers.remove(worker_id, connection) {
            let left = entry.draining;
            if left {
                // Drained: it said so and waited for its tasks (any left are retried).
                info!(worker_id, tasks = entry.running.len(), "worker left");
            } else {
                warn!(worker_id, reason, tasks = entry.running.len(), "worker lost");
            }
            let on_mesh = entry.registration.mesh.clone();
            fail_over(state, entry, reason);
            if let Some(address) = on_mesh {
                if left || silent {
                    announce_mesh(state, worker_id);
                } else {
                    state.mesh_grace.keep(worker_id, address, Instant::now());
                }
                state.topics.worker_lost(&state.workers, worker_id);
            }
            drain_queue(state);
        }
    }

    /// Declares dead every worker silent for longer than `timeout`, and tells the mesh of
    /// those whose stream broke `timeout` ago and who did not come back.
    pub fn sweep_silent_workers(&self, timeout: Duration) {
        let now = Instant::now();
        self.retry_orphans(now);
        let expired = self.state.lock().workers.expired(now, timeout);
        for (id, connection) in expired {
            let reason = format!("no heartbeat for {} ms", timeout.as_millis());
            self.remove_worker(&id, connection, &reason, true);
        }
        self.end_mesh_grace(now, timeout);
    }

    /// Announces gone the mesh workers lost `timeout` before `now` that did not rejoin.
    pub(super) fn end_mesh_grace(&self, now: Instant, timeout: Duration) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        for id in state.mesh_grace.expired(now, timeout) {
            info!(worker_id = %id, "lost mesh worker did not come back: gone from the mesh");
            announce_mesh(state, &id);
        }
    }

    /// Retries the tasks of workers that did not rejoin the restarted head in time.
    pub(super) fn retry_orphans(&self, now: Instant) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if state.orphans_until.is_none_or(|until| now < until) {
            return;
        }
        state.orphans_until = None;
        let mut retried = 0;
        for (worker, tasks) in std::mem::take(&mut state.orphans) {
            for task in tasks {
                if lost_attempt(state, &task, &worker, "it did not rejoin the restarted head") {
                    enqueue(state, task);
                    retried += 1;
                }
            }
        }
        warn!(retried, "tasks of workers that did not come back retried");
        drain_queue(state);
    }
}

/// Remembers a worker's event numbers (bounded: the oldest go when it is full).
fn remember_worker_seq(state: &mut State, worker: &str, mark: (u64, u64)) {
    remember_mark(&mut state.worker_seqs, worker, mark);
}

/// Keeps a worker's mark in `marks`, at most [`MAX_WORKER_SEQS`] workers.
pub(super) fn remember_mark(
    marks: &mut HashMap<String, (u64, u64)>,
    worker: &str,
    mark: (u64, u64),
) {
    if marks.len() >= MAX_WORKER_SEQS && !marks.contains_key(worker) {
        let Some(any) = marks.keys().next().cloned() else { return };
        marks.remove(&any);
    }
    marks.insert(worker.to_owned(), mark);
}
