//! The cluster over its store: replaying what the store holds at start (tasks running at
//! a crash wait for their workers as orphans), delivering events once stored, closing.

use super::*;

impl Cluster {
    /// Takes back what the store holds; new work is stored through `journal` from now on.
    pub(super) fn restore(
        &self,
        journal: Journal,
        restored: Restored,
        config: &HeadConfig,
    ) -> Result<()> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let (agents, tasks) = (restored.agents.len(), restored.tasks.len());
        for spec in restored.agents {
            if let Err(e) = state.agents.register(spec) {
                warn!(error = %e, "a stored agent was not restored");
            }
        }
        // The config file says what its agents are now.
        for spec in &config.agents {
            state.agents.register(spec.clone())?;
        }
        self.topic_log.lock().restore(journal.clone(), restored.topics);
        state.tasks.store_in(journal);
        let mut open = Vec::new();
        for task in restored.tasks {
            let id = task.record.id.clone();
            let parent = task.record.parent.clone();
            state.tasks.restore(task);
            if let Some((parent, _)) = parent
                && let Some(parent) = state.tasks.get_mut(parent.as_str())
            {
                parent.children.push(id.clone());
            }
            if let Some(task) = state.tasks.get(id.as_str())
                && !task.state.is_terminal()
            {
                open.push(id);
            }
        }
        let open_count = open.len();
        for id in open {
            let Some(task) = state.tasks.get(id.as_str()) else { continue };
            match task.worker.clone() {
                // Its worker may still run it: it claims it when it rejoins. Its actor's key
                // is still its own.
                Some(worker) => {
                    if let Some(key) = actor_key(state, task) {
                        state.actors.hold(key, &id);
                    }
                    state.orphans.entry(worker).or_default().push(id);
                }
                None => enqueue(state, id),
            }
        }
        if !state.orphans.is_empty() {
            state.orphans_until = Some(Instant::now() + REJOIN_GRACE + config.worker_timeout);
        }
        state.worker_stored.extend(restored.workers.iter().cloned());
        state.worker_seqs.extend(restored.workers);
        state.stored_push = restored.push;
        state.conversations.restore(restored.conversations);
        state.actors.restore(restored.actors);
        info!(agents, tasks, unfinished = open_count, "state restored from the store");
        Ok(())
    }

    /// Dispatches only until `deadline` (moved on by each renewal of the leader lease).
    pub fn lead_until(&self, deadline: Arc<super::LeaseDeadline>) {
        self.state.lock().lease = Some(deadline);
    }

    /// The A2A push configs the store held for retained tasks (handed out once: the A2A
    /// front door takes them at start and delivers for the unfinished tasks again).
    pub fn take_stored_push_configs(&self) -> Vec<(TaskId, fleet_proto::pb::StoredPushConfigs)> {
        std::mem::take(&mut self.state.lock().stored_push)
    }

    /// Stores a task's push configs (all it has now), with its task; nothing without a store.
    /// Returns once everything the head appended to its store so far is stored (at once
    /// without a store): a caller that answers after it promises what it did survives a
    /// restart.
    pub async fn stored_so_far(&self) -> Result<()> {
        let barrier = self.state.lock().tasks.journal().map(crate::store::Journal::stored);
        match barrier {
            Some(stored) => stored.await.map_err(|_| {
                Error::StoreUnavailable("the store's writer stopped before storing it".into())
            }),
            None => Ok(()),
        }
    }

    /// Whether the head keeps what it is given in a store that does not seal secrets (a
    /// shared store without `--secrets-key-file`): then it takes none.
    pub fn keeps_secrets_in_clear(&self) -> bool {
        self.state.lock().tasks.journal().is_some_and(|j| !j.seals())
    }

    pub fn keep_push_configs(&self, task_id: &str, configs: fleet_proto::pb::StoredPushConfigs) {
        let state = self.state.lock();
        if let (Some(journal), Some(task)) = (state.tasks.journal(), state.tasks.get(task_id)) {
            journal.push(task.number, configs);
        }
    }

    /// Stores what is pending and closes the store (the head is stopping), so that another
    /// head may open it; waits up to `timeout`. Blocking. A head past its lease does not
    /// wait: the store refuses its writes now (another head may lead), and a head that
    /// lost its lease to a partition would wait on a store it cannot reach.
    pub fn close_store(&self, timeout: Duration) {
        let (journal, leading) = {
            let state = self.state.lock();
            (state.tasks.journal().cloned(), state.leading())
        };
        if !leading {
            warn!("past the leader lease: not waiting for the store");
            return;
        }
        if let Some(journal) = journal
            && !journal.close(timeout)
        {
            warn!(?timeout, "the store did not close in time");
        }
    }

    /// A commit stored these events: they go to their subscribers, and the tool calls they
    /// announce are made.
    pub(super) fn committed(&self, commit: Commit) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        for (id, seq) in &commit.tasks {
            if let Some(task) = state.tasks.get_mut(id.as_str()) {
                task.stored_up_to(*seq);
            }
        }
        if !state.calls_to_route.is_empty() {
            let mut due = Vec::new();
            let tasks = &state.tasks;
            state.calls_to_route.retain(|(seq, attempt, call)| {
                // Only for the attempt that made it (a retry since makes its own calls), and
                // dropped with its task.
                let Some(task) = tasks.get(call.caller.as_str()) else { return false };
                if task.attempt != *attempt || task.state.is_terminal() {
                    return false;
                }
                let stored = task.durable >= *seq;
                if stored {
                    due.push(call.clone());
                }
                !stored
            });
            for call in due {
                route_call(state, &self.limits, call);
            }
        }
        for (worker, (incarnation, up_to)) in commit.workers {
            super::membership::remember_mark(
                &mut state.worker_stored,
                &worker,
                (incarnation, up_to),
            );
            if let Some(w) = state.workers.get(&worker)
                && w.registration.incarnation == incarnation
            {
                let _ = w.commands.send(Command::Acked { up_to });
            }
        }
    }
}
