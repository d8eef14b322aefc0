//! The tasks waiting for a worker: one first-in-first-out line per tenant, the tenants
//! served in turns (the drain takes the tenant with the fewest tasks running first, then
//! the one served longest ago). A tenant that queues a million tasks delays another
//! tenant's next task by one turn, not by a million tasks; one held back by its running
//! quota or by agents at their concurrency is passed over without reading its line. Within
//! a tenant, tasks go in the order they were accepted, retries first (they were accepted
//! before the rest).
//!
//! Tasks of an actor whose key another task holds (see `crate::actor_state`) wait parked
//! beside the lines, in order per key, and go back to the front of their tenant's line one
//! at a time as the key is let go: a swarm of one key's tasks costs the drain nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use fleet_proto::TaskId;

#[derive(Debug, Default)]
pub struct TaskQueue {
    lines: HashMap<Arc<str>, VecDeque<TaskId>>,
    /// When each tenant last had a task placed, on `clock` (one entry per tenant that ever
    /// had one: tenants are the configuration's, few).
    served_at: HashMap<Arc<str>, u64>,
    clock: u64,
    /// Tasks waiting for a key (`conversations::Key::stored`), in order, with their tenant.
    parked: HashMap<String, VecDeque<(Arc<str>, TaskId)>>,
    /// The key each parked task waits for.
    parked_for: HashMap<TaskId, String>,
    /// Queued tasks, in the lines and parked.
    len: usize,
}

impl TaskQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Queues a task behind its tenant's others.
    pub fn push_back(&mut self, tenant: &Arc<str>, id: TaskId) {
        self.line(tenant).push_back(id);
        self.len += 1;
    }

    /// Queues a task before its tenant's others (a retry).
    pub fn push_front(&mut self, tenant: &Arc<str>, id: TaskId) {
        self.line(tenant).push_front(id);
        self.len += 1;
    }

    fn line(&mut self, tenant: &Arc<str>) -> &mut VecDeque<TaskId> {
        self.lines.entry(tenant.clone()).or_default()
    }

    /// Parks a task taken out of its tenant's line (`take`) until `key` is let go.
    pub fn park(&mut self, key: String, tenant: &Arc<str>, id: TaskId) {
        self.parked_for.insert(id.clone(), key.clone());
        self.parked.entry(key).or_default().push_back((tenant.clone(), id));
        self.len += 1;
    }

    /// Puts the first task parked for `key` at the front of its tenant's line; returns it.
    pub fn wake(&mut self, key: &str) -> Option<TaskId> {
        let waiting = self.parked.get_mut(key)?;
        let (tenant, id) = waiting.pop_front()?;
        if waiting.is_empty() {
            self.parked.remove(key);
        }
        self.parked_for.remove(&id);
        self.line(&tenant).push_front(id.clone());
        Some(id)
    }

    /// How many tasks are parked.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.parked_for.len()
    }

    /// Takes a task out wherever it is in its tenant's line, or parked; false when it was
    /// not queued.
    pub fn remove(&mut self, tenant: &str, id: &TaskId) -> bool {
        if let Some(key) = self.parked_for.remove(id) {
            if let Some(waiting) = self.parked.get_mut(&key) {
                waiting.retain(|(_, q)| q != id);
                if waiting.is_empty() {
                    self.parked.remove(&key);
                }
            }
            self.len -= 1;
            return true;
        }
        let Some(line) = self.lines.get_mut(tenant) else { return false };
        let Some(at) = line.iter().position(|q| q == id) else { return false };
        line.remove(at);
        self.len -= 1;
        self.tidy(tenant);
        true
    }

    /// The task at `index` of `tenant`'s line.
    pub fn get(&self, tenant: &str, index: usize) -> Option<&TaskId> {
        self.lines.get(tenant)?.get(index)
    }

    /// Takes the task at `index` of `tenant`'s line out.
    pub fn take(&mut self, tenant: &str, index: usize) -> Option<TaskId> {
        let id = self.lines.get_mut(tenant)?.remove(index)?;
        self.len -= 1;
        self.tidy(tenant);
        Some(id)
    }

    /// The tenants with queued tasks, the one served longest ago (or never) first.
    pub fn tenants(&self) -> Vec<Arc<str>> {
        let mut tenants: Vec<Arc<str>> = self.lines.keys().cloned().collect();
        tenants.sort_by_key(|t| (self.served_at.get(t).copied().unwrap_or(0), t.clone()));
        tenants
    }

    /// A task of `tenant` was placed (from the queue or at once): its next turn comes after
    /// the other tenants'.
    pub fn served(&mut self, tenant: &Arc<str>) {
        self.clock += 1;
        match self.served_at.get_mut(&**tenant) {
            Some(at) => *at = self.clock,
            None => drop(self.served_at.insert(tenant.clone(), self.clock)),
        }
    }

    /// Every queued task, parked ones too (in no particular order across tenants).
    pub fn iter(&self) -> impl Iterator<Item = &TaskId> {
        self.lines.values().flatten().chain(self.parked_for.keys())
    }

    /// A tenant whose line is empty leaves the turns.
    fn tidy(&mut self, tenant: &str) {
        if self.lines.get(tenant).is_some_and(VecDeque::is_empty) {
            self.lines.remove(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TaskId {
        TaskId::new(s.to_owned())
    }

    #[test]
    fn lines_per_tenant_in_turns_and_retries_first() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = TaskQueue::default();
        for i in 0..3 {
            q.push_back(&a, id(&format!("a{i}")));
        }
        q.push_back(&b, id("b0"));
        q.push_front(&a, id("a-retry"));
        assert_eq!(q.len(), 5);
        assert_eq!(q.tenants(), [a.clone(), b.clone()]);
        assert_eq!(q.get("a", 0), Some(&id("a-retry")));
        assert_eq!(q.take("a", 0), Some(id("a-retry")));
        q.served(&a);
        assert_eq!(q.tenants(), [b.clone(), a.clone()], "a served: b's turn");
        assert!(q.remove("b", &id("b0")));
        assert_eq!(q.tenants(), std::slice::from_ref(&a), "an empty line leaves the turns");
        assert!(!q.remove("b", &id("b0")));
        assert!(q.remove("a", &id("a1")));
        let left: Vec<&TaskId> = q.iter().collect();
        assert_eq!(left, [&id("a0"), &id("a2")]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn parked_tasks_wake_one_at_a_time_in_order_at_the_front() {
        let a: Arc<str> = "a".into();
        let mut q = TaskQueue::default();
        for i in 0..3 {
            q.push_back(&a, id(&format!("k{i}")));
        }
        q.push_back(&a, id("other"));
        for _ in 0..3 {
            let parked = q.take("a", 0).expect("queued");
            q.park("key".into(), &a, parked);
        }
        assert_eq!((q.len(), q.parked()), (4, 3));
        assert_eq!(q.get("a", 0), Some(&id("other")));
        assert!(q.remove("a", &id("k1")), "a parked task canceled");
        assert_eq!(q.wake("key"), Some(id("k0")));
        assert_eq!(q.get("a", 0), Some(&id("k0")), "woken to the front");
        assert_eq!(q.wake("key"), Some(id("k2")));
        assert_eq!(q.wake("key"), None);
        assert_eq!((q.len(), q.parked()), (3, 0));
    }
}
