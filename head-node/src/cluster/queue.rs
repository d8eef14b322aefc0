//! The tasks waiting for a worker: one first-in-first-out line per tenant, the tenants
//! served in turns (the drain takes the tenant with the fewest tasks running first, then
//! the one served longest ago). A tenant that queues a million tasks delays another
//! tenant's next task by one turn, not by a million tasks; one held back by its running
//! quota or by agents at their concurrency is passed over without reading its line. Within
//! a tenant, tasks go in the order they were accepted, retries first (they were accepted
//! before the rest).

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

    /// Takes a task out wherever it is in its tenant's line; false when it was not queued.
    pub fn remove(&mut self, tenant: &str, id: &TaskId) -> bool {
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

    /// Every queued task (in no particular order across tenants).
    pub fn iter(&self) -> impl Iterator<Item = &TaskId> {
        self.lines.values().flatten()
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
}
