//! Who called whom: a task's call graph (the task a client submitted, the agents it called
//! as tools and theirs in turn, each call with its timing and result), and per agent the
//! agents that call it.
//!
//! A call is read from the caller's log (its `ToolCall` and `ToolResult` events), so calls
//! over the mesh, which leave no task on the head, are in the graph too; a call the head
//! ran as a sub-task links to that task.

use std::collections::{BTreeMap, VecDeque};

use super::*;

/// Tasks one graph shows at most (a swarm's fan-out beyond it is cut, and says so).
pub const MAX_GRAPH_TASKS: usize = 300;
/// Calls of one task shown at most.
pub const MAX_TASK_CALLS: usize = 200;
/// Caller and callee pairs counted at most (agents come and go by name).
const MAX_CALLER_PAIRS: usize = 10_000;

/// A task in a call graph.
#[derive(Debug, Clone)]
pub struct GraphTask {
    pub task_id: TaskId,
    pub agent: String,
    pub state: TaskState,
    pub worker: String,
    pub attempt: u32,
    pub submitted_us: u64,
    pub finished_us: u64,
    /// Calls between the graph's root and this task.
    pub depth: u32,
}

/// What a call reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callee {
    /// An agent the head ran as this sub-task.
    Task(TaskId),
    /// An agent, reached over the mesh (no task on the head).
    Agent,
    /// A tool (hosted, MCP, the worker's own, a client's).
    Tool,
}

/// One call a task made.
#[derive(Debug, Clone)]
pub struct GraphCall {
    pub caller: TaskId,
    pub call_id: String,
    pub name: String,
    pub callee: Callee,
    pub at_us: u64,
    /// 0 while no result came.
    pub result_us: u64,
    pub is_error: bool,
    /// Repeated from an earlier attempt's record, not made again.
    pub replayed: bool,
}

/// A task's call graph, from the task at its top.
#[derive(Debug, Clone)]
pub struct CallGraph {
    pub root: TaskId,
    /// The root first, then by depth.
    pub tasks: Vec<GraphTask>,
    pub calls: Vec<GraphCall>,
    /// Tasks or calls left out past the bounds.
    pub truncated: bool,
}

/// How often one agent called another, since the head started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCount {
    /// Run by the head as sub-tasks (callers off the mesh).
    pub relayed: u64,
    /// Located for callers on the mesh (each lookup: a caller may reuse what it found).
    pub located: u64,
}

/// Calls between agents by tenant, callee and caller.
#[derive(Debug, Default)]
pub struct CallCounts(BTreeMap<(Arc<str>, String, String), CallCount>);

impl CallCounts {
    /// Counts a call of `callee` by a task of `caller` (a tenant's).
    pub fn count(&mut self, tenant: &Arc<str>, caller: &str, callee: &str, relayed: bool) {
        let key = (tenant.clone(), callee.to_owned(), caller.to_owned());
        if self.0.len() >= MAX_CALLER_PAIRS && !self.0.contains_key(&key) {
            return;
        }
        let count = self.0.entry(key).or_default();
        if relayed {
            count.relayed += 1;
        } else {
            count.located += 1;
        }
    }

    /// Every agent's callers as `who` sees them (by callee, then caller), with their counts
    /// summed over tenants.
    pub fn callers(&self, who: &Principal) -> BTreeMap<String, Vec<(String, CallCount)>> {
        let mut sums: BTreeMap<(&str, &str), CallCount> = BTreeMap::new();
        for ((tenant, to, from), count) in &self.0 {
            if who.sees(tenant) {
                let sum = sums.entry((to, from)).or_default();
                sum.relayed += count.relayed;
                sum.located += count.located;
            }
        }
        let mut callers: BTreeMap<String, Vec<(String, CallCount)>> = BTreeMap::new();
        for ((to, from), count) in sums {
            callers.entry(to.to_owned()).or_default().push((from.to_owned(), count));
        }
        callers
    }
}

/// The calls in `task`'s log (its latest attempt's and those replayed into it), in order.
fn calls_of(state: &State, task: &TaskEntry, truncated: &mut bool) -> Vec<GraphCall> {
    let mut calls: Vec<GraphCall> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for event in task.stored_events_from(1) {
        match &event.kind {
            EventKind::Retrying { .. } => {
                // A new attempt starts over; its record repeats the calls it keeps.
                calls.clear();
                open.clear();
            }
            EventKind::ToolCall { call_id, name, replayed, .. } => {
                if calls.len() == MAX_TASK_CALLS {
                    *truncated = true;
                    continue;
                }
                open.insert(call_id, calls.len());
                let callee = match state.agents.get(name) {
                    Ok(agent)
                        if agent.spec.tenant.is_empty() || *agent.spec.tenant == *task.tenant =>
                    {
                        Callee::Agent
                    }
                    _ => Callee::Tool,
                };
                calls.push(GraphCall {
                    caller: task.id.clone(),
                    call_id: call_id.clone(),
                    name: name.clone(),
                    callee,
                    at_us: event.timestamp_us,
                    result_us: 0,
                    is_error: false,
                    replayed: *replayed,
                });
            }
            EventKind::ToolResult { call_id, is_error, .. } => {
                if let Some(call) = open.remove(call_id.as_str()).and_then(|i| calls.get_mut(i)) {
                    (call.result_us, call.is_error) = (event.timestamp_us.max(1), *is_error);
                }
            }
            _ => {}
        }
    }
    calls
}

impl Cluster {
    /// The call graph of the task `task_id` belongs to: from the task at its top (as far up
    /// as `who` sees), every sub-task and call below, breadth first, within the bounds.
    pub fn call_graph(&self, who: &Principal, task_id: &str) -> Result<CallGraph> {
        let state = self.state.lock();
        let mut top = visible(&state, who, task_id)?;
        while let Some(parent) =
            top.parent.as_ref().and_then(|(id, _)| visible(&state, who, id.as_str()).ok())
        {
            top = parent;
        }
        let mut graph = CallGraph {
            root: top.id.clone(),
            tasks: Vec::new(),
            calls: Vec::new(),
            truncated: false,
        };
        let mut next = VecDeque::from([(top, 0)]);
        while let Some((task, depth)) = next.pop_front() {
            if graph.tasks.len() == MAX_GRAPH_TASKS {
                graph.truncated = true;
                break;
            }
            graph.tasks.push(GraphTask {
                task_id: task.id.clone(),
                agent: task.agent.clone(),
                state: task.state,
                // A finished task's worker is its last `Scheduled` event's.
                worker: task.worker.clone().unwrap_or_else(|| {
                    let mut events = task.stored_events_from(1).iter().rev();
                    events
                        .find_map(|e| match &e.kind {
                            EventKind::Scheduled { worker_id } => Some(worker_id.clone()),
                            _ => None,
                        })
                        .unwrap_or_default()
                }),
                attempt: task.attempt,
                submitted_us: task.submitted_at_us,
                finished_us: task.finished_at_us,
                depth,
            });
            let mut calls = calls_of(&state, task, &mut graph.truncated);
            for child in
                task.children.iter().filter_map(|id| visible(&state, who, id.as_str()).ok())
            {
                let Some((_, call_id)) = &child.parent else { continue };
                if let Some(call) = calls.iter_mut().find(|c| c.call_id == *call_id) {
                    call.callee = Callee::Task(child.id.clone());
                }
                next.push_back((child, depth + 1));
            }
            graph.calls.append(&mut calls);
        }
        Ok(graph)
    }

    /// The agents that called each agent as a tool since the head started, and how often.
    pub fn callers(&self, who: &Principal) -> BTreeMap<String, Vec<(String, CallCount)>> {
        self.state.lock().call_counts.callers(who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_counted_per_tenant_and_summed_for_admins() {
        let mut counts = CallCounts::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        counts.count(&a, "planner", "search", true);
        counts.count(&a, "planner", "search", false);
        counts.count(&b, "planner", "search", true);
        counts.count(&a, "writer", "search", true);
        let tenant_a = Principal::new("u", "a", crate::auth::Role::User);
        assert_eq!(
            counts.callers(&tenant_a)["search"],
            [
                ("planner".to_owned(), CallCount { relayed: 1, located: 1 }),
                ("writer".to_owned(), CallCount { relayed: 1, located: 0 }),
            ]
        );
        let admin = Principal::new("root", "a", crate::auth::Role::Admin);
        assert_eq!(counts.callers(&admin)["search"][0].1, CallCount { relayed: 2, located: 1 });
        assert!(!counts.callers(&admin).contains_key("planner"));
    }
}
