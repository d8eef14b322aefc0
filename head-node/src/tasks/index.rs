//! Which retained tasks each listing filter matches, kept up to date as tasks come, change
//! state and go, so that a page of ListTasks (and its total) reads only what it returns
//! instead of scanning every retained task, or every task of a conversation, under the
//! head's lock. Tenants are facets too: a tenant's listing and its total count only its
//! tasks, and a context id names a conversation within one tenant.

use std::collections::{BTreeSet, HashMap};

use fleet_proto::TaskState;

/// Task numbers (submission order) by agent, by state and by both, for all tasks, for each
/// tenant's and for each context's (by tenant, then context id).
#[derive(Debug, Default)]
pub struct TaskIndex {
    all: Facets,
    by_tenant: HashMap<String, Facets>,
    by_context: HashMap<String, HashMap<String, Facets>>,
}

/// Some tasks' numbers: all of them, by state, by agent and by agent and state.
#[derive(Debug, Default)]
struct Facets {
    all: BTreeSet<u64>,
    by_state: HashMap<TaskState, BTreeSet<u64>>,
    by_agent: HashMap<String, AgentTasks>,
}

#[derive(Debug, Default)]
struct AgentTasks {
    all: BTreeSet<u64>,
    by_state: HashMap<TaskState, BTreeSet<u64>>,
}

/// One retained task, as the index files it.
#[derive(Debug, Clone, Copy)]
pub struct Filed<'a> {
    pub number: u64,
    pub agent: &'a str,
    pub context: &'a str,
    pub tenant: &'a str,
    pub state: TaskState,
}

impl TaskIndex {
    pub fn add(&mut self, task: Filed<'_>) {
        self.all.add(task);
        self.by_tenant.entry(task.tenant.to_owned()).or_default().add(task);
        if !task.context.is_empty() {
            let tenant = self.by_context.entry(task.tenant.to_owned()).or_default();
            tenant.entry(task.context.to_owned()).or_default().add(task);
        }
    }

    /// A filed task is now in state `to`.
    pub fn moved(&mut self, task: Filed<'_>, to: TaskState) {
        if task.state == to {
            return;
        }
        self.all.moved(task, to);
        if let Some(tenant) = self.by_tenant.get_mut(task.tenant) {
            tenant.moved(task, to);
        }
        if let Some(context) =
            self.by_context.get_mut(task.tenant).and_then(|t| t.get_mut(task.context))
        {
            context.moved(task, to);
        }
    }

    pub fn remove(&mut self, task: Filed<'_>) {
        self.all.remove(task);
        if let Some(tenant) = self.by_tenant.get_mut(task.tenant) {
            tenant.remove(task);
            if tenant.all.is_empty() {
                self.by_tenant.remove(task.tenant);
            }
        }
        if let Some(contexts) = self.by_context.get_mut(task.tenant) {
            if let Some(context) = contexts.get_mut(task.context) {
                context.remove(task);
                if context.all.is_empty() {
                    contexts.remove(task.context);
                }
            }
            if contexts.is_empty() {
                self.by_context.remove(task.tenant);
            }
        }
    }

    /// The numbers of the tasks of `tenant`, in `context` (of that tenant, or of the
    /// default tenant when none is named), of `agent`, in `state` (each: any, when none).
    pub fn matching(
        &self,
        tenant: Option<&str>,
        context: Option<&str>,
        agent: Option<&str>,
        state: Option<TaskState>,
    ) -> &BTreeSet<u64> {
        static EMPTY: BTreeSet<u64> = BTreeSet::new();
        let facets = match (tenant, context) {
            (None, None) => Some(&self.all),
            (Some(tenant), None) => self.by_tenant.get(tenant),
            (tenant, Some(context)) => self
                .by_context
                .get(tenant.unwrap_or(crate::auth::DEFAULT_TENANT))
                .and_then(|t| t.get(context)),
        };
        facets.and_then(|f| f.matching(agent, state)).unwrap_or(&EMPTY)
    }

    /// How many tasks the index files (for tests: the table's own count must agree).
    #[cfg(test)]
    pub fn filed(&self) -> usize {
        self.all.all.len()
    }

    /// Whether the index holds nothing for agents, states or contexts without tasks.
    #[cfg(test)]
    pub fn is_tidy(&self) -> bool {
        let tidy = |f: &Facets| !f.all.is_empty() && f.is_tidy();
        self.all.is_tidy()
            && self.by_tenant.values().all(tidy)
            && self.by_context.values().all(|t| !t.is_empty() && t.values().all(tidy))
    }
}

impl Facets {
    fn add(&mut self, task: Filed<'_>) {
        self.all.insert(task.number);
        self.by_state.entry(task.state).or_default().insert(task.number);
        let agent = self.by_agent.entry(task.agent.to_owned()).or_default();
        agent.all.insert(task.number);
        agent.by_state.entry(task.state).or_default().insert(task.number);
    }

    fn moved(&mut self, task: Filed<'_>, to: TaskState) {
        take_out(&mut self.by_state, &task.state, task.number);
        self.by_state.entry(to).or_default().insert(task.number);
        if let Some(agent) = self.by_agent.get_mut(task.agent) {
            take_out(&mut agent.by_state, &task.state, task.number);
            agent.by_state.entry(to).or_default().insert(task.number);
        }
    }

    fn remove(&mut self, task: Filed<'_>) {
        self.all.remove(&task.number);
        take_out(&mut self.by_state, &task.state, task.number);
        if let Some(agent) = self.by_agent.get_mut(task.agent) {
            agent.all.remove(&task.number);
            take_out(&mut agent.by_state, &task.state, task.number);
            if agent.all.is_empty() {
                self.by_agent.remove(task.agent);
            }
        }
    }

    fn matching(&self, agent: Option<&str>, state: Option<TaskState>) -> Option<&BTreeSet<u64>> {
        match (agent, state) {
            (None, None) => Some(&self.all),
            (None, Some(state)) => self.by_state.get(&state),
            (Some(agent), None) => self.by_agent.get(agent).map(|a| &a.all),
            (Some(agent), Some(state)) => {
                self.by_agent.get(agent).and_then(|a| a.by_state.get(&state))
            }
        }
    }

    #[cfg(test)]
    fn is_tidy(&self) -> bool {
        self.by_state.values().all(|s| !s.is_empty())
            && self
                .by_agent
                .values()
                .all(|a| !a.all.is_empty() && a.by_state.values().all(|s| !s.is_empty()))
    }
}

/// Removes `number` from the set under `key`, and the set once empty (agents, states and
/// contexts without tasks leave no trace).
fn take_out<K, Q>(sets: &mut HashMap<K, BTreeSet<u64>>, key: &Q, number: u64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(set) = sets.get_mut(key) {
        set.remove(&number);
        if set.is_empty() {
            sets.remove(key);
        }
    }
}
