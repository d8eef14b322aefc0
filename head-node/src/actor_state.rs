//! Actor state: what Python agents with `actor_state` keep in `ctx.state` between tasks, per
//! agent or per conversation (Dapr's virtual actors). The head stores each key's state and
//! hands it with the key's next task, so that any worker runs it; the task stores it again
//! (`StateSaved`, before its `Completed` and on `await ctx.save()`), in the commit of that
//! event. States are records of the head's store, replayed on start and taken over by a
//! standby: a worker lost or a head restarted keeps them.
//!
//! One activation per key at a time, across the cluster: the task that holds a key (the
//! last one placed or woken for it, until it ends) is the only one of the key that runs; the
//! others wait parked beside the queue (`TaskQueue::park`) and are woken one by one, in
//! order, as each holder ends. A retried holder keeps its key: its retry runs before the
//! key's next task.
//!
//! Bounded: per key in bytes ([`MAX_ACTOR_STATE_BYTES`]), per tenant in keys and bytes. A
//! save past a bound is refused (the task fails saying which bound), never evicted: a state
//! is its actor's truth, not a cache.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_proto::{ActorState, AgentSpec, MAX_ACTOR_STATE_BYTES, StoredState, TaskId};

use crate::conversations::Key;

/// Actors whose states one tenant keeps.
const MAX_ACTORS: usize = 100_000;
/// Bytes of state one tenant keeps over all its actors.
const MAX_TENANT_BYTES: usize = 256 << 20;

/// An actor's state as the store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub tenant: String,
    pub agent: String,
    /// Empty for a per-agent actor.
    pub context_id: String,
    /// A JSON object.
    pub state: String,
    pub version: u64,
    pub updated_at_us: u64,
    /// The task that saved it last.
    pub last_task: String,
}

impl Record {
    /// As the API shows it; a listing leaves the state itself out.
    pub fn info(self, with_state: bool) -> fleet_proto::pb::ActorStateInfo {
        fleet_proto::pb::ActorStateInfo {
            bytes: self.state.len() as u64,
            state: if with_state { self.state } else { String::new() },
            agent: self.agent,
            context_id: self.context_id,
            version: self.version,
            updated_at_us: self.updated_at_us,
            last_task: self.last_task,
        }
    }
}

/// A change to store: the state as it is now, or `None` where it was deleted.
pub type Change = (String, Option<Record>);

#[derive(Debug)]
struct Entry {
    state: Arc<str>,
    version: u64,
    updated_at_us: u64,
    last_task: String,
}

/// What one tenant's actors hold.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    actors: usize,
    bytes: usize,
}

fn record(key: &Key, e: &Entry) -> Record {
    Record {
        tenant: key.tenant.to_string(),
        agent: key.agent.clone(),
        context_id: key.context_id.clone(),
        state: e.state.to_string(),
        version: e.version,
        updated_at_us: e.updated_at_us,
        last_task: e.last_task.clone(),
    }
}

/// The key of a task's actor: its agent's (per agent) or its conversation's (per context);
/// none when the agent keeps no state, or a per-context agent's task has no context.
pub fn key_of(spec: &AgentSpec, tenant: &Arc<str>, context_id: &str) -> Option<Key> {
    let context_id = match spec.actor_state {
        ActorState::None => return None,
        ActorState::PerAgent => String::new(),
        ActorState::PerContext if context_id.is_empty() => return None,
        ActorState::PerContext => context_id.to_owned(),
    };
    Some(Key { tenant: tenant.clone(), context_id, agent: spec.name.clone() })
}

/// Every actor's state, and which task holds each key now.
#[derive(Debug, Default)]
pub struct Actors {
    states: HashMap<Key, Entry>,
    held: HashMap<Arc<str>, Held>,
    /// The task that holds each key, and the key each holder holds.
    holders: HashMap<Key, TaskId>,
    holding: HashMap<TaskId, Key>,
}

impl Actors {
    /// The state a task of `key` starts from (`{}` before the first save).
    pub fn state(&self, key: &Key) -> StoredState {
        match self.states.get(key) {
            Some(e) => StoredState { state: e.state.clone(), version: e.version },
            None => StoredState { state: "{}".into(), version: 0 },
        }
    }

    /// Stores `state` (a JSON object) for `key`, saved by task `task_id`; returns the
    /// change to store, or why it was refused (a bound: the task fails with it).
    pub fn save(
        &mut self,
        key: &Key,
        task_id: &str,
        state: Arc<str>,
        now_us: u64,
    ) -> Result<Change, String> {
        if state.len() > MAX_ACTOR_STATE_BYTES {
            return Err(format!(
                "agent {}'s state is {} bytes, more than the {} KiB an actor keeps: keep less in \
                 ctx.state (large data belongs in a database or an artifact)",
                key.agent,
                state.len(),
                MAX_ACTOR_STATE_BYTES >> 10
            ));
        }
        let held = self.held.get(&key.tenant).copied().unwrap_or_default();
        let before = self.states.get(key).map(|e| e.state.len());
        if before.is_none() && held.actors >= MAX_ACTORS {
            return Err(format!(
                "the tenant keeps the states of {MAX_ACTORS} actors, the most it may: delete \
                 the contexts it no longer needs (their states go with them)"
            ));
        }
        let bytes = held.bytes - before.unwrap_or(0) + state.len();
        if bytes > MAX_TENANT_BYTES {
            return Err(format!(
                "the tenant's actors would keep {bytes} bytes of state, more than the {} MiB it \
                 may: keep less in ctx.state, or delete contexts it no longer needs",
                MAX_TENANT_BYTES >> 20
            ));
        }
        let held = self.held.entry(key.tenant.clone()).or_default();
        held.bytes = bytes;
        let version = match self.states.get_mut(key) {
            Some(e) => {
                e.state = state;
                e.version += 1;
                e.updated_at_us = now_us;
                task_id.clone_into(&mut e.last_task);
                e.version
            }
            None => {
                held.actors += 1;
                let entry = Entry {
                    state,
                    version: 1,
                    updated_at_us: now_us,
                    last_task: task_id.to_owned(),
                };
                self.states.insert(key.clone(), entry);
                1
            }
        };
        debug_assert!(version > 0);
        Ok((key.stored(), self.record(key)))
    }

    /// Deletes the states of `agent`'s actor (every agent's when empty) for the
    /// conversation `context_id` of `tenant` (the context is deleted); returns the changes
    /// to store.
    pub fn delete_context(&mut self, tenant: &str, context_id: &str, agent: &str) -> Vec<Change> {
        if context_id.is_empty() {
            return Vec::new();
        }
        let gone: Vec<Key> = self
            .states
            .keys()
            .filter(|k| &*k.tenant == tenant && k.context_id == context_id)
            .filter(|k| agent.is_empty() || k.agent == agent)
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|key| {
                let entry = self.states.remove(&key)?;
                if let Some(held) = self.held.get_mut(&key.tenant) {
                    held.actors -= 1;
                    held.bytes -= entry.state.len();
                }
                Some((key.stored(), None))
            })
            .collect()
    }

    /// The stored state of `key`, if it was ever saved.
    pub fn record(&self, key: &Key) -> Option<Record> {
        self.states.get(key).map(|e| record(key, e))
    }

    /// `tenant`'s stored states (of `agent`, in `context_id`, when not empty), the most
    /// recently saved first, at most `limit`; whether there were more.
    pub fn list(
        &self,
        tenant: &str,
        agent: &str,
        context_id: &str,
        limit: usize,
    ) -> (Vec<Record>, bool) {
        let mut found: Vec<(&Key, &Entry)> = self
            .states
            .iter()
            .filter(|(k, _)| &*k.tenant == tenant)
            .filter(|(k, _)| agent.is_empty() || k.agent == agent)
            .filter(|(k, _)| context_id.is_empty() || k.context_id == context_id)
            .collect();
        found.sort_by_key(|(k, e)| (std::cmp::Reverse(e.updated_at_us), (*k).clone()));
        let more = found.len() > limit;
        found.truncate(limit);
        (found.into_iter().map(|(k, e)| record(k, e)).collect(), more)
    }

    /// Takes the stored states back (a head starting, or taking over).
    pub fn restore(&mut self, records: Vec<Record>) {
        for r in records {
            let key = Key { tenant: r.tenant.into(), context_id: r.context_id, agent: r.agent };
            let held = self.held.entry(key.tenant.clone()).or_default();
            held.actors += 1;
            held.bytes += r.state.len();
            let entry = Entry {
                state: r.state.into(),
                version: r.version,
                updated_at_us: r.updated_at_us,
                last_task: r.last_task,
            };
            if let Some(old) = self.states.insert(key.clone(), entry) {
                let held = self.held.entry(key.tenant).or_default();
                held.actors -= 1;
                held.bytes -= old.state.len();
            }
        }
    }

    /// The task holding `key` (it may have ended: the caller checks).
    pub fn holder(&self, key: &Key) -> Option<&TaskId> {
        self.holders.get(key)
    }

    /// Task `id` holds `key` from now on (placed, or woken to be placed next).
    pub fn hold(&mut self, key: Key, id: &TaskId) {
        if let Some(before) = self.holders.insert(key.clone(), id.clone()) {
            self.holding.remove(&before);
        }
        self.holding.insert(id.clone(), key);
    }

    /// The key task `id` holds.
    pub fn holding(&self, id: &TaskId) -> Option<&Key> {
        self.holding.get(id)
    }

    /// Task `id` ended: the key it held (if it still held one), now free.
    pub fn let_go(&mut self, id: &TaskId) -> Option<Key> {
        let key = self.holding.remove(id)?;
        self.holders.remove(&key);
        Some(key)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, context: &str) -> Key {
        Key { tenant: tenant.into(), context_id: context.into(), agent: "counter".into() }
    }

    #[test]
    fn saves_count_versions_and_bounds_refuse_rather_than_evict() {
        let mut actors = Actors::default();
        let k = key("t", "c1");
        assert_eq!(actors.state(&k), StoredState { state: "{}".into(), version: 0 });
        let (stored, record) = actors.save(&k, "task-1", r#"{"n":1}"#.into(), 5).expect("saved");
        assert_eq!(stored, k.stored());
        assert_eq!(record.map(|r| (r.version, r.last_task)), Some((1, "task-1".into())));
        actors.save(&k, "task-2", r#"{"n":2}"#.into(), 6).expect("saved");
        assert_eq!(actors.state(&k), StoredState { state: r#"{"n":2}"#.into(), version: 2 });
        let big: Arc<str> = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_ACTOR_STATE_BYTES)).into();
        let refused = actors.save(&k, "task-3", big, 7).expect_err("too big");
        assert!(refused.contains("256 KiB"), "{refused}");
        assert_eq!(actors.state(&k).version, 2, "a refused save keeps the state");
        // Deleting the context deletes its state; another tenant's same context stays.
        actors.save(&key("u", "c1"), "task-4", "{}".into(), 8).expect("saved");
        assert!(actors.delete_context("t", "c1", "other").is_empty());
        assert_eq!(actors.delete_context("t", "c1", ""), vec![(k.stored(), None)]);
        assert_eq!(actors.len(), 1);
    }

    #[test]
    fn a_key_is_held_by_one_task_until_it_lets_go() {
        let mut actors = Actors::default();
        let (a, b) = (TaskId::new("a"), TaskId::new("b"));
        let k = key("t", "");
        actors.hold(k.clone(), &a);
        assert_eq!(actors.holder(&k), Some(&a));
        assert_eq!(actors.let_go(&b), None, "b holds nothing");
        actors.hold(k.clone(), &b);
        assert_eq!(actors.let_go(&a), None, "a no longer holds it");
        assert_eq!(actors.let_go(&b), Some(k.clone()));
        assert_eq!(actors.holder(&k), None);
    }
}
