//! Which retained tasks each listing filter matches, kept up to date as tasks come, change
//! state and go, so that a page of ListTasks (and its total) reads only what it returns
//! instead of scanning every retained task, or every task of a conversation, under the
//! head's lock. Tenants are facets too: a tenant's listing and its total count only its
//! tasks, and a context id names a conversation within one tenant.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use fleet_proto::TaskState;

/// Maps named by a client's string (tenant, context id, agent), hashed as the task table is.
type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Task numbers (submission order) by agent, by state and by both, for all tasks, for each
/// tenant's and for each context's (by tenant, then context id).
#[derive(Debug, Default)]
pub struct TaskIndex {
    all: Facets,
    by_tenant: ByName<Facets>,
    by_context: ByName<ByName<Facets>>,
}

/// Some tasks' numbers: all of them, by state, by agent and by agent and state.
#[derive(Debug, Default)]
struct Facets {
    all: Numbers,
    by_state: ByState,
    by_agent: ByName<AgentTasks>,
}

#[derive(Debug, Default)]
struct AgentTasks {
    all: Numbers,
    by_state: ByState,
}

/// Task numbers, in order. Most sets the index keeps hold one task (a conversation's
/// tasks in a state, of an agent): one number is kept inline, so that filing a task as it
/// moves from state to state allocates and frees no tree node.
#[derive(Debug)]
enum Numbers {
    One(u64),
    Many(BTreeSet<u64>),
}

/// The sets of numbers by state: at most one entry per state (seven), so looked up by a
/// walk rather than hashed; a state without tasks has no entry.
#[derive(Debug, Default)]
struct ByState(Vec<(TaskState, Numbers)>);

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
        named(&mut self.by_tenant, task.tenant).add(task);
        if !task.context.is_empty() {
            let tenant = named(&mut self.by_context, task.tenant);
            named(tenant, task.context).add(task);
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
    ) -> Matching<'_> {
        let facets = match (tenant, context) {
            (None, None) => Some(&self.all),
            (Some(tenant), None) => self.by_tenant.get(tenant),
            (tenant, Some(context)) => self
                .by_context
                .get(tenant.unwrap_or(crate::auth::DEFAULT_TENANT))
                .and_then(|t| t.get(context)),
        };
        Matching(facets.and_then(|f| f.matching(agent, state)))
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

/// The entry of `name`, made when missing (its key is allocated only then).
fn named<'m, V: Default>(map: &'m mut ByName<V>, name: &str) -> &'m mut V {
    if !map.contains_key(name) {
        map.insert(name.to_owned(), V::default());
    }
    map.get_mut(name).expect("the entry was made above")
}

impl Facets {
    fn add(&mut self, task: Filed<'_>) {
        self.all.insert(task.number);
        self.by_state.insert(task.state, task.number);
        let agent = named(&mut self.by_agent, task.agent);
        agent.all.insert(task.number);
        agent.by_state.insert(task.state, task.number);
    }

    fn moved(&mut self, task: Filed<'_>, to: TaskState) {
        self.by_state.take_out(task.state, task.number);
        self.by_state.insert(to, task.number);
        if let Some(agent) = self.by_agent.get_mut(task.agent) {
            agent.by_state.take_out(task.state, task.number);
            agent.by_state.insert(to, task.number);
        }
    }

    fn remove(&mut self, task: Filed<'_>) {
        self.all.remove(task.number);
        self.by_state.take_out(task.state, task.number);
        if let Some(agent) = self.by_agent.get_mut(task.agent) {
            agent.all.remove(task.number);
            agent.by_state.take_out(task.state, task.number);
            if agent.all.is_empty() {
                self.by_agent.remove(task.agent);
            }
        }
    }

    fn matching(&self, agent: Option<&str>, state: Option<TaskState>) -> Option<&Numbers> {
        match (agent, state) {
            (None, None) => Some(&self.all),
            (None, Some(state)) => self.by_state.get(state),
            (Some(agent), None) => self.by_agent.get(agent).map(|a| &a.all),
            (Some(agent), Some(state)) => {
                self.by_agent.get(agent).and_then(|a| a.by_state.get(state))
            }
        }
    }

    #[cfg(test)]
    fn is_tidy(&self) -> bool {
        self.by_state.is_tidy()
            && self.by_agent.values().all(|a| !a.all.is_empty() && a.by_state.is_tidy())
    }
}

impl ByState {
    fn get(&self, state: TaskState) -> Option<&Numbers> {
        self.0.iter().find(|(s, _)| *s == state).map(|(_, n)| n)
    }

    fn insert(&mut self, state: TaskState, number: u64) {
        match self.0.iter_mut().find(|(s, _)| *s == state) {
            Some((_, numbers)) => numbers.insert(number),
            None => {
                // Room for one state only at first: most sets (a conversation's, an agent's
                // in it) hold one task, in one state at a time.
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.push((state, Numbers::One(number)));
            }
        }
    }

    /// Removes `number` from the set of `state`, and the set once empty (states without
    /// tasks leave no trace).
    fn take_out(&mut self, state: TaskState, number: u64) {
        if let Some(i) = self.0.iter().position(|(s, _)| *s == state)
            && self.0[i].1.remove(number)
        {
            self.0.swap_remove(i);
        }
    }

    /// No empty set, and one set per state at most.
    #[cfg(test)]
    fn is_tidy(&self) -> bool {
        self.0.iter().all(|(_, n)| !n.is_empty())
            && (1..self.0.len()).all(|i| self.0[..i].iter().all(|(s, _)| *s != self.0[i].0))
    }
}

impl Default for Numbers {
    fn default() -> Self {
        Numbers::Many(BTreeSet::new())
    }
}

impl Numbers {
    fn insert(&mut self, number: u64) {
        match self {
            Numbers::Many(set) if set.is_empty() => *self = Numbers::One(number),
            Numbers::Many(set) => {
                set.insert(number);
            }
            Numbers::One(one) if *one != number => {
                *self = Numbers::Many(BTreeSet::from([*one, number]));
            }
            Numbers::One(_) => {}
        }
    }

    /// Removes `number`; whether no number is left. A set down to one number keeps it
    /// inline again, its tree freed.
    fn remove(&mut self, number: u64) -> bool {
        match self {
            Numbers::One(one) if *one == number => {
                *self = Numbers::default();
                true
            }
            Numbers::One(_) => false,
            Numbers::Many(set) => {
                set.remove(&number);
                if set.len() == 1
                    && let Some(&one) = set.first()
                {
                    *self = Numbers::One(one);
                }
                self.is_empty()
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Numbers::Many(set) if set.is_empty())
    }

    fn len(&self) -> usize {
        match self {
            Numbers::One(_) => 1,
            Numbers::Many(set) => set.len(),
        }
    }
}

/// The numbers a listing filter matches (none when the index has no set for it).
#[derive(Debug, Clone, Copy)]
pub struct Matching<'a>(Option<&'a Numbers>);

impl<'a> Matching<'a> {
    pub fn len(&self) -> usize {
        self.0.map_or(0, Numbers::len)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numbers within `range`, in order (and reversible).
    pub fn range(&self, range: (Bound<u64>, Bound<u64>)) -> NumbersIter<'a> {
        match self.0 {
            Some(Numbers::Many(set)) => NumbersIter::Many(set.range(range)),
            Some(Numbers::One(one)) => {
                let within = std::ops::RangeBounds::contains(&range, one);
                NumbersIter::One(within.then_some(*one).into_iter())
            }
            None => NumbersIter::One(None.into_iter()),
        }
    }

    pub fn iter(&self) -> NumbersIter<'a> {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }
}

/// The numbers of a [`Matching`], in order.
pub enum NumbersIter<'a> {
    One(std::option::IntoIter<u64>),
    Many(std::collections::btree_set::Range<'a, u64>),
}

impl Iterator for NumbersIter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match self {
            NumbersIter::One(one) => one.next(),
            NumbersIter::Many(many) => many.next().copied(),
        }
    }
}

impl DoubleEndedIterator for NumbersIter<'_> {
    fn next_back(&mut self) -> Option<u64> {
        match self {
            NumbersIter::One(one) => one.next_back(),
            NumbersIter::Many(many) => many.next_back().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::RangeBounds;

    use super::*;

    fn filed(number: u64, context: &str, state: TaskState) -> Filed<'_> {
        Filed { number, agent: "a", context, tenant: "t", state }
    }

    fn in_context<'i>(
        index: &'i TaskIndex,
        context: &str,
        state: Option<TaskState>,
    ) -> Matching<'i> {
        index.matching(Some("t"), Some(context), Some("a"), state)
    }

    /// A set of one task (kept inline) and a set of many (a tree) give the same numbers for
    /// every range, both ways, as a scan of their tasks; a set down to one again still does.
    #[test]
    fn ranges_over_one_task_or_many_agree_with_a_scan() {
        let mut index = TaskIndex::default();
        index.add(filed(5, "one", TaskState::Queued));
        for n in [2, 4, 6] {
            index.add(filed(n, "many", TaskState::Queued));
        }
        let bounds = |n| [Bound::Unbounded, Bound::Included(n), Bound::Excluded(n)];
        let check = |index: &TaskIndex, context: &str, tasks: &[u64]| {
            // The ranges a listing asks for: from a cursor on, or up to it (newest first).
            let ranges = (0..8)
                .flat_map(bounds)
                .flat_map(|b| [(b, Bound::Unbounded), (Bound::Unbounded, b)]);
            for range in ranges {
                let expected: Vec<u64> =
                    tasks.iter().copied().filter(|n| range.contains(n)).collect();
                let set = in_context(index, context, None);
                assert_eq!(set.range(range).collect::<Vec<_>>(), expected, "{range:?}");
                let back: Vec<u64> = set.range(range).rev().collect();
                assert_eq!(back, expected.iter().rev().copied().collect::<Vec<_>>());
            }
            assert_eq!(in_context(index, context, None).len(), tasks.len());
        };
        check(&index, "one", &[5]);
        check(&index, "many", &[2, 4, 6]);
        // Moved through its states, the one task is filed under its state alone.
        index.moved(filed(5, "one", TaskState::Queued), TaskState::Working);
        assert!(in_context(&index, "one", Some(TaskState::Queued)).is_empty());
        assert_eq!(
            in_context(&index, "one", Some(TaskState::Working)).iter().collect::<Vec<_>>(),
            [5]
        );
        index.remove(filed(2, "many", TaskState::Queued));
        index.remove(filed(6, "many", TaskState::Queued));
        check(&index, "many", &[4]);
        assert!(index.is_tidy());
        index.remove(filed(4, "many", TaskState::Queued));
        index.remove(filed(5, "one", TaskState::Working));
        assert!(in_context(&index, "many", None).is_empty());
        assert_eq!(index.filed(), 0);
        assert!(index.is_tidy());
    }
}
