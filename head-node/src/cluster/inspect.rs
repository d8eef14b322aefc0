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
    /// Submission to completion of its completed tasks.
    pub latency: Option<Percentiles>,
}

impl Cluster {
    /// A number that moves whenever a task may have changed.
    pub fn task_changes(&self) -> u64 {
        self.state.lock().tasks.changes()
    }

    /// A task with its links and moments, as far as its stored events go.
    pub fn task_detail(&self, task_id: &str) -> Result<TaskDetail> {
        let state = self.state.lock();
        let task =
            state.tasks.get(task_id).ok_or_else(|| Error::UnknownTask(task_id.to_owned()))?;
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
            first_token_us: first(|k| {
                matches!(k, EventKind::TextDelta { .. } | EventKind::Embeddings { .. })
            }),
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

    /// Every agent's figures, by name. One pass over the retained tasks (the inspector asks
    /// at most every two seconds per open page).
    pub fn agent_figures(&self) -> Vec<AgentFigures> {
        let state = self.state.lock();
        #[derive(Default)]
        struct Tally {
            queued: usize,
            ended: [u64; 3],
            workers: std::collections::BTreeSet<String>,
            latencies: Vec<u64>,
        }
        let mut tallies: HashMap<&str, Tally> = HashMap::new();
        for task in state.tasks.iter_from(0) {
            let tally = tallies.entry(task.agent.as_str()).or_default();
            match task.state {
                TaskState::Queued => tally.queued += 1,
                TaskState::Completed => {
                    tally.ended[0] += 1;
                    let took = task.finished_at_us.saturating_sub(task.submitted_at_us);
                    tally.latencies.push(took);
                }
                TaskState::Failed => tally.ended[1] += 1,
                TaskState::Canceled => tally.ended[2] += 1,
                TaskState::Scheduled | TaskState::Working | TaskState::InputRequired => {
                    if let Some(worker) = &task.worker {
                        tally.workers.insert(worker.clone());
                    }
                }
            }
        }
        let mut figures: Vec<AgentFigures> = state
            .agents
            .iter()
            .map(|entry| {
                let name = entry.spec.name.as_str();
                let tally = tallies.remove(name).unwrap_or_default();
                let mut actors: Vec<String> = state
                    .workers
                    .iter()
                    .filter(|w| w.placed.contains_key(name))
                    .map(|w| w.id.clone())
                    .collect();
                actors.sort();
                AgentFigures {
                    info: AgentInfo::from(entry),
                    running: entry.running,
                    queued: tally.queued,
                    completed: tally.ended[0],
                    failed: tally.ended[1],
                    canceled: tally.ended[2],
                    workers: tally.workers.into_iter().collect(),
                    actors,
                    latency: Percentiles::of(tally.latencies),
                }
            })
            .collect();
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
