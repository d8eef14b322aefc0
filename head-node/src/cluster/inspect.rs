//! What the inspector asks of the cluster beyond the front doors' views: a task with its
//! links (the task that called it, the sub-tasks it called) and its moments, figures per
//! agent over the tasks retained, and a change counter that lets live views skip work.

use super::*;

/// A task a task called as a tool (the head ran it: the caller was not on the mesh).
#[derive(Debug, Clone)]
pub struct SubTask {
    pub task_id: TaskId,
    pub call_id: String,
    pub agent: String,
    pub state: TaskState,
}

/// When a task reached each stage, µs since the epoch (0: not yet). The first scheduling
/// and first token of any attempt: what the client waited for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moments {
    pub submitted_us: u64,
    pub scheduled_us: u64,
    pub first_token_us: u64,
    pub finished_us: u64,
}

/// A task for its page: the snapshot its stored events give, and its links.
#[derive(Debug, Clone)]
pub struct TaskDetail {
    pub info: TaskInfo,
    /// The calling task and the call's id.
    pub parent: Option<(TaskId, String)>,
    pub children: Vec<SubTask>,
    pub moments: Moments,
    /// Events stored (and shown) so far.
    pub seq: u64,
}

/// Latency percentiles, in µs (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
}

impl Percentiles {
    /// Of `samples` (sorted here); none when there are none.
    pub fn of(mut samples: Vec<u64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
        Some(Self { count: samples.len(), p50: rank(50), p90: rank(90), p99: rank(99) })
    }
}

/// One agent's tasks: now, and over the finished ones the head still retains.
/// How many of an agent's latest completed tasks its latency figures cover: recent enough
/// to show a change, and a bounded amount of work under the head's lock.
pub const LATENCY_WINDOW: usize = 1000;

#[derive(Debug, Clone)]
pub struct AgentFigures {
    pub info: AgentInfo,
    pub running: u32,
    pub queued: usize,
    pub completed: u64,
    pub failed: u64,
    pub canceled: u64,
    /// Workers its unfinished tasks are placed on.
    pub workers: Vec<String>,
    /// Workers hosting an actor of it (the head placed its spec there).
    pub actors: Vec<String>,
    /// Submission to completion of its last [`LATENCY_WINDOW`] completed tasks.
    pub latency: Option<Percentiles>,
}

/// Tasks that ended in the last moments, and the cluster's counts now: a live chart's
/// point.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    /// Since the head started: tasks that began running, and that ended.
    pub started: u64,
    pub ended: crate::tasks::TaskCounters,
    pub queued: usize,
    pub running: usize,
    /// Submission to completion, of the tasks completed within the window.
    pub latency: Option<Percentiles>,
    /// Submission to the first token (text, reasoning or embeddings), of the same tasks.
    pub first_token: Option<Percentiles>,
}

/// Tasks a [`Recent`] reads at most (the newest to end): a bounded look under the lock at
/// any rate of tasks.
const RECENT_TASKS: usize = 5_000;
/// Events of a task read looking for its first token.
const FIRST_TOKEN_EVENTS: usize = 256;

/// Whether an event is a token of the answer: its first is a task's first-token moment.
fn is_token(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::TextDelta { .. }
            | EventKind::ReasoningDelta { .. }
            | EventKind::Embeddings { .. }
    )
}

/// When `task`'s first token came (0: none among its first events).
fn first_token_us(task: &TaskEntry) -> u64 {
    let events = task.stored_events_from(1);
    events.iter().take(FIRST_TOKEN_EVENTS).find(|e| is_token(&e.kind)).map_or(0, |e| e.timestamp_us)
}

impl Cluster {
    /// The counts a live chart plots, and the percentiles of the tasks `who` sees that
    /// completed since `since_us`.
    pub fn recent(&self, who: &Principal, since_us: u64) -> Recent {
        let tenant = (!who.is_admin()).then(|| who.tenant());
        let started = self.metrics.started(tenant);
        let mut guard = self.state.lock();
        let (ended, queued, running) = match tenant {
            Some(tenant) => (
                self.metrics.totals_of(tenant).1,
                guard.tasks.count(tenant, &[TaskState::Queued]),
                guard.tasks.count(tenant, &crate::quotas::RUNNING),
            ),
            None => (
                guard.tasks.counters,
                guard.queue.len(),
                guard.workers.iter().map(|w| w.running.len()).sum(),
            ),
        };
        let (mut latency, mut first_token) = (Vec::new(), Vec::new());
        let completed = guard
            .tasks
            .finished_newest_first()
            .take(RECENT_TASKS)
            .take_while(|t| t.finished_at_us >= since_us)
            .filter(|t| t.state == TaskState::Completed && who.sees(&t.tenant));
        for task in completed {
            latency.push(task.finished_at_us.saturating_sub(task.submitted_at_us));
            if let Some(after) = first_token_us(task).checked_sub(task.submitted_at_us) {
                first_token.push(after);
            }
        }
        drop(guard);
        Recent {
            started,
            ended,
            queued,
            running,
            latency: Percentiles::of(latency),
            first_token: Percentiles::of(first_token),
        }
    }

    /// A number that moves whenever a task may have changed.
    pub fn task_changes(&self) -> u64 {
        self.state.lock().tasks.changes()
    }

    /// A task with its links and moments, as far as its stored events go.
    pub fn task_detail(&self, who: &Principal, task_id: &str) -> Result<TaskDetail> {
        let state = self.state.lock();
        let task = visible(&state, who, task_id)?;
        let children = task
            .children
            .iter()
            .filter_map(|id| state.tasks.get(id.as_str()))
            .map(|child| SubTask {
                task_id: child.id.clone(),
                call_id: child.parent.as_ref().map(|(_, call)| call.clone()).unwrap_or_default(),
                agent: child.agent.clone(),
                state: child.state,
            })
            .collect();
        let events = task.stored_events_from(1);
        let first = |wanted: fn(&EventKind) -> bool| {
            events.iter().find(|e| wanted(&e.kind)).map_or(0, |e| e.timestamp_us)
        };
        let moments = Moments {
            submitted_us: task.submitted_at_us,
            scheduled_us: first(|k| matches!(k, EventKind::Scheduled { .. })),
            first_token_us: first(is_token),
            finished_us: first(EventKind::is_terminal),
        };
        Ok(TaskDetail {
            info: TaskInfo::as_of(task, task.durable),
            parent: task.parent.clone(),
            children,
            moments,
            seq: task.durable,
        })
    }

    /// Every agent's figures, by name, from the task index: counts without a pass over
    /// the retained tasks (the inspector asks every two seconds per open page).
    pub fn agent_figures(&self, who: &Principal) -> Vec<AgentFigures> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let mut figures = Vec::with_capacity(state.agents.len());
        for entry in state.agents.iter().filter(|a| who.sees_agent(&a.spec)) {
            let name = entry.spec.name.as_str();
            let tasks = &mut state.tasks;
            let mut count = |s: TaskState| tasks.newest_of(name, s).0;
            let (queued, failed, canceled) = (
                count(TaskState::Queued),
                count(TaskState::Failed) as u64,
                count(TaskState::Canceled) as u64,
            );
            let mut workers = std::collections::BTreeSet::new();
            for running in [TaskState::Scheduled, TaskState::Working, TaskState::InputRequired] {
                workers.extend(tasks.newest_of(name, running).1.filter_map(|t| t.worker.clone()));
            }
            let (completed, newest) = tasks.newest_of(name, TaskState::Completed);
            let latencies = newest
                .take(LATENCY_WINDOW)
                .map(|t| t.finished_at_us.saturating_sub(t.submitted_at_us))
                .collect();
            let mut actors: Vec<String> = state
                .workers
                .iter()
                .filter(|w| w.placed.contains_key(name))
                .map(|w| w.id.clone())
                .collect();
            actors.sort();
            figures.push(AgentFigures {
                info: AgentInfo::from(entry),
                running: entry.running,
                queued,
                completed: completed as u64,
                failed,
                canceled,
                workers: workers.into_iter().collect(),
                actors,
                latency: Percentiles::of(latencies),
            });
        }
        figures.sort_by(|a, b| a.info.spec.name.cmp(&b.info.spec.name));
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        assert_eq!(Percentiles::of(vec![]), None);
        let one = Percentiles::of(vec![7]);
        assert_eq!(one, Some(Percentiles { count: 1, p50: 7, p90: 7, p99: 7 }));
        let hundred = Percentiles::of((1..=100).rev().collect());
        assert_eq!(hundred, Some(Percentiles { count: 100, p50: 50, p90: 90, p99: 99 }));
    }
}
